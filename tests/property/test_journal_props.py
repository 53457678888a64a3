"""Invariants of the broker's journal and its recovery, for any history and any crash point.

- Whatever mix of publishes, deliveries, acks, requeues, results, compaction, crashes and
  failed writes came before, a recovered broker holds exactly the messages it confirmed and
  that were not acked.
- Cutting the journal at any byte (a crash mid-write) loses only what lies after the cut.
"""

import os
import sys
import tempfile

from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "unit"))

from journalkit import Broker, disk_faults, live_ids, read_records, segment_files  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker.journal import Journal  # noqa: E402
from minitask.broker.results import ResultEntry  # noqa: E402

# No "explain" phase: it reruns a failing example under a tracer, which costs many seconds
# here and adds nothing the falsifying example does not already say.
SMALL = settings(max_examples=50, phases=[Phase.explicit, Phase.reuse, Phase.generate,
                                         Phase.target, Phase.shrink])

# What the disk does during one loop turn: fine, full, or full after `room` more bytes.
faults = st.one_of(st.just(None), st.just(0), st.integers(min_value=1, max_value=400))
actions = st.one_of(
    st.tuples(st.just("publish"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.sampled_from(["ack", "requeue", "drop", "start"]),
              st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("result"), st.integers(min_value=0, max_value=5)),
    st.tuples(st.sampled_from(["close", "crash", "compact"]), st.just(0)),
)
histories = st.lists(st.tuples(actions, faults), min_size=1, max_size=40)


class Model:
    """What the broker has promised: confirmed messages, minus those acked."""

    def __init__(self):
        self.live = set()           # confirmed and not acked
        self.acked = set()          # acked since the last crash (their ACK may be pending)
        self.published = 0


def _worker(broker):
    worker = broker.connect(worker="w")
    worker.qos(3)
    worker.consume("q")
    return worker


def _run(data_dir, history):
    model = Model()
    broker = Broker(data_dir, segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q", max_redeliveries=None)
    broker.turn()
    worker = _worker(broker)
    unacked = []
    with disk_faults() as disk:
        for (action, arg), fault in history:
            if action == "publish":
                seqs = {}
                for _ in range(arg):
                    model.published += 1
                    name = "m%d" % model.published
                    seqs[client.publish("q", name, body=b"b" * (model.published % 90))] = name
            elif action in ("ack", "requeue", "drop", "start") and unacked:
                delivery = unacked.pop(arg % len(unacked))
                if action == "requeue":
                    worker.reject(delivery.tag, requeue=True)
                elif action == "drop":
                    worker.reject(delivery.tag)
                else:
                    worker.ack(delivery.tag, started=action == "start")
                if action != "requeue":
                    model.live.discard(delivery.task_id)
                    model.acked.add(delivery.task_id)
            elif action == "result":
                worker.set_result("m%d" % arg, "SUCCESS", b'{"n": %d}' % arg)
            elif action == "close":
                worker.close()
                unacked = []
                worker = _worker(broker)
            elif action == "crash":
                broker = broker.reopen()
                live = set(live_ids(broker.state))
                assert model.live <= live <= model.live | model.acked
                model.live, model.acked = live, set()
                client = broker.connect()
                worker = _worker(broker)
                unacked = []
            disk.heal()
            if fault is not None:
                disk.room = fault
            broker.turn(compact=action == "compact")
            disk.heal()
            if action == "publish":
                model.live.update(name for seq, name in seqs.items()
                                  if client.is_confirmed(seq))
            unacked += worker.take_deliveries()
    broker.turn()                   # the disk is fine again: pending records get written
    assert live_ids(broker.state) == sorted(model.live)
    return broker, model


@SMALL
@given(histories)
# Requeue the newer of two deliveries, then ack the older: REJECT names one tag only.
@example([(("publish", 2), None), (("requeue", 1), None), (("ack", 0), None)])
# The disk fills up 4 bytes into the header of the next segment, then a crash.
@example([(("publish", 3), None)] * 4 + [(("publish", 3), 4), (("publish", 1), None),
                                         (("crash", 0), None)])
def test_recovered_messages_are_exactly_the_confirmed_and_unacked_ones(history):
    with tempfile.TemporaryDirectory() as data_dir:
        broker, model = _run(data_dir, history)
        recovered = broker.reopen()
        assert live_ids(recovered.state) == sorted(model.live)
        recovered.crash()


# -- cutting the journal -----------------------------------------------------------------------

names = st.text(alphabet="abcé-1", max_size=12)
records = st.one_of(
    st.builds(lambda i, d, q, data: rc.publish_record(i, d, q, data),
              st.integers(min_value=1, max_value=2 ** 64 - 1),
              st.integers(min_value=0, max_value=255), names, st.binary(max_size=200)),
    st.builds(rc.ids_record, st.sampled_from([rc.ACK, rc.DELIVERED]),
              st.lists(st.integers(min_value=0, max_value=2 ** 64 - 1), max_size=20)),
    st.builds(rc.names_record, st.sampled_from([rc.FORGET, rc.STARTED, rc.FINISHED]),
              st.lists(names, max_size=8)),
    st.builds(lambda t, p: rc.result_record(ResultEntry(t, "SUCCESS", "application/json",
                                                        p, 1.0, 2.0)),
              names, st.binary(max_size=100)),
    st.builds(lambda k, v: rc.json_record(rc.KV, {"key": k, "value": v}), names, names),
)
batches = st.lists(st.lists(records, min_size=1, max_size=5), min_size=1, max_size=25)
# Where to cut: a segment (by position, from the end) and an offset in it, often near its
# start, where the file header is.
cuts = st.tuples(st.integers(min_value=0, max_value=10),
                 st.one_of(st.integers(min_value=0, max_value=12), st.floats(0.0, 1.0)))


@SMALL
@given(batches, cuts)
@example([[rc.json_record(rc.KV, {"key": "k", "value": "v" * 600})], [rc.ids_record(rc.ACK, [1])]],
         (0, 6))                                        # inside a new segment's file header
@example([[rc.ids_record(rc.ACK, [1, 2]), rc.names_record(rc.FORGET, ["a"])]], (0, 30))
def test_cutting_the_journal_anywhere_loses_only_the_records_after_the_cut(batches, cut):
    with tempfile.TemporaryDirectory() as data_dir:
        journal = Journal(data_dir, fsync="no", segment_bytes=512)
        list(journal.replay())
        for batch in batches:
            journal.write(batch)
        journal.close()
        paths = segment_files(data_dir)
        which, where = cut
        path = paths[max(0, len(paths) - 1 - which)]
        size = os.path.getsize(path)
        offset = where if isinstance(where, int) else int(where * size)
        offset = min(offset, size)
        kept = []
        for other in paths:
            if other == path:
                kept += [(kind, payload) for _start, end, kind, payload in read_records(path)
                         if end <= offset]
                break
            kept += [(kind, payload) for _start, _end, kind, payload in read_records(other)]
        for later in paths[paths.index(path) + 1:]:
            os.unlink(later)
        with open(path, "r+b") as handle:
            handle.truncate(offset)

        reopened = Journal(data_dir, fsync="no", segment_bytes=512)
        try:
            assert [(kind, payload) for _segment, kind, payload in reopened.replay()] == kept
            assert reopened.damaged == []
        finally:
            reopened.close()


# -- faults anywhere but the newest segment's end ------------------------------------------

faults_in_a_segment = st.tuples(
    st.sampled_from(["delete", "cut", "flip"]),
    st.integers(min_value=0, max_value=10),             # which segment, from the oldest
    st.floats(0.0, 1.0))                                # where in it (cut, flip)


@SMALL
@given(batches, faults_in_a_segment)
@example([[rc.json_record(rc.KV, {"key": "k%d" % i, "value": "v" * 200})] for i in range(12)],
         ("flip", 1, 0.05))                             # inside the OPEN record
@example([[rc.json_record(rc.KV, {"key": "k%d" % i, "value": "v" * 200})] for i in range(12)],
         ("cut", 0, 0.999))                             # only the ROTATE record cut off
def test_a_fault_in_any_sealed_segment_is_counted_exactly(batches, fault):
    """Delete a sealed segment, cut it anywhere, or flip any byte in it (not the format
    version, which would read as a newer broker's journal): the records the broker reports
    lost are exactly the records written that it did not replay, and it says so when any."""
    with tempfile.TemporaryDirectory() as data_dir:
        journal = Journal(data_dir, fsync="no", segment_bytes=512)
        list(journal.replay())
        for batch in batches:
            journal.write(batch)
        journal.close()
        written = sum(len(batch) for batch in batches)
        paths = segment_files(data_dir)
        if len(paths) < 2:
            return                                      # no sealed segment
        how, which, where = fault
        path = paths[which % (len(paths) - 1)]
        size = os.path.getsize(path)
        if how == "delete":
            os.unlink(path)
        elif how == "cut":
            with open(path, "r+b") as handle:
                handle.truncate(int(where * size))
        else:
            offset = min(size - 1, int(where * size))
            if 4 <= offset < 8:
                offset = 8
            with open(path, "r+b") as handle:
                handle.seek(offset)
                byte = handle.read(1)
                handle.seek(offset)
                handle.write(bytes((byte[0] ^ 0xA5,)))
        reopened = Journal(data_dir, fsync="no", segment_bytes=512)
        try:
            replayed = len(list(reopened.replay()))
            lost = written - replayed
            assert reopened.records_lost == lost, (reopened.faults, lost)
            assert not lost or reopened.faults
        finally:
            reopened.close()
