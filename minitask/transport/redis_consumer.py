"""The worker's side of the Redis transport: a selectable, non-blocking `Consumer`.

Two connections:

- the *reader*, whose socket is the worker's `fileno()`: it only ever has one command
  outstanding, an XREAD that blocks on the control stream, the consumer's own wake stream
  and, while the worker has credit, its queues' bells. When it answers (a bell rang, a
  control command came, it was woken, or its block ran out), the socket is readable, and
  `read()` takes what it answered and arms it again;
- the *writer* (a `redis_producer.Client`): in `read()`, a FETCH of up to the worker's
  credit; in `flush()`, once per loop turn, everything the worker said (results with what
  they unlock, acks, starts, rejects, control replies) in one pipelined round trip.

Credit is the worker's prefetch (plus what it holds itself, `set_extra_credit`) less the
messages it holds. A worker out of credit does not wait on the bells. When an ack gives
credit back, `flush()` fetches in the same round trip and writes to the consumer's wake
stream, so the reader answers and the next `read()` hands over what came. (A stream rather
than CLIENT UNBLOCK: an unblock that reaches Redis before the XREAD it means to end is lost,
an entry is not.) Before each block, `read()` renews the worker's heartbeat and leases when
due, sweeps for dead workers when due, and does what is due on Redis's clock
(`redis_liveness`); a block never lasts past the next of those.

Deliveries are the seam's `Delivery`; a tag names one held entry (`redis_ops.Held`) and
means something only in the generation (connection) that delivered it.
"""

import json
import logging
import os
import time
import uuid

from ..config import safe_url
from ..exceptions import (
    BrokerConnectionError, MinitaskError, ProtocolError, PublishRefusedError, ReplyError,
)
from ..joins import headers_of, unlocked_by
from ..log import Throttle, folded
from . import base, declare_topology, declare_worker_queues
from . import redis_ops as ops
from .redis_givenup import send_given_up
from .redis_producer import REPLY_SECONDS, STALE_ATTEMPTS, Client
from .redis_liveness import backstop, backstop_idle, housekeeping, reap, sweep
from .redis_taskstats import Tally
from .redis_reader import Reader
from .redis_replies import STALE, refused, transport_meta

__all__ = ["Consumer", "CONTROL_TAG"]

logger = logging.getLogger(__name__)

CONTROL_TAG = 1
# The longest a reader blocks even with nothing due (a failover is noticed at least this
# often).
MAX_BLOCK = 5.0
# How long the start of an acks-late task may wait to go with something else (its ack,
# above all): a task shorter than this never costs a round trip of its own for STARTED.
START_DELAY = 0.02
_WHY = {ops.REVOKED: "revoked", ops.EXPIRED: "expired", ops.MALFORMED: ""}
# What Redis answers a running worker's calls with that it takes as a lost connection
# (`_refused`): out of memory, a key of another type, replies it cannot read.
_REFUSALS = (ReplyError, PublishRefusedError, ProtocolError)


class Consumer(base.Consumer):
    """A worker's consumer of `queues` on Redis (see the module docstring)."""

    control_tag = CONTROL_TAG

    def __init__(self, settings, queues, prefetch, worker_info, hostname):
        self.settings = settings
        self.queues = list(queues)      # replaced, never changed: a FETCH keeps the list
        self._fetch_queues = self._reader_queues = self.queues     # it was sent for
        self.prefetch = prefetch
        self.worker_info = dict(worker_info or {})
        self.hostname = hostname
        self.id = "%s:%d:%s" % (hostname, os.getpid(), uuid.uuid4().hex[:8])
        self.extra_credit = 0
        self.paused = True              # takes no task until resume() (the pool is ready)
        self.client = None              # the writer, and the topology
        self.reader = None
        self.generation = 0
        self.consumed = set(self.queues)    # every queue ever consumed: what reap looks in
        self.queue_tags = {}
        self.held = {}                  # delivery tag -> ops.Held
        self._next_tag = 1
        self._first = 0                 # which queue a fetch starts with (fairness)
        self._control_id = "0-0"
        self._wake_id = "0-0"
        self._bells = {}                # queue -> the id of its bell at the last fetch
        self._more = False              # the last fetch left messages it had no credit for
        self._due_at = None             # monotonic time the next thing is due in Redis
        self._renew_at = self._sweep_at = 0.0
        self._described = None         # the description Redis has (JSON)
        self._connected_at = 0.0
        self._unconfirmed = Throttle()  # a warning per 10 s while publish_confirm falls short
        self.tally = Tally()            # per-task counts, added to Redis about once a second
        # Tasks handed over as they started (acked early) and not yet finished: only these
        # need their bookkeeping cleared when they end with nothing to store; kept across
        # reconnects, since the handover outlives the connection.
        self._handed = set()
        self._refusals = []             # result units Redis turned down, for refused()
        self._forget_turn()

    def _forget_turn(self):
        self._calls = []                # script calls and commands for the next flush
        self._unblock = False           # the reader must stop blocking and fetch (flush)
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._starts_at = 0.0           # when the oldest of _starts came
        self._finished = []             # tasks ended with no result to store, nothing to publish
        self._stash = []                # deliveries fetched by flush(), for read()
        self._fetched = False           # flush() fetched: the wake it wrote needs no fetch
        self._reserved = 0              # the credit of the FETCH behind the reader's XREAD
        self._gave_up = False           # a reject may have left Redis a workflow to send

    # -- options ----------------------------------------------------------------------------

    @property
    def heartbeat_seconds(self):
        return self.client.options.heartbeat if self.client else 10.0

    def _timing(self):
        heartbeat = self.client.options.heartbeat
        return heartbeat / 3.0, heartbeat / 2.0          # renew every, sweep every

    def credit(self):
        """How many more messages this worker takes now (none while paused)."""
        if self.paused:
            return 0
        return self.prefetch + self.extra_credit - len(self.held) - self._reserved

    # -- connecting -------------------------------------------------------------------------

    def _declare(self, client):
        """What the worker declares: on connecting, and again after the data was wiped."""
        declare_topology(client, self.settings)
        declare_worker_queues(client, self.settings, self.queues)

    def connect(self, timeout=5.0):
        client = Client(self.settings, client="minitask-worker", timeout=timeout,
                        on_connect=self._declare)
        try:
            client.connect()
            if self.generation:         # what the last connection held goes back first
                reap(client, self.id, sorted(self.consumed), client.options.handover_grace)
            keys = client.keys
            self._connected_at = time.time()
            self._described = self._description(client)
            client.script(ops.register_call(keys, self.id, self._described,
                                            ops.ms(client.options.heartbeat), self.prefetch))
            if self.paused:
                client.execute("HSET", keys.consumer_stats(self.id), "paused", 1)
            last = client.redis.execute("XREVRANGE", keys.control, "+", "-", "COUNT", 1)
            self._control_id = last[0][0].decode("ascii") if last else "0-0"
            reader = Reader(client.options, self.settings.get("BROKER_CA_FILE"))
        except (ReplyError, PublishRefusedError) as exc:
            # Out of memory, a key of another type: tried again. (A server that does not
            # speak RESP is a ProtocolError: at the worker's first connect, its last word.)
            client.redis.close()
            raise _refusal(client.options.display, exc) from None
        except BaseException:
            client.redis.close()
            raise
        self.client, self.reader = client, reader
        self._wake_id = "0-0"           # REGISTER emptied the wake stream
        self.generation += 1
        self.held = {}
        self._forget_turn()
        self.queue_tags = {name: index + 2 for index, name in enumerate(self.queues)}
        self._bells = {}
        self._more = False
        now = time.monotonic()
        renew_every, sweep_every = self._timing()
        self._renew_at, self._sweep_at = now + renew_every, now
        return self._fetch_and_arm(fetch=True)

    def _description(self, client=None):
        # `heartbeat`: how often it renews what it holds, for other workers' backstops.
        return json.dumps(dict(self.worker_info, hostname=self.hostname,
                               queues=list(self.queues), consumed=sorted(self.consumed),
                               prefetch=self.prefetch, consumer=self.id,
                               connected_at=self._connected_at,
                               heartbeat=(client or self.client).options.heartbeat),
                          sort_keys=True)

    @property
    def connected(self):
        return self.reader is not None and self.client is not None

    def fileno(self):
        return self.reader.fileno()

    # -- reading ----------------------------------------------------------------------------

    def read(self):
        if not self.connected:
            raise BrokerConnectionError("not connected to %s"
                                        % safe_url(self.settings.BROKER_URL))
        deliveries, self._stash = self._stash, []
        rang = fetched = refetch = False
        try:
            for kind, reply in self.reader.replies():
                if kind == "fetch":
                    self._reserved = 0
                    if not isinstance(reply, ReplyError):
                        deliveries += self._take(reply, self._reader_queues)
                        fetched = True
                    elif reply.prefix == "NOSCRIPT":    # SCRIPT FLUSH: the writer loads
                        refetch = True                  # them, and fetches instead
                    else:               # out of memory, above all: said as any refusal
                        error = refused(reply)          # of the worker's calls
                        raise reply if error is STALE else error
                    continue
                control, bells = self._control(reply)
                deliveries += control
                rang = rang or bells
            if not self.reader.waiting:
                # The FETCH behind the XREAD, when there was one, ran as it was answered;
                # a wake after flush() fetched needs no fetch of its own either.
                fetch = refetch or (not fetched and (rang or not self._fetched))
                self._fetched = False
                deliveries += self._fetch_and_arm(fetch)
        except BrokerConnectionError:
            self._drop_connections()
            raise
        except _REFUSALS as exc:
            raise self._refused(exc) from None
        return deliveries

    def _control(self, reply):
        """The control commands in an XREAD reply, and whether it calls for a fetch (a bell
        rang, or the block ran out: None)."""
        if reply is None:
            return [], True
        deliveries, rang = [], False
        keys = self.client.keys
        control_key = keys.control.encode("utf-8")
        wake_key = keys.wake(self.id).encode("utf-8")
        for stream, entries in reply:
            if stream == wake_key:
                self._wake_id = entries[-1][0].decode("ascii")
            if stream != control_key:
                rang = rang or stream != wake_key
                continue
            for entry_id, fields in entries:
                self._control_id = entry_id.decode("ascii")
                data = dict(zip(fields[0::2], fields[1::2])).get(b"m")
                if data is not None:
                    deliveries.append(base.Delivery(0, CONTROL_TAG, False, 1, data))
        return deliveries, rang

    def _fetch_and_arm(self, fetch):
        """Do what is due, fetch up to the credit (when `fetch`), and arm the reader."""
        self._maintain()
        deliveries = []
        now = time.monotonic()
        if self._due_at is not None and now >= self._due_at:
            redis_now, next_due = housekeeping(self.client)
            self._set_due(redis_now, next_due)
        if fetch and self.credit() > 0 and self.queues:
            deliveries = self._fetch()
        self._arm()
        return deliveries

    def _fetch(self):
        call = self._fetch_call()
        return self._take(self.client.script(call), self._fetch_queues)

    def _fetch_call(self):
        """The FETCH of the queues consumed now; they are `_fetch_queues` until the next
        one (its reply names them by their place in that list)."""
        self._first = (self._first + 1) % len(self.queues)
        self._fetch_queues = self.queues
        return ops.fetch_call(self.client.keys, self.id, self.credit(), self._live_until(),
                              self._first, self.queues)

    def _take(self, reply, queues):
        """The deliveries of a FETCH reply, sent for `queues`; the entries flagged to be
        dropped are dropped now, so that nobody sees them as unacked meanwhile."""
        client, keys = self.client, self.client.keys
        fetched = ops.parse_fetch(reply)
        if fetched is None:
            raise BrokerConnectionError("%s: this worker (%s) was presumed dead by a sweeper, "
                                        "or the data in Redis was wiped"
                                        % (client.options.display, self.id))
        self._set_due(fetched.now, fetched.next_due)
        self._more = fetched.more
        self._bells.update((name, bell) for name, bell in zip(queues, fetched.bells)
                           if name in self.queues)
        for name in queues:
            if name not in self.queues:     # cancelled since the FETCH was sent, which
                self._calls.append(         # named this consumer in it again
                    ("HDEL", keys.queue_consumers(name), self.id))
        deliveries, drops = [], []
        for queue_index, level, returned, entry_id, data, before, flag in fetched.entries:
            queue = queues[queue_index]
            tag = self._next_tag
            self._next_tag += 1
            held = ops.Held(tag, queue, level, returned, entry_id, data, before + 1)
            self.held[tag] = held
            if flag == ops.OK:
                deliveries.append(base.Delivery(tag, self.queue_tags.get(queue, 2),
                                                before > 0, before + 1, data))
                self.tally.received(data)
            else:
                if flag == ops.MALFORMED:
                    logger.error("dropped a malformed message %s of queue %r", entry_id, queue)
                else:
                    self.tally.finished(held.task_name, "REVOKED")
                drops.append((tag, _WHY[flag]))
        if drops:
            settlement, calls = ops.Settlement(keys), []
            for tag, why in drops:
                held = self.held.pop(tag)
                calls += self._given_up(held, why)
                settlement.give_back(held, self.id, "drop", client.topology, why=why)
            self._say(calls + [settlement.call(client.ttl_ms)])
        return deliveries

    def _given_up(self, held, why):
        """The calls a revoked or expired message's workflow needs, as a worker that dropped
        it would send them: REVOKED for it and the rest of its chain, and its errbacks
        published with it. They go before the drop: a worker lost in between leaves the
        message to come back and be dropped again, never a workflow that waits for ever."""
        try:
            errbacks, chained = unlocked_by(headers_of(held.data)) if why else ([], [])
        except ProtocolError:           # malformed headers: the message alone is dropped
            return []
        if not errbacks and not chained:
            return []
        content_type, payload = transport_meta(held.task_id, "REVOKED", why, time.time())
        return [("result", (task_id, "REVOKED", content_type, payload, True, held.task_id),
                 errbacks if task_id == held.task_id else [], None)
                for task_id in [held.task_id] + list(chained)]

    def _set_due(self, redis_now, next_due):
        self._due_at = None if next_due is None else \
            time.monotonic() + max(0.0, (next_due - redis_now) / 1000.0)

    def _live_until(self):
        """Until when (Redis ms) this consumer's announced credit counts: one heartbeat."""
        return int(time.time() * 1000) + ops.ms(self.client.options.heartbeat)

    def _arm(self):
        """Send the reader's next XREAD, unless one is outstanding."""
        reader = self.reader
        if reader.waiting:
            return
        now = time.monotonic()
        block = min(MAX_BLOCK, max(0.0, self._renew_at - now), max(0.0, self._sweep_at - now))
        if self._due_at is not None:
            block = min(block, max(0.0, self._due_at - now))
        keys = self.client.keys
        streams = [keys.control, keys.wake(self.id)]
        ids = [self._control_id, self._wake_id]
        credit = self.credit()
        reader.with_bells = credit > 0 and bool(self.queues)
        if reader.with_bells:
            for name in self.queues:
                streams.append(keys.bell(name))
                ids.append(self._bells.get(name, "0-0"))
        commands = [("XREAD", "COUNT", 100, "BLOCK", max(1, ops.ms(block)), "STREAMS")
                    + tuple(streams) + tuple(ids)]
        if reader.with_bells:
            # A FETCH behind the XREAD: Redis runs it the moment a bell rings (or the block
            # ends), so the answer brings the messages, with no round trip of its own. Its
            # credit is reserved until it answers.
            script, call_keys, args = self._fetch_call()
            self._reader_queues = self._fetch_queues
            commands.append(script.command(call_keys, args))
            self._reserved = credit
        reader.send(commands, ("xread", "fetch")[:len(commands)])

    # -- liveness ---------------------------------------------------------------------------

    def _maintain(self):
        """Renew heartbeat and leases, and sweep for dead workers, when each is due."""
        now = time.monotonic()
        renew_every, sweep_every = self._timing()
        if now >= self._renew_at:
            self._renew_at = now + renew_every
            self._renew()
        if now >= self._sweep_at:
            self._sweep_at = now + sweep_every
            client, options = self.client, self.client.options
            sweep(client, self.id, sweep_every, options.handover_grace)
            idle = backstop_idle(options.heartbeat)
            backstop(client, self.id, idle / 2.0, idle)
            send_given_up(client)       # what a process killed on its way left there

    def _renew(self):
        client, keys = self.client, self.client.keys
        by_stream = {}
        for held in self.held.values():
            by_stream.setdefault(held.stream(keys), []).append(held.id)
        description = self._description()
        changed = description != self._described
        if changed:
            self._described = description
        # The credit reserved by the FETCH behind the reader is credit too: it takes a
        # message the moment one comes (what `immediate` asks).
        reply = client.script(ops.renew_call(
            keys, self.id, ops.ms(client.options.heartbeat),
            0 if self.paused else max(0, self.credit() + self._reserved),
            self._live_until(), self.prefetch + self.extra_credit,
            description if changed else "", self.queues, by_stream))
        if reply and reply[0] == b"GONE":
            raise BrokerConnectionError("%s: this worker (%s) was presumed dead by a "
                                        "sweeper; reconnecting"
                                        % (client.options.display, self.id))

    def heartbeat(self):
        if self.connected:
            try:
                self._maintain()
            except _REFUSALS as exc:
                raise self._refused(exc) from None

    # -- what the worker says ---------------------------------------------------------------

    def ack(self, tag):
        self._acks.append(tag)

    def ack_started(self, tag):
        self._started.append(tag)

    def started(self, tag):
        if not self._starts:
            self._starts_at = time.monotonic()
        self._starts.append(tag)

    def flush_due(self):
        """Seconds until held-back starts must go (see `end_turn`), 0 for the acks of
        results Redis took in the last flush; None when none wait."""
        if self._acks:
            return 0.0
        if not self._starts:
            return None
        return max(0.0, self._starts_at + START_DELAY - time.monotonic())

    def reject(self, tag, requeue=True):
        self._rejects.append((tag, "requeue" if requeue else None))

    def release(self, tag):
        self._rejects.append((tag, "release"))

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        """Buffered for `flush()`. A task that keeps no result and unlocks nothing only has
        its bookkeeping cleared, for a whole turn's tasks at once (`end_turn`), rather than
        by a script call of its own; and only for a task handed over as it started: the ack
        of any other clears its bookkeeping already. (`task_name` and `runtime` are
        counted, as `redis_taskstats` says.) The rest of a stopped chain (`chained`) gets
        the same result in the same flush, by calls of its own: Redis runs them one after
        the other, but a worker killed between them may leave some of them PENDING. The ack
        of a result with something to publish goes in the flush after Redis took it."""
        self.tally.finished(task_name, state, runtime)
        if self._started and self.connected:
            # A task handed over this turn may be the one ending: its handover goes first.
            settlement = ops.Settlement(self.client.keys)
            self._add_handovers(settlement)
            if settlement:
                self._calls.append(settlement.call(self.client.ttl_ms))
        handed = task_id in self._handed
        self._handed.discard(task_id)
        if ack is not None and not publish:
            self._acks.append(ack)
        if not store and not publish and not chained:
            if handed:
                self._finished.append(task_id)
            return
        payload = bytes(payload)
        # With something to publish, a call Redis may refuse (an unroutable message): it is
        # then given back by `refused()`, and nothing of it happens.
        unit = base.Refused(task_id, state, task_name, context, None, ack) if publish else None
        self._calls.append(("result", (task_id, state, content_type, payload, store),
                            list(publish), unit))
        for other in chained:       # void, as `task_id`'s own, if `task_id` succeeded
            self._calls.append(("result", (other, state, content_type, payload, True,
                                           task_id), [], None))

    def reply(self, reply_to, data):
        key = self.client.keys.reply(reply_to) if self.client else None
        if key is not None:
            self._calls.append(("XADD", key, "MAXLEN", "~", 1000, "*", "m", data))
            self._calls.append(("PEXPIRE", key, ops.ms(REPLY_SECONDS)))

    def claim(self, task_ids):
        if self.client is not None:
            self._calls.append(ops.claim_call(self.client.keys, self.id, list(task_ids)))

    def set_extra_credit(self, held):
        self.extra_credit = held
        reader = self.reader
        if reader is None or not reader.waiting:
            return
        if reader.with_bells:
            # The FETCH behind its XREAD asks for more than the worker now takes: wake it,
            # so that it is armed again with the credit of now.
            self._unblock = self._unblock or self.credit() < 0
        elif self.credit() > 0:
            self._unblock = True        # the reader waits without the bells: wake it

    def add_queue(self, name):
        if name in self.queues:
            return False
        if self.connected:
            declare_worker_queues(self.client, self.settings, [name])
        self.queues = self.queues + [name]      # a new list: a FETCH in flight keeps its own
        self.consumed.add(name)
        self.queue_tags[name] = max(list(self.queue_tags.values()) + [1]) + 1
        self._renew_at = 0.0            # tell Redis (status, sweepers) at once
        self._unblock = True
        return True

    def cancel_queue(self, name):
        if name not in self.queues:
            return False
        self.queues = [queue for queue in self.queues if queue != name]    # as add_queue
        if self.connected:
            self._calls.append(("HDEL", self.client.keys.queue_consumers(name), self.id))
        self._renew_at = 0.0
        self._unblock = True
        return True

    def pause(self):
        """Take no more tasks: with no credit, fetches stop and the reader stops waiting on
        the queues' bells (what is held stays held). Redis hears it at the next flush, so
        that the FETCH behind the reader's XREAD takes nothing either."""
        if self.paused:
            return
        self.paused = True
        self._renew_at = 0.0            # announce the zero credit at the next turn
        self._tell_paused()

    def resume(self):
        if not self.paused:
            return
        self.paused = False
        self._renew_at = 0.0
        self._tell_paused()
        self._unblock = True            # the reader waits without the bells: wake it

    def _tell_paused(self):
        """Tell Redis at the next flush whether this consumer is paused (FETCH reads it);
        when not connected, connect() tells it."""
        if self.connected:
            stats = self.client.keys.consumer_stats(self.id)
            self._calls.append(("HSET", stats, "paused", 1) if self.paused
                               else ("HDEL", stats, "paused"))

    def report(self, info):
        """The worker's description changed: the next renewal stores it (for status)."""
        self.worker_info = dict(info or {})
        self._renew_at = 0.0
        self._unblock = True            # so that the worker's loop flushes, and renews

    @property
    def out(self):
        """True when something waits for `flush()` (what the worker's loop looks at)."""
        return bool(self._calls or self._acks or self._started or self._starts
                    or self._rejects or self._finished or self._unblock)

    def end_turn(self):
        """Turn this turn's acks, starts and rejects into one SETTLE call. Starts of
        acks-late tasks alone wait up to START_DELAY for company; those of tasks that ended
        meanwhile are not sent at all."""
        if not self.connected:
            return
        starts = self._starts
        if starts and not (self._started or self._acks or self._rejects or self._calls
                           or self._finished) and self.flush_due() > 0:
            starts = []                 # held back, for now
        elif starts:
            ended = set(self._acks)
            ended.update(tag for tag, _mode in self._rejects)
            starts = [tag for tag in starts if tag not in ended]
            self._starts = []
        settlement = ops.Settlement(self.client.keys)
        self._add_handovers(settlement)
        for tag in starts:
            held = self.held.get(tag)
            if held is not None:
                settlement.start(held, self.id)
        for tag in self._acks:
            held = self.held.pop(tag, None)
            if held is not None:
                settlement.ack(held, self.id)
        topology = self.client.topology
        for tag, mode in self._rejects:
            held = self.held.pop(tag, None)
            if held is None:
                continue
            if mode is None:            # not requeued
                queue = topology.queues.get(held.queue)
                if queue is not None and queue.args["dead_letter_queue"]:
                    mode = "dead"
                else:
                    mode = "reject"     # dropped, its task FAILURE (DeadLetteredError)
            settlement.give_back(held, self.id, mode, topology)
        self._gave_up = self._gave_up or bool(self._rejects)   # dead-lettered, dropped
        self._acks, self._rejects = [], []
        if settlement:
            self._calls.append(settlement.call(self.client.ttl_ms))
        if self._finished:
            # After the settlement, which may have handed these tasks over this same turn.
            keys, finished = self.client.keys, self._finished
            self._calls += [("HDEL", keys.inflight) + tuple(finished),
                            ("HDEL", keys.handovers) + tuple(finished),
                            ("HDEL", keys.handed_messages) + tuple(finished),
                            ("ZREM", keys.orphans) + tuple(finished)]
            self._finished = []

    def _add_handovers(self, settlement):
        """Ack this turn's tasks acked as they started, handing them over."""
        for tag in self._started:
            held = self.held.pop(tag, None)
            if held is not None:
                settlement.ack(held, self.id, handover=True)
                self._handed.add(held.task_id)
        self._started = []

    def flush(self):
        """Say everything buffered in one round trip; False (nothing is ever left)."""
        if not self.connected:
            if self._calls:
                raise BrokerConnectionError("not connected to %s"
                                        % safe_url(self.settings.BROKER_URL))
            return False
        self.end_turn()
        reader = self.reader
        takes = self.credit() > 0 and bool(self.queues)
        wake = False
        if reader.waiting and (self._unblock or (
                takes and (self._more or not reader.with_bells))):
            # Credit came back (or the queues changed): fetch in this same round trip;
            # `holds_deliveries` tells the worker to read() what came. The reader is woken
            # too when it must be armed again: asked to (`_unblock`), or when its queues were
            # drained at the last fetch, so that it waits on the bells if this fetch leaves
            # credit over. While the queues have more, a fetch fills the credit, and the
            # reader need not wait on them.
            if takes:
                self._calls.append(("fetch",))
            wake = self._unblock or not self._more or not takes
            if wake:
                self._calls.append(self._wake_call())
        self._unblock = False
        # Per-task counts ride along, about once a second.
        calls, self._calls = self._calls + self.tally.take(self.client.keys.tasks), []
        try:
            if calls:
                woken_before, self._fetched = self._fetched, False
                self._say(calls)
                if self._fetched and not wake and not reader.with_bells and self.credit() > 0:
                    # The queues ran dry in this fetch: the reader must now wait on them.
                    self.client.run([self._wake_call()])
                    wake = True
                self._fetched = woken_before or (self._fetched and wake)
            if self._gave_up:
                self._gave_up = False
                send_given_up(self.client)
            self._maintain()
        except BrokerConnectionError:
            self._drop_connections()
            raise
        except _REFUSALS as exc:
            raise self._refused(exc) from None
        return False

    def _refused(self, exc):
        """Redis refused a call of the worker's own (out of memory, a key another program
        made another type): taken as a lost connection, tried again with backoff, rather
        than the end of the worker. Returns the BrokerConnectionError to raise."""
        display = self.client.options.display if self.client is not None else \
            safe_url(self.settings.BROKER_URL)
        self._drop_connections()
        return _refusal(display, exc)

    def _wake_call(self):
        return ("XADD", self.client.keys.wake(self.id), "MAXLEN", "~", 100, "*", "w", "1")

    @property
    def holds_deliveries(self):
        return bool(self._stash)

    def _say(self, calls):
        """Run the buffered calls in order: results (with what they unlock) become PUBLISH
        calls routed now; a result whose topology changed meanwhile is routed again."""
        client = self.client
        for _ in range(STALE_ATTEMPTS):
            built = [self._build(call) for call in calls]
            # publish_confirm waits for what results and publishes wrote, not for acks: an
            # ack lost in a failover means a redelivery, never a lost task.
            confirm = client.confirm_commands() if any(
                call[0] == "result" for call in calls) else []
            replies = client.run([call for call in built if call is not None] + confirm)
            results = replies[:len(replies) - len(confirm)]
            self._check_confirm(replies[len(results):])
            stale = []
            replies = iter(results)
            for call, built_call in zip(calls, built):
                if built_call is None:
                    continue
                reply = next(replies)
                if call[0] == "fetch":
                    if isinstance(reply, ReplyError):
                        raise refused(reply)
                    self._stash += self._take(reply, self._fetch_queues)
                    self._fetched = True
                elif isinstance(reply, ReplyError):
                    error = refused(reply)
                    if error is STALE:
                        stale.append(call)
                    elif call[0] == "result" and call[3] is not None:
                        self._refusals.append(call[3]._replace(error=error))
                    else:
                        logger.error("Redis refused %s: %s", _name(call), error)
                elif call[0] == "result" and call[3] is not None and call[3].ack is not None:
                    self._acks.append(call[3].ack)      # taken: acked in the next flush
            if not stale:
                return
            client.reload()
            calls = stale
        logger.error("results not stored: the topology kept changing")

    def _check_confirm(self, replies):
        """A wait that fell short is logged, not raised: the results are stored and the
        tasks ran, so refusing them would only stop the worker (and what it fetched in
        the same batch would wait for the backstop)."""
        try:
            self.client.check_confirm(replies)
        except PublishRefusedError as exc:
            counts = self._unconfirmed.allow("unconfirmed")
            if counts is not None:
                logger.warning("results and the messages they publish: %s%s", exc,
                               folded(counts))

    def _build(self, call):
        """A buffered call as what `client.run` takes; None for a result whose messages
        cannot be routed (kept for `refused()`). A result stored by another path (a revoke
        the worker saw) is stored even when its errbacks cannot be published: that is
        logged and they are left out."""
        if call[0] == "fetch":
            return self._fetch_call()
        if call[0] != "result":
            return call
        client = self.client
        _kind, result, publish, unit = call      # unit: what refused() gives back, or None
        try:
            publications = client.publications(publish)
        except MinitaskError as exc:
            if unit is not None:
                self._refusals.append(unit._replace(error=exc))
                return None
            logger.error("task %s: what its result unlocks is not published: %s",
                         result[0], exc)
            publications = []
        return client.publish_call(publications, result=result)

    # -- ending -----------------------------------------------------------------------------

    def _drop_connections(self):
        if self.reader is not None:
            self.reader.close()
        if self.client is not None:
            self.client.redis.close()
        self.reader = None

    def lost(self):
        """The connection failed: forget it. What it held goes back to its queues now if
        Redis can be reached at once (else a sweeper returns it within a heartbeat or so)."""
        client = self.client
        self._drop_connections()
        self.client = None
        self.held = {}
        self._forget_turn()
        self._unblock = False
        if client is not None:
            quick = Client(self.settings, client="minitask-worker")
            quick.redis.retry_seconds = 0.0
            try:
                reap(quick, self.id, sorted(self.consumed), quick.options.handover_grace)
            except (MinitaskError, OSError) as exc:
                logger.info("could not give back what %s held (a sweeper will): %s", self.id, exc)
            finally:
                quick.redis.close()

    def close(self):
        """Say what is buffered, give back what is held (reaping itself), and close."""
        if self.client is None:
            return
        try:
            self.end_turn()
            calls, self._calls = self._calls, []
            calls += self.tally.take(self.client.keys.tasks, force=True)
            if calls:
                self._say(calls)
            reap(self.client, self.id, sorted(self.consumed),
                 self.client.options.handover_grace)
        except (MinitaskError, OSError) as exc:
            logger.warning("could not send the last acks and results: %s", exc)
        self._drop_connections()
        self.client = None
        self.held = {}
        self._forget_turn()


def _refusal(display, exc):
    text = str(exc).split(" script: ")[0]
    if isinstance(exc, ProtocolError):
        return BrokerConnectionError(text if display in text else "%s: %s" % (display, text))
    return BrokerConnectionError("%s refused a worker's call: %s" % (display, text))


def _name(call):
    return "a result" if call[0] == "result" else getattr(call[0], "sha1", call[0])
