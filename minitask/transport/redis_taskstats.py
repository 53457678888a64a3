"""Per-task counts on Redis: what `/metrics` and the status page show per task name.

The built-in broker counts tasks as they pass it (`minitask.broker.taskstats`). Redis has no
process of ours to do that, so each worker counts what it sees and adds its counts to one
hash of the virtual host (``mt:{v}:tasks``) about once a second (HINCRBY, HINCRBYFLOAT)::

    FETCH ── a task message delivered to this worker ──────> received
    store_result ── SUCCESS / FAILURE / RETRY / REVOKED ──> succeeded, failed, retried,
                                                            revoked (and the run time)
    a revoked or expired message the worker drops ────────> revoked

The hash only grows, whatever workers come and go, as a Prometheus counter must. What a
worker counted in its last second is lost with it if it is killed; a task a sweeper fails
for a lost worker (WorkerLostError) is not counted as failed. `read` turns the hash into the
shape of `TaskStats.report()`, folding names past `MAX_NAMES` into `OTHER`.
"""

import bisect
import collections
import time

from .. import protocol as P
from ..broker.taskstats import EVENTS, RUNTIME_BUCKETS, finish_rows, row_of

__all__ = ["Tally", "read", "WRITE_EVERY"]

WRITE_EVERY = 1.0                  # seconds between a worker's writes of its counts
_EVENT_OF = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried",
             "REVOKED": "revoked"}
_NOT_TASKS = (b"minitask.control", b"minitask.control.reply")
_INFINITY = float("inf")


class Tally:
    """One worker's counts since it last wrote them. Fields of the hash are
    ``"<event>\\t<name>"``, ``"b<bucket index>\\t<name>"`` (not cumulative), ``"sum\\t<name>"``
    and ``"count\\t<name>"``."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.counts = collections.Counter()
        self.sums = collections.Counter()
        self.due = clock() + WRITE_EVERY

    def received(self, data):
        try:
            name = P.type_bytes_of(data)
        except (IndexError, ValueError):
            return                      # malformed: dropped, and logged, by the consumer
        if name and name not in _NOT_TASKS:
            self.counts["received\t" + name.decode("utf-8", "replace")] += 1

    def finished(self, name, state, runtime=None):
        event = _EVENT_OF.get(state)
        if event is None or not name:
            return
        self.counts["%s\t%s" % (event, name)] += 1
        if event == "succeeded" and runtime is not None and 0.0 <= runtime < _INFINITY:
            self.counts["b%d\t%s" % (bisect.bisect_left(RUNTIME_BUCKETS, runtime), name)] += 1
            self.counts["count\t" + name] += 1
            self.sums["sum\t" + name] += runtime

    def take(self, key, force=False):
        """The commands that add the counts to hash `key`, once WRITE_EVERY has passed (or
        with `force`); the counts start again from zero."""
        now = self.clock()
        if not (force or now >= self.due) or not (self.counts or self.sums):
            return []
        self.due = now + WRITE_EVERY
        commands = [("HINCRBY", key, field, count) for field, count in self.counts.items()]
        commands += [("HINCRBYFLOAT", key, field, repr(value))
                     for field, value in self.sums.items()]
        self.counts.clear()
        self.sums.clear()
        return commands


def read(flat):
    """The task hash (HGETALL's reply) in the shape of `TaskStats.report()`."""
    rows = {}
    for field, value in zip(flat[0::2], flat[1::2]):
        kind, _tab, name = field.decode("utf-8", "replace").partition("\t")
        row = row_of(rows, name)
        try:
            if kind in EVENTS:
                row[kind] += int(value)
            elif kind == "sum":
                row["runtime"]["sum"] += float(value)
            elif kind == "count":
                row["runtime"]["count"] += int(value)
            elif kind.startswith("b"):
                row["runtime"]["buckets"][int(kind[1:])] += int(value)
        except (ValueError, IndexError):
            continue                    # a field of some other release: not ours to show
    return finish_rows(rows)
