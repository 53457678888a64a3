"""The worker's one heap of timed events: ETA tasks, rate-limit waits, time limits, timers.

`Scheduler(clock)` takes its clock, so tests move time with a fake clock's `advance()`.
Entries are ``(due, seq, item)``: `seq` is a running counter, so equal deadlines come out in
the order they went in and items are never compared. Cancelling marks an entry; `pop_due`
skips it (as `sched` in the standard library does not, which is why this is not `sched`).
"""

import heapq
import itertools

__all__ = ["Scheduler"]


class _Entry:
    __slots__ = ("due", "item", "cancelled")

    def __init__(self, due, item):
        self.due = due
        self.item = item
        self.cancelled = False


class Scheduler:
    """Items due at given times, popped in (due, insertion) order."""

    def __init__(self, clock):
        self.clock = clock
        self._heap = []
        self._counter = itertools.count()
        self._live = 0

    def __len__(self):
        return self._live

    def enter(self, due, item):
        """Schedule `item` at `due` (the clock's time); returns a handle for `cancel`."""
        entry = _Entry(due, item)
        heapq.heappush(self._heap, (due, next(self._counter), entry))
        self._live += 1
        return entry

    def enter_after(self, delay, item):
        return self.enter(self.clock() + delay, item)

    def cancel(self, entry):
        if not entry.cancelled:
            entry.cancelled = True
            self._live -= 1

    def pop_due(self, now=None):
        """Every item due by `now` (default: the clock), in order."""
        now = self.clock() if now is None else now
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if not entry.cancelled:
                entry.cancelled = True
                self._live -= 1
                due.append(entry.item)
        return due

    def next_due(self):
        """When the next live item is due, or None."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def items(self):
        """Live items with their due times, soonest first (for `inspect scheduled`)."""
        return [(due, entry.item) for due, _seq, entry in sorted(self._heap)
                if not entry.cancelled]
