"""minitask.broker.journal: records, segments, torn tails, damage, compaction, disk trouble.

No sockets, no processes: a BrokerState is driven the way broker/server.py drives it (see
journalkit.Broker), time moves through a fake clock, the disk is a tmp_path and its failures
are injected by replacing `os.write` inside journal.py.
"""

import gc
import json
import logging
import os
import shutil
import struct
import sys
import threading
import time
import zlib

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from journalkit import (  # noqa: E402
    Broker, FakeClock, disk_faults, live_ids, live_messages, read_records, ready_view,
    segment_files,
)
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker import segments as sg  # noqa: E402
from minitask.broker.journal import Journal, JournalWriteError  # noqa: E402
from minitask.broker.queue import DEAD, StoredMessage  # noqa: E402
from minitask.broker.results import ResultEntry  # noqa: E402
from minitask.exceptions import MinitaskError  # noqa: E402

JOURNAL_LOGGER = "minitask.broker.journal"


def parse(record):
    """``(type, payload)`` of one encoded record, checking the layout of the docstring."""
    length, crc = struct.unpack_from("!II", record)
    assert length == len(record) - 8
    typed = record[8:]
    assert zlib.crc32(typed) == crc
    return typed[0], typed[1:]


def replayed(data_dir, **kwargs):
    """Every record a fresh Journal replays from `data_dir`, as ``(type, payload)``."""
    journal = Journal(str(data_dir), fsync="no", **kwargs)
    try:
        return [(kind, payload) for _segment, kind, payload in journal.replay()], journal
    finally:
        journal.close()


def journal_logs(caplog, level):
    return [r for r in caplog.records if r.name == JOURNAL_LOGGER and r.levelno == level]


def kv(i, size=0):
    return rc.json_record(rc.KV, {"key": "k%d" % i, "value": "v" * size})


def message_data(task_id, queue="q", body=b"{}"):
    return P.encode_message(P.Message(body, routing_key=queue, message_id=task_id))


def task_id_of_publish(payload):
    return P.message_id_of(rc.decode_publish(payload)[3])


# -- records -------------------------------------------------------------------------------------

@pytest.mark.parametrize("message_id, deliveries, queue, data", [
    (1, 0, "q", message_data("t1")),
    (2 ** 64 - 1, 254, "minitask", message_data("x" * 255, "minitask")),
    (42, 255, "", b""),
    (7, 3, "ünï cödé.quëue", bytes(range(256))),
    (9, 0, "q" * 255, b"\x00" * 1000),
])
def test_publish_record_round_trips(message_id, deliveries, queue, data):
    kind, payload = parse(rc.publish_record(message_id, deliveries, queue, data))
    assert kind == rc.PUBLISH
    assert rc.decode_publish(payload) == (message_id, deliveries, queue, data)


def test_publish_record_caps_deliveries_at_a_byte():
    _kind, payload = parse(rc.publish_record(5, 1000, "q", b"m"))
    assert rc.decode_publish(payload)[1] == 255


@pytest.mark.parametrize("kind", [rc.ACK, rc.DELIVERED])
@pytest.mark.parametrize("ids", [[], [1], [3, 1, 2], [2 ** 64 - 1, 0], list(range(1000))])
def test_ids_record_round_trips(kind, ids):
    got_kind, payload = parse(rc.ids_record(kind, ids))
    assert got_kind == kind
    assert list(rc.decode_ids(payload)) == ids


@pytest.mark.parametrize("kind", [rc.FORGET, rc.STARTED, rc.FINISHED])
@pytest.mark.parametrize("names", [[], ["a"], ["ü-task", ""], ["x" * 255, "y" * 200],
                                   ["id-%d" % i for i in range(300)]])
def test_names_record_round_trips(kind, names):
    got_kind, payload = parse(rc.names_record(kind, names))
    assert got_kind == kind
    assert rc.decode_names(payload) == names


@pytest.mark.parametrize("expires_at, task_ids", [
    (0.0, []), (1_700_086_400.25, ["a"]), (float(2 ** 40), ["é" * 100, "b", "c" * 255]),
])
def test_revoke_record_round_trips(expires_at, task_ids):
    kind, payload = parse(rc.revoke_record(expires_at, task_ids))
    assert kind == rc.REVOKE
    assert rc.decode_revoke(payload) == (expires_at, task_ids)


@pytest.mark.parametrize("state", P.STATES)
def test_result_record_round_trips(state):
    entry = ResultEntry("task-é" * 3, state, "application/x-python-serialize",
                        b"\x80\x04payload\x00\xff", 1_700_000_000.5, 1_700_086_400.5)
    kind, payload = parse(rc.result_record(entry))
    assert kind == rc.RESULT
    assert rc.decode_result(payload) == (entry.task_id, state, entry.date_done,
                                         entry.expires_at, entry.content_type, entry.payload)


def test_result_record_without_date_done_reads_back_as_zero():
    entry = ResultEntry("t", "SUCCESS", "application/json", b"", None, 5.0)
    assert rc.decode_result(parse(rc.result_record(entry))[1]) == (
        "t", "SUCCESS", 0.0, 5.0, "application/json", b"")


@pytest.mark.parametrize("kind, obj", [
    (rc.KV, {"key": "beat:tasks.add", "value": 1_700_000_000.5}),
    (rc.KV, {"key": "k", "value": None}),
    (rc.TOPOLOGY, {"op": "declare_queue", "queue": "ü", "durable": True, "max_length": None}),
    (rc.SNAPSHOT, {"exchanges": [], "queues": [{"queue": "q"}], "revoked": [[1.5, ["a"]]],
                   "kv": {"x": [1, 2, {"y": "z"}]}, "started": ["t"]}),
])
def test_json_record_round_trips(kind, obj):
    got_kind, payload = parse(rc.json_record(kind, obj))
    assert got_kind == kind
    assert rc.decode_json(payload) == obj


def test_a_compound_record_holds_its_records_in_order():
    parts = [rc.json_record(rc.KV, {"key": "a", "value": 1}),
             rc.publish_record(9, 0, "q", message_data("t9")), rc.ids_record(rc.ACK, [3])]
    kind, payload = parse(rc.compound_record(parts))
    assert kind == rc.COMPOUND
    assert rc.decode_compound(payload) == [parse(part) for part in parts]


@pytest.mark.parametrize("inner", [
    rc.compound_record([rc.ids_record(rc.ACK, [1])]),
    rc.rotate_record(2, 1, 5), rc.open_record(1, 1, 0, 0, 0), rc.retired_record([(1, 3)]),
], ids=["compound", "rotate", "open", "retired"])
def test_a_compound_record_holds_data_records_only(inner):
    with pytest.raises(ValueError):
        rc.compound_record([inner])
    length = struct.pack("!I", len(inner) - 8)
    with pytest.raises(ValueError):                          # nor is one read back
        rc.decode_compound(length + inner[8:])


@pytest.mark.parametrize("payload", [b"\0\0\0", b"\0\0\0\x09\x01abc", b"\0\0\0\0\x01"])
def test_a_compound_record_that_does_not_add_up_is_refused(payload):
    with pytest.raises(ValueError):
        rc.decode_compound(payload)


def _one_of_each():
    entry = ResultEntry("t1", "FAILURE", "application/json", b'{"e": 1}', 10.0, 20.0)
    return [
        rc.publish_record(1, 0, "q", message_data("t1")), rc.ids_record(rc.ACK, [1]),
        rc.ids_record(rc.DELIVERED, [2, 3]), rc.result_record(entry),
        rc.names_record(rc.FORGET, ["t0"]), rc.revoke_record(99.0, ["t9"]),
        rc.json_record(rc.TOPOLOGY, {"op": "declare_queue", "queue": "q2"}),
        rc.json_record(rc.KV, {"key": "a", "value": 1}), rc.names_record(rc.STARTED, ["t5"]),
        rc.names_record(rc.FINISHED, ["t5"]), rc.json_record(rc.SNAPSHOT, {"kv": {}}),
        rc.compound_record([rc.json_record(rc.KV, {"key": "b", "value": 2}),
                            rc.publish_record(2, 0, "q", message_data("t2"))]),
    ]


def test_every_record_type_replays_unchanged_from_a_segment(tmp_path):
    records = _one_of_each()
    journal = Journal(str(tmp_path), fsync="no")
    assert list(journal.replay()) == []
    journal.write(records[:4])
    journal.write(records[4:])
    journal.close()
    got, _journal = replayed(tmp_path)
    assert got == [parse(record) for record in records]
    assert sorted(kind for kind, _payload in got) == \
        [kind for kind in rc.RECORD_TYPES if kind not in rc.SHAPE_TYPES]


@pytest.mark.parametrize("record", [
    rc.publish_record(3, 1, "q", message_data("t3", body=b'{"x": 1}')),
    rc.result_record(ResultEntry("t4", "SUCCESS", "application/json", b"[42]", 1.0, 2.0)),
    rc.names_record(rc.STARTED, ["t5", "t6"]),
], ids=["publish", "result", "names"])
def test_crc_catches_a_flipped_bit_anywhere_in_a_record(tmp_path, record):
    good = kv(1)
    for bit in range(len(record) * 8):
        flipped = bytearray(record)
        flipped[bit // 8] ^= 1 << (bit % 8)
        data_dir = tmp_path / str(bit)
        os.makedirs(str(data_dir / "journal"))
        with open(str(data_dir / "journal" / "0000000001.seg"), "wb") as handle:
            handle.write(sg.FILE_HEADER + bytes(flipped) + good)
        got, journal = replayed(data_dir)
        assert got == [parse(good)], "bit %d flipped went unnoticed" % bit
        assert [offset for _segment, offset in journal.damaged] == [len(sg.FILE_HEADER)]


# -- segments ------------------------------------------------------------------------------------

def test_first_open_makes_the_directory_and_one_segment_with_the_file_header(tmp_path):
    journal = Journal(str(tmp_path / "data"), fsync="no")
    assert list(journal.replay()) == []
    journal.close()
    [path] = segment_files(tmp_path / "data")
    assert os.path.basename(path) == "0000000001.seg"
    with open(path, "rb") as handle:
        header = handle.read(12)
    assert header[:8] == b"MTJ1" + struct.pack("!I", sg.VERSION) == b"MTJ1\0\0\0\2"
    assert header[8:] != b"\0\0\0\0"                              # a CRC seed, never 0
    [(start, _end, kind, payload)] = read_records(path, shape=True)
    assert (start, kind) == (12, rc.OPEN)
    assert struct.unpack("!5Q", payload) == (1, 1, 0, 0, 0)    # segment 1, record 1, no prev


def test_an_unknown_fsync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sometimes"):
        Journal(str(tmp_path), fsync="sometimes")


def test_segments_rotate_once_they_reach_segment_bytes(tmp_path):
    journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
    list(journal.replay())
    batch = [kv(i, 300) for i in range(3)]
    for _ in range(40):
        journal.write(batch)
    journal.close()
    paths = segment_files(tmp_path)
    assert len(paths) > 5
    assert [os.path.basename(p) for p in paths] == ["%010d.seg" % n
                                                   for n in range(1, len(paths) + 1)]
    batch_bytes = len(b"".join(batch))
    for path in paths[:-1]:
        size = os.path.getsize(path)
        assert 4096 <= size < 4096 + batch_bytes
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == sg.FILE_HEADER[:8]
    assert sum(len(read_records(p)) for p in paths) == 120
    first = 1
    for number, path in enumerate(paths, 1):              # each segment says its place
        shape = [(kind, payload) for _s, _e, kind, payload in read_records(path, shape=True)
                 if kind in (rc.OPEN, rc.ROTATE)]
        count = len(read_records(path))
        opening = struct.unpack("!5Q", shape[0][1])
        assert shape[0][0] == rc.OPEN and opening[:3] == (number, first, number - 1)
        if path != paths[-1]:
            assert shape[-1] == (rc.ROTATE, struct.pack("!3Q", number + 1, first, count))
        first += count


def test_replay_yields_records_oldest_first_across_segments(tmp_path):
    journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
    list(journal.replay())
    written = []
    for i in range(200):
        record = kv(i, i % 50)
        written.append(record)
        journal.write([record])
    journal.close()
    assert len(segment_files(tmp_path)) > 2
    got, journal = replayed(tmp_path, segment_bytes=4096)
    assert got == [parse(record) for record in written]
    assert [json.loads(payload)["key"] for _kind, payload in got] == \
        ["k%d" % i for i in range(200)]


def test_reopening_appends_to_the_head_segment_while_it_has_room(tmp_path):
    for i in range(3):
        journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
        assert len(list(journal.replay())) == i
        journal.write([kv(i)])
        journal.close()
    assert len(segment_files(tmp_path)) == 1


def test_reopening_a_full_head_segment_starts_a_new_one(tmp_path):
    journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
    list(journal.replay())
    journal.write([kv(0, 5000)])
    journal.close()
    journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
    assert len(list(journal.replay())) == 1
    journal.write([kv(1)])
    journal.close()
    paths = segment_files(tmp_path)
    assert len(paths) == 2 and len(read_records(paths[1])) == 1


def test_a_segment_of_another_format_version_is_refused_naming_file_and_versions(tmp_path):
    os.makedirs(str(tmp_path / "journal"))
    path = str(tmp_path / "journal" / "0000000001.seg")
    content = b"MTJ1" + struct.pack("!II", 3, 77) + kv(1)
    with open(path, "wb") as handle:
        handle.write(content)
    with pytest.raises(JournalWriteError) as info:
        list(Journal(str(tmp_path), fsync="no").replay())
    assert isinstance(info.value, MinitaskError)
    text = str(info.value)
    assert path in text and "version 3" in text and "versions 1 and 2" in text
    with open(path, "rb") as handle:
        assert handle.read() == content                     # left alone for a newer broker
    with pytest.raises(JournalWriteError, match="version 3"):
        Broker(tmp_path)


def test_a_sealed_segment_with_a_foreign_header_is_moved_aside(tmp_path, caplog):
    os.makedirs(str(tmp_path / "journal"))
    with open(str(tmp_path / "journal" / "0000000001.seg"), "wb") as handle:
        handle.write(b"GIF89a, not a journal at all" * 10)
    with open(str(tmp_path / "journal" / "0000000002.seg"), "wb") as handle:
        handle.write(sg.FILE_HEADER + kv(7))
    got, _journal = replayed(tmp_path)
    assert got == [parse(kv(7))]
    assert [os.path.basename(p) for p in segment_files(tmp_path, ".damaged")] == \
        ["0000000001.seg.damaged"]
    assert any("0000000001.seg" in r.getMessage() for r in journal_logs(caplog, logging.ERROR))


def test_everysec_fsyncs_in_a_thread_of_its_own_never_in_write(tmp_path):
    with disk_faults() as disk:
        journal = Journal(str(tmp_path), fsync="everysec")
        list(journal.replay())
        try:
            assert not journal.lagging()
            del disk.fsyncs[:]
            journal.write([kv(1)])
            written = journal.generation
            assert disk.fsyncs == []                        # write() left it to the thread
            deadline = time.monotonic() + 10.0
            while not journal.is_synced(written):
                assert time.monotonic() < deadline, "no fsync within 10 s"
                time.sleep(0.01)
            assert set(disk.fsyncs) == {"minitask-fsync"}
            assert not journal.lagging()
        finally:
            journal.close()


def test_always_fsyncs_in_write_and_needs_no_thread(tmp_path):
    with disk_faults() as disk:
        journal = Journal(str(tmp_path), fsync="always")
        list(journal.replay())
        del disk.fsyncs[:]
        journal.write([kv(1)])
        assert disk.fsyncs == [threading.current_thread().name]
        assert journal.generation == 0 and journal.is_synced(0) and not journal.lagging()
        assert [t for t in threading.enumerate() if t.name == "minitask-fsync"] == []
        journal.close()


# -- torn tails ----------------------------------------------------------------------------------

def _publish_turns(broker, client, names, queue="q", body=b"{}"):
    seqs = [client.publish(queue, name, body=body) for name in names]
    broker.turn()
    assert all(client.is_confirmed(seq) for seq in seqs)


def _model_live(data_dir):
    """Task ids a reader of the docstring expects alive: published and not acked."""
    live = {}
    for path in segment_files(data_dir):
        for _start, _end, kind, payload in read_records(path):
            if kind == rc.PUBLISH:
                message_id = rc.decode_publish(payload)[0]
                live[message_id] = task_id_of_publish(payload)
            elif kind == rc.ACK:
                for message_id in rc.decode_ids(payload):
                    live.pop(message_id, None)
    return sorted(live.values())


def test_a_torn_tail_at_any_offset_keeps_every_complete_record_and_appends_cleanly(
        tmp_path, caplog):
    pristine = tmp_path / "pristine"
    broker = Broker(pristine, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(0, 12, 2):
        _publish_turns(broker, client, ["a%d" % i, "a%d" % (i + 1)])
    client.consume("q")
    client.qos(1)
    broker.turn()
    [delivery] = client.take_deliveries()                  # a DELIVERED record
    client.ack(delivery.tag)
    _publish_turns(broker, client, ["last1", "last2", "last3"])   # ACK + 3 PUBLISH, one write
    broker.turn()                                           # the next DELIVERED record
    broker.crash()
    paths = segment_files(pristine)
    assert len(paths) >= 2
    last = os.path.basename(paths[-1])
    with open(paths[-1], "rb") as handle:
        data = handle.read()
    records = read_records(paths[-1])
    assert [kind for *_r, kind, _p in records[-5:]] == [rc.ACK] + [rc.PUBLISH] * 3 + \
        [rc.DELIVERED]
    first = records[-5][0]
    boundaries = {end for _start, end, _kind, _payload in records}
    work = tmp_path / "work"
    for cut in range(first, len(data)):
        shutil.rmtree(str(work), ignore_errors=True)
        shutil.copytree(str(pristine), str(work))
        with open(str(work / "journal" / last), "r+b") as handle:
            handle.truncate(cut)
        expected = _model_live(work)
        complete = [r for r in records if r[1] <= cut]
        caplog.clear()
        reopened = Broker(work, segment_bytes=1024)
        warnings = journal_logs(caplog, logging.WARNING)
        assert len(warnings) == (0 if cut in boundaries else 1), (cut, warnings)
        assert journal_logs(caplog, logging.ERROR) == []
        if warnings:
            assert last in warnings[0].getMessage()
        assert live_ids(reopened.state) == expected, cut
        assert os.path.getsize(str(work / "journal" / last)) == complete[-1][1]
        writer = reopened.connect()
        _publish_turns(reopened, writer, ["after"])
        caplog.clear()
        again = reopened.reopen()
        assert journal_logs(caplog, logging.WARNING) == []
        assert live_ids(again.state) == sorted(expected + ["after"]), cut
        again.crash()


# A new segment's header and OPEN record are one write of OPENING_BYTES (61): cut anywhere.
@pytest.mark.parametrize("cut", [0, 1, 4, 7, 8, 11, 12, 13, 20, 30, 40, 50, 59, 60])
def test_a_torn_header_of_a_new_head_segment_loses_nothing(tmp_path, caplog, cut):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    while broker.journal.head.size < broker.journal.segment_bytes:
        _publish_turns(broker, client, ["m%d" % broker.state.messages.next_message_id], body=b"x" * 90)
    broker = broker.reopen()                                # the head is full: a fresh one
    assert len(segment_files(tmp_path)) == 2
    expected = live_ids(broker.state)
    broker.crash()
    head = segment_files(tmp_path)[-1]
    assert os.path.getsize(head) == sg.OPENING_BYTES
    with open(head, "r+b") as handle:
        handle.truncate(cut)                                # crash while creating it
    reopened = Broker(tmp_path, segment_bytes=1024)
    assert live_ids(reopened.state) == expected
    assert journal_logs(caplog, logging.ERROR) == []
    assert segment_files(tmp_path, ".damaged") == []
    _publish_turns(reopened, reopened.connect(), ["after"])
    again = reopened.reopen()
    assert live_ids(again.state) == sorted(expected + ["after"])
    for path in segment_files(tmp_path):
        with open(path, "rb") as handle:
            assert handle.read(8) == sg.FILE_HEADER[:8]


# -- damage in the middle ------------------------------------------------------------------------

def _flip(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes((byte[0] ^ 0x5A,)))


def test_damage_in_the_middle_is_reported_with_segment_and_offset_and_the_rest_kept(
        tmp_path, caplog):
    journal = Journal(str(tmp_path), fsync="no")
    list(journal.replay())
    records = [kv(i, 20) for i in range(6)]
    for record in records:
        journal.write([record])
    journal.close()
    [path] = segment_files(tmp_path)
    start, end, _kind, _payload = read_records(path)[2]
    _flip(path, start + 12)
    got, journal = replayed(tmp_path)
    assert got == [parse(r) for i, r in enumerate(records) if i != 2]
    assert [(segment.path, offset) for segment, offset in journal.damaged] == [(path, start)]
    [error] = journal_logs(caplog, logging.ERROR)
    assert path in error.getMessage() and "offset %d" % start in error.getMessage()
    assert journal_logs(caplog, logging.WARNING) == []      # not mistaken for a torn tail
    assert os.path.getsize(path) > end                      # nothing cut off


@pytest.mark.parametrize("where", ["head", "sealed"])
def test_a_damaged_segment_is_rewritten_moved_aside_and_the_next_open_is_clean(
        tmp_path, caplog, where):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    client.kv_set("beat", 12.5)
    for i in range(8):
        _publish_turns(broker, client, ["m%d" % i], body=b"y" * 60)
    client.consume("q")
    client.qos(2)
    broker.turn()
    first, _second = client.take_deliveries()
    client.ack(first.tag)
    client.set_result("m0", "SUCCESS", b'{"result": 1}')
    broker.turn()
    for i in range(8, 20 if where == "sealed" else 8):
        _publish_turns(broker, client, ["m%d" % i], body=b"y" * 60)
    broker.crash()
    paths = segment_files(tmp_path)
    victim_path = paths[0] if where == "sealed" else paths[-1]
    publishes = [r for r in read_records(victim_path) if r[2] == rc.PUBLISH]
    victim = publishes[0] if where == "head" else publishes[1]
    lost = task_id_of_publish(victim[3])
    assert victim[1] < os.path.getsize(victim_path)         # good records follow it
    expected = sorted(set(_model_live(tmp_path)) - {lost})
    _flip(victim_path, victim[1] - 3)

    reopened = Broker(tmp_path, segment_bytes=1024)
    errors = journal_logs(caplog, logging.ERROR)
    assert any(victim_path in r.getMessage() and "offset %d" % victim[0] in r.getMessage()
               for r in errors)
    assert live_ids(reopened.state) == expected
    assert reopened.state.kv == {"beat": 12.5}
    assert reopened.state.results.get("m0").payload == b'{"result": 1}'
    assert os.path.exists(victim_path + ".damaged")
    assert victim_path not in segment_files(tmp_path)
    view = ready_view(reopened.state, "q")

    caplog.clear()
    again = reopened.reopen()
    assert journal_logs(caplog, logging.ERROR) == []
    assert journal_logs(caplog, logging.WARNING) == []
    assert again.journal.damaged == []
    assert ready_view(again.state, "q") == view
    assert again.state.kv == {"beat": 12.5}
    _publish_turns(again, again.connect(), ["after"])
    last = again.reopen()
    assert live_ids(last.state) == sorted(expected + ["after"])


# -- compaction ----------------------------------------------------------------------------------

def _recover_copy(data_dir, target, clock=None):
    """Recover a copy of `data_dir` as a crash at this moment would find it."""
    shutil.rmtree(str(target), ignore_errors=True)
    shutil.copytree(str(data_dir), str(target))
    return Broker(target, clock=clock or FakeClock(), segment_bytes=4096)


def _disk_bytes(data_dir):
    return sum(os.path.getsize(path) for path in segment_files(data_dir))


def _results_view(state):
    return {task_id: (entry.state, entry.content_type, entry.payload, entry.date_done,
                      entry.expires_at)
            for task_id, entry in state.results.entries.items()}


def _busy_broker(data_dir, published=200, delivered=190, acked=175):
    broker = Broker(data_dir, segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(0, published, 5):
        _publish_turns(broker, client, ["m%03d" % n for n in range(i, i + 5)], body=b"z" * 60)
    worker = broker.connect(worker="w1")
    worker.qos(delivered)
    consume = worker.consume("q")
    broker.turn()
    deliveries = worker.take_deliveries()
    assert len(deliveries) == delivered
    worker.cancel(worker.oks[consume]["consumer_tag"])     # nothing more comes
    for delivery in deliveries[:acked]:
        worker.ack(delivery.tag)
        if delivery.tag % 10 == 0:
            broker.turn()
    for n in range(0, 30):
        worker.set_result("m%03d" % n, "SUCCESS", b'{"result": %d}' % n)
    worker.forget(*["m%03d" % n for n in range(10)])
    broker.turn()
    return broker, worker


def test_compaction_drops_old_segments_and_keeps_exactly_the_live_set(tmp_path):
    broker, _worker = _busy_broker(tmp_path / "data")
    reference = _recover_copy(tmp_path / "data", tmp_path / "before")
    old = segment_files(tmp_path / "data")
    size_before = _disk_bytes(tmp_path / "data")
    assert len(old) >= 5 and broker.journal.wants_compaction()

    broker.compact()

    assert not os.path.exists(old[0]) and not os.path.exists(old[1])
    assert _disk_bytes(tmp_path / "data") < size_before / 2
    assert broker.journal.total_bytes() == _disk_bytes(tmp_path / "data")
    after = broker.reopen()
    assert ready_view(after.state, "q") == ready_view(reference.state, "q")
    assert len(ready_view(after.state, "q")) == 25
    assert [d for _t, d in ready_view(after.state, "q")] == [1] * 15 + [0] * 10
    assert _results_view(after.state) == _results_view(reference.state)
    assert sorted(after.state.results.entries) == ["m%03d" % n for n in range(10, 30)]


def test_compaction_never_resurrects_a_message_acked_in_a_later_segment(tmp_path):
    broker = Broker(tmp_path / "data", segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("q")
    client.declare_queue("filler")
    _publish_turns(broker, client, ["a%d" % i for i in range(10)], body=b"a" * 40)
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    early = worker.take_deliveries()
    for i in range(60):                                     # later segments
        _publish_turns(broker, client, ["f%d" % i], queue="filler", body=b"f" * 200)
        if i % 6 == 0 and len(early) > 2:
            worker.ack(early.pop(0).tag)                    # ACKs for PUBLISHes in segment 1
    filler = broker.connect()
    filler.consume("filler")
    broker.turn()
    for delivery in filler.take_deliveries():
        filler.ack(delivery.tag)
    broker.turn()
    first_segment = segment_files(tmp_path / "data")[0]
    acks_later = [rec for path in segment_files(tmp_path / "data")[1:]
                  for rec in read_records(path) if rec[2] == rc.ACK]
    published_first = {rc.decode_publish(rec[3])[0] for rec in read_records(first_segment)
                       if rec[2] == rc.PUBLISH}
    assert any(set(rc.decode_ids(rec[3])) & published_first for rec in acks_later)
    expected = live_ids(broker.state)
    assert expected == ["a8", "a9"]

    numbers = [segment.number for segment in broker.journal.segments]
    for step in range(1000):
        more = broker.journal.compact_step(broker.state, budget_bytes=150)
        now = [segment.number for segment in broker.journal.segments]
        gone = set(numbers) - set(now)
        assert not gone or gone == {min(numbers)}, "deleted %s before %d" % (gone, min(numbers))
        numbers = now
        crashed = _recover_copy(tmp_path / "data", tmp_path / "crash")
        assert live_ids(crashed.state) == expected, "step %d" % step
        assert [d for _t, d in ready_view(crashed.state, "q")] == [1, 1]
        crashed.crash()
        if not more:
            break
    else:
        pytest.fail("compaction did not finish")
    assert len(broker.journal.segments) <= 2


def test_compaction_is_wanted_only_for_mostly_dead_sealed_segments(tmp_path):
    broker = Broker(tmp_path, segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("q")
    assert not broker.journal.wants_compaction()            # only the head
    for i in range(60):
        _publish_turns(broker, client, ["m%d" % i], body=b"l" * 100)
    assert len(broker.journal.segments) >= 2
    assert not broker.journal.wants_compaction()            # everything is live
    assert broker.journal.compact_step(broker.state) is False
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    for delivery in worker.take_deliveries():
        worker.ack(delivery.tag)
    broker.turn()
    assert broker.journal.live_bytes() == 0
    assert broker.journal.wants_compaction()


def _thinned_broker(data_dir):
    """300 messages delivered, two of every three acked: every segment a third alive."""
    broker = Broker(data_dir, segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(0, 300, 5):
        _publish_turns(broker, client, ["m%03d" % n for n in range(i, i + 5)], body=b"t" * 100)
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    for delivery in worker.take_deliveries():
        if int(delivery.task_id[1:]) % 3:
            worker.ack(delivery.tag)
    broker.turn()
    assert len(live_ids(broker.state)) == 100
    assert broker.journal.wants_compaction()
    return broker


def test_a_compaction_step_writes_about_its_budget(tmp_path):
    broker = _thinned_broker(tmp_path)
    budget = 300
    disk_before = broker.journal.total_bytes()
    largest = max(len(broker.state.record_for(obj)) for obj in broker.state.live_objects())
    snapshot = len(b"".join(broker.state.snapshot_records()))
    steps = 0
    while True:
        before = broker.journal.bytes_written
        first = broker.journal.compacting is None
        more = broker.journal.compact_step(broker.state, budget_bytes=budget)
        written = broker.journal.bytes_written - before
        assert written <= budget + largest + (snapshot if first else 0)
        steps += 1
        if not more:
            break
        assert steps < 1000
    assert steps > 20                                       # the work was spread out
    assert broker.journal.total_bytes() < disk_before / 2
    assert live_ids(broker.reopen().state) == ["m%03d" % n for n in range(0, 300, 3)]


def test_compaction_paused_by_disk_trouble_loses_nothing_and_resumes(tmp_path):
    broker = _thinned_broker(tmp_path / "data")
    reference = _recover_copy(tmp_path / "data", tmp_path / "before")
    oldest = broker.journal.segments[0].path
    assert broker.journal.compact_step(broker.state, budget_bytes=400) is True
    with disk_faults() as faults:
        faults.room = 100                                   # the disk fills mid-batch
        for _ in range(5):
            size = broker.journal.head.size
            assert broker.journal.compact_step(broker.state, budget_bytes=400) is False
            assert os.path.getsize(broker.journal.head.path) == size
        assert os.path.exists(oldest)
        crashed = _recover_copy(tmp_path / "data", tmp_path / "crash")
        assert ready_view(crashed.state, "q") == ready_view(reference.state, "q")
        crashed.crash()
    broker.compact(budget_bytes=400)
    assert not os.path.exists(oldest)
    after = broker.reopen()
    assert ready_view(after.state, "q") == ready_view(reference.state, "q")
    assert [d for _t, d in ready_view(after.state, "q")] == [1] * 100


def test_compaction_keeps_topology_results_revoked_settings_and_handovers(tmp_path):
    broker = Broker(tmp_path, segment_bytes=4096)
    client = broker.connect()
    client.declare_exchange("ex", "topic")
    client.declare_queue("q")
    client.bind("q", "ex", "tasks.#")
    client.kv_set("beat:last", 1234.5)
    client.revoke("gone-1", "gone-2")
    client.publish("q", "running", exchange="ex", routing_key="tasks.run")
    worker = broker.connect(worker="w1")
    worker.consume("q")
    broker.turn()
    [delivery] = worker.take_deliveries()
    worker.ack(delivery.tag, started=True)
    worker.set_result("done", "SUCCESS", b'"kept"')
    broker.turn()
    client.declare_queue("filler")
    for i in range(80):
        _publish_turns(broker, client, ["f%d" % i], queue="filler", body=b"f" * 100)
    client.purge("filler")
    broker.turn()
    first = broker.journal.segments[0].path
    broker.compact()
    assert not os.path.exists(first)

    after = broker.reopen()
    state = after.state
    assert state.exchanges["ex"].type == "topic"
    assert {key for (_q, key, _a) in state.exchanges["ex"].bindings} == {"tasks.#"}
    assert state.kv == {"beat:last": 1234.5}
    assert set(state.revoked.ids) == {"gone-1", "gone-2"}
    assert state.results.get("done").payload == b'"kept"'
    assert state.results.state_of("running") == "STARTED"
    after.clock.advance(after.state.options.handover_grace + 1)
    after.turn()
    assert state.results.get("running").state == "FAILURE"
    assert b"WorkerLostError" in state.results.get("running").payload


def test_a_snapshot_bigger_than_a_segment_lets_compaction_end_and_is_not_rewritten_per_segment(
        tmp_path):
    """The snapshot record is not a member of any segment. Compaction wrote a new one for
    every segment it retired, and a segment holding little but the newest snapshot looked
    dead: with a snapshot as big as a segment, an idle broker compacted for ever."""
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    worker = broker.connect()
    worker.consume("q")

    def dead_segments(count):
        for i in range(count):
            _publish_turns(broker, client, ["m%d" % i], body=b"d" * 100)
            for delivery in worker.take_deliveries():
                worker.ack(delivery.tag)
            broker.turn()

    dead_segments(20)
    for i in range(60):                                     # topology lives in snapshots
        client.declare_queue("queue-with-a-long-name-%04d" % i)
    broker.turn()
    snapshot = len(b"".join(broker.state.snapshot_records()))
    assert snapshot > 2 * 1024
    dead_segments(20)
    assert len(broker.journal.segments) > 5 and broker.journal.wants_compaction()

    before = broker.journal.bytes_written
    broker.compact(max_steps=500)
    assert broker.journal.bytes_written - before < 3 * snapshot
    assert len(broker.journal.segments) <= 3
    idle = broker.journal.bytes_written
    for _ in range(50):                                     # an idle broker writes nothing
        broker.turn(compact=True)
    assert broker.journal.bytes_written == idle
    after = broker.reopen()
    assert sorted(after.state.queues) == sorted(broker.state.queues)
    assert len([name for name in after.state.queues if name.startswith("queue-with")]) == 60
    assert live_ids(after.state) == []


def test_compaction_finishes_while_a_message_of_a_deleted_queue_is_unacked(tmp_path):
    broker = Broker(tmp_path, segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("doomed")
    client.declare_queue("other")
    _publish_turns(broker, client, ["x"], queue="doomed")
    holder = broker.connect()
    holder.consume("doomed")
    broker.turn()
    assert len(holder.take_deliveries()) == 1               # unacked from here on
    client.delete_queue("doomed")
    broker.turn()
    for i in range(100):
        _publish_turns(broker, client, ["o%d" % i], queue="other", body=b"o" * 100)
    client.purge("other")
    broker.turn()
    assert broker.journal.wants_compaction()
    broker.compact(max_steps=200)
    after = broker.reopen()
    assert "doomed" not in after.state.queues
    assert live_ids(after.state) == []


# -- disk trouble --------------------------------------------------------------------------------

def test_a_failed_write_raises_and_cuts_the_segment_back(tmp_path):
    journal = Journal(str(tmp_path), fsync="no")
    list(journal.replay())
    journal.write([kv(1)])
    [path] = segment_files(tmp_path)
    size = os.path.getsize(path)
    with disk_faults() as faults:
        faults.room = 30                                    # part of the batch fits
        with pytest.raises(JournalWriteError, match="No space left on device") as info:
            journal.write([kv(2, 50), kv(3, 50)])
        assert isinstance(info.value.__cause__, OSError)
        assert os.path.getsize(path) == size
        assert journal.head.size == size
        faults.full = True
        with pytest.raises(JournalWriteError):
            journal.write([kv(4)])
        assert os.path.getsize(path) == size
    journal.write([kv(5)])
    journal.close()
    got, _journal = replayed(tmp_path)
    assert got == [parse(kv(1)), parse(kv(5))]


def test_a_failed_rotation_leaves_no_half_made_segment_and_is_tried_again(tmp_path):
    journal = Journal(str(tmp_path), fsync="no", segment_bytes=4096)
    list(journal.replay())
    journal.write([kv(1, 5000)])
    with disk_faults() as faults:
        faults.full = True
        with pytest.raises(JournalWriteError, match="new journal segment"):
            journal.write([kv(2)])
    assert len(segment_files(tmp_path)) == 1
    journal.write([kv(3)])
    journal.close()
    assert len(segment_files(tmp_path)) == 2
    got, _journal = replayed(tmp_path)
    assert got == [parse(kv(1, 5000)), parse(kv(3))]


@pytest.mark.parametrize("room", range(1, 8))
def test_a_short_write_of_a_new_segment_header_never_costs_confirmed_records(tmp_path, room):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    while broker.journal.head.size < broker.journal.segment_bytes:
        _publish_turns(broker, client, ["m%d" % broker.state.messages.next_message_id], body=b"x" * 90)
    with disk_faults() as faults:
        faults.room = room                                  # a few bytes of room left
        refused = client.publish("q", "refused")
        broker.turn()
        assert not client.is_confirmed(refused)
        faults.heal()
        _publish_turns(broker, client, ["after"])
    expected = live_ids(broker.state)
    assert "after" in expected and "refused" not in expected
    after = broker.reopen()
    assert live_ids(after.state) == expected
    for path in segment_files(tmp_path):
        with open(path, "rb") as handle:
            assert handle.read(8) == sg.FILE_HEADER[:8]


def test_refused_publishes_get_error_507_naming_the_reason_and_are_never_delivered(
        tmp_path, caplog):
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q")
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    _publish_turns(broker, client, ["before"])
    assert [d.task_id for d in worker.take_deliveries()] == ["before"]
    size = broker.journal.head.size
    with disk_faults() as faults:
        faults.room = 40
        seqs = [client.publish("q", "r%d" % i) for i in range(3)]
        broker.turn()
        assert os.path.getsize(broker.journal.head.path) == size
    client.pump()
    for seq in seqs:
        code, text = client.errors[seq]
        assert code == P.REFUSED == 507
        assert "No space left on device" in text
        assert not client.is_confirmed(seq)
    assert worker.take_deliveries() == []
    queue = broker.state.queues["q"]
    assert queue.ready == 0 and queue.delayed == 0 and queue.published == 1
    assert any("3 publishes refused" in r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR)
    broker.turn()
    assert worker.take_deliveries() == []
    later = client.publish("q", "later")
    broker.turn()
    assert client.is_confirmed(later)
    assert [d.task_id for d in worker.take_deliveries()] == ["later"]
    assert live_ids(broker.reopen().state) == ["before", "later"]


def test_acks_results_and_settings_of_a_refused_turn_are_written_next_turn(tmp_path):
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q")
    _publish_turns(broker, client, ["a", "b"])
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    first, second = worker.take_deliveries()
    with disk_faults() as faults:
        faults.full = True
        worker.ack(first.tag)
        worker.reject(second.tag)
        worker.set_result("a", "SUCCESS", b'{"result": "A"}')
        worker.forget("nothing")
        client.kv_set("beat", 7)
        client.declare_queue("late")
        refused = client.publish("q", "refused")
        broker.turn()
        kinds = sorted(record[8] for record in broker.state.sink.records)
        # Two results: "a"'s, and the rejected (dropped) task's DeadLetteredError.
        assert kinds == sorted([rc.ACK, rc.ACK, rc.RESULT, rc.RESULT, rc.KV, rc.TOPOLOGY])
        assert not client.is_confirmed(refused)
        crashed = _recover_copy(tmp_path, tmp_path.parent / (tmp_path.name + "-crash"))
        assert live_ids(crashed.state) == ["a", "b"]        # acks not on disk yet
        crashed.crash()
    broker.turn()
    assert broker.state.sink.records == []
    after = broker.reopen()
    assert live_ids(after.state) == []
    assert after.state.results.get("a").payload == b'{"result": "A"}'
    assert after.state.kv == {"beat": 7}
    assert "late" in after.state.queues


def test_a_message_dead_lettered_in_a_refused_turn_is_not_lost(tmp_path):
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q", dead_letter_queue="q.dlq")
    client.declare_queue("q.dlq")
    _publish_turns(broker, client, ["precious"])
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    [delivery] = worker.take_deliveries()
    with disk_faults() as faults:
        faults.full = True
        worker.reject(delivery.tag)                         # to the dead-letter queue
        broker.turn()
    broker.turn()
    assert live_ids(broker.state) == ["precious"]
    after = broker.reopen()
    assert live_ids(after.state) == ["precious"]            # confirmed: never lost


def test_delivered_records_of_a_failed_write_are_written_later(tmp_path):
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q")
    _publish_turns(broker, client, ["a"])
    worker = broker.connect()
    worker.consume("q")
    with disk_faults() as faults:
        faults.full = True
        broker.turn()                                       # delivers; DELIVERED not written
        assert len(worker.take_deliveries()) == 1
        assert [record[8] for record in broker.state.sink.records] == [rc.DELIVERED]
    broker.turn()
    after = broker.reopen()
    assert ready_view(after.state, "q") == [("a", 1)]


def test_nothing_confirmed_is_lost_across_a_spell_of_disk_trouble(tmp_path):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    confirmed = []
    with disk_faults() as faults:
        for i in range(60):
            faults.heal()
            if i % 3 == 1:
                faults.full = True
            elif i % 5 == 2:
                faults.room = 50 + i
            seqs = {client.publish("q", "m%d-%d" % (i, n), body=b"p" * 40): "m%d-%d" % (i, n)
                    for n in range(2)}
            broker.turn()
            confirmed += [name for seq, name in seqs.items() if client.is_confirmed(seq)]
            if i % 3 == 1:
                assert all(seq in client.errors for seq in seqs)
    assert 20 < len(confirmed) < 120
    assert live_ids(broker.state) == sorted(confirmed)
    after = broker.reopen()
    assert live_ids(after.state) == sorted(confirmed)
    assert [m.deliveries for m in live_messages(after.state)] == [0] * len(confirmed)


def _stored_messages():
    """Every StoredMessage object alive in this process."""
    gc.collect()
    return [obj for obj in gc.get_objects() if isinstance(obj, StoredMessage)]


def test_refused_publishes_leave_nothing_behind_however_long_the_disk_is_full(tmp_path):
    """A retrying client on a full disk: 4,000-byte bodies, ready, delayed and expiring ones,
    mixed with messages that need no journal (kept). Nothing refused stays anywhere."""
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q")
    _publish_turns(broker, client, ["before"])
    now = broker.clock()
    kept = []
    with disk_faults() as faults:
        faults.full = True
        for turn in range(300):
            seqs = [client.publish("q", "r%d-%d" % (turn, i), body=b"b" * 4000,
                                   priority=(turn + i) % 10,
                                   not_before=now + 3600 if i == 1 else 0.0,
                                   expires_at=now + 7200 if i == 2 else 0.0)
                    for i in range(4)]
            if turn % 50 == 0:                              # not persistent: not refused
                client.publish("q", "transient-%d" % turn, flags=0, priority=turn % 10)
                kept.append("transient-%d" % turn)
            broker.turn()
            client.pump()
            assert all(seq in client.errors for seq in seqs)
    state = broker.state
    queue = state.queues["q"]
    assert queue.ready == 1 + len(kept) and queue.delayed == 0
    assert sum(len(level) for level in queue.levels.values()) + len(queue.returned) \
        == queue.ready                                      # no dead entries waiting
    assert state.messages.delayed == [] and state.messages.expiring == []
    assert state.sink.records == [] and state.sink.written() == []    # no unit left behind
    assert sorted(P.message_id_of(m.data) for m in _stored_messages()
                  if m.where != DEAD) == sorted(["before"] + kept)
    assert not any(P.message_id_of(m.data).startswith("r") for m in _stored_messages())
    assert sum(len(segment.members) for segment in broker.journal.segments) == 1
    assert queue.published == 1 + len(kept)
    assert live_ids(broker.reopen().state) == ["before"]


def test_starting_on_a_full_disk_with_a_damaged_segment_serves_what_it_recovered(
        tmp_path, caplog):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(20):
        _publish_turns(broker, client, ["m%02d" % i], body=b"d" * 60)
    broker.crash()
    head = segment_files(tmp_path)[-1]
    victim = [r for r in read_records(head) if r[2] == rc.PUBLISH][0]
    lost = task_id_of_publish(victim[3])
    expected = sorted("m%02d" % i for i in range(20) if "m%02d" % i != lost)
    _flip(head, victim[1] - 3)
    with disk_faults() as faults:
        faults.full = True
        reopened = Broker(tmp_path, segment_bytes=1024)        # no OSError: it serves
        assert live_ids(reopened.state) == expected
        assert any("cannot rewrite the journal" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.ERROR)
        writer = reopened.connect()
        refused = writer.publish("q", "refused")
        worker = reopened.connect()
        worker.consume("q")
        reopened.turn(compact=True)
        writer.pump()
        assert writer.errors[refused][0] == P.REFUSED
        assert sorted(d.task_id for d in worker.take_deliveries()) == expected
        assert not os.path.exists(head + ".damaged")        # not yet: nothing written
    accepted = writer.publish("q", "accepted")
    reopened.turn(compact=True)
    assert writer.is_confirmed(accepted)
    assert not os.path.exists(head + ".damaged")            # tried again a second later
    reopened.clock.advance(1.0)
    reopened.turn(compact=True)
    assert os.path.exists(head + ".damaged")                # rewritten once the disk took it
    caplog.clear()
    again = reopened.reopen()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert live_ids(again.state) == sorted(expected + ["accepted"])


def test_disk_full_errors_are_one_line_per_ten_seconds_with_a_count_of_the_rest(
        tmp_path, caplog):
    broker = Broker(tmp_path)
    client = broker.connect()
    client.declare_queue("q")
    with disk_faults() as faults:
        faults.full = True
        for i in range(1000):
            client.publish("q", "r%d" % i)
            client.publish("q", "s%d" % i)
            broker.turn()
            broker.clock.advance(0.005)
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "2 publishes refused" in lines[0]
        broker.clock.advance(10.0)
        client.publish("q", "last")
        broker.turn()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2
    assert lines[1].endswith("(and 999 more like it: 1998 publishes refused)"), lines[1]
