"""Chords on Redis, attacked: nested chords, a body sent twice, header results counted once,
results in before the body is parked, a body's countdown and expiry, revocations, routing
(decided when the chord is sent on Redis, when the body is released on the built-in broker:
README, "What differs"), header results expiring under a waiting body, a chord of
thousands, and what status shows of parked bodies.

Where Redis may differ from the built-in broker (the reference: README, "What differs"), the
same scenario runs on both, at the transport level (`contractkit.Harness`). Skips, saying
why, where redis-server is not installed.
"""
import base64
import json
import os
import pathlib
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "contract"))

import itflow  # noqa: E402
from cluster import Broker  # noqa: E402
from contractkit import (  # noqa: E402
    Harness, message, result_payload, result_value, task_id,
)
from rediskit import REDIS_SERVER, SKIP_REASON, wait_for  # noqa: E402
from test_redis_worker import broker, cli, server, start_worker  # noqa: E402,F401

from minitask import chord, config, group  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    BrokerError, ChordError, PublishRefusedError, TaskRevokedError, UnroutableError,
)
from minitask.result import AsyncResult  # noqa: E402
from minitask.sending import publish_chords  # noqa: E402
from minitask.transport import redis_producer  # noqa: E402
from minitask.transport.redis_keys import Keys  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

PATIENCE = 15.0


# -- helpers -----------------------------------------------------------------------------------

def b64(data):
    return base64.b64encode(data).decode("ascii")


def waiting(conn, queue):
    """Messages ready in `queue` (a parked or delayed one is not)."""
    return conn.declare_queue(queue, passive=True)["messages"]


def store(stream, conn, task, state="SUCCESS", value=42):
    """Store a header result as a worker does, and wait until it is readable."""
    exc = ValueError("header failed") if state == "FAILURE" else value
    stream.consumer.store_result(task, state, *result_payload(task, state, exc))
    stream.say()
    wait_for(lambda: conn.get_result(task).state == state, timeout=PATIENCE,
             what="result %s of %s" % (state, task))


def hid(name):
    return "%s-%s" % (name, uuid.uuid4().hex[:8])


def let_time_pass(seconds):
    """Result expiry is what is tested: time itself must pass (nothing to poll for)."""
    time.sleep(seconds)


@pytest.fixture
def harnesses(server, tmp_path):
    """open(kind, result_expires=None): a Harness on the built-in broker ("minitask", a real
    broker process) or on a fresh Redis vhost ("redis"); all closed after the test."""
    opened, brokers = [], []

    def open_(kind, result_expires=None):
        if kind == "minitask":
            env = {"MINITASK_RESULT_EXPIRES": str(result_expires)} if result_expires else {}
            folder = tmp_path / ("broker-%d" % len(brokers))
            folder.mkdir()
            instance = Broker(folder, env=env).start()
            brokers.append(instance)
            harness = Harness("minitask", instance.url, instance.kill)
        else:
            vhost = "hc-%s" % uuid.uuid4().hex[:10]
            url = server.url("/0", vhost=vhost, heartbeat=1, handover_grace=1, retry_seconds=2)
            harness = Harness("redis", url, None)
            harness.keys = Keys(vhost)
            if result_expires:
                harness.settings = config.Settings({"BROKER_URL": url,
                                                    "RESULT_EXPIRES": result_expires})
        opened.append(harness)
        return harness
    try:
        yield open_
    finally:
        for harness in opened:
            harness.close()
        for instance in brokers:
            instance.proc.close()


def opened(harness, *queues):
    """A client of `harness` with `queues` declared, and a consumer of "jobs" (whose
    consumer stores the header results)."""
    conn = harness.client()
    for queue in queues:
        conn.declare_queue(queue)
    return harness, conn, harness.consumer(["jobs"])


def leftovers(harness, conn):
    """What a decided chord must not leave behind on Redis: chord records, parked members,
    their messages, and `delayed` counts."""
    keys = harness.keys
    return {"chords": conn.execute("HGETALL", keys.chords),
            "delayed": conn.execute("ZCARD", keys.delayed),
            "delayed messages": conn.execute("HLEN", keys.delayed_messages),
            "delayed counts": sum(row["delayed"] for row in conn.status()["queues"])}


NOTHING_LEFT = {"chords": [], "delayed": 0, "delayed messages": 0, "delayed counts": 0}


# -- counting header results (transport level, Redis) ----------------------------------------

def test_a_header_id_listed_twice_and_a_result_stored_twice_count_once(harnesses):
    h, conn, stream = opened(harnesses("redis"), "bodies")
    first, second = hid("a"), hid("b")
    body = message("bodies", headers={"x-chord-wait": [first, first, second]})
    conn.publish_atomic([body])
    store(stream, conn, first)
    # A redelivered copy of the same task ends differently: the first final result counted
    # (and, a SUCCESS, it stays: test_transport_contract.py's
    # test_a_task_that_succeeded_keeps_its_result_when_a_copy_of_it_ends_otherwise).
    stream.consumer.store_result(first, "FAILURE",
                                 *result_payload(first, "FAILURE", ValueError("again")))
    store(stream, conn, hid("later"))           # said after it: it was handled before
    assert conn.get_result(first).state == "SUCCESS"
    assert conn.get_result(task_id(body)).state == "PENDING"   # no ChordError from it
    assert waiting(conn, "bodies") == 0                         # the id listed twice waits
    store(stream, conn, second)
    assert waiting(conn, "bodies") == 1
    store(stream, conn, second)                                 # after the release: nothing
    assert waiting(conn, "bodies") == 1
    assert leftovers(h, conn) == NOTHING_LEFT
    # Released: the header results expire again (result_expires from now).
    keys = h.keys
    assert 0 < conn.execute("PTTL", keys.result(second)) <= 86400 * 1000


def test_header_results_in_before_the_body_is_parked_decide_it_as_it_is_published(harnesses):
    h, conn, stream = opened(harnesses("redis"), "bodies", "errbacks")
    done, failed, late = hid("done"), hid("failed"), hid("late")
    store(stream, conn, done)
    store(stream, conn, failed, "FAILURE")
    released = message("bodies", headers={"x-chord-wait": [done]})
    conn.publish_atomic([released])
    assert waiting(conn, "bodies") == 1
    errback = message("errbacks")
    doomed = message("bodies", headers={"x-chord-wait": [late, done, failed],
                                        "x-errbacks": [b64(errback)],
                                        "x-chain": ["next-" + late]})
    conn.publish_atomic([doomed])
    result = conn.get_result(task_id(doomed))
    assert result.state == "FAILURE"
    error = result_value(task_id(doomed), result)
    assert isinstance(error, ChordError) and failed in str(error)
    assert isinstance(result_value("next-" + late, conn.get_result("next-" + late)),
                      ChordError)                       # the rest of its chain fails with it
    assert waiting(conn, "errbacks") == 1 and waiting(conn, "bodies") == 1
    store(stream, conn, late)                           # the header task left: nothing more
    assert waiting(conn, "bodies") == 1 and waiting(conn, "errbacks") == 1
    assert leftovers(h, conn) == NOTHING_LEFT


def test_a_body_sent_twice_is_parked_once_with_its_errbacks_once(harnesses):
    h, conn, stream = opened(harnesses("redis"), "bodies", "errbacks")
    header = hid("h")
    errback = message("errbacks")
    body = message("bodies", headers={"x-chord-wait": [header],
                                      "x-errbacks": [b64(errback)]})
    conn.publish_atomic([body])
    conn.publish_atomic([body])                 # a client's retry
    conn.publish_many([body, body])             # and a batch that holds it twice
    row = h.queue_row(conn, "bodies")
    assert row["delayed"] == 1 and h.queue_row(conn, "errbacks")["delayed"] == 1
    store(stream, conn, header, "FAILURE")
    assert conn.get_result(task_id(body)).state == "FAILURE"
    assert waiting(conn, "errbacks") == 1 and waiting(conn, "bodies") == 0
    conn.publish_atomic([body])                 # sent again after its chord failed
    assert leftovers(h, conn) == NOTHING_LEFT
    assert waiting(conn, "errbacks") == 1 and waiting(conn, "bodies") == 0


def test_revoking_a_queued_header_task_fails_the_chord_at_once(harnesses):
    h = harnesses("redis")
    conn = h.client()
    conn.declare_queue("jobs")
    conn.declare_queue("bodies")
    conn.declare_queue("errbacks")
    headers = [message("jobs") for _ in range(3)]
    errback = message("errbacks")
    body = message("bodies", headers={"x-chord-wait": [task_id(m) for m in headers],
                                      "x-errbacks": [b64(errback)]})
    conn.publish_atomic([body] + headers)
    conn.revoke([task_id(headers[1])])
    result = conn.get_result(task_id(body))
    assert result.state == "FAILURE"
    error = result_value(task_id(body), result)
    assert isinstance(error, ChordError)
    assert task_id(headers[1]) in str(error) and "REVOKED" in str(error)
    assert waiting(conn, "errbacks") == 1
    # The other header tasks still run; their results change nothing.
    stream = h.consumer(["jobs"])
    for delivery in stream.receive(2):
        stream.consumer.ack(delivery.delivery_tag)
        store(stream, conn, delivery.message.message_id)
    assert waiting(conn, "bodies") == 0
    assert leftovers(h, conn) == NOTHING_LEFT




@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_the_same_body_twice_in_one_publish_waits_for_its_whole_header(harnesses, kind):
    h, conn, stream = opened(harnesses(kind), "bodies")
    first, second = hid("a"), hid("b")
    body = message("bodies", headers={"x-chord-wait": [first, second]})
    conn.publish_atomic([body, body])
    store(stream, conn, first)
    early = waiting(conn, "bodies")
    store(stream, conn, second)
    row = h.queue_row(conn, "bodies")
    assert (early, row["ready"], row["delayed"]) == (0, 1, 0)


def test_a_refused_chord_parks_nothing(harnesses):
    h = harnesses("redis")
    conn = h.client()
    conn.declare_queue("bodies")
    conn.declare_queue("small", max_length=1)
    headers = [message("small") for _ in range(2)]
    body = message("bodies", headers={"x-chord-wait": [task_id(m) for m in headers]})
    with pytest.raises(PublishRefusedError):
        conn.publish_atomic([body] + headers)
    assert leftovers(h, conn) == NOTHING_LEFT
    assert waiting(conn, "small") == 0


# -- time: countdowns, expiry ----------------------------------------------------------------

def test_a_body_with_a_countdown_is_released_when_due_not_at_its_last_result(harnesses):
    h = harnesses("redis")
    conn = h.client()
    conn.declare_queue("bodies")
    header = hid("h")
    due = time.time() + 2.0
    body = message("bodies", not_before=due, headers={"x-chord-wait": [header]})
    conn.publish_atomic([body])
    assert conn.status(scheduled=10)["scheduled"] == []         # parked: not scheduled
    stream = h.consumer(["bodies"])
    store(stream, conn, header)
    # Released to its countdown: listed as scheduled now, at its own time.
    [row] = conn.status(scheduled=10)["scheduled"]
    assert row["id"] == task_id(body) and abs(row["eta"] - due) < 0.01
    [delivery] = stream.receive(1, timeout=PATIENCE)
    arrived = time.time()
    # Never early (not at its last result, 2 s before); late only by what a loaded machine
    # adds (CI: two pytest processes on two cores), so the upper bound is generous.
    assert due - redis_producer.RELEASE_AHEAD - 0.05 <= arrived <= due + 3.0
    assert delivery.message.not_before == due
    stream.consumer.ack(delivery.delivery_tag)
    stream.say()
    assert leftovers(h, conn) == NOTHING_LEFT


def turn(stream):
    """One turn of a worker's loop with nothing to run: say what is due (a Redis consumer's
    housekeeping, which expires messages, runs there) and read what came."""
    stream.say()
    stream.pump(0.05)


@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_a_parked_body_whose_expiry_passes_is_revoked_and_never_queued(harnesses, kind):
    h, conn, stream = opened(harnesses(kind), "bodies")
    header = hid("h")
    expires_at = time.time() + 0.5
    body = message("bodies", expires_at=expires_at, headers={"x-chord-wait": [header]})
    conn.publish_atomic([body])
    wait_for(lambda: turn(stream) or time.time() > expires_at + 0.3, what="the expiry")
    store(stream, conn, header)
    wait_for(lambda: turn(stream) or conn.get_result(task_id(body)).state == "REVOKED",
             timeout=PATIENCE, what="the expired body's REVOKED")
    assert waiting(conn, "bodies") == 0
    if kind == "redis":
        assert leftovers(h, conn) == NOTHING_LEFT




@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_a_released_body_that_expires_in_its_queue_is_revoked_like_any_message(
        harnesses, kind):
    h = harnesses(kind)
    conn = h.client()
    conn.declare_queue("bodies")
    stream = h.consumer(["jobs"])           # no worker of "bodies" yet
    header = hid("h")
    expires_at = time.time() + 1.0
    plain = message("bodies", expires_at=expires_at)
    body = message("bodies", expires_at=expires_at, headers={"x-chord-wait": [header]})
    conn.publish_atomic([plain, body])
    store(stream, conn, header)             # released at once: both wait in "bodies"
    assert waiting(conn, "bodies") == 2
    wait_for(lambda: turn(stream) or conn.get_result(task_id(plain)).state == "REVOKED",
             timeout=PATIENCE, what="the plain message's expiry")
    wait_for(lambda: turn(stream) or conn.get_result(task_id(body)).state == "REVOKED",
             timeout=3.0, what="the released body's expiry")
    assert waiting(conn, "bodies") == 0


# -- results a waiting body needs, compared with the built-in broker --------------------------



@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_a_header_result_stored_again_does_not_expire_while_its_body_waits(harnesses, kind):
    h, conn, stream = opened(harnesses(kind, result_expires=1), "bodies")
    first, second = hid("a"), hid("b")
    body = message("bodies", headers={"x-chord-wait": [first, second]})
    conn.publish_atomic([body])
    store(stream, conn, first)
    store(stream, conn, first)              # the same task, redelivered, ran again
    let_time_pass(1.6)                      # past result_expires: the body still waits
    assert conn.get_result(first).state == "SUCCESS"




@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_header_results_outlive_their_bodys_countdown(harnesses, kind):
    h = harnesses(kind, result_expires=1)
    conn = h.client()
    conn.declare_queue("bodies")
    stream = h.consumer(["bodies"])
    header = hid("h")
    body = message("bodies", not_before=time.time() + 2.5, headers={"x-chord-wait": [header]})
    conn.publish_atomic([body])
    store(stream, conn, header)
    [delivery] = stream.receive(1, timeout=PATIENCE)    # ~2 s later, past result_expires
    assert delivery.message.message_id == task_id(body)
    assert conn.get_result(header).state == "SUCCESS"   # what the body's worker reads now


# -- routing: when the body's destination is decided ------------------------------------------



def test_a_released_body_goes_to_the_queues_bound_when_it_is_released(harnesses):
    """The built-in broker routes a body when it releases it. Redis routes it when it is
    sent, and refuses one that matches no queue then (the next test)."""
    h = harnesses("minitask")
    conn = h.client()
    conn.declare_exchange("late", "direct")
    stream = h.consumer(["jobs"])
    header = hid("h")
    body = message("k", exchange="late", headers={"x-chord-wait": [header]})
    conn.publish_atomic([body])
    conn.declare_queue("bodies")
    conn.bind("bodies", "late", "k")
    store(stream, conn, header)
    wait_for(lambda: waiting(conn, "bodies") == 1, timeout=3.0, what="the released body")




def test_a_chord_whose_errback_exchange_comes_later_is_accepted_and_its_errback_runs(
        harnesses):
    """The built-in broker routes errbacks when the chord fails; Redis when it is sent, and
    refuses a chord whose errback names an exchange that does not exist (the next test)."""
    h, conn, stream = opened(harnesses("minitask"), "bodies")
    header = hid("h")
    errback = message("ek", exchange="errors")
    body = message("bodies", headers={"x-chord-wait": [header],
                                      "x-errbacks": [b64(errback)]})
    conn.publish_atomic([body])
    conn.declare_exchange("errors", "direct")
    conn.declare_queue("errbacks")
    conn.bind("errbacks", "errors", "ek")
    store(stream, conn, header, "FAILURE")
    wait_for(lambda: waiting(conn, "errbacks") == 1, timeout=3.0, what="the errback")



def test_on_redis_a_chord_is_routed_when_sent_and_refused_in_one_line_if_it_cannot_be(
        harnesses):
    h = harnesses("redis")
    conn = h.client()
    conn.declare_exchange("late", "direct")
    conn.declare_queue("bodies")
    header = hid("h")
    nowhere = message("k", exchange="late", headers={"x-chord-wait": [header]})
    with pytest.raises(UnroutableError, match="matched no queue .*routed when it is sent"):
        conn.publish_atomic([nowhere])
    errback = message("ek", exchange="errors")
    lost_errback = message("bodies", headers={"x-chord-wait": [header],
                                              "x-errbacks": [b64(errback)]})
    with pytest.raises(BrokerError, match="no exchange 'errors'"):
        conn.publish_atomic([lost_errback])
    assert leftovers(h, conn) == NOTHING_LEFT


@pytest.mark.parametrize("kind", ["minitask", "redis"])
def test_a_body_whose_queue_is_deleted_and_declared_again_while_parked(harnesses, kind):
    h, conn, stream = opened(harnesses(kind), "bodies")
    header = hid("h")
    body = message("bodies", headers={"x-chord-wait": [header]})
    conn.publish_atomic([body])
    conn.delete_queue("bodies")
    conn.declare_queue("bodies")
    store(stream, conn, header)
    wait_for(lambda: waiting(conn, "bodies") == 1, timeout=3.0, what="the released body")
    row = h.queue_row(conn, "bodies")
    assert (row["ready"], row["delayed"]) == (1, 0)


def test_a_delayed_message_whose_queue_is_deleted_and_declared_again_is_not_counted_twice(
        harnesses):
    h, conn, _stream = opened(harnesses("redis"), "later")
    conn.publish(message("later", not_before=time.time() + 1.0))   # held: due after 0.5 s
    assert conn.execute("ZCARD", h.keys.delayed) == 1
    conn.delete_queue("later")
    conn.declare_queue("later")
    stream = h.consumer(["later"])          # its housekeeping promotes what is due
    deadline = time.monotonic() + 15.0
    while conn.execute("ZCARD", h.keys.delayed):
        assert time.monotonic() < deadline, "the delayed message was never promoted"
        stream.pump(0.05)
    assert h.queue_row(conn, "later")["delayed"] == 0      # was -1: the old queue's count


# -- real workers -----------------------------------------------------------------------------

def test_nested_chords_chains_and_group_bodies_on_one_worker(broker, start_worker):
    start_worker(modules="itflow", args=("-c", "4"))
    add, tsum, mul = itflow.add, itflow.tsum, itflow.mul
    # A chord in a chord's header.
    inner = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    nested = chord([inner, add.s(3, 3)], tsum.s()).apply_async()
    # A chord inside a chain inside a chord's header (sent by the worker that runs add(1, 1)).
    chained = chord([add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s()), add.s(5, 5)],
                    tsum.s()).apply_async()
    # A body that is a chain, one that is a group, and a chord piped into a chord.
    chain_body = chord([add.s(1, 1), add.s(2, 2)], tsum.s() | mul.s(10)).apply_async()
    group_body = chord([add.s(1, 1), add.s(2, 2)],
                       group(tsum.s(), tsum.s("g"))).apply_async()
    two = (chord([add.s(1, 1), add.s(2, 2)], tsum.s()) | group(add.s(10), add.s(20))
           | tsum.s()).apply_async()
    # A body that is a chord: its header tasks wait (parked) for the outer header.
    chord_body = chord([add.s(1, 1), add.s(2, 2)],
                       chord([tsum.s(), tsum.s()], tsum.s())).apply_async()
    assert nested.get(timeout=30) == 12
    assert chained.get(timeout=30) == 17
    assert chain_body.get(timeout=30) == 60
    assert group_body.get(timeout=30) == [6, 6]
    assert two.get(timeout=30) == 42
    assert chord_body.get(timeout=30) == 12
    status = broker.status()
    assert sum(row["delayed"] for row in status["queues"]) == 0


def test_a_failure_deep_in_nested_chords_fails_every_enclosing_body_and_chain(
        broker, start_worker, tmp_path):
    start_worker(modules="itflow")
    add, tsum = itflow.add, itflow.tsum
    inner = chord([add.s(1, 1), itflow.divide.s(1, 0)], tsum.s("inner"))
    outer = chord([inner, add.s(3, 3)],
                  (tsum.s("outer") | itflow.mul.s(10)).on_error(itflow.errback.s("errors")))
    result = outer.apply_async()
    with pytest.raises(ChordError):
        result.get(timeout=30)
    outer_body = result.parent                   # tsum("outer"), the chain's first link
    inner_body = outer_body.parent.results[0]    # tsum("inner")
    divided = inner_body.parent.results[1]
    assert isinstance(inner_body.result, ChordError) and divided.id in str(inner_body.result)
    assert isinstance(outer_body.result, ChordError) and inner_body.id in str(outer_body.result)
    errbacks = wait_for(lambda: itflow_trace(tmp_path, "errors"), what="the errback")
    assert outer_body.id in errbacks
    assert itflow_trace(tmp_path, "inner") == [] and itflow_trace(tmp_path, "outer") == []


def test_a_chord_sent_twice_runs_its_body_once(broker, start_worker, tmp_path):
    sig = chord([itflow.add.s(i, i) for i in range(4)], itflow.tsum.s("twice"))
    result = sig.freeze()
    publish_chords(sig)
    publish_chords(sig)                         # the same ids again: a retried send
    start_worker(modules="itflow")
    assert AsyncResult(result.id).get(timeout=30) == 12
    # Every header task ran twice; the body must not: wait until nothing is left to run.
    wait_for(lambda: broker.queue()["ready"] == 0 and broker.queue()["unacked"] == 0,
             what="the queue to drain")
    assert itflow_trace(tmp_path, "twice") == ["12"]


def test_a_group_of_the_same_frozen_chord_twice_runs_its_body_after_its_whole_header(
        broker, start_worker, tmp_path):
    # Its second header task waits in a queue no worker takes yet.
    sig = chord([itflow.add.s(1, 1), itflow.add.s(2, 2).set(queue="later")],
                itflow.tsum.s("dup"))
    result = sig.freeze()
    group([sig, sig]).apply_async()
    start_worker(modules="itflow")
    assert result.parent.results[0].get(timeout=20) == 2
    wait_for(lambda: (lambda row: (row["ready"], row["unacked"]) == (0, 0))(broker.queue()),
             what="the default queue to drain")
    assert AsyncResult(result.id).state == "PENDING"     # half of its header is in
    start_worker(name="w2", modules="itflow", args=("-Q", "later"))
    assert AsyncResult(result.id).get(timeout=30) == 6


def test_a_body_revoked_while_parked_never_runs(broker, start_worker, tmp_path):
    result = chord([itflow.add.s(1, 1), itflow.add.s(2, 2)], itflow.tsum.s("revoked"))()
    AsyncResult(result.id).revoke()             # the body alone, parked: no worker saw it
    assert result.state == "REVOKED"
    start_worker(modules="itflow")
    assert result.parent.get(timeout=30) == [2, 4]
    wait_for(lambda: (lambda row: (row["ready"], row["unacked"], row["delayed"]) == (0, 0, 0))(
        broker.queue()), what="the body released and dropped")
    assert result.state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert itflow_trace(tmp_path, "revoked") == []


def test_status_counts_a_parked_body_as_delayed_and_inspect_scheduled_leaves_it_out(
        broker):
    later = itflow.add.apply_async((1, 1), countdown=600)
    parked = chord([itflow.add.s(1, 1)], itflow.tsum.s().on_error(itflow.errback.s("x")))()
    status = json.loads(cli(broker, "status", "--json"))
    row = next(q for q in status["queues"] if q["name"] == "minitask")
    assert row["delayed"] == 3 and row["ready"] == 1    # later, the body, its errback
    scheduled = json.loads(cli(broker, "inspect", "scheduled", "--json", "-t", "0.2"))
    listed = [item["id"] for reply in scheduled.values() for item in reply]
    assert listed == [later.id] and parked.id not in listed


BIG = 5000


def test_a_chord_of_thousands_of_header_tasks(broker, start_worker, capsys):
    # Short ids: a body's "x-chord-wait" lists every header id, in at most 64 KiB.
    prefix = uuid.uuid4().hex[:4]
    sig = chord([itflow.add.s(i, 1).set(task_id="%s%x" % (prefix, i)) for i in range(BIG)],
                itflow.tsum.s())
    start_worker(modules="itflow", args=("-c", "4"))
    started = time.monotonic()
    result = sig.apply_async()
    sent = time.monotonic()
    assert result.get(timeout=60) == sum(i + 1 for i in range(BIG))
    done = time.monotonic()
    with capsys.disabled():
        print("\nchord of %d on Redis: sent in %.2fs, body's result %.2fs after (%.2fs in all)"
              % (BIG, sent - started, done - sent, done - started))
    assert result.parent.get(timeout=30)[:3] == [1, 2, 3]


def itflow_trace(directory, name):
    path = pathlib.Path(str(directory)) / ("trace-%s.log" % name)
    if not path.exists():
        return []
    return path.read_text().splitlines()

