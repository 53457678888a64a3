"""Per-task counts on Redis (minitask.transport.redis_taskstats): what a worker writes, and
how status reads it back, in the built-in broker's shape. No server: the commands and the
hash are plain values here."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from respkit import FakeClock as Clock  # noqa: E402

from minitask import control, protocol as P  # noqa: E402
from minitask.broker.taskstats import (  # noqa: E402
    MAX_NAMES, OTHER, RUNTIME_BUCKETS, TaskStats,
)
from minitask.transport.redis_taskstats import WRITE_EVERY, Tally, read  # noqa: E402


def message(name):
    return P.encode_message(P.Message(b"{}", "", "jobs", "id-1", name))


def as_hash(commands):
    """What HINCRBY and HINCRBYFLOAT commands leave in an empty hash (HGETALL's reply)."""
    fields = {}
    for command, _key, field, amount in commands:
        convert = int if command == "HINCRBY" else float
        fields[field] = fields.get(field, 0) + convert(amount)
    flat = []
    for field, value in fields.items():
        flat += [field.encode("utf-8"), str(value).encode("ascii")]
    return flat


def test_counts_are_written_once_a_second_and_then_start_again():
    clock = Clock()
    tally = Tally(clock)
    tally.received(message("t.add"))
    tally.finished("t.add", "SUCCESS", 0.003)
    assert tally.take("k") == []                    # not yet due
    clock.now += WRITE_EVERY
    commands = tally.take("k")
    assert ("HINCRBY", "k", "received\tt.add", 1) in commands
    assert ("HINCRBY", "k", "succeeded\tt.add", 1) in commands
    assert ("HINCRBY", "k", "b2\tt.add", 1) in commands            # 2.5 ms < 3 ms <= 5 ms
    assert ("HINCRBYFLOAT", "k", "sum\tt.add", "0.003") in commands
    assert tally.take("k", force=True) == []        # nothing new
    tally.finished("t.add", "RETRY")
    assert tally.take("k", force=True) == [("HINCRBY", "k", "retried\tt.add", 1)]


def test_control_messages_other_states_and_nameless_tasks_are_not_counted():
    tally = Tally(Clock())
    tally.received(P.encode_message(control.command_message("ping")))
    tally.received(b"\x00")                         # malformed: the consumer drops it
    tally.finished("t.add", "STARTED")
    tally.finished("", "SUCCESS")
    tally.finished("t.add", "SUCCESS", float("nan"))   # counted, but no run time
    assert tally.take("k", force=True) == [("HINCRBY", "k", "succeeded\tt.add", 1)]


def test_status_reads_the_hash_as_the_built_in_broker_reports_its_counts():
    stats, tally = TaskStats(), Tally(Clock())
    for name, state, runtime in [("t.add", "SUCCESS", 0.0005), ("t.add", "SUCCESS", 2.0),
                                 ("t.add", "FAILURE", None), ("t.div", "REVOKED", None)]:
        stats.received(name.encode("ascii"))
        tally.received(message(name))
        stats.finished(name, state, runtime)
        tally.finished(name, state, runtime)
    flat = as_hash(tally.take("k", force=True)) + [b"future\tt.add", b"x", b"b99\tt.add", b"1"]
    assert read(flat) == stats.report()


def test_names_past_the_limit_are_folded_into_other():
    flat = []
    for index in range(MAX_NAMES + 5):
        flat += [("succeeded\tt%04d" % index).encode("ascii"), b"1"]
    rows = read(flat)
    assert len(rows) == MAX_NAMES and rows[OTHER]["succeeded"] == 6
    assert len(rows["t0000"]["runtime"]["buckets"]) == len(RUNTIME_BUCKETS) + 1
