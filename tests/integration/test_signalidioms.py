"""Celery's "Signals" user guide (docs/userguide/signals.rst, Celery 5), its idioms pasted as a
Celery user writes them (imports aside; the receivers and tasks are in signalidioms.py), run
by real workers on both transports: the built-in broker and Redis (the `broker` fixture of
both.py; Redis skips, saying why, where redis-server is not installed).

What test_signals.py, test_logging_signals.py and test_retry_idioms.py check already (which
process sends each signal, task_revoked's terminated/signum/expired, SIGTERM's
worker_shutting_down, setup_logging taking logging over with a dictConfig) is not checked
again here. Here: the guide's after_task_publish handlers (printing, and filtered by task
name) and every argument of the publish signals; every argument of the task signals as a
receiver reads them; connect() as decorator with and without arguments and as a call,
dispatch_uid, disconnect() and a failing receiver; the worker signals of Ctrl+C pressed
twice; the logging signals that augment or replace the worker's set-up, with their
arguments; task signals of apply(); and the signals the README says minitask never sends.

Where the README names a difference, the test checks minitask's documented behaviour and
cites the README.
"""

import importlib
import json
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ittasks  # noqa: E402
from both import broker, server  # noqa: E402,F401  (fixtures)
from cluster import wait_for, workers_of  # noqa: E402
from ittasks import read_trace  # noqa: E402

from minitask import chain, chord, group, send_task, signals  # noqa: E402

MODULES = "ittasks,signalidioms"
T = 20          # the timeout of every get()


@pytest.fixture(scope="module")
def si():
    """signalidioms, imported here for the test's own publishes (its receivers are
    connected in this process as in a Celery project's), and disconnected again after this
    module's tests: nothing connected here may reach the rest of the suite."""
    module = importlib.import_module("signalidioms")
    try:
        yield module
    finally:
        for name in signals.__all__:
            sig = getattr(signals, name)
            if isinstance(sig, signals.Signal):
                sig.receivers = [entry for entry in sig.receivers
                                 if getattr(entry[1], "__module__", None) != "signalidioms"]


@pytest.fixture
def start_worker(broker, tmp_path, si):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def rows(tmp_path, what):
    """What signalidioms' receivers recorded under `what`: lists, the process id first."""
    return [json.loads(line) for line in read_trace(tmp_path, "si-" + what)]


def by_id(tmp_path, what, column=2):
    """`what`'s rows keyed by the task id in their `column` (each id once)."""
    found = {}
    for row in rows(tmp_path, what):
        assert row[column] not in found, "%s twice for %s" % (what, row[column])
        found[row[column]] = row
    return found


def lines_with(path, text):
    return [line for line in path.read_text(encoding="utf-8").splitlines() if text in line]


# -- Basics: after_task_publish, and every argument of the publish signals -----------------

def test_the_guides_publish_handlers_see_every_message_sent_with_its_arguments(
        broker, tmp_path, capsys, si):
    result = si.add.delay(2, 2)
    # The first handler prints for every task, the one connected with sender='proj.tasks.add'
    # for that task only.
    out = capsys.readouterr().out
    assert out.count("after_task_publish for task id %s\n" % result.id) == 2
    later = si.mul.apply_async((2, 3), {"z": 4}, countdown=30, expires=60)
    assert capsys.readouterr().out == "after_task_publish for task id %s\n" % later.id
    by_name = send_task("proj.tasks.add", (1, 1))     # sender: the name, with no task here
    routed = si.add.apply_async((5, 5), queue="si-hipri")
    keyed = si.add.apply_async((5, 6), routing_key="si.key")
    members = group(si.add.s(i, i) for i in range(2)).apply_async()
    chained = chain(si.add.s(1, 1), si.mul.s(2)).apply_async()
    chorded = chord([si.add.s(3, 3), si.add.s(4, 4)], si.mul.s(3)).apply_async()
    capsys.readouterr()

    add_ids = [result.id, by_name.id, routed.id, keyed.id] + \
        [member.id for member in members.results] + [chained.parent.id]
    header_ids = [member.id for member in chorded.parent.results]
    assert [row[1:] for row in rows(tmp_path, "add_published")] == \
        [["proj.tasks.add", task_id] for task_id in add_ids + header_ids]
    assert chorded.id not in header_ids

    # after_task_publish: the sender is the task's name; headers carry the id; exchange and
    # routing_key come as keyword arguments (with `signal`, as django.core.dispatch sends).
    after = by_id(tmp_path, "after_task_publish")
    sent = add_ids + header_ids + [later.id, chorded.id]
    assert sorted(after) == sorted(sent)            # the chain's next link is not sent yet
    assert chained.id not in after
    for task_id, row in after.items():
        assert row[1] == ("proj.tasks.mul" if task_id in (later.id, chorded.id)
                          else "proj.tasks.add")
        assert row[5] == ["exchange", "routing_key", "signal"]
    # The default exchange and routing key are DEFAULT_QUEUE's name, "minitask" (README,
    # Routing); queue= goes "straight to that queue through the default exchange ''"
    # (README, Routing: Celery declares an exchange named after the queue instead).
    assert after[result.id][3:5] == ["minitask", "minitask"]
    assert after[routed.id][3:5] == ["", "si-hipri"]
    assert after[keyed.id][3:5] == ["minitask", "si.key"]

    # before_task_publish: body and headers are mappings of the message's fields; the
    # properties and declare arguments are given too, and retry_policy (None: minitask has
    # no retry policy, README: "a lost connection is always tried again for 5 s").
    before = by_id(tmp_path, "before_task_publish")
    assert sorted(before) == sorted(after)
    assert before[later.id][1:] == ["proj.tasks.mul", later.id, "proj.tasks.mul", 0, True,
                                    True, later.id, [2, 3], {"z": 4}, "minitask", "minitask",
                                    True, True, None]
    assert before[result.id][1:] == ["proj.tasks.add", result.id, "proj.tasks.add", 0, False,
                                     False, result.id, [2, 2], {}, "minitask", "minitask",
                                     True, True, None]
    assert before[routed.id][10:12] == ["", "si-hipri"]
    assert before[chorded.id][8] == [3]             # the body, sent with its own arguments


# -- Task signals: what each gives a receiver, and the ways of connecting one --------------

def test_task_signals_on_a_worker_give_every_argument_the_guide_lists(
        start_worker, tmp_path, si):
    worker = start_worker()
    added = si.add.delay(2, 2)
    later = si.mul.apply_async((2, 3), {"z": 4}, countdown=0.1, expires=60)
    failed = si.fail.apply_async(("nope",), {"code": 7})
    retried = si.flaky.delay(9)
    linked = si.add.apply_async((1, 2), link=si.mul.s(10))
    assert added.get(timeout=T) == 4
    assert later.get(timeout=T) == 24           # a receiver of its task_success raises
    with pytest.raises(KeyError):
        failed.get(timeout=T)
    assert retried.get(timeout=T) == 9
    assert linked.get(timeout=T) == 3
    wait_for(lambda: linked.children, T, what="the callback among the children")
    (callback,) = linked.children
    assert callback.get(timeout=T) == 30
    queried = si.query.delay()
    pid, connection = queried.get(timeout=T)
    wait_for(lambda: len(rows(tmp_path, "task_postrun")) == 8, T, what="the last postrun")

    (init,) = rows(tmp_path, "worker_init")
    main_pid = init[0]
    pool_pids = {row[0] for row in rows(tmp_path, "worker_process_init")}
    assert len(pool_pids) == 2 and main_pid not in pool_pids
    # worker_process_init ran in the pool process before its tasks: each has its own.
    assert pid in pool_pids and connection == "connection of %d" % pid

    # task_prerun: sender is the task object, the same as `task`; args and kwargs the call's.
    prerun = rows(tmp_path, "task_prerun")
    assert {row[0] for row in prerun} <= pool_pids
    assert sorted((row[1:] for row in prerun), key=str) == sorted([
        ["proj.tasks.add", added.id, "proj.tasks.add", [2, 2], {}, True],
        ["proj.tasks.mul", later.id, "proj.tasks.mul", [2, 3], {"z": 4}, True],
        ["proj.tasks.fail", failed.id, "proj.tasks.fail", ["nope"], {"code": 7}, True],
        ["proj.tasks.flaky", retried.id, "proj.tasks.flaky", [9], {}, True],
        ["proj.tasks.flaky", retried.id, "proj.tasks.flaky", [9], {}, True],
        ["proj.tasks.add", linked.id, "proj.tasks.add", [1, 2], {}, True],
        ["proj.tasks.mul", callback.id, "proj.tasks.mul", [3, 10], {}, True],
        ["proj.tasks.query", queried.id, "proj.tasks.query", [], {}, True]], key=str)
    # task_postrun: retval and the resulting state's name.
    postrun = [row[1:] for row in rows(tmp_path, "task_postrun")]
    for expected in (["proj.tasks.add", added.id, [2, 2], {}, 4, "SUCCESS"],
                     ["proj.tasks.mul", later.id, [2, 3], {"z": 4}, 24, "SUCCESS"],
                     ["proj.tasks.fail", failed.id, ["nope"], {"code": 7}, "KeyError",
                      "FAILURE"],
                     ["proj.tasks.mul", callback.id, [3, 10], {}, 30, "SUCCESS"]):
        assert expected in postrun
    assert [row[4:] for row in postrun if row[1] == retried.id] == [
        ["RetryTaskError", "RETRY"], [9, "SUCCESS"]]
    # task_success: result and runtime; sender.request is the run's (it has no task_id).
    success = {row[2]: row[1:] for row in rows(tmp_path, "task_success")}
    assert success == {added.id: ["proj.tasks.add", added.id, 4, True],
                       later.id: ["proj.tasks.mul", later.id, 24, True],
                       retried.id: ["proj.tasks.flaky", retried.id, 9, True],
                       linked.id: ["proj.tasks.add", linked.id, 3, True],
                       callback.id: ["proj.tasks.mul", callback.id, 30, True],
                       queried.id: ["proj.tasks.query", queried.id,
                                       [pid, connection], True]}
    # task_failure: task_id, exception, args, kwargs, traceback (a traceback object) and
    # einfo (type, exception, and the traceback's text as str(einfo) and .traceback).
    assert [row[1:] for row in rows(tmp_path, "task_failure")] == [
        ["proj.tasks.fail", failed.id, "KeyError", "'nope'", ["nope"], {"code": 7}, True,
         True, "KeyError", True, True]]
    # task_retry: request, reason (which can always be coerced to str) and einfo.
    assert [row[1:] for row in rows(tmp_path, "task_retry")] == [
        ["proj.tasks.flaky", retried.id, 0, "Retry in 0.1s: OSError('service down')",
         "RetryTaskError"]]
    # task_received, in the worker's main process: a request with the message's fields; eta
    # and expires as aware datetimes.
    received = rows(tmp_path, "task_received")
    assert {row[0] for row in received} == {main_pid}
    assert len(received) == 8                   # the retry is received again
    by_task = {}
    for row in received:
        by_task.setdefault(row[1], []).append(row[2:])
    assert by_task[added.id] == [["proj.tasks.add", [2, 2], {}, 0, None, None, "w1",
                                  "minitask"]]
    ((name, args, kwargs, retries, eta, expires, hostname, key),) = by_task[later.id]
    assert (name, args, kwargs, retries, hostname, key) == \
        ("proj.tasks.mul", [2, 3], {"z": 4}, 0, "w1", "minitask")
    assert eta.endswith("+00:00") and expires.endswith("+00:00") and eta < expires
    assert [row[3] for row in by_task[retried.id]] == [0, 1]
    assert by_task[retried.id][1][4] is not None        # the retry's countdown
    # The callback is published by the pool process that ran its parent, with both
    # publish signals (README, Signals).
    (parent_pid,) = [row[0] for row in prerun if row[2] == linked.id]
    for what in ("before_task_publish", "after_task_publish"):
        assert [row[0] for row in rows(tmp_path, what) if row[2] == callback.id] == \
            [parent_pid]

    # connect(sender=task): add_succeeded only hears add; connect(fun, sender) as a call,
    # with the sender positional, only mul.
    assert sorted(row[1:] for row in rows(tmp_path, "add_succeeded")) == [
        ["proj.tasks.add", 3], ["proj.tasks.add", 4]]
    assert sorted(row[2] for row in rows(tmp_path, "mul_ran")) == \
        sorted([later.id, callback.id])
    # @connect() with empty parentheses.
    assert [row[1:] for row in rows(tmp_path, "failure_noted")] == [
        ["proj.tasks.fail", failed.id]]
    # dispatch_uid: connected twice, called once per task; another receiver under the same
    # uid is not connected. A receiver connected before raised for mul: the next ones still
    # ran, and mul's outcome stood (checked above).
    assert sorted(row[1] for row in rows(tmp_path, "uid_first")) == sorted(
        ["proj.tasks.add", "proj.tasks.mul", "proj.tasks.flaky", "proj.tasks.add",
         "proj.tasks.mul", "proj.tasks.query"])
    assert rows(tmp_path, "uid_second") == []
    # disconnect(): by receiver, by receiver and sender, by dispatch_uid.
    assert rows(tmp_path, "never") == []
    assert worker.stop() == 0
    # The failing receiver: one line each time (README: "logged in one line naming the
    # signal, the receiver and the error").
    assert len([line for line in worker.output().splitlines()
                if "receiver signalidioms.broken_receiver raised RuntimeError" in line]) == 2



# -- Worker signals: Ctrl+C, then Ctrl+C again -------------------------------------------------

def test_ctrl_c_twice_sends_a_warm_then_a_cold_worker_shutting_down(start_worker, tmp_path,
                                                                    si):
    worker = start_worker()
    short = ittasks.sleep.delay(0.3, tag="short")
    long = ittasks.sleep.delay(30, tag="long")
    wait_for(lambda: read_trace(tmp_path, "short") and read_trace(tmp_path, "long"), T,
             what="both tasks to start")
    worker.proc.signal(signal.SIGINT)       # Ctrl+C: SIGINT to the worker's process group
    wait_for(lambda: rows(tmp_path, "worker_shutting_down"), T, what="worker_shutting_down")
    assert short.get(timeout=T) == 0.3      # a warm shutdown lets the running tasks end
    worker.proc.signal(signal.SIGINT)       # again: cold, the long task is stopped
    exitcode = worker.proc.process.wait(T)
    assert long.state != "SUCCESS"

    (init,) = rows(tmp_path, "worker_init")
    assert init[1:] == ["w1", True]         # sender: the worker; sender.app.conf (README)
    assert rows(tmp_path, "worker_ready") == [[init[0], "w1"]]
    # worker_shutting_down: sender the hostname; sig, how, and the exit code the main
    # process then exits with.
    assert rows(tmp_path, "worker_shutting_down") == [
        [init[0], "w1", "SIGINT", "Warm", exitcode], [init[0], "w1", "SIGINT", "Cold", exitcode]]
    assert rows(tmp_path, "worker_shutdown") == [[init[0], "w1"]]
    # The short task ended (its postrun came) before the second Ctrl+C; no pool process
    # failed with KeyboardInterrupt.
    assert [row[2] for row in rows(tmp_path, "task_postrun")] == [short.id]
    assert "KeyboardInterrupt" not in worker.output()
    pool_pids = {row[0] for row in rows(tmp_path, "worker_process_init")}
    assert len(pool_pids) == 2 and init[0] not in pool_pids
    # worker_process_shutdown: "no guarantee" (the guide); when sent, with pid and exitcode.
    assert all(row[1] == row[0] and row[0] in pool_pids and row[2] == 0
               for row in rows(tmp_path, "worker_process_shutdown"))


# -- Logging signals --------------------------------------------------------------------------

def _logged_once_each(tmp_path, worker, task_id):
    """The worker's lines about task `task_id` and the task's own line, as the receivers'
    handlers wrote them: {file: {line: count}}."""
    logs, tasks = tmp_path / "logs.log", tmp_path / "tasks.log"
    wait_for(lambda: logs.exists() and lines_with(logs, "succeeded"), T,
             what="the success line in the receiver's log")
    return {"received": len(lines_with(logs, "Received task: proj.tasks.mul[%s]" % task_id)),
            "succeeded": len(lines_with(logs, "Task proj.tasks.mul[%s] succeeded" % task_id)),
            "task line": len(lines_with(tasks, "TASK INFO signalidioms: Multiplying 2 by 3"))}


def test_after_setup_logger_and_after_setup_task_logger_augment_the_workers_logging(
        start_worker, tmp_path, si):
    # With spawn, each pool process sets its logging up from scratch (with fork, see the
    # next test).
    worker = start_worker(args=("-l", "INFO", "--start-method", "spawn"))
    result = si.mul.delay(2, 3)
    assert result.get(timeout=T) == 6
    assert _logged_once_each(tmp_path, worker, result.id) == \
        {"received": 1, "succeeded": 1, "task line": 1}
    # Sent in the worker and in each pool process, with the documented arguments: the
    # logger (the root; the task loggers' parent), loglevel as a number, logfile, format,
    # colorize (False: a file).
    (init,) = rows(tmp_path, "worker_init")
    root = rows(tmp_path, "after_setup_logger")
    assert init[0] in {row[0] for row in root} and len(root) == 3
    assert all(row[1:3] == ["root", 20] and row[3] == worker.logfile and
               "%(message)s" in row[4] and row[5] is False for row in root)
    task_loggers = rows(tmp_path, "after_setup_task_logger")
    assert {row[0] for row in task_loggers} == {row[0] for row in root}
    assert all(row[2:4] == [20, worker.logfile] and "%(message)s" in row[4] and
               row[5] is False for row in task_loggers)
    assert rows(tmp_path, "setup_logging") == []


def test_with_a_forked_pool_an_augmented_log_gets_each_line_once(start_worker, tmp_path, si):
    worker = start_worker(args=("-l", "INFO", "--start-method", "fork"))
    result = si.mul.delay(2, 3)
    assert result.get(timeout=T) == 6
    assert _logged_once_each(tmp_path, worker, result.id) == \
        {"received": 1, "succeeded": 1, "task line": 1}


def project_log(tmp_path):
    """The log file of the project's setup_logging receiver, once a success is in it."""
    project = tmp_path / "project.log"
    wait_for(lambda: project.exists() and lines_with(project, "succeeded"), T,
             what="the success line in the project's log")
    return project


def test_a_setup_logging_receiver_gets_the_workers_settings_and_replaces_its_set_up(
        start_worker, tmp_path, si):
    worker = start_worker(args=("-l", "INFO", "--start-method", "spawn"),
                          env={"SI_SETUP_LOGGING": "1"})
    result = si.mul.delay(2, 3)
    assert result.get(timeout=T) == 6
    project = project_log(tmp_path)
    assert len(lines_with(project, "Task proj.tasks.mul[%s] succeeded" % result.id)) == 1
    assert len(lines_with(project, "Multiplying 2 by 3")) == 1
    assert all(line.startswith("PROJECT [") for line in project.read_text().splitlines())
    setups = rows(tmp_path, "setup_logging")
    assert len(setups) == 3 and all(row[1:] == [20, worker.logfile, row[3], False] and
                                    "%(message)s" in row[3] for row in setups)
    # "Celery won't configure the loggers if this signal is connected".
    assert rows(tmp_path, "after_setup_logger") == []
    assert rows(tmp_path, "after_setup_task_logger") == []
    assert "Multiplying" not in worker.output()


def test_with_a_forked_pool_a_setup_logging_receivers_log_gets_each_line_once(
        start_worker, tmp_path, si):
    start_worker(args=("-l", "INFO", "--start-method", "fork"), env={"SI_SETUP_LOGGING": "1"})
    result = si.mul.delay(2, 3)
    assert result.get(timeout=T) == 6
    project = project_log(tmp_path)
    assert len(lines_with(project, "Received task: proj.tasks.mul[%s]" % result.id)) == 1
    assert len(lines_with(project, "Task proj.tasks.mul[%s] succeeded" % result.id)) == 1
    assert len(lines_with(project, "Multiplying 2 by 3")) == 1


# -- Task signals where apply() runs the task ------------------------------------------------

def test_apply_sends_the_task_signals_in_the_caller_and_no_publish_signals(
        tmp_path, monkeypatch, si):
    monkeypatch.setenv("ITTASKS_DIR", str(tmp_path))
    assert si.add.apply((2, 3)).get() == 5
    failed = si.fail.apply(("x",), {"code": 1})
    assert failed.state == "FAILURE"
    retried = si.flaky.apply((5,))
    assert retried.get() == 5
    here = os.getpid()
    assert {row[0] for what in ("task_prerun", "task_postrun", "task_success", "task_failure",
                                "task_retry") for row in rows(tmp_path, what)} == {here}
    assert [row[1] for row in rows(tmp_path, "task_success")] == [
        "proj.tasks.add", "proj.tasks.flaky"]
    assert [row[2:5] for row in rows(tmp_path, "task_failure")] == [
        [failed.id, "KeyError", "'x'"]]
    assert [row[5:] for row in rows(tmp_path, "task_postrun") if row[2] == retried.id] == \
        [["RetryTaskError", "RETRY"], [5, "SUCCESS"]]
    assert rows(tmp_path, "task_retry")[0][4] == "Retry in 0.1s: OSError('service down')"
    for what in ("before_task_publish", "after_task_publish", "task_received"):
        assert rows(tmp_path, what) == []


# -- Connecting: what is refused, and the signals minitask never sends -----------------------

def test_connect_refusals_and_the_signals_minitask_never_sends(si):
    from minitask.exceptions import ConfigurationError
    from minitask.signals import task_success

    def no_kwargs(sender):
        pass
    # "receivers must accept keyword arguments", as in Celery (README, Signals).
    with pytest.raises(ValueError, match="keyword arguments"):
        task_success.connect(no_kwargs)
    # README: "connect(retry=True) is refused, saying so: retry inside the receiver".
    with pytest.raises(ConfigurationError, match="retry"):
        task_success.connect(lambda **kwargs: None, retry=True)
    assert task_success.disconnect(lambda **kwargs: None) is False
    # README, Signals: "not sent (no such place here): task_internal_error, task_unknown,
    # task_rejected, celeryd_init, celeryd_after_setup, ... heartbeat_sent, import_modules,
    # beat_init, beat_embedded_init ... Importing one of those names fails (ImportError);
    # minitask.signals.<name> says why, and what to use instead."
    for name in ("task_internal_error", "task_unknown", "task_rejected", "celeryd_init",
                 "celeryd_after_setup", "heartbeat_sent", "import_modules", "beat_init",
                 "beat_embedded_init"):
        with pytest.raises(ImportError):
            exec("from minitask.signals import %s" % name, {})
        with pytest.raises(AttributeError, match=r"never sends it \(.+\)"):
            getattr(signals, name)
    with pytest.raises(AttributeError, match="use worker_init"):
        signals.celeryd_init
