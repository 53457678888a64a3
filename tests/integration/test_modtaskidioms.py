"""Celery 5's "Tasks" user guide (docs/userguide/tasks.rst), beyond its Retrying section (see
test_retry_idioms.py): bound tasks and the Task Request, names, argument checking, custom
states and the built-in ones, the handlers of a custom base class, `throws`, the
semipredicates Ignore and Reject, `acks_late` and `task_reject_on_worker_lost`, task
instantiation, and the tip on synchronous subtasks. Its idioms are pasted as a Celery user
writes them (``@app.task`` is ``@shared_task``, imports from ``minitask``), run by real
workers on both transports (the `broker` fixture of both.py). The tasks are the guide's, in
modtaskidioms.py.

Where the README names a difference, the test checks minitask's documented behaviour and
cites the README; where minitask does not do what the guide says and the README does not say
so, the test keeps the guide's behaviour and is marked xfail ("minitask bug: ...").
"""

import os
import sys
import uuid
from datetime import datetime, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import new_tag, wait_for, workers_of  # noqa: E402
from ittasks import _trace, read_trace  # noqa: E402
from modtaskidioms import (  # noqa: E402
    HttpNotFound, NaiveAuthenticateServer, add, add_decorated, add_raising, add_typed,
    add_untyped, charge, divide, dump_context, early, get_foo, get_tweets, handled,
    killed_once, late, process_rows, render_scene, requeues, some_task, sum_of_two_numbers,
    tasks_add, twitter_down, update_page_info, upload_files,
)

from minitask import AsyncResult, registry, send_task, shared_task, states  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    ConfigurationError, DeadLetteredError, Reject, TaskRevokedError,
)

MODULES = "ittasks,modtaskidioms"


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def go(name):
    """Let a task waiting in modtaskidioms._wait_for_go(name) go on."""
    _trace(name, "go")


def worker_log(worker):
    with open(worker.logfile) as handle:
        return handle.read()


def hooks(tmp_path, result, count):
    wait_for(lambda: len(read_trace(tmp_path, "hooks-%s" % result.id)) >= count, 20,
             what="%d handler calls of %s" % (count, result.id))
    return read_trace(tmp_path, "hooks-%s" % result.id)


# -- Basics: bound tasks and the Task Request ----------------------------------------------

def test_a_bound_task_reads_the_request_fields_the_guide_lists(start_worker):
    """The guide's dump_context(self, x, y) with logger.info(self.request.id): on a worker,
    called directly, applied eagerly, and as a chain's second task."""
    worker = start_worker(name="ctx1")
    before = datetime.now(timezone.utc)
    result = dump_context.apply_async((1,), {'y': 2}, countdown=0.1, expires=60)
    seen = result.get(timeout=20)
    assert seen["id"] == result.id
    assert list(seen["args"]) == [1] and seen["kwargs"] == {'y': 2}
    assert seen["retries"] == 0 and seen["is_eager"] is False
    assert seen["called_directly"] is False
    assert seen["hostname"] == "ctx1"
    eta = datetime.fromisoformat(seen["eta"])
    expires = datetime.fromisoformat(seen["expires"])
    assert before < eta < expires and 59 < (expires - before).total_seconds() <= 61, seen
    assert seen["delivery_info"]["routing_key"] == "minitask", seen
    # A task sent by the client is its own workflow's root, and has no parent (as in Celery);
    # "correlation_id: usually the same as the task id".
    assert seen["root_id"] == seen["correlation_id"] == result.id
    assert seen["parent_id"] is None
    # reply_to: Celery names the caller's reply queue (for the rpc backend); minitask has no
    # reply queue ("Results live in the broker") and leaves it None.
    assert seen["reply_to"] is None
    wait_for(lambda: result.id in worker_log(worker), 10, what="logger.info(self.request.id)")

    local = dump_context(1, 2)                 # "set to true if the task wasn't executed by
    assert local["called_directly"] is True    # the worker"
    assert local["id"] is None and list(local["args"]) == [1, 2]
    eager = dump_context.apply((1, 2)).get()
    assert eager["is_eager"] is True and eager["called_directly"] is False
    assert eager["id"] is not None and eager["eta"] is None and eager["expires"] is None

    # In a chain, Celery's second task has root_id and parent_id the first task's id.
    # README, Task options: self.request has "correlation_id and root_id (the task's id),
    # parent_id and group (None)"; "parent_id and root_id (minitask does not record a task's
    # parent)".
    second = (add.s(1, 2) | dump_context.s(4)).apply_async()
    seen = second.get(timeout=20)
    assert list(seen["args"]) == [3, 4]
    assert seen["root_id"] == second.id and seen["parent_id"] is None
    assert second.parent.id != second.id


def test_argsrepr_and_kwargsrepr_hide_sensitive_arguments(start_worker):
    """"Hiding sensitive information in arguments": argsrepr and kwargsrepr change how the
    arguments are shown in logs and monitoring, not what the task gets. (They were refused:
    "unknown option argsrepr".)"""
    worker = start_worker()
    result = add.apply_async((2, 3), argsrepr='(<secret-x>, <secret-y>)')
    assert result.get(timeout=20) == 5
    account = 'acct-42'
    charged = charge.s(account, card='1234 5678 1234 5678').set(
        kwargsrepr=repr({'card': '**** **** **** 5678'})
    ).delay()
    assert charged.get(timeout=20) == "acct-42 charged to the card ending 5678"
    assert '1234 5678 1234 5678' not in worker_log(worker)


# -- Names, multiple decorators, and the tip on synchronous subtasks -------------------------

def test_names_explicit_and_automatic_and_a_stack_of_decorators(broker, start_worker,
                                                                tmp_path):
    """add.name is 'sum-of-two-numbers' or 'tasks.add' when given, else module.function;
    the task decorator applied last over two others; the guide's "Good" chain ending in an
    ignore_result task."""
    assert sum_of_two_numbers.name == 'sum-of-two-numbers'
    assert tasks_add.name == 'tasks.add'
    assert add.name == 'modtaskidioms.add'
    assert add_decorated.name == 'modtaskidioms.add_decorated'
    assert registry.tasks['modtaskidioms.add'] is add          # app.tasks[...]
    start_worker()
    for task in (sum_of_two_numbers, tasks_add, add):
        assert task.delay(2, 2).get(timeout=20) == 4
    assert send_task('sum-of-two-numbers', (2, 3)).get(timeout=20) == 5
    assert send_task('tasks.add', (2, 4)).get(timeout=20) == 6
    assert add_decorated.delay(1, 2).get(timeout=20) == 31      # (1 + 2) * 10 + 1

    update_page_info('example.org')
    wait_for(lambda: read_trace(tmp_path, "PageInfo"), 20, what="store_page_info")
    settle(broker)
    assert read_trace(tmp_path, "PageInfo") == ["example.org|example.org"]


# -- Argument checking and Task.throws -------------------------------------------------------

def test_argument_checking_and_expected_errors(start_worker):
    """add.delay(8) on a task of two arguments: TypeError in the caller with typing on; with
    typing=False "the worker receiving the task will raise an error". throws=(KeyError,
    HttpNotFound): a FAILURE all the same, logged at INFO without a traceback; an unexpected
    error at ERROR with one."""
    worker = start_worker()
    with pytest.raises(TypeError):
        add_typed.delay(8)
    assert add_typed.delay(8, 8).get(timeout=20) == 16
    with pytest.raises(TypeError):
        add_untyped.delay(8).get(timeout=20)
    # Celery checks by default (typing is on unless set False). README, Task options:
    # "typing | None (off) | True: a call whose arguments run() could not take raises
    # TypeError in the caller": off by default, so the worker raises it, as with False.
    unchecked = add.delay(8)
    with pytest.raises(TypeError):
        unchecked.get(timeout=20)

    missing, key, unexpected = (get_foo.delay(what) for what in ("missing", "key", "value"))
    with pytest.raises(HttpNotFound):
        missing.get(timeout=20)
    with pytest.raises(KeyError):
        key.get(timeout=20)
    with pytest.raises(ValueError):
        unexpected.get(timeout=20)
    assert missing.state == key.state == unexpected.state == states.FAILURE
    wait_for(lambda: unexpected.id in worker_log(worker), 10, what="the error logged")
    log = worker_log(worker)
    lines = log.splitlines()
    for expected in (missing, key, unexpected):     # the line saying how the task ended
        at, = [i for i, line in enumerate(lines) if expected.id in line and "raised" in line]
        traceback_follows = at + 1 < len(lines) and lines[at + 1].startswith("Traceback")
        if expected is unexpected:
            assert "ERROR" in lines[at] and traceback_follows, lines[at:at + 2]
        else:
            assert "INFO" in lines[at] and not traceback_follows, lines[at:at + 2]


# -- States: custom states and the built-in ones, with .info ---------------------------------

def test_a_custom_progress_state_with_meta_until_the_task_ends(start_worker, tmp_path):
    """The guide's upload_files: update_state(state='PROGRESS', meta={'current': i, 'total':
    len(filenames)}) unless called directly."""
    start_worker()
    tag = new_tag("upload")
    files = ["a-" + tag, "b-" + tag]
    result = upload_files.delay(files)
    wait_for(lambda: result.state == 'PROGRESS' and result.info == {'current': 0, 'total': 2},
             20, what="PROGRESS 0 of 2")
    assert not result.ready()
    go("uploaded-" + files[0])
    wait_for(lambda: result.info == {'current': 1, 'total': 2}, 20, what="PROGRESS 1 of 2")
    assert result.state == 'PROGRESS'
    go("uploaded-" + files[1])
    assert result.get(timeout=20) is None
    assert result.state == states.SUCCESS and result.info is None

    go("uploaded-c-" + tag)
    assert upload_files(["c-" + tag]) is None          # called directly: no state to update


def test_the_built_in_states_and_their_info(start_worker):
    """PENDING (any unknown id), STARTED, RETRY (the exception that caused the retry, and its
    traceback), REVOKED, SUCCESS (the return value) and FAILURE (the exception, and the
    traceback), and the sets of states the client uses."""
    start_worker()
    unknown = AsyncResult(str(uuid.uuid4()))
    assert unknown.state == states.PENDING and unknown.info is None
    assert not unknown.ready()

    tag = new_tag("whale")
    result = twitter_down.delay(tag)
    wait_for(lambda: result.state == states.STARTED, 20, what="STARTED")
    assert not result.ready()
    go("go-" + tag)
    wait_for(lambda: result.state == states.RETRY, 20, what="RETRY")
    assert isinstance(result.info, ConnectionError) and str(result.info) == 'the fail whale'
    assert "ConnectionError" in (result.traceback or ""), result.traceback
    assert not result.ready()
    result.revoke()
    wait_for(lambda: result.state == states.REVOKED, 20, what="REVOKED")
    assert isinstance(result.info, TaskRevokedError) and result.ready()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=20)

    ok = add.delay(2, 2)
    assert ok.get(timeout=20) == 4
    assert ok.state == states.SUCCESS and ok.info == 4 and ok.successful()
    bad = divide.delay(1, 0)
    assert isinstance(bad.get(timeout=20, propagate=False), ZeroDivisionError)
    assert bad.state == states.FAILURE and isinstance(bad.info, ZeroDivisionError)
    assert "return x / y" in bad.traceback and bad.failed()

    assert states.READY_STATES == {states.SUCCESS, states.FAILURE, states.REVOKED}
    assert states.PROPAGATE_STATES == {states.FAILURE, states.REVOKED}
    assert {states.PENDING, states.STARTED, states.RETRY} <= states.UNREADY_STATES


# -- Custom task classes: base=, handlers ----------------------------------------------------

def test_handlers_of_a_custom_base_class(start_worker, tmp_path):
    """before_start, on_success, on_failure (with einfo), on_retry and after_return, each
    with the task's id and original arguments; and the guide's MyTask.on_failure."""
    start_worker()
    ok = handled.delay("ok", user="george")
    assert ok.get(timeout=20) == "OK"
    assert hooks(tmp_path, ok, 3) == [
        "before_start|['ok']|{'user': 'george'}",
        "on_success|OK|['ok']|{'user': 'george'}",
        "after_return|SUCCESS|'OK'|['ok']|{'user': 'george'}"]

    bad = handled.delay("fail")
    with pytest.raises(KeyError):
        bad.get(timeout=20)
    assert hooks(tmp_path, bad, 3) == [
        "before_start|['fail']|{}",
        "on_failure|KeyError('no such user')|['fail']|{}|True",
        "after_return|FAILURE|KeyError('no such user')|['fail']|{}"]

    again = handled.delay("retry")
    assert again.get(timeout=20) == "RETRY"
    seen = hooks(tmp_path, again, 6)
    assert seen[:2] == ["before_start|['retry']|{}",
                        "on_retry|ConnectionError('try again')|['retry']|{}"], seen
    assert seen[2].startswith("after_return|RETRY|"), seen
    assert seen[3:] == ["before_start|['retry']|{}",
                        "on_success|RETRY|['retry']|{}",
                        "after_return|SUCCESS|'RETRY'|['retry']|{}"], seen

    failed = add_raising.delay(2, 2)
    with pytest.raises(KeyError):
        failed.get(timeout=20)
    wait_for(lambda: read_trace(tmp_path, "MyTask.on_failure"), 20, what="MyTask.on_failure")
    assert read_trace(tmp_path, "MyTask.on_failure") == ["%r failed: KeyError()" % failed.id]


def test_a_task_instance_is_made_once_per_process_and_keeps_state(start_worker):
    """"The __init__ constructor will only be called once per process": the guide's
    NaiveAuthenticateServer, and a DatabaseTask base caching its connection per process."""
    start_worker(args=("-c", "1"))
    assert NaiveAuthenticateServer.delay('george', 'password').get(timeout=20) is True
    assert NaiveAuthenticateServer.delay('george', 'wrong').get(timeout=20) is False
    assert NaiveAuthenticateServer.delay('bob', 'password').get(timeout=20) is False
    first = process_rows.delay().get(timeout=20)
    second = process_rows.delay().get(timeout=20)
    assert first[:3] == second[:3], (first, second)     # the same process, the same db
    assert first[2] == 1 and (first[3], second[3]) == (2, 4), (first, second)


# -- Semipredicates: Ignore and Reject ---------------------------------------------------------

def test_ignore_records_no_state_and_acks_the_message(broker, start_worker, tmp_path):
    """some_task raises Ignore() for an id in the revoked set: no state is recorded and the
    message is acknowledged. get_tweets stores SUCCESS itself with update_state, then
    raises Ignore()."""
    start_worker()
    revoked_id = str(uuid.uuid4())
    _trace('tasks.revoked', revoked_id)
    ignored = some_task.apply_async(task_id=revoked_id)
    done = some_task.delay()
    assert done.get(timeout=20) == "done"
    settle(broker)
    assert ignored.state == states.PENDING and ignored.info is None
    assert read_trace(tmp_path, "some_task") == [done.id]

    # README, Results: a task may report its own state with update_state, but "A final
    # state is refused there (a task reaches one by returning or raising)": the guide's
    # "stores results manually" example fails, saying so, instead of ending SUCCESS.
    tweets = get_tweets.delay('george')
    with pytest.raises(ConfigurationError, match="final state"):
        tweets.get(timeout=20)
    assert tweets.state == states.FAILURE


def test_reject_requeues_or_drops_the_message_of_an_acks_late_task(broker, start_worker,
                                                                    tmp_path):
    """The guide's requeues (Reject('no reason', requeue=True): it runs again, redelivered,
    as its request.delivery_info['redelivered'] says) and render_scene (Reject(exc,
    requeue=False) on MemoryError: not run again). Its queue has no dead-letter queue, so
    the message is dropped and minitask says so: FAILURE, DeadLetteredError (where Celery's
    result would stay STARTED for ever). There was no Reject (ImportError)."""
    start_worker()
    again = requeues.delay()
    assert again.get(timeout=20) is None
    assert read_trace(tmp_path, "requeues") == ["run", "run", "received two times"]
    scene = render_scene.delay('huge-scene.blend')
    with pytest.raises(DeadLetteredError, match="rejected"):
        scene.get(timeout=20)
    settle(broker)
    assert read_trace(tmp_path, "render_scene") == ['huge-scene.blend']
    eager = render_scene.apply(('huge-scene.blend',))
    assert eager.state == states.REJECTED and isinstance(eager.result, Reject)


# -- acks_late and task_reject_on_worker_lost --------------------------------------------------

def test_acks_late_acknowledges_after_the_task_returns(broker, start_worker, tmp_path):
    """acks_late=True: the message is acknowledged after the task returns, not just before
    it runs; with reject_on_worker_lost=True a task whose pool process is killed is
    redelivered and runs again."""
    start_worker()
    tag = new_tag("late")
    result = late.delay(tag)
    wait_for(lambda: result.state == states.STARTED, 20, what="the acks_late task to start")
    assert broker.queue()["unacked"] == 1
    go("go-" + tag)
    assert result.get(timeout=20) == tag
    settle(broker)

    tag = new_tag("early")
    result = early.delay(tag)
    wait_for(lambda: result.state == states.STARTED, 20, what="the task to start")
    assert broker.queue()["unacked"] == 0
    go("go-" + tag)
    assert result.get(timeout=20) == tag

    tag = new_tag("killed")
    assert killed_once.delay(tag).get(timeout=20) == "survived"
    assert read_trace(tmp_path, tag) == ["run", "run"]
    # Celery acks (and does not run again) an acks_late task whose process is killed unless
    # task_reject_on_worker_lost is set. README, Task options: accepted "only with the value
    # that is minitask's behaviour anyway: ... reject_on_worker_lost when True (... one whose
    # process dies goes back to its queue) ... The other values are refused."
    with pytest.raises(ConfigurationError, match="reject_on_worker_lost"):
        @shared_task(acks_late=True, reject_on_worker_lost=False)
        def not_redelivered():
            pass
