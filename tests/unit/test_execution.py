"""minitask.worker.execution: `run_task`'s outcomes, `run_eagerly`, and `execute_delivery`
fed encoded messages (`TaskMessage(...).encode()` through `protocol.encode_message`), its
RESULT_SET frame decoded back to what the caller would see."""
import time

import pytest

from minitask import Task, protocol, task, transport
from minitask.exceptions import (
    ContentDisallowed, NotRegistered, RetryTaskError, SerializationError, TaskRevokedError,
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
    """What the worker would store for this report: (task_id, state, meta)."""
    assert executed.store
    task_id, state = executed.task_id, executed.state
    return task_id, state, decode_result_meta(task_id, state, executed.content_type,
                                              executed.payload)


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


def test_a_task_called_as_a_plain_function_inside_a_running_task_has_a_request_of_its_own(
        resent):
    """As in Celery: the inner call's `request` says `called_directly`, with no id, so its
    update_state() and retry() cannot act for the task that runs (they did: the outer task's
    progress was overwritten, and a retry was sent under its id with its args)."""
    seen = []

    @task(bind=True, name="tests.execution.helper")
    def helper(self, x):
        seen.append(("helper", self.request.id, self.request.called_directly))
        if not self.request.called_directly:
            self.update_state(state="HELPER")
        try:
            self.retry(countdown=5)
        except RetryTaskError as exc:
            seen.append(("helper retry", str(exc)))
        return x + 1

    @task(bind=True, name="tests.execution.outer")
    def outer(self, x, depth=0):
        if depth == 0:
            outer(x, depth=1)           # itself, as a plain function
        seen.append(("outer", depth, self.request.id, self.request.called_directly))
        return helper(x)

    assert run_task(outer, TaskMessage(outer.name, (41,), id="outer-1")).result == 42
    helped = [("helper", None, True),
              ("helper retry", "retry() called outside a running task and without task_id")]
    assert seen == [("outer", 1, None, True)] + helped + [("outer", 0, "outer-1", False)] \
        + helped
    assert resent == [] and current_request() is None


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
    assert executed.state == "SUCCESS" and not executed.store and executed.payload == b""


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


def test_a_retry_during_a_delivery_is_stored_as_retry_and_resent_with_that_result(
        monkeypatch):
    # The retry is not published by the pool process: it travels with the RETRY, which the
    # worker stores and publishes in one atomic step. Published at once, it could run on
    # another pool process and store its own outcome before this RETRY overwrote it (CI
    # met that: a retry plan's FAILURE came first and the task was left in RETRY).
    published = []

    class FakeConnection:
        def publish(self, message):
            published.append(TaskMessage.decode(message))

    monkeypatch.setattr(transport, "connection", lambda *a, **k: FakeConnection())

    @task()
    def again(**kwargs):
        again.retry(kwargs=kwargs, exc=Oops("wait for it"), countdown=10)

    executed = execute_delivery(delivered(again.name, id="again-1"))
    task_id, state, meta = stored(executed)
    assert (task_id, state) == ("again-1", "RETRY")
    assert isinstance(meta.result, Oops) and str(meta.result) == "wait for it"
    assert published == []
    resent = [TaskMessage.decode(protocol.decode_message(data)) for data in executed.publish]
    assert [(m.id, m.retries, 9 < m.eta - time.time() <= 10) for m in resent] == [
        ("again-1", 1, True)]


def test_a_retry_the_task_swallowed_is_still_sent_with_its_result_as_celery_would(
        monkeypatch):
    monkeypatch.setattr(transport, "connection", lambda *a, **k: pytest.fail("published"))

    @task(bind=True, name="tests.execution.swallows")
    def swallows(self):
        try:
            self.retry(countdown=5)
        except RetryTaskError:
            return "carried on"

    executed = execute_delivery(delivered(swallows.name, id="sw-1"))
    task_id, state, meta = stored(executed)
    assert (state, meta.result) == ("SUCCESS", "carried on")
    assert [protocol.message_id_of(data) for data in executed.publish] == ["sw-1"]
    assert not meta.children            # its own retry is not a child of it


def test_a_retry_with_a_route_of_its_own_is_held_too_and_its_queue_declared(monkeypatch):
    # A route the broker refuses is refused with the RETRY, and the worker then stores the
    # task's FAILURE (test_worker_refused.py); a queue it names is declared at once.
    declared = []

    class Broker:
        def publish(self, message):
            pytest.fail("published from the pool process")

        def ensure_queue(self, name):
            declared.append(name)

    monkeypatch.setattr(transport, "connection", lambda *a, **k: Broker())

    @task(bind=True, name="tests.execution.rerouted")
    def rerouted(self, how):
        self.retry(countdown=5, **how)

    for how in ({"routing_key": "elsewhere"}, {"exchange": "other"}, {"mandatory": True},
                {"queue": "q2"}):
        executed = execute_delivery(delivered(rerouted.name, (how,), id="r-1"))
        assert executed.state == "RETRY" and len(executed.publish) == 1
    assert declared == ["q2"]


def test_outside_a_worker_retry_still_publishes_at_once(resent):
    @task(bind=True, name="tests.execution.direct_retry")
    def direct(self):
        self.retry(countdown=5)

    outcome = run_task(direct, TaskMessage(direct.name, (), id="d-1"))
    assert outcome.state == "RETRY"
    assert [(m.id, m.retries) for m in resent] == [("d-1", 1)]


# -- Celery's options, as a worker runs them ---------------------------------------------------

@pytest.fixture
def resent(monkeypatch):
    """The calls retry() sends again, decoded, instead of reaching a broker."""
    published = []

    class FakeConnection:
        def publish(self, message):
            published.append(TaskMessage.decode(message))

    monkeypatch.setattr(transport, "connection", lambda *a, **k: FakeConnection())
    return published


def test_a_bound_task_sees_celerys_request_attributes(monkeypatch):
    monkeypatch.setenv("MINITASK_WORKER_HOSTNAME", "w1@box")
    seen = {}

    @task(bind=True, name="tests.execution.bound", time_limit=9)
    def bound(self, x, task_id=None):
        request = self.request
        seen.update(id=request.id, task=request.task, args=request.args,
                    kwargs=request.kwargs, retries=request.retries, eager=request.is_eager,
                    direct=request.called_directly, host=request.hostname, eta=request.eta,
                    expires=request.expires, info=request.delivery_info,
                    limits=request.timelimit, root=request.root_id,
                    parent=request.get("parent_id"), missing=request.get("nothing", "dflt"))
        return self is bound

    message = TaskMessage(bound.name, (1,), {}, id="b-1", retries=2, eta=1700000000.0,
                          expires=1800000000.0, exchange="", routing_key="hipri", priority=3)
    assert run_task(bound, message).result is True
    assert seen == {
        "id": "b-1", "task": bound.name, "args": (1,), "kwargs": {"task_id": "b-1"},
        "retries": 2, "eager": False, "direct": False, "host": "w1@box",
        "eta": "2023-11-14T22:13:20+00:00", "expires": "2027-01-15T08:00:00+00:00",
        "info": {"exchange": "", "routing_key": "hipri", "priority": 3, "redelivered": False},
        "limits": (9, None), "root": "b-1", "parent": None, "missing": "dflt"}


def test_autoretry_for_retries_with_retry_kwargs_and_ends_with_the_original_exception(resent):
    @task(autoretry_for=(Oops,), retry_kwargs={"max_retries": 2, "countdown": 7},
          name="tests.execution.auto")
    def auto():
        raise Oops("again")

    outcome = run_task(auto, TaskMessage(auto.name, (), id="a-1"))
    assert outcome.state == "RETRY" and isinstance(outcome.result, Oops)
    assert [(m.id, m.retries, m.eta > 0) for m in resent] == [("a-1", 1, True)]
    assert 6 < resent[0].eta - time.time() <= 7
    final = run_task(auto, TaskMessage(auto.name, (), id="a-1", retries=2))
    assert final.state == "FAILURE" and isinstance(final.result, Oops)
    assert "Oops: again" in final.traceback and len(resent) == 1


def test_autoretry_leaves_other_exceptions_and_dont_autoretry_for_alone(resent):
    class Fatal(Oops):
        pass

    @task(autoretry_for=(Oops,), dont_autoretry_for=(Fatal,), name="tests.execution.picky")
    def picky(kind):
        raise {"oops": Oops, "fatal": Fatal, "key": KeyError}[kind]("x")

    assert run_task(picky, TaskMessage(picky.name, ("oops",))).state == "RETRY"
    assert run_task(picky, TaskMessage(picky.name, ("fatal",))).state == "FAILURE"
    assert run_task(picky, TaskMessage(picky.name, ("key",))).state == "FAILURE"
    assert len(resent) == 1


@pytest.mark.parametrize("backoff, retries, expected", [
    (True, 0, 1), (True, 3, 8), (3, 2, 12), (True, 12, 600), (0.5, 1, 2)])
def test_retry_backoff_without_jitter_is_celerys_countdown(resent, backoff, retries, expected):
    @task(autoretry_for=(Oops,), retry_backoff=backoff, retry_jitter=False, max_retries=None,
          name="tests.execution.backoff")
    def backs_off():
        raise Oops("later")

    started = time.time()
    run_task(backs_off, TaskMessage(backs_off.name, (), retries=retries))
    assert started + expected - 1 < resent[0].eta <= time.time() + expected


def test_retry_backoff_with_jitter_is_a_whole_number_of_seconds_up_to_the_backoff(resent):
    @task(autoretry_for=(Oops,), retry_backoff=2, retry_backoff_max=100, max_retries=None,
          name="tests.execution.jitter")
    def jitters():
        raise Oops("later")

    for _ in range(40):
        run_task(jitters, TaskMessage(jitters.name, (), retries=3))
    waits = [round(m.eta - time.time()) for m in resent]
    assert all(0 <= wait <= 16 for wait in waits) and len(set(waits)) > 3


def test_autoretry_in_an_eager_call_retries_inline():
    runs = []

    @task(autoretry_for=(Oops,), retry_backoff=True, max_retries=3, name="tests.execution.ea")
    def eager(fail_times):
        runs.append(1)
        if len(runs) <= fail_times:
            raise Oops("not yet")
        return len(runs)

    assert eager.apply((2,)).get() == 3
    runs.clear()
    result = eager.apply((9,))
    assert result.state == "FAILURE" and len(runs) == 4


def test_the_hooks_are_called_with_celerys_arguments(resent):
    calls = []

    class Hooked(Task):
        abstract = True

        def before_start(self, task_id, args, kwargs):
            calls.append(("before_start", task_id, args, kwargs))

        def on_success(self, retval, task_id, args, kwargs):
            calls.append(("on_success", retval, task_id))

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            calls.append(("on_failure", type(exc).__name__, "Oops: no" in einfo.traceback))

        def on_retry(self, exc, task_id, args, kwargs, einfo):
            calls.append(("on_retry", str(exc)))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after_return", status))

    @task(base=Hooked, name="tests.execution.hooked")
    def hooked(mode):
        if mode == "fail":
            raise Oops("no")
        if mode == "retry":
            hooked.retry(exc=Oops("later"), countdown=60)
        return "fine"

    run_task(hooked, TaskMessage(hooked.name, ("ok",), id="h-1"))
    run_task(hooked, TaskMessage(hooked.name, ("fail",), id="h-2"))
    run_task(hooked, TaskMessage(hooked.name, ("retry",), id="h-3"))
    assert calls == [
        ("before_start", "h-1", ("ok",), {}), ("on_success", "fine", "h-1"),
        ("after_return", "SUCCESS"),
        ("before_start", "h-2", ("fail",), {}), ("on_failure", "Oops", True),
        ("after_return", "FAILURE"),
        ("before_start", "h-3", ("retry",), {}), ("on_retry", "later"),
        ("after_return", "RETRY")]


def test_a_hook_that_raises_is_logged_and_changes_nothing(caplog):
    class Clumsy(Task):
        abstract = True

        def on_success(self, retval, task_id, args, kwargs):
            raise RuntimeError("hook broke")

    @task(base=Clumsy, name="tests.execution.clumsy")
    def clumsy():
        return 42

    outcome = run_task(clumsy, TaskMessage(clumsy.name, (), id="c-1"))
    assert (outcome.state, outcome.result) == ("SUCCESS", 42)
    assert "on_success() raised" in caplog.text and "hook broke" in caplog.text


def test_an_error_before_start_fails_the_task():
    class Refusing(Task):
        abstract = True

        def before_start(self, task_id, args, kwargs):
            raise Oops("not now")

    @task(base=Refusing, name="tests.execution.refusing")
    def refusing():
        RAN.append("refusing")

    outcome = run_task(refusing, TaskMessage(refusing.name))
    assert outcome.state == "FAILURE" and "refusing" not in RAN


def test_an_expected_error_in_throws_is_a_failure_logged_without_traceback(caplog):
    failures = []

    @task(throws=(KeyError,), name="tests.execution.expected")
    def expected(kind):
        raise KeyError(kind) if kind == "key" else Oops(kind)

    caplog.set_level("INFO")
    executed = execute_delivery(delivered(expected.name, ("key",)),
                                on_failure=lambda *a: failures.append(a))
    assert stored(executed)[1] == "FAILURE"
    record = [r for r in caplog.records if "raised expected KeyError" in r.getMessage()][0]
    assert record.levelname == "INFO" and "Traceback" not in record.getMessage()
    assert failures == []
    execute_delivery(delivered(expected.name, ("boom",)), on_failure=lambda *a: failures.append(a))
    assert len(failures) == 1
