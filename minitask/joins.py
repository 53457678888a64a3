"""Chord joins as a broker keeps them: which parked bodies wait for which results.

A chord is sent as its body's message, *parked* (its header ``"x-chord-wait"`` lists the
result ids it waits for), and its header's tasks. A broker never decodes task payloads, so
all it needs is in message headers (JSON, `minitask.message`):

- a parked body is held, not queued, until every id it waits for has a final result;
- a header task's first final result counts, once: a task that ran twice (at-least-once
  delivery) is not counted twice, and a later result cannot undo a decision;
- a SUCCESS brings the body closer; when none is left to wait for, the body is *released*
  (routed and queued, in the same durable step as that last result);
- a FAILURE or REVOKED *fails* the chord: the broker stores FAILURE `ChordError` naming the
  task for the body's id, and publishes the body's errbacks; the body never runs;
- header results stay (do not expire) until the body has a final result, since the body's
  worker reads them.

`Joins` is that bookkeeping alone, with no storage: the built-in broker
(`minitask.broker.chords`) and the memory transport each call it and do what it decides.
The helpers read the workflow headers of an encoded message (protocol section 3.1).
"""

from . import protocol as P
from .exceptions import ChordError, ProtocolError, SerializationError
from .sending import failure_unlocks

__all__ = ["Parked", "Joins", "headers_of", "chord_wait", "unlocked_by", "chord_error"]

FAILED_STATES = ("FAILURE", "REVOKED")


def headers_of(data, fields=None):
    """The headers of encoded message `data` ({} when it has none); ProtocolError if
    malformed. Cheap for a message without headers (the usual case)."""
    fields = fields or P.parse_message(data)
    at = fields.headers_at
    if data[at] == 0 and data[at + 1] == 0:
        return {}
    return P.headers_of(data, at)


def chord_wait(headers):
    """The result ids a parked chord body waits for (its "x-chord-wait"), or None for any
    other message. ProtocolError if the header is malformed."""
    ids = headers.get("x-chord-wait")
    if ids is None:
        return None
    if not isinstance(ids, list) or not ids or not all(isinstance(one, str) and one
                                                       for one in ids):
        raise ProtocolError("x-chord-wait must be a non-empty list of task ids")
    return ids


def unlocked_by(headers):
    """``(errback messages, ids of the rest of its chain)`` that a FAILURE or REVOKED of the
    task with these message headers unlocks; nothing when they are malformed (the outcome is
    stored all the same: a malformed header must not keep it from being stored)."""
    try:
        return failure_unlocks(headers)
    except SerializationError:
        return [], []


def chord_error(body_id, header_id, state, name=""):
    """The ChordError a failed chord's body gets, naming the header task (and its name when
    the broker knows it)."""
    task = "%s[%s]" % (name, header_id) if name else header_id
    return ChordError("chord %s: header task %s ended in %s, so the body never runs"
                      % (body_id, task, state))


class Parked:
    """A chord body held by the broker: its message, the ids it waits for and those left.
    `held` is what the broker keeps for it (its stored message, for the journal)."""

    __slots__ = ("body_id", "data", "ids", "waiting", "held")

    def __init__(self, body_id, data, ids, held=None):
        self.body_id = body_id
        self.data = data
        self.ids = list(ids)
        self.waiting = set(ids)
        self.held = held


class Joins:
    """Parked bodies, who waits for what, and the results that must stay (see the module
    docstring). Every method returns the decisions it makes: ``[(parked, failed_id, state)]``,
    `failed_id` None for a body to release."""

    def __init__(self):
        self.parked = {}                # body id -> Parked
        self.watchers = {}              # header result id -> set of body ids waiting for it
        self.pins = {}                  # result id -> bodies, parked or running, that read it
        self.running = {}               # body id -> its ids: released, not final yet

    def __len__(self):
        return len(self.parked)

    def park(self, parked, state_of):
        """Hold `parked`; `state_of(task_id)` is a result's final state, or None. Returns the
        decision at once when results it waits for are in already (after a replay, say)."""
        if parked.body_id in self.parked:
            return []                   # the same body sent again: it is held already
        self.parked[parked.body_id] = parked
        for task_id in parked.ids:
            self.pins[task_id] = self.pins.get(task_id, 0) + 1
        for task_id in parked.ids:
            state = state_of(task_id)
            if state in FAILED_STATES:
                return [self._decide(parked, task_id, state)]
            if state is not None:
                parked.waiting.discard(task_id)
        if not parked.waiting:
            return [self._decide(parked, None, None)]
        for task_id in parked.waiting:
            self.watchers.setdefault(task_id, set()).add(parked.body_id)
        return []

    def final(self, task_id, state):
        """A final result was stored for `task_id`; returns the decisions it makes."""
        if task_id in self.running:
            self._unpin(self.running.pop(task_id))
        bodies = self.watchers.pop(task_id, None)
        if not bodies:
            return []
        decisions = []
        for body_id in sorted(bodies):
            parked = self.parked.get(body_id)
            if parked is None:
                continue
            if state in FAILED_STATES:
                decisions.append(self._decide(parked, task_id, state))
                continue
            parked.waiting.discard(task_id)
            if not parked.waiting:
                decisions.append(self._decide(parked, None, None))
        return decisions

    def _decide(self, parked, failed_id, state):
        del self.parked[parked.body_id]
        for task_id in parked.waiting:
            bodies = self.watchers.get(task_id)
            if bodies is not None:
                bodies.discard(parked.body_id)
                if not bodies:
                    del self.watchers[task_id]
        if failed_id is None:
            self.running[parked.body_id] = parked.ids
        else:
            self._unpin(parked.ids)
        return parked, failed_id, state

    def undo(self, parked, failed_id, trigger):
        """A decision was refused (its journal write failed, with the result `trigger` that
        made it): hold the body again, waiting for that result. With no trigger the body
        was decided as it was parked, and the park is refused too: forget it."""
        if failed_id is None:
            self.running.pop(parked.body_id, None)
        if trigger is None:
            if failed_id is None:
                self._unpin(parked.ids)
            return
        if failed_id is not None:
            for task_id in parked.ids:
                self.pins[task_id] = self.pins.get(task_id, 0) + 1
        self.parked[parked.body_id] = parked
        parked.waiting.add(trigger)
        for task_id in parked.waiting:
            self.watchers.setdefault(task_id, set()).add(parked.body_id)

    def forget(self, parked):
        """Drop a body still parked (its park was refused): as if never sent."""
        if self.parked.get(parked.body_id) is not parked:
            return
        del self.parked[parked.body_id]
        for task_id in parked.waiting:
            bodies = self.watchers.get(task_id)
            if bodies is not None:
                bodies.discard(parked.body_id)
                if not bodies:
                    del self.watchers[task_id]
        self._unpin(parked.ids)

    def _unpin(self, ids):
        for task_id in ids:
            count = self.pins.get(task_id, 0) - 1
            if count > 0:
                self.pins[task_id] = count
            else:
                self.pins.pop(task_id, None)

    def pinned(self, task_id):
        """Whether a body still needs `task_id`'s result (it must not expire yet)."""
        return task_id in self.pins
