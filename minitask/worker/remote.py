"""Remote control: what a worker does with a command from the control exchange.

Each handler takes the worker and the command's arguments and returns a JSON-able reply,
which goes back to the asker's queue when the command names one (`minitask.control`).
Unknown methods and bad arguments get an ``{"error": ...}`` reply; a command whose envelope
is not what a client sends (a destination, reply queue or ticket of another type) is ignored
with one log line. Neither ever stops the worker: the control stream is input like any other.
"""

import logging
import signal as signals
import time

from .. import control, protocol as P
from ..exceptions import MinitaskError
from ..message import TaskMessage
from ..task import registry

__all__ = ["handle_control", "HANDLERS"]

logger = logging.getLogger(__name__)


def handle_control(worker, body):
    destination, reply_to = body.get("destination"), body.get("reply_to")
    ticket = body.get("ticket", "")
    if isinstance(destination, str):
        destination = [destination]     # one name, as Python callers may give it
    if not (destination is None or _names(destination)) or \
            not (reply_to is None or isinstance(reply_to, str)):
        logger.error("ignored a control command whose destination or reply_to is not what a "
                     "client sends: %.200r", body)
        return
    if destination and worker.hostname not in destination:
        return
    method = body.get("method")
    arguments = body.get("arguments") or {}
    handler = HANDLERS.get(method) if isinstance(method, str) else None
    if handler is None:
        reply = {"error": "unknown control method %.100r" % (method,)}
    elif not isinstance(arguments, dict):
        reply = {"error": "arguments must be an object"}
    else:
        try:
            reply = handler(worker, **arguments)
        except (TypeError, ValueError, KeyError, MinitaskError) as exc:
            reply = {"error": "%s: %s" % (method, exc)}
    if reply_to and worker.consumer.connected:
        ticket = ticket if isinstance(ticket, str) else ""
        data = P.encode_message(control.reply_message(reply_to, ticket, worker.hostname, reply))
        if len(data) > worker.consumer.max_body:   # the broker would drop the connection
            logger.error("the reply to %s takes %d bytes, over the broker's frame limit of "
                         "%d; answering that instead", method, len(data),
                         worker.consumer.max_body)
            reply = {"error": "%s: the reply takes %d bytes, over the broker's frame limit of "
                              "%d" % (method, len(data), worker.consumer.max_body)}
            data = P.encode_message(control.reply_message(reply_to, ticket, worker.hostname,
                                                          reply))
        worker.consumer.reply(reply_to, data)


def _names(value):
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _string(name, value):
    if not isinstance(value, str):
        raise TypeError("%s must be a string" % name)
    return value


def ping(worker):
    return "pong"


def revoke(worker, task_ids, terminate=False, signal="SIGTERM"):
    if isinstance(task_ids, str):
        task_ids = [task_ids]
    if not _names(task_ids):
        raise TypeError("task_ids must be a list of ids")
    signum = getattr(signals, str(signal).upper(), None)
    if not isinstance(signum, int):
        raise ValueError("unknown signal %r" % (signal,))
    worker.revoke(task_ids, terminate=terminate, signum=signum)
    return {"ok": "revoked %d task(s)" % len(task_ids)}


def rate_limit(worker, task_name, rate_limit):
    worker.set_rate_limit(_string("task_name", task_name), rate_limit)
    logger.info("rate limit of %s set to %r", task_name, rate_limit)
    return {"ok": "rate limit of %s set to %r" % (task_name, rate_limit)}


def shutdown(worker):
    worker.stop()
    return {"ok": "shutting down"}


def add_consumer(worker, queue):
    if worker.consumer.add_queue(_string("queue", queue)):
        return {"ok": "consuming from %r" % queue}
    return {"ok": "already consuming from %r" % queue}


def cancel_consumer(worker, queue):
    if worker.consumer.cancel_queue(_string("queue", queue)):
        return {"ok": "no longer consuming from %r" % queue}
    return {"error": "not consuming from %r" % queue}


def _job_info(job, now=None):
    info = {"id": job.task_id, "name": job.task_name, "redelivered": job.redelivered,
            "acks_late": job.acks_late}
    info["args"], info["kwargs"] = _shown_args(job.data)
    if job.started_at:
        info["time_start"] = job.started_at
        info["runtime"] = round((now or time.time()) - job.started_at, 6)
    if job.child is not None:
        info["worker_pid"] = job.child.pid
    return info


def _shown_args(data):
    """The call's arguments as Celery's inspect shows them, ``("(8,)", "{}")``: its
    argsrepr and kwargsrepr when it gave them. Only a JSON body is read here (the worker's
    main process never unpickles); for another, or one that does not decode, ``"..."``."""
    try:
        message = TaskMessage.from_bytes(data, ("json",))
    except MinitaskError:
        return "...", "..."
    return message.shown_args()


def active(worker):
    now = time.time()
    jobs = [worker.pool.running_job(child) for child in worker.pool.alive()]
    return [_job_info(job, now) for job in jobs if job is not None]


def scheduled(worker):
    """Each with its `eta` (epoch seconds), and the task again as `request`, where Celery's
    items have it (``item['request']['id']``)."""
    items = []
    for due, job in worker.scheduler.items():
        info = _job_info(job)
        items.append(dict(info, eta=due, request=info))
    return items


def reserved(worker):
    running = {id(job) for job in (worker.pool.running_job(child)
                                   for child in worker.pool.alive()) if job is not None}
    queued = [job for child in worker.pool.alive() for job in child.jobs
              if id(job) not in running and not job.start_noticed]
    return [_job_info(job) for job in list(worker.ready) + queued]


def revoked(worker):
    return sorted(worker.revoked)


def query_task(worker, ids):
    """Celery's ``query_task``: ``{id: [state, task]}`` for those of `ids` this worker
    holds, the state "active" (running), "reserved" (waiting for a pool process) or
    "scheduled" (waiting for its eta or a rate token); the task as `active` lists it."""
    if isinstance(ids, str):
        ids = [ids]
    if not _names(ids):
        raise TypeError("ids must be a list of task ids")
    wanted, found = set(ids), {}
    for state, tasks in (("active", active(worker)), ("reserved", reserved(worker)),
                         ("scheduled", scheduled(worker))):
        for info in tasks:
            if info["id"] in wanted:
                found.setdefault(info["id"], [state, info])
    return found


def registered(worker):
    return sorted(registry.tasks)


def stats(worker):
    return worker.stats()


HANDLERS = {
    "ping": ping, "revoke": revoke, "rate_limit": rate_limit, "shutdown": shutdown,
    "add_consumer": add_consumer, "cancel_consumer": cancel_consumer, "active": active,
    "scheduled": scheduled, "reserved": reserved, "revoked": revoked,
    "query_task": query_task,
    "registered": registered, "stats": stats,
}
