"""Liveness on Redis: what happens when a worker dies, and the broker's clock.

With no broker process watching connections, workers watch each other:

- Each consumer keeps a heartbeat key alive (``heartbeat`` seconds, a URL option) and every
  few seconds renews it, and the lease of every entry it holds (RENEW). However long a task
  runs, its entry stays its worker's, so nothing runs twice for running long.
- Any worker, every half heartbeat, may `sweep`: under a lock that expires by itself (so a
  sweeper killed while holding it stops nothing), it finds consumers whose heartbeat expired
  and `reap`s them: their entries go back to their queues (flagged redelivered, their
  delivery count one higher), the tasks handed over to them are orphaned and fail with
  WorkerLostError after ``handover_grace`` unless a worker claims them. A dead worker's
  tasks come back within about 1.5 heartbeats, whatever their run time.
- The `backstop` catches what heartbeats cannot, such as entries a live worker forgot (an
  ack lost in a failover): any entry nobody renewed for `backstop_idle` seconds is given
  back, checked atomically against a renewal that came meanwhile.
- `housekeeping` does what is due on Redis's clock: delayed messages promoted to their
  streams, messages expired (their tasks REVOKED), orphans failed. Whoever is about to block
  on Redis runs it first and blocks no longer than until the next thing is due.
"""

import json
import logging

from ..exceptions import ReplyError
from . import redis_ops as ops
from .redis_givenup import send_given_up
from .redis_keys import GROUP, LEVELS, unpack
from .redis_replies import refused

__all__ = ["housekeeping", "reap", "sweep", "backstop", "backstop_idle"]

logger = logging.getLogger(__name__)

_LEVEL_NAMES = frozenset(str(level) for level in LEVELS)
# Entries listed per XPENDING call while reaping.
PENDING_BATCH = 500
LOST_WHY = "the worker running the task was lost"


def backstop_idle(heartbeat):
    """Seconds an entry may go unrenewed before the backstop takes it: eighteen renewals
    missed (a consumer renews every third of a heartbeat), a minute by default."""
    return 6.0 * heartbeat


def housekeeping(client, due=None):
    """Promote due delayed messages, expire due messages, fail due orphans. Returns
    ``(now, next due)`` in Redis's milliseconds (next due None when nothing waits). `due`:
    the reply of an `ops.due_call` the caller has run already (in a pipeline of its own)."""
    keys = client.keys
    if due is None:
        due = client.script(ops.due_call(keys))
    elif isinstance(due, ReplyError):
        raise refused(due)
    now, delayed, expiring, orphans, next_due = due
    # Members another program put there: dropped, each with a line (minitask's own are
    # delayed: queue, task id, level, serial; expiring: queue, task id, level, kind, ref).
    delayed, junk = _split(delayed, keys.delayed, lambda m: _parsed(m, 4))
    expiring, more = _split(expiring, keys.expiring, lambda m: _parsed(m, 5))
    orphans, most = _split(orphans, keys.orphans, _text)
    junk += more + most
    calls = [("ZREM", key, member) for key, member in junk]
    for key, member in junk:
        logger.error("%s: dropped %.80r from %s: not one minitask wrote",
                     client.options.display, member, key)
    if delayed:
        calls.append(ops.promote_call(keys, delayed))
    if expiring:
        calls.append(ops.expire_call(keys, client.ttl_ms, expiring))
    if orphans:
        calls.append(ops.lose_call(keys, client.ttl_ms, LOST_WHY,
                                   [task_id.decode("utf-8") for task_id in orphans]))
    gave_up = False
    for call, reply in zip(calls, client.run(calls) if calls else ()):
        if call[0] == "ZREM":
            continue
        if isinstance(reply, ReplyError):
            logger.error("%s: %s failed: %s", client.options.display, call[0], reply)
        elif call[0] is ops.S.EXPIRE:
            gave_up = reply > 0
        elif call[0] is ops.S.LOSE:
            gave_up = gave_up or bool(reply)    # their workflows, when they have one
            for task_id in reply:
                logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)",
                               task_id.decode("utf-8"))
    if gave_up:
        send_given_up(client)
    now = int(now)
    if calls:
        next_due = now                          # there may be more: look again at once
    return now, int(next_due) if next_due else None


def _split(members, key, read):
    """``(members `read` can read, [(key, member) it cannot])``."""
    good, bad = [], []
    for member in members:
        (good if read(member) is not None else bad).append(member)
    return good, [(key, member) for member in bad]


def _parsed(member, count):
    """The `count` fields of a schedule's member (`redis_keys.pack`), the third a priority
    level; None when another program put it there."""
    try:
        fields = unpack(member)
    except (ValueError, UnicodeDecodeError):
        return None
    return fields if len(fields) == count and fields[2] in _LEVEL_NAMES else None


def _text(member):
    try:
        return member.decode("utf-8")
    except UnicodeDecodeError:
        return None


def reap(client, consumer, queues, grace):
    """Everything `consumer` holds goes back to its queues (SETTLE), its handed-over tasks
    are orphaned and it is forgotten (RETIRE). For consumers that are gone, and for one
    closing or coming back itself. `queues`: every queue it consumed. Returns how many
    entries went back."""
    keys = client.keys
    topology = client.reload()
    given_back = 0
    while True:
        streams = [(queue, level, returned) for queue in queues for level in LEVELS
                   for returned in (True, False)]
        replies = client.run([("XPENDING", keys.stream(queue, level, returned), GROUP, "-",
                               "+", PENDING_BATCH, consumer)
                              for queue, level, returned in streams])
        settlement = ops.Settlement(keys)
        full = False
        for (queue, level, returned), reply in zip(streams, replies):
            if isinstance(reply, ReplyError) or not reply:
                continue                        # no such stream (never written, deleted)
            full = full or len(reply) == PENDING_BATCH
            for entry_id, _owner, _idle, _count in reply:
                held = ops.Held(0, queue, level, returned, entry_id.decode("ascii"), b"", 0)
                settlement.give_back(held, consumer, "requeue", topology)
        if settlement:
            _log_dead_letters(client.script(settlement.call(client.ttl_ms)))
            given_back += settlement.count
        if not full:
            break
    handovers = client.redis.execute("HGETALL", keys.handovers)
    mine = [task_id.decode("utf-8") for task_id, value in zip(handovers[0::2], handovers[1::2])
            if value.split(b"\t", 1)[0].decode("utf-8") == consumer]
    orphaned = client.script(ops.retire_call(keys, consumer, ops.ms(grace), list(queues), mine))
    if given_back or orphaned:
        logger.warning("%s: consumer %s is gone: %d messages back in their queues, %d "
                       "running tasks orphaned", client.options.display, consumer, given_back,
                       orphaned)
    return given_back


def sweep(client, holder, interval, grace):
    """If no one swept in the last `interval` seconds: reap every consumer whose heartbeat
    expired. Returns the consumers reaped (None when another worker holds the lock)."""
    keys = client.keys
    if not client.redis.execute("SET", keys.sweep, holder, "NX", "PX", ops.ms(interval)):
        return None
    flat = client.redis.execute("HGETALL", keys.consumers)
    described = {consumer.decode("utf-8"): value
                 for consumer, value in zip(flat[0::2], flat[1::2])}
    names = sorted(described)
    alive = client.run([("EXISTS", keys.heartbeat(name)) for name in names]) if names else []
    reaped = []
    for name, exists in zip(names, alive):
        if exists == 0:
            reap(client, name, consumed_queues(described[name]), grace)
            reaped.append(name)
    return reaped


def consumed_queues(description):
    """The queues a consumer's description says it ever consumed."""
    try:
        value = json.loads(description)
        return [str(name) for name in value.get("consumed", value.get("queues", []))]
    except (ValueError, AttributeError):
        return []


def backstop(client, holder, every, idle):
    """At most once per `every` seconds across all workers: give back every entry that its
    owner did not renew for `backstop_idle` of the owner's own heartbeat (a worker renews
    at its own pace, whatever the sweeper's heartbeat); `idle` seconds for an owner that
    does not say its heartbeat (gone, or of the release before). Returns how many went back
    (None: not this time)."""
    keys = client.keys
    if not client.redis.execute("SET", keys.backstop, holder, "NX", "PX", ops.ms(every)):
        return None
    flat = client.redis.execute("HGETALL", keys.consumers)
    idle_of = {consumer.decode("utf-8"): backstop_idle(heartbeat)
               for consumer, heartbeat in zip(flat[0::2], map(_heartbeat_of, flat[1::2]))
               if heartbeat}
    least = min([idle] + list(idle_of.values()))
    topology = client.reload()
    streams = [(queue, level, returned) for queue in sorted(topology.queues)
               for level in LEVELS for returned in (True, False)]
    replies = client.run([("XPENDING", keys.stream(queue, level, returned), GROUP, "IDLE",
                           ops.ms(least), "-", "+", PENDING_BATCH)
                          for queue, level, returned in streams])
    settlement = ops.Settlement(keys)
    for (queue, level, returned), reply in zip(streams, replies):
        if isinstance(reply, ReplyError):
            continue
        for entry_id, owner, unrenewed, _count in reply:
            owner = owner.decode("utf-8")
            limit = ops.ms(idle_of.get(owner, idle))
            if unrenewed < limit:
                continue
            held = ops.Held(0, queue, level, returned, entry_id.decode("ascii"), b"", 0)
            settlement.give_back(held, owner, "requeue", topology, min_idle=limit)
    if settlement:
        _log_dead_letters(client.script(settlement.call(client.ttl_ms)))
        logger.warning("%s: %d messages their workers stopped renewing went back to their "
                       "queues", client.options.display, settlement.count)
    return settlement.count


def _heartbeat_of(description):
    """The heartbeat (seconds) a consumer's description says it renews by, or None."""
    try:
        heartbeat = float(json.loads(description).get("heartbeat"))
    except (ValueError, TypeError, AttributeError):
        return None
    return heartbeat if heartbeat > 0 else None


def _log_dead_letters(reply):
    for task_id, queue, dead in reply or ():
        logger.warning("message %s of queue %r dead-lettered to %r after too many deliveries",
                       task_id.decode("utf-8"), queue.decode("utf-8"), dead.decode("utf-8"))
