"""Calls of the Redis transport's scripts, laid out as each script reads them. Pure.

Every function returns ``(script, keys, args)`` for `RedisClient.run_script` or a pipeline
(`redis_scripts` documents what each script does with them); `parse_fetch` reads FETCH's
reply. Nothing here does I/O, so the layouts are tested without a server.
"""

import collections

from .. import protocol as P
from ..exceptions import ProtocolError, UnroutableError
from ..joins import chord_wait, headers_of, unlocked_by
from . import redis_scripts as S
from .redis_keys import pack, unpack

__all__ = ["Held", "Publication", "publication", "publish_call", "snapshot_call",
           "commit_call", "fetch_call", "parse_fetch", "Settlement", "register_call",
           "renew_call", "retire_call", "due_call", "promote_call", "expire_call", "lose_call",
           "claim_call", "revoke_call", "purge_call", "lease_call", "ms"]


def ms(seconds):
    """Whole milliseconds (what Redis's clock and TTLs count in)."""
    return int(round(seconds * 1000))


class Held:
    """A delivered entry a consumer holds until it acks or gives it back."""

    __slots__ = ("tag", "queue", "level", "returned", "id", "task_id", "data", "deliveries")

    def __init__(self, tag, queue, level, returned, id, data, deliveries):
        self.tag, self.queue, self.level, self.returned = tag, queue, level, returned
        self.id, self.data, self.deliveries = id, data, deliveries
        try:
            self.task_id = P.message_id_of(data)
        except (IndexError, UnicodeDecodeError):    # malformed, or not read (b"")
            self.task_id = ""

    def stream(self, keys):
        return keys.stream(self.queue, self.level, self.returned)

    @property
    def task_name(self):
        try:
            return P.parse_message(self.data).type
        except ProtocolError:
            return ""

    def handover(self):
        """``(task name, the message when it has headers else "")``: what SETTLE keeps of a
        task handed over as it starts (LOSE sends a lost task's errbacks from it)."""
        try:
            fields = P.parse_message(self.data)
        except ProtocolError:
            return "", ""
        return fields.type, (self.data if P.has_headers(self.data, fields.headers_at)
                             else "")


# -- topology --------------------------------------------------------------------------------

def snapshot_call(keys):
    return S.SNAPSHOT, [keys.topology, keys.exchanges, keys.queues, keys.bindings], []


def commit_call(keys, version, changes, delete=()):
    """Apply topology `changes` ((hash, op, field, value) tuples) if the version is still
    `version`; also delete the keys in `delete` (those of deleted queues)."""
    args = [version, len(changes)]
    call_keys = [keys.topology, keys.exchanges, keys.queues, keys.bindings, keys.stats]
    for change in changes:
        args.extend(change)
        hash_name, op, field, _value = change
        if hash_name == "queues" and op == "set":     # a new queue's stats get its 'born'
            call_keys.append(keys.queue_stats(field))
    return S.COMMIT, call_keys + list(delete), args


# -- publishing ------------------------------------------------------------------------------

class Publication:
    """One message routed by a cached topology: where it goes, at which priority.

    `park` is "" for a message to queue, "body" for a chord's body (held until its header's
    results are in: `wait_ids`, and `chain_ids`, the rest of its chain, which fails with
    it), "errback" for an errback of the body published before it (held, and released
    only if that chord fails)."""

    __slots__ = ("data", "fields", "targets", "level", "control", "park", "wait_ids",
                 "chain_ids", "group")

    def __init__(self, data, fields, targets, level, control, park="", wait_ids=(),
                 chain_ids=()):
        self.data, self.fields, self.targets, self.level = data, fields, targets, level
        self.control = control
        self.park, self.wait_ids, self.chain_ids = park, wait_ids, chain_ids
        # Consecutive messages of one group share one header in a PUBLISH call.
        self.group = (control, bool(fields.flags & P.IMMEDIATE), level, tuple(targets), park)


def publication(topology, data, fields=None, park=""):
    """Route an encoded message with `topology`: ProtocolError when it is malformed,
    BrokerError 404 when its exchange does not exist (reload the topology first)."""
    data = bytes(data)
    fields = fields or P.parse_message(data)
    names = topology.route(fields, data)
    level = P.DEFAULT_PRIORITY if fields.priority is None else fields.priority
    return Publication(data, fields, names or [], level, names is None, park)


def chord_publications(topology, data, fields=None):
    """The publications of a message: itself alone, or for a chord's parked body itself
    and its errbacks, held with it, all routed now. ProtocolError when its workflow headers
    are malformed, UnroutableError when the body matches no queue, BrokerError 404 when it
    or an errback names an exchange that does not exist."""
    fields = fields or P.parse_message(bytes(data))
    headers = headers_of(data, fields)
    wait_ids = chord_wait(headers) if headers else None
    if wait_ids is None:
        return [publication(topology, data, fields)]
    errbacks, chained = unlocked_by(headers)
    body = publication(topology, data, fields, "body")
    if not body.targets and not body.control:
        # Routed now, not when released (Redis runs no router of ours): refused rather
        # than parked where it could never be queued.
        raise UnroutableError("chord body %s: exchange %r with routing key %r matched no "
                              "queue (on Redis a chord's body is routed when it is sent)"
                              % (fields.message_id, fields.exchange, fields.routing_key))
    body.wait_ids, body.chain_ids = wait_ids, chained
    return [body] + [publication(topology, errback, park="errback") for errback in errbacks]


def publish_call(keys, version, ttl_ms, topology, publications, all_or_nothing=True,
                 record=None, result=None, release_ahead=0.5):
    """PUBLISH of `publications` under topology `version`; with `record` ``(key, json)``
    set first, with `result` ``(task_id, state, content_type, payload, store[, guard[,
    running]])`` stored. A result other than SUCCESS, and what the call publishes, is void
    when task `guard` (by default its own) has SUCCESS stored; a `running` task's own state
    (update_state) is stored unless it has a final result, and leaves it running. Delayed
    messages are released `release_ahead` seconds before they are due."""
    call_keys = [keys.topology, keys.stats, keys.delayed, keys.delayed_messages,
                 keys.expiring, keys.control]
    args = [version, ttl_ms, "all" if all_or_nothing else "each", ms(release_ahead)]
    # A result, a chord's body, or a message that may have expired (REVOKED stored at
    # once) may decide a chord: then the script needs the chord keys.
    if result is not None or any(item.park or item.fields.expires_at for item in publications):
        call_keys += keys.chord_keys
        args.append("1")
    else:
        args.append("0")
    if record is not None:
        call_keys.append(keys.kv)
        args += ["1", record[0], record[1]]
    else:
        args.append("0")
    if result is not None:
        call_keys += [keys.result(result[0]), keys.inflight, keys.handovers, keys.orphans,
                      keys.failures, keys.handed_messages]
        args += ["1"] + list(result[:4]) + [int(bool(result[4]))]
        guard = result[5] if len(result) > 5 else None
        if guard is not None:
            call_keys.append(keys.result(guard))
            args.append("1")
        else:
            args.append("0")
        args.append("1" if len(result) > 6 and result[6] else "0")
    else:
        args.append("0")
    groups = []
    for item in publications:
        if groups and groups[-1][0].group == item.group:
            groups[-1].append(item)
        else:
            groups.append([item])
    args.append(len(groups))
    for group in groups:
        control, immediate, level, targets, park = group[0].group
        args += [int(control), int(immediate), level, park, len(targets)]
        for name in targets:
            max_length = topology.queues[name].args["max_length"]
            args += [name, "" if max_length is None else max_length]
            call_keys += [keys.queue_stats(name), keys.bell(name), keys.stream(name, level)]
            if immediate:
                call_keys.append(keys.queue_consumers(name))
        args.append(len(group))
        for item in group:
            args.append(item.data)
            if item.fields.expires_at:
                call_keys.append(keys.result(item.fields.message_id))
            if park == "body":
                call_keys.append(keys.result(item.fields.message_id))
                args.append(len(item.wait_ids))
                for task_id in item.wait_ids:
                    args.append(task_id)
                    call_keys.append(keys.result(task_id))
                args.append(len(item.chain_ids))
                for task_id in item.chain_ids:
                    args.append(task_id)
                    call_keys.append(keys.result(task_id))
    return S.PUBLISH, call_keys, args


# -- consuming -------------------------------------------------------------------------------

def fetch_call(keys, consumer, credit, live_until, first, queues):
    call_keys = [keys.consumers, keys.consumer_stats(consumer), keys.inflight, keys.revoked,
                 keys.delayed, keys.expiring, keys.orphans]
    args = [consumer, credit, live_until, first, len(queues)]
    for name in queues:
        args.append(name)
        call_keys += [keys.queue_stats(name), keys.queue_consumers(name), keys.bell(name)]
        call_keys += keys.streams(name)
    return S.FETCH, call_keys, args


Fetched = collections.namedtuple("Fetched", "now next_due more bells entries")
Fetched.__doc__ = """FETCH's reply: Redis's time and the next due time (ms, None: nothing
due), whether ready messages were left, the bells' ids, and the entries, each
``(queue index from 0, level, returned, id, data, deliveries before, flag)``."""

OK, REVOKED, EXPIRED, MALFORMED = 0, 1, 2, 3


def parse_fetch(reply):
    """A `Fetched`, or None when FETCH answered that the consumer is gone."""
    if reply and reply[0] == b"GONE":
        return None
    now, next_due, more, bells, flat = reply
    entries = []
    for at in range(0, len(flat), 2):
        queue, level, kind, id, before, flag = flat[at].split()
        entries.append((int(queue) - 1, int(level), kind == b"b", id.decode("ascii"),
                        flat[at + 1], int(before), int(flag)))
    return Fetched(int(now), int(next_due) if next_due else None, bool(more),
                   [bell.decode("ascii") for bell in bells], entries)


class Settlement:
    """SETTLE operations of one turn (or one sweep). Acks are gathered per stream and sent
    as one operation each, before the rest, which keep the order they were added in."""

    def __init__(self, keys):
        self.keys = keys
        self.op_keys = []
        self.op_args = []
        self.count = 0                  # entries settled
        self._ops = 0                   # operations in op_keys/op_args
        self._acks = {}                 # (stream, queue, owner, handover) -> [args]

    def __bool__(self):
        return bool(self.count)

    def ack(self, held, owner, handover=False):
        """Ack `held`; `handover`: the task starts now and is handed over to `owner`."""
        key = (held.stream(self.keys), held.queue, owner, handover)
        args = self._acks.get(key)
        if args is None:
            args = self._acks[key] = []
        if handover:
            args += (held.id, held.task_id) + held.handover()
        else:
            args += (held.id, held.task_id)
        self.count += 1

    def start(self, held, owner):
        self.op_keys.append(held.stream(self.keys))
        self.op_args += ["start", held.id, owner, held.task_id, held.task_name]
        self.count += 1
        self._ops += 1

    def give_back(self, held, owner, mode, topology, min_idle=0, why=""):
        """Give `held` back (mode 'requeue', 'release', 'dead', 'reject' or 'drop'; see
        give_back in the scripts' prelude)."""
        keys = self.keys
        queue = topology.queues.get(held.queue)
        if queue is not None:
            max_redeliveries = queue.args["max_redeliveries"]
            dead_name, dead_definition = queue.dead_letter()
        else:                   # deleted: the script drops it
            max_redeliveries, dead_name, dead_definition = None, held.queue + ".dead", "{}"
        self.op_keys += [held.stream(keys), keys.queue_stats(held.queue),
                         keys.consumer_stats(owner),
                         keys.stream(held.queue, held.level, returned=True),
                         keys.bell(held.queue), keys.stream(dead_name, held.level),
                         keys.queue_stats(dead_name), keys.bell(dead_name),
                         keys.result(held.task_id)]
        self.op_args += ["back", held.queue, held.id, owner, min_idle, held.level, mode,
                         "" if max_redeliveries is None else max_redeliveries, dead_name,
                         dead_definition, held.task_id, why]
        self.count += 1
        self._ops += 1

    def call(self, ttl_ms):
        keys = self.keys
        op_keys, op_args = [], []
        for (stream, queue, owner, handover), args in self._acks.items():
            op_keys += [stream, keys.queue_stats(queue), keys.consumer_stats(owner)]
            op_args += ["acks", queue, owner, int(handover),
                        len(args) // (4 if handover else 2)]
            op_args += args
        return (S.SETTLE, [keys.topology, keys.queues, keys.inflight, keys.handovers,
                           keys.orphans, keys.failures, keys.handed_messages]
                + keys.chord_keys + op_keys
                + self.op_keys,
                [ttl_ms, len(self._acks) + self._ops] + op_args + self.op_args)


# -- liveness --------------------------------------------------------------------------------

def register_call(keys, consumer, description, ttl_ms, prefetch):
    return (S.REGISTER, [keys.consumers, keys.heartbeat(consumer),
                         keys.consumer_stats(consumer), keys.wake(consumer)],
            [consumer, description, ttl_ms, prefetch])


def renew_call(keys, consumer, ttl_ms, credit, live_until, prefetch, description, queues,
               held_by_stream):
    """RENEW: `held_by_stream` maps a stream key to the entry ids held from it."""
    call_keys = [keys.consumers, keys.heartbeat(consumer), keys.consumer_stats(consumer)]
    args = [consumer, ttl_ms, credit, live_until, prefetch, description, len(queues)]
    call_keys += [keys.queue_consumers(name) for name in queues]
    args.append(len(held_by_stream))
    for stream, ids in held_by_stream.items():
        call_keys.append(stream)
        args.append(len(ids))
        args += ids
    return S.RENEW, call_keys, args


def retire_call(keys, consumer, grace_ms, queues, handed_over):
    """RETIRE a consumer that consumed `queues`; `handed_over`: task ids that may be its."""
    call_keys = [keys.consumers, keys.heartbeat(consumer), keys.consumer_stats(consumer),
                 keys.wake(consumer), keys.handovers, keys.orphans]
    call_keys += [keys.queue_consumers(name) for name in queues]
    for name in queues:
        call_keys += keys.streams(name)
    return (S.RETIRE, call_keys,
            [consumer, grace_ms, len(queues), len(handed_over)] + list(handed_over))


def due_call(keys, limit=200):
    return S.DUE, [keys.delayed, keys.expiring, keys.orphans], [limit]


def promote_call(keys, members):
    """PROMOTE of due delayed members (as DUE returned them)."""
    call_keys = [keys.queues, keys.delayed, keys.delayed_messages, keys.expiring]
    args = [len(members)]
    for member in members:
        queue, task_id, level, serial = unpack(member)
        call_keys += [keys.queue_stats(queue), keys.bell(queue),
                      keys.stream(queue, int(level))]
        args += [member, queue, task_id, level, serial]
    return S.PROMOTE, call_keys, args


def expire_call(keys, ttl_ms, members):
    """EXPIRE of due members of the expiring set."""
    call_keys = [keys.queues, keys.delayed, keys.delayed_messages, keys.expiring,
                 keys.failures] + keys.chord_keys
    args = [ttl_ms, len(members)]
    for member in members:
        queue, task_id, level, kind, ref = unpack(member)
        call_keys += [keys.stream(queue, int(level)), keys.queue_stats(queue),
                      keys.result(task_id)]
        args += [member, queue, task_id, level, kind, ref]
    return S.EXPIRE, call_keys, args


def lose_call(keys, ttl_ms, why, task_ids):
    call_keys = [keys.orphans, keys.handovers, keys.inflight, keys.failures,
                 keys.handed_messages] + keys.chord_keys
    args = [ttl_ms, why, len(task_ids)]
    for task_id in task_ids:
        call_keys.append(keys.result(task_id))
        args.append(task_id)
    return S.LOSE, call_keys, args


def claim_call(keys, consumer, task_ids):
    return (S.CLAIM, [keys.handovers, keys.orphans],
            [consumer, len(task_ids)] + list(task_ids))


# -- the rest ---------------------------------------------------------------------------------

def revoke_call(keys, ttl_ms, command, task_ids):
    call_keys = [keys.revoked, keys.control, keys.inflight, keys.handovers,
                 keys.failures] + keys.chord_keys
    args = [ttl_ms, command, len(task_ids)]
    for task_id in task_ids:
        call_keys.append(keys.result(task_id))
        args.append(task_id)
    return S.REVOKE, call_keys, args


def purge_call(keys, queue, client):
    return (S.PURGE, [keys.queues, keys.queue_stats(queue)] + keys.streams(queue),
            [queue, client])


def lease_call(keys, name, holder, ttl_ms):
    return S.LEASE, [keys.lease(name)], [holder, ttl_ms]


def delayed_member(queue, task_id, level, serial):
    """A member of the delayed set as the PUBLISH script writes it (tests)."""
    return pack(queue, task_id, str(level), str(serial))
