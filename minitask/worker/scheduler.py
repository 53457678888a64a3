"""The worker's heap of timed jobs: tasks whose ETA is near, and tasks waiting for a rate token.

`Scheduler(clock)` takes its clock, so tests move time with a fake clock. Entries are
``(due, seq, item)``: `seq` is a running counter, so equal due times come out in the order
they went in and items are never compared. Jobs waiting for a token are taken out again when their rate limit changes (`remove`);
nothing else is cancelled in place: a job that must not
run any more (revoked, or from a lost connection) is dropped by the worker when it comes out.
"""

import heapq
import itertools

__all__ = ["Scheduler"]


class Scheduler:
    """Items due at given times, popped in (due, insertion) order."""

    def __init__(self, clock):
        self.clock = clock
        self._heap = []
        self._counter = itertools.count()

    def __len__(self):
        return len(self._heap)

    def enter(self, due, item):
        """Schedule `item` at `due` (the clock's time)."""
        heapq.heappush(self._heap, (due, next(self._counter), item))

    def pop_due(self, now=None):
        """Every item due by `now` (default: the clock), in order."""
        now = self.clock() if now is None else now
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def next_due(self):
        """When the next item is due, or None."""
        return self._heap[0][0] if self._heap else None

    def remove(self, matches):
        """Take out the items `matches(item)` picks; they are returned soonest first."""
        taken = [entry for entry in self._heap if matches(entry[2])]
        if taken:
            self._heap = [entry for entry in self._heap if not matches(entry[2])]
            heapq.heapify(self._heap)
        return [item for _due, _seq, item in sorted(taken, key=lambda e: e[:2])]

    def items(self):
        """Items with their due times, soonest first (for `inspect scheduled`)."""
        return [(due, item) for due, _seq, item in sorted(self._heap, key=lambda e: e[:2])]
