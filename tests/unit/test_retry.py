"""Retry: the pure policy in minitask.retry, and `Task.retry()` as SPEC "Retry" states it.

Eager runs (`apply()`) retry inline and skip countdowns; a worker's run (`run_task` without
`is_eager`) re-sends the message, observed here through a fake connection that records what
would have been published.
"""
import datetime
import types

import pytest

import minitask.retry as policy
from minitask import Task, registry, task, transport
from minitask.exceptions import (
    MaxRetriesExceeded, MaxRetriesExceededError, MinitaskError, RetryTaskError,
)
from minitask.message import TaskMessage
from minitask.task import DEFAULT_KWARG_NAMES
from minitask.worker import execution
from minitask.worker.execution import run_task

UTC = datetime.timezone.utc


from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


class FakeConnection:
    def __init__(self):
        self.published = []

    def publish(self, message):
        self.published.append(message)

    def resent(self):
        return [TaskMessage.decode(message) for message in self.published]


@pytest.fixture
def broker(monkeypatch):
    fake = FakeConnection()
    monkeypatch.setattr(transport, "connection", lambda *a, **k: fake)
    return fake


@pytest.fixture
def no_sleep(monkeypatch):
    def refuse(seconds):
        pytest.fail("an eager retry waited %ss" % seconds)
    fake_time = types.SimpleNamespace(sleep=refuse, time=execution.time.time,
                                      perf_counter=execution.time.perf_counter)
    monkeypatch.setattr(execution, "time", fake_time)


class Boom(Exception):
    pass


def flaky_task(failures, max_retries=3, with_exc=True, **options):
    """A task that fails `failures` times, retrying each time; records task_retries per run."""
    seen = []

    def flaky(**kwargs):
        seen.append(kwargs["task_retries"])
        if len(seen) <= failures:
            exc = Boom("failure %d" % len(seen)) if with_exc else None
            flaky_task_object.retry(kwargs=kwargs, exc=exc, **options)
        return "done after %d runs" % len(seen)

    flaky_task_object = task(max_retries=max_retries)(flaky)
    return flaky_task_object, seen


# -- the pure policy ---------------------------------------------------------------------------

@pytest.mark.parametrize("retries, max_retries, allowed", [
    (0, 3, True), (2, 3, True), (3, 3, False), (4, 3, False), (0, 0, False),
    (0, None, True), (10 ** 6, None, True),
])
def test_a_retry_is_allowed_while_retries_are_below_max_retries(retries, max_retries, allowed):
    assert policy.can_retry(retries, max_retries) is allowed


def test_countdown_is_the_one_given_else_none_with_an_eta_else_the_default_delay():
    eta = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    assert policy.next_countdown(5, None, 180) == 5
    assert policy.next_countdown(0, None, 180) == 0
    assert policy.next_countdown(5, eta, 180) == 5
    assert policy.next_countdown(None, eta, 180) is None
    assert policy.next_countdown(None, None, 180) == 180


def test_giving_up_returns_exc_when_given():
    exc = Boom("x")
    assert policy.give_up("t", "id", 3, 3, exc) is exc


def test_giving_up_without_exc_is_max_retries_exceeded_naming_the_task():
    error = policy.give_up("myapp.t", "the-id", 3, 3)
    assert isinstance(error, MaxRetriesExceededError)
    assert "myapp.t" in str(error) and "the-id" in str(error)


def test_max_retries_exceeded_is_the_old_name_of_max_retries_exceeded_error():
    assert MaxRetriesExceeded is MaxRetriesExceededError
    assert issubclass(MaxRetriesExceededError, MinitaskError)
    assert issubclass(RetryTaskError, MinitaskError)


def test_retry_task_error_carries_exc_and_countdown():
    exc = Boom("x")
    error = RetryTaskError(exc=exc, countdown=30)
    assert error.exc is exc and error.countdown == 30
    assert "30" in str(error)


# -- retry through apply(): inline, countdowns skipped ---------------------------------------

@pytest.mark.parametrize("failures", [0, 1, 2, 3])
def test_a_task_failing_k_times_within_max_retries_ends_success(failures, no_broker, no_sleep):
    flaky, seen = flaky_task(failures, max_retries=3)
    result = flaky.apply()
    assert result.state == "SUCCESS"
    assert result.get() == "done after %d runs" % (failures + 1)
    assert seen == list(range(failures + 1))


def test_past_max_retries_the_exc_given_is_raised_and_the_state_is_failure(no_broker, no_sleep):
    flaky, seen = flaky_task(10, max_retries=3)
    result = flaky.apply()
    assert seen == [0, 1, 2, 3]
    assert result.state == "FAILURE"
    assert isinstance(result.result, Boom) and str(result.result) == "failure 4"
    with pytest.raises(Boom, match="failure 4"):
        result.get()


def test_past_max_retries_without_exc_raises_max_retries_exceeded(no_broker, no_sleep):
    flaky, seen = flaky_task(10, max_retries=2, with_exc=False)
    result = flaky.apply()
    assert seen == [0, 1, 2]
    assert result.state == "FAILURE"
    assert isinstance(result.result, MaxRetriesExceededError)
    with pytest.raises(MaxRetriesExceeded):
        result.get()


def test_max_retries_zero_never_retries(no_broker, no_sleep):
    flaky, seen = flaky_task(1, max_retries=0)
    result = flaky.apply()
    assert seen == [0] and result.state == "FAILURE"


def test_max_retries_none_retries_without_limit(no_broker, no_sleep):
    flaky, seen = flaky_task(40, max_retries=None)
    result = flaky.apply()
    assert result.get() == "done after 41 runs"
    assert seen == list(range(41))


def test_max_retries_given_to_retry_wins_over_the_tasks_option(no_broker, no_sleep):
    seen = []

    @task(max_retries=5)
    def stubborn(**kwargs):
        seen.append(kwargs["task_retries"])
        stubborn.retry(kwargs=kwargs, exc=Boom("no"), max_retries=1)

    result = stubborn.apply()
    assert seen == [0, 1] and isinstance(result.result, Boom)


def test_without_kwargs_retry_reads_the_count_from_the_running_task(no_broker, no_sleep):
    seen = []

    class Counting(Task):
        max_retries = 2

        def run(self, x):
            seen.append(self.request.retries)
            self.retry()

    result = Counting.apply((1,))
    assert seen == [0, 1, 2]
    assert isinstance(result.result, MaxRetriesExceededError)


def test_retry_on_the_class_reads_the_running_task(no_broker, no_sleep):
    seen = []

    class ByClass(Task):
        max_retries = 1

        def run(self):
            seen.append(self.request.retries)
            if len(seen) == 1:
                ByClass.retry(exc=Boom("once"))
            return "ok"

    assert ByClass.apply().get() == "ok" and seen == [0, 1]


def test_task_retries_in_kwargs_win_over_the_running_task(no_broker, no_sleep):
    seen = []

    @task(max_retries=3)
    def told(**kwargs):
        seen.append(kwargs["task_retries"])
        told.retry(kwargs=dict(kwargs, task_retries=3), exc=Boom("told"))

    result = told.apply()
    assert seen == [0]                      # request.retries is 0, but kwargs say 3
    assert isinstance(result.result, Boom)


def test_an_eager_rerun_sees_the_retry_count_retry_read_plus_one(no_broker, no_sleep):
    seen = []

    @task(max_retries=5)
    def told(**kwargs):
        seen.append(kwargs["task_retries"])
        if len(seen) == 1:
            told.retry(kwargs=dict(kwargs, task_retries=2), exc=Boom("told"))
        return "ok"

    assert told.apply().get() == "ok"
    assert seen == [0, 3]                   # as a worker would: re-sent with 2 + 1


def test_retry_with_new_args_runs_again_with_them(no_broker, no_sleep):
    seen = []

    @task()
    def countdown_to_zero(n, **kwargs):
        seen.append(n)
        if n > 0:
            countdown_to_zero.retry(args=[n - 1], kwargs=kwargs)
        return "liftoff"

    assert countdown_to_zero.apply((3,)).get() == "liftoff"
    assert seen == [3, 2, 1, 0]


def test_retry_keeps_the_callers_kwargs_and_refreshes_the_default_ones(no_broker, no_sleep):
    runs = []

    @task()
    def greet(name, **kwargs):
        runs.append(dict(kwargs, name=name))
        if len(runs) < 3:
            greet.retry(kwargs=dict(kwargs, name=name))
        return "hello " + name

    result = greet.apply(kwargs={"name": "ann"})
    assert result.get() == "hello ann"
    assert [run["task_retries"] for run in runs] == [0, 1, 2]
    assert {run["task_id"] for run in runs} == {result.task_id}
    assert all(run["name"] == "ann" and set(run) == set(DEFAULT_KWARG_NAMES) | {"name"}
               for run in runs)


def test_retry_without_args_or_kwargs_reruns_with_the_same_arguments(no_broker, no_sleep):
    runs = []

    class Same(Task):
        def run(self, x, y=0):
            runs.append((x, y))
            if len(runs) < 2:
                self.retry()
            return x + y

    assert Same.apply((1,), {"y": 2}).get() == 3
    assert runs == [(1, 2), (1, 2)]


def test_eager_retries_keep_the_task_id(no_broker, no_sleep):
    ids = []

    @task()
    def same_id(task_id, task_retries):
        ids.append(task_id)
        if task_retries < 2:
            same_id.retry(kwargs={"task_id": task_id, "task_retries": task_retries})
        return task_id

    result = same_id.apply(task_id="fixed-id")
    assert result.get() == "fixed-id" and ids == ["fixed-id"] * 3


# -- the tombstone, seen through run_task -------------------------------------------------------

def test_while_waiting_the_state_is_retry_and_the_result_is_exc():
    exc = Boom("tombstone")

    @task()
    def failing():
        failing.retry(exc=exc)

    outcome = run_task(failing, TaskMessage(failing.name), is_eager=True)
    assert outcome.state == "RETRY"
    assert outcome.result is exc
    assert isinstance(outcome.retry, RetryTaskError) and outcome.retry.exc is exc


def test_without_exc_the_tombstone_is_the_retry_task_error_itself():
    @task()
    def failing():
        failing.retry()

    outcome = run_task(failing, TaskMessage(failing.name), is_eager=True)
    assert outcome.state == "RETRY"
    assert isinstance(outcome.result, RetryTaskError)
    assert outcome.result is outcome.retry
    assert outcome.traceback and "RetryTaskError" in outcome.traceback


def test_the_tombstone_keeps_the_default_retry_delay_as_its_countdown():
    @task()
    def failing():
        failing.retry()

    outcome = run_task(failing, TaskMessage(failing.name), is_eager=True)
    assert outcome.retry.countdown == 180


def test_retry_raises_retry_task_error_to_end_the_run():
    after = []

    @task()
    def failing():
        failing.retry()
        after.append("unreachable")

    outcome = run_task(failing, TaskMessage(failing.name), is_eager=True)
    assert outcome.state == "RETRY" and after == []


# -- re-sending, as a worker's run does ---------------------------------------------------------

def now():
    return datetime.datetime.now(UTC).timestamp()


def test_a_workers_retry_resends_the_same_id_with_one_more_retry(broker):
    @task()
    def failing(x, **kwargs):
        failing.retry(kwargs=kwargs, exc=Boom("again"))

    message = TaskMessage(failing.name, (7,), {}, id="the-id", retries=1)
    before = now()
    outcome = run_task(failing, message)
    after = now()
    assert outcome.state == "RETRY" and isinstance(outcome.result, Boom)
    [resent] = broker.resent()
    assert (resent.id, resent.task, resent.retries, resent.args) == (
        "the-id", failing.name, 2, (7,))
    assert before + 180 <= resent.eta <= after + 180


def test_a_resent_retry_carries_no_default_kwargs(broker):
    @task()
    def failing(x, **kwargs):
        failing.retry(kwargs=kwargs)

    run_task(failing, TaskMessage(failing.name, (1,), {"mine": "kept"}))
    [resent] = broker.resent()
    assert resent.kwargs == {"mine": "kept"}


def test_a_resent_retry_of_a_task_naming_its_default_kwargs_carries_none(broker):
    class Naming(Task):
        def run(self, x, task_id=None, task_retries=None):
            self.retry()

    run_task(registry.tasks[Naming.name], TaskMessage(Naming.name, (1,)))
    [resent] = broker.resent()
    assert resent.args == (1,) and resent.kwargs == {}


def test_a_resent_retry_waits_the_countdown_given(broker):
    @task()
    def failing():
        failing.retry(countdown=5)

    before = now()
    run_task(failing, TaskMessage(failing.name))
    after = now()
    [resent] = broker.resent()
    assert before + 5 <= resent.eta <= after + 5


def test_a_resent_retry_waits_for_the_eta_given(broker):
    eta = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    @task()
    def failing():
        failing.retry(eta=eta)

    run_task(failing, TaskMessage(failing.name))
    [resent] = broker.resent()
    assert resent.eta == eta.timestamp()


def test_a_resent_retry_keeps_the_original_routing(broker):
    @task()
    def failing():
        failing.retry()

    run_task(failing, TaskMessage(failing.name, exchange="media", routing_key="video",
                                  priority=2))
    [resent] = broker.resent()
    assert (resent.exchange, resent.routing_key, resent.priority) == ("media", "video", 2)


def test_a_resent_retry_keeps_hiding_the_arguments_its_call_hid(broker):
    """argsrepr/kwargsrepr hide secrets from logs, e-mails and inspect: the retry of such
    a call must not show them (Celery's shows the repr of the arguments again)."""
    @task()
    def failing(password, token=None):
        failing.retry()

    message = TaskMessage(failing.name, ("hunter2",), {"token": "s3cret"})
    message.argsrepr, message.kwargsrepr = "('***',)", "{'token': '***'}"
    run_task(failing, message)
    [resent] = broker.resent()
    assert resent.shown_args() == ("('***',)", "{'token': '***'}")
    assert resent.args == ("hunter2",) and resent.kwargs == {"token": "s3cret"}


def test_a_retry_may_give_its_own_argsrepr(broker):
    @task()
    def failing(password):
        failing.retry(args=["other"], argsrepr="('###',)")

    message = TaskMessage(failing.name, ("hunter2",))
    message.argsrepr = "('***',)"
    run_task(failing, message)
    [resent] = broker.resent()
    assert resent.shown_args() == ("('###',)", "{}") and resent.args == ("other",)


def test_a_resent_retry_uses_task_id_and_task_retries_from_kwargs_when_passed(broker):
    @task()
    def failing(**kwargs):
        failing.retry(kwargs=dict(kwargs, task_id="from-kwargs", task_retries=2))

    run_task(failing, TaskMessage(failing.name, id="from-request", retries=0))
    [resent] = broker.resent()
    assert (resent.id, resent.retries) == ("from-kwargs", 3)


def test_no_retry_is_sent_once_max_retries_is_reached(broker):
    @task(max_retries=2)
    def failing():
        failing.retry(exc=Boom("last"))

    outcome = run_task(failing, TaskMessage(failing.name, retries=2))
    assert outcome.state == "FAILURE" and isinstance(outcome.result, Boom)
    assert broker.published == []


# -- Celery's exponential backoff (autoretry_for with retry_backoff) ---------------------------

class FixedRandom:
    """randrange(n) gives the largest value allowed, so the bound itself is seen."""

    def __init__(self):
        self.asked = []

    def randrange(self, stop):
        self.asked.append(stop)
        return stop - 1


@pytest.mark.parametrize("factor, retries, maximum, expected", [
    (True, 0, 600, 1), (True, 1, 600, 2), (True, 9, 600, 512), (True, 10, 600, 600),
    (3, 2, 600, 12), (0.5, 3, 600, 8), (2.9, 1, 600, 4), (True, 5000, 600, 600),
    (5, 0, 3, 3), (True, 4, 0, 0)])
def test_backoff_without_jitter_is_factor_times_two_to_the_retries_capped(
        factor, retries, maximum, expected):
    assert policy.backoff_countdown(factor, retries, maximum, jitter=False) == expected


def test_backoff_with_full_jitter_draws_from_zero_to_the_backoff_inclusive():
    rng = FixedRandom()
    assert policy.backoff_countdown(True, 3, 600, jitter=True, rng=rng) == 8
    assert rng.asked == [9]


# -- the guide's forms: where the default keyword arguments arrive ------------------------------

def test_the_guides_retry_with_the_kwargs_spread_resends_the_same_id(broker):
    @task()
    def send_twitter_status(oauth, tweet, **kwargs):
        try:
            raise Boom("fail whale")
        except Boom as exc:
            send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)

    outcome = run_task(send_twitter_status, TaskMessage(
        send_twitter_status.name, ("token", "hi"), {}, id="the-id", retries=1),
        logfile="w.log", loglevel="INFO")
    assert outcome.state == "RETRY" and isinstance(outcome.result, Boom)
    [resent] = broker.resent()
    assert (resent.id, resent.retries, resent.args, resent.kwargs) == (
        "the-id", 2, ("token", "hi"), {})


def test_the_guides_retry_with_a_countdown_and_the_kwargs_spread_waits_it(broker):
    class MyTask(Task):
        default_retry_delay = 30 * 60

        def run(self, x, y, **kwargs):
            try:
                return x / y
            except Exception as exc:
                self.retry([x, y], exc=exc, countdown=60, **kwargs)

    before = now()
    run_task(registry.tasks[MyTask.name], TaskMessage(MyTask.name, (1, 0), id="my-id"))
    after = now()
    [resent] = broker.resent()
    assert (resent.id, resent.retries, resent.args, resent.kwargs) == ("my-id", 1, (1, 0), {})
    assert before + 60 <= resent.eta <= after + 60


def test_the_id_and_count_come_from_default_kwargs_passed_as_keywords(broker):
    @task()
    def failing(**kwargs):
        failing.retry(task_id="from-keywords", task_retries=2, logfile="x", loglevel="y",
                      task_name="z")

    run_task(failing, TaskMessage(failing.name, (), {"mine": 1}, id="from-request"))
    [resent] = broker.resent()
    assert (resent.id, resent.retries, resent.kwargs) == ("from-keywords", 3, {"mine": 1})


def test_default_kwargs_inside_kwargs_are_never_sent_on(broker):
    @task()
    def failing(x):
        failing.retry(kwargs={"mine": "kept", "task_id": "the-id", "task_retries": 0,
                              "task_name": "n", "logfile": "f", "loglevel": "l"})

    run_task(failing, TaskMessage(failing.name, (1,), {}))      # it was offered none
    [resent] = broker.resent()
    assert (resent.id, resent.kwargs) == ("the-id", {"mine": "kept"})


def test_publish_options_given_to_retry_reach_the_resent_message(broker):
    @task()
    def failing(**kwargs):
        failing.retry(priority=1, routing_key="urgent", exchange="alerts", expires=3600,
                      serializer="pickle", mandatory=False, immediate=False, **kwargs)

    before = now()
    run_task(failing, TaskMessage(failing.name, id="opts", priority=7, routing_key="slow"))
    [resent] = broker.resent()
    assert (resent.priority, resent.routing_key, resent.exchange, resent.serializer) == (
        1, "urgent", "alerts", "pickle")
    assert resent.expires >= before + 3600


@pytest.mark.parametrize("name", ["colour", "queue_name", "retries", "args_"])
def test_any_other_keyword_is_a_configuration_error_naming_it(broker, name):
    @task()
    def failing(**kwargs):
        failing.retry(exc=Boom("x"), **dict(kwargs, **{name: 1}))

    outcome = run_task(failing, TaskMessage(failing.name, id="bad"))
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "ConfigurationError"
    assert "retry() of %s got %r" % (failing.name, name) in str(outcome.result)
    assert "\n" not in str(outcome.result)
    assert broker.published == []


def test_the_guides_retry_with_the_kwargs_spread_works_eagerly_too(no_broker, no_sleep):
    attempts = []

    @task()
    def send_twitter_status(oauth, tweet, **kwargs):
        attempts.append(kwargs["task_retries"])
        try:
            if len(attempts) < 3:
                raise Boom("fail whale")
        except Boom as exc:
            send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)
        return "posted"

    assert send_twitter_status.apply(("token", "hi")).get() == "posted"
    assert attempts == [0, 1, 2]


def test_celerys_except_self_max_retries_exceeded_error_catches_the_give_up():
    """Celery's Task.MaxRetriesExceededError (and Task.OperationalError for delay()):
    ``except self.MaxRetriesExceededError`` used to raise AttributeError."""
    from minitask.exceptions import BrokerConnectionError

    @task(bind=True, name="tests.retry.gives_up", max_retries=1)
    def gives_up(self):
        try:
            raise self.retry(countdown=0)
        except self.MaxRetriesExceededError:
            return "gave up after %d" % self.request.retries

    assert gives_up.apply().get() == "gave up after 1"
    assert gives_up.OperationalError is BrokerConnectionError
