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

import time

from .. import protocol as P
from ..broker.taskstats import EVENTS, TaskStats, finish_rows, row_of

__all__ = ["Tally", "read", "WRITE_EVERY"]

WRITE_EVERY = 1.0                  # seconds between a worker's writes of its counts


class Tally:
    """One worker's counts since it last wrote them: a `TaskStats` of its own, which `take`
    turns into commands and starts afresh. Fields of the hash are ``"<event>\\t<name>"``,
    ``"b<bucket index>\\t<name>"`` (not cumulative), ``"sum\\t<name>"`` and
    ``"count\\t<name>"``."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.stats = TaskStats()
        self.due = clock() + WRITE_EVERY

    def received(self, data):
        try:
            name = P.type_bytes_of(data)
        except (IndexError, ValueError):
            return                      # malformed: dropped, and logged, by the consumer
        self.stats.received(name)

    def finished(self, name, state, runtime=None):
        self.stats.finished(name, state, runtime)

    def take(self, key, force=False):
        """The commands that add the counts to hash `key`, once WRITE_EVERY has passed (or
        with `force`); the counts start again from zero."""
        now = self.clock()
        if not (force or now >= self.due):
            return []
        self.due = now + WRITE_EVERY
        rows, self.stats = self.stats.report(), TaskStats()
        commands = []
        for name, row in rows.items():
            commands += [("HINCRBY", key, "%s\t%s" % (event, name), row[event])
                         for event in EVENTS if row[event]]
            runtime, before = row["runtime"], 0
            for index, total in enumerate(runtime["buckets"]):     # cumulative
                if total > before:
                    commands.append(("HINCRBY", key, "b%d\t%s" % (index, name), total - before))
                before = total
            if runtime["count"]:
                commands += [("HINCRBY", key, "count\t" + name, runtime["count"]),
                             ("HINCRBYFLOAT", key, "sum\t" + name, repr(runtime["sum"]))]
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
