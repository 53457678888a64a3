"""minitask.broker.atomic and the COMPOUND record: several commands, one journal record.

A periodic task's send and the record of when it was sent travel as one ATOMIC unit; the
broker journals all it writes as one COMPOUND record, so a crash at any byte keeps both or
neither. Driven like the server drives the state (journalkit), no sockets.
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
from minitask.broker import journal as jr  # noqa: E402


def kv_frame(key, value):
    return P.encode_json(P.KV_SET, 0, {"key": key, "value": value})


def publish_frame(queue, task_id, flags=P.PERSISTENT, exchange="", **fields):
    message = P.Message(b"{}", exchange=exchange, routing_key=queue, message_id=task_id,
                        type="tasks.beat", flags=flags, **fields)
    return P.encode_frame(P.PUBLISH, 0, P.encode_message(message))


def atomic(client, *frames):
    return client.send(P.ATOMIC, b"".join(frames))


@pytest.fixture
def broker(tmp_path):
    instance = Broker(tmp_path / "data")
    client = instance.connect()
    client.declare_queue("q")
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
    assert kind == jr.COMPOUND
    assert [sub for sub, _payload in jr.decode_compound(payload)] == [jr.KV, jr.PUBLISH]
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
    assert kind == jr.COMPOUND
    assert broker.reopen().state.kv == {"a": 1, "b": 2}


@pytest.mark.parametrize("body, message", [
    (b"", "no frame"),
    (P.encode_tags(P.ACK, 0, [1]), "not ACK"),
    (P.encode_json(P.KV_SET, 7, {"key": "k", "value": 1}), "seq 0"),
    (kv_frame("k", 1)[:-2], "ends inside"),
    (kv_frame("k", 1)[:5], "inside a frame header"),
    (kv_frame("k", 1) * 65, "more than 64"),
    (P.encode_json(P.KV_SET, 0, {"key": 5}), "'key' must be a string"),
])
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
