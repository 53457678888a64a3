"""Results, revokes, handovers, leases and durable settings: the commands about tasks.

The part of `BrokerState` that keeps what is known of tasks beyond their messages. The
result store answers blocking waits the moment a final state arrives. REVOKE keeps the ids
until their results would expire (`BrokerState` then tells every worker through the control
exchange). A task acked as started stays its connection's (a handover); if the connection
goes and no worker claims it within the grace period, the broker stores FAILURE /
WorkerLostError. Results the broker writes itself (REVOKED, WorkerLostError) are built by
`minitask.message.encode_result_meta`, as a worker's are.

`Messages` reads `store.inflight`, `revoked` and `handovers` here, and calls `task_revoked`
for a message it drops unrun.

Inside an ATOMIC unit, every change here registers with the sink how to undo it, and waits
on a result the unit stores are answered only once the unit is written.
"""

import functools
import logging
import math

from .. import protocol as P
from ..exceptions import DeadLetteredError, ProtocolError, TaskRevokedError, WorkerLostError
from ..message import ResultMeta, encode_result_meta
from . import records as rc
from .arguments import name_arg, names_arg, seconds_arg
from .results import Handovers, ResultEntry, ResultStore, Revoked, Waiter
from .session import CLOSED

__all__ = ["ResultCommands"]

logger = logging.getLogger(__name__)

# STATUS lists this many of the most recent failures.
RECENT_FAILURES = 50
_MISSING = object()
# What RESULT_SET returns when it kept a SUCCESS (the rest of its ATOMIC unit is void).
SUCCEEDED_ALREADY = "succeeded already"


class ResultCommands:
    """Results, revoked ids, handovers, leases and settings, and the commands about them."""

    def __init__(self, clock, options, sink, task_stats):
        self.clock = clock
        self.result_expires = options.result_expires
        self.sink = sink
        self.task_stats = task_stats
        self.store = ResultStore()
        self.revoked = Revoked()
        self.handovers = Handovers(options.handover_grace)
        self.kv = {}
        self.leases = {}                # name -> (holder, expires_at)
        self.recent_failures = []       # (time, task id), newest last
        self._unwritten = set()         # ids whose result an ATOMIC of this turn stored
        # Set by the chords part: on_final(task_id, state) after a final result is stored;
        # on_failed_message(task_id, data) after the broker stored FAILURE or REVOKED for
        # the task of message `data` (its errbacks run).
        self.on_final = None
        self.on_failed_message = None

    # -- results -------------------------------------------------------------------------------

    def result_set(self, session, seq, body):
        task_id, state, flags, ttl, content_type, payload, name, runtime = \
            P.decode_result_set(body)
        if not task_id:
            raise ProtocolError("RESULT_SET needs a task_id")
        if not math.isfinite(ttl) or ttl < 0:
            raise ProtocolError("RESULT_SET time to live must be a finite number of seconds")
        if state == "STARTED":
            self._running_state(session, seq, task_id, content_type, payload, ttl)
            return None
        # An older worker does not describe its results: name those the broker knows.
        self.task_stats.finished(name or self.handovers.names.get(task_id), state, runtime)
        if self.sink.open is not None:
            self.sink.on_refuse(functools.partial(
                self._undo_finish, task_id, self.handovers.checkpoint(task_id),
                self.store.inflight.get(task_id)))
        handed = self.handovers.finish(task_id)
        # As Celery's result backends: a SUCCESS is never replaced by another state. A copy
        # of the task that ended otherwise (dropped as revoked or expired, failed, retried)
        # changes nothing, and what it unlocks is void (`succeeded_already`).
        kept = state != "SUCCESS" and self.succeeded_already(task_id)
        store = flags & P.STORE and not kept
        if handed and not store:
            self.sink.names(rc.FINISHED, [task_id])
        if store:
            now = self.clock()
            self.store_result(task_id, state, content_type, payload, now,
                              now + (ttl if ttl > 0 else self.result_expires),
                              name or self.handovers.names.get(task_id))
        else:
            self.store.inflight.pop(task_id, None)
        if handed:
            # After the records that end the handover: a write torn between them leaves
            # the task still orphaned with its message, or done with it.
            self.release_kept(task_id)
        self.sink.confirm(session, seq)
        return SUCCEEDED_ALREADY if kept else None

    def _running_state(self, session, seq, task_id, content_type, payload, ttl):
        """A running task's own state (update_state, protocol 3.4): kept as its result
        until it ends, unless it has ended already; the task stays running."""
        entry = self.store.get(task_id)
        if entry is None or entry.state not in P.READY_STATES:
            now = self.clock()
            self.store_result(task_id, "STARTED", content_type, payload, now,
                              now + (ttl if ttl > 0 else self.result_expires))
        self.sink.confirm(session, seq)

    def succeeded_already(self, task_id):
        """Whether `task_id` has SUCCESS stored for good: not by a unit of this turn, which
        a failed write may still refuse (the result it would then have kept is stored)."""
        entry = self.store.get(task_id)
        return entry is not None and entry.state == "SUCCESS" \
            and task_id not in self._unwritten

    def _undo_finish(self, task_id, handover, inflight):
        """Put back the handover and in-flight state a refused unit's RESULT_SET ended,
        unless the task was handed over again meanwhile (that newer handover stands)."""
        if task_id in self.handovers.owner:
            return
        self.handovers.restore(task_id, handover)
        owner = handover[0]
        if getattr(owner, "stage", None) == CLOSED:
            # Its connection closed in that turn: the task is an orphan, as it would be
            # had the result never come.
            owner.started.discard(task_id)
            self.handovers.orphan(task_id, self.clock())
        if inflight is not None:
            self.store.inflight[task_id] = inflight

    def store_result(self, task_id, state, content_type, payload, now, expires_at, name=None):
        """Keep a result (journalled), and answer whoever waits for it if it is final;
        `name`: the task's, when known (a failed chord names it)."""
        entry = ResultEntry(task_id, state, content_type, payload, now, expires_at)
        store, sink = self.store, self.sink
        unit = sink.open
        if unit is not None:
            old = store.get(task_id)
            sink.on_refuse(functools.partial(self._undo_store, entry, old,
                                             old.segment if old else None,
                                             store.inflight.get(task_id)))
            self._unwritten.add(task_id)
            sink.after_write(functools.partial(self._unwritten.discard, task_id))
        old = store.set(entry)
        if old is not None:
            sink.untrack(old)
        if sink.persist:
            sink.add(rc.result_record(entry))
            sink.track(entry)
        if state == "FAILURE":
            self.recent_failures.append((now, task_id))
            del self.recent_failures[:-RECENT_FAILURES]
        if state in P.READY_STATES:
            if unit is not None:
                sink.after_write(functools.partial(self._answer_waiters, task_id))
            elif task_id in store.waiters:
                self._answer_waiters(task_id)
            if self.on_final is not None:
                self.on_final(task_id, state, name)

    def _undo_store(self, entry, old, segment, inflight):
        """Put back what a refused unit's `store_result` replaced, unless it was replaced
        again since (by a command outside the unit, which stands)."""
        self._unwritten.discard(entry.task_id)
        if self.store.get(entry.task_id) is entry:
            self.sink.untrack(self.store.restore(entry.task_id, old, inflight))
            if segment is not None:
                self.sink.track(old, segment)

    def _answer_waiters(self, task_id):
        entry = self.store.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            for waiter in self.store.take_waiters(task_id):
                self._answer(waiter, entry)

    def _answer(self, waiter, entry):
        if waiter.session.stage != CLOSED:
            waiter.session.send(self._result_frame(waiter.seq, waiter.task_id, entry))

    def _result_frame(self, seq, task_id, entry):
        if entry is None:
            state = self.store.state_of(task_id)
            return P.encode_result(P.RESULT, seq, task_id, state, 0, 0.0, "", b"")
        ready = P.READY if entry.state in P.READY_STATES else 0
        return P.encode_result(P.RESULT, seq, task_id, entry.state, ready, entry.date_done,
                               entry.content_type, entry.payload)

    def result_get(self, session, seq, body):
        task_id = name_arg(P.decode_json(body, "RESULT_GET"), "task_id")
        session.send(self._result_frame(seq, task_id, self.store.get(task_id)))

    def result_wait(self, session, seq, body):
        args = P.decode_json(body, "RESULT_WAIT")
        task_id = name_arg(args, "task_id")
        timeout = seconds_arg(args, "timeout")
        entry = self.store.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            session.send(self._result_frame(seq, task_id, entry))
            return
        deadline = None if timeout is None else self.clock() + timeout
        self.store.add_waiter(Waiter(session, seq, task_id, deadline))

    def result_forget(self, session, seq, body):
        args = P.decode_json(body, "RESULT_FORGET")
        forgotten = []
        if args.get("expired"):
            self._expire_results(self.clock())
        for task_id in names_arg(args, "task_ids"):
            entry = self.store.forget(task_id)
            if entry is not None:
                self.sink.untrack(entry)
                forgotten.append(task_id)
        self.sink.names(rc.FORGET, forgotten)
        session.reply(seq, {"forgotten": len(forgotten)})

    def _expire_results(self, now):
        for entry in self.store.expire(now):
            self.sink.untrack(entry)

    def broker_result(self, task_id, state, exc, now, name=None):
        """Store a result the broker decides itself, built as a worker builds one."""
        meta = ResultMeta(task_id, state, exc, date_done=now)
        content_type, payload = encode_result_meta(meta, "json")
        self.store_result(task_id, state, content_type, payload, now, now + self.result_expires,
                          name)

    def task_revoked(self, task_id, why, data=None):
        """Store REVOKED for a task that will never run (`why`: revoked, expired...)."""
        self._gave_up(task_id, "REVOKED", TaskRevokedError("task %s %s" % (task_id, why)),
                      data)

    def task_dead_lettered(self, task_id, why, data):
        """Store FAILURE (DeadLetteredError) for a task whose message the broker gave up on
        (`why`: dead-lettered after too many deliveries, rejected...)."""
        self._gave_up(task_id, "FAILURE", DeadLetteredError("task %s %s" % (task_id, why)),
                      data)

    def _gave_up(self, task_id, state, exc, data):
        """Store the final `state` of a task the broker will not deliver again, unless it has
        a final result already. With its message `data`, what that unlocks runs: its
        errbacks, and the rest of its chain gets the same result."""
        if not task_id:
            return
        entry = self.store.get(task_id)
        if entry is None or entry.state not in P.READY_STATES:
            self.broker_result(task_id, state, exc, self.clock())
        elif entry.state == "SUCCESS":
            return                      # a copy of a task that succeeded: nothing failed
        if data is not None and self.on_failed_message is not None:
            self.on_failed_message(task_id, data)

    def release_kept(self, task_id):
        """The handover of `task_id` is over: the message kept for it goes (ACKed in the
        journal). Returns it, or None."""
        kept = self.handovers.messages.pop(task_id, None)
        if kept is None:
            return None
        segment = kept.segment
        if segment is not None:
            self.sink.untrack(kept)
            self.sink.ids(rc.ACK, [kept.id])
        self.sink.on_refuse(functools.partial(self._keep_again, task_id, kept, segment))
        return kept

    def _keep_again(self, task_id, kept, segment):
        """A refused unit had released this kept message: keep it after all, unless the
        task was handed over again meanwhile (the newer one stands; this one's ACK, refused
        with the unit, is written again)."""
        if task_id in self.handovers.messages:
            if segment is not None:
                self.sink.ids(rc.ACK, [kept.id])
            return
        self.handovers.messages[task_id] = kept
        if segment is not None:
            self.sink.track(kept, segment)

    def _worker_lost(self, task_id, now):
        # Its failure, what that unlocks and the release of its kept message: all or none.
        mark = self.sink.mark()
        name = self.handovers.names.pop(task_id, None)
        kept = self.handovers.messages.get(task_id)
        if name is None and kept is not None:   # names are not journalled: after a restart
            name = P.parse_message(kept.data).type
        entry = self.store.get(task_id)
        if entry is None or entry.state not in P.READY_STATES:
            self.task_stats.finished(name, "FAILURE")
            logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)",
                           task_id)
            self.broker_result(task_id, "FAILURE",
                               WorkerLostError("the worker running the task was lost"), now,
                               name)
            if kept is not None and self.on_failed_message is not None:
                self.on_failed_message(task_id, kept.data)
        else:
            # Done already (the broker stored its outcome meanwhile): the handover ends all
            # the same, so that replay does not orphan it again, and it is not running.
            self.sink.names(rc.FINISHED, [task_id])
            self.store.inflight.pop(task_id, None)
        self.release_kept(task_id)
        self.sink.bundle(mark)

    # -- revokes and handovers -----------------------------------------------------------------

    def revoke(self, body):
        """REVOKE: remember the ids, mark those not running REVOKED; returns the arguments
        of the control broadcast that tells the workers."""
        args = P.decode_json(body, "REVOKE")
        task_ids = names_arg(args, "task_ids")
        expires_at = self.clock() + self.result_expires
        for task_id in task_ids:
            self.revoked.add(task_id, expires_at)
            if task_id not in self.store.inflight and task_id not in self.handovers.owner:
                self.task_revoked(task_id, "revoked")
        if self.sink.persist and task_ids:
            self.sink.add(rc.revoke_record(expires_at, task_ids))
        return {"task_ids": task_ids, "terminate": bool(args.get("terminate", False)),
                "signal": str(args.get("signal") or "SIGTERM")}

    def revoked_list(self, session, seq, body):
        session.reply(seq, {"task_ids": sorted(self.revoked.ids)})

    def claim(self, session, seq, body):
        claimed = 0
        for task_id in names_arg(P.decode_json(body, "CLAIM"), "task_ids"):
            if self.handovers.claim(task_id, session):
                self.store.inflight[task_id] = "STARTED"
                claimed += 1
        session.reply(seq, {"claimed": claimed})

    def session_closed(self, session, now):
        """Its handed-over tasks become orphans; its waits are dropped."""
        if session.started:
            self.handovers.orphan_all(session, now)
        self.store.drop_waiters_of(session)

    # -- leases and settings -------------------------------------------------------------------

    def lease(self, session, seq, body):
        args = P.decode_json(body, "LEASE")
        name, holder = name_arg(args, "name"), name_arg(args, "holder")
        ttl = seconds_arg(dict({"ttl": 10}, **args), "ttl", maximum=3600)
        if not ttl:
            raise ProtocolError("'ttl' must be a number of seconds up to 3600")
        now = self.clock()
        current = self.leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            self.leases[name] = current = (holder, now + ttl)
        session.reply(seq, {"granted": current[0] == holder, "holder": current[0],
                            "expires_in": current[1] - now})

    def kv_set(self, session, seq, body):
        args = P.decode_json(body, "KV_SET")
        key, value = name_arg(args, "key"), args.get("value")
        previous = self.kv.get(key, _MISSING)
        self.kv[key] = value
        self.sink.on_refuse(functools.partial(self._undo_setting, key, previous, value))
        self.sink.json(rc.KV, {"key": key, "value": value})
        session.reply(seq, {})

    def _undo_setting(self, key, previous, value):
        if self.kv.get(key, _MISSING) is value:         # not set again since
            if previous is _MISSING:
                del self.kv[key]
            else:
                self.kv[key] = previous

    def kv_get(self, session, seq, body):
        key = name_arg(P.decode_json(body, "KV_GET"), "key")
        session.reply(seq, {"value": self.kv.get(key)})

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now):
        """Answer waits at their deadline, expire results and revoked ids, fail lost tasks."""
        for waiter in self.store.timed_out_waiters(now):
            self._answer(waiter, self.store.get(waiter.task_id))
        expiry = self.store.next_expiry()
        if expiry is not None and expiry <= now:
            self._expire_results(now)
        self.revoked.expire(now)
        for task_id in self.handovers.lost(now):
            self._worker_lost(task_id, now)

    def next_deadline(self):
        return _soonest(self.store.next_wait_deadline(), self.store.next_expiry(),
                        self.revoked.next_expiry(), self.handovers.next_deadline())


def _soonest(*times):
    known = [when for when in times if when is not None]
    return min(known) if known else None
