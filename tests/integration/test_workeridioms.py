"""Celery's "Workers Guide" (docs/userguide/workers.rst, Celery 5), its idioms run as a Celery
user would run them (``celery -A proj ...`` is ``python -m minitask -b URL ...``, ``@app.task``
is ``@shared_task``), on real workers on both transports: the built-in broker and Redis (the
`broker` fixture of both.py; Redis skips, saying why, where redis-server is not installed).
The tasks are the guide's, in workeridioms.py.

The guide shows remote control twice: as ``celery inspect`` / ``celery control`` command
lines and as ``app.control`` in Python. minitask has the command lines; the Python form is
the xfail test below. Where the README names a difference (a refused flag or command), the
test checks minitask's documented behaviour and cites the README.
"""

import json
import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server  # noqa: E402,F401  (fixtures)
from cluster import run_commands, wait_for, workers_of  # noqa: E402
from ittasks import read_trace  # noqa: E402
from workeridioms import add, mytask, pid, sleeptask, stuck  # noqa: E402

from minitask import AsyncResult, group  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    ConfigurationError, TaskRevokedError, TimeLimitExceeded,
)

MODULES = "ittasks,workeridioms"
NAME = "worker1@example.com"            # the guide's node name


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES)


def celery(broker, *args):
    """``celery -b URL ARGS`` as ``python -m minitask -b URL ARGS``: (exit code, stdout,
    stderr)."""
    return run_all(broker, args)[0]


def run_all(broker, *commands):
    """Several command lines at once: their (exit code, stdout, stderr), in order."""
    return run_commands(broker, commands)


def replies(outcome):
    """The JSON replies of a command that must have succeeded."""
    code, out, err = outcome
    assert code == 0, (out, err)
    return json.loads(out)


def started(tmp_path, seconds):
    """The pid of the pool process that started sleeptask(seconds), once it has."""
    line = wait_for(lambda: next((l for l in read_trace(tmp_path, "sleeptask")
                                  if l.startswith("start %s " % seconds)), None), 15,
                    what="sleeptask(%s) to start" % seconds)
    return int(line.split()[2])


# -- Remote control from Python: app.control ------------------------------------------------

def test_the_guides_app_control_calls_from_python(start_worker):
    """The guide's pycon examples, ``app.control`` being ``minitask.control`` (there was no
    Python stand-in: only the command lines)."""
    from minitask import control
    start_worker(name=NAME, args=["-c", "1"])
    assert control.ping(timeout=0.5) == [{NAME: "pong"}]
    assert control.ping(destination=["nobody@nowhere"], timeout=0.2) == []
    i = control.inspect()
    assert i.registered()[NAME] and i.active() == {NAME: []}
    assert control.inspect(["nobody@nowhere"], timeout=0.2).stats() is None
    assert control.broadcast("rate_limit", {"task_name": "workeridioms.add",
                                            "rate_limit": "200/m"}, reply=True,
                             destination=[NAME])[0][NAME]
    assert control.rate_limit("workeridioms.add", "200/m", destination=[NAME]) is None
    assert control.add_consumer("foo", reply=True)[0][NAME]["ok"]
    assert "foo" in i.stats()[NAME]["queues"]
    assert control.cancel_consumer("foo", reply=True)[0][NAME]["ok"]
    control.revoke("d9078da5-9915-40a0-bfa1-392c7bde42ed", terminate=True)
    assert "d9078da5-9915-40a0-bfa1-392c7bde42ed" in control.inspect().revoked()[NAME]
    assert add.delay(2, 2).get(timeout=10) == 4
    with pytest.raises(ConfigurationError, match="QUEUES"):
        control.add_consumer("bar", exchange="bar", routing_key="bar")


# -- Inspecting workers, ping, revoke with terminate ------------------------------------------

def test_inspect_active_reserved_registered_stats_ping_then_revoke_terminate(
        broker, start_worker, tmp_path):
    """``celery -A proj worker --concurrency=1 -n worker1@example.com`` (``-c 1``); the guide's
    sleeptask(8) runs, a second one is reserved behind it; ``inspect active``, ``reserved``,
    ``registered``, ``stats``, ``ping`` (with ``-d`` for one node), ``control ping``; then
    ``control revoke <id> --terminate`` ("Terminating a task also revokes it") and
    ``inspect revoked``."""
    start_worker(name=NAME, args=["-c", "1"])
    running = sleeptask.delay(8)
    waiting = sleeptask.delay(0)
    started(tmp_path, 8)
    wait_for(lambda: waiting.state == "RECEIVED", 10, what="the worker to reserve the second")
    active, reserved, registered, stats, ping, control_ping = run_all(
        broker, ["inspect", "active", "-j", "-d", NAME, "-t", "0.3"],
        ["inspect", "reserved", "-j", "-t", "0.3"],
        ["inspect", "registered", "--json", "-t", "0.3"],
        ["inspect", "stats", "-j", "-t", "0.3"], ["inspect", "ping", "-d", NAME, "-t", "0.3"],
        ["control", "ping", "--timeout", "0.3"])
    (task,) = replies(active)[NAME]
    assert (task["name"], task["id"]) == ("workeridioms.sleeptask", running.id)
    assert (task["args"], task["kwargs"]) == ("(8,)", "{}")       # the guide's form
    assert [t["id"] for t in replies(reserved)[NAME]] == [waiting.id]
    assert {"workeridioms.add", "workeridioms.sleeptask"} <= set(replies(registered)[NAME])
    stats = replies(stats)[NAME]
    assert stats["concurrency"] == 1 and stats["queues"] == ["minitask"]
    assert ping[:2] == (0, "%s:\n  pong\n" % NAME)
    assert control_ping[:2] == (0, "%s: pong\n" % NAME)

    assert celery(broker, "control", "revoke", running.id, "--terminate")[:2] == \
        (0, "revoked %s\n" % running.id)
    with pytest.raises(TaskRevokedError):
        running.get(timeout=10)
    assert running.state == "REVOKED"
    assert waiting.get(timeout=10) == 0             # the pool goes on with the next one
    assert replies(celery(broker, "inspect", "revoked", "-j", "-t", "0.3")) == \
        {NAME: [running.id]}
    assert "end 8" not in read_trace(tmp_path, "sleeptask")


def test_a_busy_worker_answers_inspect_and_revoke_terminate(broker, start_worker, tmp_path):
    """"The terminate option is a last resort for administrators when a task is stuck": a
    stuck task with tasks piling up behind it (-c 1: a prefetch of 4, all taken), then
    ``inspect active`` and ``control revoke <id> --terminate``. On the built-in broker a
    worker whose prefetch was full used to get no control message until a task ended."""
    worker = start_worker(name=NAME, args=["-c", "1"])
    try:
        stuck_task = sleeptask.delay(30)
        started(tmp_path, 30)
        behind = [add.delay(i, i) for i in range(4)]
        wait_for(lambda: all(r.state == "RECEIVED" for r in behind), 10,
                 what="the worker to reserve its prefetch")
        active = replies(celery(broker, "inspect", "active", "-t", "0.3", "-j"))
        assert [t["id"] for t in active[NAME]] == [stuck_task.id]
        assert celery(broker, "control", "revoke", stuck_task.id, "--terminate")[0] == 0
        with pytest.raises(TaskRevokedError):
            stuck_task.get(timeout=5)
        assert [r.get(timeout=10) for r in behind] == [0, 2, 4, 6]
    finally:
        worker.kill()           # not a warm shutdown's wait for the stuck task, if it is left


# -- Revoking tasks: the guide's forms --------------------------------------------------------

def test_revoke_forms_several_ids_and_terminate_with_sigkill(broker, start_worker, tmp_path):
    """``result.revoke()``, ``AsyncResult(id).revoke()``, ``control revoke`` of several ids,
    ``GroupResult.revoke`` ("takes advantage of this"), a running task that is not
    terminated runs to its end, and ``revoke(terminate=True, signal='SIGKILL')``."""
    start_worker(name=NAME, args=["-c", "1", "--prefetch-multiplier", "10"])
    short = sleeptask.delay(0.2)
    started(tmp_path, 0.2)
    short.revoke()          # "it won't terminate an already executing task"
    wait_for(lambda: "end 0.2" in read_trace(tmp_path, "sleeptask"), 10,
             what="the revoked running task to finish")

    blocker = sleeptask.delay(30)
    first_pid = started(tmp_path, 30)
    queued = [add.delay(i, i) for i in range(5)]
    members = group(add.s(i, 10) for i in range(3)).apply_async()
    queued[0].revoke()
    AsyncResult(queued[1].id).revoke()
    assert celery(broker, "control", "revoke", *[r.id for r in queued[2:]])[:2] == \
        (0, "revoked %s\n" % ", ".join(r.id for r in queued[2:]))
    members.revoke()
    blocker.revoke(terminate=True, signal="SIGKILL")
    with pytest.raises(TaskRevokedError):
        blocker.get(timeout=10)
    assert add.delay(20, 22).get(timeout=10) == 42
    for result in queued + list(members.results):
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
        assert result.state == "REVOKED"
    assert pid.delay().get(timeout=10) != first_pid     # the killed process was replaced
    assert "end 30" not in read_trace(tmp_path, "sleeptask")


# -- Rate limits: changing them at run time ---------------------------------------------------

def test_rate_limit_at_run_time_with_a_destination_and_replies(broker, start_worker):
    """``app.control.broadcast('rate_limit', {...}, reply=True, destination=[...])`` and
    ``app.control.rate_limit('myapp.mytask', '200/m')``, as the command line says them."""
    start_worker(name=NAME, args=["-c", "1"])
    elsewhere, here = run_all(
        broker, ["control", "rate_limit", "workeridioms.add", "1/m", "-d", "worker2@example.com",
                 "-t", "0.3"],
        ["control", "rate_limit", "workeridioms.add", "1/m", "-d", NAME, "--json", "-t", "0.3"])
    assert elsewhere[0] == 1            # no node of that name: nobody answered
    assert list(replies(here)) == [NAME] and "ok" in replies(here)[NAME]
    first, second = add.delay(1, 1), add.delay(2, 2)
    assert first.get(timeout=10) == 2
    wait_for(lambda: second.state == "RECEIVED", 10, what="the worker to hold the second")
    held = replies(celery(broker, "inspect", "scheduled", "-j", "-d", NAME, "-t", "0.3"))
    assert [t["id"] for t in held[NAME]] == [second.id]     # waiting for its token
    # Lifted: the one already waiting runs at once too (Celery's would wait out the minute
    # its old bucket gave it), and so does the next call.
    assert celery(broker, "control", "rate_limit", "workeridioms.add", "0", "-t", "0.3")[0] == 0
    assert second.get(timeout=10) == 4
    assert add.delay(3, 3).get(timeout=10) == 6


# -- Time limits ------------------------------------------------------------------------------

def test_soft_time_limit_is_caught_to_clean_up_and_the_hard_limit_kills(broker, start_worker,
                                                                        tmp_path):
    """The guide's ``mytask`` catches SoftTimeLimitExceeded to clean up; a task that does not
    stop is killed at its hard limit and its process replaced; ``get(timeout=...)`` is the
    client's own limit."""
    start_worker(args=["-c", "1"])
    assert mytask.delay().get(timeout=10) is None
    assert [line.split()[0] for line in read_trace(tmp_path, "mytask")] == ["working",
                                                                            "cleaned"]
    result = stuck.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    assert result.state == "FAILURE"
    start, soft = read_trace(tmp_path, "stuck")
    assert soft == "soft"
    assert pid.delay().get(timeout=10) != int(start.split()[1])


def test_time_limit_flags_and_commands_are_refused_with_the_minitask_way(broker):
    """``--time-limit``, ``--soft-time-limit``, ``--max-memory-per-child``, ``control
    time_limit`` and ``inspect active_queues``: the README ("Celery's command lines") says
    each is refused, with what to use instead (a task's time_limit, --max-tasks-per-child,
    inspect stats)."""
    outcomes = run_all(
        broker, ["worker", "-I", MODULES, "--time-limit", "120"],
        ["worker", "-I", MODULES, "--soft-time-limit", "60"],
        ["worker", "-I", MODULES, "--max-memory-per-child", "12000"],
        ["control", "time_limit", "workeridioms.mytask", "60", "120"],
        ["inspect", "active_queues"])
    for (code, out, err), says in zip(outcomes, ["@task(time_limit=", "soft_time_limit=",
                                                 "max-tasks-per-child", "@task(time_limit=",
                                                 "inspect stats"]):
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert says in err.replace("MAX_TASKS_PER_CHILD", "max-tasks-per-child"), err


# -- Max tasks per child ----------------------------------------------------------------------

def test_max_tasks_per_child_replaces_the_pool_process(start_worker):
    start_worker(args=["-c", "1", "--max-tasks-per-child", "2"])
    pids = [pid.delay().get(timeout=10) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


# -- Queues: -Q, add_consumer, cancel_consumer; remote shutdown -------------------------------

def test_queues_add_consumer_cancel_consumer_and_remote_shutdown(broker, start_worker,
                                                                 tmp_path):
    """``worker -Q foo,bar,baz`` (queues made for it), ``control add_consumer qux -d NODE``
    (idempotent), ``control cancel_consumer qux``, then ``broadcast('shutdown',
    destination=...)``: "gracefully shut down the worker remotely"."""
    worker = start_worker(name=NAME, args=["-c", "1", "-Q", "foo,bar,baz"])
    assert add.apply_async((1, 1), queue="foo").get(timeout=10) == 2
    assert add.apply_async((2, 2), queue="baz").get(timeout=10) == 4
    added, again = run_all(broker, ["control", "add_consumer", "qux", "-d", NAME, "-j",
                                    "-t", "0.3"],
                           ["control", "add_consumer", "qux", "-j", "-t", "0.3"])
    assert sorted(reply[NAME]["ok"] for reply in (replies(added), replies(again))) == \
        ["already consuming from 'qux'", "consuming from 'qux'"]      # idempotent
    assert add.apply_async((3, 3), queue="qux").get(timeout=10) == 6
    cancelled, stats = run_all(broker, ["control", "cancel_consumer", "qux", "-j", "-t", "0.3"],
                               ["inspect", "stats", "-j", "-t", "0.3"])
    assert list(replies(cancelled)[NAME]) == ["ok"]
    # `inspect active_queues` is refused for `inspect stats` (README, "Celery's command lines")
    assert set(replies(stats)[NAME]["queues"]) >= {"foo", "bar", "baz"}
    wait_for(lambda: broker.queue("qux")["consumers"] == 0, 10, what="the consumer to go")
    left = add.apply_async((4, 4), queue="qux")
    assert broker.queue("qux")["ready"] == 1

    running = sleeptask.apply_async((0.5,), queue="bar")
    started(tmp_path, 0.5)
    code, out, _ = celery(broker, "control", "shutdown", "-d", NAME, "-t", "0.3")
    assert (code, out.split(":")[0]) == (0, NAME)
    assert worker.proc.process.wait(20) == 0
    assert running.get(timeout=1) == 0.5             # finished before the worker left
    assert left.state == "PENDING" and broker.queue("qux")["ready"] == 1


# -- Stopping the worker: warm shutdown -------------------------------------------------------

def test_sigterm_is_a_warm_shutdown_that_finishes_the_running_task(broker, start_worker,
                                                                   tmp_path):
    """"When shutdown is initiated the worker will finish all currently executing tasks
    before it actually terminates"; what it had reserved goes back to the queue."""
    worker = start_worker(args=["-c", "1"])
    running = sleeptask.delay(0.5)
    reserved = add.delay(1, 1)
    started(tmp_path, 0.5)
    wait_for(lambda: reserved.state == "RECEIVED", 10, what="the worker to reserve it")
    os.kill(worker.proc.pid, signal.SIGTERM)            # kill -TERM <the worker's pid>
    assert worker.proc.process.wait(20) == 0
    assert running.get(timeout=1) == 0.5
    assert "end 0.5" in read_trace(tmp_path, "sleeptask")
    wait_for(lambda: broker.queue()["ready"] == 1, 10, what="the reserved task to go back")
    assert reserved.state in ("PENDING", "RECEIVED")    # never started


# -- Starting the worker: node names ----------------------------------------------------------

def test_a_destination_sets_the_reply_limit(broker, start_worker):
    """"If a destination is specified, this limit is set to the number of destination
    hosts": the command returns once the named node answered, long before its timeout (it
    used to wait the whole timeout out)."""
    start_worker(name=NAME, args=["-c", "1"])
    for command in (["inspect", "ping"], ["control", "rate_limit", "workeridioms.add", "0"]):
        began = time.monotonic()
        assert celery(broker, *command, "-d", NAME, "-t", "60")[0] == 0
        assert time.monotonic() - began < 30
