"""What `python -m minitask status` and the status page show, computed from the broker state.

Plain data (JSON-ready dicts); rates are left to whoever polls, from the counters here.
"""

import os

from .. import protocol as P

__all__ = ["status_report"]


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
        row["dead"] = state.queues[row["name"] + ".dead"].ready \
            if row["name"] + ".dead" in state.queues else 0
    exchanges = [dict(exchange.describe(), bindings=len(exchange.bindings))
                 for exchange in sorted(state.exchanges.values(), key=lambda e: e.name)
                 if exchange.name]
    workers = []
    clients = 0
    for session in state.sessions.values():
        if session.stage != "open":
            continue
        if not session.info:
            clients += 1
            continue
        info = dict(session.info)
        info.update(peer=session.peer, session=session.id,
                    connected_for=round(now - session.connected_at, 3),
                    unacked=len(session.unacked), prefetch=session.prefetch,
                    handed_over=len(session.started), delivered=session.delivered)
        workers.append(info)
    running = sorted(state.results.inflight.items())
    journal = state.journal
    return {
        "broker": {"version": state.options.version, "pid": os.getpid(),
                   "uptime": round(now - state.started_at, 3), "time": now,
                   "connections": len(state.sessions), "clients": clients,
                   "unroutable": state.unroutable, "results": len(state.results),
                   "revoked": len(state.revoked), "persistent": journal.enabled,
                   "fsync": journal.fsync_policy,
                   "journal_bytes": journal.total_bytes(),
                   "journal_live_bytes": journal.live_bytes(),
                   "next_message_id": state.next_message_id},
        "queues": queues,
        "exchanges": exchanges,
        "workers": sorted(workers, key=lambda w: (str(w.get("hostname")), w["session"])),
        "tasks": {"received": sum(1 for _, s in running if s == "RECEIVED"),
                  "started": [task_id for task_id, s in running if s == "STARTED"][:200]},
        "recent_failures": [{"time": when, "task_id": task_id}
                            for when, task_id in reversed(state.recent_failures)],
        "states": list(P.STATES),
    }
