"""`status` on Redis: the built-in broker's report (`minitask.broker.status`), same shape.

Read in two round trips from the keys the transport keeps (`redis_keys`). Where Redis has no
such figure the report says so plainly: ``results`` counts nothing (results expire by
themselves, uncounted), ``next_message_id`` is 0; the "journal" is Redis's AOF.
"""

import json

from .. import __version__, protocol as P
from ..exceptions import ProtocolError, ReplyError
from . import redis_ops as ops
from .redis_keys import WAITING_FIELDS, unpack
from .redis_replies import count_of, live_consumers, redis_ms
from .redis_scripts import PARKED_AT
from .redis_taskstats import read as task_stats
from .redis_topology import Topology

__all__ = ["status_report", "scheduled_report"]

_ROWS = 200                     # running tasks listed; the counts are always exact
_COUNTERS = ("published", "delivered", "acked", "dead_lettered", "unacked", "delayed")


def _info(text):
    if isinstance(text, ReplyError) or not text:
        return {}
    return dict(line.split(":", 1) for line in text.decode("utf-8", "replace").splitlines()
                if ":" in line)


def _hash(flat):
    if isinstance(flat, ReplyError) or not flat:
        return {}
    return {key.decode("utf-8"): value for key, value in zip(flat[0::2], flat[1::2])}


def status_report(client, scheduled=0):
    """The report, read from this vhost's keys; a ProtocolError when keys another program
    wrote there cannot be read (a figure that cannot is shown as 0)."""
    try:
        return _report(client, scheduled)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProtocolError("status: a key of vhost %r holds what minitask did not write "
                            "(%s: %s)" % (client.options.vhost, type(exc).__name__, exc)) \
            from None


def _report(client, scheduled):
    keys = client.keys
    (now, info, snapshot, consumers, inflight, handovers, stats, revoked, failures,
     fsync, task_counts) = client.run([
        ("TIME",), ("INFO",), ops.snapshot_call(keys), ("HGETALL", keys.consumers),
        ("HGETALL", keys.inflight), ("HGETALL", keys.handovers), ("HGETALL", keys.stats),
        ("ZCARD", keys.revoked), ("LRANGE", keys.failures, 0, 49),
        ("CONFIG", "GET", "appendfsync"), ("HGETALL", keys.tasks)])
    now_ms = redis_ms(now)
    topology = Topology.from_snapshot(snapshot)
    consumers = {name: _described(value) for name, value in _hash(consumers).items()}
    queue_names, names = sorted(topology.queues), sorted(consumers)
    replies = client.run(
        [command for name in queue_names for command in (
            ("HGETALL", keys.queue_stats(name)), ("HGETALL", keys.queue_consumers(name)))]
        + [command for name in names for command in (
            ("EXISTS", keys.heartbeat(name)), ("HGETALL", keys.consumer_stats(name)))])
    split = 2 * len(queue_names)
    tasks, handed = _tasks(inflight, handovers)
    workers, running = _workers(names, consumers, replies[split:], tasks, handed, now_ms)
    return {
        "broker": _broker(client, _info(info), now_ms, len(workers), _hash(stats), revoked,
                          fsync),
        "queues": _queues(topology, queue_names, replies[:split], now_ms),
        "exchanges": [dict(exchange.describe(), bindings=len(exchange.bindings))
                      for name, exchange in sorted(topology.exchanges.items())],
        "workers": sorted(workers, key=lambda w: (str(w.get("hostname")), w["session"])),
        "tasks": {"received": sum(1 for state, _, _ in tasks.values() if state == "RECEIVED"),
                  "started": sorted(task_id for task_id, (state, _, _) in tasks.items()
                                    if state == "STARTED")[:_ROWS]},
        "recent_failures": [{"time": count_of(when) / 1000.0, "task_id": task_id}
                            for when, _, task_id in (item.decode("utf-8", "replace")
                                                     .partition(" ") for item in failures)
                            ] if isinstance(failures, list) else [],
        "states": list(P.STATES),
        "task_stats": task_stats(task_counts if isinstance(task_counts, list) else []),
        "running": running[:_ROWS],
        **({"scheduled": scheduled_report(client, scheduled)} if scheduled else {})
    }


def scheduled_report(client, limit):
    """Up to `limit` delayed messages, soonest first, as the built-in broker lists them:
    ``[{"id", "name", "eta", "queue", "priority"}]``. Parked chord bodies are not listed
    (the built-in broker does not list them either)."""
    keys = client.keys
    members = client.redis.execute("ZRANGEBYSCORE", keys.delayed, "-inf", "(%d" % PARKED_AT,
                                   "LIMIT", 0, max(0, int(limit)))
    if not members:
        return []
    datas = client.redis.execute("HMGET", keys.delayed_messages, *members)
    out = []
    for member, data in zip(members, datas):
        if data is None:
            continue                # promoted between the two reads
        try:
            queue, _task_id, level, _serial = unpack(member)
            fields = P.parse_message(data)
        except (ValueError, ProtocolError):
            continue                # checked when published; a listing must not fail for one
        out.append({"id": fields.message_id, "name": fields.type, "eta": fields.not_before,
                    "queue": queue, "priority": int(level)})
    return out


def _described(value):
    """A consumer's description; a dict of nothing when it is not one minitask wrote."""
    try:
        described = json.loads(value)
    except ValueError:
        return {}
    return described if isinstance(described, dict) else {}


def _queues(topology, names, replies, now_ms):
    """A row per queue from its stats and its consumers (HGETALL replies, two a queue)."""
    rows = {}
    for at, name in enumerate(names):
        counts = {field: count_of(value) for field, value in _hash(replies[2 * at]).items()}
        definition = topology.queues[name]
        rows[name] = dict(
            {field: counts.get(field, 0) for field in _COUNTERS}, name=name,
            ready=sum(counts.get(field, 0) for field in WAITING_FIELDS),
            consumers=len(live_consumers(replies[2 * at + 1] or [], now_ms)),
            durable=definition.args["durable"], exclusive=definition.args["exclusive"],
            max_length=definition.args["max_length"])
    for name, row in rows.items():
        dead = rows.get(topology.queues[name].dead_letter()[0])
        row["dead"] = dead["ready"] if dead is not None else 0
    return [rows[name] for name in names]


def _tasks(inflight, handovers):
    """``({task id: (state, consumer, task name)}, {consumer: [(task id, task name)]})``:
    every task delivered and not acked, and those handed over, by consumer."""
    tasks, handed = {}, {}
    for task_id, value in _hash(inflight).items():
        state, consumer, name = (value.decode("utf-8").split("\t") + ["", ""])[:3]
        tasks[task_id] = (state, consumer, name)
    for task_id, value in _hash(handovers).items():
        consumer, _, name = value.decode("utf-8").partition("\t")
        handed.setdefault(consumer, []).append((task_id, name))
        tasks[task_id] = ("STARTED", consumer, name)
    return tasks, handed


def _workers(names, consumers, replies, tasks, handed, now_ms):
    """A row per live consumer, and the running tasks of all of them."""
    workers, running = [], []
    for at, name in enumerate(names):
        if replies[2 * at] != 1:
            continue                        # its heartbeat expired: a sweeper will reap it
        counts = {field: count_of(value)
                  for field, value in _hash(replies[2 * at + 1]).items()}
        described = consumers[name]
        mine = sorted(handed.get(name, ()))
        late = sorted((task_id, task_name) for task_id, (state, owner, task_name)
                      in tasks.items() if owner == name and state == "STARTED"
                      and task_id not in dict(mine))
        unacked = counts.get("unacked", 0)
        row = dict(described, peer="redis", session=name,
                   connected_for=round(now_ms / 1000.0 - described.get("connected_at", 0), 3),
                   unacked=unacked, prefetch=counts.get("prefetch", 0),
                   handed_over=len(mine), delivered=counts.get("delivered", 0),
                   reserved=unacked - len(late), running=len(mine) + len(late))
        for key in ("consumed", "connected_at", "consumer"):
            row.pop(key, None)
        workers.append(row)
        running.extend({"task_id": task_id, "task": task_name, "pid": row.get("pid"),
                        "worker": str(row.get("hostname") or ""), "session": name}
                       for task_id, task_name in late + mine)
    return workers, running


def _broker(client, info, now_ms, workers, stats, revoked, fsync):
    """The "broker" part: Redis's own figures where the built-in broker has its own."""
    connections = int(info.get("connected_clients", "0") or 0)
    aof = info.get("aof_enabled", "0").strip() == "1"
    fsync = fsync[1].decode("ascii") if isinstance(fsync, list) and len(fsync) > 1 else "?"
    return {"version": "minitask %s (%s %s)" % (__version__, client.redis.server_name or
                                                "redis", info.get("redis_version", "?").strip()),
            "transport": "redis", "url": client.options.display,
            "vhost": client.options.vhost, "pid": int(info.get("process_id", "0") or 0),
            "uptime": float(info.get("uptime_in_seconds", "0") or 0),
            "time": now_ms / 1000.0, "connections": connections,
            # Each worker has two connections (see redis_consumer).
            "clients": max(0, connections - 2 * workers),
            "unroutable": int(stats.get("unroutable", 0)), "results": 0,
            "revoked": int(revoked) if isinstance(revoked, int) else 0,
            "persistent": aof, "fsync": fsync if aof else "no",
            "journal_bytes": int(info.get("aof_current_size", "0") or 0),
            "journal_live_bytes": int(info.get("aof_base_size", "0") or 0),
            "used_memory": int(info.get("used_memory", "0") or 0), "next_message_id": 0}
