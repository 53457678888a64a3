"""Where the Redis transport keeps everything: the key schema of one virtual host. Pure.

Every key of a virtual host starts with ``mt:{VHOST}:``. The braces make ``{VHOST}`` the key's
hash tag, so all of a vhost's keys live in one Redis Cluster slot and one script may touch
any of them; scripts still name every key they touch in KEYS, never building one in Lua
(one exception: a parked chord body's record keeps the keys it was parked with, its queues'
stats and bells and its header's results, and the script that releases it uses them; they
share the hash tag, so they are in the slot that script runs on)::

    mt:{v}:topology            STRING  version of exchanges/queues/bindings, INCR on change;
                                       made again, it starts from Redis's clock (in us)
    mt:{v}:epoch               STRING  set by the first client to declare the topology: gone,
                                       or another, when the data was wiped since
    mt:{v}:exchanges           HASH    name -> JSON {"type", "durable", "auto_delete"}
    mt:{v}:queues              HASH    name -> JSON {"args": {...}, "owner": client id|null}
    mt:{v}:bindings            HASH    JSON [exchange, queue, key, arguments] -> "1"
    mt:{v}:q:QUEUE:pN          STREAM  new messages of priority N (0..9), group "w"
    mt:{v}:q:QUEUE:bN          STREAM  messages given back (rejected, of lost workers),
                                       read before the new ones of their priority
    mt:{v}:qstats:QUEUE        HASH    readyN and backN (waiting in pN, bN), unacked,
                                       delayed, published, delivered, acked, dead_lettered
    mt:{v}:qconsumers:QUEUE    HASH    consumer id -> "CREDIT LIVE_UNTIL_MS"
    mt:{v}:bell:QUEUE          STREAM  an entry added whenever the queue gets a message
                                       (trimmed to about 100): what idle consumers block on
    mt:{v}:delayed             ZSET    member -> when to release it (ms); a parked chord
                                       body waits here at PARKED_AT (never due)
    mt:{v}:delayed:messages    HASH    member -> the message
    mt:{v}:expiring            ZSET    member -> when the message expires (ms)
    mt:{v}:result:TASK_ID      STREAM  the task's latest state (MAXLEN 1), EXPIRE'd
    mt:{v}:inflight            HASH    task id -> "RECEIVED|STARTED<TAB>consumer<TAB>task name"
    mt:{v}:handovers           HASH    task id -> "consumer<TAB>task name" (acked as started)
    mt:{v}:handovers:messages  HASH    task id -> the message of a handed-over task that has
                                       a workflow (errbacks, a chain): if its worker is lost,
                                       LOSE gives it to the given-up stream
    mt:{v}:orphans             ZSET    task id -> when it fails with WorkerLostError (ms)
    mt:{v}:revoked             ZSET    task id -> when the revocation is forgotten (ms)
    mt:{v}:consumers           HASH    consumer id -> JSON worker description
    mt:{v}:heartbeat:CONSUMER  STRING  present while the consumer lives (PX TTL)
    mt:{v}:cstats:CONSUMER     HASH    unacked, delivered, prefetch, paused (while it is)
    mt:{v}:wake:CONSUMER       STREAM  an entry written to wake the consumer's blocked read
                                       (trimmed to about 100)
    mt:{v}:control             STREAM  remote-control commands, read by every worker
    mt:{v}:reply:NAME          STREAM  replies to one broadcast
    mt:{v}:lease:NAME          STRING  a lease's holder (PX TTL)
    mt:{v}:kv                  HASH    durable settings (the beat's send times), JSON values
    mt:{v}:stats               HASH    unroutable, delayed_serial
    mt:{v}:failures            LIST    "MS TASK_ID" of the latest FAILURE results
    mt:{v}:tasks               HASH    "EVENT<TAB>TASK NAME" -> count, and run times
                                       (redis_taskstats)
    mt:{v}:chords              HASH    "b:BODY_ID" -> JSON record of a parked chord body,
                                       "l:BODY_ID" -> how many results it waits for,
                                       "p:TASK_ID" -> how many bodies need that result;
                                       "w:TASK_ID" -> JSON list of the bodies waiting for
                                       that task's result
    mt:{v}:givenup             STREAM  messages a script dropped or dead-lettered itself
                                       whose workflow (errbacks, the rest of a chain) a
                                       worker still has to send (redis_givenup)
    mt:{v}:givenup:lock        STRING  the process sending them (PX TTL)
    mt:{v}:sweep               STRING  the sweeper's lock (PX TTL)
    mt:{v}:backstop            STRING  when the backstop last ran (PX TTL)

Queue, task and consumer names go into keys as they are: each family has its own prefix and
the only suffix (a stream's level) has a fixed length, so no two names share a key.

`pack` and `unpack` write and read the members of the ``delayed`` and ``expiring`` sets: a
few strings, each as ``<length>:<bytes>``, which the Lua side writes with the same bytes.
"""

import re

__all__ = ["Keys", "LEVELS", "GROUP", "WAITING_FIELDS", "pack", "unpack", "kept_type"]

LEVELS = range(10)
GROUP = "w"
# The fields of a queue's stats that count messages waiting in its streams.
WAITING_FIELDS = tuple("ready%d" % level for level in LEVELS) + tuple(
    "back%d" % level for level in LEVELS)


class Keys:
    """The keys of one virtual host (see the module docstring)."""

    def __init__(self, vhost):
        self.vhost = vhost
        self.prefix = prefix = "mt:{%s}:" % vhost
        for name in ("topology", "exchanges", "queues", "bindings", "delayed", "expiring",
                     "inflight", "handovers", "orphans", "revoked", "consumers", "control",
                     "kv", "stats", "failures", "sweep", "backstop", "chords", "tasks",
                     "epoch"):
            setattr(self, name, prefix + name)
        self.delayed_messages = prefix + "delayed:messages"
        self.handed_messages = prefix + "handovers:messages"
        self.given_up = prefix + "givenup"
        self.given_up_lock = prefix + "givenup:lock"
        self._streams = {}              # queue -> its streams (each fetch names them all)

    @property
    def chord_keys(self):
        """What every script that stores results reads first (read_chord_keys in Lua)."""
        return [self.chords, self.delayed, self.delayed_messages, self.failures, self.queues,
                self.expiring, self.given_up]

    def stream(self, queue, level, returned=False):
        return "%sq:%s:%s%d" % (self.prefix, queue, "b" if returned else "p", level)

    def streams(self, queue):
        """Every stream of `queue`, in the order a consumer reads them: per priority, the
        messages given back before the new ones."""
        streams = self._streams.get(queue)
        if streams is None:
            if len(self._streams) >= 1000:      # a process that names many queues
                self._streams.clear()
            streams = self._streams[queue] = [self.stream(queue, level, returned)
                                              for level in LEVELS
                                              for returned in (True, False)]
        return list(streams)

    def queue_stats(self, queue):
        return self.prefix + "qstats:" + queue

    def queue_consumers(self, queue):
        return self.prefix + "qconsumers:" + queue

    def bell(self, queue):
        return self.prefix + "bell:" + queue

    def queue_keys(self, queue):
        """Every key that belongs to `queue` alone (deleted with it)."""
        return [self.queue_stats(queue), self.queue_consumers(queue), self.bell(queue)] \
            + self.streams(queue)

    def result(self, task_id):
        return self.prefix + "result:" + task_id

    def heartbeat(self, consumer):
        return self.prefix + "heartbeat:" + consumer

    def consumer_stats(self, consumer):
        return self.prefix + "cstats:" + consumer

    def wake(self, consumer):
        return self.prefix + "wake:" + consumer

    def reply(self, name):
        return self.prefix + "reply:" + name

    def lease(self, name):
        return self.prefix + "lease:" + name


def _layout(doc):
    """(pattern, type) for each key of the layout above: one table, the documented one."""
    for name, kind in re.findall(r"^    mt:\{v\}:(\S+) +(STRING|HASH|STREAM|ZSET|LIST) ", doc,
                                 re.M):
        pattern = re.sub(r"[A-Z_]{2,}", ".+", re.escape(name))   # QUEUE, CONSUMER, NAME...
        pattern = pattern.replace("N", r"\d")                   # then a stream's level
        yield re.compile(r"mt:\{[^}]*\}:%s\Z" % pattern, re.S), kind.lower()


_LAYOUT = list(_layout(__doc__))


def kept_type(key):
    """The Redis type minitask keeps at `key` ("hash", "stream"...); None for a key that is
    not one of its own."""
    for pattern, kind in _LAYOUT:
        if pattern.match(key):
            return kind
    return None


def pack(*fields):
    """``<length>:<bytes>`` for each field (str as UTF-8), joined: a set member."""
    out = []
    for field in fields:
        data = field.encode("utf-8") if isinstance(field, str) else bytes(field)
        out.append(b"%d:%s" % (len(data), data))
    return b"".join(out)


def unpack(member):
    """The fields `pack` joined, as str; ValueError when `member` is not such a join."""
    fields = []
    at = 0
    while at < len(member):
        colon = member.index(b":", at)
        length = int(member[at:colon])
        end = colon + 1 + length
        if length < 0 or end > len(member):
            raise ValueError("member field runs past its end: %r" % (member[:80],))
        fields.append(member[colon + 1:end].decode("utf-8"))
        at = end
    return fields
