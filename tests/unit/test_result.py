"""minitask.result without a broker: EagerResult's surface, ResultSet over EagerResults, and
groups and map_async run eagerly (ALWAYS_EAGER) or with apply()."""

import datetime

import pytest

from minitask import config, group, task
from minitask.exceptions import SerializationError, TaskRevokedError
from minitask.canvas import Signature
from minitask import result as result_module
from minitask.result import (
    FAILURE, PENDING, READY_STATES, RETRY, REVOKED, STATES, SUCCESS, AsyncResult, EagerResult,
    GroupResult, ResultSet,
)


from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@pytest.fixture
def eager(no_broker):
    config.configure(ALWAYS_EAGER=True)


class Oops(Exception):
    pass


class Unsendable:
    """No serializer carries this."""


@task(name="tests.result.add")
def add(x, y):
    return x + y


@task(name="tests.result.fail")
def fail(message):
    raise Oops(message)


# -- states ------------------------------------------------------------------------------------

def test_the_states_are_the_spec_ones_in_order():
    assert STATES == ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE",
                      "REVOKED")
    assert READY_STATES == {"SUCCESS", "FAILURE", "REVOKED"}


# -- EagerResult -------------------------------------------------------------------------------

def test_a_successful_eager_result_reports_success():
    result = add.apply((2, 3))
    assert isinstance(result, EagerResult)
    assert result.state == result.status == SUCCESS
    assert result.result == 5 and result.info == 5
    assert result.traceback is None
    assert result.ready() and result.successful() and not result.failed()
    assert result.get() == 5 and result.wait() == 5
    assert result.get(propagate=False) == 5


def test_an_eager_result_has_date_done_as_a_result_from_a_worker_has():
    before = datetime.datetime.now(datetime.timezone.utc)
    done = add.apply((2, 3)).date_done
    assert before <= done <= datetime.datetime.now(datetime.timezone.utc)
    assert fail.apply(("x",)).date_done.tzinfo is datetime.timezone.utc


def test_a_failed_eager_result_raises_its_exception_on_get():
    result = fail.apply(("it broke",))
    assert result.state == result.status == FAILURE
    assert isinstance(result.result, Oops) and str(result.result) == "it broke"
    assert result.ready() and result.failed() and not result.successful()
    with pytest.raises(Oops, match="it broke"):
        result.get()
    with pytest.raises(Oops):
        result.wait()


def test_a_failed_eager_result_returns_its_exception_without_propagate():
    result = fail.apply(("quietly",))
    returned = result.get(propagate=False)
    assert isinstance(returned, Oops) and str(returned) == "quietly"


def test_a_failed_eager_result_keeps_the_traceback():
    result = fail.apply(("traced",))
    assert "Traceback (most recent call last)" in result.traceback
    assert "Oops: traced" in result.traceback
    assert "def fail" in result.traceback or "raise Oops" in result.traceback


def test_an_eager_result_has_its_task_id():
    result = add.apply((1, 1), task_id="eager-1")
    assert result.task_id == result.id == "eager-1"
    assert str(result) == "eager-1"
    assert result == "eager-1" and result == EagerResult("eager-1", None, SUCCESS)
    assert hash(result) == hash(EagerResult("eager-1", 0, FAILURE))


@pytest.mark.parametrize("state, ready", [(PENDING, False), (RETRY, False), ("STARTED", False),
                                          (SUCCESS, True), (FAILURE, True), (REVOKED, True)])
def test_an_eager_result_is_ready_only_in_a_final_state(state, ready):
    assert EagerResult("x", None, state).ready() is ready


def test_a_revoked_eager_result_raises_task_revoked_error():
    result = EagerResult("x", None, REVOKED)
    with pytest.raises(TaskRevokedError, match="x"):
        result.get()
    assert not result.successful() and not result.failed()


def test_revoke_and_forget_of_an_eager_result_do_nothing():
    result = add.apply((1, 2))
    result.revoke()
    result.forget()
    assert result.get() == 3


# -- ResultSet over EagerResults ---------------------------------------------------------------

def test_a_result_set_joins_values_in_order():
    results = ResultSet([add.apply((1, 1)), add.apply((2, 2)), add.apply((3, 3))])
    assert results.join() == [2, 4, 6] and results.get() == [2, 4, 6]
    assert results.ready() and results.successful() and not results.failed()
    assert results.completed_count() == 3
    assert len(results) == 3 and results[1].get() == 4
    assert [r.get() for r in results] == [2, 4, 6]


def test_a_result_set_with_a_failure_raises_it_on_join():
    results = ResultSet([add.apply((1, 1)), fail.apply(("second",)), add.apply((3, 3))])
    with pytest.raises(Oops, match="second"):
        results.join()
    values = results.join(propagate=False)
    assert values[0] == 2 and isinstance(values[1], Oops) and values[2] == 6
    assert results.ready() and results.failed() and not results.successful()
    assert results.completed_count() == 2


def test_a_result_set_is_ready_only_when_every_result_is():
    results = ResultSet([EagerResult("a", 1, SUCCESS), EagerResult("b", None, PENDING)])
    assert not results.ready() and results.waiting()
    assert results.completed_count() == 1


def test_an_empty_result_set_is_ready_and_joins_to_nothing():
    results = ResultSet([])
    assert results.ready() and results.join() == [] and results.completed_count() == 0


# -- groups and map_async ----------------------------------------------------------------------

def test_a_signature_holds_a_call_without_sending_it():
    signature = add.s(2, y=3)
    assert isinstance(signature, Signature)
    assert (signature.task, signature.args, signature.kwargs) == ("tests.result.add", (2,),
                                                                  {"y": 3})
    assert signature.type is add
    assert signature.apply().get() == 5
    assert repr(signature) == "tests.result.add(2, y=3)"


def test_group_apply_runs_every_call_here_and_returns_a_result_set(no_broker):
    results = group(add.s(1, 2), add.s(3, 4)).apply()
    assert isinstance(results, ResultSet)
    assert all(isinstance(r, EagerResult) for r in results)
    assert results.join() == [3, 7] and results.completed_count() == 2


def test_group_takes_a_list_of_signatures_too(no_broker):
    assert group([add.s(i, i) for i in range(4)]).apply().join() == [0, 2, 4, 6]


def test_group_apply_async_under_always_eager_runs_here(eager):
    results = group(add.s(1, 2), fail.s("in a group"), add.s(5, 5)).apply_async()
    assert isinstance(results, ResultSet) and results.ready()
    assert results.completed_count() == 2
    with pytest.raises(Oops, match="in a group"):
        results.join()


def test_map_async_under_always_eager_runs_each_argument_tuple(eager):
    results = add.map_async([(1, 2), (3, 4), [5, 6]])
    assert isinstance(results, ResultSet)
    assert results.join() == [3, 7, 11]
    assert results.ready() and results.completed_count() == 3


def test_map_async_takes_single_arguments_as_one_argument_calls(eager):
    @task()
    def square(x):
        return x * x

    assert square.map_async(range(4)).join() == [0, 1, 4, 9]


def test_map_async_on_a_class_works_like_on_the_object(eager):
    from minitask import Task

    class Double(Task):
        def run(self, x):
            return 2 * x

    assert Double.map_async([1, 2]).join() == [2, 4]


def test_a_group_refuses_unserializable_arguments_before_any_connection(no_broker):
    with pytest.raises(SerializationError, match="Unsendable"):
        group(add.s(1, 2), add.s(Unsendable(), 1)).apply_async()


def test_delay_of_a_signature_adds_arguments(eager):
    assert add.s(1).delay(2).get() == 3


# -- waiting inside a task (Celery's "never call result.get() within a task") ---------------

class _Waited(Exception):
    """What the stub connection raises once asked to wait: the wait was let through."""


class _StubConnection:
    def connect(self):
        return self

    def wait_result(self, task_id, timeout=None):
        raise _Waited(task_id)


@pytest.fixture
def in_a_pool_process():
    result_module.set_task_join_will_block(True)
    yield
    result_module.set_task_join_will_block(False)


def test_get_inside_a_task_refuses_to_wait_as_celery_does(no_broker, in_a_pool_process):
    """A task that waits for another's result may wait for ever: the other can be queued
    behind it, for its own pool process. Celery refuses with RuntimeError; so does
    minitask, before anything is sent, for a set as for one result."""
    assert result_module.task_join_will_block()
    waiting = AsyncResult("sub-task", connection=_StubConnection())
    with pytest.raises(RuntimeError, match=r"never call result\.get\(\) within a task"):
        waiting.get(timeout=1)
    with pytest.raises(RuntimeError, match="within a task"):
        waiting.wait()
    with pytest.raises(RuntimeError, match="within a task"):
        ResultSet([add.apply((1, 1)), waiting]).join()
    with pytest.raises(RuntimeError, match="within a task"):
        GroupResult("g", [waiting]).get(timeout=1)


def test_get_inside_a_task_waits_when_told_to(in_a_pool_process):
    waiting = AsyncResult("sub-task", connection=_StubConnection())
    with pytest.raises(_Waited):
        waiting.get(timeout=1, disable_sync_subtasks=False)
    with pytest.raises(_Waited):
        ResultSet([waiting]).join(disable_sync_subtasks=False)
    with result_module.allow_join_result():
        assert not result_module.task_join_will_block()
        with pytest.raises(_Waited):
            waiting.get(timeout=1)
    assert result_module.task_join_will_block()


def test_results_that_need_no_wait_are_given_inside_a_task_too(in_a_pool_process):
    """Eager results ran already; nothing waits for them, so nothing is refused."""
    assert add.apply((2, 3)).get() == 5
    assert ResultSet([add.apply((1, 1)), add.apply((2, 2))]).join() == [2, 4]


def test_get_outside_a_task_is_not_refused():
    assert not result_module.task_join_will_block()
    with pytest.raises(_Waited):
        AsyncResult("sub-task", connection=_StubConnection()).get(timeout=1)


@pytest.mark.parametrize("task_id", [None, 12345, b"bytes-id"])
def test_an_async_result_without_a_task_id_is_refused_where_it_is_made(task_id):
    """As Celery's ValueError: made from None (a lookup that found nothing, say), it used to
    fail only when used, with a protocol error or, on Redis, a TypeError from inside."""
    with pytest.raises(ValueError, match="AsyncResult needs a task id"):
        AsyncResult(task_id)


def test_an_async_result_takes_a_uuid_as_its_string():
    import uuid
    task_id = uuid.uuid4()
    assert AsyncResult(task_id).id == str(task_id)


# -- Celery's result and canvas calls an outside check found missing -------------------------

def test_get_and_join_take_celerys_keywords_and_call_back_with_each_value(eager):
    seen = []
    result = add.delay(2, 3)
    assert result.get(timeout=1, interval=0.1, no_ack=False, follow_parents=True,
                      callback=lambda task_id, value: seen.append((task_id, value))) == 5
    assert seen == [(result.id, 5)]
    results = ResultSet([add.delay(1, 1), add.delay(2, 2)])
    assert results.join(interval=0.1, no_ack=True) == results.join_native() == [2, 4]
    del seen[:]
    assert results.join(callback=lambda task_id, value: seen.append(value)) == []
    assert seen == [2, 4]


def test_maybe_throw_raises_a_failure_and_returns_a_value_without_waiting(eager):
    assert add.delay(1, 2).maybe_throw() == 3
    with pytest.raises(Oops, match="no"):
        fail.delay("no").maybe_throw()
    assert isinstance(fail.delay("no").maybe_throw(propagate=False), Oops)
    with pytest.raises(Oops):
        ResultSet([add.delay(1, 2), fail.delay("no")]).maybe_throw()


def test_a_result_set_is_added_to_and_taken_from_as_celerys(eager):
    first, second = add.delay(1, 1), add.delay(2, 2)
    results = ResultSet([first])
    results.add(first)
    results.update([second, first])
    assert list(results) == [first, second]
    results.discard(first)
    results.discard(first)
    assert list(results) == [second]
    with pytest.raises(KeyError):
        results.remove(first)
    results.remove(second.id)                   # by its id, as Celery's
    assert len(results) == 0
    results.add(first)
    results.clear()
    assert len(results) == 0


def test_a_group_result_says_why_it_cannot_be_saved_or_restored():
    with pytest.raises(NotImplementedError, match="keep the GroupResult"):
        GroupResult("g", []).save()
    with pytest.raises(NotImplementedError, match="GroupResult\\(id"):
        GroupResult.restore("g")


def test_revoke_takes_celerys_wait_and_timeout(eager):
    add.delay(1, 1).revoke(terminate=False, wait=True, timeout=1.0)
    ResultSet([add.delay(1, 1)]).revoke(wait=True, timeout=1.0)


def test_invert_sends_a_signature_and_waits_for_its_value(eager):
    assert ~add.s(2, 3) == 5


@pytest.mark.parametrize("start, stop, countdowns", [
    (1, None, [1.0, 3.0, 5.0]), (1, 3.0, [1.0, 3.0, 3.0]), (1, 0, [1.0, 3.0, 5.0]),
    (5, 3, [3.0, 3.0, 3.0])])
def test_skew_spreads_a_groups_countdowns_as_celerys(start, stop, countdowns):
    spread = group(add.s(i, i) for i in range(3)).skew(start=start, stop=stop, step=2)
    assert [member.options["countdown"] for member in spread.tasks] == countdowns


def test_the_states_module_names_celerys_states():
    from minitask import states
    assert (states.PENDING, states.SUCCESS, states.FAILURE) == (PENDING, SUCCESS, FAILURE)
    assert states.READY_STATES == READY_STATES
    assert states.PROPAGATE_STATES == {"FAILURE", "REVOKED"}
    assert states.ALL_STATES == set(STATES)


_noted = []


@task(name="tests.result.ignores")
def ignores(x):
    from minitask.exceptions import Ignore
    raise Ignore()


@task(name="tests.result.note")
def note(tag):
    _noted.append(tag)
    return tag


def test_an_eager_run_that_raises_ignore_records_nothing_and_stops_its_chain(eager):
    from minitask import chain
    del _noted[:]
    result = ignores.apply((1,), link_error=note.si("errback"), link=note.si("link"))
    assert result.state == "IGNORED" and result.get() is None and not result.ready()
    stopped = chain(ignores.s(1), note.si("next")).apply_async()
    assert stopped.state == "IGNORED" and stopped.get() is None
    assert _noted == []
