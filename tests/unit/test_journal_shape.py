"""The journal knows its own shape: a segment missing, cut short or damaged anywhere is an ERROR
naming the segment and the records lost; only the end of the newest segment is a torn tail.

A journal of fourteen segments of confirmed messages is made once per test (journalkit.Broker,
1 KiB segments), then a fault is made with ordinary file operations, as a disk, a person or a
backup tool would, and a broker is started on it.
"""

import logging
import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from journalkit import Broker, disk_faults, live_ids, read_records, segment_files  # noqa: E402
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker.status import status_report  # noqa: E402

JOURNAL_LOGGER = "minitask.broker.journal"
SEGMENTS = 14


def journal_logs(caplog, level):
    return [r.getMessage() for r in caplog.records
            if r.name == JOURNAL_LOGGER and r.levelno == level]


def task_ids(path):
    """Task ids of the PUBLISH records of one segment, in order."""
    return [P.message_id_of(rc.decode_publish(payload)[3])
            for _s, _e, kind, payload in read_records(path) if kind == rc.PUBLISH]


@pytest.fixture
def journal(tmp_path):
    """``(data_dir, paths)``: fourteen segments of confirmed, unacked messages, then a crash."""
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    count = 0
    while len(broker.journal.segments) < SEGMENTS:
        seq = client.publish("q", "m%04d" % count, body=b"b" * 80)
        broker.turn()
        assert client.is_confirmed(seq)
        count += 1
    broker.crash()
    paths = segment_files(tmp_path)
    assert len(paths) == SEGMENTS
    return tmp_path, paths


def all_ids(paths):
    return sorted(task_id for path in paths for task_id in task_ids(path))


def restart(data_dir, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        return Broker(data_dir, segment_bytes=1024)


def assert_clean_next_start(broker, caplog, expected):
    """After a fault was reported, the journal was made whole: the next start says nothing."""
    again = restart(broker.data_dir, caplog)
    assert journal_logs(caplog, logging.ERROR) == []
    assert journal_logs(caplog, logging.WARNING) == []
    assert live_ids(again.state) == expected
    assert again.journal.records_lost == 0
    again.crash()


def test_a_deleted_middle_segment_is_an_error_naming_it_and_the_records_lost(journal, caplog):
    data_dir, paths = journal
    lost = task_ids(paths[7])
    os.unlink(paths[7])
    broker = restart(data_dir, caplog)
    [error] = journal_logs(caplog, logging.ERROR)
    assert "0000000008.seg" in error and "missing" in error
    assert "%d records lost" % len(lost) in error
    expected = sorted(set(all_ids(paths[:7] + paths[8:])))
    assert live_ids(broker.state) == expected
    assert broker.journal.records_lost == len(lost)
    report = status_report(broker.state)["broker"]
    assert (report["journal_records_lost"], report["journal_faults"]) == (len(lost), 1)
    assert_clean_next_start(broker, caplog, expected)


def test_a_segment_cut_to_half_is_an_error_not_a_torn_tail(journal, caplog):
    data_dir, paths = journal
    size = os.path.getsize(paths[7])
    records = read_records(paths[7])
    kept = [r for r in records if r[1] <= size // 2]
    expected = sorted(all_ids(paths[:7] + paths[8:]) + task_ids(paths[7])[:len(kept)])
    with open(paths[7], "r+b") as handle:
        handle.truncate(size // 2)
    broker = restart(data_dir, caplog)
    [error] = journal_logs(caplog, logging.ERROR)[:1]
    assert paths[7] in error and "cut short" in error
    assert "%d records lost" % (len(records) - len(kept)) in error
    assert not any("torn" in line for line in journal_logs(caplog, logging.WARNING))
    assert broker.journal.records_lost == len(records) - len(kept)
    assert os.path.exists(paths[7] + ".damaged")            # kept for people to look at
    assert live_ids(broker.state) == expected
    assert_clean_next_start(broker, caplog, expected)


def test_ten_bytes_overwritten_in_the_last_record_of_a_middle_segment_is_an_error(
        journal, caplog):
    data_dir, paths = journal
    start, end, kind, _payload = read_records(paths[7])[-1]
    assert kind == rc.PUBLISH
    expected = sorted(set(all_ids(paths)) - {task_ids(paths[7])[-1]})
    with open(paths[7], "r+b") as handle:
        handle.seek(end - 10)
        handle.write(b"\xee" * 10)
    broker = restart(data_dir, caplog)
    errors = journal_logs(caplog, logging.ERROR)
    assert paths[7] in errors[0] and "offset %d" % start in errors[0]
    assert "1 record lost" in errors[0]
    assert not any("torn" in line for line in journal_logs(caplog, logging.WARNING))
    assert live_ids(broker.state) == expected
    assert broker.journal.records_lost == 1
    assert_clean_next_start(broker, caplog, expected)


def test_a_deleted_newest_segment_is_named_by_the_rotation_record_before_it(journal, caplog):
    data_dir, paths = journal
    os.unlink(paths[-1])
    broker = restart(data_dir, caplog)
    [error] = journal_logs(caplog, logging.ERROR)
    assert "%010d.seg" % SEGMENTS in error and "rotation record" in error
    assert "an unknown number of records lost" in error
    expected = all_ids(paths[:-1])
    assert live_ids(broker.state) == expected
    assert_clean_next_start(broker, caplog, expected)


def test_a_deleted_oldest_segment_that_was_never_compacted_is_an_error(journal, caplog):
    data_dir, paths = journal
    lost = task_ids(paths[0])
    os.unlink(paths[0])
    broker = restart(data_dir, caplog)
    [error] = journal_logs(caplog, logging.ERROR)
    assert "0000000001.seg" in error and "before the oldest" in error
    assert "%d records lost" % (len(lost) + 1) in error      # and the queue's declaration
    assert "q" not in broker.state.queues                   # it was declared in segment 1
    assert_clean_next_start(broker, caplog, [])


def test_segments_retired_by_compaction_are_not_missing(tmp_path, caplog):
    broker = Broker(tmp_path, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(120):
        client.publish("q", "m%d" % i, body=b"c" * 80)
        broker.turn()
    worker = broker.connect()
    worker.consume("q")
    broker.turn()
    for delivery in worker.take_deliveries()[:100]:
        worker.ack(delivery.tag)
    broker.turn()
    first = [segment.number for segment in broker.journal.segments]
    broker.compact()
    assert min(segment.number for segment in broker.journal.segments) > min(first) + 5
    expected = live_ids(broker.state)
    broker.crash()
    again = restart(tmp_path, caplog)
    assert journal_logs(caplog, logging.ERROR) == []
    assert live_ids(again.state) == expected
    os.unlink(segment_files(tmp_path)[0])                   # now one that was not retired
    third = restart(tmp_path, caplog)
    [error] = journal_logs(caplog, logging.ERROR)
    assert "before the oldest" in error and third.journal.records_lost > 0


def test_a_failed_write_that_could_not_be_cut_back_is_never_replayed(tmp_path, caplog):
    """ENOSPC in the middle of a batch, then ftruncate failing too: the head keeps a whole
    record of the refused batch and part of the next. The next segment says where the old
    one really ended, so neither comes back, and nothing is reported lost."""
    broker = Broker(tmp_path, segment_bytes=4096)
    client = broker.connect()
    client.declare_queue("q")
    for i in range(3):
        client.publish("q", "ok%d" % i)
        broker.turn()
    first = rc.publish_record(broker.state.messages.next_message_id, 0, "q", P.encode_message(
        P.Message(b"{}", routing_key="q", message_id="refused-0", type="tasks.add",
                  flags=P.PERSISTENT)))                    # as journalkit's Client makes it
    with disk_faults() as disk:
        disk.room = len(first) + 5                          # a whole record, then 5 bytes
        disk.truncate_fails = True
        seqs = [client.publish("q", "refused-%d" % i) for i in range(2)]
        broker.turn()
        client.pump()
        assert all(seq in client.errors for seq in seqs)
    old_head = broker.journal.segments[0].path
    assert os.path.getsize(old_head) > broker.journal.segments[0].size   # left behind
    client.publish("q", "after")
    broker.turn()
    assert len(segment_files(tmp_path)) == 2
    broker.crash()
    again = restart(tmp_path, caplog)
    assert journal_logs(caplog, logging.ERROR) == []
    assert live_ids(again.state) == ["after", "ok0", "ok1", "ok2"]
    [warning] = journal_logs(caplog, logging.WARNING)
    assert old_head in warning and "cut off" in warning
    assert_clean_next_start(again, caplog, ["after", "ok0", "ok1", "ok2"])


def test_only_the_newest_segment_can_end_in_a_torn_tail(journal, caplog):
    data_dir, paths = journal
    with open(paths[-1], "ab") as handle:
        handle.write(struct.pack("!IIB", 500, 0, 1) + b"half a record")
    broker = restart(data_dir, caplog)
    assert journal_logs(caplog, logging.ERROR) == []
    [warning] = journal_logs(caplog, logging.WARNING)
    assert "torn record" in warning and paths[-1] in warning
    assert live_ids(broker.state) == all_ids(paths)
    broker.crash()
    with open(paths[5], "ab") as handle:                    # the same bytes, mid-journal
        handle.write(struct.pack("!IIB", 500, 0, 1) + b"half a record")
    restart(data_dir, caplog)
    assert not any("torn" in line for line in journal_logs(caplog, logging.WARNING))
    [warning] = journal_logs(caplog, logging.WARNING)
    assert paths[5] in warning and "cut off" in warning     # after the segment's real end
    assert journal_logs(caplog, logging.ERROR) == []
