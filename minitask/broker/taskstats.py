"""Counts per task name, and how long tasks ran: what a Flower user watches, kept by the broker.

Every task passes the broker twice, so it counts both ends there, however many workers run
and however often they restart::

    dispatch() ── a task message delivered to a consumer ──> received(type bytes)
    RESULT_SET ── SUCCESS / FAILURE / RETRY / REVOKED ─────> finished(name, state, runtime)
    the broker drops a revoked or expired message ─────────> finished(name, "REVOKED")
    a lost worker's task is failed by the broker ──────────> finished(name, "FAILURE")

Received is counted per delivery (a redelivered or retried task is received again, as a
Celery worker would report it). Run times are the worker's own measurement, carried by a
described RESULT_SET (protocol 3.4), and only those of tasks that succeeded go into the
histogram, as Flower's. Counts start at zero when the broker starts, as every Prometheus
counter may. Memory is bounded: past `MAX_NAMES` names, the rest are counted under `OTHER`.
"""

import bisect

__all__ = ["TaskStats", "EVENTS", "RUNTIME_BUCKETS", "MAX_NAMES", "OTHER", "row_of",
           "add_counts", "finish_rows"]

EVENTS = ("received", "succeeded", "failed", "retried", "revoked")
_EVENT_INDEX = {"SUCCESS": 1, "FAILURE": 2, "RETRY": 3, "REVOKED": 4}
# Upper bounds, in seconds: Prometheus' usual buckets, with finer ones below 5 ms (a no-op
# task takes well under one) and longer ones for batch work.
RUNTIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0)
MAX_NAMES = 1000
OTHER = "(other)"
_INFINITY = float("inf")
# Types of messages that are not tasks (minitask.control's); never counted as tasks.
_NOT_TASKS = (b"minitask.control", b"minitask.control.reply")


class _Counts:
    __slots__ = ("events", "buckets", "runtime_sum", "runtime_count")

    def __init__(self):
        self.events = [0] * len(EVENTS)
        self.buckets = [0] * (len(RUNTIME_BUCKETS) + 1)     # per bucket; the last is +Inf
        self.runtime_sum = 0.0
        self.runtime_count = 0


class TaskStats:
    """Counts of received, succeeded, failed, retried and revoked tasks, by task name."""

    def __init__(self):
        self._received = {}             # type bytes (None: OTHER) -> deliveries
        self._tasks = {}                # name -> _Counts

    def received(self, type_bytes):
        """A task message was delivered (hot path: no decoding, one dict update)."""
        counts = self._received
        count = counts.get(type_bytes)
        if count is not None:
            counts[type_bytes] = count + 1
        elif type_bytes and type_bytes not in _NOT_TASKS:
            key = type_bytes if len(counts) < MAX_NAMES else None
            counts[key] = counts.get(key, 0) + 1

    def finished(self, name, state, runtime=None):
        """A task ended in `state` (or retried); `runtime` in seconds when it ran and succeeded.
        Other states (STARTED, custom ones) are not counted."""
        index = _EVENT_INDEX.get(state)
        if index is None or not name:
            return
        counts = self._tasks.get(name)
        if counts is None:
            counts = self._counts_of(name)
        counts.events[index] += 1
        if index == 1 and runtime is not None and 0.0 <= runtime < _INFINITY:    # not NaN
            counts.buckets[bisect.bisect_left(RUNTIME_BUCKETS, runtime)] += 1
            counts.runtime_sum += runtime
            counts.runtime_count += 1

    def _counts_of(self, name):
        """The counts of a name not seen yet (of OTHER once there are MAX_NAMES)."""
        if len(self._tasks) >= MAX_NAMES:
            name = OTHER
        counts = self._tasks.get(name)
        if counts is None:
            counts = self._tasks[name] = _Counts()
        return counts

    def report(self):
        """``{name: {"received": n, ..., "runtime": {"buckets": [cumulative counts, the last
        for +Inf], "sum": s, "count": n}}}``, sorted by name; fresh data for another thread."""
        rows = {}
        for raw, count in self._received.items():
            name = OTHER if raw is None else raw.decode("utf-8", "replace")
            row_of(rows, name)["received"] += count
        for name, counts in self._tasks.items():
            add_counts(row_of(rows, name), dict(zip(EVENTS[1:], counts.events[1:]),
                                                runtime={"buckets": counts.buckets,
                                                         "sum": counts.runtime_sum,
                                                         "count": counts.runtime_count}))
        return finish_rows(rows)


def finish_rows(rows):
    """Rows of per-bucket counts (`row_of`, `add_counts`) as `TaskStats.report` gives them:
    names past MAX_NAMES folded into OTHER, buckets cumulative, sorted by name."""
    if len(rows) > MAX_NAMES:           # received and finished names differ: fold the rest
        for name in sorted(name for name in rows if name != OTHER)[MAX_NAMES - 1:]:
            add_counts(row_of(rows, OTHER), rows.pop(name))
    for row in rows.values():
        total, cumulative = 0, []
        for count in row["runtime"]["buckets"]:
            total += count
            cumulative.append(total)
        row["runtime"]["buckets"] = cumulative
    return {name: rows[name] for name in sorted(rows)}


def row_of(rows, name):
    """The row of `name` in `rows`, made with zero counts if it is not there yet."""
    row = rows.get(name)
    if row is None:
        row = rows[name] = dict({event: 0 for event in EVENTS}, runtime={
            "buckets": [0] * (len(RUNTIME_BUCKETS) + 1), "sum": 0.0, "count": 0})
    return row


def add_counts(row, other):
    """Add `other`'s counts (per bucket, not yet cumulative) to `row`."""
    for event in EVENTS:
        row[event] += other.get(event, 0)
    runtime, more = row["runtime"], other["runtime"]
    runtime["buckets"] = [a + b for a, b in zip(runtime["buckets"], more["buckets"])]
    runtime["sum"] += more["sum"]
    runtime["count"] += more["count"]
