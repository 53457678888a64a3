"""The in-memory transport, ``memory://NAME``: a whole broker inside this process.

For tests, and for programs whose producers and workers are threads of one process, as
kombu's memory transport is. Every client and consumer of one URL shares one `Broker`, made by
the first of them from its settings (default exchange and queue, result expiry), or made
beforehand by `open_broker(NAME, ...)` with the options no setting names (the handover grace,
how early delayed messages are released). `drop_broker(NAME)` ends it, and its connections
then see BrokerConnectionError. Nothing is written anywhere: "durable" only means that a queue
outlives the connection that declared it; a forked child would see a copy that no one else
sees, so it is refused the broker instead.

The rules are the built-in broker's (`minitask.protocol`, section 5), with its pure exchange
matcher: priorities 0..9 (0 first), FIFO within each, messages that come back ahead of newer
ones of their priority; prefetch per connection; redelivery counts and dead-lettering to
``<queue>.dead``; delayed messages released `release_ahead` seconds early (a worker's scheduler
starts them on time); expired and revoked tasks stored REVOKED; tasks handed over to a
consumer that is lost fail with WorkerLostError after the grace period unless claimed;
results with waits; revocations and remote control through the control exchange; leases;
durable settings; a status report of the built-in broker's shape.

Threads: one lock guards everything. `Broker` methods that take a session run with it held,
through `Broker.call()` (or `run()`), which afterwards delivers what became deliverable and
wakes, through one condition, whoever waits: clients for results and control replies, and
the timer thread that releases delayed messages and expires what is due. A consumer's
`fileno()` is one end of a socket pair the broker writes a byte to when the consumer's inbox
gets its first delivery, so a worker's selector wakes for it as for a socket.
"""

import collections
import heapq
import json
import logging
import os
import socket
import threading
import time

from .. import __version__, control, protocol as P
from ..broker.routing import EXCHANGE_TYPES, Exchange
from ..exceptions import (
    BrokerConnectionError, BrokerError, MinitaskError, NotDeliverableError, ProtocolError,
    PublishRefusedError, TaskRevokedError, UnroutableError, WorkerLostError,
)
from ..message import ResultMeta, encode_result_meta
from . import base, declare_topology, declare_worker_queues

__all__ = ["Broker", "Client", "Consumer", "client", "open_broker", "drop_broker", "broker_for"]

logger = logging.getLogger(__name__)

READY, DELAYED, UNACKED, DEAD = "ready", "delayed", "unacked", "dead"
_STATUS_ROWS = 200              # running tasks listed by status (the counts are always exact)

_brokers = {}                   # name -> Broker
_brokers_lock = threading.Lock()


def open_broker(name, **options):
    """A new, empty broker for ``memory://NAME``, replacing any broker of that name.
    `options` are those of `Broker`."""
    broker = Broker(name, **options)
    with _brokers_lock:
        old, _brokers[name] = _brokers.get(name), broker
    if old is not None:
        old.shut()
    return broker


def drop_broker(name):
    """End the broker of ``memory://NAME``: its connections are closed, its messages gone."""
    with _brokers_lock:
        broker = _brokers.pop(name, None)
    if broker is not None:
        broker.shut()


def broker_for(settings):
    """The broker ``settings.BROKER_URL`` names, made from the settings if there is none."""
    name = settings.BROKER_URL.split("://", 1)[1].rstrip("/")
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = Broker(
                name, result_expires=settings.RESULT_EXPIRES,
                default_exchange=settings.DEFAULT_EXCHANGE,
                default_exchange_type=settings.DEFAULT_EXCHANGE_TYPE,
                default_queue=settings.DEFAULT_QUEUE,
                default_routing_key=settings.DEFAULT_ROUTING_KEY)
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
        self.id = id
        self.data = data                # as published (protocol section 3.1)
        self.queue = queue
        self.priority = priority
        self.expires_at = expires_at
        self.deliveries = deliveries
        self.where = READY


class _Queue:
    """Waiting messages in delivery order, and the consumers served round-robin.

    One heap of ``(priority, 0 came back / 1 new, order, message)``: priority first, then
    messages that came back (oldest first), then the rest in arrival order. A message taken
    out of the middle (expired, purged) is only marked; `pop()` skips it.
    """

    def __init__(self, name, args, owner):
        self.name = name
        self.durable = bool(args.get("durable", True))
        self.exclusive = bool(args.get("exclusive", False))
        self.auto_delete = bool(args.get("auto_delete", False))
        self.max_length = args.get("max_length")
        self.max_redeliveries = args.get("max_redeliveries", 10)
        self.dead_letter_queue = args.get("dead_letter_queue")
        self.owner = owner              # the session of an exclusive queue
        self.heap = []
        self.ready = self.unacked = self.delayed = 0
        self.consumers = []             # _Subscription
        self.next_consumer = 0
        self.counts = dict.fromkeys(("published", "delivered", "acked", "dead_lettered"), 0)

    def arguments(self):
        """What a redeclaration must match (AMQP's 'equivalent' rule)."""
        return {"durable": self.durable, "exclusive": self.exclusive,
                "auto_delete": self.auto_delete, "max_length": self.max_length,
                "max_redeliveries": self.max_redeliveries,
                "dead_letter_queue": self.dead_letter_queue}

    def push(self, message, order, came_back=False):
        heapq.heappush(self.heap, (message.priority, 0 if came_back else 1, order, message))
        message.where = READY
        self.ready += 1

    def pop(self):
        """The next waiting message, marked UNACKED (in flight), or None."""
        while self.heap:
            message = heapq.heappop(self.heap)[3]
            if message.where == READY:
                self.ready -= 1
                message.where = UNACKED
                return message
        return None

    def drain(self):
        taken = [entry[3] for entry in self.heap if entry[3].where == READY]
        for message in taken:
            message.where = DEAD
        self.heap, self.ready = [], 0
        return taken


class _Session:
    """What one connection owns: its consumers, unacked deliveries, handed-over tasks."""

    def __init__(self, id, client, info):
        self.id = id
        self.client = client
        self.info = dict(info or {})    # a worker's description, for status
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


_Subscription = collections.namedtuple("_Subscription", "tag queue session no_ack")


def _refuse(code, text):
    return BrokerError(text, code)


class Broker:
    """One in-memory broker. See the module docstring; `open_broker()` makes one."""

    def __init__(self, name, handover_grace=10.0, release_ahead=0.5, result_expires=86400.0,
                 default_exchange="minitask", default_exchange_type="direct",
                 default_queue="minitask", default_routing_key="minitask"):
        self.name = name
        self.handover_grace = handover_grace
        self.release_ahead = release_ahead
        self.result_expires = result_expires
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.started_at = time.time()
        self.exchanges = {"": Exchange("", "direct")}
        self.queues = {}
        self.sessions = {}
        self.results = {}               # task id -> (Result, expires_at)
        self.inflight = {}              # task id -> "RECEIVED" / "STARTED", no result yet
        self.revoked = {}               # task id -> when it is forgotten
        self.handovers = {}             # task id -> [session (None once lost), task name]
        self.orphans = {}               # task id -> when it fails unless claimed
        self.kv = {}
        self.leases = {}                # name -> (holder, expires_at)
        self.recent_failures = []       # (time, task id), newest last
        self.unroutable = 0
        self._serial = 0                # message ids and arrival order
        self._timers = []               # heap of (when, serial, action, args)
        self._dirty = set()             # queues that may be able to deliver
        self.exchanges[default_exchange] = Exchange(default_exchange, default_exchange_type)
        self._make_queue(default_queue, {}, None)
        self.exchanges[default_exchange].bind(default_queue, default_routing_key)
        self.exchanges[control.CONTROL_EXCHANGE] = Exchange(control.CONTROL_EXCHANGE, "fanout",
                                                            durable=False)
        threading.Thread(target=self._run_timers, name="memory://%s timers" % name,
                         daemon=True).start()

    # -- turns, sessions, time ---------------------------------------------------------------

    def call(self, session, action, *args):
        """One broker turn: ``self.<action>(session, *args)`` under the lock, then deliver
        what became deliverable and wake whoever waits."""
        with self.lock:
            self._check(session)
            try:
                return getattr(self, action)(session, *args)
            finally:
                self._settle()

    def run(self, session, actions):
        """Many actions in one turn (a consumer's flush); one refused is logged, as the
        built-in broker's refusals of commands that asked for no reply are."""
        with self.lock:
            self._check(session)
            try:
                for action in actions:
                    try:
                        getattr(self, action[0])(session, *action[1:])
                    except MinitaskError as exc:
                        logger.error("memory://%s refused %s: %s", self.name, action[0], exc)
            finally:
                self._settle()

    def _check(self, session):
        if self.closed or not session.open:
            raise BrokerConnectionError("the connection to memory://%s is closed" % self.name)

    def _settle(self):
        self._dispatch()
        self.changed.notify_all()

    def _next(self):
        self._serial += 1
        return self._serial

    def _at(self, when, action, *args):
        heapq.heappush(self._timers, (when, self._next(), action, args))

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
                        self._settle()
                except Exception:       # a bug here must not stop every later timer
                    logger.exception("memory://%s: a timer failed", self.name)
                self.changed.wait(self._timers[0][0] - now if self._timers else None)

    def open_session(self, client, info=None):
        with self.lock:
            if self.closed:
                raise BrokerConnectionError("memory://%s was dropped" % self.name)
            session = _Session(self._next(), client, info)
            self.sessions[session.id] = session
            return session

    def close_session(self, session):
        with self.lock:
            if session.open:
                self._close(session)
                self._settle()

    def _close(self, session):
        """The connection is gone: its unacked messages go back (ahead of newer ones, as they
        are older), its queues and consumers go, its handed-over tasks are orphaned."""
        session.open = False
        self.sessions.pop(session.id, None)
        for message in session.unacked.values():
            message.queue.unacked -= 1
            self._inflight_clear(message)
            self._return(message)
        session.unacked = {}
        for subscription in list(session.subscriptions.values()):
            self._unsubscribe(subscription)
        for queue in list(session.exclusive):
            self._drop_queue(queue)
        deadline = time.time() + self.handover_grace
        for task_id in session.started:
            self.handovers[task_id][0] = None
            self.orphans[task_id] = deadline
            self._at(deadline, self._worker_lost, task_id, deadline)
        session.started = set()
        session.inbox.clear()
        if session.wake is not None:
            session.wake()              # its selector wakes; read() then says it is closed

    def shut(self):
        with self.lock:
            for session in list(self.sessions.values()):
                self._close(session)
            self.closed = True
            self.changed.notify_all()

    # -- topology -----------------------------------------------------------------------------

    def declare_exchange(self, session, name, type, durable, auto_delete, passive):
        existing = self.exchanges.get(name)
        if existing is None and passive:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % name)
        if existing is not None:
            if not passive and existing.type != type:
                raise _refuse(P.PRECONDITION_FAILED, "exchange %r exists with type %r, not %r"
                              % (name, existing.type, type))
        elif name.startswith("amq."):
            raise _refuse(P.PRECONDITION_FAILED, "exchange name %r is reserved" % name)
        elif type not in EXCHANGE_TYPES:
            raise ProtocolError("exchange type %r: expected one of %s"
                                % (type, ", ".join(EXCHANGE_TYPES)))
        else:
            self.exchanges[name] = Exchange(name, type, bool(durable), bool(auto_delete))
        return {}

    def declare_queue(self, session, name, args, passive):
        for key in ("max_length", "max_redeliveries"):
            value = args.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise ProtocolError("%s must be a non-negative integer or null" % key)
        queue = self.queues.get(name) if name else None
        if queue is None:
            if passive:
                raise _refuse(P.NOT_FOUND, "no queue %r" % name)
            if not name:
                name = "mt.gen-%s" % os.urandom(8).hex()
                args = dict(args, exclusive=True, durable=False, auto_delete=True)
            queue = self._make_queue(name, args, session if args.get("exclusive") else None)
        else:
            self._check_exclusive(session, queue)
            current = queue.arguments()
            wanted = dict(current, **{key: args[key] for key in current if key in args})
            if not passive and wanted != current:
                raise _refuse(P.PRECONDITION_FAILED, "queue %r exists with other arguments: %s"
                              % (name, {key: value for key, value in current.items()
                                        if wanted[key] != value}))
        return {"queue": queue.name, "messages": queue.ready, "consumers": len(queue.consumers)}

    def _make_queue(self, name, args, owner):
        queue = self.queues[name] = _Queue(name, args, owner)
        if owner is not None:
            owner.exclusive.append(queue)
        return queue

    def _check_exclusive(self, session, queue):
        if queue.exclusive and queue.owner is not session:
            raise _refuse(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                          % queue.name)

    def _queue(self, session, name):
        queue = self.queues.get(name)
        if queue is None:
            raise _refuse(P.NOT_FOUND, "no queue %r" % name)
        self._check_exclusive(session, queue)
        return queue

    def bind(self, session, queue_name, exchange_name, binding_key, arguments):
        if exchange_name == "":
            raise _refuse(P.PRECONDITION_FAILED, "the default exchange cannot be bound to")
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
        exchange.bind(self._queue(session, queue_name).name, binding_key, arguments)
        return {}

    def purge(self, session, name):
        return len(self._queue(session, name).drain())

    def _drop_queue(self, queue):
        if self.queues.get(queue.name) is not queue:
            return
        del self.queues[queue.name]
        queue.drain()               # unacked and delayed ones die when they come back
        for subscription in queue.consumers:
            subscription.session.subscriptions.pop(subscription.tag, None)
        queue.consumers = []
        for exchange in list(self.exchanges.values()):
            exchange.unbind_queue(queue.name)
            if exchange.auto_delete and not exchange.bindings:
                del self.exchanges[exchange.name]
        if queue.owner is not None and queue in queue.owner.exclusive:
            queue.owner.exclusive.remove(queue)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, session, data):
        self._enqueue(self._route(data))

    def publish_many(self, session, messages):
        for data in messages:
            self._enqueue(self._route(data))

    def publish_with_record(self, session, data, key, value):
        route = self._route(data)
        self.kv[key] = json.loads(json.dumps(value))      # a copy, as the broker's own
        self._enqueue(route)

    def _route(self, data):
        """Where a message goes, checked against every rule that may refuse it (raising the
        refusal); changes nothing, so that several publishes can be checked before any."""
        flags, priority, not_before, expires_at, exchange_name, key, headers_at = \
            P.routing_fields(data)
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
        if exchange_name:
            names = exchange.route(key, P.headers_of(data, headers_at)
                                   if exchange.type == "headers" else None)
        else:
            names = {key} if key in self.queues else ()
        queues = [self.queues[name] for name in sorted(names)]
        if not queues and flags & P.MANDATORY:
            raise UnroutableError("message to exchange %r with routing key %r matched no "
                                  "queue" % (exchange_name, key))
        if queues and flags & P.IMMEDIATE and not any(
                subscription.session.has_credit()
                for queue in queues for subscription in queue.consumers):
            raise NotDeliverableError("no consumer of %s can take the message now"
                                      % ", ".join(repr(queue.name) for queue in queues))
        for queue in queues:
            if queue.max_length is not None and queue.ready >= queue.max_length:
                raise PublishRefusedError("queue %r is full (max_length %d)"
                                          % (queue.name, queue.max_length))
        if priority == P.NO_PRIORITY:
            priority = P.DEFAULT_PRIORITY
        return bytes(data), queues, priority, not_before, expires_at

    def _enqueue(self, route):
        data, queues, priority, not_before, expires_at = route
        if not queues:
            self.unroutable += 1        # dropped, as AMQP does; counted for status
            return
        now = time.time()
        if expires_at and expires_at <= now:
            self._task_revoked(P.message_id_of(data), "expired before it was queued")
            return
        for queue in queues:
            queue.counts["published"] += 1
            message = _Message(self._next(), data, queue, priority, expires_at or None)
            if message.expires_at:
                self._at(message.expires_at, self._expire_waiting, message)
            if not_before and not_before - self.release_ahead > now:
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

    def _expire_waiting(self, message):
        if message.where in (READY, DELAYED):
            if message.where == READY:
                message.queue.ready -= 1
            else:
                message.queue.delayed -= 1
            message.where = DEAD
            self._task_revoked(P.message_id_of(message.data), "expired")

    # -- delivering and acks ------------------------------------------------------------------

    def _dispatch(self):
        """Hand waiting messages to consumers with credit, one per queue per pass, so that a
        consumer of several queues is fed from all of them."""
        queues, self._dirty = list(self._dirty), set()
        while queues:
            queues = [queue for queue in queues if self._deliver_one(queue)]

    def _deliver_one(self, queue):
        count = len(queue.consumers)
        for step in range(count):
            index = (queue.next_consumer + step) % count
            subscription = queue.consumers[index]
            if subscription.session.has_credit():
                break
        else:
            return False
        message = self._take(queue)
        if message is None:
            return False
        queue.next_consumer = index + 1
        session = subscription.session
        message.deliveries += 1
        queue.counts["delivered"] += 1
        session.delivered += 1
        tag = 0
        if subscription.no_ack:
            message.where = DEAD
        else:
            tag = session.next_tag
            session.next_tag += 1
            session.unacked[tag] = message
            queue.unacked += 1
            task_id = P.message_id_of(message.data)
            if task_id:
                self.inflight.setdefault(task_id, "RECEIVED")
        session.inbox.append(base.Delivery(tag, subscription.tag, message.deliveries > 1,
                                           message.deliveries, message.data))
        if len(session.inbox) == 1 and session.wake is not None:
            session.wake()
        return True

    def _take(self, queue):
        """The next message of `queue` to deliver; expired and revoked ones are settled on
        the way (stored REVOKED, never delivered)."""
        while True:
            message = queue.pop()
            if message is None:
                return None
            task_id = P.message_id_of(message.data)
            if message.expires_at is not None and message.expires_at <= time.time():
                self._task_revoked(task_id, "expired")
            elif task_id in self.revoked:
                self._task_revoked(task_id, "revoked")
            else:
                return message
            message.where = DEAD

    def consume(self, session, queue_name, tag=None, no_ack=False):
        queue = self._queue(session, queue_name)
        if tag is None:
            tag = max(list(session.subscriptions) + [0]) + 1
        elif tag in session.subscriptions:
            raise _refuse(P.PRECONDITION_FAILED, "consumer tag %d is in use" % tag)
        subscription = _Subscription(tag, queue, session, no_ack)
        session.subscriptions[tag] = subscription
        queue.consumers.append(subscription)
        self._dirty.add(queue)
        return tag

    def cancel(self, session, tag):
        subscription = session.subscriptions.get(tag)
        if subscription is not None:
            self._unsubscribe(subscription)
            if subscription.no_ack:     # unread deliveries of it need no ack: drop them
                session.inbox = collections.deque(
                    delivery for delivery in session.inbox if delivery.consumer_tag != tag)

    def _unsubscribe(self, subscription):
        subscription.session.subscriptions.pop(subscription.tag, None)
        queue = subscription.queue
        if subscription in queue.consumers:
            queue.consumers.remove(subscription)
        if queue.auto_delete and not queue.consumers:
            self._drop_queue(queue)

    def qos(self, session, prefetch):
        session.prefetch = prefetch
        self._credit_changed(session)

    def _credit_changed(self, session):
        self._dirty.update(subscription.queue for subscription in session.subscriptions.values())

    def _take_unacked(self, session, tags):
        taken = []
        for tag in tags:
            message = session.unacked.pop(tag, None)
            if message is not None:
                message.queue.unacked -= 1
                taken.append(message)
        self._credit_changed(session)
        return taken

    def ack(self, session, tags, started=False):
        """Ack; `started` hands the tasks over to this connection (see `ack_started`)."""
        for message in self._take_unacked(session, tags):
            message.queue.counts["acked"] += 1
            message.where = DEAD
            task_id = P.message_id_of(message.data)
            if started:
                self.handovers[task_id] = [session, P.task_fields(message.data)[1]]
                self.orphans.pop(task_id, None)
                session.started.add(task_id)
                self.inflight[task_id] = "STARTED"
            else:
                self.inflight.pop(task_id, None)

    def start(self, session, tags):
        for tag in tags:
            message = session.unacked.get(tag)
            if message is not None and P.message_id_of(message.data):
                self.inflight[P.message_id_of(message.data)] = "STARTED"

    def reject(self, session, tags, requeue):
        for message in self._take_unacked(session, tags):
            self._inflight_clear(message)
            if requeue:
                self._return(message)
            elif message.queue.dead_letter_queue:
                self._dead_letter(message, "rejected")
            else:
                message.where = DEAD

    def _inflight_clear(self, message):
        task_id = P.message_id_of(message.data)
        if task_id not in self.handovers:
            self.inflight.pop(task_id, None)

    def _return(self, message):
        """An unacked message comes back: to its queue, or dead-lettered after too many tries."""
        queue = message.queue
        if self.queues.get(queue.name) is not queue:
            message.where = DEAD
        elif queue.max_redeliveries is not None and message.deliveries > queue.max_redeliveries:
            self._dead_letter(message, "delivered %d times" % message.deliveries)
        else:
            queue.push(message, message.id, came_back=True)
            self._dirty.add(queue)

    def _dead_letter(self, message, why):
        queue = message.queue
        name = queue.dead_letter_queue or dead_letter_name(queue.name)
        target = self.queues.get(name) or self._make_queue(
            name, {"durable": queue.durable, "max_redeliveries": None}, None)
        logger.warning("message %s of queue %r dead-lettered to %r: %s",
                       P.message_id_of(message.data), queue.name, name, why)
        queue.counts["dead_lettered"] += 1
        message.where = DEAD
        self._push(_Message(self._next(), message.data, target, message.priority, None,
                            message.deliveries))

    def claim(self, session, task_ids):
        claimed = [task_id for task_id in task_ids if self.orphans.pop(task_id, None)]
        for task_id in claimed:
            self.handovers[task_id][0] = session
            session.started.add(task_id)
            self.inflight[task_id] = "STARTED"
        return {"claimed": len(claimed)}

    # -- results and revocations --------------------------------------------------------------

    def store_result(self, session, task_id, state, content_type, payload, store, publish):
        """Store a result and publish what it unlocks, all or nothing: every publish is
        checked before anything changes."""
        routes = [self._route(data) for data in publish]
        owner = self.handovers.pop(task_id, [None])[0]
        self.orphans.pop(task_id, None)
        if owner is not None:
            owner.started.discard(task_id)
        if store:
            self._store(task_id, state, content_type, payload)
        else:
            self.inflight.pop(task_id, None)
        for route in routes:
            self._enqueue(route)

    def _store(self, task_id, state, content_type, payload):
        now = time.time()
        entry = self.results[task_id] = (
            base.Result(state, state in P.READY_STATES, now, content_type, bytes(payload)),
            now + self.result_expires)
        self.inflight.pop(task_id, None)
        self._at(entry[1], self._forget_entry, self.results, task_id, entry)
        if state == "FAILURE":
            self.recent_failures.append((now, task_id))
            del self.recent_failures[:-50]

    def _forget_entry(self, mapping, key, entry):
        if mapping.get(key) is entry:   # not a newer entry under the same key
            del mapping[key]

    def _store_final(self, task_id, state, exc):
        """Store a final state the broker decides itself, unless the task has one."""
        current = self.results.get(task_id)
        if task_id and (current is None or not current[0].ready):
            meta = ResultMeta(task_id, state, exc, None, "", 0, time.time())
            self._store(task_id, state, *encode_result_meta(meta, "json"))

    def _task_revoked(self, task_id, why):
        self._store_final(task_id, "REVOKED", TaskRevokedError("task %s %s" % (task_id, why)))

    def _worker_lost(self, task_id, deadline):
        if self.orphans.get(task_id) == deadline:
            del self.orphans[task_id]
            del self.handovers[task_id]
            logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)",
                           task_id)
            self._store_final(task_id, "FAILURE",
                              WorkerLostError("the worker running the task was lost"))

    def get_result(self, session, task_id):
        entry = self.results.get(task_id)
        if entry is not None:
            return entry[0]
        return base.Result(self.inflight.get(task_id, "PENDING"), False, 0.0, "", b"")

    def wait_result(self, session, task_id, timeout):
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            result = self.get_result(session, task_id)
            left = None if deadline is None else deadline - time.monotonic()
            if result.ready or (left is not None and left <= 0):
                return result
            self.changed.wait(left)
            self._check(session)

    def forget(self, session, task_ids):
        forgotten = [task_id for task_id in task_ids if self.results.pop(task_id, None)]
        for task_id in task_ids:
            self.inflight.pop(task_id, None)
        return {"forgotten": len(forgotten)}

    def revoke(self, session, task_ids, terminate, signal):
        """Remember the ids until their results would expire (queued messages of them are
        dropped when they reach a consumer), store REVOKED for the ones not running, and tell
        every worker."""
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
            if session.inbox:
                delivery = session.inbox.popleft()
                try:
                    body = control.decode_body(delivery.message.body)
                except ProtocolError:
                    continue            # not a reply of ours
                if delivery.consumer_tag == tag and body.get("ticket") == ticket:
                    replies[body.get("hostname", "?")] = body.get("reply")
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.changed.wait(left)
            self._check(session)
        return replies

    # -- the rest -----------------------------------------------------------------------------

    def lease(self, session, name, holder, ttl):
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 3600:
            raise ProtocolError("'ttl' must be a number of seconds up to 3600")
        now = time.time()
        current = self.leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            current = self.leases[name] = (holder, now + ttl)
        return {"granted": current[0] == holder, "holder": current[0],
                "expires_in": current[1] - now}

    def kv_get(self, session, key):
        return self.kv.get(key)

    def status(self, session):
        """The built-in broker's status report, as far as a broker in memory has its parts."""
        now = time.time()
        queues = [dict(queue.counts, name=queue.name, ready=queue.ready,
                       unacked=queue.unacked, delayed=queue.delayed,
                       consumers=len(queue.consumers), durable=queue.durable,
                       exclusive=queue.exclusive, max_length=queue.max_length,
                       dead=getattr(self.queues.get(dead_letter_name(queue.name)), "ready", 0))
                  for queue in sorted(self.queues.values(), key=lambda q: q.name)]
        workers, running = [], []
        for session in self.sessions.values():
            if session.info and session.subscriptions:
                workers.append(self._worker_row(session, now, running))
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
            "queues": queues,
            "exchanges": [dict(exchange.describe(), bindings=len(exchange.bindings))
                          for name, exchange in sorted(self.exchanges.items()) if name],
            "workers": sorted(workers, key=lambda w: (str(w.get("hostname")), w["session"])),
            "tasks": {"received": sum(1 for _, state in tasks if state == "RECEIVED"),
                      "started": [task_id for task_id, state in tasks
                                  if state == "STARTED"][:_STATUS_ROWS]},
            "recent_failures": [{"time": when, "task_id": task_id}
                                for when, task_id in reversed(self.recent_failures)],
            "states": list(P.STATES),
            "running": running[:_STATUS_ROWS],
        }

    def _worker_row(self, session, now, running):
        """A worker's status row; its running tasks are added to `running`."""
        late = [message for message in session.unacked.values()
                if self.inflight.get(P.message_id_of(message.data)) == "STARTED"]
        row = dict(session.info, peer="memory", session=session.id,
                   connected_for=round(now - session.connected_at, 3),
                   unacked=len(session.unacked), prefetch=session.prefetch,
                   handed_over=len(session.started), delivered=session.delivered,
                   reserved=len(session.unacked) - len(late),
                   running=len(session.started) + len(late))
        tasks = [P.task_fields(message.data)[:2] for message in late]
        tasks += [(task_id, self.handovers[task_id][1]) for task_id in sorted(session.started)]
        running.extend({"task_id": task_id, "task": name, "pid": row.get("pid"),
                        "worker": str(row.get("hostname") or ""), "session": session.id}
                       for task_id, name in tasks)
        return row


class Client(base.Client):
    """A producer's connection to a memory broker; every call is one broker turn."""

    def __init__(self, settings, client="minitask-client", on_connect=None, timeout=10.0,
                 info=None):
        self.url = settings.BROKER_URL
        self.settings = settings
        self.client = client
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

    def _call(self, action, *args):
        if self.session is None:
            self.connect()
        return self.broker.call(self.session, action, *args)

    def declare_exchange(self, exchange, type="direct", durable=True, auto_delete=False,
                         passive=False):
        return self._call("declare_exchange", exchange, type, durable, auto_delete, passive)

    def declare_queue(self, queue, durable=True, exclusive=False, auto_delete=False,
                      passive=False, **arguments):
        args = dict(arguments, durable=bool(durable), exclusive=bool(exclusive),
                    auto_delete=bool(auto_delete))
        return self._call("declare_queue", queue, args, passive)

    def bind(self, queue, exchange, binding_key="", arguments=None):
        return self._call("bind", queue, exchange, binding_key, dict(arguments or {}))

    def purge(self, queue):
        return self._call("purge", queue)

    def publish(self, data, confirm=True, timeout=None):
        try:
            self._call("publish", data)
        except MinitaskError as exc:
            if confirm or isinstance(exc, BrokerConnectionError):
                raise
            logger.warning("a publish sent without confirm was refused: %s", exc)

    def publish_many(self, messages, timeout=None):
        self._call("publish_many", list(messages))

    def publish_with_record(self, data, key, value, timeout=None):
        self._call("publish_with_record", data, key, value)

    def get_result(self, task_id):
        return self._call("get_result", task_id)

    def wait_result(self, task_id, timeout=None):
        return self._call("wait_result", task_id, timeout)

    def forget(self, task_ids):
        return self._call("forget", list(task_ids))

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        return self._call("revoke", list(task_ids), terminate, signal)

    def broadcast(self, method, arguments=None, destination=None, timeout=1.0, reply=True,
                  limit=None):
        if not reply:
            self.publish(P.encode_message(control.command_message(method, arguments,
                                                                  destination)))
            return {}
        reply_queue = self.declare_queue("", durable=False, exclusive=True,
                                         auto_delete=True)["queue"]
        tag = self._call("consume", reply_queue, None, True)
        message = control.command_message(method, arguments, destination, reply_queue)
        try:
            self.publish(P.encode_message(message))
            return self._call("gather", tag, message.message_id, timeout, limit)
        finally:
            self._call("cancel", tag)   # the reply queue goes with its consumer

    def lease(self, name, holder, ttl):
        return self._call("lease", name, holder, ttl)

    def kv_get(self, key):
        return self._call("kv_get", key)

    def status(self):
        return self._call("status")


class Consumer(base.Consumer):
    """A worker's connection to a memory broker. What it says is kept until `flush()`, as
    the built-in transport's is until its socket takes it; `add_queue` and `cancel_queue`
    take effect at once."""

    def __init__(self, settings, queues, prefetch, worker_info, hostname):
        self.settings = settings
        self.queues = list(queues)
        self.prefetch = prefetch
        self.extra_credit = 0           # messages held by the worker (ETA, rate limits)
        self.worker_info = worker_info
        self.hostname = hostname
        self.conn = None                # a Client on this consumer's session
        self.generation = 0
        self.control_tag = None
        self.consumer_tags = {}         # consumer tag -> queue name
        self._wake = None               # (reader, writer): the socket pair behind fileno()
        self._forget_turn()

    def _forget_turn(self):
        self._out = []                  # (broker action, args...), applied by flush()
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._qos_sent = None

    def connect(self, timeout=5.0):
        conn = Client(self.settings, client="minitask-worker", info=self.worker_info)
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            conn.connect().session.wake = lambda: _nudge(writer)
            declare_topology(conn, self.settings)
            declare_worker_queues(conn, self.settings, self.queues)
            control_queue = conn.declare_queue("", durable=False, exclusive=True,
                                               auto_delete=True)["queue"]
            conn.bind(control_queue, control.CONTROL_EXCHANGE)
            self._forget_turn()
            self._qos_sent = self.prefetch + self.extra_credit
            conn._call("qos", self._qos_sent)
            self.consumer_tags = {conn._call("consume", name): name for name in self.queues}
            self.control_tag = conn._call("consume", control_queue, None, True)
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
        if self.conn is None:
            raise BrokerConnectionError("not connected to %s" % self.settings.BROKER_URL)
        broker, session = self.conn.broker, self.conn.session
        with broker.lock:
            try:
                while self._wake[0].recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass                    # drained: the broker nudges again for what comes next
            broker._check(session)
            deliveries = list(session.inbox)
            session.inbox.clear()
        return deliveries

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
            self._out.append(("reject", [tag], False))

    def store_result(self, task_id, state, content_type, payload, store=True, publish=()):
        self._out.append(("store_result", task_id, state, content_type, payload, store,
                          list(publish)))

    def reply(self, reply_to, data):
        self._out.append(("publish", data))

    def claim(self, task_ids):
        self._out.append(("claim", list(task_ids)))

    def set_extra_credit(self, held):
        self.extra_credit = held

    def add_queue(self, name):
        if name in self.queues:
            return False
        self.queues.append(name)
        if self.connected:
            declare_worker_queues(self.conn, self.settings, [name])
            self.consumer_tags[self.conn._call("consume", name)] = name
        return True

    def cancel_queue(self, name):
        for tag, queue in list(self.consumer_tags.items()):
            if queue == name:
                del self.consumer_tags[tag]
                if self.connected:
                    self.conn._call("cancel", tag)
        if name not in self.queues:
            return False
        self.queues.remove(name)
        return True

    def heartbeat(self):
        pass                            # a connection in memory cannot go quiet

    def end_turn(self):
        """This turn's acks, starts and rejects, in the built-in transport's order, and QOS."""
        for action, tags, flag in (("ack", self._started, True), ("start", self._starts, None),
                                   ("ack", self._acks, False), ("reject", self._rejects, True)):
            if tags:
                self._out.append((action, tags) if flag is None else (action, tags, flag))
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        wanted = self.prefetch + self.extra_credit
        if self._qos_sent is not None and wanted != self._qos_sent:
            self._out.append(("qos", wanted))
            self._qos_sent = wanted

    def flush(self):
        if self._out and self.conn is not None:
            out, self._out = self._out, []
            self.conn.broker.run(self.conn.session, out)
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


def _nudge(sock):
    try:
        sock.send(b"\0")
    except OSError:
        pass    # full (the reader has bytes waiting anyway) or closed (the consumer is gone)


def client(settings, client="minitask-client", on_connect=None, timeout=10.0):
    """A `Client` of the memory broker the settings name (see `minitask.transport.client_for`)."""
    return Client(settings, client, on_connect, timeout)
