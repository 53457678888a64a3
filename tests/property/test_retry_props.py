"""The retry invariant of SPEC "Retry", run eagerly through `apply()` (retries inline,
countdowns skipped): a task that fails k times and retries each time, with max_retries m,
runs min(k, m) + 1 times, sees task_retries 0, 1, 2, ... in order, and ends SUCCESS iff
k <= m; otherwise it raises `exc` (or MaxRetriesExceededError when no `exc` was given)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitask import Task, transport, task
from minitask.exceptions import MaxRetriesExceededError

MAX_RETRIES = st.integers(min_value=0, max_value=6)
FAILURES = st.integers(min_value=0, max_value=10)


class Failure(Exception):
    pass


class Script:
    """How many runs fail, and what each run saw."""

    def __init__(self, failures, with_exc):
        self.failures = failures
        self.with_exc = with_exc
        self.seen = []

    def run(self, retry, task_retries):
        self.seen.append(task_retries)
        if len(self.seen) <= self.failures:
            exc = Failure("failure %d" % len(self.seen)) if self.with_exc else None
            retry(exc)
        return "done after %d runs" % len(self.seen)


SCRIPT = {}


@task(name="tests.property.retry.flaky_function")
def flaky_function(**kwargs):
    return SCRIPT["now"].run(
        lambda exc: flaky_function.retry(kwargs=kwargs, exc=exc), kwargs["task_retries"])


class FlakyClass(Task):
    """Retries without passing kwargs: the count comes from the running task."""

    name = "tests.property.retry.FlakyClass"

    def run(self):
        return SCRIPT["now"].run(lambda exc: self.retry(exc=exc), self.request.retries)


FLAKY = [flaky_function, FlakyClass._instance()]


@pytest.fixture(autouse=True, scope="module")
def no_broker():
    """Eager retries never reach a broker: any attempt fails the test."""
    original = transport.connection

    def refuse(*args, **kwargs):
        pytest.fail("a connection to the broker was attempted")
    transport.connection = refuse
    yield
    transport.connection = original


def run(flaky, failures, max_retries, with_exc):
    SCRIPT["now"] = script = Script(failures, with_exc)
    previous = type(flaky).max_retries
    type(flaky).max_retries = max_retries
    try:
        return flaky.apply(), script.seen
    finally:
        type(flaky).max_retries = previous


def check(result, seen, failures, max_retries, with_exc):
    assert len(seen) == min(failures, max_retries) + 1
    assert seen == list(range(len(seen)))
    if failures <= max_retries:
        assert result.state == "SUCCESS"
        assert result.get() == "done after %d runs" % (failures + 1)
    else:
        assert result.state == "FAILURE"
        if with_exc:
            assert isinstance(result.result, Failure)
            assert str(result.result) == "failure %d" % (max_retries + 1)
            with pytest.raises(Failure):
                result.get()
        else:
            assert isinstance(result.result, MaxRetriesExceededError)
            with pytest.raises(MaxRetriesExceededError):
                result.get()


@given(max_retries=MAX_RETRIES, failures=FAILURES, which=st.sampled_from(FLAKY))
def test_k_failures_with_exc_run_min_k_m_plus_one_times_and_raise_exc_past_m(
        max_retries, failures, which):
    result, seen = run(which, failures, max_retries, with_exc=True)
    check(result, seen, failures, max_retries, with_exc=True)


@given(max_retries=MAX_RETRIES, failures=FAILURES, which=st.sampled_from(FLAKY))
def test_k_failures_without_exc_run_min_k_m_plus_one_times_and_give_up_past_m(
        max_retries, failures, which):
    result, seen = run(which, failures, max_retries, with_exc=False)
    check(result, seen, failures, max_retries, with_exc=False)


@given(failures=st.integers(min_value=0, max_value=30), with_exc=st.booleans(),
       which=st.sampled_from(FLAKY))
def test_max_retries_none_never_gives_up(failures, with_exc, which):
    result, seen = run(which, failures, None, with_exc)
    assert result.get() == "done after %d runs" % (failures + 1)
    assert seen == list(range(failures + 1))


@given(task_max=MAX_RETRIES, call_max=MAX_RETRIES, failures=FAILURES)
def test_max_retries_given_to_retry_decides_over_the_tasks_option(task_max, call_max,
                                                                  failures):
    SCRIPT["now"] = script = Script(failures, with_exc=True)
    previous = FlakyClass.max_retries
    FlakyClass.max_retries = task_max
    original_run = FlakyClass.run
    FlakyClass.run = lambda self: script.run(
        lambda exc: self.retry(exc=exc, max_retries=call_max), self.request.retries)
    try:
        result = FlakyClass.apply()
    finally:
        FlakyClass.run = original_run
        FlakyClass.max_retries = previous
    check(result, script.seen, failures, call_max, with_exc=True)
