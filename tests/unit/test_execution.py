"""minitask.worker.execution: `run_task`'s outcomes, `run_eagerly`, and `execute_delivery`
fed encoded messages (`TaskMessage(...).encode()` through `protocol.encode_message`), its
RESULT_SET frame decoded back to what the caller would see."""
import time

import pytest

from minitask import client, protocol, task
from minitask.exceptions import (
    ContentDisallowed, NotRegistered, SerializationError, TaskRevokedError,
)
from minitask.message import TaskMessage, decode_result_meta
from minitask.task import DEFAULT_KWARG_NAMES, current_request
from minitask.worker.execution import execute_delivery, run_eagerly, run_task


from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


class Oops(Exception):
    pass


class Unsendable:
    """No serializer carries this."""


RAN = []


@task(name="tests.execution.add")
def add(x, y):
    RAN.append((x, y))
    return x + y


@task(name="tests.execution.fail")
def fail(message):
    raise Oops(message)


@task(name="tests.execution.quiet", ignore_result=True)
def quiet(should_fail=False):
    if should_fail:
        raise Oops("quiet but failed")
    return "unseen"


@task(name="tests.execution.unsendable")
def unsendable():
    return Unsendable()


@task(name="tests.execution.kwargs")
def everything(**kwargs):
    return kwargs


def delivered(name, args=(), kwargs=None, **options):
    """The bytes a worker is handed for one call."""
    return protocol.encode_message(TaskMessage(name, args, kwargs, **options).encode())


def stored(executed):
    """What the broker would store from this RESULT_SET frame: (task_id, state, meta)."""
    length, kind, seq = protocol.HEADER.unpack_from(executed.frame)
    assert kind == protocol.RESULT_SET
    assert length == len(executed.frame) - protocol.HEADER.size
    task_id, state, _flags, _time, content_type, payload = protocol.decode_result(
        executed.frame[protocol.HEADER.size:])
    return task_id, state, decode_result_meta(task_id, state, content_type, payload)


# -- run_task ----------------------------------------------------------------------------------

def test_run_task_success_is_the_return_value():
    outcome = run_task(add, TaskMessage(add.name, (2, 3)))
    assert (outcome.state, outcome.result, outcome.traceback) == ("SUCCESS", 5, None)
    assert outcome.runtime >= 0


def test_run_task_failure_is_the_exception_and_its_traceback():
    outcome = run_task(fail, TaskMessage(fail.name, ("broken",)))
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, Oops) and str(outcome.result) == "broken"
    assert "Traceback" in outcome.traceback and "Oops: broken" in outcome.traceback


def test_run_task_never_raises_the_tasks_own_exception_even_system_exit():
    @task()
    def exits():
        raise SystemExit(3)

    outcome = run_task(exits, TaskMessage(exits.name))
    assert outcome.state == "FAILURE" and isinstance(outcome.result, SystemExit)


def test_run_task_offers_the_default_kwargs():
    message = TaskMessage(everything.name, (), {"mine": 1}, id="id-9", retries=4)
    outcome = run_task(everything, message, logfile="/tmp/w.log", loglevel="INFO")
    assert outcome.result == {"mine": 1, "logfile": "/tmp/w.log", "loglevel": "INFO",
                              "task_id": "id-9", "task_name": everything.name,
                              "task_retries": 4}


def test_run_task_gives_the_task_its_request_while_it_runs_and_clears_it_after():
    seen = []

    @task()
    def introspect(x):
        request = current_request()
        seen.append((request.id, request.name, request.args, request.retries))
        return x

    run_task(introspect, TaskMessage(introspect.name, (1,), id="req-1", retries=2))
    assert seen == [("req-1", introspect.name, (1,), 2)]
    assert current_request() is None
    run_task(fail, TaskMessage(fail.name, ("x",)))
    assert current_request() is None


def test_run_eagerly_returns_the_final_outcome_and_the_last_message():
    runs = []

    @task()
    def twice(task_retries):
        runs.append(task_retries)
        if task_retries == 0:
            twice.retry(kwargs={"task_retries": task_retries}, countdown=0)
        return "second"

    outcome, message = run_eagerly(twice, task_id="eager-9")
    assert (outcome.state, outcome.result) == ("SUCCESS", "second")
    assert (message.id, message.retries) == ("eager-9", 1)
    assert runs == [0, 1]


# -- execute_delivery --------------------------------------------------------------------------

def test_a_successful_delivery_stores_the_value():
    executed = execute_delivery(delivered(add.name, (2, 2), id="ok-1"))
    assert executed.state == "SUCCESS" and executed.task_id == "ok-1"
    assert executed.task_name == add.name
    task_id, state, meta = stored(executed)
    assert (task_id, state, meta.status, meta.result) == ("ok-1", "SUCCESS", "SUCCESS", 4)
    assert meta.task == add.name


def test_a_failed_delivery_stores_the_exception_and_traceback():
    executed = execute_delivery(delivered(fail.name, ("bad input",), id="bad-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("bad-1", "FAILURE")
    assert isinstance(meta.result, Oops) and str(meta.result) == "bad input"
    assert "Oops: bad input" in meta.traceback


def test_a_failed_delivery_calls_on_failure():
    calls = []
    execute_delivery(delivered(fail.name, ("x",)),
                     on_failure=lambda t, m, o: calls.append((t.name, o.state)))
    assert calls == [(fail.name, "FAILURE")]


def test_an_unknown_task_is_stored_as_a_not_registered_failure_naming_it():
    executed = execute_delivery(delivered("tests.execution.nowhere", id="lost-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("lost-1", "FAILURE")
    assert isinstance(meta.result, NotRegistered)
    assert "tests.execution.nowhere" in str(meta.result)


def test_pickle_refused_by_accept_is_stored_as_content_disallowed_and_never_run():
    del RAN[:]
    data = delivered(add.name, (1, 1), id="pickled-1", serializer="pickle")
    executed = execute_delivery(data, accept=["json"])
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("pickled-1", "FAILURE")
    assert isinstance(meta.result, ContentDisallowed)
    assert RAN == []


def test_pickle_accepted_runs_and_stores_with_pickle():
    executed = execute_delivery(delivered(add.name, (1, 1), serializer="pickle"),
                                accept=["json", "pickle"])
    assert stored(executed)[2].result == 2


def test_a_malformed_body_is_stored_as_a_serialization_error_for_that_task_id():
    message = TaskMessage(add.name, (1, 1), id="garbled-1").encode()
    message.body = b"{not json"
    executed = execute_delivery(protocol.encode_message(message))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("garbled-1", "FAILURE")
    assert isinstance(meta.result, SerializationError)


def test_an_expired_task_is_revoked_and_never_runs():
    del RAN[:]
    now = time.time()
    executed = execute_delivery(delivered(add.name, (1, 2), id="late-1", expires=now - 1),
                                now=now)
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("late-1", "REVOKED")
    assert isinstance(meta.result, TaskRevokedError)
    assert RAN == []


def test_a_task_not_yet_expired_runs():
    now = time.time()
    executed = execute_delivery(delivered(add.name, (1, 2), expires=now + 60), now=now)
    assert stored(executed)[1] == "SUCCESS"


def test_an_ignore_result_success_stores_nothing():
    executed = execute_delivery(delivered(quiet.name))
    assert executed.state == "SUCCESS" and executed.frame is None


def test_an_ignore_result_failure_is_still_stored():
    executed = execute_delivery(delivered(quiet.name, (True,), id="quiet-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("quiet-1", "FAILURE")
    assert str(meta.result) == "quiet but failed"


def test_a_delivery_offers_the_default_kwargs_and_keeps_the_callers():
    executed = execute_delivery(delivered(everything.name, (), {"mine": [1]}, id="kw-1",
                                          retries=2), logfile="/tmp/w.log", loglevel="DEBUG")
    assert stored(executed)[2].result == {
        "mine": [1], "logfile": "/tmp/w.log", "loglevel": "DEBUG", "task_id": "kw-1",
        "task_name": everything.name, "task_retries": 2}
    assert set(stored(executed)[2].result) - {"mine"} == set(DEFAULT_KWARG_NAMES)


def test_a_result_json_cannot_carry_is_stored_as_a_failure_saying_so():
    executed = execute_delivery(delivered(unsendable.name, id="odd-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state, meta.status) == ("odd-1", "FAILURE", "FAILURE")
    assert isinstance(meta.result, SerializationError)
    assert "Unsendable" in str(meta.result)
    assert executed.state == "FAILURE"


def test_a_retry_during_a_delivery_is_resent_and_stored_as_retry_with_the_tombstone(
        monkeypatch):
    published = []

    class FakeConnection:
        def publish(self, message):
            published.append(TaskMessage.decode(message))

    monkeypatch.setattr(client, "connection", lambda *a, **k: FakeConnection())

    @task()
    def again(**kwargs):
        again.retry(kwargs=kwargs, exc=Oops("wait for it"), countdown=10)

    executed = execute_delivery(delivered(again.name, id="again-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("again-1", "RETRY")
    assert isinstance(meta.result, Oops) and str(meta.result) == "wait for it"
    assert [(m.id, m.retries) for m in published] == [("again-1", 1)]
