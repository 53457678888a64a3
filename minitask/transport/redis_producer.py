"""The producer's side of the Redis transport: `Client`, one per thread.

What the task API, results, the CLI and the beat ask of a broker (`transport.base.Client`),
done by scripts on Redis (`redis_scripts`, called as `redis_ops` lays them out). A client
caches the topology (`redis_topology`) and routes with it; a publish, a declare or a bind
made from an old copy is answered STALE, and the client reloads and decides again.

A publish returns once Redis holds the message; with the URL's ``publish_confirm`` it also
waits for replicas (WAIT) or fsyncs (WAITAOF) once per call or batch, and raises
PublishRefusedError when they fall short. `check_server` warns once per process when Redis
may lose (AOF off) or evict (``maxmemory-policy`` other than noeviction) what it holds.

Waiting for a result blocks in XREAD on the task's result stream; between blocks the waiter
does what is due on Redis's clock (`redis_liveness.housekeeping`): with no broker process of
ours, whoever waits moves time forward.
"""

import json
import logging
import os
import time
import uuid

from .. import control, protocol as P
from ..exceptions import (
    BrokerConnectionError, BrokerError, ConfigurationError, MinitaskError, ProtocolError,
    PublishRefusedError, ReplyError,
)
from . import base
from . import redis_ops as ops
from .redis_client import RedisClient, Script
from .redis_givenup import may_give_up, send_given_up
from .redis_keys import WAITING_FIELDS, Keys, kept_type
from .redis_liveness import housekeeping, sweep
from .redis_replies import (
    STALE, control_body, count_of, live_consumers, read_result, redis_ms, refused,
)
from .redis_scripts import SCRIPTS
from .redis_topology import Topology
from .redis_url import parse_redis_url

__all__ = ["Client", "check_server", "RELEASE_AHEAD", "STALE_ATTEMPTS", "REPLY_SECONDS"]

logger = logging.getLogger(__name__)

# Delayed messages reach a worker this early; its own scheduler starts them on time.
RELEASE_AHEAD = 0.5
# Messages per PUBLISH call and calls per round trip in publish_many.
PUBLISH_CHUNK = 100
PIPELINE_CALLS = 10
# The most messages published as one unit (one script call: a chord and its header). Redis
# runs nothing else meanwhile: 10,000 take it about 40 ms.
ATOMIC_LIMIT = 10000
# A topology that changes under every attempt is a bug or an attack, not a race.
STALE_ATTEMPTS = 10
# A waiter for a result looks at what is due at least this often.
WAIT_SLICE = 5.0
# Most waits begin just after delay(): the first block comes at once, and what is due is read
# only when no result came within it (a round trip and a script saved from each short wait).
FIRST_WAIT = 0.05
# Control replies kept for late askers: long enough, never forever.
REPLY_SECONDS = 60.0
# States of a task some worker holds: a client waiting on one looks for dead workers.
_IN_FLIGHT = ("RECEIVED", "STARTED")

_checked = set()                # (pid, URL) whose server was checked (start-up warnings)


class Client(base.Client):
    """A producer's connection to Redis: publishes, topology, results, control, status.

    One per thread, like every client (`minitask.transport.connection`); it reconnects by
    itself (see `RedisClient`) and declares the broker's defaults on connecting.
    """

    def __init__(self, settings, client="minitask-client", on_connect=None, timeout=10.0):
        self.settings = settings
        self.url = settings.BROKER_URL
        self.options = parse_redis_url(self.url)
        if self.options.protocol != 2:
            # The transport reads replies in RESP2's shapes (HGETALL, XREAD as arrays).
            raise ConfigurationError("BROKER_URL %s: protocol=%d is not supported by the "
                                     "transport (it speaks RESP2); leave protocol out"
                                     % (self.options.display, self.options.protocol))
        self.keys = Keys(self.options.vhost)
        self.redis = RedisClient(self.options, ca_file=settings.get("BROKER_CA_FILE"))
        self.name = client
        # Exclusive queues belong to this id.
        self.id = "%s:%d:%s" % (client, os.getpid(), uuid.uuid4().hex[:12])
        self.on_connect = on_connect
        self.timeout = timeout
        self.topology = None
        self.ttl_ms = ops.ms(settings.RESULT_EXPIRES)
        self._exclusive = set()
        self._set_up = False
        self._epoch = None              # the topology's epoch when this client declared it
        self._declaring_again = False
        self._sweep_at = 0.0            # when this client may next look for dead workers

    def __repr__(self):
        return "<redis Client %s>" % self.options.display

    @property
    def connected(self):
        return self.redis.connected

    def connect(self):
        """Connect, check the server (once per process), read the topology and declare the
        broker's defaults; then `on_connect`."""
        if self.connected and self._set_up:
            return self
        self.redis.connect()
        check_server(self)
        self.reload()
        self._declare_defaults()
        self._epoch = self._claim_epoch()
        self._set_up = True
        if self.on_connect is not None:
            self.on_connect(self)
        return self

    def close(self):
        """Delete this client's exclusive queues (if Redis is there to hear it), then close."""
        for name in sorted(self._exclusive):
            try:
                self.delete_queue(name)
            except MinitaskError as exc:
                logger.debug("could not delete exclusive queue %r: %s", name, exc)
        self._exclusive.clear()
        self._set_up = False
        self.redis.close()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    # -- running scripts and commands -------------------------------------------------------

    def run(self, calls, block=0.0):
        """Run script calls ``(script, keys, args)`` and plain commands (tuples) in one
        round trip; every reply comes back, ReplyErrors in place. Scripts the server lacks
        (a restart, a failover) are loaded and those calls run again."""
        commands = [call[0].command(call[1], call[2]) if isinstance(call[0], Script)
                    else call for call in calls]
        replies = self.redis.pipeline(commands, block=block)
        missing = [index for index, reply in enumerate(replies)
                   if isinstance(reply, ReplyError) and reply.prefix == "NOSCRIPT"]
        if missing:
            logger.info("%s: loading the transport's scripts", self.options.display)
            loads = [("SCRIPT", "LOAD", script.source) for script in SCRIPTS]
            again = self.redis.pipeline(loads + [commands[index] for index in missing],
                                        block=block)
            for index, reply in zip(missing, again[len(loads):]):
                replies[index] = reply
        for index, reply in enumerate(replies):
            if isinstance(reply, ReplyError) and reply.prefix == "WRONGTYPE":
                replies[index] = self._name_wrong_type(calls[index], reply)
        return replies

    def _name_wrong_type(self, call, reply):
        """Redis's WRONGTYPE names no key. Look at the keys the call named for one that
        holds another type than minitask keeps there (another program wrote it), and say
        which: the one line an operator needs to mend it."""
        keys = call[1] if isinstance(call[0], Script) else call[1:2]
        keys = [key for key in keys if isinstance(key, str) and kept_type(key)]
        try:
            found = self.redis.pipeline([("TYPE", key) for key in keys])
        except MinitaskError:
            return reply                # Redis's own words, then
        wrong = ["key %r holds a %s where minitask keeps a %s" % (key, kind, kept_type(key))
                 for key, kind in zip(keys, found)
                 if isinstance(kind, str) and kind not in ("none", kept_type(key))]
        if not wrong:
            return reply
        return ReplyError("WRONGTYPE %s: another program wrote there; delete it, or use "
                          "another vhost" % "; ".join(wrong))

    def script(self, call, block=0.0):
        """Run one script call; its error reply is raised as the exception it stands for.
        (The callers of scripts that may answer STALE read their replies themselves.)"""
        reply = self.run([call], block)[0]
        if isinstance(reply, ReplyError):
            error = refused(reply)
            if error is STALE:
                raise BrokerError("the topology changed during %s" % call[0])
            raise error
        return reply

    def execute(self, *command):
        return self.redis.execute(*command)

    # -- topology ---------------------------------------------------------------------------

    def reload(self):
        """Read the topology anew (after STALE, or to see others' changes)."""
        snapshot, epoch = self.run([ops.snapshot_call(self.keys), ("GET", self.keys.epoch)])
        if isinstance(snapshot, ReplyError):
            raise refused(snapshot)
        self.topology = Topology.from_snapshot(snapshot)
        if self._set_up and not self._declaring_again and epoch != self._epoch:
            self._declare_again()
        return self.topology

    def _claim_epoch(self):
        """The topology's epoch, made by this client if there is none yet."""
        return self.run([("SET", self.keys.epoch, uuid.uuid4().hex, "NX"),
                         ("GET", self.keys.epoch)])[1]

    def _declare_again(self):
        """The topology this client declared was wiped from Redis since (FLUSHALL, FLUSHDB,
        a server started without its AOF): its epoch is gone, or another client made a new
        one. Declare what connecting declares, as a reconnect would, so that calls go on,
        rather than find no exchange, or no binding (unroutable). Every client that declared
        before the wipe does so once, whoever noticed first."""
        logger.warning("%s: the topology in Redis was wiped (flushed, or a server without "
                       "its data); declaring this client's again", self.options.display)
        self._declaring_again = True    # its own declares reload too
        self._exclusive.clear()         # gone with the rest
        try:
            self._declare_defaults()
            if self.on_connect is not None:
                self.on_connect(self)
            self._epoch = self._claim_epoch()   # only once all is declared: else again
        finally:
            self._declaring_again = False

    def _change(self, decide):
        """``decide(topology)`` returns ``(answer, changes, keys to delete)``; commit the
        changes if the topology is still the one they were decided from, else reload and
        decide again. Returns the answer."""
        fresh = False
        for _ in range(STALE_ATTEMPTS):
            topology = self.topology if self.topology and not fresh else self.reload()
            try:
                answer, changes, delete = decide(topology)
            except BrokerError:
                if fresh:
                    raise
                fresh = True            # refused by a copy that may be old: look again
                continue
            version = self.run([ops.commit_call(self.keys, topology.version, changes,
                                                delete)])[0]
            if isinstance(version, ReplyError):
                error = refused(version)
                if error is not STALE:
                    raise error
                self.reload()
                continue
            if version != topology.version:
                self.reload()
            return answer
        raise BrokerError("the topology kept changing under %d attempts" % STALE_ATTEMPTS)

    def _declare_defaults(self):
        """What the built-in broker declares when it starts: the default exchange, the
        default queue bound to it under the default routing key."""
        settings = self.settings
        self.declare_exchange(settings.DEFAULT_EXCHANGE, settings.DEFAULT_EXCHANGE_TYPE)
        self.declare_queue(settings.DEFAULT_QUEUE)
        self.bind(settings.DEFAULT_QUEUE, settings.DEFAULT_EXCHANGE,
                  settings.DEFAULT_ROUTING_KEY)

    def declare_exchange(self, exchange, type="direct", durable=True, auto_delete=False,
                         passive=False):
        self._change(lambda topology: ({}, topology.declare_exchange(
            exchange, type, durable, auto_delete, passive), ()))
        return {}

    def declare_queue(self, queue, durable=True, exclusive=False, auto_delete=False,
                      passive=False, **arguments):
        given = dict(arguments)
        if not passive:
            given.update(durable=durable, exclusive=exclusive, auto_delete=auto_delete)

        def decide(topology):
            definition, changes = topology.declare_queue(queue, self.id, passive, **given)
            return definition, changes, ()
        definition = self._change(decide)
        if definition.owner == self.id:
            self._exclusive.add(definition.name)
        messages, consumers = self._queue_counts(definition.name)
        return {"queue": definition.name, "messages": messages, "consumers": consumers}

    def _queue_counts(self, name):
        """Messages ready in queue `name`, and its consumers alive now."""
        stats, consumers, now = self.run([
            ("HMGET", self.keys.queue_stats(name)) + WAITING_FIELDS,
            ("HGETALL", self.keys.queue_consumers(name)), ("TIME",)])
        return (sum(count_of(count) for count in stats) if isinstance(stats, list) else 0,
                len(live_consumers(consumers, redis_ms(now))))

    def bind(self, queue, exchange, binding_key="", arguments=None):
        self._change(lambda topology: ({}, topology.bind(queue, exchange, binding_key,
                                                         arguments, self.id), ()))
        return {}

    def unbind(self, queue, exchange, binding_key="", arguments=None):
        self._change(lambda topology: ({}, topology.bind(queue, exchange, binding_key,
                                                         arguments, self.id, unbind=True), ()))
        return {}

    def delete_queue(self, queue):
        """Delete a queue, its bindings and its messages; returns how many were ready."""
        messages = self._queue_counts(queue)[0]
        self._change(lambda topology: ({}, topology.delete_queue(queue, self.id),
                                       self.keys.queue_keys(queue)))
        self._exclusive.discard(queue)
        return messages

    def purge(self, queue):
        purged = self.script(ops.purge_call(self.keys, queue, self.id))
        return purged

    # -- publishing -------------------------------------------------------------------------

    def publish(self, data, confirm=True, timeout=None):
        try:
            self._publish([data])
        except MinitaskError as exc:
            if confirm or isinstance(exc, BrokerConnectionError):
                raise
            logger.warning("a publish sent without confirm was refused: %s", exc)

    def publish_many(self, messages, timeout=None):
        """Publish in calls of PUBLISH_CHUNK messages, PIPELINE_CALLS calls a round trip;
        a refusal stops there (the messages before it are published)."""
        batch = []
        for data in messages:
            batch.append(data)
            if len(batch) == PUBLISH_CHUNK * PIPELINE_CALLS:
                self._publish(batch, all_or_nothing=False)
                batch = []
        if batch:
            self._publish(batch, all_or_nothing=False)

    def publish_atomic(self, messages, timeout=None):
        """Publish as one unit: one script call, so Redis holds all of them or none."""
        if len(messages) > ATOMIC_LIMIT:
            raise PublishRefusedError("%d messages cannot be published as one unit on Redis "
                                      "(at most %d)" % (len(messages), ATOMIC_LIMIT))
        self._publish(list(messages), chunk=len(messages) or 1)

    def publish_with_record(self, data, key, value, timeout=None):
        """Set the durable setting `key` and publish, in one script: both or neither."""
        self._publish([data], record=(key, json.dumps(value)))

    def publications(self, messages):
        """Route messages (encoded, or `protocol.Message`s, which the task API hands over)
        with the cached topology (reloaded first when one names an exchange it does not
        know): `ops.Publication`s, all of one topology version."""
        topology = self.topology or self.reload()
        encoded = [bytes(data) if isinstance(data, (bytes, bytearray, memoryview))
                   else P.encode_message(data) for data in messages]
        parsed = [(data, P.parse_message(data)) for data in encoded]
        try:
            return self._route(topology, parsed)
        except BrokerError as exc:
            if exc.code != P.NOT_FOUND:
                raise
            # An exchange the cached topology lacks (a message's, or a chord's errback's):
            # declared since it was loaded, or a 404 that the reloaded one raises again.
            return self._route(self.reload(), parsed)

    @staticmethod
    def _route(topology, parsed):
        routed = []
        for data, fields in parsed:
            routed += ops.chord_publications(topology, data, fields)
        return routed

    def publish_call(self, publications, all_or_nothing=True, record=None, result=None):
        """The PUBLISH call of `publications` (routed with the cached topology)."""
        return ops.publish_call(self.keys, self.topology.version, self.ttl_ms, self.topology,
                                publications, all_or_nothing, record, result, RELEASE_AHEAD)

    def _publish(self, messages, all_or_nothing=True, record=None, chunk=PUBLISH_CHUNK):
        pending = [messages[at:at + chunk] for at in range(0, len(messages), chunk)]
        expiring = False                # an expired message's workflow is sent at once
        for _ in range(STALE_ATTEMPTS):
            calls = []
            for chunk in pending:
                publications = self.publications(chunk)
                expiring = expiring or any(may_give_up(item.fields) for item in publications)
                calls.append(self.publish_call(publications, all_or_nothing, record))
            stale = []
            for at in range(0, len(calls), PIPELINE_CALLS):
                group = calls[at:at + PIPELINE_CALLS]
                replies = self.run(group + self.confirm_commands())
                self.check_confirm(replies[len(group):])
                for chunk, reply in zip(pending[at:at + PIPELINE_CALLS], replies):
                    if isinstance(reply, ReplyError):
                        error = refused(reply)
                        if error is not STALE:
                            raise error
                        stale.append(chunk)
            if not stale:
                if expiring:
                    send_given_up(self)
                return
            self.reload()
            pending = stale
        raise BrokerError("the topology kept changing under %d attempts" % STALE_ATTEMPTS)

    def confirm_commands(self):
        """What a write batch waits for after it (the URL's publish_confirm)."""
        confirm = self.options.publish_confirm
        timeout = ops.ms(self.options.publish_confirm_timeout)
        if confirm is None:
            return []
        if confirm[0] == "wait":
            return [("WAIT", confirm[1], timeout)]
        return [("WAITAOF", confirm[1], confirm[2], timeout)]

    def check_confirm(self, replies):
        """PublishRefusedError when the wait fell short: Redis holds the messages, but not
        as durably as publish_confirm asks, so they may be lost."""
        confirm = self.options.publish_confirm
        if confirm is None or not replies:
            return
        reply = replies[0]
        if isinstance(reply, ReplyError):
            raise PublishRefusedError("%s: publish_confirm=%s failed: %s"
                                      % (self.options.display, ":".join(map(str, confirm)),
                                         reply))
        wanted = confirm[1:]
        got = (reply,) if confirm[0] == "wait" else tuple(reply)
        if any(have < want for have, want in zip(got, wanted)):
            raise PublishRefusedError(
                "Redis holds the message but confirmed it to %s within %gs; asked for %s "
                "(publish_confirm): it may be lost if the primary fails" % (
                    _confirmed_text(confirm, got), self.options.publish_confirm_timeout,
                    _confirmed_text(confirm, wanted)))

    # -- results ----------------------------------------------------------------------------

    def set_state(self, task_id, content_type, payload):
        result = (task_id, "STARTED", content_type, bytes(payload), True, None, True)
        for _ in range(STALE_ATTEMPTS):         # the PUBLISH script checks the topology
            [reply] = self.run([self.publish_call([], result=result)])
            if not isinstance(reply, ReplyError):
                return True
            error = refused(reply)
            if error is not STALE:
                raise error
            self.reload()
        raise BrokerError("the topology kept changing while a task's state was stored")

    def get_result(self, task_id):
        result = self._result(task_id)[0]
        if result.state in _IN_FLIGHT and self._look_for_the_dead():
            housekeeping(self)          # an orphan whose grace is up fails now
            result = self._result(task_id)[0]
        return result

    def _look_for_the_dead(self):
        """What a worker does every half heartbeat, done by a client asking about a task in
        flight: workers whose heartbeat expired are reaped (what they held goes back, what
        they ran fails after the grace). With no worker left alive, no one else would. The
        sweepers' shared lock keeps it to one process at a time. True when it was due."""
        now = time.monotonic()
        if now < self._sweep_at:
            return False
        every = self.options.heartbeat / 2.0
        self._sweep_at = now + every
        sweep(self, self.id, every, self.options.handover_grace)
        return True

    def _result(self, task_id, due=False):
        """``(Result, the id of its entry or "0-0")``; with `due`, also the reply of a DUE
        call run in the same round trip (for `housekeeping`)."""
        keys = self.keys
        commands = [("XREVRANGE", keys.result(task_id), "+", "-", "COUNT", 1),
                    ("HGET", keys.inflight, task_id), ("HGET", keys.handovers, task_id)]
        replies = self.run(commands + ([ops.due_call(keys)] if due else []))
        for reply in replies[:3]:
            if isinstance(reply, ReplyError):
                raise reply
        result = read_result(task_id, *replies[:3])
        return (result, replies[3]) if due else result

    def wait_result(self, task_id, timeout=None):
        """Wait for a final state, blocking in XREAD on the task's result stream. Between
        blocks it does what is due (promotes, expiries, lost workers), since no broker
        process of ours does; what is due is read in the same round trip as the result, and
        a final state the XREAD brings back is the answer, with no read after it."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        key = self.keys.result(task_id)
        first = FIRST_WAIT if timeout is None else min(max(0.0, timeout), FIRST_WAIT)
        if first > 0:
            stored = self._await_entry(task_id, key, "0-0", first)
            if stored is not None and stored.ready:
                return stored
        while True:
            (result, last_id), due = self._result(task_id, due=True)
            left = None if deadline is None else deadline - time.monotonic()
            if result.ready or (left is not None and left <= 0):
                return result
            in_flight = result.state in _IN_FLIGHT
            if in_flight:
                self._look_for_the_dead()
            now, next_due = housekeeping(self, due)
            block = WAIT_SLICE if left is None else min(left, WAIT_SLICE)
            if next_due is not None:
                block = min(block, max(0.001, (next_due - now) / 1000.0))
            if in_flight:
                block = min(block, max(0.001, self._sweep_at - time.monotonic()))
            stored = self._await_entry(task_id, key, last_id, block)
            if stored is not None and stored.ready:
                return stored

    def _await_entry(self, task_id, key, last_id, block):
        """The Result of the newest entry after `last_id` on the result stream `key`, waiting
        up to `block` seconds for one; None when none came."""
        reply = self.redis.execute("XREAD", "BLOCK", max(1, ops.ms(block)), "STREAMS", key,
                                   last_id, block=block, idempotent=True)
        if isinstance(reply, list) and reply:           # RESP2: [[stream, entries]]
            return read_result(task_id, reply[0][1][-1:], None, None)[0]
        return None

    def forget(self, task_ids, expired=False):
        """(`expired` asks for nothing more: Redis drops each result when its EXPIRE is up.)"""
        keys = self.keys
        replies = self.run([command for task_id in task_ids for command in (
            ("DEL", keys.result(task_id)), ("HDEL", keys.inflight, task_id))])
        return {"forgotten": sum(1 for reply in replies[0::2] if reply == 1)}

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        task_ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        arguments = {"task_ids": task_ids, "terminate": bool(terminate),
                     "signal": str(signal or "SIGTERM")}
        command = P.encode_message(control.command_message("revoke", arguments))
        self.script(ops.revoke_call(self.keys, self.ttl_ms, command, task_ids))
        return {}

    # -- the rest ---------------------------------------------------------------------------

    def broadcast(self, method, arguments=None, destination=None, timeout=1.0, reply=True,
                  limit=None):
        """Send a control command on the control stream; gather replies from a stream of
        this call's own until `timeout` or `limit` replies."""
        reply_to = "mt.reply-%s" % uuid.uuid4().hex if reply else None
        message = control.command_message(method, arguments, destination, reply_to)
        self.redis.execute("XADD", self.keys.control, "MAXLEN", "~", 1000, "*", "m",
                           P.encode_message(message))
        if not reply:
            return {}
        key = self.keys.reply(reply_to)
        replies, last = {}, "0-0"
        deadline = time.monotonic() + timeout
        try:
            while limit is None or len(replies) < limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                got = self.redis.execute("XREAD", "COUNT", 100, "BLOCK", max(1, ops.ms(left)),
                                         "STREAMS", key, last, block=left, idempotent=True)
                for _stream, entries in got or ():
                    for entry_id, fields in entries:
                        last = entry_id
                        body = control_body(dict(zip(fields[0::2], fields[1::2])).get(b"m"))
                        if body is not None and body.get("ticket") == message.message_id:
                            replies[body.get("hostname", "?")] = body.get("reply")
        finally:
            self.redis.execute("DEL", key)
        return replies

    def lease(self, name, holder, ttl):
        if type(ttl) not in (int, float) or not 0 < ttl <= 3600:
            raise ProtocolError("'ttl' must be a number of seconds up to 3600")
        current, left = self.script(ops.lease_call(self.keys, name, holder, ops.ms(ttl)))
        current = current.decode("utf-8")
        return {"granted": current == holder, "holder": current,
                "expires_in": max(0, left) / 1000.0}

    def kv_get(self, key):
        value = self.redis.execute("HGET", self.keys.kv, key)
        return None if value is None else json.loads(value)

    def kv_set(self, key, value):
        self.redis.execute("HSET", self.keys.kv, key, json.dumps(value))

    def status(self, scheduled=0):
        from .redis_status import status_report     # only the CLI and tests ask for it
        return status_report(self, scheduled)


def _confirmed_text(confirm, counts):
    if confirm[0] == "wait":
        return "%d replica(s)" % counts[0]
    return "%s and %d replica(s)" % ("the local AOF" if counts[0] else "no local AOF",
                                     counts[1])


def check_server(client):
    """Once per process and URL: refuse a publish_confirm the server cannot do, and warn
    when Redis may lose or evict what it holds."""
    token = (os.getpid(), client.options.display, client.options.vhost)
    if token in _checked:
        return
    confirm = client.options.publish_confirm
    version = client.redis.server_version or (0,)
    if confirm is not None and confirm[0] == "waitaof" and version < (7, 2):
        raise ConfigurationError(
            "%s: publish_confirm=waitaof needs Redis or Valkey 7.2 or later (WAITAOF); the "
            "server runs %s" % (client.options.display, ".".join(map(str, version))))
    _checked.add(token)
    try:
        info = client.redis.execute("INFO", "persistence").decode("utf-8", "replace") + \
            client.redis.execute("INFO", "memory").decode("utf-8", "replace")
    except ReplyError as exc:                   # INFO renamed or refused by the provider
        logger.info("%s: cannot check persistence settings: %s", client.options.display, exc)
        return
    values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    if values.get("aof_enabled", "1").strip() != "1":
        logger.warning("%s: AOF is off (appendonly no): messages Redis confirmed are lost "
                       "if redis-server stops without a snapshot; set appendonly yes",
                       client.options.display)
    policy = values.get("maxmemory_policy", "noeviction").strip()
    if policy != "noeviction":
        logger.warning("%s: maxmemory-policy is %s: Redis may evict queued messages when "
                       "full; set maxmemory-policy noeviction", client.options.display, policy)
