"""The in-memory transport, ``memory://NAME``: a whole broker inside this process.

For tests, and for programs whose producers and workers are threads of one process, as
kombu's memory transport is. Every client and consumer of one URL shares one `Broker`, made by
the first of them from its settings (default exchange and queue, result expiry), or made
beforehand by `open_broker(NAME, ...)` with the options no setting names (the handover grace,
how early delayed messages are released). `drop_broker(NAME)` ends it, and its connections
then see BrokerConnectionError. Nothing is written anywhere: "durable" only means that a queue
outlives the connection that declared it. A forked child would see a copy no one else sees,
so it is refused the broker instead.

The rules are the built-in broker's (`minitask.protocol`, section 5), with its pure exchange
matcher: priorities 0..9 (0 first), FIFO within each, messages that come back ahead of newer
ones of their priority; prefetch per connection; redelivery counts and dead-lettering to
``<queue>.dead``; delayed messages released `release_ahead` seconds early (a worker's scheduler
starts them on time); expired and revoked tasks stored REVOKED; tasks handed over to a
consumer that is lost fail with WorkerLostError after the grace period unless claimed;
results with waits; revocations and remote control through the control exchange; leases;
durable settings; a status report of the built-in broker's shape.

Threads: one lock guards everything. The `Broker` methods that take a session are the
commands, and run with the lock held through `Broker.run_all()`, which afterwards delivers
what became deliverable and wakes the clients that wait (for a result, for control replies).
A timer thread releases delayed messages and expires what is due, woken early when a sooner
timer is set. A consumer's `fileno()` is one end of a socket pair the broker writes a byte
to when the consumer's inbox gets its first delivery, so a worker's selector wakes for it as
for a socket.
"""

import collections
import heapq
import inspect
import json
import logging
import os
import socket
import threading
import time

from .. import __version__, control, protocol as P
from ..broker.results import KEEP_RECHECK, same_worker
from ..broker.routing import Exchange
from ..exceptions import (
    BrokerConnectionError, BrokerError, BrokerFullError, DeadLetteredError, MinitaskError,
    NotDeliverableError, ProtocolError, TaskRevokedError, UnroutableError, WorkerLostError,
)
from ..joins import Joins, Parked, chord_error, chord_wait, headers_of, unlocked_by
from ..message import ResultMeta, encode_result_meta
from . import base, declare_topology, declare_worker_queues

__all__ = ["Broker", "Client", "Consumer", "client", "open_broker", "drop_broker", "broker_for"]

logger = logging.getLogger(__name__)

READY, DELAYED, UNACKED, DEAD = "ready", "delayed", "unacked", "dead"
QUEUE_DEFAULTS = {"durable": True, "exclusive": False, "auto_delete": False,
                  "max_length": None, "max_redeliveries": 10, "dead_letter_queue": None}
_ROWS = 200                     # running tasks listed by status; the counts are always exact

_brokers = {}                   # name -> Broker
_brokers_lock = threading.Lock()


def open_broker(name, **options):
    """A new, empty broker for ``memory://NAME`` (options: those of `Broker`), replacing
    any broker of that name."""
    broker = Broker(name, **options)
    with _brokers_lock:
        old, _brokers[name] = _brokers.get(name), broker
    if old is not None:
        old.shut()
    return broker


def drop_broker(name):
    """End the broker of ``memory://NAME``: its connections close, its messages are gone."""
    with _brokers_lock:
        broker = _brokers.pop(name, None)
    if broker is not None:
        broker.shut()


def broker_for(settings):
    """The broker ``settings.BROKER_URL`` names, made from the settings if there is none."""
    name = settings.BROKER_URL.split("://", 1)[1].rstrip("/")
    with _brokers_lock:
        if name not in _brokers:
            _brokers[name] = Broker(
                name, result_expires=settings.RESULT_EXPIRES,
                default_exchange=settings.DEFAULT_EXCHANGE,
                default_exchange_type=settings.DEFAULT_EXCHANGE_TYPE,
                default_queue=settings.DEFAULT_QUEUE,
                default_routing_key=settings.DEFAULT_ROUTING_KEY)
        broker = _brokers[name]
    if broker.pid != os.getpid():
        raise BrokerConnectionError("memory://%s lives in process %d; a forked child cannot "
                                    "reach it" % (name, broker.pid))
    return broker


def dead_letter_name(queue_name):
    """``<queue>.dead``, its queue part cut (on a character boundary) to fit in 255 bytes."""
    return queue_name.encode("utf-8")[:250].decode("utf-8", "ignore") + ".dead"


class _Message:
    __slots__ = ("id", "data", "queue", "priority", "expires_at", "deliveries", "where")

    def __init__(self, id, data, queue, priority, expires_at, deliveries=0):
        self.id, self.data, self.queue, self.priority = id, data, queue, priority
        self.expires_at, self.deliveries, self.where = expires_at, deliveries, READY


class _Queue:
    """Waiting messages in delivery order, and the consumers served round-robin.

    One heap of ``(priority, order, message)``. A new message's order is the broker's serial
    when it arrives; one that comes back keeps its id, the serial when it was first published,
    so it sorts ahead of every message that arrived after it left (all the waiting ones of its
    priority, since they leave in order). A message taken out of the middle (expired,
    purged) is only marked; `pop()` skips it.
    """

    def __init__(self, name, args, owner):
        self.name, self.args, self.owner = name, args, owner   # owner: of an exclusive queue
        self.heap = []
        self.ready = self.unacked = self.delayed = 0
        self.consumers = []             # _Subscription
        self.next_consumer = 0
        self.counts = dict.fromkeys(("published", "delivered", "acked", "dead_lettered"), 0)

    def push(self, message, order):
        heapq.heappush(self.heap, (message.priority, order, message))
        message.where = READY
        self.ready += 1

    def pop(self):
        """The next waiting message, marked UNACKED (in flight), or None."""
        while self.heap:
            message = heapq.heappop(self.heap)[2]
            if message.where == READY:
                self.ready -= 1
                message.where = UNACKED
                return message
        return None

    def drain(self):
        taken = [entry[2] for entry in self.heap if entry[2].where == READY]
        for message in taken:
            message.where = DEAD
        self.heap, self.ready = [], 0
        return taken


class _Session:
    """What one connection owns: its consumers, unacked deliveries, handed-over tasks."""

    def __init__(self, id, client, info):
        self.id, self.client, self.info = id, client, dict(info or {})
        self.open = True
        self.prefetch = 0               # 0 = unlimited
        self.unacked = {}               # delivery tag -> message, in delivery order
        self.next_tag = 1
        self.subscriptions = {}         # consumer tag -> _Subscription
        self.started = set()            # task ids handed over to this connection
        self.exclusive = []             # its exclusive queues
        self.inbox = collections.deque()    # deliveries not read yet
        self.wake = None                # called when the inbox gets its first delivery
        self.connected_at = time.time()
        self.delivered = 0

    def has_credit(self):
        return not self.prefetch or len(self.unacked) < self.prefetch


class _Subscription(collections.namedtuple("_Subscription", "tag queue session no_ack")):
    __slots__ = ()

    def can_take(self):
        """Prefetch counts unacked messages: a consumer that acks nothing is never full."""
        return self.no_ack or self.session.has_credit()


def _refuse(code, text):
    return BrokerError(text, code)


class Broker:
    """One in-memory broker (see the module docstring); `open_broker()` makes one."""

    def __init__(self, name, handover_grace=10.0, release_ahead=0.5, result_expires=86400.0,
                 default_exchange="minitask", default_exchange_type="direct",
                 default_queue="minitask", default_routing_key="minitask"):
        self.name, self.pid, self.started_at = name, os.getpid(), time.time()
        self.handover_grace = handover_grace
        self.release_ahead = release_ahead
        self.result_expires = result_expires
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)     # for clients that wait
        self.timers_changed = threading.Condition(self.lock)    # for the timer thread
        self.closed = False
        self.exchanges = {"": Exchange(""), default_exchange: Exchange(
            default_exchange, default_exchange_type), control.CONTROL_EXCHANGE: Exchange(
            control.CONTROL_EXCHANGE, "fanout", durable=False)}
        self.queues = {default_queue: _Queue(default_queue, dict(QUEUE_DEFAULTS), None)}
        self.exchanges[default_exchange].bind(default_queue, default_routing_key)
        self.sessions = {}
        self.results = {}               # task id -> (Result, expires_at)
        self.inflight = {}              # task id -> "RECEIVED" / "STARTED", no result yet
        self.revoked = {}               # task id -> when it is forgotten
        self.handovers = {}             # task id -> [session (None once lost), task name]
        self.orphans = {}               # task id -> when it fails unless claimed
        self.kv, self.leases = {}, {}   # leases: name -> (holder, expires_at)
        self.recent_failures = []       # (time, task id), newest last
        self.joins = Joins()            # parked chord bodies (minitask.joins)
        self.unroutable = 0
        self._serial = 0                # message ids, arrival order, session ids
        self._timers = []               # heap of (when, serial, action, args)
        self._dirty = set()             # queues that may be able to deliver
        threading.Thread(target=self._run_timers, name="memory://%s timers" % name,
                         daemon=True).start()

    # -- turns, sessions, time ---------------------------------------------------------------

    def run(self, session, name, *args, **kwargs):
        """The command `name` as a turn of its own (see `run_all`); returns its answer."""
        return self.run_all(session, [(name, args, kwargs)])

    def run_all(self, session, commands, refused=None):
        """One broker turn: ``self.<name>(session, *args, **kwargs)`` for each command under
        the lock, then deliver what became deliverable and wake whoever waits. Returns the
        last answer. A refusal is raised, or, given `refused`, passed to it (with the
        command's name and arguments) and the rest run."""
        with self.lock:
            if self.closed or not session.open:
                raise BrokerConnectionError("the connection to memory://%s is closed"
                                            % self.name)
            answer = None
            try:
                for name, args, kwargs in commands:
                    try:
                        answer = getattr(self, name)(session, *args, **kwargs)
                    except MinitaskError as exc:
                        if refused is None or isinstance(exc, BrokerConnectionError):
                            raise
                        refused(name, args, exc)
            finally:
                self._dispatch()
                self.changed.notify_all()
            return answer

    def _wait(self, session, timeout):
        """Wait for a change (the lock held); BrokerConnectionError if the session closed."""
        self.changed.wait(timeout)
        if self.closed or not session.open:
            raise BrokerConnectionError("the connection to memory://%s closed" % self.name)

    def _next(self):
        self._serial += 1
        return self._serial

    def _at(self, when, action, *args):
        heapq.heappush(self._timers, (when, self._next(), action, args))
        if self._timers[0][0] == when:
            self.timers_changed.notify()    # sooner than the timer thread sleeps until

    def _run_timers(self):
        """The timer thread: do what is due, then sleep until the next timer or a change."""
        with self.lock:
            while not self.closed:
                now = time.time()
                try:
                    if self._timers and self._timers[0][0] <= now:
                        while self._timers and self._timers[0][0] <= now:
                            _when, _serial, action, args = heapq.heappop(self._timers)
                            action(*args)
                        self._dispatch()
                        self.changed.notify_all()
                except Exception:       # a bug here must not stop every later timer
                    logger.exception("memory://%s: a timer failed", self.name)
                self.timers_changed.wait(self._timers[0][0] - now if self._timers else None)

    def open_session(self, client, info=None):
        with self.lock:
            if self.closed:
                raise BrokerConnectionError("memory://%s was dropped" % self.name)
            session = _Session(self._next(), client, info)
            self.sessions[session.id] = session
            return session

    def close_session(self, session):
        with self.lock:
            self._close(session)
            self._dispatch()
            self.changed.notify_all()

    def _close(self, session):
        """The connection is gone: its unacked messages go back (ahead of newer ones, being
        older), its consumers and exclusive queues go, its handed-over tasks are orphaned."""
        if not session.open:
            return
        session.open = False
        del self.sessions[session.id]
        self._reject(session, list(session.unacked), True)
        for consumer in list(session.subscriptions.values()):
            self._unsubscribe(consumer)
        for queue in list(session.exclusive):
            self._drop_queue(queue)
        deadline = time.time() + self.handover_grace
        for task_id in session.started:
            self.handovers[task_id][0] = None
            self.orphans[task_id] = deadline
            self._at(deadline, self._worker_lost, task_id, deadline)
        session.inbox.clear()
        if session.wake is not None:
            session.wake()              # its selector wakes; read() says it is closed

    def shut(self):
        with self.lock:
            for session in list(self.sessions.values()):
                self._close(session)
            self.closed = True
            self.changed.notify_all()
            self.timers_changed.notify()

    # -- topology -----------------------------------------------------------------------------

    def declare_exchange(self, session, exchange, type="direct", durable=True,
                         auto_delete=False, passive=False):
        existing = self.exchanges.get(exchange)
        if passive:
            self._exchange(exchange)
        elif existing is not None and existing.type != type:
            raise _refuse(P.PRECONDITION_FAILED, "exchange %r exists with type %r, not %r"
                          % (exchange, existing.type, type))
        elif existing is None:
            if exchange.startswith("amq."):
                raise _refuse(P.PRECONDITION_FAILED, "exchange name %r is reserved" % exchange)
            try:
                self.exchanges[exchange] = Exchange(exchange, type, bool(durable),
                                                    bool(auto_delete))
            except ValueError as exc:   # an unknown type
                raise ProtocolError(str(exc)) from None
        return {}

    def _exchange(self, name):
        if name not in self.exchanges:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % name)
        return self.exchanges[name]

    def declare_queue(self, session, queue, durable=True, exclusive=False, auto_delete=False,
                      passive=False, **arguments):
        given = dict(arguments, durable=bool(durable), exclusive=bool(exclusive),
                     auto_delete=bool(auto_delete))
        for key in ("max_length", "max_redeliveries"):
            value = given.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise ProtocolError("%s must be a non-negative integer or null" % key)
        name = queue
        queue = self.queues.get(name) if name else None
        if queue is None and passive:
            raise _refuse(P.NOT_FOUND, "no queue %r" % name)
        if queue is None:
            if not name:
                name = "mt.gen-%s" % os.urandom(8).hex()
                given.update(exclusive=True, durable=False, auto_delete=True)
            args = {key: given.get(key, default) for key, default in QUEUE_DEFAULTS.items()}
            queue = self.queues[name] = _Queue(name, args, session if args["exclusive"] else None)
            if queue.owner is not None:
                session.exclusive.append(queue)
        else:
            self._check_exclusive(session, queue)
            wanted = {key: given.get(key, value) for key, value in queue.args.items()}
            if not passive and wanted != queue.args:
                raise _refuse(P.PRECONDITION_FAILED, "queue %r exists with other arguments: %s"
                              % (name, {key: value for key, value in queue.args.items()
                                        if wanted[key] != value}))
        return {"queue": queue.name, "messages": queue.ready, "consumers": len(queue.consumers)}

    def _check_exclusive(self, session, queue):
        if queue.owner not in (None, session):
            raise _refuse(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                          % queue.name)
        return queue

    def _queue(self, session, name):
        if name not in self.queues:
            raise _refuse(P.NOT_FOUND, "no queue %r" % name)
        return self._check_exclusive(session, self.queues[name])

    def bind(self, session, queue, exchange, binding_key="", arguments=None):
        if exchange == "":
            raise _refuse(P.PRECONDITION_FAILED, "the default exchange cannot be bound to")
        self._exchange(exchange).bind(self._queue(session, queue).name, binding_key,
                                      dict(arguments or {}))
        return {}

    def purge(self, session, queue):
        return len(self._queue(session, queue).drain())

    def _drop_queue(self, queue):
        if self.queues.get(queue.name) is not queue:
            return
        del self.queues[queue.name]
        queue.drain()               # its unacked and delayed messages die when they come back
        for consumer in queue.consumers:
            consumer.session.subscriptions.pop(consumer.tag, None)
        queue.consumers = []
        for exchange in list(self.exchanges.values()):
            exchange.unbind_queue(queue.name)
            if exchange.auto_delete and not exchange.bindings:
                del self.exchanges[exchange.name]
        if queue.owner is not None:
            queue.owner.exclusive.remove(queue)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, session, data, confirm=True, timeout=None):
        self._enqueue(self._route(data))

    def publish_many(self, session, messages, timeout=None):
        for data in messages:
            self._enqueue(self._route(data))

    def publish_atomic(self, session, messages, timeout=None):
        routes = [self._route(data) for data in messages]     # every refusal before any
        for route in routes:
            self._enqueue(route)

    def publish_with_record(self, session, data, key, value, timeout=None):
        route = self._route(data)
        self.kv[key] = json.loads(json.dumps(value))      # a copy, as the broker keeps
        self._enqueue(route)

    def _route(self, data):
        """Where a message goes, checked against every rule that may refuse it (raising the
        refusal). Changes nothing, so that several publishes can be checked before any.
        `data` is encoded, or a `protocol.Message` as the task API hands it over."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = P.encode_message(data)
        fields = P.parse_message(data)
        exchange, key = self._exchange(fields.exchange), fields.routing_key
        if exchange.name:
            names = exchange.route(key, P.headers_of(data, fields.headers_at)
                                   if exchange.type == "headers" else None)
        else:
            names = {key} & set(self.queues)
        queues = [self.queues[name] for name in sorted(names)]
        if not queues and fields.flags & P.MANDATORY:
            raise UnroutableError("message to exchange %r with routing key %r matched no "
                                  "queue" % (exchange.name, key))
        if queues and fields.flags & P.IMMEDIATE and not any(
                consumer.can_take() for queue in queues for consumer in queue.consumers):
            raise NotDeliverableError("no consumer of %s can take the message now"
                                      % ", ".join(repr(queue.name) for queue in queues))
        for queue in queues:
            if queue.args["max_length"] is not None and queue.ready >= queue.args["max_length"]:
                raise BrokerFullError("queue %r is full (max_length %d)"
                                          % (queue.name, queue.args["max_length"]))
        priority = P.DEFAULT_PRIORITY if fields.priority is None else fields.priority
        return bytes(data), queues, priority, fields.not_before, fields.expires_at

    def _enqueue(self, route, released=False):
        """Queue a routed message; a chord's body is held instead, unless `released`."""
        data, queues, priority, not_before, expires_at = route
        fields = P.parse_message(data)
        ids = None if released else chord_wait(headers_of(data, fields))
        if ids:                         # a chord's body: held until its header's results
            if fields.message_id not in self.joins.parked:
                self._decide(self.joins.park(Parked(fields.message_id, data, ids),
                                             self._final_state))
            return
        now = time.time()
        if not queues:
            self.unroutable += 1        # dropped, as AMQP does; counted for status
            return
        if expires_at and expires_at <= now:
            self._task_revoked(P.message_id_of(data), "expired before it was queued", data)
            return
        for queue in queues:
            queue.counts["published"] += 1
            message = _Message(self._next(), data, queue, priority, expires_at or None)
            if expires_at:
                self._at(expires_at, self._expire, message)
            if not_before - self.release_ahead > now:
                message.where = DELAYED
                queue.delayed += 1
                self._at(not_before - self.release_ahead, self._release, message)
            else:
                self._push(message)

    def _push(self, message):
        message.queue.push(message, self._next())
        self._dirty.add(message.queue)

    def _release(self, message):
        if message.where == DELAYED:
            message.queue.delayed -= 1
            if self.queues.get(message.queue.name) is message.queue:
                self._push(message)
            else:
                message.where = DEAD    # its queue was deleted meanwhile

    def _expire(self, message):
        """A waiting message's time is up: it is never delivered; its task is REVOKED."""
        if message.where in (READY, DELAYED):
            if message.where == READY:
                message.queue.ready -= 1
            else:
                message.queue.delayed -= 1
            message.where = DEAD
            self._task_revoked(P.message_id_of(message.data), "expired", message.data)

    # -- delivering -----------------------------------------------------------------------------

    def _dispatch(self):
        """Hand waiting messages to consumers with credit, one per queue per pass, so that a
        consumer of several queues is fed from all of them."""
        queues, self._dirty = list(self._dirty), set()
        while queues:
            queues = [queue for queue in queues if self._deliver_one(queue)]

    def _deliver_one(self, queue):
        count = len(queue.consumers)
        index = next((i % count for i in range(queue.next_consumer, queue.next_consumer + count)
                      if queue.consumers[i % count].can_take()), None)
        message = None if index is None else self._take(queue)
        if message is None:
            return False
        consumer = queue.consumers[index]
        queue.next_consumer = index + 1
        session = consumer.session
        message.deliveries += 1
        queue.counts["delivered"] += 1
        session.delivered += 1
        tag = 0
        if consumer.no_ack:
            message.where = DEAD
        else:
            tag, session.next_tag = session.next_tag, session.next_tag + 1
            session.unacked[tag] = message
            queue.unacked += 1
            if P.message_id_of(message.data):
                self.inflight.setdefault(P.message_id_of(message.data), "RECEIVED")
        session.inbox.append(base.Delivery(tag, consumer.tag, message.deliveries > 1,
                                           message.deliveries, message.data))
        if len(session.inbox) == 1 and session.wake is not None:
            session.wake()
        return True

    def _take(self, queue):
        """The next message of `queue` to deliver: expired and revoked ones are stored
        REVOKED on the way, never delivered."""
        message = queue.pop()
        while message is not None:
            task_id = P.message_id_of(message.data)
            if message.expires_at is not None and message.expires_at <= time.time():
                self._task_revoked(task_id, "expired", message.data)
            elif task_id in self.revoked:
                self._task_revoked(task_id, "revoked", message.data)
            else:
                return message
            message.where = DEAD
            message = queue.pop()
        return None

    def consume(self, session, queue, no_ack=False):
        queue = self._queue(session, queue)
        tag = max(list(session.subscriptions) + [0]) + 1
        session.subscriptions[tag] = consumer = _Subscription(tag, queue, session, no_ack)
        queue.consumers.append(consumer)
        self._dirty.add(queue)
        return tag

    def cancel(self, session, tag):
        consumer = session.subscriptions.get(tag)
        if consumer is not None:
            self._unsubscribe(consumer)
            if consumer.no_ack:         # its unread deliveries want no ack: they go with it
                session.inbox = collections.deque(
                    delivery for delivery in session.inbox if delivery.consumer_tag != tag)

    def _unsubscribe(self, consumer):
        consumer.session.subscriptions.pop(consumer.tag, None)
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
            if queue.args["auto_delete"] and not queue.consumers:
                self._drop_queue(queue)

    def qos(self, session, prefetch):
        session.prefetch = prefetch
        self._dirty.update(consumer.queue for consumer in session.subscriptions.values())

    # -- acks, rejects, handovers ---------------------------------------------------------------

    def _take_unacked(self, session, tags):
        taken = [session.unacked.pop(tag) for tag in tags if tag in session.unacked]
        for message in taken:
            message.queue.unacked -= 1
        self._dirty.update(consumer.queue for consumer in session.subscriptions.values())
        return taken

    def ack(self, session, tags, started=False):
        """Ack; `started` hands the tasks over to this connection (`Consumer.ack_started`)."""
        for message in self._take_unacked(session, tags):
            message.queue.counts["acked"] += 1
            message.where = DEAD
            task_id = P.message_id_of(message.data)
            if started:
                self.handovers.setdefault(task_id, [None, "", b""])[1:] = [
                    P.parse_message(message.data).type, message.data]
                self.orphans.pop(task_id, None)
                self._hand_over(task_id, session)
                self.inflight[task_id] = "STARTED"
            else:
                self.inflight.pop(task_id, None)

    def start(self, session, tags):
        for message in (session.unacked.get(tag) for tag in tags):
            if message is not None and P.message_id_of(message.data):
                self.inflight[P.message_id_of(message.data)] = "STARTED"

    def reject(self, session, tags, requeue=True, release=False):
        self._reject(session, tags, requeue, release)

    def _reject(self, session, tags, requeue, release=False):
        """Requeue (ahead of newer messages, or dead-letter after too many deliveries), or
        drop (dead-letter when the queue names a dead-letter queue). A message `release`d
        never started: its delivery does not count."""
        for message in self._take_unacked(session, tags):
            if release and message.deliveries > 0:
                message.deliveries -= 1
            queue = message.queue
            if P.message_id_of(message.data) not in self.handovers:
                self.inflight.pop(P.message_id_of(message.data), None)
            message.where = DEAD
            if self.queues.get(queue.name) is not queue:
                continue                # deleted meanwhile: the message goes with it
            if requeue and (queue.args["max_redeliveries"] is None
                            or message.deliveries <= queue.args["max_redeliveries"]):
                queue.push(message, message.id)
                self._dirty.add(queue)
            elif requeue or queue.args["dead_letter_queue"]:
                self._dead_letter(message, "delivered %d times" % message.deliveries
                                  if requeue else "rejected")
            else:
                self._gave_up(message, "was rejected and dropped")

    def _dead_letter(self, message, why):
        queue = message.queue
        name = queue.args["dead_letter_queue"] or dead_letter_name(queue.name)
        if name not in self.queues:
            self.queues[name] = _Queue(name, dict(QUEUE_DEFAULTS, durable=queue.args["durable"],
                                                  max_redeliveries=None), None)
        logger.warning("message %s of queue %r dead-lettered to %r: %s",
                       P.message_id_of(message.data), queue.name, name, why)
        queue.counts["dead_lettered"] += 1
        self._push(_Message(self._next(), message.data, self.queues[name], message.priority,
                            None, message.deliveries))
        self._gave_up(message, "was dead-lettered to %r (%s)" % (name, why))

    def _gave_up(self, message, why):
        task_id = P.message_id_of(message.data)
        self._store_final(task_id, "FAILURE", DeadLetteredError("task %s %s" % (task_id, why)),
                          message.data)

    def claim(self, session, task_ids):
        """As the built-in broker: a reconnected worker owns the tasks it says it runs,
        orphaned or still under a connection not yet seen to go."""
        claimed = [task_id for task_id in task_ids if task_id in self.handovers and (
            self.handovers[task_id][0] in (None, session)
            or same_worker(self.handovers[task_id][0], session))]
        for task_id in claimed:
            self.orphans.pop(task_id, None)
            self._hand_over(task_id, session)
            self.inflight[task_id] = "STARTED"
        return {"claimed": len(claimed)}

    def _hand_over(self, task_id, session):
        """`session` owns handed-over `task_id` now; a connection that had it does not."""
        previous = self.handovers[task_id][0]
        if previous is not None and previous is not session:
            previous.started.discard(task_id)
        self.handovers[task_id][0] = session
        session.started.add(task_id)

    def _worker_lost(self, task_id, deadline):
        if self.orphans.get(task_id) == deadline:
            del self.orphans[task_id]
            data = self.handovers.pop(task_id)[2]
            if self._final_state(task_id) is not None:
                self.inflight.pop(task_id, None)    # done already: it is not running
                return
            logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)",
                           task_id)
            self._store_final(task_id, "FAILURE",
                              WorkerLostError("the worker running the task was lost"), data)

    # -- results and revocations --------------------------------------------------------------

    def store_result(self, session, task_id, state, content_type, payload, store=True,
                     publish=(), chained=()):
        """Store a result and publish what it unlocks, all or nothing: every publish is
        checked before anything changes. `chained` ids get the same result."""
        routes = [self._route(data) for data in publish]
        owner = self.handovers.pop(task_id, [None])[0]
        self.orphans.pop(task_id, None)
        if owner is not None:
            owner.started.discard(task_id)
        self.inflight.pop(task_id, None)
        if state != "SUCCESS" and self._final_state(task_id) == "SUCCESS":
            return          # as the built-in broker: a SUCCESS stays, and unlocks no failure
        for stored in ([task_id] if store else []) + list(chained):
            if state == "SUCCESS" or self._final_state(stored) != "SUCCESS":
                self._store(stored, state, content_type, payload)
        for route in routes:
            self._enqueue(route)

    def _store(self, task_id, state, content_type, payload):
        now = time.time()
        result = base.Result(state, state in P.READY_STATES, now, content_type, bytes(payload))
        entry = self.results.get(task_id)
        if state == "STARTED" and entry is not None and entry[0].state == "STARTED":
            entry[:] = [result, now + self.result_expires]  # its first state's timer serves
        else:                                               # (and moves on with it)
            entry = self.results[task_id] = [result, now + self.result_expires]
            self._at(entry[1], self._forget_entry, self.results, task_id, entry)
        self.inflight.pop(task_id, None)
        if state == "FAILURE":
            self.recent_failures = self.recent_failures[-49:] + [(now, task_id)]
        if state in P.READY_STATES:
            self._decide(self.joins.final(task_id, state))

    def _forget_entry(self, mapping, key, entry):
        if mapping.get(key) is entry:   # not a newer entry under the same key
            if mapping is self.results and entry[1] > time.time():
                self._at(entry[1], self._forget_entry, mapping, key, entry)
                return                  # a running task's later state moved it on
            if mapping is self.results and self.joins.pinned(key):
                self._at(time.time() + KEEP_RECHECK, self._forget_entry, mapping, key, entry)
                return                  # a chord's body still needs it
            del mapping[key]

    def _store_final(self, task_id, state, exc, data=None):
        """Store a final state the broker decides itself, unless the task has one; with the
        task's message `data`, publish what that unlocks (`_failed_message`)."""
        if task_id and not (task_id in self.results and self.results[task_id][0].ready):
            meta = ResultMeta(task_id, state, exc, None, "", 0, time.time())
            self._store(task_id, state, *encode_result_meta(meta, "json"))
        elif self._final_state(task_id) == "SUCCESS":
            return                      # a copy of a task that succeeded: nothing failed
        if data is not None:
            self._failed_message(task_id, data)

    def _task_revoked(self, task_id, why, data=None):
        self._store_final(task_id, "REVOKED", TaskRevokedError("task %s %s" % (task_id, why)),
                          data)

    # -- workflows: chords and what failures unlock (as minitask.broker.chords does) --

    def _final_state(self, task_id):
        entry = self.results.get(task_id)
        return entry[0].state if entry is not None and entry[0].ready else None

    def _decide(self, decisions):
        for parked, failed_id, state in decisions:
            if failed_id is None:
                self._publish_unlocked(parked.data, released=True)
            else:
                self._store_final(parked.body_id, "FAILURE",
                                  chord_error(parked.body_id, failed_id, state), parked.data)

    def _failed_message(self, task_id, data):
        """Publish the errbacks of the failed task of message `data`; give the rest of its
        chain its result."""
        try:
            errbacks, chained = unlocked_by(headers_of(data))
        except ProtocolError as exc:
            logger.error("task %s: its workflow headers are unreadable: %s", task_id, exc)
            return
        entry = self.results.get(task_id)
        if entry is not None:
            for other in chained:
                if self._final_state(other) is None:
                    self._store(other, entry[0].state, entry[0].content_type,
                                entry[0].payload)
        for errback in errbacks:
            self._publish_unlocked(errback)

    def _publish_unlocked(self, data, released=False):
        try:
            self._enqueue(self._route(data), released)
        except MinitaskError as exc:
            logger.error("task %s, unlocked by a workflow, was dropped: %s",
                         P.message_id_of(data), exc)

    def set_state(self, session, task_id, content_type, payload):
        """A running task's own state, as the built-in broker keeps it (protocol 3.4)."""
        if self._final_state(task_id) is None:
            inflight = self.inflight.get(task_id)
            self._store(task_id, "STARTED", content_type, payload)
            if inflight is not None:
                self.inflight[task_id] = inflight       # it still runs
        return True

    def get_result(self, session, task_id):
        if task_id in self.results:
            return self.results[task_id][0]
        return base.Result(self.inflight.get(task_id, "PENDING"), False, 0.0, "", b"")

    def wait_result(self, session, task_id, timeout=None):
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        result = self.get_result(session, task_id)
        while not result.ready and (deadline is None or deadline > time.monotonic()):
            self._wait(session, None if deadline is None else deadline - time.monotonic())
            result = self.get_result(session, task_id)
        return result

    def forget(self, session, task_ids, expired=False):
        """(`expired` asks for nothing more: the timer thread drops results as they expire.)"""
        forgotten = [task_id for task_id in task_ids if self.results.pop(task_id, None)]
        for task_id in task_ids:
            self.inflight.pop(task_id, None)
        return {"forgotten": len(forgotten)}

    def revoke(self, session, task_ids, terminate=False, signal="SIGTERM"):
        """Remember the ids until their results would expire (queued messages of them are
        dropped when they reach the head of their queue), store REVOKED for the ones not
        running, and tell every worker."""
        forget_at = time.time() + self.result_expires
        for task_id in task_ids:
            self.revoked[task_id] = forget_at
            self._at(forget_at, self._forget_entry, self.revoked, task_id, forget_at)
            if task_id not in self.inflight and task_id not in self.handovers:
                self._task_revoked(task_id, "revoked")
        arguments = {"task_ids": list(task_ids), "terminate": bool(terminate),
                     "signal": str(signal or "SIGTERM")}
        self.publish(session, P.encode_message(control.command_message("revoke", arguments)))
        return {}

    def gather(self, session, tag, ticket, timeout, limit):
        """Control replies to `ticket` reaching this session's consumer `tag`, until `timeout`
        seconds pass or `limit` hosts have replied."""
        replies = {}
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            if not session.inbox:
                if deadline <= time.monotonic():
                    break
                self._wait(session, deadline - time.monotonic())
                continue
            delivery = session.inbox.popleft()
            try:
                body = control.decode_body(delivery.message.body)
            except ProtocolError:
                continue                # not a reply of ours
            if delivery.consumer_tag == tag and body.get("ticket") == ticket:
                replies[body.get("hostname", "?")] = body.get("reply")
        return replies

    # -- the rest -----------------------------------------------------------------------------

    def lease(self, session, name, holder, ttl):
        if type(ttl) not in (int, float) or not 0 < ttl <= 3600:
            raise ProtocolError("'ttl' must be a number of seconds up to 3600")
        now = time.time()
        current = self.leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            current = self.leases[name] = (holder, now + ttl)
        return {"granted": current[0] == holder, "holder": current[0],
                "expires_in": current[1] - now}

    def kv_get(self, session, key):
        return self.kv.get(key)

    def kv_set(self, session, key, value):
        self.kv[key] = value

    def status(self, session, scheduled=0):
        """The built-in broker's status report, as far as a broker in memory has its parts."""
        now = time.time()
        held = sorted(((when + self.release_ahead, args[0]) for when, _n, action, args
                       in self._timers if action == self._release
                       and args[0].where == DELAYED), key=lambda item: item[0])[:scheduled]
        workers, running = [], []
        for other in self.sessions.values():
            if other.info and other.subscriptions:
                workers.append(self._worker_row(other, now, running))
        tasks = sorted(self.inflight.items())
        return {
            "broker": {"version": "minitask %s (memory)" % __version__, "pid": self.pid,
                       "uptime": round(now - self.started_at, 3), "time": now,
                       "connections": len(self.sessions),
                       "clients": sum(1 for s in self.sessions.values() if not s.info),
                       "unroutable": self.unroutable, "results": len(self.results),
                       "revoked": len(self.revoked), "persistent": False, "fsync": "no",
                       "journal_bytes": 0, "journal_live_bytes": 0,
                       "next_message_id": self._serial + 1},
            "queues": [dict(queue.counts, name=name, ready=queue.ready, unacked=queue.unacked,
                            delayed=queue.delayed, consumers=len(queue.consumers),
                            durable=queue.args["durable"], exclusive=queue.args["exclusive"],
                            max_length=queue.args["max_length"], dead=getattr(
                                self.queues.get(dead_letter_name(name)), "ready", 0))
                       for name, queue in sorted(self.queues.items())],
            "exchanges": [dict(exchange.describe(), bindings=len(exchange.bindings))
                          for name, exchange in sorted(self.exchanges.items()) if name],
            "workers": sorted(workers, key=lambda w: (str(w.get("hostname")), w["session"])),
            "tasks": {"received": sum(1 for _, state in tasks if state == "RECEIVED"),
                      "started": [task_id for task_id, state in tasks
                                  if state == "STARTED"][:_ROWS]},
            "recent_failures": [{"time": when, "task_id": task_id}
                                for when, task_id in reversed(self.recent_failures)],
            "states": list(P.STATES),
            "running": running[:_ROWS],
            "scheduled": [{"id": P.message_id_of(message.data), "name": P.parse_message(
                message.data).type, "eta": eta, "queue": message.queue.name,
                "priority": message.priority} for eta, message in held],
        }

    def _worker_row(self, session, now, running):
        """A worker's status row; its running tasks are added to `running`."""
        late = [P.parse_message(message.data) for message in session.unacked.values()
                if self.inflight.get(P.message_id_of(message.data)) == "STARTED"]
        row = dict(session.info, peer="memory", session=session.id,
                   connected_for=round(now - session.connected_at, 3),
                   unacked=len(session.unacked), prefetch=session.prefetch,
                   handed_over=len(session.started), delivered=session.delivered,
                   reserved=len(session.unacked) - len(late),
                   running=len(session.started) + len(late))
        tasks = [(fields.message_id, fields.type) for fields in late]
        tasks += [(task_id, self.handovers[task_id][1]) for task_id in sorted(session.started)]
        running.extend({"task_id": task_id, "task": name, "pid": row.get("pid"),
                        "worker": str(row.get("hostname") or ""), "session": session.id}
                       for task_id, name in tasks)
        return row


def _command(name):
    """A `Client` method that is the broker command `name`, run on this connection."""
    def command(self, *args, **kwargs):
        return self._run(name, *args, **kwargs)
    command.__name__ = name
    command.__doc__ = getattr(base.Client, name).__doc__
    command.__signature__ = inspect.signature(getattr(base.Client, name))
    return command


class Client(base.Client):
    """A producer's connection to a memory broker: each method is one broker command."""

    def __init__(self, settings, client="minitask-client", on_connect=None, timeout=10.0,
                 info=None):
        self.url, self.settings, self.client = settings.BROKER_URL, settings, client
        self.on_connect = on_connect
        self.timeout = timeout          # nothing here waits on a network: kept for the seam
        self.info = info                # a worker's description, for status
        self.broker = self.session = None

    @property
    def connected(self):
        return self.session is not None and self.session.open

    def connect(self):
        if not self.connected:
            self.broker = broker_for(self.settings)
            self.session = self.broker.open_session(self.client, self.info)
            if self.on_connect is not None:
                self.on_connect(self)
        return self

    def close(self):
        if self.session is not None:
            self.broker.close_session(self.session)

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    def _run(self, name, *args, **kwargs):
        if self.session is None:
            self.connect()
        return self.broker.run(self.session, name, *args, **kwargs)

    declare_exchange = _command("declare_exchange")
    declare_queue = _command("declare_queue")
    bind = _command("bind")
    purge = _command("purge")
    publish_many = _command("publish_many")
    publish_with_record = _command("publish_with_record")
    publish_atomic = _command("publish_atomic")
    get_result = _command("get_result")
    set_state = _command("set_state")
    wait_result = _command("wait_result")
    forget = _command("forget")
    revoke = _command("revoke")
    lease = _command("lease")
    kv_get = _command("kv_get")
    kv_set = _command("kv_set")
    status = _command("status")

    def publish(self, data, confirm=True, timeout=None):
        try:
            self._run("publish", data)
        except MinitaskError as exc:
            if confirm or isinstance(exc, BrokerConnectionError):
                raise
            logger.warning("a publish sent without confirm was refused: %s", exc)

    def broadcast(self, method, arguments=None, destination=None, timeout=1.0, reply=True,
                  limit=None):
        if not reply:
            self.publish(P.encode_message(control.command_message(method, arguments,
                                                                  destination)))
            return {}
        reply_queue = self.declare_queue("", durable=False, exclusive=True,
                                         auto_delete=True)["queue"]
        tag = self._run("consume", reply_queue, True)
        message = control.command_message(method, arguments, destination, reply_queue)
        try:
            self.publish(P.encode_message(message))
            return self._run("gather", tag, message.message_id, timeout, limit)
        finally:
            self._run("cancel", tag)    # the reply queue goes with its consumer


class Consumer(base.Consumer):
    """A worker's connection to a memory broker. What it says waits for `flush()`, as the
    built-in transport's waits for its socket; `add_queue` and `cancel_queue` act at once."""

    def __init__(self, settings, queues, prefetch, worker_info, hostname):
        self.settings, self.queues, self.prefetch = settings, list(queues), prefetch
        self.worker_info, self.hostname = worker_info, hostname
        self.extra_credit = 0           # messages held by the worker (ETA, rate limits)
        self.conn = None                # a Client on this consumer's session
        self.generation = 0
        self.control_tag = None
        self.consumer_tags = {}         # consumer tag -> queue name
        self._wake = None               # (reader, writer): the socket pair behind fileno()
        self.paused = True              # no task consumers until resume()
        self._forget_turn()

    def _forget_turn(self):
        self._out = []                  # (command, args, {}), run by flush()
        self._units = {}                # id of a store_result's args -> its base.Refused
        self._refusals = []
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._releases = []
        self._qos_sent = None

    def connect(self, timeout=5.0):
        conn = Client(self.settings, client="minitask-worker", info=self.worker_info)
        reader, writer = socket.socketpair()
        for sock in (reader, writer):
            sock.setblocking(False)
        try:
            conn.connect().session.wake = lambda: _nudge(writer)
            declare_topology(conn, self.settings)
            declare_worker_queues(conn, self.settings, self.queues)
            control_queue = conn.declare_queue("", durable=False, exclusive=True,
                                               auto_delete=True)["queue"]
            conn.bind(control_queue, control.CONTROL_EXCHANGE)
            self._forget_turn()
            self._qos_sent = self.prefetch + self.extra_credit
            conn._run("qos", self._qos_sent)
            self.consumer_tags = {} if self.paused else {
                conn._run("consume", name): name for name in self.queues}
            self.control_tag = conn._run("consume", control_queue, True)
        except BaseException:
            conn.close()
            reader.close()
            writer.close()
            raise
        self.conn, self._wake = conn, (reader, writer)
        self.generation += 1
        return self.read()

    @property
    def connected(self):
        return self.conn is not None and self.conn.connected

    def fileno(self):
        return self._wake[0].fileno()

    def read(self):
        if not self.connected:
            raise BrokerConnectionError("the connection to %s is closed"
                                        % self.settings.BROKER_URL)
        with self.conn.broker.lock:     # the broker nudges under it: no nudge is missed
            try:
                while self._wake[0].recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass                    # drained
            deliveries = list(self.conn.session.inbox)
            self.conn.session.inbox.clear()
        return deliveries

    def _say(self, name, *args):
        self._out.append((name, args, {}))

    def ack(self, tag):
        self._acks.append(tag)

    def ack_started(self, tag):
        self._started.append(tag)

    def started(self, tag):
        self._starts.append(tag)

    def reject(self, tag, requeue=True):
        if requeue:
            self._rejects.append(tag)
        else:
            self._say("reject", [tag], False)

    def release(self, tag):
        self._releases.append(tag)

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        if self._started:
            # A task handed over this turn may be the one ending: its handover goes first.
            self._say("ack", self._started, True)
            self._started = []
        self._say("store_result", task_id, state, content_type, payload, store, list(publish),
                  list(chained))
        if publish or chained:          # a unit the broker may refuse: see refused()
            self._units[id(self._out[-1][1])] = base.Refused(task_id, state, task_name,
                                                             context, None, ack)
        elif ack is not None:
            self._acks.append(ack)

    def reply(self, reply_to, data):
        self._say("publish", data)

    def claim(self, task_ids):
        self._say("claim", list(task_ids))

    def set_extra_credit(self, held):
        self.extra_credit = held

    def add_queue(self, name):
        if name in self.queues:
            return False
        self.queues.append(name)
        if self.connected:
            declare_worker_queues(self.conn, self.settings, [name])
            if not self.paused:
                self.consumer_tags[self.conn._run("consume", name)] = name
        return True

    def pause(self):
        self.paused = True
        for tag in list(self.consumer_tags):
            if self.connected:
                self.conn._run("cancel", tag)
        self.consumer_tags = {}

    def resume(self):
        if not self.paused:
            return
        self.paused = False
        if self.connected:
            for name in self.queues:
                self.consumer_tags[self.conn._run("consume", name)] = name

    def report(self, info):
        self.worker_info = info
        if self.connected:
            self.conn.session.info = info

    def cancel_queue(self, name):
        for tag in [tag for tag, queue in self.consumer_tags.items() if queue == name]:
            del self.consumer_tags[tag]
            if self.connected:
                self.conn._run("cancel", tag)
        if name not in self.queues:
            return False
        self.queues.remove(name)
        return True

    def heartbeat(self):
        pass                            # a connection in memory cannot go quiet

    def end_turn(self):
        """This turn's acks, starts and rejects, in the built-in transport's order; QOS."""
        for name, tags, flags in (("ack", self._started, (True,)), ("start", self._starts, ()),
                                  ("ack", self._acks, (False,)),
                                  ("reject", self._rejects, (True,)),
                                  ("reject", self._releases, (True, True))):
            if tags:
                self._say(name, tags, *flags)
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._releases = []
        if self._qos_sent is not None and self.prefetch + self.extra_credit != self._qos_sent:
            self._qos_sent = self.prefetch + self.extra_credit
            self._say("qos", self._qos_sent)

    def flush(self):
        if self._out and self.conn is not None:
            out, self._out = self._out, []
            units, self._units = self._units, {}

            def refused(name, args, exc):
                unit = units.pop(id(args), None)
                if unit is None:
                    _log_refusal(name, exc)
                else:
                    self._refusals.append(unit._replace(error=exc))
            self.conn.broker.run_all(self.conn.session, out, refused=refused)
            taken = [unit.ack for unit in units.values() if unit.ack is not None]
            if taken:                   # the units the broker took: their acks now
                self.conn.broker.run_all(self.conn.session, [("ack", (taken, False), {})])
        return False

    def lost(self):
        if self.conn is not None:
            self.conn.close()
        for sock in self._wake or ():
            sock.close()
        self.conn = self._wake = None
        self._forget_turn()

    def close(self):
        if self.conn is None:
            return
        self.end_turn()
        try:
            self.flush()
        except BrokerConnectionError as exc:
            logger.warning("could not send the last acks and results: %s", exc)
        self.lost()


def _log_refusal(name, exc):
    """A refused command that asked for no answer is logged, as the built-in transport's are."""
    logger.error("the broker refused %s: %s", name, exc)


def _nudge(sock):
    try:
        sock.send(b"\0")
    except OSError:
        pass    # full (the reader has bytes waiting anyway) or closed (the consumer is gone)


def client(settings, client="minitask-client", on_connect=None, timeout=10.0):
    """A `Client` of the memory broker the settings name (see `minitask.transport.client_for`)."""
    return Client(settings, client, on_connect, timeout)
