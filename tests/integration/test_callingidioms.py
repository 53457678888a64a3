"""Celery's "Calling Tasks" user guide (docs/userguide/calling.rst, Celery 5), its idioms pasted
as a Celery user writes them (``@app.task`` is ``@shared_task``, imports from ``minitask``),
run by real workers on both transports: the built-in broker and Redis (the `broker` fixture
of both.py; Redis skips, saying why, where redis-server is not installed; the test of an
unreachable broker is parametrized by URL scheme instead).
The tasks are the guide's, in callingidioms.py.

Where the README names a difference (a refused option, the errback's signature, priorities,
ignore_result), the test checks minitask's documented behaviour and cites the README.
"""

import importlib.util
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from callingidioms import (  # noqa: E402
    Money, add, add_ignored, describe, divide, error_handler, hello, limited, on_error,
    on_error_bound, other_task, pickled_by_default, when, with_kwargs,
)
from cluster import new_tag, wait_for, workers_of  # noqa: E402
from ittasks import echo, read_trace  # noqa: E402

from minitask import AsyncResult, config, group, send_task, shared_task, states  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    ConfigurationError, ContentDisallowed, SerializationError, TaskRevokedError, TimeoutError,
)
from minitask.transport import reset_connection  # noqa: E402

MODULES = "ittasks,callingidioms"
ACCEPT_ALL = {"MINITASK_ACCEPT_CONTENT": '["json", "pickle", "yaml"]'}


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def runs(tmp_path, tag):
    """The runs of callingidioms.when traced under `tag`, as dicts."""
    keys = ("time", "eta", "expires", "hostname", "exchange", "routing_key", "priority")
    rows = [dict(zip(keys, line.split("|"))) for line in read_trace(tmp_path, tag)]
    for row in rows:
        row["time"] = float(row["time"])
    return rows


def ran(tmp_path, tag, count=1, timeout=20):
    wait_for(lambda: len(read_trace(tmp_path, tag)) >= count, timeout,
             what="%d run(s) of %s" % (count, tag))
    return runs(tmp_path, tag)


def past(moment):
    """Wait for the clock (not another process) to pass `moment`, an aware datetime."""
    wait_for(lambda: datetime.now(timezone.utc) > moment, 10, interval=0.05,
             what="the clock to pass %s" % moment)


# -- Basics ---------------------------------------------------------------------------------

def test_delay_is_apply_async_with_star_arguments_and_calling_runs_here(start_worker):
    """Basics and the Quick Cheat Sheet: T.delay(arg, kwarg=value) calls
    T.apply_async((arg,), {'kwarg': value}); task_id= sets the id; a signature supports the
    Calling API; calling the task runs it in this process."""
    start_worker()
    assert add.delay(2, 2).get(timeout=20) == 4
    assert add.apply_async((2, 2)).get(timeout=20) == 4
    arg1, arg2 = 1, 2
    assert with_kwargs.delay(arg1, arg2, kwarg1='x', kwarg2='y').get(timeout=20) == \
        [1, 2, 'x', 'y']
    assert with_kwargs.apply_async(args=[arg1, arg2],
                                   kwargs={'kwarg1': 'x', 'kwarg2': 'y'}).get(timeout=20) == \
        [1, 2, 'x', 'y']
    assert with_kwargs.apply_async((arg1,), {'arg2': 'b', 'kwarg2': 'y'}).get(timeout=20) == \
        [1, 'b', None, 'y']
    own = f'my_own_task_id-{uuid.uuid4().hex[:8]}'
    result = add.apply_async((3, 4), task_id=own)
    assert result.id == own
    assert AsyncResult(own).get(timeout=20) == 7
    assert with_kwargs.s(arg1, arg2, kwarg1='x', kwarg2='y').apply_async().get(timeout=20) == \
        [1, 2, 'x', 'y']
    assert add(2, 2) == 4                       # __call__: here, no message


# -- Linking (callbacks/errbacks) -----------------------------------------------------------

def test_link_applies_the_callback_with_the_result_as_a_partial_argument(start_worker):
    """add.apply_async((2, 2), link=add.s(16)): (2 + 2) + 16 = 20."""
    start_worker()
    result = add.apply_async((2, 2), link=add.s(16))
    assert result.get(timeout=20) == 4
    wait_for(lambda: result.children, 20, what="the callback among the children")
    assert [child.get(timeout=20) for child in result.children] == [20]


def test_link_as_a_list_calls_every_callback_with_the_return_value(start_worker, tmp_path):
    """add.apply_async((2, 2), link=[add.s(16), other_task.s()]): all callbacks are called
    with the return value of the parent task."""
    start_worker()
    result = add.apply_async((2, 2), link=[add.s(16), other_task.s()])
    assert result.get(timeout=20) == 4
    wait_for(lambda: len(result.children) == 2, 20, what="both callbacks among the children")
    assert [child.get(timeout=20) for child in result.children] == [20, 4]
    assert read_trace(tmp_path, "other_task") == ["4"]


def test_an_errback_taking_request_exc_traceback_is_refused_when_linked(broker, tmp_path):
    """The guide's error_handler(request, exc, traceback) with link_error=error_handler.s().
    README, "What differs": "an errback is called as errback(task_id), not (request, exc,
    traceback)"; Workflows: "Celery 5's other form ... is refused when the errback is
    linked". So the call is refused where it is written, and nothing is sent."""
    with pytest.raises(ConfigurationError, match=r"request, exc, traceback"):
        add.apply_async((2, 2), link_error=error_handler.s())
    with pytest.raises(ConfigurationError, match=r"request, exc, traceback"):
        send_task('callingidioms.add', (2, 2), link_error=error_handler.s())
    assert broker.queue()["ready"] == 0
    assert read_trace(tmp_path, "error_handler") == []


def test_the_single_argument_errback_reads_the_failure_by_id(broker, start_worker, tmp_path):
    """The guide's on_error(task_id), reading the error with allow_join_result(), linked with
    app.send_task(..., link_error=on_error.s()): called once, for the failed task only."""
    start_worker()
    ok = send_task('callingidioms.add', (2, 2), link_error=on_error.s())
    assert ok.get(timeout=20) == 4
    failed = send_task('callingidioms.divide', (1, 0), link_error=on_error.s())
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)
    wait_for(lambda: read_trace(tmp_path, "on_error"), 20, what="the errback")
    settle(broker)
    assert read_trace(tmp_path, "on_error") == [
        "%s|ZeroDivisionError|division by zero" % failed.id]


def test_a_bound_errback_and_a_list_of_errbacks_get_the_failed_tasks_id(broker, start_worker,
                                                                        tmp_path):
    """The guide's note: a bind=True errback is applied as a task with the failed task's id;
    "both the link and link_error options can be expressed as a list", called in order."""
    start_worker()
    failed = divide.apply_async((1, 0), link_error=[on_error.s(), on_error_bound.s()])
    assert isinstance(failed.get(timeout=20, propagate=False), ZeroDivisionError)
    wait_for(lambda: read_trace(tmp_path, "on_error") and read_trace(tmp_path, "on_error_bound"),
             20, what="both errbacks")
    settle(broker)
    assert read_trace(tmp_path, "on_error") == [
        "%s|ZeroDivisionError|division by zero" % failed.id]
    assert read_trace(tmp_path, "on_error_bound") == ["%s|True" % failed.id]


# -- On message -----------------------------------------------------------------------------

def test_on_message_hears_the_progress_states_then_success(start_worker):
    """The guide's hello task and on_raw_message callback, with propagate=False."""
    start_worker()
    heard = []

    def on_raw_message(body):
        heard.append(body)

    a, b = 1, 1
    r = hello.apply_async(args=(a, b))
    assert r.get(on_message=on_raw_message, propagate=False, timeout=20) == 'hello world: 2'
    progress = [body["result"] for body in heard if body["status"] == "PROGRESS"]
    assert progress == [{'progress': 50}, {'progress': 90}]
    assert heard[-1]["status"] == "SUCCESS" and heard[-1]["result"] == 'hello world: 2'
    for body in heard:
        assert body["task_id"] == r.id
        assert {"task_id", "result", "children", "status", "traceback"} <= set(body)


# -- ETA and Countdown ----------------------------------------------------------------------

def test_countdown_runs_the_task_no_earlier(start_worker, tmp_path):
    """result = add.apply_async((2, 2), countdown=3); result.get() takes at least 3 s."""
    start_worker()
    started = time.time()
    result = add.apply_async((2, 2), countdown=3)
    assert result.get(timeout=20) == 4
    assert time.time() - started >= 3
    tag = new_tag("countdown")
    sent = time.time()
    when.apply_async((tag,), countdown=1.5)
    run, = ran(tmp_path, tag)
    assert run["time"] >= sent + 1.5, run
    assert run["eta"] != "None"                 # the request carries it


@pytest.mark.parametrize("zone", [timezone.utc, timezone(timedelta(hours=-5)),
                                  timezone(timedelta(hours=5, minutes=30)), "America/New_York"],
                         ids=["utc", "utc-5", "utc+5:30", "America/New_York"])
def test_eta_takes_a_timezone_aware_datetime(start_worker, tmp_path, zone):
    """eta must be a datetime "including millisecond precision, and timezone information":
    now + timedelta(seconds=2) runs 2 s from now, in whatever zone `now` was taken."""
    if isinstance(zone, str):
        zone = pytest.importorskip("zoneinfo").ZoneInfo(zone)
    start_worker()
    tag = new_tag("eta")
    eta = datetime.now(zone) + timedelta(seconds=2)
    when.apply_async((tag,), eta=eta)
    run, = ran(tmp_path, tag)
    assert run["time"] >= eta.timestamp(), (run, eta)
    assert run["time"] < eta.timestamp() + 10, (run, eta)
    assert datetime.fromisoformat(run["eta"]) == eta


def test_eta_tomorrow_waits_and_a_rate_limit_counts_from_the_eta(start_worker, tmp_path):
    """tomorrow = datetime.now(timezone.utc) + timedelta(days=1);
    add.apply_async((2, 2), eta=tomorrow): it waits (until revoked here). "If the task has a
    rate_limit configured, the rate limit is enforced once the ETA has passed": five calls of
    a "2/s" task due at one ETA start no earlier than it, one every half second."""
    start_worker(args=("-c", "1"))
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    result = add.apply_async((2, 2), eta=tomorrow)
    assert add.delay(1, 1).get(timeout=20) == 2         # the worker runs what is due
    assert result.state == states.PENDING and not result.ready()
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=20)
    tag = new_tag("limited")
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    for limited_result in [limited.apply_async((tag,), eta=eta) for _ in range(5)]:
        limited_result.get(timeout=20)
    starts = sorted(float(line) for line in read_trace(tmp_path, tag))
    assert len(starts) == 5 and starts[0] >= eta.timestamp(), (eta.timestamp(), starts)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert all(gap >= 0.4 for gap in gaps), gaps


# -- Expiration -----------------------------------------------------------------------------

def test_countdown_then_expires(start_worker, tmp_path):
    """T.apply_async(countdown=60, expires=120) runs after the countdown, within the
    expiry (scaled down); a countdown past its expiry ends REVOKED (TaskRevokedError)."""
    start_worker()
    tag = new_tag("countdown-expires")
    sent = time.time()
    result = when.apply_async((tag,), countdown=1, expires=10)
    returned = time.time()
    assert result.get(timeout=20) == result.id
    run, = runs(tmp_path, tag)
    assert run["time"] >= sent + 1
    # "expires ... as seconds after task publish", not after the countdown
    expires_at = datetime.fromisoformat(run["expires"]).timestamp()
    assert sent + 10 - 0.01 <= expires_at <= returned + 10 + 0.01, (sent, returned, run)
    late = add.apply_async((2, 2), countdown=2, expires=1)
    with pytest.raises(TaskRevokedError):
        late.get(timeout=20)
    assert late.state == states.REVOKED


def test_expires_in_seconds(broker, start_worker, tmp_path):
    """add.apply_async((10, 10), expires=60) runs; one whose expiry passed before a worker
    received it is marked REVOKED (TaskRevokedError)."""
    tag = new_tag("expired")
    expired = when.apply_async((tag,), expires=1)
    past(datetime.now(timezone.utc) + timedelta(seconds=1.2))
    start_worker()
    assert add.apply_async((10, 10), expires=60).get(timeout=20) == 20
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED
    assert read_trace(tmp_path, tag) == []


@pytest.mark.parametrize("zone", [timezone.utc, timezone(timedelta(hours=-5)),
                                  timezone(timedelta(hours=5, minutes=30))],
                         ids=["utc", "utc-5", "utc+5:30"])
def test_expires_as_an_aware_datetime(start_worker, tmp_path, zone):
    """add.apply_async((10, 10), kwargs, expires=datetime.now(timezone.utc) +
    timedelta(days=1)) runs; an aware expiry that passed, in any zone, is REVOKED."""
    kwargs = {}
    tag = new_tag("expired-at")
    moment = datetime.now(zone) + timedelta(seconds=1)
    expired = when.apply_async((tag,), expires=moment)
    past(moment)
    start_worker()
    assert add.apply_async((10, 10), kwargs,
                           expires=datetime.now(zone) + timedelta(days=1)).get(timeout=20) == 20
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert read_trace(tmp_path, tag) == []


# -- Message Sending Retry ------------------------------------------------------------------

def test_message_sending_retry_options(start_worker):
    """retry=False disables the publish retry, retry_policy tunes it. README, Task options:
    "retry=True on a call (a lost connection is always tried again for 5 s)" is accepted,
    "The other values are refused"; retry_policy is in the refused list."""
    start_worker()
    assert add.apply_async((2, 2), retry=True).get(timeout=20) == 4
    with pytest.raises(ConfigurationError, match="retry=False"):
        add.apply_async((2, 2), retry=False)
    with pytest.raises(ConfigurationError, match="retry_policy"):
        add.apply_async((2, 2), retry=True, retry_policy={
            'max_retries': 3,
            'interval_start': 0,
            'interval_step': 0.2,
            'interval_max': 0.2,
            'retry_errors': None,
        })


# -- Connection Error Handling --------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["minitask", "redis"])
def test_connection_error_is_catchable_as_task_operational_error(tmp_path, scheme):
    """When the broker cannot be reached, add.delay(2, 2) raises, and the guide catches it
    with ``except add.OperationalError as exc``."""
    from rediskit import free_port
    config.configure(BROKER_URL="%s://127.0.0.1:%d" % (scheme, free_port()))
    reset_connection()
    caught = []
    try:
        try:
            add.delay(2, 2)
        except add.OperationalError as exc:
            caught.append(exc)
    finally:
        reset_connection()
        config.reset()
    assert len(caught) == 1


# -- Serializers ----------------------------------------------------------------------------

def test_serializer_per_call_json_pickle_yaml(broker, start_worker):
    """add.apply_async((10, 10), serializer='json'); pickle carries a class instance to a
    worker that accepts it (README: "pickle is refused by workers unless ACCEPT_CONTENT lists
    it")."""
    start_worker(env=ACCEPT_ALL)
    assert add.apply_async((10, 10), serializer='json').get(timeout=20) == 20
    assert describe.apply_async((Money(5),), serializer='pickle').get(timeout=20) == \
        "Money Money(5)"
    assert describe.apply_async(("text",), serializer='pickle').get(timeout=20) == \
        "str 'text'"
    assert echo.apply_async((Money(5),), serializer='pickle').get(timeout=20) == Money(5)
    # yaml: "natively supports more data types (including dates ...)"; this client accepts it
    # for the result too (Celery's result_accept_content)
    if importlib.util.find_spec("yaml") is not None:     # README: "when PyYAML is there"
        config.configure(BROKER_URL=broker.url, ACCEPT_CONTENT=["json", "pickle", "yaml"])
        day = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
        assert describe.apply_async((day,), serializer='yaml').get(timeout=20) == \
            "datetime %r" % (day,)
    # msgpack is not among minitask's serializers: README, Task options: serializer is
    # "json", "pickle", "yaml" (when PyYAML is there), or a registered name.
    with pytest.raises(ConfigurationError, match="msgpack"):
        add.apply_async((10, 10), serializer='msgpack')
    # The guide's note on json: keys are always str, so loads(dumps(x)) != x for {1: 'a'}.
    # minitask's json tags such a dict (minitask/serialization.py: {"__mt__": "dict", ...})
    # and gives back {1: 'a'}; the README ("JSON carries tuples, bytes, datetimes, decimals,
    # UUIDs and exceptions") does not say so.
    assert describe.apply_async(({1: 'a'},), serializer='json').get(timeout=20) == \
        "dict {1: 'a'}"


def test_the_serializer_option_wins_over_the_task_attribute(start_worker):
    """The order: 1. the serializer execution option, 2. Task.serializer, 3. task_serializer.
    A class instance goes with the task's pickle; the same call with serializer='json' cannot
    carry it (SerializationError in the caller, README "Calling")."""
    start_worker(env=ACCEPT_ALL)
    assert pickled_by_default.delay(Money(7)).get(timeout=20) == "Money Money(7)"
    with pytest.raises(SerializationError, match="Money"):
        pickled_by_default.apply_async((Money(7),), serializer='json')
    assert pickled_by_default.apply_async(("x",), serializer='json').get(timeout=20) == \
        "str 'x'"
    with pytest.raises(SerializationError, match="Money"):
        describe.delay(Money(1))                # the TASK_SERIALIZER setting: json


def test_a_worker_that_does_not_accept_pickle_does_not_run_it(broker, start_worker, tmp_path):
    """"By default, only JSON is accepted, and tasks containing other content headers are
    rejected." A worker with the default accept list does not run a pickled call, and goes
    on with the next one. Celery's worker rejects the message and its result stays PENDING;
    minitask's stores a FAILURE (ContentDisallowed), which the README does not say (only
    "pickle is refused by workers unless ACCEPT_CONTENT lists it")."""
    start_worker()
    tag = new_tag("pickled")
    result = when.apply_async((tag,), serializer='pickle')
    with pytest.raises(ContentDisallowed, match="python-serialize"):
        result.get(timeout=20)
    assert result.state == states.FAILURE
    assert add.delay(1, 2).get(timeout=20) == 3
    settle(broker)
    assert read_trace(tmp_path, tag) == []


# -- Compression ----------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["brotli", "bzip2", "gzip", "lzma", "zlib", "zstd"])
def test_compression_is_refused_where_it_is_written(broker, scheme):
    """add.apply_async((2, 2), compression='zlib'). README, Task options: "Refused with a
    ConfigurationError where they are written": compression on calls and on tasks. So the
    call sends nothing."""
    with pytest.raises(ConfigurationError, match="compression"):
        add.apply_async((2, 2), compression=scheme)
    with pytest.raises(ConfigurationError, match="compression"):
        @shared_task(compression=scheme, name="ci.compressed-%s" % scheme)
        def compressed(x):
            return x
    assert broker.queue()["ready"] == 0


# -- Connections ----------------------------------------------------------------------------

def test_many_calls_as_a_group_and_publisher_refused(start_worker):
    """"this particular example is much better expressed as a group": [4, 8, 16, 32]. The
    publisher= form is refused (README, Task options: connection, producer, publisher)."""
    start_worker()
    numbers = [(2, 2), (4, 4), (8, 8), (16, 16)]
    res = group(add.s(i, j) for i, j in numbers).apply_async()
    assert res.get(timeout=20) == [4, 8, 16, 32]
    with pytest.raises(ConfigurationError, match="publisher"):
        add.apply_async((2, 2), publisher=object())


# -- Routing options ------------------------------------------------------------------------

def test_queue_option_goes_to_the_workers_of_that_queue(broker, start_worker, tmp_path):
    """add.apply_async(queue='priority.high'), run by a worker started with
    -Q celery,priority.high (minitask's default queue is "minitask"), not by a worker of the
    default queue only."""
    start_worker(name="plain")
    tag = new_tag("hipri")
    result = when.apply_async((tag,), queue='priority.high')
    assert add.delay(1, 1).get(timeout=20) == 2
    wait_for(lambda: (broker.queue("priority.high") or {}).get("ready") == 1, 20,
             what="the call to wait in priority.high")
    assert read_trace(tmp_path, tag) == []
    start_worker(name="high", args=("-Q", "minitask,priority.high"))
    assert result.get(timeout=20) == result.id
    run, = runs(tmp_path, tag)
    assert run["hostname"] == "high" and run["routing_key"] == "priority.high"


def test_exchange_and_routing_key_options(broker, start_worker, tmp_path):
    """Advanced options: exchange= and routing_key= reach the queue bound to them (a topic
    exchange declared in QUEUES, Celery's task_queues)."""
    queues = '{"videos": {"exchange": "media", "exchange_type": "topic", ' \
             '"binding_key": "video.#"}}'
    start_worker(name="video", args=("-Q", "videos"), env={"MINITASK_QUEUES": queues})
    start_worker(name="plain")
    tag = new_tag("media")
    result = when.apply_async((tag,), exchange='media', routing_key='video.compress')
    assert result.get(timeout=20) == result.id
    run, = runs(tmp_path, tag)
    assert (run["hostname"], run["exchange"], run["routing_key"]) == \
        ("video", "media", "video.compress")


def test_priority_option(broker, start_worker, tmp_path):
    """priority=: Celery documents 0..255 with 255 the highest (Redis: reversed, 0 the
    highest). README, Task options: "0..9, 0 is the highest"; a priority of 12 is a
    ConfigurationError. Calls queued before the worker starts run highest first."""
    with pytest.raises(ConfigurationError, match="priority"):
        add.apply_async((2, 2), priority=255)
    tag = new_tag("priority")
    results = [when.apply_async((tag,), priority=p) for p in (9, 5, 0, 9, 0)]
    start_worker(args=("-c", "1", "--prefetch-multiplier", "1"))
    for result in results:
        result.get(timeout=20)
    order = [run["priority"] for run in sorted(runs(tmp_path, tag), key=lambda r: r["time"])]
    assert order == ["0", "0", "5", "9", "9"]


# -- Results options ------------------------------------------------------------------------

def test_results_options_ignore_result_and_headers(start_worker, tmp_path):
    """result = add.apply_async((1, 2), ignore_result=True); result.get() -> None in Celery.
    README, Task options: ignore_result on a call is refused when it differs from the task's
    own ("a call cannot change them") and accepted when equal; "What differs": a success of
    an ignore_result task stores nothing, so get() waits (give it a timeout)."""
    start_worker()
    with pytest.raises(ConfigurationError, match="ignore_result"):
        add.apply_async((1, 2), ignore_result=True)
    result = add.apply_async((1, 2), ignore_result=False)
    assert result.get(timeout=20) == 3
    ignored = add_ignored.apply_async((1, 2), ignore_result=True)
    wait_for(lambda: read_trace(tmp_path, "add_ignored"), 20, what="the ignored task to run")
    with pytest.raises(TimeoutError):
        ignored.get(timeout=1)
    assert ignored.state == states.PENDING      # as in Celery: nothing stored
    # The note's task.apply_async(headers={"periodic_task_name": "task_name"}). README, Task
    # options: headers on calls is refused ("task messages carry no custom headers").
    with pytest.raises(ConfigurationError, match="headers"):
        add.apply_async((1, 2), headers={"periodic_task_name": "task_name"})


def test_results_get_propagate_and_state(start_worker):
    """get() returns the value or raises the task's exception; get(propagate=False) returns
    the exception; state, ready(), successful(), failed(), traceback."""
    start_worker()
    good = add.delay(1, 2)
    assert good.get(timeout=20) == 3
    assert good.state == states.SUCCESS and good.ready() and good.successful()
    assert good.result == 3
    bad = divide.delay(1, 0)
    outcome = bad.get(timeout=20, propagate=False)
    assert isinstance(outcome, ZeroDivisionError)
    assert bad.state == states.FAILURE and bad.failed() and not bad.successful()
    assert "ZeroDivisionError" in bad.traceback
    with pytest.raises(ZeroDivisionError):
        bad.get(timeout=20)
    assert isinstance(AsyncResult(bad.id).result, ZeroDivisionError)
