"""minitask.broker.recovery and the journal side of BrokerState: what survives a kill -9.

Each test drives a broker the way broker/server.py does (journalkit.Broker), "crashes" it
by dropping it without a clean shutdown, and recovers a new BrokerState from the same data
directory. Time moves only through the fake clock.
"""

import base64
import importlib.util
import json
import logging
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from journalkit import (  # noqa: E402
    Broker, FakeClock, disk_faults, live_ids, live_messages, ready_view, segment_files,
)
from minitask import protocol as P  # noqa: E402
from minitask import serialization  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker.journal import Journal, NullJournal  # noqa: E402
from minitask.broker.queue import DELAYED, READY  # noqa: E402
from minitask.broker.state import BrokerOptions, BrokerState  # noqa: E402
from minitask.exceptions import WorkerLostError  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    return Broker(tmp_path / "data")


def publish(broker, client, queue, *task_ids, **kwargs):
    seqs = [client.publish(queue, task_id, **kwargs) for task_id in task_ids]
    broker.turn()
    for seq in seqs:
        assert client.is_confirmed(seq), client.errors.get(seq)


def worker_with(broker, queue, prefetch=0):
    worker = broker.connect(worker="w1")
    if prefetch:
        worker.qos(prefetch)
    worker.consume(queue)
    broker.turn()
    return worker


# -- a fresh start -------------------------------------------------------------------------------

def test_a_fresh_directory_recovers_to_the_default_topology(broker):
    opts = broker.state.options
    assert broker.summary["messages"] == 0 and broker.summary["records"] == 0
    assert set(broker.state.queues) == {opts.default_queue}
    assert opts.default_exchange in broker.state.exchanges
    after = broker.reopen()
    assert set(after.state.queues) == {opts.default_queue}
    assert after.summary["records"] == 0


def test_recovery_summary_counts_what_it_found(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b")
    publish(broker, client, "q", "later", not_before=broker.clock() + 60)
    worker = worker_with(broker, "q")
    assert len(worker.take_deliveries()) == 2
    worker.set_result("x", "SUCCESS")
    broker.turn()
    after = broker.reopen()
    summary = after.summary
    assert (summary["messages"], summary["delayed"], summary["redelivered"]) == (3, 1, 2)
    assert summary["results"] == 1 and summary["orphans"] == 0
    assert summary["records"] >= 6


# -- messages ------------------------------------------------------------------------------------

def test_published_then_acked_messages_do_not_come_back(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b", "c", "d")
    worker = worker_with(broker, "q")
    a, b, c, d = worker.take_deliveries()
    worker.ack(a.tag)
    worker.ack(c.tag)
    worker.reject(d.tag)                                    # dropped: no dead-letter queue
    broker.turn()
    after = broker.reopen()
    assert live_ids(after.state) == ["b"]
    assert after.summary["messages"] == 1


def test_unacked_messages_return_redelivered_ahead_of_never_delivered_ones(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "old1", "old2", "old3")
    worker = worker_with(broker, "q", prefetch=2)
    first, second = worker.take_deliveries()
    worker.ack(first.tag)
    broker.turn()                                           # old3 goes out too
    publish(broker, client, "q", "new1", "new2")
    assert ready_view(broker.state, "q") == [("new1", 0), ("new2", 0)]

    after = broker.reopen()
    assert ready_view(after.state, "q") == [("old2", 1), ("old3", 1), ("new1", 0), ("new2", 0)]
    consumer = worker_with(after, "q")
    got = [(d.task_id, d.redelivered, d.deliveries) for d in consumer.take_deliveries()]
    assert got == [("old2", True, 2), ("old3", True, 2), ("new1", False, 1), ("new2", False, 1)]


def _a_given_back_three_times(broker, release):
    """Messages "a" and "b" of "q", taken by three workers in turn: each rejects "a" with
    requeue (or releases it) and closes, which brings "b" back too. Returns the client."""
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b")
    for _ in range(3):
        worker = worker_with(broker, "q")
        for delivery in worker.take_deliveries():
            if delivery.task_id == "a":
                worker.reject(delivery.tag, requeue=True, release=release)
        worker.close()                                      # b comes back too
        broker.turn()
    return client


def test_messages_requeued_before_the_crash_keep_their_delivery_count(broker):
    _a_given_back_three_times(broker, release=False)
    assert sorted(ready_view(broker.state, "q")) == [("a", 3), ("b", 3)]
    after = broker.reopen()
    assert ready_view(after.state, "q") == [("a", 3), ("b", 3)]


@pytest.mark.parametrize("compacted", [False, True])
def test_messages_given_back_before_they_started_keep_their_count_across_a_restart(
        broker, compacted):
    """A release (REJECT with bit 1) takes back the delivery it ends; the journal says so
    with a copy of the message, which replay takes as its count from then on."""
    client = _a_given_back_three_times(broker, release=True)
    assert sorted(ready_view(broker.state, "q")) == [("a", 0), ("b", 3)]
    if compacted:
        client.declare_queue("filler")
        for n in range(40):
            client.publish("filler", "filler-%d" % n)
            client.purge("filler")
            broker.turn()
        broker.compact()
    after = broker.reopen()
    assert sorted(ready_view(after.state, "q")) == [("a", 0), ("b", 3)]
    consumer = worker_with(after, "q")
    got = sorted((d.task_id, d.redelivered, d.deliveries) for d in consumer.take_deliveries())
    assert got == [("a", False, 1), ("b", True, 4)]


def test_a_release_after_more_deliveries_than_a_record_holds_keeps_the_count(broker):
    """A PUBLISH record holds at most 255 deliveries: a copy saying 255 means at least that,
    so replay keeps the higher count it has. (Past 255 the release cannot be written, so a
    restart counts that delivery after all: one more, never fewer, than the real count.)"""
    client = broker.connect()
    client.declare_queue("q", max_redeliveries=1000)
    publish(broker, client, "q", "a")
    worker = broker.connect(worker="w1")
    consume = worker.consume("q")
    broker.turn()
    for _ in range(300):
        [delivery] = worker.take_deliveries()
        worker.reject(delivery.tag, requeue=True)
        broker.turn()
    [delivery] = worker.take_deliveries()
    worker.cancel(worker.oks[consume]["consumer_tag"])      # as a warm shutdown
    worker.reject(delivery.tag, release=True)
    broker.turn()
    [(task_id, count)] = ready_view(broker.state, "q")
    assert task_id == "a" and count > 255
    assert ready_view(broker.reopen().state, "q") == [("a", count + 1)]


def test_requeueing_one_message_returns_only_that_one_and_a_restart_agrees(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b", "c")
    worker = worker_with(broker, "q")
    a, b, c = worker.take_deliveries()
    worker.reject(c.tag, requeue=True)                      # REJECT bit 0 is requeue only
    broker.turn()
    assert [(d.task_id, d.deliveries) for d in worker.take_deliveries()] == [("c", 2)]
    assert sorted(worker.session.unacked) == [a.tag, b.tag, c.tag + 1]
    worker.ack(a.tag)
    worker.ack(b.tag)
    broker.turn()
    after = broker.reopen()
    assert ready_view(after.state, "q") == [("c", 2)]


def test_delayed_messages_keep_their_not_before_and_are_released_on_time(broker):
    client = broker.connect()
    client.declare_queue("q")
    due = broker.clock() + 100.0
    publish(broker, client, "q", "later", not_before=due)
    publish(broker, client, "q", "now")
    ahead = broker.state.options.release_ahead

    broker.clock.advance(30.0)
    after = broker.reopen()
    [later] = [m for m in live_messages(after.state) if P.message_id_of(m.data) == "later"]
    assert later.where == DELAYED
    assert P.parse_message(later.data).not_before == due
    assert after.state.queues["q"].delayed == 1
    consumer = worker_with(after, "q")
    assert [d.task_id for d in consumer.take_deliveries()] == ["now"]
    after.clock.advance(due - ahead - after.clock() - 0.01)
    after.turn()
    assert consumer.take_deliveries() == []
    after.clock.advance(0.01)
    after.turn()
    assert [d.task_id for d in consumer.take_deliveries()] == ["later"]


def test_a_delayed_message_due_during_the_downtime_is_ready_at_once(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "later", not_before=broker.clock() + 100.0)
    broker.clock.advance(500.0)
    after = broker.reopen()
    assert after.summary["delayed"] == 0
    assert [m.where for m in live_messages(after.state)] == [READY]
    assert ready_view(after.state, "q") == [("later", 0)]


def test_priorities_are_kept(broker):
    client = broker.connect()
    client.declare_queue("q")
    for task_id, priority in [("p9", 9), ("p0", 0), ("none", None), ("p4", 4), ("p0b", 0),
                              ("p2", 2)]:
        publish(broker, client, "q", task_id, priority=priority)
    before = [task_id for task_id, _d in ready_view(broker.state, "q")]
    assert before == ["p0", "p0b", "p2", "none", "p4", "p9"]
    after = broker.reopen()
    assert [task_id for task_id, _d in ready_view(after.state, "q")] == before
    priorities = {P.message_id_of(m.data): m.priority for m in live_messages(after.state)}
    assert priorities == {"p9": 9, "p0": 0, "none": 4, "p4": 4, "p0b": 0, "p2": 2}


def test_new_messages_get_ids_after_the_recovered_ones(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b", "c")
    highest = max(m.id for m in live_messages(broker.state))
    after = broker.reopen()
    assert after.state.messages.next_message_id > highest
    publish(after, after.connect(), "q", "d")
    again = after.reopen()
    assert live_ids(again.state) == ["a", "b", "c", "d"]


def test_messages_that_are_not_persistent_or_in_non_durable_queues_do_not_survive(broker):
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("scratch", durable=False)
    publish(broker, client, "q", "kept")
    publish(broker, client, "q", "transient", flags=0)
    publish(broker, client, "scratch", "in-scratch")
    after = broker.reopen()
    assert live_ids(after.state) == ["kept"]
    assert "scratch" not in after.state.queues


def test_a_message_that_expired_during_the_downtime_is_revoked_not_delivered(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "stale", expires_at=broker.clock() + 10.0)
    publish(broker, client, "q", "fresh")
    broker.clock.advance(60.0)
    after = broker.reopen()
    consumer = worker_with(after, "q")
    assert [d.task_id for d in consumer.take_deliveries()] == ["fresh"]
    assert after.state.results.get("stale").state == "REVOKED"
    assert live_ids(after.reopen().state) == ["fresh"]


def test_recovering_twice_in_a_row_gives_the_same_state(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b", "c")
    worker = worker_with(broker, "q", prefetch=1)
    worker.take_deliveries()
    worker.set_result("a", "SUCCESS", b'"A"')
    broker.turn()
    first = broker.reopen()
    second = first.reopen()
    assert ready_view(second.state, "q") == ready_view(first.state, "q") == \
        [("a", 1), ("b", 0), ("c", 0)]
    assert second.state.results.get("a").payload == b'"A"'


# -- queues: deleted, purged ---------------------------------------------------------------------

def test_messages_of_a_deleted_queue_do_not_come_back(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "ready1", "ready2")
    publish(broker, client, "q", "delayed", not_before=broker.clock() + 100.0)
    client.delete_queue("q")
    broker.turn()
    after = broker.reopen()
    assert "q" not in after.state.queues
    assert live_ids(after.state) == []
    client = after.connect()
    client.declare_queue("q")
    after.turn()
    again = after.reopen()
    assert live_ids(again.state) == []
    again.clock.advance(200.0)
    again.turn()
    assert live_ids(again.state) == []


def test_an_unacked_message_of_a_deleted_queue_does_not_return_to_a_new_queue_of_that_name(
        broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "x")
    holder = worker_with(broker, "q")
    assert [d.task_id for d in holder.take_deliveries()] == ["x"]
    client.delete_queue("q")
    client.declare_queue("q")                               # a new queue, same name
    broker.turn()
    assert broker.state.queues["q"].ready == 0
    after = broker.reopen()
    assert ready_view(after.state, "q") == []


def test_a_message_dropped_at_recovery_for_want_of_its_queue_stays_dropped(tmp_path, caplog):
    # A journal whose queue was deleted while one of its messages was out, unacked.
    journal = Journal(str(tmp_path), fsync="no")
    list(journal.replay())
    data = P.encode_message(P.Message(b"{}", routing_key="q", message_id="x"))
    journal.write([rc.json_record(rc.TOPOLOGY, {"op": "declare_queue", "queue": "q"}),
                   rc.publish_record(1, 0, "q", data), rc.ids_record(rc.DELIVERED, [1]),
                   rc.json_record(rc.TOPOLOGY, {"op": "delete_queue", "queue": "q"})])
    journal.close()
    after = Broker(tmp_path)
    assert "q" not in after.state.queues
    assert any("no longer exist" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    client = after.connect()
    client.declare_queue("q")
    after.turn()
    again = after.reopen()
    assert ready_view(again.state, "q") == []


def test_messages_of_a_purged_queue_do_not_come_back(broker):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "a", "b", "c")
    reply = client.purge("q")
    broker.turn()
    client.pump()
    assert client.oks[reply] == {"messages": 3}
    publish(broker, client, "q", "after-purge")
    after = broker.reopen()
    assert live_ids(after.state) == ["after-purge"]


# -- results, revoked ids, settings --------------------------------------------------------------

def test_results_survive_with_state_and_payload(broker):
    worker = broker.connect(worker="w1")
    stored_at = broker.clock()
    worker.set_result("ok", "SUCCESS", b'{"result": [1, 2]}')
    worker.set_result("bad", "FAILURE", b"\x80\x04pickled", "application/x-python-serialize")
    worker.set_result("retrying", "RETRY", b"{}")
    worker.set_result("short", "SUCCESS", b"1", ttl=30.0)
    broker.turn()
    broker.clock.advance(5.0)
    after = broker.reopen()
    results = after.state.results
    for task_id, state, content_type, payload in [
            ("ok", "SUCCESS", "application/json", b'{"result": [1, 2]}'),
            ("bad", "FAILURE", "application/x-python-serialize", b"\x80\x04pickled"),
            ("retrying", "RETRY", "application/json", b"{}")]:
        entry = results.get(task_id)
        assert (entry.state, entry.content_type, entry.payload) == (state, content_type, payload)
        assert entry.date_done == stored_at
        assert entry.expires_at == stored_at + after.state.options.result_expires
    assert results.get("short").expires_at == stored_at + 30.0
    asker = after.connect()
    seq = asker.call(P.RESULT_GET, {"task_id": "ok"})
    asker.pump()
    assert asker.results[seq][1:] == ("SUCCESS", P.READY, stored_at, "application/json",
                                      b'{"result": [1, 2]}')


def test_the_newest_result_of_a_task_wins(broker):
    worker = broker.connect()
    worker.set_result("t", "RETRY", b'"first"')
    broker.turn()
    worker.set_result("t", "SUCCESS", b'"second"')
    broker.turn()
    after = broker.reopen()
    assert after.state.results.get("t").payload == b'"second"'


def test_forgotten_and_expired_results_do_not_come_back(broker):
    worker = broker.connect()
    worker.set_result("forgotten", "SUCCESS")
    worker.set_result("expiring", "SUCCESS", ttl=10.0)
    worker.set_result("kept", "SUCCESS")
    broker.turn()
    worker.forget("forgotten")
    broker.turn()
    broker.clock.advance(11.0)
    after = broker.reopen()
    assert sorted(after.state.results.entries) == ["kept"]
    assert after.summary["results"] == 1


def test_revoked_ids_survive_until_they_expire(broker):
    client = broker.connect()
    client.declare_queue("q")
    client.revoke("r1", "r2")
    broker.turn()
    expires_at = broker.clock() + broker.state.options.result_expires
    publish(broker, client, "q", "r1", "other")
    after = broker.reopen()
    assert after.state.revoked.ids == {"r1": expires_at, "r2": expires_at}
    consumer = worker_with(after, "q")
    assert [d.task_id for d in consumer.take_deliveries()] == ["other"]
    assert after.state.results.get("r1").state == "REVOKED"
    after.clock.advance(after.state.options.result_expires + 1)
    later = after.reopen()
    assert later.state.revoked.ids == {}


def test_settings_survive_with_their_newest_value(broker):
    client = broker.connect()
    client.kv_set("beat:add", 1.5)
    client.kv_set("beat:mul", {"last": [1, 2]})
    broker.turn()
    client.kv_set("beat:add", 2.5)
    broker.turn()
    after = broker.reopen()
    assert after.state.kv == {"beat:add": 2.5, "beat:mul": {"last": [1, 2]}}


# -- topology ------------------------------------------------------------------------------------

def test_durable_exchanges_queues_and_bindings_survive_and_non_durable_ones_do_not(broker):
    client = broker.connect()
    client.declare_exchange("tasks", "topic")
    client.declare_exchange("events", "fanout", durable=False)
    client.declare_exchange("dropped", "direct")
    client.declare_queue("q1", max_length=100, max_redeliveries=3, dead_letter_queue="q1.dlq")
    client.declare_queue("q2")
    client.declare_queue("temp", durable=False)
    client.bind("q1", "tasks", "add.#")
    client.bind("q2", "tasks", "mul.*")
    client.bind("q2", "tasks", "gone.*")
    client.bind("q2", "events")
    client.bind("temp", "tasks", "temp.#")
    broker.turn()
    client.unbind("q2", "tasks", "gone.*")
    client.delete_exchange("dropped")
    broker.turn()
    assert all(seq not in client.errors for seq in range(1, 14))

    after = broker.reopen()
    state = after.state
    assert state.exchanges["tasks"].type == "topic" and state.exchanges["tasks"].durable
    assert "events" not in state.exchanges and "dropped" not in state.exchanges
    assert "temp" not in state.queues
    assert state.queues["q1"].arguments() == broker.state.queues["q1"].arguments()
    assert state.queues["q2"].arguments() == broker.state.queues["q2"].arguments()
    assert sorted((q, key) for q, key, _a in state.exchanges["tasks"].bindings) == \
        [("q1", "add.#"), ("q2", "mul.*")]
    assert state.exchanges["tasks"].route("add.x.y") == {"q1"}
    client = after.connect()
    publish(after, client, "", "m1", exchange="tasks", routing_key="mul.now")
    assert ready_view(after.state, "q2") == [("m1", 0)]


# -- tasks handed over to workers ----------------------------------------------------------------

def _hand_over(broker, *task_ids):
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", *task_ids)
    worker = worker_with(broker, "q")
    for delivery in worker.take_deliveries():
        worker.ack(delivery.tag, started=True)
    broker.turn()
    return worker


def test_a_handed_over_task_without_a_result_fails_with_worker_lost_after_the_grace(broker):
    _hand_over(broker, "lost")
    after = broker.reopen()
    assert after.summary["orphans"] == 1
    assert live_ids(after.state) == []                      # acked: it does not run again
    assert after.state.results.state_of("lost") == "STARTED"
    grace = after.state.options.handover_grace
    after.clock.advance(grace - 0.5)
    after.turn()
    assert after.state.results.get("lost") is None
    after.clock.advance(0.5)
    after.turn()
    entry = after.state.results.get("lost")
    assert entry.state == "FAILURE"
    meta = serialization.loads(entry.payload, entry.content_type)
    assert meta["status"] == "FAILURE" and isinstance(meta["result"], WorkerLostError)
    again = after.reopen()                                  # the failure was journalled
    assert again.state.results.get("lost").state == "FAILURE"
    assert again.summary["orphans"] == 0


def _send_with_a_workflow(client, task_id, **fields):
    """Publish task `task_id` to queue "q" with an errback (to queue "errbacks") and the
    rest of its chain ("next"); `fields`: more of the message's."""
    errback = P.encode_message(P.Message(b"{}", routing_key="errbacks",
                                         message_id="errback", type="tasks.on_error",
                                         flags=P.PERSISTENT))
    headers = {"x-chain": ["next"],
               "x-errbacks": [base64.b64encode(errback).decode("ascii")]}
    client.send(P.PUBLISH, P.encode_message(P.Message(
        b"{}", routing_key="q", message_id=task_id, type="tasks.add", headers=headers,
        flags=P.PERSISTENT, **fields)))


def _hand_over_with_a_workflow(broker, task_id="lost"):
    """A task with a workflow (`_send_with_a_workflow`), handed over to a worker as it
    starts."""
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("errbacks")
    _send_with_a_workflow(client, task_id)
    broker.turn()
    worker = worker_with(broker, "q")
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    broker.turn()
    return worker


def _compact_after_fillers(broker, client, count=40):
    """Enough records to seal segments (each filler published and purged), then a whole
    compaction pass (raises if it never finishes)."""
    for n in range(count):
        client.publish("q", "filler-%d" % n)
        client.purge("q")
        broker.turn()
    broker.compact()


@pytest.mark.parametrize("compacted", [False, True])
def test_a_task_that_reported_its_own_state_is_still_running_after_a_restart(tmp_path,
                                                                             compacted):
    """update_state (a STARTED result) written after the task's handover: replay keeps the
    handover, so the worker lost afterwards fails it with WorkerLostError and its errbacks
    run, rather than leaving it at its progress for ever."""
    broker = Broker(tmp_path / "data", segment_bytes=4096)
    worker = _hand_over_with_a_workflow(broker)
    for step in (1, 2):
        worker.set_result("lost", "STARTED", b'{"status": "PROGRESS", "result": %d}' % step)
        broker.turn()
    if compacted:
        _compact_after_fillers(broker, broker.connect())
    after = broker.reopen()
    assert after.summary["orphans"] == 1
    assert after.state.results.get("lost").payload.endswith(b"2}")
    _lose_after_the_grace(after)
    assert after.state.results.get("lost").state == "FAILURE"
    assert len(ready_view(after.state, "errbacks")) == 1


def test_a_running_tasks_many_states_keep_one_expiry(broker):
    """However many states a task reports, the store holds one expiry for it."""
    worker = _hand_over(broker, "busy")
    for step in range(50):
        worker.set_result("busy", "STARTED", b'{"status": "PROGRESS", "result": %d}' % step)
        broker.turn()
    store = broker.state.results
    assert len(store._expiry) == 1 and store.inflight.get("busy") == "STARTED"


def test_a_running_tasks_state_expires_from_its_last_report_not_its_first(broker, tmp_path):
    """Each report moves the expiry on, as on Redis (and across a restart): progress that is
    reported more often than the results' lifetime never vanishes meanwhile."""
    worker = _hand_over(broker, "busy")
    for step in range(6):
        worker.set_result("busy", "STARTED", b'{"status": "PROGRESS", "result": %d}' % step,
                          ttl=3.0)
        broker.turn()
        broker.clock.advance(2.0)
        broker.turn()
        assert broker.state.results.get("busy") is not None, "gone after report %d" % step
    assert len(broker.state.results._expiry) == 1
    after = broker.reopen()
    after.clock.advance(0.5)
    after.turn()
    assert after.state.results.get("busy").payload.endswith(b"5}")
    after.clock.advance(1.0)
    after.turn()
    assert after.state.results.get("busy") is None


def _lose_after_the_grace(broker):
    broker.clock.advance(broker.state.options.handover_grace + 0.5)
    broker.turn()


@pytest.mark.parametrize("compacted", [False, True])
def test_a_task_lost_with_its_worker_across_a_restart_still_runs_its_errbacks_and_ends_its_chain(
        tmp_path, compacted):
    broker = Broker(tmp_path / "data", segment_bytes=1024)
    _hand_over_with_a_workflow(broker)
    if compacted:
        _compact_after_fillers(broker, broker.connect())
    after = broker.reopen()
    assert after.summary["orphans"] == 1
    assert ready_view(after.state, "q") == []   # the kept message is not queued: no rerun
    assert list(after.state.handovers.messages) == ["lost"]
    _lose_after_the_grace(after)
    assert after.state.results.get("lost").state == "FAILURE"
    assert after.state.results.get("next").state == "FAILURE"
    assert ready_view(after.state, "errbacks") == [("errback", 0)]
    again = after.reopen()                  # done with: the kept message is gone for good
    assert not again.state.handovers.messages and again.summary["orphans"] == 0
    assert live_ids(again.state) == ["errback"]


def test_the_message_kept_for_a_handed_over_task_goes_when_the_task_ends(broker):
    worker = _hand_over_with_a_workflow(broker)
    assert list(broker.state.handovers.messages) == ["lost"]
    worker.set_result("lost", "SUCCESS", store=False)
    broker.turn()
    assert not broker.state.handovers.messages
    after = broker.reopen()
    assert not after.state.handovers.messages and after.summary["orphans"] == 0
    _lose_after_the_grace(after)
    assert after.state.results.get("next") is None
    assert live_ids(after.state) == []


def _workflow_ended(broker):
    """The lost task failed, the rest of its chain got that failure, its errback is queued
    once, and nothing is kept for it any more."""
    results = broker.state.results
    assert results.get("lost").state == "FAILURE"
    assert results.get("next").state == "FAILURE"
    assert ready_view(broker.state, "errbacks") == [("errback", 0)]
    assert not broker.state.handovers.messages


def test_a_write_torn_anywhere_in_a_lost_tasks_failure_keeps_its_workflow_whole(tmp_path):
    """The failure the broker stores, what it unlocks and the release of the kept message
    go as one record: replay finds all of them, or the task still orphaned and kept."""
    broker = Broker(tmp_path / "data")
    worker = _hand_over_with_a_workflow(broker)
    worker.close()                          # its connection goes: the task is an orphan
    path = segment_files(tmp_path / "data")[-1]
    before = os.path.getsize(path)
    _lose_after_the_grace(broker)
    _workflow_ended(broker)
    end = os.path.getsize(path)
    assert end > before
    for after in _cut_copies(tmp_path, broker, path, before, end):
        _lose_after_the_grace(after)
        _workflow_ended(after)


def _a_run_of_t(broker, client, hand_over=True):
    """Send T (with a workflow) to a worker of its own, prefetch 1: ``(worker, delivery)``;
    with `hand_over`, the worker is handed T as it starts, and consumes no more."""
    _send_with_a_workflow(client, "T")
    broker.turn()
    worker = worker_with(broker, "q", prefetch=1)
    [delivery] = worker.take_deliveries()
    if hand_over:
        worker.ack(delivery.tag, started=True)
        worker.cancel(delivery.consumer_tag)
        broker.turn()
    return worker, delivery


def _handed_over_twice(broker):
    """T sent twice, each run handed over to a worker of its own: ``(first, second)``."""
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("errbacks")
    return [_a_run_of_t(broker, client)[0] for _ in range(2)]


def _refuse_a_result_while_handing_over_again(broker, resulting, handing, delivery):
    """In one turn with the disk full: `resulting` sends T's result in an ATOMIC (refused,
    as the write fails) and `handing` is handed T again by `delivery`. Returns the message
    kept for that newer handover."""
    frame = P.encode_result(P.RESULT_SET, 0, "T", "SUCCESS", P.STORE, 0.0,
                            "application/json", b"1")
    with disk_faults() as faults:
        faults.full = True
        seq = resulting.send(P.ATOMIC, P.encode_atomic(0, [frame])[P.HEADER.size:])
        handing.ack(delivery.tag, started=True)
        newer = broker.state.handovers.messages["T"]
        broker.turn()
        resulting.pump()
        assert seq in resulting.errors
        faults.heal()
    broker.turn()
    return newer


def test_a_refused_result_keeps_a_message_kept_since_for_the_same_task(tmp_path):
    """A worker's ATOMIC result for T is refused (disk full) in the turn T is handed over
    again: the newer kept message stands, and compaction still finishes."""
    broker = Broker(tmp_path / "data", segment_bytes=1024)
    worker = _hand_over_with_a_workflow(broker, "T")
    client = broker.connect()
    _send_with_a_workflow(client, "T")                    # the same task id again (a resend)
    broker.turn()
    [delivery] = worker.take_deliveries()
    newer = _refuse_a_result_while_handing_over_again(broker, worker, worker, delivery)
    assert broker.state.handovers.messages["T"] is newer
    _compact_after_fillers(broker, client)
    after = broker.reopen()
    assert list(after.state.handovers.messages) == ["T"]


def test_an_aborted_result_keeps_the_kept_message_without_a_journal_too():
    broker = Broker(None, journal=NullJournal())
    worker = _hand_over_with_a_workflow(broker)
    ok = P.encode_result(P.RESULT_SET, 0, "lost", "SUCCESS", P.STORE, 0.0,
                         "application/json", b"1")
    bad = P.encode_result(P.RESULT_SET, 0, "", "SUCCESS", P.STORE, 0.0,
                          "application/json", b"1")     # no task id: the ATOMIC aborts
    seq = worker.send(P.ATOMIC, P.encode_atomic(0, [ok, bad])[P.HEADER.size:])
    broker.turn()
    worker.pump()
    assert seq in worker.errors
    assert list(broker.state.handovers.messages) == ["lost"]
    worker.close()
    _lose_after_the_grace(broker)
    _workflow_ended(broker)


def test_a_retried_task_handed_over_again_is_still_orphaned_after_compaction(tmp_path):
    """Compaction copies the first run's RETRY result after its snapshot of handovers:
    replay must still find the second run handed over, and its kept message."""
    broker = Broker(tmp_path / "data", segment_bytes=2048)
    worker = _hand_over_with_a_workflow(broker, "T")
    worker.set_result("T", "RETRY", b'{"status": "RETRY"}')
    broker.turn()
    client = broker.connect()
    _send_with_a_workflow(client, "T")                    # the retry's message
    broker.turn()
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    broker.turn()
    _compact_after_fillers(broker, client, 80)
    after = broker.reopen()
    assert after.summary["orphans"] == 1
    assert list(after.state.handovers.messages) == ["T"]
    _lose_after_the_grace(after)
    assert after.state.results.get("T").state == "FAILURE"
    assert ready_view(after.state, "errbacks") == [("errback", 0)]


def _cut_copies(tmp_path, broker, path, before, end):
    """Brokers recovered from copies of the journal cut at points between `before` and
    `end` in segment `path` (the original crashed first)."""
    broker.crash()
    for cut in sorted({before + 1, (before + end) // 2, end - 1, end}):
        copy = tmp_path / ("cut-%d" % cut)
        shutil.copytree(str(tmp_path / "data"), str(copy))
        with open(os.path.join(str(copy), "journal", os.path.basename(path)), "r+b") as f:
            f.truncate(cut)
        yield Broker(copy, clock=broker.clock)


def _hand_over_torn(tmp_path, broker, worker, delivery):
    """`worker` is handed `delivery` as it starts; then brokers recovered from copies of
    the journal with that turn's write torn at points along it."""
    path = segment_files(tmp_path / "data")[-1]
    before = os.path.getsize(path)
    worker.ack(delivery.tag, started=True)
    broker.turn()
    return _cut_copies(tmp_path, broker, path, before, os.path.getsize(path))


def test_a_write_torn_in_a_second_handover_of_the_same_task_keeps_its_workflow(tmp_path):
    """Handing a task over again releases the message kept for its first run and keeps the
    new one: in one record, so a torn write leaves one of them kept."""
    broker = Broker(tmp_path / "data", segment_bytes=1 << 20)
    worker = _hand_over_with_a_workflow(broker)
    _send_with_a_workflow(broker.connect(), "lost")        # the same task again
    broker.turn()
    [delivery] = worker.take_deliveries()
    for after in _hand_over_torn(tmp_path, broker, worker, delivery):
        assert list(after.state.handovers.messages) == ["lost"]
        _lose_after_the_grace(after)
        _workflow_ended(after)


def test_a_refused_result_leaves_a_newer_handover_of_its_task_alone(tmp_path):
    """Worker A's ATOMIC result for T is refused (disk full) in the turn worker B is handed
    T again: T stays B's, not A's again."""
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("errbacks")
    first, _delivery = _a_run_of_t(broker, client)
    second, again = _a_run_of_t(broker, client, hand_over=False)
    _refuse_a_result_while_handing_over_again(broker, first, second, again)
    handovers = broker.state.handovers
    assert handovers.owner["T"] is second.session and "T" in second.session.started
    first.close()
    _lose_after_the_grace(broker)
    assert broker.state.results.get("T") is None            # still running under B


@pytest.mark.parametrize("then", ["forgotten", "expired"])
def test_a_task_done_before_its_worker_was_lost_is_not_orphaned_again(tmp_path, then):
    """T's outcome is stored by the broker while T is handed over (a duplicate of it was
    rejected); compaction copies that result; T's worker is lost; the result goes. A
    restart must not fail T again with WorkerLostError."""
    broker = Broker(tmp_path / "data", segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "T")
    running = worker_with(broker, "q", prefetch=1)
    [delivery] = running.take_deliveries()
    running.ack(delivery.tag, started=True)
    running.cancel(delivery.consumer_tag)
    broker.turn()
    publish(broker, client, "q", "T")
    rejecting = worker_with(broker, "q", prefetch=1)
    [duplicate] = rejecting.take_deliveries()
    rejecting.reject(duplicate.tag)
    broker.turn()
    assert broker.state.results.get("T").state == "FAILURE"
    _compact_after_fillers(broker, client)
    running.close()
    _lose_after_the_grace(broker)
    if then == "forgotten":
        client.forget("T")
    else:
        broker.clock.advance(broker.state.options.result_expires + 1)
    broker.turn()
    assert broker.state.results.get("T") is None
    after = broker.reopen()
    assert after.summary["orphans"] == 0
    _lose_after_the_grace(after)
    assert after.state.results.get("T") is None


@pytest.mark.parametrize("second_run", ["running", "done"])
def test_losing_the_worker_of_a_tasks_older_run_does_not_fail_its_newer_run(tmp_path,
                                                                             second_run):
    broker = Broker(tmp_path / "data")
    first, second = _handed_over_twice(broker)
    assert broker.state.handovers.owner["T"] is second.session
    if second_run == "done":
        second.set_result("T", "SUCCESS", store=False)
        broker.turn()
    first.close()
    _lose_after_the_grace(broker)
    assert broker.state.results.get("T") is None
    assert ready_view(broker.state, "errbacks") == []


def test_a_refused_result_of_a_worker_gone_in_that_turn_leaves_its_task_an_orphan(tmp_path):
    broker = Broker(tmp_path / "data")
    worker = _hand_over_with_a_workflow(broker)
    frame = P.encode_result(P.RESULT_SET, 0, "lost", "SUCCESS", P.STORE, 0.0,
                            "application/json", b"1")
    with disk_faults() as faults:
        faults.full = True
        worker.send(P.ATOMIC, P.encode_atomic(0, [frame])[P.HEADER.size:])
        worker.close()                      # its connection drops in the same turn
        broker.turn()
        faults.heal()
    broker.turn()
    assert "lost" in broker.state.handovers.orphans
    _lose_after_the_grace(broker)
    _workflow_ended(broker)


def test_a_write_torn_in_a_handover_without_a_workflow_leaves_the_task_queued_or_handed(
        tmp_path):
    broker = Broker(tmp_path / "data", segment_bytes=1 << 20)
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "T")
    worker = worker_with(broker, "q")
    [delivery] = worker.take_deliveries()
    for after in _hand_over_torn(tmp_path, broker, worker, delivery):
        _lose_after_the_grace(after)
        result = after.state.results.get("T")
        assert (result is not None and result.state == "FAILURE") or live_ids(after.state) \
            == ["T"]


def test_a_finished_task_handed_over_again_is_not_orphaned_by_a_later_restart(tmp_path):
    """T succeeded and is sent and handed over again; a restart finds it done (not an
    orphan) and must end that handover in the journal too, or a later restart, once T's
    result is gone, would fail the long-finished task with WorkerLostError."""
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    publish(broker, client, "q", "T")
    worker = worker_with(broker, "q", prefetch=1)
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    worker.set_result("T", "SUCCESS", b'"first"')
    broker.turn()
    publish(broker, client, "q", "T")               # the same task id sent again
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    broker.turn()
    after = broker.reopen()
    assert after.summary["orphans"] == 0
    after.connect().forget("T")
    after.turn()
    again = after.reopen()
    assert again.summary["orphans"] == 0
    _lose_after_the_grace(again)
    assert again.state.results.get("T") is None


def test_a_claim_while_the_broker_still_holds_the_old_connection_keeps_the_task(tmp_path):
    """The worker reconnected before the broker saw its connection drop: its claim stands,
    and the old connection's loss later does not fail the task it still runs."""
    broker = Broker(tmp_path / "data")
    old = _hand_over_with_a_workflow(broker)
    new = broker.connect(worker="w1")
    seq = new.claim("lost")
    broker.turn()
    new.pump()
    assert new.oks[seq] == {"claimed": 1}
    old.close()
    _lose_after_the_grace(broker)
    assert broker.state.results.get("lost") is None
    new.set_result("lost", "SUCCESS")
    broker.turn()
    assert not broker.state.handovers.messages and not new.session.started


def test_a_lost_claimed_task_with_a_final_result_is_not_left_running(tmp_path):
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("errbacks")
    first, _delivery = _a_run_of_t(broker, client)
    first.close()                                   # T is an orphan
    rejecting, duplicate = _a_run_of_t(broker, client, hand_over=False)
    rejecting.reject(duplicate.tag)                 # FAILURE (DeadLetteredError) for T
    broker.turn()
    claiming = broker.connect(worker="w1")
    claiming.claim("T")
    broker.turn()
    claiming.close()
    _lose_after_the_grace(broker)
    assert "T" not in broker.state.handovers.owner
    assert "T" not in broker.state.results.inflight


def test_a_task_lost_after_a_restart_is_counted_under_its_name(tmp_path):
    broker = Broker(tmp_path / "data")
    _hand_over_with_a_workflow(broker)
    after = broker.reopen()
    _lose_after_the_grace(after)
    assert after.state.results.get("lost").state == "FAILURE"
    assert after.state.task_stats.report()["tasks.add"]["failed"] == 1


def test_a_dropped_copy_of_a_task_that_succeeded_unlocks_no_failure(tmp_path):
    """A publisher's retry of a send (its confirm was lost) arrives expired after the task
    succeeded: it is dropped, and neither its errbacks run nor the rest of its chain fails."""
    broker = Broker(tmp_path / "data")
    worker = _hand_over_with_a_workflow(broker, "T")
    worker.set_result("T", "SUCCESS", b'{"status": "SUCCESS", "result": 1}')
    broker.turn()
    _send_with_a_workflow(broker.connect(), "T", expires_at=broker.clock() - 1)
    broker.turn()
    assert broker.state.results.get("T").state == "SUCCESS"
    assert broker.state.results.get("next") is None
    assert ready_view(broker.state, "errbacks") == []


def test_a_second_run_that_fails_after_the_first_succeeded_leaves_success_across_a_restart(
        tmp_path):
    """Both copies of a task ran; the second failed after the first succeeded. Its ATOMIC
    unit (FAILURE, the rest of its chain, its errback) is void but for ending its
    handover: a restart neither finds its failure nor orphans its run."""
    broker = Broker(tmp_path / "data")
    worker = _hand_over_with_a_workflow(broker, "T")
    worker.set_result("T", "SUCCESS", b'{"status": "SUCCESS", "result": 1}')
    _send_with_a_workflow(broker.connect(), "T")
    broker.turn()
    [copy] = worker.take_deliveries()
    worker.ack(copy.tag, started=True)
    failure = P.encode_result(P.RESULT_SET, 0, "T", "FAILURE", P.STORE, 0.0,
                              "application/json", b'{"status": "FAILURE"}')
    chained = P.encode_result(P.RESULT_SET, 0, "next", "FAILURE", P.STORE, 0.0,
                              "application/json", b'{"status": "FAILURE"}')
    errback = P.encode_frame(P.PUBLISH, 0, P.encode_message(P.Message(
        b"{}", routing_key="errbacks", message_id="errback", flags=P.PERSISTENT)))
    seq = worker.send(P.ATOMIC, P.encode_atomic(0, [failure, chained, errback])[
        P.HEADER.size:])
    broker.turn()
    worker.pump()
    assert worker.confirmed >= seq and not worker.errors
    for state in (broker.state, broker.reopen().state):
        assert state.results.get("T").state == "SUCCESS"
        assert state.results.get("next") is None
        assert ready_view(state, "errbacks") == []
        assert "T" not in state.result_commands.handovers.owner
        assert state.results.inflight.get("T") is None


def test_a_failure_is_not_dropped_for_a_success_whose_write_is_refused(tmp_path):
    """Two copies of T run; in one turn the first's SUCCESS comes in an ATOMIC unit and the
    second's FAILURE as a plain result. The disk refuses the turn's write, so the unit is
    undone: the FAILURE, confirmed and written again, is T's result (not a SUCCESS that
    never was, and not nothing, which would later fail T as lost)."""
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("callbacks")
    client.publish("q", "T")
    client.publish("q", "T")                # a publisher's retry: a second copy
    broker.turn()
    worker = worker_with(broker, "q")
    copies = worker.take_deliveries()
    for copy in copies:
        worker.ack(copy.tag, started=True)
    broker.turn()
    success = P.encode_result(P.RESULT_SET, 0, "T", "SUCCESS", P.STORE, 0.0,
                              "application/json", b'{"status": "SUCCESS"}')
    callback = P.encode_frame(P.PUBLISH, 0, P.encode_message(P.Message(
        b"{}", routing_key="callbacks", message_id="callback", flags=P.PERSISTENT)))
    with disk_faults() as faults:
        faults.full = True
        worker.send(P.ATOMIC, P.encode_atomic(0, [success, callback])[P.HEADER.size:])
        seq = worker.set_result("T", "FAILURE", b'{"status": "FAILURE"}')
        broker.turn()
        faults.heal()
    broker.turn()
    worker.pump()
    assert len(copies) == 2 and worker.confirmed >= seq
    for state in (broker.state, broker.reopen().state):
        assert state.results.get("T").state == "FAILURE"
        assert ready_view(state, "callbacks") == []


def test_an_orphan_claimed_within_the_grace_does_not_fail(broker):
    _hand_over(broker, "running")
    after = broker.reopen()
    worker = after.connect(worker="w1")
    seq = worker.claim("running", "unknown")
    after.turn()
    worker.pump()
    assert worker.oks[seq] == {"claimed": 1}
    after.clock.advance(after.state.options.handover_grace * 3)
    after.turn()
    assert after.state.results.get("running") is None
    worker.set_result("running", "SUCCESS", b'"done"')
    after.turn()
    assert after.reopen().state.results.get("running").payload == b'"done"'


def test_handed_over_tasks_that_finished_are_not_orphans(broker):
    worker = _hand_over(broker, "stored", "ignored")
    worker.set_result("stored", "SUCCESS", b'"yes"')
    worker.set_result("ignored", "SUCCESS", b"", store=False)
    broker.turn()
    after = broker.reopen()
    assert after.summary["orphans"] == 0
    after.clock.advance(after.state.options.handover_grace * 2)
    after.turn()
    assert after.state.results.get("stored").payload == b'"yes"'
    assert after.state.results.get("ignored") is None


def test_the_grace_period_is_the_brokers_option(tmp_path):
    first = Broker(tmp_path, options=BrokerOptions(handover_grace=60.0))
    _hand_over(first, "slow")
    after = first.reopen()
    after.clock.advance(59.0)
    after.turn()
    assert after.state.results.get("slow") is None
    after.clock.advance(1.0)
    after.turn()
    assert after.state.results.get("slow").state == "FAILURE"


# -- --no-persist --------------------------------------------------------------------------------

def test_without_a_journal_nothing_is_recorded_and_nothing_comes_back(tmp_path):
    state = BrokerState(FakeClock(), NullJournal())
    assert state.recover()["records"] == 0
    session = state.open_session(1)
    state.handle(session, P.HELLO, 1, b'{"protocol": 1}')
    state.handle(session, P.DECLARE_QUEUE, 2, b'{"queue": "q"}')
    data = P.encode_message(P.Message(b"{}", routing_key="q", message_id="t"))
    state.handle(session, P.PUBLISH, 3, data)
    assert state.take_records() == []
    state.confirm_turn()
    assert state.queues["q"].ready == 1
    assert list(state.live_objects()) == []
    assert os.listdir(str(tmp_path)) == []


# -- upgrading -----------------------------------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _v1_fixture():
    """The journal a broker of format 1 wrote (fixtures/make_journal_v1.py), and `view`."""
    spec = importlib.util.spec_from_file_location(
        "make_journal_v1", os.path.join(FIXTURES, "make_journal_v1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(os.path.join(FIXTURES, "journal-v1", "expected.json")) as handle:
        return json.load(handle), module.view


def test_a_journal_of_the_previous_format_replays_exactly(tmp_path, caplog):
    expected, view = _v1_fixture()
    data_dir = tmp_path / "data"
    shutil.copytree(os.path.join(FIXTURES, "journal-v1", "journal"), str(data_dir / "journal"))
    old_files = {name: open(str(data_dir / "journal" / name), "rb").read()
                 for name in os.listdir(str(data_dir / "journal"))}
    clock = FakeClock(expected["time"])
    broker = Broker(data_dir, clock=clock, segment_bytes=expected["segment_bytes"])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert json.loads(json.dumps(view(broker.state))) == expected["view"]
    assert broker.summary["records_lost"] == 0
    for name, content in old_files.items():                 # format 1 files: never appended
        with open(str(data_dir / "journal" / name), "rb") as handle:
            assert handle.read() == content
    # It carries on in format 2 after them, and the two formats replay together.
    client = broker.connect()
    client.publish("fx.q", "new-1")
    broker.turn()
    newest = sorted(os.listdir(str(data_dir / "journal")))[-1]
    assert newest not in old_files
    with open(str(data_dir / "journal" / newest), "rb") as handle:
        assert handle.read(8) == b"MTJ1\0\0\0\2"
    after = broker.reopen()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    both = json.loads(json.dumps(view(after.state)))
    got = json.loads(json.dumps(both))
    ready = got["queues"]["fx.q"]["ready"]
    assert [row[0] for row in ready].count("new-1") == 1
    ready[:] = [row for row in ready if row[0] != "new-1"]
    got["next_message_id"] -= 1
    assert got == expected["view"]
    # Compaction retires the format 1 segments like any other; nothing is reported lost.
    after.compact()
    retired = set(old_files) - set(os.listdir(str(data_dir / "journal")))
    assert "0000000002.seg" in retired
    caplog.clear()
    last = after.reopen()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert json.loads(json.dumps(view(last.state))) == both
