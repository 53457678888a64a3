"""One turn of the broker's loop once the frames are in: the part without sockets.

The server runs `turn()` after reading and before sending, and `close()` when it stops; the
tests drive a state over a real journal with the same two, so all of them write, confirm and
deliver in the same order::

    state.tick(now)                         when something is due
    journal.write(the turn's records)       one write; + fsync under --fsync always
      └─ failed? state.refuse_turn()        its units get ERROR 507; nothing else is lost
    confirms: sent now, or held in order while an everysec fsync is over MAX_LAG behind
    journal.compact_step()                  bounded; only when there is work
    state.dispatch(); journal.write(DELIVERED records; kept for the next turn if it fails)
"""

import collections
import logging
import time

from .fsync import MAX_LAG
from .journal import JournalWriteError

__all__ = ["Loop"]

logger = logging.getLogger(__name__)

_UNKNOWN = object()


class Loop:
    """Write, confirm, compact and deliver for one `BrokerState` and its journal."""

    def __init__(self, state, clock=time.time, monotonic=time.monotonic,
                 compaction_interval=1.0):
        self.state = state
        self.journal = state.journal
        self.clock = clock
        self.monotonic = monotonic
        # How often to ask whether the journal wants compacting, when no pass is under way.
        self.compaction_interval = compaction_interval
        self._compaction_checked = float("-inf")
        self._deadline = _UNKNOWN
        # (journal generation, [(session, seq)]): confirms waiting for an fsync, oldest first
        self.held = collections.deque()

    def busy(self):
        """True when a turn has work without waiting for anything."""
        return self.state.wants_dispatch or self.journal.has_work()

    def timeout(self, limit):
        """Seconds until the state has something due, at most `limit` (and remembered, so
        the turn after it need not ask again)."""
        self._deadline = deadline = self.state.next_deadline()
        if deadline is None:
            return limit
        return min(limit, max(0.0, deadline - self.clock()))

    def turn(self, compact=True):
        state, journal = self.state, self.journal
        deadline, self._deadline = self._deadline, _UNKNOWN
        if deadline is _UNKNOWN:
            deadline = state.next_deadline()
        if deadline is not None and self.clock() >= deadline:
            state.tick(self.clock())
        self._write_turn()
        self._confirm()
        mono = self.monotonic()
        if compact and (journal.has_work()
                        or mono - self._compaction_checked >= self.compaction_interval):
            self._compact(mono)
        if state.wants_dispatch:
            state.dispatch()
            records = state.take_records()
            if records:
                try:
                    journal.write(records)
                except JournalWriteError:
                    state.retain(records)

    def close(self):
        """The last turn: write what is left, fsync, and send every confirm, held or not."""
        self._write_turn()
        self.journal.sync()
        while self.held:
            self.state.send_confirms(self.held.popleft()[1])
        self.state.confirm_turn()

    def _write_turn(self):
        records = self.state.take_records()
        if records:
            try:
                self.journal.write(records)
            except JournalWriteError as exc:
                self.state.refuse_turn(str(exc), records)

    def _confirm(self):
        """Send the turn's confirms, or hold them while the disk is behind.

        Under ``everysec`` an fsync runs in its own thread; once the oldest write no fsync
        covers is over MAX_LAG seconds old (`Journal.lagging`), confirms wait, in order,
        until an fsync covers their write, so a power cut can never take more than about
        that much of confirmed publishes however slow the disk. Everything else goes on.
        """
        state, journal, held = self.state, self.journal, self.held
        while held and journal.is_synced(held[0][0]):
            state.send_confirms(held.popleft()[1])
        if held or journal.lagging():
            confirms = state.take_confirms()
            if confirms:
                if not held and journal.throttle.allow("confirms held") is not None:
                    logger.warning("journal fsync is over %gs behind (a slow disk): confirms "
                                   "wait for it", MAX_LAG)
                held.append((journal.generation, confirms))
        else:
            state.confirm_turn()

    def _compact(self, mono):
        journal = self.journal
        if journal.compacting is None:
            self._compaction_checked = mono
            if not journal.wants_compaction():
                return
        started = self.monotonic()
        journal.compact_step(self.state)
        pause = self.monotonic() - started
        if pause > 0.05:
            logger.info("compaction step took %.1f ms", pause * 1000)
