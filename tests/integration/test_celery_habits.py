"""Celery 5 users' options and settings on a real broker and real workers: bind=True and
self.request, autoretry_for with backoff, queue= (a queue no one declared), send_task, the
task_routes setting, and a settings module written with Celery's names.

(Periodic tasks, BEAT_SCHEDULE and crontab: test_beat.py.)
"""

import datetime
import re
import sys
import uuid

import pytest

import ithabits
import ittasks
from cluster import wait_for
from minitask import transport, config, group, registry, send_task
from minitask.exceptions import ConfigurationError, TaskRevokedError, TimeLimitExceeded

HABITS = "ittasks,ithabits"


def test_a_bound_task_gets_itself_and_its_request_on_a_worker(broker, start_worker):
    start_worker(name="habits1", modules=HABITS)
    result = ithabits.bound.delay(7)
    seen = result.get(timeout=10)
    assert seen == {"self": "it.bound", "x": 7, "id": result.id, "task": "it.bound",
                    "retries": 0, "hostname": "habits1", "is_eager": False,
                    "called_directly": False,
                    "delivery_info": {"exchange": "minitask", "routing_key": "minitask",
                                      "priority": None, "redelivered": False}}



def test_a_task_that_waits_for_another_inside_is_refused_as_celery_refuses(broker,
                                                                           start_worker):
    """Celery's "never call result.get() within a task": the task waited for may be queued
    behind the one waiting (with -c 1, for ever). It used to wait; now it fails at once
    with RuntimeError, and waits only when told (two pool processes: the other runs it)."""
    start_worker(modules=HABITS, args=("-c", "2"))
    with pytest.raises(RuntimeError, match=r"never call result\.get\(\) within a task"):
        ithabits.waits.delay(2).get(timeout=20)
    assert ithabits.waits.delay(3, allowed=True).get(timeout=20) == 6


def test_a_retry_goes_to_the_queue_it_names(broker, start_worker):
    """`self.retry(queue=...)`, an apply_async option as Celery's retry takes them, failed
    the task: the retry kept the running message's exchange and routing key beside the
    queue, which minitask refuses for a queue it has no binding for."""
    start_worker(args=["-Q", "minitask,hipri"], modules=HABITS)
    assert ithabits.retry_to.delay("hipri").get(timeout=20)["routing_key"] == "hipri"
    assert ithabits.retry_to.delay("minitask").get(timeout=20)["retries"] == 1


def test_a_retry_keeps_the_expiry_of_the_call_it_retries(broker, start_worker, tmp_path):
    """Celery's retry keeps the request's `expires`; minitask's sent the retry without one,
    so a task sent with expires=1 went on retrying long after. Now the retried run sees
    the same expiry, and a retry due after it is dropped as expired (REVOKED)."""
    start_worker(modules=HABITS)
    sent = ithabits.retry_to.apply_async((None,), expires=60)
    seen = sent.get(timeout=20)
    expires = datetime.datetime.fromisoformat(seen["expires"])
    assert 0 < (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 60
    late = ithabits.retry_to.apply_async((None, 3.0), expires=1)
    with pytest.raises(TaskRevokedError):
        late.get(timeout=20)
    assert len(ittasks.read_trace(tmp_path, "retry_to-%s" % late.id)) == 1


def test_celerys_result_calls_work_on_a_real_worker(broker, start_worker):
    """What an outside check found missing (TypeError, AttributeError): get()'s callback
    and its other keywords, maybe_throw(), ~sig, join's callback, revoke(wait=True)."""
    start_worker(modules=HABITS)
    seen = []
    result = ittasks.add.delay(2, 3)
    assert result.get(timeout=10, interval=0.1, no_ack=False, follow_parents=True,
                      callback=lambda task_id, value: seen.append((task_id, value))) == 5
    assert seen == [(result.id, 5)] and result.maybe_throw() == 5
    assert ~ittasks.add.s(1, 2) == 3
    failing = ittasks.fail.delay("no")
    with pytest.raises(ValueError, match="no"):
        failing.get(timeout=10, interval=0.5)
    with pytest.raises(ValueError, match="no"):
        failing.maybe_throw()
    sums = group(ittasks.add.s(i, i) for i in range(3)).skew(start=0, step=0.1)()
    assert sums.join(timeout=10, interval=0.1) == [0, 2, 4]
    sums.revoke(wait=True, timeout=1.0)


def test_a_task_that_raises_ignore_records_nothing_more_and_sends_nothing_on(
        broker, start_worker, tmp_path):
    """Celery's Ignore (an ImportError before): the message is acked, the state the task
    reported stays, its link callback is not sent, and no WorkerLostError follows though
    it was handed over as it started (default acks)."""
    start_worker(modules=HABITS)
    result = ithabits.ignores.apply_async(("x",), link=ittasks.record.si("after-ignore", 1))
    wait_for(lambda: result.state == "HANDLED", 10, what="the task's own state")
    wait_for(lambda: broker.queue()["unacked"] == 0 and broker.queue()["ready"] == 0, 10,
             what="the queue to empty")
    assert ittasks.add.delay(1, 1).get(timeout=10) == 2
    assert result.state == "HANDLED" and result.info == {"tag": "x"}
    assert ittasks.read_trace(tmp_path, "after-ignore") == []

def test_autoretry_for_retries_on_the_worker_with_exponential_backoff(broker, start_worker,
                                                                      tmp_path):
    worker = start_worker(modules=HABITS)
    assert ithabits.backoff.delay("backoff", 2).get(timeout=20) == "ok after 2"
    runs = [float(line) for line in ittasks.read_trace(tmp_path, "backoff")]
    gaps = [later - earlier for earlier, later in zip(runs, runs[1:])]
    assert len(runs) == 3

    def countdowns():
        return [float(seconds) for seconds in re.findall(
            r"Task it\.backoff\[[^\]]+\] retry: Retry in ([0-9.]+)s", worker.output())]
    # The countdowns sent, from the worker's log (the retry's own record, the countdown
    # its message was sent with): 1 s, then 2 s (factor 1). Not from the runs' gaps, which
    # on a loaded machine (two pytest processes on two cores in CI) grow by however late a
    # run on time starts.
    assert wait_for(lambda: len(countdowns()) >= 2 and countdowns(), 10.0,
                    what="two retries in the worker's log") == [1.0, 2.0]
    # Each retry waited its countdown (never less), and ran (its lateness is the machine's).
    assert 0.95 < gaps[0] < 1.0 + 5.0 and 1.95 < gaps[1] < 2.0 + 5.0


def test_autoretry_gives_up_after_max_retries_with_the_original_error(broker, start_worker,
                                                                      tmp_path):
    start_worker(modules=HABITS)
    with pytest.raises(KeyError, match="not yet"):
        ithabits.backoff.delay("hopeless", 10).get(timeout=20)
    assert len(ittasks.read_trace(tmp_path, "hopeless")) == 3


def test_queue_sends_to_a_queue_no_one_declared_and_the_call_waits_there(broker,
                                                                         start_worker):
    on_task = ithabits.hipri.delay(1)                       # @task(queue="hipri")
    on_call = ittasks.add.apply_async((2, 3), queue="hipri")
    elsewhere = ittasks.add.apply_async((1, 1), queue="later")
    assert broker.queue("hipri")["ready"] == 2 and broker.queue("later")["ready"] == 1
    assert broker.queue()["ready"] == 0
    start_worker(args=["-Q", "hipri"], modules=HABITS)
    assert (on_task.get(timeout=10), on_call.get(timeout=10)) == ("hipri:1", 5)
    assert elsewhere.state == "PENDING" and broker.queue("later")["ready"] == 1


def test_send_task_reaches_a_task_this_process_does_not_have(broker, start_worker):
    assert "it.hidden" not in registry.tasks and "ithidden" not in sys.modules
    start_worker(modules=HABITS + ",ithidden")
    assert send_task("it.hidden", ("x",)).get(timeout=10) == "hidden:x"
    assert send_task("it.hidden", kwargs={"x": "y"}, queue="hipri").id      # waits in hipri
    assert broker.queue("hipri")["ready"] == 1


def test_task_routes_send_a_task_to_its_queue_and_a_call_option_wins(broker, start_worker):
    config.configure(BROKER_URL=broker.url, ACCEPT_CONTENT=["json", "pickle"],
                     TASK_ROUTES={"it.a*": {"queue": "routed"}})
    transport.reset_connection()
    routed = ittasks.add.delay(1, 2)
    overridden = ittasks.add.apply_async((3, 4), queue="hipri")
    assert broker.queue("routed")["ready"] == 1 and broker.queue("hipri")["ready"] == 1
    start_worker(args=["-Q", "routed,hipri"], modules=HABITS)
    assert (routed.get(timeout=10), overridden.get(timeout=10)) == (3, 7)


def test_a_client_reads_broker_url_and_task_routes_from_a_celery_5_settings_module(
        broker, start_worker, tmp_path, monkeypatch):
    name = "celeryconfig_%s" % uuid.uuid4().hex[:8]
    (tmp_path / (name + ".py")).write_text(
        "broker_url = %r\n"
        "accept_content = ['json']\n"
        "task_routes = {'it.add': {'queue': 'from-module'}}\n" % broker.url)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", name)
    config.reset()
    transport.reset_connection()
    try:
        assert config.get_settings().source("BROKER_URL") == "module " + name
        result = ittasks.add.delay(20, 22)                  # reaches *this* broker
        assert broker.queue("from-module")["ready"] == 1
        start_worker(args=["-Q", "from-module"], modules=HABITS)
        assert result.get(timeout=10) == 42
    finally:
        sys.modules.pop(name, None)


def test_a_worker_reads_celery_names_and_warns_once_about_the_one_it_cannot_use(
        broker, start_worker):
    worker = start_worker(modules=HABITS, env={"MINITASK_CONFIG_MODULE": "itceleryconf"})
    # task_time_limit = 1.5: it.sleep sets no limit of its own, so it is killed at 1.5 s.
    with pytest.raises(TimeLimitExceeded):
        ittasks.sleep.delay(30).get(timeout=20)
    output = worker.output()
    assert output.count("ignoring result_backend: minitask has no such setting") == 1
    assert "task_track_started" not in output


def test_a_refused_option_fails_where_it_is_written_never_in_the_worker(broker):
    with pytest.raises(ConfigurationError, match="stamped_headers is not supported"):
        ittasks.add.apply_async((1, 2), stamped_headers=["x"])
    with pytest.raises(ConfigurationError, match="compression is not supported"):
        ittasks.add.apply_async((1, 2), compression="zlib")
    assert broker.queue()["ready"] == 0

