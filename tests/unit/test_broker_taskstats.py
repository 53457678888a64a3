"""minitask.broker.taskstats, alone and as BrokerState feeds it: counts per task name.

Received is counted as the broker delivers, the rest as results arrive (described by the worker
with the task's name and run time, or named by the broker's handover for an older worker), or
as the broker drops a revoked or expired message, or fails a lost worker's task.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from brokerkit import Broker, body_of  # noqa: E402

from minitask import protocol as P  # noqa: E402
from minitask.broker import taskstats  # noqa: E402
from minitask.broker.taskstats import OTHER, RUNTIME_BUCKETS, TaskStats  # noqa: E402


def zeros(**counts):
    row = {"received": 0, "succeeded": 0, "failed": 0, "retried": 0, "revoked": 0}
    row.update(counts)
    return row


def events(report, name):
    return {key: value for key, value in report[name].items() if key != "runtime"}


# -- TaskStats alone ----------------------------------------------------------------------------

def test_each_state_counts_as_its_event_and_others_not_at_all():
    stats = TaskStats()
    stats.received(b"tasks.add")
    stats.received(b"tasks.add")
    for state in ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "RECEIVED", "PENDING"):
        stats.finished("tasks.add", state)
    assert events(stats.report(), "tasks.add") == zeros(received=2, succeeded=1, failed=1,
                                                        retried=1, revoked=1)


def test_runtimes_of_successes_fill_cumulative_buckets_with_sum_and_count():
    stats = TaskStats()
    for runtime in (0.0005, 0.001, 0.3, 1000.0):
        stats.finished("t", "SUCCESS", runtime)
    stats.finished("t", "FAILURE", 0.2)             # failures are not timed, as in Flower
    stats.finished("t", "SUCCESS", None)            # counted, not timed (an older worker)
    stats.finished("t", "SUCCESS", float("nan"))
    stats.finished("t", "SUCCESS", -1.0)
    runtime = stats.report()["t"]["runtime"]
    buckets = dict(zip(RUNTIME_BUCKETS + (float("inf"),), runtime["buckets"]))
    assert buckets[0.001] == 2                      # le: 0.001 itself is in the first bucket
    assert buckets[0.25] == 2 and buckets[0.5] == 3 and buckets[300.0] == 3
    assert buckets[float("inf")] == runtime["count"] == 4
    assert runtime["sum"] == pytest.approx(1000.3015)
    assert stats.report()["t"]["succeeded"] == 7


def test_control_messages_and_nameless_messages_are_not_tasks():
    stats = TaskStats()
    for raw in (b"minitask.control", b"minitask.control.reply", b""):
        stats.received(raw)
    stats.finished("", "SUCCESS")
    stats.finished(None, "FAILURE")
    assert stats.report() == {}


def test_names_past_the_limit_are_counted_together_as_other(monkeypatch):
    monkeypatch.setattr(taskstats, "MAX_NAMES", 3)
    stats = TaskStats()
    for name in ("a", "b", "c", "d", "e"):
        stats.received(name.encode())
        stats.finished(name, "SUCCESS", 0.01)
    stats.received(b"a")
    report = stats.report()
    assert sorted(report) == [OTHER, "a", "b"]
    assert events(report, "a") == zeros(received=2, succeeded=1)
    assert events(report, OTHER) == zeros(received=3, succeeded=3)
    assert report[OTHER]["runtime"]["count"] == 3


def test_received_and_finished_names_that_differ_still_fit_the_limit(monkeypatch):
    monkeypatch.setattr(taskstats, "MAX_NAMES", 3)
    stats = TaskStats()
    for name in ("a", "b", "c"):
        stats.received(name.encode())
    for name in ("x", "y", "z"):
        stats.finished(name, "FAILURE")
    report = stats.report()
    assert len(report) == 3 and OTHER in report
    assert sum(row["received"] + row["failed"] for row in report.values()) == 6


# -- fed by BrokerState -------------------------------------------------------------------------

@pytest.fixture
def kit():
    return Broker()


def run(kit, client, name, task_id, result=None, **fields):
    """Publish one task to "q", deliver it to `client`, and return the delivery."""
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    client.publish(routing_key="q", message_id=task_id, type=name, **fields)
    if "q" not in [c.queue.name for c in client.session.consumers.values()]:
        client.consume("q")
    kit.turn()
    return client.deliveries()


def described(task_id, state, name, runtime, store=True):
    return body_of(P.encode_result(P.RESULT_SET, 0, task_id, state, P.STORE if store else 0,
                                   0.0, "application/json", b"{}", name, runtime))


def test_the_welcome_offers_described_results(kit):
    client = kit.open()
    frames = client.send_json(P.HELLO, {"protocol": 1})
    assert "described_results" in P.decode_json(frames[0][2])["features"]


def test_deliveries_count_as_received_and_described_results_by_their_name(kit):
    worker = kit.connect()
    [delivery] = run(kit, worker, "tasks.add", "t1")
    worker.state.handle(worker.session, P.RESULT_SET, 0, described("t1", "SUCCESS",
                                                                   "tasks.add", 0.02))
    worker.ack([delivery.tag])
    [again] = run(kit, worker, "tasks.add", "t2")
    worker.state.handle(worker.session, P.RESULT_SET, 0, described("t2", "RETRY", "tasks.add",
                                                                   0.01))
    report = kit.state.task_stats.report()
    assert events(report, "tasks.add") == zeros(received=2, succeeded=1, retried=1)
    assert report["tasks.add"]["runtime"]["count"] == 1
    assert report["tasks.add"]["runtime"]["sum"] == pytest.approx(0.02)
    assert kit.state.results.get("t1").payload == b"{}"      # the description is not stored


def test_a_result_with_nothing_to_store_is_still_counted(kit):
    worker = kit.connect()
    run(kit, worker, "tasks.ignored", "t1")
    worker.state.handle(worker.session, P.RESULT_SET, 0, described(
        "t1", "SUCCESS", "tasks.ignored", 0.5, store=False))
    assert events(kit.state.task_stats.report(), "tasks.ignored") == zeros(received=1,
                                                                          succeeded=1)
    assert kit.state.results.get("t1") is None


def test_an_older_workers_plain_result_is_named_by_its_handover(kit):
    worker = kit.connect()
    [delivery] = run(kit, worker, "tasks.add", "t1")
    worker.ack([delivery.tag], flags=P.STARTED)
    worker.set_result("t1", "FAILURE", b"{}")
    report = kit.state.task_stats.report()
    assert events(report, "tasks.add") == zeros(received=1, failed=1)
    # A plain result the broker cannot name (a client storing one itself) is not counted.
    worker.set_result("unknown-task", "SUCCESS", b"{}")
    assert list(kit.state.task_stats.report()) == ["tasks.add"]


def test_a_revoked_message_the_broker_drops_counts_as_revoked(kit):
    worker = kit.connect()
    worker.ok(P.REVOKE, {"task_ids": ["doomed"]})
    assert run(kit, worker, "tasks.add", "doomed") == []
    report = kit.state.task_stats.report()
    assert events(report, "tasks.add") == zeros(revoked=1)


def test_an_expired_message_counts_as_revoked(kit):
    client = kit.connect()
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    client.publish(routing_key="q", message_id="late", type="tasks.add",
                   expires_at=kit.clock.now + 1.0)
    client.publish(routing_key="q", message_id="dead", type="tasks.add",
                   expires_at=kit.clock.now - 1.0)
    kit.advance(2.0)
    assert events(kit.state.task_stats.report(), "tasks.add") == zeros(revoked=2)


def test_a_lost_workers_task_counts_as_failed(kit):
    worker = kit.connect()
    [delivery] = run(kit, worker, "tasks.slow", "t1")
    worker.ack([delivery.tag], flags=P.STARTED)
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace)
    assert events(kit.state.task_stats.report(), "tasks.slow") == zeros(received=1,
                                                                       failed=1)


def test_control_messages_are_not_counted(kit):
    from minitask import control
    worker = kit.connect()
    reply_queue = worker.ok(P.DECLARE_QUEUE, {"queue": ""})["queue"]
    worker.consume(reply_queue, no_ack=True)
    worker.state.handle(worker.session, P.PUBLISH, 0, P.encode_message(
        control.reply_message(reply_queue, "ticket", "w1", "pong")))
    kit.turn()
    assert len(worker.deliveries()) == 1
    assert kit.state.task_stats.report() == {}


def test_status_carries_the_counts(kit):
    worker = kit.connect()
    run(kit, worker, "tasks.add", "t1")
    assert worker.ok(P.STATUS)["task_stats"]["tasks.add"]["received"] == 1


# -- the countdowns the broker holds (STATUS "scheduled") ---------------------------------------

def test_status_lists_the_delayed_messages_soonest_first_and_leaves_them_be(kit):
    client = kit.connect()
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    now = kit.clock.now
    for index, delay in enumerate([50, 10, 40, 20, 30, 60, 5]):
        client.publish(routing_key="q", message_id="t%d" % index, type="tasks.add",
                       not_before=now + delay, priority=index % 10)
    client.publish(routing_key="q", message_id="now", type="tasks.add")
    kit.turn()
    listed = client.ok(P.STATUS, {"scheduled": 4})["scheduled"]
    assert [entry["id"] for entry in listed] == ["t6", "t1", "t3", "t4"]
    assert listed[0] == {"id": "t6", "name": "tasks.add", "eta": now + 5, "queue": "q",
                         "priority": 6}
    assert len(client.ok(P.STATUS, {"scheduled": 100})["scheduled"]) == 7
    assert "scheduled" not in client.ok(P.STATUS)
    kit.advance(5.0)                     # the heap still releases in order after the walk
    assert kit.queue("q").ready == 2 and kit.queue("q").delayed == 6
    assert [e["id"] for e in client.ok(P.STATUS, {"scheduled": 2})["scheduled"]] == ["t1", "t3"]


def test_a_delayed_message_that_expired_is_no_longer_listed(kit):
    client = kit.connect()
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    client.publish(routing_key="q", message_id="gone", type="tasks.add",
                   not_before=kit.clock.now + 10, expires_at=kit.clock.now + 5)
    client.publish(routing_key="q", message_id="kept", type="tasks.add",
                   not_before=kit.clock.now + 20)
    kit.advance(6.0)                     # "gone" expired while delayed
    assert [e["id"] for e in client.ok(P.STATUS, {"scheduled": 10})["scheduled"]] == ["kept"]


@pytest.mark.parametrize("bad", [-1, 10001, "5", 1.5, True])
def test_a_bad_scheduled_limit_is_a_bad_frame(kit, bad):
    client = kit.connect()
    code, text = client.error(P.STATUS, {"scheduled": bad})
    assert code == P.BAD_FRAME and "scheduled" in text
