"""minitask.broker.state, messages in and out: publishing and confirms, consume, prefetch,
ack, reject, requeue on close, round-robin, priorities, dead-lettering, delayed and expiring
messages.

Deliveries happen only in `dispatch()` (brokerkit's `turn()`); time moves only through the
fake clock (`advance()` runs `tick()` then `dispatch()`).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from brokerkit import Broker, BrokerOptions, FakeJournal  # noqa: E402

from minitask import protocol as P  # noqa: E402
from minitask.exceptions import ProtocolError, TaskRevokedError  # noqa: E402
from minitask.message import decode_result_meta  # noqa: E402


@pytest.fixture
def kit():
    return Broker()


@pytest.fixture
def client(kit):
    """The publisher."""
    client = kit.connect()
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    return client


@pytest.fixture
def worker(kit):
    return kit.connect()


def publish(client, *ids, **fields):
    """Publish one message per id to queue q (message_id = task id)."""
    fields.setdefault("routing_key", "q")
    for message_id in ids:
        client.publish(message_id=message_id, type="tasks.t", **fields)


def ids_of(deliveries):
    return [d.message.message_id for d in deliveries]


def kinds(frames):
    return [(kind, seq) for kind, seq, _body in frames]


def confirms(frames):
    return [seq for kind, seq, _body in frames if kind == P.CONFIRM]


def errors(frames):
    return [(seq,) + P.decode_error(body) for kind, seq, body in frames if kind == P.ERROR]


def declare(client, queue, **args):
    return client.ok(P.DECLARE_QUEUE, dict(args, queue=queue))


# -- publishing and confirms --------------------------------------------------------------------

def test_a_publish_is_confirmed_only_after_confirm_turn(kit, client):
    declare(client, "q")
    seq = client.publish(routing_key="q")
    assert client.frames() == []                       # nothing before the journal write
    kit.state.confirm_turn()
    assert kinds(client.frames()) == [(P.CONFIRM, seq)]
    kit.state.confirm_turn()
    assert client.frames() == []                       # confirmed once


def test_one_confirm_covers_every_publish_of_the_turn(kit, client):
    declare(client, "q")
    seqs = [client.publish(routing_key="q") for _ in range(5)]
    kit.turn()
    assert confirms(client.frames()) == [seqs[-1]]


def test_a_confirm_frame_has_an_empty_body(kit, client):
    declare(client, "q")
    seq = client.publish(routing_key="q")
    kit.state.confirm_turn()
    assert client.session.out == [P.HEADER.pack(0, P.CONFIRM, seq)]


def test_a_publish_with_seq_zero_gets_no_confirm(kit, client):
    declare(client, "q")
    client.publish(routing_key="q", seq=0)
    kit.turn()
    assert client.frames() == []
    assert kit.queue("q").ready == 1


def test_mandatory_unroutable_is_error_312_and_other_publishes_still_confirm(kit, client):
    declare(client, "q")
    good = client.publish(routing_key="q")
    bad = client.publish(exchange="minitask", routing_key="nowhere", flags=P.MANDATORY)
    frames = client.frames()
    assert [(seq, code) for seq, code, _text in errors(frames)] == [(bad, P.UNROUTABLE)]
    kit.turn()
    assert confirms(client.frames()) == [good]
    assert not client.session.want_close


def test_unroutable_without_mandatory_is_confirmed_dropped_and_counted(kit, client):
    seq = client.publish(exchange="minitask", routing_key="nowhere")
    kit.turn()
    assert kinds(client.frames()) == [(P.CONFIRM, seq)]
    assert kit.state.messages.unroutable == 1
    assert sum(queue.ready for queue in kit.state.queues.values()) == 0


def test_publishing_to_a_missing_exchange_is_404(client):
    assert client.error(P.PUBLISH, P.encode_message(P.Message(exchange="nope")))[0] == 404


def test_the_default_exchange_routes_by_queue_name(kit, client):
    declare(client, "by-name")
    client.publish(exchange="", routing_key="by-name")
    assert kit.queue("by-name").ready == 1
    client.publish(exchange="", routing_key="no-such-queue")
    assert kit.state.messages.unroutable == 1
    code = client.error(P.PUBLISH, P.encode_message(P.Message(
        exchange="", routing_key="no-such-queue", flags=P.MANDATORY)))[0]
    assert code == P.UNROUTABLE


def test_immediate_without_a_consumer_with_credit_is_313(kit, client):
    declare(client, "q")
    message = P.encode_message(P.Message(routing_key="q", flags=P.IMMEDIATE | P.PERSISTENT))
    assert client.error(P.PUBLISH, message)[0] == P.NOT_DELIVERABLE
    worker = kit.connect()
    worker.qos(1)
    worker.consume("q")
    client.send(P.PUBLISH, message)                   # a consumer with credit: accepted
    kit.turn()
    assert len(worker.deliveries()) == 1
    assert client.error(P.PUBLISH, message)[0] == P.NOT_DELIVERABLE    # its credit is used up
    assert kit.queue("q").ready == 0


def test_a_full_queue_refuses_publishes_with_507(kit, client):
    declare(client, "small", max_length=2)
    client.publish(routing_key="small")
    client.publish(routing_key="small")
    seq = client.next_seq()
    code, text = client.error(P.PUBLISH, P.encode_message(P.Message(routing_key="small")), seq)
    assert code == P.REFUSED
    assert "small" in text
    kit.turn()
    assert confirms(client.frames()) == [seq - 1]
    assert kit.queue("small").ready == 2


def test_a_full_queue_refuses_the_whole_publish_even_when_another_queue_has_room(kit, client):
    declare(client, "small", max_length=0)
    declare(client, "roomy")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "f", "type": "fanout"})
    client.ok(P.BIND, {"queue": "small", "exchange": "f"})
    client.ok(P.BIND, {"queue": "roomy", "exchange": "f"})
    assert client.error(P.PUBLISH, P.encode_message(P.Message(exchange="f")))[0] == 507
    assert kit.queue("roomy").ready == 0


def test_fanout_puts_one_copy_in_each_bound_queue(kit, client):
    declare(client, "a")
    declare(client, "b")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "f", "type": "fanout"})
    client.ok(P.BIND, {"queue": "a", "exchange": "f"})
    client.ok(P.BIND, {"queue": "b", "exchange": "f"})
    client.publish(exchange="f", routing_key="x")
    assert (kit.queue("a").ready, kit.queue("b").ready) == (1, 1)


def test_a_message_routed_through_two_bindings_is_queued_once(kit, client):
    declare(client, "q")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "t", "type": "topic"})
    client.ok(P.BIND, {"queue": "q", "exchange": "t", "binding_key": "a.*"})
    client.ok(P.BIND, {"queue": "q", "exchange": "t", "binding_key": "*.b"})
    client.publish(exchange="t", routing_key="a.b")
    assert kit.queue("q").ready == 1


def test_a_malformed_publish_is_error_400_and_the_session_stays_usable(kit, client):
    declare(client, "q")
    assert client.error(P.PUBLISH, b"\x00\x01")[0] == P.BAD_FRAME
    assert not client.session.want_close
    client.publish(routing_key="q")
    assert kit.queue("q").ready == 1


def test_a_publish_with_a_message_id_that_is_not_utf8_never_breaks_the_broker(kit, client):
    declare(client, "q")
    data = bytearray(P.encode_message(P.Message(routing_key="q", message_id="abc")))
    data[19] = 0xFF                                    # first byte of the message_id
    seq = client.next_seq()
    kit.state.handle(client.session, P.PUBLISH, seq, bytes(data))
    worker = kit.connect()
    worker.consume("q")
    kit.turn()                                         # must not raise
    frames = client.frames()
    refused = [code for s, code, _text in errors(frames) if s == seq]
    assert refused == [P.BAD_FRAME] or len(worker.deliveries()) == 1


# -- consume and deliver ----------------------------------------------------------------------

def test_a_consumer_gets_the_message_exactly_as_published(kit, client, worker):
    message = P.Message(b"\x00body", routing_key="q", message_id="t1", type="tasks.add",
                        headers={"lang": "py"}, priority=3)
    client.send(P.PUBLISH, P.encode_message(message))
    tag = worker.consume("q")
    kit.turn()
    [delivery] = worker.deliveries()
    assert delivery.data == P.encode_message(message)
    assert (delivery.tag, delivery.consumer_tag) == (1, tag)
    assert (delivery.redelivered, delivery.deliveries) == (False, 1)


def test_nothing_is_delivered_before_dispatch(kit, client, worker):
    publish(client, "t1")
    worker.consume("q")
    assert worker.deliveries() == []
    kit.state.confirm_turn()
    assert worker.deliveries() == []
    kit.state.dispatch()
    assert ids_of(worker.deliveries()) == ["t1"]


def test_messages_waiting_before_the_consumer_came_are_delivered_in_order(kit, client, worker):
    publish(client, "a", "b", "c")
    worker.consume("q")
    kit.turn()
    deliveries = worker.deliveries()
    assert ids_of(deliveries) == ["a", "b", "c"]
    assert [d.tag for d in deliveries] == [1, 2, 3]


def test_consumer_tags_are_chosen_by_the_broker_or_the_client(kit, client, worker):
    assert worker.consume("q") == 1
    assert worker.consume("q", consumer_tag=7) == 7
    assert worker.consume("q") == 2
    assert worker.error(P.CONSUME, {"queue": "q", "consumer_tag": 7})[0] == 406
    for bad in (0, -1, 2 ** 32, "x", True):
        assert worker.error(P.CONSUME, {"queue": "q", "consumer_tag": bad})[0] == 400


def test_consuming_a_missing_queue_is_404(worker):
    assert worker.error(P.CONSUME, {"queue": "nope"})[0] == 404


def test_a_delivered_task_reads_as_received(kit, client, worker):
    publish(client, "t1")
    worker.consume("q")
    kit.turn()
    assert client.get_result("t1")[1] == "RECEIVED"


def test_start_marks_a_late_acked_task_started(kit, client, worker):
    publish(client, "t1")
    worker.consume("q")
    kit.turn()
    [delivery] = worker.deliveries()
    worker.state.handle(worker.session, P.START, 0,
                        P.encode_tags(P.START, 0, [delivery.tag])[P.HEADER.size:])
    assert client.get_result("t1")[1] == "STARTED"
    assert kit.queue("q").unacked == 1


def test_deliveries_round_robin_across_two_consumers(kit, client):
    first, second = kit.connect(), kit.connect()
    first.consume("q")
    second.consume("q")
    publish(client, "1", "2", "3", "4", "5", "6")
    kit.turn()
    assert ids_of(first.deliveries()) == ["1", "3", "5"]
    assert ids_of(second.deliveries()) == ["2", "4", "6"]


def test_round_robin_carries_on_across_turns(kit, client):
    first, second = kit.connect(), kit.connect()
    first.consume("q")
    second.consume("q")
    for message_id in "abcd":
        publish(client, message_id)
        kit.turn()
    assert ids_of(first.deliveries()) == ["a", "c"]
    assert ids_of(second.deliveries()) == ["b", "d"]


def test_a_consumer_without_credit_is_skipped(kit, client):
    full, free = kit.connect(), kit.connect()
    full.qos(1)
    full.consume("q")
    free.consume("q")
    publish(client, "1", "2", "3", "4")
    kit.turn()
    assert ids_of(full.deliveries()) == ["1"]
    assert ids_of(free.deliveries()) == ["2", "3", "4"]


def test_no_ack_consumers_hold_nothing_unacked(kit, client, worker):
    publish(client, "a", "b")
    worker.consume("q", no_ack=True)
    kit.turn()
    deliveries = worker.deliveries()
    assert ids_of(deliveries) == ["a", "b"]
    assert [d.tag for d in deliveries] == [0, 0]
    assert kit.queue("q").unacked == 0
    kit.close(worker)
    assert kit.queue("q").ready == 0


def test_a_cancelled_consumer_gets_nothing_more_but_keeps_its_unacked(kit, client, worker):
    tag = worker.consume("q")
    publish(client, "a")
    kit.turn()
    [delivery] = worker.deliveries()
    worker.ok(P.CANCEL, {"consumer_tag": tag})
    publish(client, "b")
    kit.turn()
    assert worker.deliveries() == []
    assert kit.queue("q").ready == 1
    worker.ack([delivery.tag])
    assert kit.queue("q").unacked == 0


# -- prefetch and acks --------------------------------------------------------------------------

def test_a_consumer_gets_no_more_than_its_prefetch_until_it_acks(kit, client, worker):
    publish(client, "1", "2", "3", "4", "5")
    worker.qos(2)
    worker.consume("q")
    kit.turn()
    first = worker.deliveries()
    assert ids_of(first) == ["1", "2"]
    worker.ack([first[0].tag])
    kit.turn()
    assert ids_of(worker.deliveries()) == ["3"]
    assert kit.queue("q").ready == 2


def test_prefetch_counts_unacked_messages_over_all_consumers_of_a_connection(kit, client,
                                                                              worker):
    client.ok(P.DECLARE_QUEUE, {"queue": "other"})
    publish(client, "q1", "q2")
    publish(client, "o1", "o2", routing_key="other")
    worker.qos(3)
    worker.consume("q")
    worker.consume("other")
    kit.turn()
    assert len(worker.deliveries()) == 3
    assert kit.queue("q").ready + kit.queue("other").ready == 1


def test_a_no_ack_consumer_is_not_held_back_by_a_full_prefetch(kit, client, worker):
    """A worker's control queue is consumed with no_ack on the connection whose tasks fill
    its prefetch: a stuck task's revoke --terminate must still reach it (AMQP's prefetch
    counts unacked messages only). It used to wait until a task ended."""
    client.ok(P.DECLARE_QUEUE, {"queue": "control"})
    publish(client, "1", "2")
    worker.qos(1)
    worker.consume("q")
    worker.consume("control", no_ack=True)
    kit.turn()
    assert ids_of(worker.deliveries()) == ["1"]             # the prefetch is full
    publish(client, "c1", "c2", routing_key="control")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["c1", "c2"]
    assert kit.queue("q").ready == 1 and kit.queue("control").ready == 0


def test_raising_the_prefetch_delivers_more_at_once(kit, client, worker):
    publish(client, "1", "2", "3")
    worker.qos(1)
    worker.consume("q")
    kit.turn()
    assert len(worker.deliveries()) == 1
    worker.qos(0)                                      # unlimited
    kit.turn()
    assert ids_of(worker.deliveries()) == ["2", "3"]


@pytest.mark.parametrize("count", [-1, "2", 1.5])
def test_a_bad_prefetch_is_a_bad_frame(worker, count):
    assert worker.error(P.QOS, {"prefetch_count": count})[0] == 400


def delivered(kit, client, worker, ids):
    publish(client, *ids)
    worker.consume("q")
    kit.turn()
    return [d.tag for d in worker.deliveries()]


def test_ack_of_one_tag(kit, client, worker):
    tags = delivered(kit, client, worker, ["a", "b"])
    worker.ack([tags[0]])
    assert list(worker.session.unacked) == [tags[1]]
    assert kit.queue("q").unacked == 1
    assert kit.queue("q").acked == 1


def test_ack_of_a_list_of_tags(kit, client, worker):
    tags = delivered(kit, client, worker, ["a", "b", "c", "d"])
    worker.ack([tags[0], tags[2]])
    assert list(worker.session.unacked) == [tags[1], tags[3]]


def test_ack_multiple_takes_every_tag_up_to_the_largest_given(kit, client, worker):
    tags = delivered(kit, client, worker, ["a", "b", "c", "d"])
    worker.ack([tags[2]], flags=P.MULTIPLE)
    assert list(worker.session.unacked) == [tags[3]]
    assert kit.queue("q").unacked == 1


def test_acks_of_unknown_or_repeated_tags_are_ignored(kit, client, worker):
    tags = delivered(kit, client, worker, ["a"])
    worker.ack([tags[0], 999])
    worker.ack([tags[0]])
    assert worker.session.unacked == {}
    assert kit.queue("q").unacked == 0
    assert worker.frames() == []


def test_an_acked_message_never_comes_back(kit, client, worker):
    tags = delivered(kit, client, worker, ["a"])
    worker.ack(tags)
    kit.close(worker)
    assert kit.queue("q").ready == 0


def test_a_delivered_task_acked_without_started_is_no_longer_in_flight(kit, client, worker):
    tags = delivered(kit, client, worker, ["t1"])
    worker.ack(tags)
    assert client.get_result("t1")[1] == "PENDING"


# -- reject and requeue --------------------------------------------------------------------------

def test_reject_with_requeue_delivers_again_flagged_redelivered(kit, client, worker):
    tags = delivered(kit, client, worker, ["a"])
    worker.reject(tags, requeue=True)
    kit.turn()
    [again] = worker.deliveries()
    assert again.message.message_id == "a"
    assert (again.redelivered, again.deliveries) == (True, 2)
    assert again.tag != tags[0]


def test_a_requeued_message_goes_ahead_of_newer_ones(kit, client, worker):
    worker.qos(1)
    tags = delivered(kit, client, worker, ["old"])
    publish(client, "new1", "new2")
    worker.reject(tags, requeue=True)
    kit.turn()
    assert ids_of(worker.deliveries()) == ["old"]


def test_reject_without_requeue_drops_the_message(kit, client, worker):
    tags = delivered(kit, client, worker, ["a"])
    worker.reject(tags)
    kit.turn()
    assert worker.deliveries() == []
    assert (kit.queue("q").ready, kit.queue("q").unacked) == (0, 0)
    assert "q.dead" not in kit.state.queues


def test_reject_without_requeue_dead_letters_when_the_queue_names_a_dead_letter_queue(
        kit, client, worker):
    client.ok(P.DECLARE_QUEUE, {"queue": "dq", "dead_letter_queue": "graveyard"})
    publish(client, "a", routing_key="dq")
    worker.consume("dq")
    kit.turn()
    [delivery] = worker.deliveries()
    worker.reject([delivery.tag])
    assert kit.queue("graveyard").ready == 1
    assert kit.queue("dq").dead_lettered == 1


# -- connections that close ----------------------------------------------------------------------

def test_unacked_messages_return_ahead_of_newer_ones_flagged_redelivered(kit, client):
    worker = kit.connect()
    worker.qos(2)
    worker.consume("q")
    publish(client, "1", "2", "3", "4")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["1", "2"]
    kit.close(worker)
    assert kit.queue("q").ready == 4
    assert kit.queue("q").unacked == 0
    fresh = kit.connect()
    fresh.consume("q")
    kit.turn()
    deliveries = fresh.deliveries()
    assert ids_of(deliveries) == ["1", "2", "3", "4"]
    assert [d.redelivered for d in deliveries] == [True, True, False, False]
    assert [d.deliveries for d in deliveries] == [2, 2, 1, 1]


def test_a_closed_sessions_in_flight_tasks_read_as_pending_again(kit, client, worker):
    delivered(kit, client, worker, ["t1"])
    kit.close(worker)
    assert client.get_result("t1")[1] == "PENDING"


def test_a_late_acked_task_whose_worker_is_lost_runs_again_not_fails(kit, client, worker):
    tags = delivered(kit, client, worker, ["t1"])
    worker.state.handle(worker.session, P.START, 0,
                        P.encode_tags(P.START, 0, tags)[P.HEADER.size:])
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace * 2)
    assert client.get_result("t1")[1] != "FAILURE"
    again = kit.connect()
    again.consume("q")
    kit.turn()
    [delivery] = again.deliveries()
    assert (delivery.message.message_id, delivery.redelivered) == ("t1", True)


def test_messages_of_a_deleted_queue_do_not_come_back_when_unacked(kit, client, worker):
    tags = delivered(kit, client, worker, ["a"])
    assert tags
    client.ok(P.DELETE_QUEUE, {"queue": "q"})
    kit.close(worker)
    assert "q" not in kit.state.queues
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    assert kit.queue("q").ready == 0


def test_purge_leaves_unacked_messages_with_their_consumer(kit, client, worker):
    worker.qos(1)
    tags = delivered(kit, client, worker, ["a", "b", "c"])
    assert client.ok(P.PURGE, {"queue": "q"}) == {"messages": 2}
    kit.close(worker)
    assert kit.queue("q").ready == 1
    assert len(tags) == 1


# -- priorities ---------------------------------------------------------------------------------

def test_priorities_end_to_end_zero_first_fifo_within_one(kit, client, worker):
    for message_id, priority in [("p9", 9), ("p4a", 4), ("none", None), ("p0", 0),
                                 ("p4b", 4), ("p1", 1), ("p9b", 9)]:
        publish(client, message_id, priority=priority)
    worker.consume("q")
    kit.turn()
    # no priority counts as 4, in its arrival place among the 4s
    assert ids_of(worker.deliveries()) == ["p0", "p1", "p4a", "none", "p4b", "p9", "p9b"]


def test_a_returned_low_priority_message_waits_for_higher_ones(kit, client):
    worker = kit.connect()
    worker.qos(1)
    worker.consume("q")
    publish(client, "low", priority=8)
    kit.turn()
    assert ids_of(worker.deliveries()) == ["low"]
    publish(client, "high", priority=0)
    kit.close(worker)
    fresh = kit.connect()
    fresh.consume("q")
    kit.turn()
    assert ids_of(fresh.deliveries()) == ["high", "low"]


# -- routing end to end -------------------------------------------------------------------------

def test_a_message_routed_through_two_bindings_is_delivered_once(kit, client, worker):
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "t", "type": "topic"})
    for key in ("a.*", "*.b", "#"):
        client.ok(P.BIND, {"queue": "q", "exchange": "t", "binding_key": key})
    publish(client, "once", exchange="t", routing_key="a.b")
    worker.consume("q")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["once"]


# -- dead-lettering -----------------------------------------------------------------------------

def lose_a_delivery(kit, queue="q"):
    """A worker takes the next message of `queue` and dies; returns what it was given."""
    worker = kit.connect()
    worker.qos(1)
    worker.consume(queue)
    kit.turn()
    deliveries = worker.deliveries()
    kit.close(worker)
    return deliveries


def test_a_message_delivered_more_than_max_redeliveries_times_goes_to_the_dead_queue(
        kit, client):
    client.ok(P.DECLARE_QUEUE, {"queue": "fragile", "max_redeliveries": 2})
    publish(client, "poison", routing_key="fragile")
    counts = []
    for _ in range(3):
        [delivery] = lose_a_delivery(kit, "fragile")
        counts.append(delivery.deliveries)
    assert counts == [1, 2, 3]
    assert kit.queue("fragile").ready == 0
    assert kit.queue("fragile.dead").ready == 1
    assert lose_a_delivery(kit, "fragile") == []
    [dead] = lose_a_delivery(kit, "fragile.dead")
    assert dead.message.message_id == "poison"


def test_the_default_limit_allows_ten_redeliveries(kit, client):
    publish(client, "m")
    for attempt in range(11):
        assert ids_of(lose_a_delivery(kit)) == ["m"], attempt
    assert lose_a_delivery(kit) == []
    assert kit.queue("q.dead").ready == 1


def test_a_named_dead_letter_queue_is_used_for_too_many_redeliveries(kit, client):
    client.ok(P.DECLARE_QUEUE, {"queue": "w", "max_redeliveries": 0,
                                "dead_letter_queue": "morgue"})
    publish(client, "m", routing_key="w")
    lose_a_delivery(kit, "w")
    assert kit.queue("morgue").ready == 1
    assert "w.dead" not in kit.state.queues


def test_dead_lettering_from_a_queue_with_a_255_byte_name_breaks_nothing():
    # "<queue>.dead" of a 255-byte name is 260 bytes: longer than any name on the wire or in
    # the journal. Refusing such a declaration is fine; failing inside close_session is not.
    kit = Broker(journal=FakeJournal())
    client = kit.connect()
    name = "q" * 255
    reply = client.send_json(P.DECLARE_QUEUE, {"queue": name, "max_redeliveries": 0})
    if reply[0][0] == P.ERROR:
        return
    client.publish(routing_key=name, message_id="m")
    worker = kit.connect()
    worker.consume(name)
    kit.turn()
    assert len(worker.deliveries()) == 1
    kit.close(worker)                                   # must not raise
    kit.state.take_records()
    assert kit.queue(name).ready == 0
    assert sum(queue.ready for queue in kit.state.queues.values()) == 1   # dead-lettered


# -- delayed messages ---------------------------------------------------------------------------

def test_a_delayed_message_is_released_release_ahead_early_and_not_before(kit, client, worker):
    now = kit.clock.now
    publish(client, "later", not_before=now + 10)
    publish(client, "now")
    worker.consume("q")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["now"]
    assert kit.queue("q").delayed == 1
    ahead = kit.state.options.release_ahead
    kit.advance(10 - ahead - 0.01)
    assert worker.deliveries() == []
    kit.advance(0.01)
    [delivery] = worker.deliveries()
    assert delivery.message.message_id == "later"
    assert delivery.message.not_before == now + 10           # the worker starts it on time
    assert kit.queue("q").delayed == 0


def test_release_ahead_is_a_broker_option():
    kit = Broker(options=BrokerOptions(release_ahead=3.0))
    client = kit.connect()
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    publish(client, "d", not_before=kit.clock.now + 10)
    worker = kit.connect()
    worker.consume("q")
    kit.advance(6.9)
    assert worker.deliveries() == []
    kit.advance(0.1)
    assert ids_of(worker.deliveries()) == ["d"]


def test_a_message_due_within_release_ahead_is_queued_at_once(kit, client, worker):
    publish(client, "soon", not_before=kit.clock.now + kit.state.options.release_ahead)
    publish(client, "past", not_before=kit.clock.now - 100)
    assert kit.queue("q").delayed == 0
    worker.consume("q")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["soon", "past"]


def test_delayed_messages_are_released_in_due_order(kit, client, worker):
    now = kit.clock.now
    for message_id, due in [("c", 30), ("a", 10), ("b", 20)]:
        publish(client, message_id, not_before=now + due)
    worker.consume("q")
    kit.advance(100)
    assert ids_of(worker.deliveries()) == ["a", "b", "c"]


def test_a_delayed_message_is_confirmed_at_once(kit, client):
    seq = client.publish(routing_key="q", not_before=kit.clock.now + 3600)
    kit.turn()
    assert [(kind, s) for kind, s, _ in client.frames()] == [(P.CONFIRM, seq)]


def test_purging_a_queue_leaves_its_delayed_messages(kit, client, worker):
    publish(client, "later", not_before=kit.clock.now + 10)
    assert client.ok(P.PURGE, {"queue": "q"}) == {"messages": 0}
    worker.consume("q")
    kit.advance(10)
    assert ids_of(worker.deliveries()) == ["later"]


def test_deleting_a_queue_drops_its_delayed_messages(kit, client, worker):
    publish(client, "later", not_before=kit.clock.now + 10)
    client.ok(P.DELETE_QUEUE, {"queue": "q"})
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    worker.consume("q")
    kit.advance(20)
    assert worker.deliveries() == []


# -- expiring messages --------------------------------------------------------------------------

def assert_revoked(client, task_id):
    _id, state, flags, _when, content_type, payload = client.get_result(task_id)
    assert (state, flags) == ("REVOKED", P.READY)
    assert isinstance(decode_result_meta(task_id, state, content_type, payload).result,
                      TaskRevokedError)


def test_a_message_that_expires_in_its_queue_is_dropped_and_its_task_revoked(kit, client):
    publish(client, "t1", expires_at=kit.clock.now + 5)
    kit.advance(4.99)
    assert kit.queue("q").ready == 1
    kit.advance(0.01)
    assert kit.queue("q").ready == 0
    assert_revoked(client, "t1")
    worker = kit.connect()
    worker.consume("q")
    kit.turn()
    assert worker.deliveries() == []


def test_an_expired_message_is_not_delivered_even_before_tick_notices(kit, client):
    publish(client, "t1", expires_at=kit.clock.now + 5)
    publish(client, "t2")
    kit.clock.advance(6)                                   # no tick()
    worker = kit.connect()
    worker.consume("q")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["t2"]
    assert_revoked(client, "t1")


def test_a_message_expired_before_it_is_queued_is_confirmed_and_revoked(kit, client):
    seq = client.publish(routing_key="q", message_id="t1", expires_at=kit.clock.now - 1)
    kit.turn()
    assert [(kind, s) for kind, s, _ in client.frames()] == [(P.CONFIRM, seq)]
    assert kit.queue("q").ready == 0
    assert_revoked(client, "t1")


def test_a_delayed_message_that_expires_before_release_is_revoked(kit, client, worker):
    now = kit.clock.now
    publish(client, "t1", not_before=now + 60, expires_at=now + 30)
    worker.consume("q")
    kit.advance(30)
    assert kit.queue("q").delayed == 0
    assert_revoked(client, "t1")
    kit.advance(60)
    assert worker.deliveries() == []


def test_a_delivered_message_is_not_revoked_when_its_expiry_passes(kit, client, worker):
    worker.consume("q")
    expires_at = kit.clock.now + 5
    publish(client, "t1", expires_at=expires_at)
    kit.turn()
    [delivery] = worker.deliveries()
    assert delivery.message.expires_at == expires_at
    kit.advance(10)
    assert client.get_result("t1")[1] == "RECEIVED"      # the worker decides now
    assert kit.queue("q").unacked == 1


def test_a_revoked_message_is_dropped_at_dispatch(kit, client, worker):
    publish(client, "doomed", "fine")
    client.ok(P.REVOKE, {"task_ids": ["doomed"]})
    worker.consume("q")
    kit.turn()
    assert ids_of(worker.deliveries()) == ["fine"]
    assert_revoked(client, "doomed")
    assert kit.queue("q").ready == 0


def test_a_message_revoked_while_unacked_is_dropped_when_it_returns(kit, client):
    worker = kit.connect()
    worker.consume("q")
    publish(client, "t1")
    kit.turn()
    assert len(worker.deliveries()) == 1
    client.ok(P.REVOKE, {"task_ids": ["t1"]})
    kit.close(worker)
    fresh = kit.connect()
    fresh.consume("q")
    kit.turn()
    assert fresh.deliveries() == []
    assert_revoked(client, "t1")


def test_messages_that_expire_in_their_queue_are_freed_not_left_for_pop(kit, client):
    now = kit.clock.now
    publish(client, *["short-%d" % i for i in range(100)], expires_at=now + 5)
    publish(client, *["long-%d" % i for i in range(100)])
    kit.advance(5)
    queue = kit.queue("q")
    assert queue.ready == 100
    held = [m for level in queue.levels.values() for m in level] + queue.returned
    assert len(held) < 120                             # not 200: the expired are gone
    assert_revoked(client, "short-99")


def test_a_message_published_after_its_task_was_revoked_is_not_queued(kit, client):
    client.ok(P.REVOKE, {"task_ids": ["late"]})
    seq = client.publish(routing_key="q", message_id="late", type="tasks.t")
    kit.turn()
    assert confirms(client.frames()) == [seq]
    assert kit.queue("q").ready == 0 and kit.queue("q").published == 0
    assert_revoked(client, "late")


def test_a_queue_name_starting_with_nul_is_refused_the_journal_names_parked_chords_so(kit):
    client = kit.connect()
    code, text = client.error(P.DECLARE_QUEUE, {"queue": "\x00chord-bodies"})
    assert code == P.code_for(ProtocolError("")) and "NUL" in text
