"""``--fsync always`` against power loss, approximated by cutting the journal at every offset.

Under ``--fsync always`` a publish is confirmed only after its journal record is fsynced, so
after a power cut the disk holds every confirmed record whole, and at most one record after
them cut short. That state is made here for real: N messages are published with confirms to
a broker with ``--fsync always``, the broker is killed, and for each offset in the range of
the last few records, a copy of the data folder has its last segment truncated at that
offset and a broker is started on the copy. It must start, hold exactly the messages whose
record ends at or before the cut (nothing complete lost, nothing half-written resurrected),
and, for a sample of cuts, append after the cut: a new message published there survives a
further ``kill -9`` beside the old ones.

The short form samples offsets (every record boundary and its neighbours, the first bytes of
each record header, and random ones); the long form cuts at every offset of the range.
"""

import os
import shutil
import struct

from chaoskit import BUDGET, FIGURES, LONG, Broker
from minitask import protocol as P

QUEUE = "chaos.cut"
FILE_HEADER_BYTES = 12          # "MTJ1", the format version, the CRC seed
RECORD_HEAD = struct.Struct("!II")          # length (type + payload), crc
RECORD_PUBLISH = 1


def _message(index):
    return P.Message(b"cut-%06d|" % index, "", QUEUE, "cut-%06d" % index, "chaos.cut")


def _records(path):
    """``(start, end, index or None)`` of every record of a segment (index of a publish)."""
    with open(path, "rb") as handle:
        data = handle.read()
    offset, out = FILE_HEADER_BYTES, []
    while offset < len(data):
        length, _crc = RECORD_HEAD.unpack_from(data, offset)
        end = offset + RECORD_HEAD.size + length
        body = data[offset + RECORD_HEAD.size:end]
        index = None
        if body[:1] == bytes((RECORD_PUBLISH,)) and b"cut-" in body:
            at = body.rindex(b"cut-")
            index = int(body[at + 4:at + 10])
        out.append((offset, end, index))
        offset = end
    return out


def _held(broker, expected_count):
    """The indexes of every message in the queue of `broker` (consumed, not acked)."""
    with broker.connect() as conn:
        conn.declare_queue(QUEUE)
        ready = broker.queue(QUEUE)["ready"]
        conn.consume(QUEUE)
        held = []
        for _ in range(ready):
            delivery = conn.get_delivery(timeout=10.0)
            if delivery is None:
                break
            held.append(int(delivery.message.body[4:10]))
    return ready, held


def _offsets(start, end, boundaries, rng):
    """The cut offsets to try in [start, end]."""
    if BUDGET.cut_offsets is None:
        return list(range(start, end + 1))
    chosen = set()
    for boundary in boundaries:
        chosen.update(o for o in (boundary - 1, boundary, boundary + 1, boundary + 4,
                                  boundary + 8, boundary + 9) if start <= o <= end)
    chosen.add(end)
    others = [o for o in range(start, end + 1) if o not in chosen]
    rng.shuffle(others)
    chosen.update(others[:max(0, BUDGET.cut_offsets - len(chosen))])
    return sorted(chosen)


def _start_on_copy(tmp_path, source, offset, segment_name):
    folder = tmp_path / ("cut-%06d" % offset)
    data_dir = folder / "broker-data"
    shutil.copytree(source, str(data_dir))
    os.remove(str(data_dir / "broker.lock"))
    segment = str(data_dir / "journal" / segment_name)
    with open(segment, "r+b") as handle:
        handle.truncate(offset)
    os.makedirs(str(folder), exist_ok=True)
    return Broker(folder, ["--fsync", "always"]), folder


def test_fsync_always_restarts_after_a_cut_at_every_offset_of_the_tail(tmp_path, rng):
    broker = Broker(tmp_path, ["--fsync", "always"]).start()
    try:
        with broker.connect() as conn:
            conn.declare_queue(QUEUE)
            for index in range(BUDGET.cut_messages):
                conn.publish(_message(index))           # returns once fsynced
        broker.kill()
    finally:
        broker.proc.close()
    journal = os.path.join(broker.data_dir, "journal")
    segment_name = sorted(name for name in os.listdir(journal) if name.endswith(".seg"))[-1]
    records = _records(os.path.join(journal, segment_name))
    publishes = [(start, end, index) for start, end, index in records if index is not None]
    assert [index for _s, _e, index in publishes] == list(range(BUDGET.cut_messages))
    tail = publishes[-BUDGET.cut_records:]
    start, end = tail[0][0], tail[-1][1]
    boundaries = [s for s, _e, _i in tail] + [end]
    offsets = _offsets(start, end, boundaries, rng)
    appended = set(rng.sample(offsets, min(4, len(offsets))))
    if LONG:
        appended.update(boundaries)

    starts = 0
    for offset in offsets:
        expected = sorted(index for _s, record_end, index in publishes if record_end <= offset)
        copy, folder = _start_on_copy(tmp_path, broker.data_dir, offset, segment_name)
        try:
            copy.start()
            starts += 1
            ready, held = _held(copy, len(expected))
            assert (ready, sorted(held)) == (len(expected), expected), (
                "cut at %d (tail %d..%d): held %d messages %s, expected %d" % (
                    offset, start, end, ready, sorted(held)[-5:], len(expected)))
            assert "Traceback" not in copy.output(), copy.output()
            if offset in appended:
                with copy.connect() as conn:
                    conn.publish(_message(900000 + offset % 100000))
                copy.kill()
                copy.start()
                starts += 1
                ready, held = _held(copy, len(expected) + 1)
                assert sorted(held) == expected + [900000 + offset % 100000], (
                    "cut at %d, then one more publish and kill -9: held %s" % (
                        offset, sorted(held)[-5:]))
                assert "Traceback" not in copy.output(), copy.output()
        finally:
            if copy.proc is not None:
                copy.proc.close()
        shutil.rmtree(str(folder), ignore_errors=True)
    FIGURES.add("fsync always, journal cut", rng.seed_value, messages=BUDGET.cut_messages,
                cuts=len(offsets), tail_bytes=end - start + 1, broker_starts=starts + 1,
                lost=0)


def test_a_torn_record_holding_records_in_its_body_is_still_only_a_torn_tail(tmp_path):
    """A message body is the publisher's bytes: when the record carrying it is torn, bytes in
    it that happen to form journal records (here an ACK of every earlier message and a
    PUBLISH) must not be replayed; the cut is a torn tail like any other."""
    from minitask.broker import records as rc
    embedded = (rc.ids_record(rc.ACK, list(range(1, 100)))
                + rc.publish_record(10 ** 6, 0, QUEUE, P.encode_message(_message(999999))))
    broker = Broker(tmp_path, ["--fsync", "always"]).start()
    try:
        with broker.connect() as conn:
            conn.declare_queue(QUEUE)
            for index in range(3):
                conn.publish(_message(index))
            conn.publish(P.Message(b"cut-000003|" + embedded + b"|end", "", QUEUE, "cut-3",
                                   "chaos.cut"))
        broker.kill()
    finally:
        broker.proc.close()
    journal = os.path.join(broker.data_dir, "journal")
    segment_name = sorted(name for name in os.listdir(journal) if name.endswith(".seg"))[-1]
    with open(os.path.join(journal, segment_name), "rb") as handle:
        data = handle.read()
    offset = data.rindex(embedded) + len(embedded) + 2      # inside the last record, after
    copy, _folder = _start_on_copy(tmp_path, broker.data_dir, offset, segment_name)
    try:
        copy.start()
        ready, held = _held(copy, 3)
        assert sorted(held) == [0, 1, 2], (
            "after a torn last record, the broker holds %s instead of the 3 confirmed "
            "messages 0, 1, 2 (bytes inside the torn record were replayed as records)"
            % sorted(held))
        assert "damaged" not in copy.output(), copy.output()
    finally:
        copy.proc.close()
