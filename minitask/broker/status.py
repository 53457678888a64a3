"""What `python -m minitask status` and the status page show, computed from the broker state.

Plain data (JSON-ready dicts); rates are left to whoever polls, from the counters here.
`scheduled_report` lists the countdowns the broker holds, for ``inspect scheduled``.
"""

import os

from .. import protocol as P
from ..exceptions import ProtocolError
from .session import OPEN
from .topology import dead_letter_name

__all__ = ["status_report", "scheduled_report"]


def status_report(state):
    """A snapshot of queues, exchanges, workers and running tasks."""
    now = state.clock()
    queues = [{
        "name": queue.name, "ready": queue.ready, "unacked": queue.unacked,
        "delayed": queue.delayed, "consumers": len(queue.consumers),
        "durable": queue.durable, "exclusive": queue.exclusive,
        "published": queue.published, "delivered": queue.delivered, "acked": queue.acked,
        "dead_lettered": queue.dead_lettered, "max_length": queue.max_length,
    } for queue in sorted(state.queues.values(), key=lambda q: q.name)]
    for row in queues:
        dead = state.queues.get(dead_letter_name(row["name"]))
        row["dead"] = dead.ready if dead is not None else 0
    exchanges = [dict(exchange.describe(), bindings=len(exchange.bindings))
                 for exchange in sorted(state.exchanges.values(), key=lambda e: e.name)
                 if exchange.name]
    workers = []
    running_rows = []
    clients = 0
    for session in state.sessions.values():
        if session.stage != OPEN:
            continue
        if not session.info:
            clients += 1
            continue
        if not session.consumers:       # still setting up: not yet able to answer control
            continue
        info = dict(session.info)
        started_late = _started_unacked(session, state.results.inflight)
        info.update(peer=session.peer, session=session.id,
                    connected_for=round(now - session.connected_at, 3),
                    unacked=len(session.unacked), prefetch=session.prefetch,
                    handed_over=len(session.started), delivered=session.delivered,
                    reserved=len(session.unacked) - len(started_late),
                    running=len(session.started) + len(started_late))
        workers.append(info)
        for task_id, data in started_late:
            running_rows.append(_running_row(task_id, data, info))
        for task_id in sorted(session.started):
            running_rows.append(_running_row(task_id, None, info,
                                             state.handovers.names.get(task_id, "")))
    running = sorted(state.results.inflight.items())
    journal = state.journal
    return {
        "broker": {"version": state.options.version, "pid": os.getpid(),
                   "uptime": round(now - state.started_at, 3), "time": now,
                   "connections": len(state.sessions), "clients": clients,
                   "unroutable": state.messages.unroutable, "results": len(state.results),
                   "revoked": len(state.revoked), "persistent": journal.enabled,
                   "fsync": journal.fsync_policy,
                   "journal_bytes": journal.total_bytes(),
                   "journal_live_bytes": journal.live_bytes(),
                   "journal_records_lost": journal.records_lost,
                   "journal_faults": len(journal.faults),
                   "next_message_id": state.messages.next_message_id},
        "queues": queues,
        "exchanges": exchanges,
        "workers": sorted(workers, key=lambda w: (str(w.get("hostname")), w["session"])),
        "tasks": {"received": sum(1 for _, s in running if s == "RECEIVED"),
                  "started": [task_id for task_id, s in running if s == "STARTED"][:200]},
        "recent_failures": [{"time": when, "task_id": task_id} for when, task_id
                            in reversed(state.result_commands.recent_failures)],
        "states": list(P.STATES),
        "running": running_rows[:_RUNNING_ROWS],
        "task_stats": state.task_stats.report(),
    }


# Enough to see what the workers are busy with; the count per worker is always exact.
_RUNNING_ROWS = 200


def _started_unacked(session, inflight):
    """``(task_id, data)`` of the messages this session started but has not acked (acks late)."""
    out = []
    for message in session.unacked.values():
        task_id = P.message_id_of(message.data)
        if inflight.get(task_id) == "STARTED":
            out.append((task_id, message.data))
    return out


def _running_row(task_id, data, worker, name=""):
    """A running task: named by its unacked message (acks late) or by its handover."""
    if data is not None:
        try:
            name = P.parse_message(data).type
        except ProtocolError:
            name = ""               # a message the broker could route is all we need here
    return {"task_id": task_id, "task": name, "worker": str(worker.get("hostname") or ""),
            "pid": worker.get("pid"), "session": worker["session"]}


def scheduled_report(messages):
    """The delayed `messages` (held until their ETA) as STATUS lists them:
    ``[{"id", "name", "eta", "queue", "priority"}]``."""
    out = []
    for message in messages:
        try:
            fields = P.parse_message(message.data)
        except ProtocolError:
            continue                # checked when published; a listing must not fail for one
        out.append({"id": fields.message_id, "name": fields.type, "eta": fields.not_before,
                    "queue": message.queue.name, "priority": message.priority})
    return out
