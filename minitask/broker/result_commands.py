"""Results, revokes, handovers, leases and durable settings: the commands about tasks.

The result store answers blocking waits the moment a final state arrives. REVOKE keeps the
ids until their results would expire and tells every worker through the control exchange.
A task acked as started stays its connection's (a handover); if the connection goes and no
worker claims it within the grace period, the broker stores FAILURE / WorkerLostError.
"""

import logging
import math

from .. import control, protocol as P, serialization
from ..exceptions import ProtocolError, WorkerLostError
from . import journal as jr
from .arguments import name_arg, names_arg, seconds_arg
from .queue import StoredMessage
from .results import ResultEntry, Waiter
from .session import CLOSED

__all__ = ["ResultCommands", "broker_meta", "kv_args", "MISSING"]

# What a setting that was never set "was", for undoing a setting.
MISSING = object()


def kv_args(body):
    """``(key, value)`` of a KV_SET body; ProtocolError when the key is not a short string."""
    args = P.decode_json(body, "KV_SET")
    return name_arg(args, "key"), args.get("value")

logger = logging.getLogger(__name__)


class ResultCommands:
    """BrokerState's commands about results, revokes, handovers, leases and settings."""

    def _result_set(self, session, seq, body):
        task_id, state, flags, ttl, content_type, payload, name, runtime = \
            P.decode_result_set(body)
        if not task_id:
            raise ProtocolError("RESULT_SET needs a task_id")
        if not math.isfinite(ttl) or ttl < 0:
            raise ProtocolError("RESULT_SET time to live must be a finite number of seconds")
        # An older worker does not describe its results: name those the broker knows.
        self.task_stats.finished(name or self.handovers.names.get(task_id), state, runtime)
        if self.handovers.finish(task_id) and self.persist and not flags & P.STORE:
            self.records.append(jr.names_record(jr.FINISHED, [task_id]))
        if flags & P.STORE:
            now = self.clock()
            self.store_result(task_id, state, content_type, payload, now,
                              now + (ttl if ttl > 0 else self.options.result_expires))
        else:
            self.results.inflight.pop(task_id, None)
        self._confirmable(session, seq)

    def store_result(self, task_id, state, content_type, payload, now, expires_at):
        """Keep a result (journalled), and answer whoever waits for it if it is final."""
        entry = ResultEntry(task_id, state, content_type, payload, now, expires_at)
        old = self.results.set(entry)
        if old is not None:
            self.journal.untrack(old)
        if self.persist:
            self.records.append(jr.result_record(entry))
            self.journal.track(entry)
        if state == "FAILURE":
            self.recent_failures.append((now, task_id))
            del self.recent_failures[:-50]
        if state in P.READY_STATES:
            for waiter in self.results.take_waiters(task_id):
                self._answer_waiter(waiter, entry)

    def _answer_waiter(self, waiter, entry):
        session = waiter.session
        if session.stage != CLOSED:
            session.send(self._result_frame(waiter.seq, waiter.task_id, entry))

    def _result_frame(self, seq, task_id, entry):
        if entry is None:
            state = self.results.state_of(task_id)
            return P.encode_result(P.RESULT, seq, task_id, state, 0, 0.0, "", b"")
        ready = P.READY if entry.state in P.READY_STATES else 0
        return P.encode_result(P.RESULT, seq, task_id, entry.state, ready, entry.date_done,
                               entry.content_type, entry.payload)

    def _result_get(self, session, seq, body):
        task_id = name_arg(P.decode_json(body, "RESULT_GET"), "task_id")
        session.send(self._result_frame(seq, task_id, self.results.get(task_id)))

    def _result_wait(self, session, seq, body):
        args = P.decode_json(body, "RESULT_WAIT")
        task_id = name_arg(args, "task_id")
        timeout = seconds_arg(args, "timeout")
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            session.send(self._result_frame(seq, task_id, entry))
            return
        deadline = None if timeout is None else self.clock() + timeout
        self.results.add_waiter(Waiter(session, seq, task_id, deadline))

    def _result_forget(self, session, seq, body):
        args = P.decode_json(body, "RESULT_FORGET")
        forgotten = []
        if args.get("expired"):
            self._expire_results(self.clock())
        for task_id in names_arg(args, "task_ids"):
            entry = self.results.forget(task_id)
            if entry is not None:
                self.journal.untrack(entry)
                forgotten.append(task_id)
        if forgotten and self.persist:
            self.records.append(jr.names_record(jr.FORGET, forgotten))
        self._reply(session, seq, {"forgotten": len(forgotten)})

    def _task_revoked(self, task_id, why):
        """Store REVOKED for a task that will never run (expired, revoked before it ran)."""
        if not task_id:
            return
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            return
        from ..exceptions import TaskRevokedError
        now = self.clock()
        content_type, payload = broker_meta(task_id, "REVOKED",
                                             TaskRevokedError("task %s %s" % (task_id, why)), now)
        self.store_result(task_id, "REVOKED", content_type, payload, now,
                          now + self.options.result_expires)

    def _revoke(self, session, seq, body):
        args = P.decode_json(body, "REVOKE")
        task_ids = names_arg(args, "task_ids")
        now = self.clock()
        expires_at = now + self.options.result_expires
        for task_id in task_ids:
            self.revoked.add(task_id, expires_at)
            if task_id not in self.results.inflight and task_id not in self.handovers.owner:
                self._task_revoked(task_id, "revoked")
        if self.persist and task_ids:
            self.records.append(jr.revoke_record(expires_at, task_ids))
        arguments = {"task_ids": task_ids, "terminate": bool(args.get("terminate", False)),
                     "signal": str(args.get("signal") or "SIGTERM")}
        self.publish_internal(control.command_message("revoke", arguments))
        self._reply(session, seq, {})

    def publish_internal(self, message):
        """Route a message the broker itself sends (control broadcasts); never persisted."""
        data = P.encode_message(message)
        exchange = self.exchanges.get(message.exchange)
        if exchange is None:
            return
        now = self.clock()
        for name in exchange.route(message.routing_key, message.headers):
            queue = self.queues[name]
            stored = StoredMessage(self.next_message_id, data, queue, P.DEFAULT_PRIORITY,
                                   None, False)
            self.next_message_id += 1
            self._place(stored, 0.0, now)

    def _revoked_list(self, session, seq, body):
        self._reply(session, seq, {"task_ids": sorted(self.revoked.ids)})

    def _claim(self, session, seq, body):
        claimed = 0
        for task_id in names_arg(P.decode_json(body, "CLAIM"), "task_ids"):
            if self.handovers.claim(task_id, session):
                self.results.inflight[task_id] = "STARTED"
                claimed += 1
        self._reply(session, seq, {"claimed": claimed})

    def _lease(self, session, seq, body):
        args = P.decode_json(body, "LEASE")
        name, holder = name_arg(args, "name"), name_arg(args, "holder")
        ttl = seconds_arg(dict({"ttl": 10}, **args), "ttl", maximum=3600)
        if not ttl:
            raise ProtocolError("'ttl' must be a number of seconds up to 3600")
        now = self.clock()
        current = self.leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            self.leases[name] = current = (holder, now + ttl)
        self._reply(session, seq, {"granted": current[0] == holder, "holder": current[0],
                                   "expires_in": current[1] - now})

    def _kv_set(self, session, seq, body):
        self._set_setting(*kv_args(body))
        self._reply(session, seq, {})

    def _set_setting(self, key, value):
        """Set a durable setting; returns ``(key, previous or MISSING, value)`` to undo it."""
        previous = self.kv.get(key, MISSING)
        self.kv[key] = value
        if self.persist:
            self.records.append(jr.json_record(jr.KV, {"key": key, "value": value}))
        return key, previous, value

    def _kv_get(self, session, seq, body):
        self._reply(session, seq, {"value": self.kv.get(name_arg(P.decode_json(body, "KV_GET"),
                                                              "key"))})

    def _expire_results(self, now):
        for entry in self.results.expire(now):
            self.journal.untrack(entry)

    def _worker_lost(self, task_id, now):
        name = self.handovers.names.pop(task_id, None)
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            return
        self.task_stats.finished(name, "FAILURE")
        logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)", task_id)
        content_type, payload = broker_meta(
            task_id, "FAILURE", WorkerLostError("the worker running the task was lost"), now)
        self.store_result(task_id, "FAILURE", content_type, payload, now,
                          now + self.options.result_expires)


def broker_meta(task_id, state, exc, now):
    """A result written by the broker itself (REVOKED, WorkerLostError), in JSON."""
    value = {"v": 1, "task_id": task_id, "task": "", "status": state, "result": exc,
             "traceback": None, "retries": 0, "date_done": now}
    return serialization.dumps(value, "json")

