"""Chords and the other joins of workflows, in the broker: durable, atomic with results.

The part of `BrokerState` that holds parked chord bodies and publishes what the outcomes the
broker sees unlock (`minitask.joins` decides; this part stores and journals):

- A message published with header ``"x-chord-wait"`` is *parked*, not routed: journalled as
  a PUBLISH record under the reserved queue name `PARKED` (no queue has it), so the journal
  machinery keeps it (compaction copies it forward) and replay finds it again.
- Each final result stored (by a worker's RESULT_SET, or by the broker itself) is counted
  by `Joins`. A body whose results are all in is released: an ACK record for its parked
  copy and a PUBLISH for its routed one join the records of that result's command, so they
  are written together (inside an ATOMIC, in its one COMPOUND record). A body whose header
  failed gets FAILURE ChordError instead, and its errbacks are published.
- Outcomes the broker writes itself for a message (REVOKED, expired, WorkerLostError) go
  through `failed_message`: the message's errbacks ("x-errbacks") are published and the rest
  of its chain ("x-chain") gets the same result, as a worker does for its own failures.
- After a restart `recover` parks every body found in the journal again and counts the
  results present: a body whose last result was written but not its release (a write torn
  between records) is released then, so nothing is stranded and nothing released twice.
- Results a parked or released body still needs do not expire (`keep`).
"""

import logging

from .. import protocol as P
from ..joins import Joins, Parked, chord_error, chord_wait, headers_of, unlocked_by
from . import records as rc
from .queue import StoredMessage

__all__ = ["Chords", "PARKED"]

logger = logging.getLogger(__name__)

# The journal's queue name for a parked chord body. A NUL byte starts it: no name a client
# declares looks like it (declaring one is refused).
PARKED = "\x00chord-bodies"


class _Parking:
    """Stands in for a queue in a parked body's StoredMessage (journal accounting only)."""

    name = PARKED


PARKING = _Parking()


class Chords:
    """Parked chord bodies, and what results and the broker's own outcomes unlock."""

    def __init__(self, clock, options, sink, messages, results):
        self.clock = clock
        self.result_expires = options.result_expires
        self.sink = sink
        self.messages = messages
        self.results = results
        self.joins = Joins()
        results.on_final = self.result_final
        results.on_failed_message = self.failed_message
        results.store.keep = self.joins.pinned
        messages.chord_wait = self.wait_ids
        messages.park = self.park

    def __len__(self):
        return len(self.joins)

    # -- parking ---------------------------------------------------------------------------

    def wait_ids(self, data, fields):
        """The ids a message waits for when it is a chord body to park, else None."""
        return chord_wait(headers_of(data, fields))

    def park(self, session, seq, data, fields, ids):
        """Hold chord body `data` until the results `ids` are in (PUBLISH with
        "x-chord-wait")."""
        sink = self.sink
        if fields.message_id in self.joins.parked:
            sink.confirm(session, seq)      # sent again (a client's retry): held already
            return
        held = self._held(data)
        parked = Parked(fields.message_id, bytes(data), ids, held)
        records = []
        if sink.persist:
            record = rc.publish_record(held.id, 0, PARKED, held.data)
            sink.add(record)
            sink.track(held)
            records.append(record)
        decisions = self.joins.park(parked, self._final_state)
        if sink.open is not None:
            sink.on_refuse(lambda: self._unpark(parked))
        else:
            sink.unit(session, seq, [], records, undo=[lambda: self._unpark(parked)])
        self._apply(decisions, None)
        sink.confirm(session, seq)

    def _held(self, data):
        messages = self.messages
        held = StoredMessage(messages.next_message_id, bytes(data), PARKING, P.DEFAULT_PRIORITY,
                             None, True)
        messages.next_message_id += 1
        return held

    def _unpark(self, parked):
        """The park was refused (its journal write failed): forget the body."""
        self.joins.forget(parked)
        self.sink.untrack(parked.held)

    def _final_state(self, task_id):
        entry = self.results.store.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            return entry.state
        return None

    # -- outcomes --------------------------------------------------------------------------

    def result_final(self, task_id, state, name=None):
        """A final result was stored for `task_id` (by anyone; `name` its task's when
        known): count it."""
        joins = self.joins
        if task_id in joins.watchers or task_id in joins.running:
            self._apply(joins.final(task_id, state), task_id, name)

    def _apply(self, decisions, trigger, name=None):
        """Release or fail the bodies `Joins` decided on, journalled with what is being
        written now (inside an ATOMIC, undone with it if it is refused)."""
        sink = self.sink
        for parked, failed_id, state in decisions:
            held = parked.held
            segment = held.segment
            if segment is not None:
                sink.untrack(held)
                sink.ids(rc.ACK, [held.id])
            if sink.open is not None:
                sink.on_refuse(lambda parked=parked, failed_id=failed_id, segment=segment:
                               self._undo(parked, failed_id, trigger, segment))
            if failed_id is None:
                logger.info("chord %s: every header result is in; body queued", parked.body_id)
                self.messages.publish_unlocked(parked.data)
            else:
                logger.warning("chord %s failed: header task %s ended in %s",
                               parked.body_id, failed_id, state)
                self.results.broker_result(parked.body_id, "FAILURE", chord_error(
                    parked.body_id, failed_id, state, name if failed_id == trigger else None),
                    self.clock(), P.parse_message(parked.data).type)
                self.failed_message(parked.body_id, parked.data)

    def _undo(self, parked, failed_id, trigger, segment):
        self.joins.undo(parked, failed_id, trigger)
        if segment is not None and parked.held.segment is None:
            self.sink.track(parked.held, segment)

    def failed_message(self, task_id, data):
        """The task of message `data` ended in a FAILURE or REVOKED the broker stored: publish
        its errbacks, and give the rest of its chain the same result."""
        try:
            headers = headers_of(data)
        except P.ProtocolError as exc:
            logger.error("task %s: its workflow headers are unreadable, so no errback runs: %s",
                         task_id, exc)
            return
        if not headers:
            return
        errbacks, chained = unlocked_by(headers)
        entry = self.results.store.get(task_id)
        if chained and entry is not None:
            now = self.clock()
            for other in chained:
                if self._final_state(other) is None:
                    self.results.store_result(other, entry.state, entry.content_type,
                                              entry.payload, now, now + self.result_expires)
        for errback in errbacks:
            self.messages.publish_unlocked(errback)

    # -- after a restart -------------------------------------------------------------------

    def restore(self, found):
        """Park again the bodies replay found (``[(message id, data, segment)]``), after the
        results are placed; decide those whose results are all in (their records go into
        the first write). Returns how many are held."""
        messages = self.messages
        for message_id, data, segment in found:
            fields = P.parse_message(data)
            try:
                ids = chord_wait(headers_of(data, fields))
            except P.ProtocolError:
                ids = None
            if not ids:
                continue
            held = StoredMessage(message_id, bytes(data), PARKING, P.DEFAULT_PRIORITY, None,
                                 True)
            self.sink.track(held, segment)
            messages.next_message_id = max(messages.next_message_id, message_id + 1)
            parked = Parked(fields.message_id, held.data, ids, held)
            if fields.message_id in self.joins.parked:
                self.sink.untrack(held)
                self.sink.ids(rc.ACK, [message_id])
                continue
            self._apply(self.joins.park(parked, self._final_state), None)
        return len(self.joins)

    def record_for(self, held):
        """The record that keeps a parked body (compaction), or None once it is decided."""
        parked = None
        if held.data is not None:
            parked = self.joins.parked.get(P.message_id_of(held.data))
        if parked is None or parked.held is not held:
            return None
        return rc.publish_record(held.id, 0, PARKED, held.data)

    def live_objects(self):
        return [parked.held for parked in self.joins.parked.values()]
