"""ATOMIC and the COMPOUND record: several commands, one journal record.

A periodic task's send and the record of when it was sent travel as one ATOMIC unit, and so
do a task's result and the messages it unlocks (a chain's next link, a chord's body); the
broker journals all a unit writes as one COMPOUND record, so a crash at any byte keeps all
of it or none of it, and a unit it refuses leaves nothing behind. Driven like the server
drives the state (journalkit), no sockets.
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from brokerkit import Broker as StateKit  # noqa: E402
from journalkit import (  # noqa: E402
    Broker, disk_faults, live_ids, read_records, segment_files,
)
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402


def kv_frame(key, value):
    return P.encode_json(P.KV_SET, 0, {"key": key, "value": value})


def publish_frame(queue, task_id, flags=P.PERSISTENT, exchange="", **fields):
    message = P.Message(b"{}", exchange=exchange, routing_key=queue, message_id=task_id,
                        type="tasks.beat", flags=flags, **fields)
    return P.encode_frame(P.PUBLISH, 0, P.encode_message(message))


def result_frame(task_id, state="SUCCESS", payload=b'{"result": 42}', store=True):
    return P.encode_result(P.RESULT_SET, 0, task_id, state, P.STORE if store else 0, 0.0,
                           "application/json", payload)


def atomic(client, *frames):
    return client.send(P.ATOMIC, b"".join(frames))


def started_task(broker, task_id):
    """A worker that received `task_id` from queue "jobs" and acked it as started."""
    broker.connect().publish("jobs", task_id)
    worker = broker.connect(worker="w1")
    worker.consume("jobs")
    broker.turn()
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    broker.turn()
    return worker


@pytest.fixture
def broker(tmp_path):
    instance = Broker(tmp_path / "data")
    client = instance.connect()
    client.declare_queue("q")
    client.declare_queue("jobs")
    instance.turn()
    return instance


def test_a_unit_is_confirmed_and_journalled_as_one_compound_record(broker):
    client = broker.connect()
    seq = atomic(client, kv_frame("beat.last_run.t", 1234.5), publish_frame("q", "beat-1"))
    broker.turn()
    assert client.is_confirmed(seq)
    assert broker.state.kv == {"beat.last_run.t": 1234.5}
    assert live_ids(broker.state) == ["beat-1"]
    *_rest, (_start, _end, kind, payload) = read_records(segment_files(broker.data_dir)[-1])
    assert kind == rc.COMPOUND
    assert [sub for sub, _payload in rc.decode_compound(payload)] == [rc.KV, rc.PUBLISH]
    after = broker.reopen()
    assert after.state.kv == {"beat.last_run.t": 1234.5}
    assert live_ids(after.state) == ["beat-1"]


def test_a_crash_at_any_byte_of_the_unit_keeps_both_or_neither(broker, tmp_path):
    client = broker.connect()
    atomic(client, kv_frame("beat.last_run.t", 99.0), publish_frame("q", "beat-1"))
    broker.turn()
    broker.crash()
    path = segment_files(broker.data_dir)[-1]
    start, end, _kind, _payload = read_records(path)[-1]
    for cut in range(start, end + 1):
        work = tmp_path / "cut"
        shutil.rmtree(str(work), ignore_errors=True)
        shutil.copytree(broker.data_dir, str(work))
        with open(os.path.join(str(work), "journal", os.path.basename(path)), "r+b") as handle:
            handle.truncate(cut)
        recovered = Broker(work)
        recovered.crash()
        state = recovered.state
        both = (state.kv.get("beat.last_run.t"), live_ids(state))
        assert both == ((99.0, ["beat-1"]) if cut == end else (None, [])), cut


def test_a_failing_command_undoes_the_unit_and_gets_its_error(broker):
    client = broker.connect()
    client.kv_set("k", "old")
    broker.turn()
    queue = broker.state.queues["q"]
    published = queue.published
    seq = atomic(client, kv_frame("k", "new"), publish_frame("q", "a"),
                 publish_frame("nowhere", "b", flags=P.PERSISTENT | P.MANDATORY))
    broker.turn()
    client.pump()
    assert client.errors[seq][0] == P.UNROUTABLE
    assert broker.state.kv == {"k": "old"}
    assert live_ids(broker.state) == [] and queue.ready == 0
    assert queue.published == published
    assert live_ids(broker.reopen().state) == []


def test_a_bug_met_inside_a_unit_undoes_it_and_leaves_no_unit_open(broker, monkeypatch):
    """A command of the unit raises what no client mistake raises (a bug): the server
    closes that connection; the unit is undone, and the next commands are not taken for
    parts of it (their results are answered, their publishes confirmed)."""
    client = broker.connect()

    def broken(session, seq, body):
        raise RuntimeError("a bug")
    monkeypatch.setitem(broker.state._handlers, P.KV_SET, broken)
    with pytest.raises(RuntimeError):
        atomic(client, publish_frame("q", "a"), kv_frame("k", "v"))
    assert broker.state.sink.open is None
    assert live_ids(broker.state) == []
    monkeypatch.undo()
    other = broker.connect()
    seq = other.publish("q", "b")
    broker.turn()
    assert other.is_confirmed(seq) and live_ids(broker.state) == ["b"]


def test_a_refused_unit_puts_its_settings_back(broker):
    client = broker.connect()
    client.kv_set("k", "old")
    broker.turn()
    with disk_faults() as faults:
        faults.full = True
        seq = atomic(client, kv_frame("k", "new"), publish_frame("q", "a"))
        broker.turn()
    client.pump()
    assert client.errors[seq][0] == P.REFUSED
    assert broker.state.kv == {"k": "old"}
    assert live_ids(broker.state) == []
    broker.turn()
    after = broker.reopen()
    assert after.state.kv == {"k": "old"} and live_ids(after.state) == []


def test_a_unit_of_settings_alone_is_one_record_too(broker):
    client = broker.connect()
    seq = atomic(client, kv_frame("a", 1), kv_frame("b", 2))
    broker.turn()
    assert client.is_confirmed(seq)
    *_rest, (_s, _e, kind, _payload) = read_records(segment_files(broker.data_dir)[-1])
    assert kind == rc.COMPOUND
    assert broker.reopen().state.kv == {"a": 1, "b": 2}


def test_a_unit_of_settings_alone_is_refused_whole_when_its_write_fails(broker):
    client = broker.connect()
    with disk_faults() as faults:
        faults.full = True
        seq = atomic(client, kv_frame("a", 1), kv_frame("b", 2))
        broker.turn()
    client.pump()
    assert client.errors[seq][0] == P.REFUSED and not client.is_confirmed(seq)
    assert broker.state.kv == {}
    broker.turn()
    assert broker.reopen().state.kv == {}


@pytest.mark.parametrize("body, message", [
    (b"", "no frame"),
    (P.encode_tags(P.ACK, 0, [1]), "not ACK"),
    (P.encode_json(P.KV_SET, 7, {"key": "k", "value": 1}), "seq 0"),
    (kv_frame("k", 1)[:-2], "ends inside"),
    (kv_frame("k", 1)[:5], "inside a frame header"),
    (kv_frame("k", 1) * (P.MAX_ATOMIC_FRAMES + 1), "more than %d" % P.MAX_ATOMIC_FRAMES),
    (P.encode_json(P.KV_SET, 0, {"key": 5}), "'key' must be a string"),
], ids=["empty", "ack", "seq", "cut body", "cut header", "too many", "bad key"])
def test_a_malformed_unit_is_error_400_and_nothing_of_it_happens(body, message):
    kit = StateKit()
    client = kit.connect()
    code, text = client.error(P.ATOMIC, body)
    assert code == P.BAD_FRAME and message in text
    assert kit.state.kv == {}
    assert client.ok(P.STATUS)["broker"]                     # the connection carries on


def test_welcome_names_the_atomic_command():
    kit = StateKit()
    client = kit.open()
    [(kind, _seq, body)] = client.send_json(P.HELLO, {"protocol": 1})
    assert kind == P.WELCOME and "atomic" in P.decode_json(body)["features"]


def test_welcome_names_results_inside_atomic():
    kit = StateKit()
    [(_kind, _seq, body)] = kit.open().send_json(P.HELLO, {"protocol": 1})
    assert "atomic_results" in P.decode_json(body)["features"]


# -- a result and what it unlocks --------------------------------------------------------------

def test_a_result_and_the_messages_it_unlocks_are_one_compound_record(broker):
    worker = started_task(broker, "t1")
    seq = atomic(worker, result_frame("t1"), publish_frame("q", "next-1"),
                 publish_frame("q", "next-2"))
    broker.turn()
    assert worker.is_confirmed(seq)
    assert broker.state.results.get("t1").state == "SUCCESS"
    assert live_ids(broker.state) == ["next-1", "next-2"]
    assert "t1" not in broker.state.handovers.owner
    *_rest, (_start, _end, kind, payload) = read_records(segment_files(broker.data_dir)[-1])
    assert kind == rc.COMPOUND
    assert [sub for sub, _p in rc.decode_compound(payload)] == [rc.RESULT, rc.PUBLISH,
                                                                  rc.PUBLISH]
    after = broker.reopen()
    assert after.state.results.get("t1").state == "SUCCESS"
    assert live_ids(after.state) == ["next-1", "next-2"]
    assert after.summary["orphans"] == 0              # the result ended the handover


def test_a_crash_at_any_byte_keeps_the_result_and_its_messages_or_none(broker, tmp_path):
    client = broker.connect()
    atomic(client, result_frame("t1"), publish_frame("q", "next-1"),
           publish_frame("q", "next-2"))
    broker.turn()
    broker.crash()
    path = segment_files(broker.data_dir)[-1]
    start, end, _kind, _payload = read_records(path)[-1]
    for cut in range(start, end + 1):
        work = tmp_path / "cut"
        shutil.rmtree(str(work), ignore_errors=True)
        shutil.copytree(broker.data_dir, str(work))
        with open(os.path.join(str(work), "journal", os.path.basename(path)), "r+b") as handle:
            handle.truncate(cut)
        recovered = Broker(work)
        recovered.crash()
        entry = recovered.state.results.get("t1")
        seen = (entry.state if entry else None, live_ids(recovered.state))
        assert seen == (("SUCCESS", ["next-1", "next-2"]) if cut == end else (None, [])), cut


def test_a_wait_on_a_result_stored_in_a_unit_is_answered_once_it_is_written(broker):
    waiter = broker.connect()
    wait = waiter.call(P.RESULT_WAIT, {"task_id": "t1"})
    client = broker.connect()
    atomic(client, result_frame("t1"), publish_frame("q", "next-1"))
    waiter.pump()
    assert wait not in waiter.results                   # not before the write
    broker.turn()
    waiter.pump()
    assert waiter.results[wait][1] == "SUCCESS"


def test_a_refused_unit_puts_results_and_handovers_back(broker):
    worker = started_task(broker, "t1")
    worker.set_result("t2", "RETRY", payload=b'{"result": "again"}', seq=0)
    broker.turn()
    waiter = broker.connect()
    wait = waiter.call(P.RESULT_WAIT, {"task_id": "t2"})
    with disk_faults() as faults:
        faults.full = True
        seq = atomic(worker, result_frame("t1"), result_frame("t2"),
                     publish_frame("q", "next-1"))
        broker.turn()
    worker.pump()
    assert worker.errors[seq][0] == P.REFUSED
    state = broker.state
    assert state.results.get("t1") is None and state.results.state_of("t1") == "STARTED"
    assert state.handovers.owner["t1"] is worker.session and "t1" in worker.session.started
    assert state.results.get("t2").payload == b'{"result": "again"}'
    assert live_ids(state) == []
    waiter.pump()
    assert wait not in waiter.results                   # still waiting: nothing final yet
    broker.turn()
    after = broker.reopen()
    assert after.state.results.get("t2").state == "RETRY"
    assert after.state.results.get("t1") is None and after.summary["orphans"] == 1
    assert live_ids(after.state) == []


def test_a_failing_publish_undoes_the_result_stored_before_it(broker):
    worker = started_task(broker, "t1")
    seq = atomic(worker, result_frame("t1", "FAILURE"),
                 publish_frame("nowhere", "errback", flags=P.PERSISTENT | P.MANDATORY))
    broker.turn()
    worker.pump()
    assert worker.errors[seq][0] == P.UNROUTABLE
    assert broker.state.results.get("t1") is None
    assert broker.state.results.state_of("t1") == "STARTED"
    assert broker.state.handovers.owner["t1"] is worker.session
    assert broker.reopen().state.results.get("t1") is None


def test_an_ignored_result_with_its_messages_ends_the_handover_in_the_same_record(broker):
    worker = started_task(broker, "t1")
    atomic(worker, result_frame("t1", store=False), publish_frame("q", "next-1"))
    broker.turn()
    *_rest, (_start, _end, kind, payload) = read_records(segment_files(broker.data_dir)[-1])
    assert [sub for sub, _p in rc.decode_compound(payload)] == [rc.FINISHED, rc.PUBLISH]
    after = broker.reopen()
    assert after.summary["orphans"] == 0 and live_ids(after.state) == ["next-1"]


def test_a_chord_of_a_thousand_tasks_and_its_body_fit_in_one_unit(broker):
    client = broker.connect()
    frames = [publish_frame("q", "header-%04d" % i) for i in range(1000)]
    seq = atomic(client, result_frame("parent"), publish_frame("q", "body"), *frames)
    broker.turn()
    assert client.is_confirmed(seq)
    assert len(live_ids(broker.reopen().state)) == 1001


def test_a_worker_sends_an_older_broker_the_units_frames_one_by_one_result_first():
    # A broker without ATOMIC used to make the worker raise (and its main loop end) for any
    # result with something to publish: every retry is one now.
    from minitask import config
    from minitask.transport.builtin import Consumer
    consumer = Consumer(config.Settings({}), ["minitask"], 4, {}, "w1")
    consumer.features = frozenset({"described_results"})
    frames = consumer._result_frames("t-1", "RETRY", "application/json", b"{}", True,
                                     [b"retry-message"], "tests.t", 0.1, ["t-2"])
    decoder = P.Decoder()
    decoder.feed(frames)
    assert [(kind, seq) for kind, seq, _body in decoder.frames()] == [
        (P.RESULT_SET, 0), (P.RESULT_SET, 0), (P.PUBLISH, 0)]
    consumer.features = frozenset({"described_results", "atomic_results"})
    decoder.feed(consumer._result_frames("t-1", "RETRY", "application/json", b"{}", True,
                                         [b"retry-message"], "tests.t", 0.1, (), seq=7))
    assert [(kind, seq) for kind, seq, _body in decoder.frames()] == [(P.ATOMIC, 7)]
