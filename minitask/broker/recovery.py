"""Rebuild the broker's state from its journal after a restart.

Records are applied in journal order (see journal.py for their meaning). Topology changes
are applied as they come; messages, results, revoked ids and handovers are gathered first and
placed at the end, so a message copied forward by compaction (its id seen twice) or acked
later in the journal costs nothing to undo. Messages that had been delivered come back
flagged redelivered, ahead of newer ones; tasks that were running under a connection become
orphans that their worker may claim within the grace period.
"""

import logging
import time

from .. import protocol as P
from . import records as rc
from ..joins import chord_wait, headers_of
from .chords import PARKED
from .queue import DELAYED, StoredMessage
from .results import HANDED, HANDING, KEEP_RECHECK, ResultEntry

__all__ = ["recover"]

logger = logging.getLogger(__name__)


class _Found:
    def __init__(self):
        self.messages = {}          # id -> [queue name, data, deliveries, segment]
        self.results = {}           # task id -> (ResultEntry, segment)
        self.revoked = {}           # task id -> expires_at
        self.started = set()
        self.records = 0


def recover(state):
    """Replay `state.journal` into `state`; returns a summary for the start-up log line."""
    began = time.monotonic()
    found = _Found()
    for segment, kind, payload in state.journal.replay():
        found.records += 1
        try:
            _apply(state, found, segment, kind, payload)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # The record passed its checksum, so this is a bug or a foreign file; keep going
            # with the rest rather than refuse to start with everything else intact.
            logger.error("journal %s: record of type %d could not be applied: %s",
                         segment.path, kind, exc)
    now = state.clock()
    parked, handed = [], []
    summary = _place_messages(state, found, now, parked, handed)
    summary["results"] = _place_results(state, found, now, _waited_for(parked))
    summary["chords"] = state.chords.restore(parked)
    for task_id, expires_at in found.revoked.items():
        if expires_at > now:
            state.revoked.add(task_id, expires_at)
    orphans, finished = 0, []
    for task_id in found.started:
        entry = state.results.get(task_id)
        if entry is None or entry.state not in P.READY_STATES:
            state.handovers.orphan(task_id, now)
            state.results.inflight[task_id] = "STARTED"
            orphans += 1
        else:
            finished.append(task_id)
    # Done already: their handovers end in the journal too, or they would be orphaned by a
    # later restart, once their results had gone.
    state.sink.names(rc.FINISHED, sorted(finished))
    _keep_handed(state, handed)
    state.journal.rewrite_faulty(state)
    summary.update(records=found.records, orphans=orphans, revoked=len(state.revoked),
                   records_lost=state.journal.records_lost, seconds=time.monotonic() - began)
    return summary


def _apply(state, found, segment, kind, payload):
    if kind == rc.PUBLISH:
        message_id, deliveries, queue, data = rc.decode_publish(payload)
        known = found.messages.get(message_id)
        if known is None:
            found.messages[message_id] = [queue, data, deliveries, segment]
        else:           # a copy (compaction, a release): its count is the count from then on
            # (a record holds at most 255, which means "at least": then the higher one)
            known[2] = deliveries if deliveries < 255 else max(known[2], deliveries)
            known[3] = segment
    elif kind == rc.ACK:
        for message_id in rc.decode_ids(payload):
            found.messages.pop(message_id, None)
    elif kind == rc.DELIVERED:
        messages = found.messages
        for message_id in rc.decode_ids(payload):
            known = messages.get(message_id)
            if known is not None:
                known[2] += 1
    elif kind == rc.RESULT:
        task_id, status, date_done, expires_at, content_type, body = rc.decode_result(payload)
        entry = ResultEntry(task_id, status, content_type, body, date_done, expires_at)
        found.results[task_id] = (entry, segment)
        if status != "STARTED":         # a running task's own state: it still runs
            found.started.discard(task_id)
    elif kind == rc.FORGET:
        for task_id in rc.decode_names(payload):
            found.results.pop(task_id, None)
    elif kind == rc.REVOKE:
        expires_at, task_ids = rc.decode_revoke(payload)
        for task_id in task_ids:
            found.revoked[task_id] = expires_at
    elif kind == rc.STARTED:
        found.started.update(rc.decode_names(payload))
    elif kind == rc.FINISHED:
        found.started.difference_update(rc.decode_names(payload))
    elif kind == rc.KV:
        item = rc.decode_json(payload)
        state.kv[item["key"]] = item["value"]
    elif kind == rc.TOPOLOGY:
        state.topology.apply(rc.decode_json(payload))
    elif kind == rc.SNAPSHOT:
        snapshot = rc.decode_json(payload)
        state.topology.apply_snapshot(snapshot)
        for expires_at, task_ids in snapshot.get("revoked", ()):
            for task_id in task_ids:
                found.revoked[task_id] = expires_at
        state.kv.update(snapshot.get("kv", {}))
        found.started.update(snapshot.get("started", ()))
    elif kind == rc.COMPOUND:                   # decoded whole first: all of it or none
        for sub_kind, sub_payload in rc.decode_compound(payload):
            _apply(state, found, segment, sub_kind, sub_payload)


def _place_messages(state, found, now, parked, handed):
    """Put the messages found back in their queues; chord bodies the broker held go in
    `parked`, and the messages kept for handed-over tasks in `handed`, as ``(id, data,
    segment)``."""
    placed = delayed = redelivered = 0
    orphaned = []
    track = state.sink.track
    for message_id in sorted(found.messages):
        queue_name, data, deliveries, segment = found.messages[message_id]
        if queue_name == PARKED:
            parked.append((message_id, data, segment))
            continue
        if queue_name == HANDED:
            handed.append((message_id, data, segment))
            continue
        queue = state.queues.get(queue_name)
        if queue is None:
            orphaned.append(message_id)
            continue
        fields = P.parse_message(data)
        priority = P.DEFAULT_PRIORITY if fields.priority is None else fields.priority
        message = StoredMessage(message_id, data, queue, priority, fields.expires_at or None,
                                True, deliveries)
        track(message, segment)
        state.messages.restore(message, fields.not_before, now)
        delayed += message.where == DELAYED
        redelivered += bool(deliveries) and message.where != DELAYED
        placed += 1
    if found.messages:
        state.messages.next_message_id = max(found.messages) + 1
    if orphaned:
        logger.warning("%d journalled messages belong to queues that no longer exist; dropped",
                       len(orphaned))
        state.sink.ids(rc.ACK, orphaned)        # so they stay gone
    return {"messages": placed, "delayed": delayed, "redelivered": redelivered}


def _keep_handed(state, handed):
    """Keep again the messages of handed-over tasks still orphaned (their worker may be
    gone: a WorkerLostError then unlocks their workflows); the rest are done with."""
    done = []
    for message_id, data, segment in handed:
        task_id = P.message_id_of(data)
        if task_id in state.handovers.orphans:
            older = state.handovers.messages.get(task_id)    # its release was not written
            if older is not None:
                state.sink.untrack(older)
                done.append(older.id)
            kept = StoredMessage(message_id, data, HANDING, P.DEFAULT_PRIORITY, None, True)
            state.handovers.messages[task_id] = kept
            state.sink.track(kept, segment)
        else:
            done.append(message_id)
    state.sink.ids(rc.ACK, done)


def _waited_for(parked):
    """The result ids the parked chord bodies wait for (those must not expire)."""
    ids = set()
    for _message_id, data, _segment in parked:
        try:
            ids.update(chord_wait(headers_of(data)) or ())
        except P.ProtocolError:
            continue                    # Chords.restore logs nothing of it either: not a body
    return ids


def _place_results(state, found, now, keep=()):
    count = 0
    for entry, segment in found.results.values():
        if entry.expires_at <= now:
            if entry.task_id not in keep:
                continue
            entry.expires_at = now + KEEP_RECHECK
        state.results.set(entry)
        state.sink.track(entry, segment)
        count += 1
    return count

