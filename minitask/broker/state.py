"""Everything the broker knows, changed only by commands and the passing of time.

No sockets, no clock of its own: the server feeds it frames with `handle()` and the time with
`tick()`; what it answers lands in each `Session.out`, what must survive a crash in `records`.
One loop turn, as the server drives it::

    handle() x N --> records --> journal.write() --+--> confirm_turn() --> dispatch() --> send
                                                    +--> refuse_turn() on a failed write

Invariants:

- A publish is confirmed only in `confirm_turn()`, after the journal write that holds it.
- Deliveries are made in `dispatch()`, after that write: nothing a consumer sees can vanish in
  a crash, and a refused publish was never delivered.
- Every message is in exactly one place: a queue (READY), the delay heap (DELAYED), one
  session's `unacked` (UNACKED), or nowhere (DEAD).
"""

import hashlib
import heapq
import hmac
import logging
import os

from .. import control, protocol, serialization
from ..exceptions import (
    AuthenticationError, BrokerError, MinitaskError, NotDeliverableError, ProtocolError,
    PublishRefusedError, UnroutableError, WorkerLostError,
)
from . import journal as jr
from .queue import DEAD, DELAYED, READY, UNACKED, Queue, StoredMessage
from .results import Handovers, ResultEntry, ResultStore, Revoked, Waiter
from .routing import EXCHANGE_TYPES, Exchange
from .session import AUTH_STAGE, CLOSED, HELLO_STAGE, OPEN, Consumer, Session

__all__ = ["BrokerState", "BrokerOptions"]

logger = logging.getLogger(__name__)

P = protocol


class BrokerOptions:
    """Knobs of the broker's behaviour (the command line fills them in)."""

    def __init__(self, result_expires=86400.0, default_exchange="minitask",
                 default_exchange_type="direct", default_queue="minitask",
                 default_routing_key="minitask", max_frame_bytes=P.MAX_FRAME_BYTES,
                 secret=None, handover_grace=10.0, release_ahead=0.5, version="minitask"):
        self.result_expires = result_expires
        self.default_exchange = default_exchange
        self.default_exchange_type = default_exchange_type
        self.default_queue = default_queue
        self.default_routing_key = default_routing_key
        self.max_frame_bytes = max_frame_bytes
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        # A worker that lost its connection gets this long to come back and claim its tasks.
        self.handover_grace = handover_grace
        # Delayed messages reach the worker this early; its own scheduler starts them on time.
        self.release_ahead = release_ahead
        self.version = version


def _refuse(code, text):
    return BrokerError(text, code)


class BrokerState:
    """Queues, exchanges, sessions, results: the broker without its sockets."""

    def __init__(self, clock, journal=None, options=None):
        self.clock = clock
        self.journal = journal if journal is not None else jr.NullJournal()
        self.persist = self.journal.enabled
        self.options = options or BrokerOptions()
        self.exchanges = {}
        self.queues = {}
        self.sessions = {}
        self.results = ResultStore()
        self.revoked = Revoked()
        self.handovers = Handovers(self.options.handover_grace)
        self.kv = {}
        self.leases = {}                # name -> (holder, expires_at)
        self.records = []               # journal records of this turn
        self._turn_publishes = []       # (session, seq, [StoredMessage]) persisted this turn
        self._confirm = []              # sessions with something to confirm this turn
        self.dirty = set()              # queues that may be able to deliver
        self.outgoing = set()           # sessions with frames to send (see Session.send)
        self._delayed = []              # heap of (release_at, id, StoredMessage)
        self._expiring = []             # heap of (expires_at, id, StoredMessage)
        self.next_message_id = 1
        self.unroutable = 0
        self.started_at = clock()
        self.recent_failures = []       # (time, task id, task name), newest last
        self._handlers = {
            P.DECLARE_EXCHANGE: self._declare_exchange, P.DELETE_EXCHANGE: self._delete_exchange,
            P.DECLARE_QUEUE: self._declare_queue, P.BIND: self._bind, P.UNBIND: self._unbind,
            P.PURGE: self._purge, P.DELETE_QUEUE: self._delete_queue, P.PUBLISH: self._publish,
            P.CONSUME: self._consume, P.CANCEL: self._cancel, P.QOS: self._qos,
            P.ACK: self._ack, P.REJECT: self._reject, P.START: self._start,
            P.RESULT_SET: self._result_set, P.RESULT_GET: self._result_get,
            P.RESULT_WAIT: self._result_wait, P.RESULT_FORGET: self._result_forget,
            P.REVOKE: self._revoke, P.CLAIM: self._claim, P.STATUS: self._status,
            P.LEASE: self._lease, P.KV_SET: self._kv_set, P.KV_GET: self._kv_get,
            P.REVOKED: self._revoked_list, P.HEARTBEAT: self._heartbeat, P.CLOSE: self._close,
        }
        self._declare_defaults()

    def _declare_defaults(self):
        opts = self.options
        self.exchanges[""] = Exchange("", "direct")
        self._make_exchange(opts.default_exchange, opts.default_exchange_type, True, False)
        self._make_queue(opts.default_queue, {"durable": True})
        self.exchanges[opts.default_exchange].bind(opts.default_queue, opts.default_routing_key)
        self._make_exchange(control.CONTROL_EXCHANGE, "fanout", False, False)

    # -- sessions ------------------------------------------------------------------------------

    def open_session(self, session_id, peer=""):
        session = Session(session_id, peer, self.clock(), self.outgoing)
        self.sessions[session_id] = session
        return session

    def handle(self, session, kind, seq, body):
        """Apply one command frame from `session`. Never raises for the client's mistakes:
        they become ERROR frames (and `session.want_close` when the stream is not to be
        trusted any more)."""
        if session.stage != OPEN:
            self._handshake(session, kind, seq, body)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._error(session, seq, P.COMMAND_INVALID,
                        "unknown command %s" % P.command_name(kind), close=True)
            return
        try:
            handler(session, seq, body)
        except ProtocolError as exc:
            self._error(session, seq, P.BAD_FRAME, "%s: %s" % (P.command_name(kind), exc))
        except MinitaskError as exc:
            self._error(session, seq, P.code_for(exc), str(exc))

    def _error(self, session, seq, code, text, close=False):
        session.send(P.encode_error(seq, code, text))
        if close:
            session.close_after_flush()

    def _reply(self, session, seq, obj):
        if seq:
            session.send(P.encode_json(P.OK, seq, obj))

    def _confirmable(self, session, seq):
        if seq:
            if not session.confirm_seq:
                self._confirm.append(session)
            session.confirm_seq = seq

    # -- handshake (protocol section 6) --

    def _handshake(self, session, kind, seq, body):
        if session.stage == HELLO_STAGE and kind == P.HELLO:
            try:
                hello = P.decode_json(body, "HELLO")
            except ProtocolError as exc:
                self._error(session, seq, P.BAD_FRAME, str(exc), close=True)
                return
            if hello.get("protocol") != P.PROTOCOL_VERSION:
                self._error(session, seq, P.COMMAND_INVALID,
                            "protocol version %r is not supported; this broker speaks %d"
                            % (hello.get("protocol"), P.PROTOCOL_VERSION), close=True)
                return
            session.client = str(hello.get("client", ""))[:200]
            info = hello.get("worker")
            session.info = info if isinstance(info, dict) else {}
            heartbeat = hello.get("heartbeat", 0)
            session.heartbeat = float(heartbeat) if isinstance(heartbeat, (int, float)) \
                and 0 <= heartbeat <= 3600 else 0.0
            session.client_nonce = str(hello.get("nonce", ""))[:128]
            if self.options.secret:
                session.stage = AUTH_STAGE
                session.nonce = os.urandom(32).hex()
                session.send(P.encode_json(P.CHALLENGE, seq, {"nonce": session.nonce}))
            else:
                self._welcome(session, seq, None)
        elif session.stage == AUTH_STAGE and kind == P.AUTH:
            try:
                proof = str(P.decode_json(body, "AUTH").get("proof", ""))
            except ProtocolError:
                proof = ""
            expected = auth_proof(self.options.secret, "client", session.client_nonce,
                                  session.nonce)
            if not hmac.compare_digest(proof.encode("utf-8"), expected.encode("utf-8")):
                self._error(session, seq, P.AUTH_FAILED, "authentication failed", close=True)
                return
            self._welcome(session, seq, auth_proof(self.options.secret, "broker", session.nonce,
                                                   session.client_nonce))
        else:
            self._error(session, seq, P.COMMAND_INVALID,
                        "%s before the handshake finished" % P.command_name(kind), close=True)

    def _welcome(self, session, seq, proof):
        session.stage = OPEN
        welcome = {"protocol": P.PROTOCOL_VERSION, "broker": self.options.version,
                   "max_frame_bytes": self.options.max_frame_bytes,
                   "heartbeat": session.heartbeat, "session": session.id}
        if proof:
            welcome["proof"] = proof
        session.send(P.encode_json(P.WELCOME, seq, welcome))

    def close_session(self, session, reason=""):
        """The connection is gone: requeue its unacked messages, orphan its handed-over tasks."""
        if session.stage == CLOSED:
            return
        session.stage = CLOSED
        self.sessions.pop(session.id, None)
        now = self.clock()
        requeued = 0
        for message in session.unacked.values():
            message.queue.unacked -= 1
            self._inflight_clear(message)
            self._return(message)
            requeued += 1
        session.unacked = {}
        for consumer in list(session.consumers.values()):
            self._remove_consumer(consumer)
        for queue in list(session.exclusive_queues):
            if queue.name in self.queues and self.queues[queue.name] is queue:
                self._drop_queue(queue)
        if session.started:
            self.handovers.orphan_all(session, now)
        self.results.drop_waiters_of(session)
        if requeued:
            logger.warning("client %s %s: %d unacked messages requeued", session.peer,
                           reason or "closed", requeued)

    # -- topology ------------------------------------------------------------------------------

    def _make_exchange(self, name, kind, durable, auto_delete):
        exchange = self.exchanges[name] = Exchange(name, kind, durable, auto_delete)
        return exchange

    def _make_queue(self, name, args, owner=None):
        queue = Queue(name, durable=bool(args.get("durable", True)),
                      exclusive=bool(args.get("exclusive", False)),
                      auto_delete=bool(args.get("auto_delete", False)),
                      max_length=args.get("max_length"),
                      max_redeliveries=args.get("max_redeliveries", 10),
                      dead_letter_queue=args.get("dead_letter_queue"), owner=owner)
        self.queues[name] = queue
        if owner is not None:
            owner.exclusive_queues.append(queue)
        return queue

    def _topology(self, op, **fields):
        if self.persist:
            fields["op"] = op
            self.records.append(jr.json_record(jr.TOPOLOGY, fields))

    def _declare_exchange(self, session, seq, body):
        args = P.decode_json(body, "DECLARE_EXCHANGE")
        name = _name(args, "exchange")
        kind = args.get("type", "direct")
        existing = self.exchanges.get(name)
        if args.get("passive"):
            if existing is None:
                raise _refuse(P.NOT_FOUND, "no exchange %r" % name)
        elif existing is not None:
            if existing.type != kind:
                raise _refuse(P.PRECONDITION_FAILED, "exchange %r exists with type %r, not %r"
                              % (name, existing.type, kind))
        else:
            if name == "" or name.startswith("amq."):
                raise _refuse(P.PRECONDITION_FAILED, "exchange name %r is reserved" % name)
            if kind not in EXCHANGE_TYPES:
                raise ProtocolError("exchange type %r: expected one of %s"
                                    % (kind, ", ".join(EXCHANGE_TYPES)))
            durable = bool(args.get("durable", True))
            self._make_exchange(name, kind, durable, bool(args.get("auto_delete", False)))
            if durable:
                self._topology("declare_exchange", **self.exchanges[name].describe())
        self._reply(session, seq, {})

    def _delete_exchange(self, session, seq, body):
        name = _name(P.decode_json(body, "DELETE_EXCHANGE"), "exchange")
        exchange = self.exchanges.get(name)
        if name == "" or exchange is None:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % name)
        del self.exchanges[name]
        if exchange.durable:
            self._topology("delete_exchange", exchange=name)
        self._reply(session, seq, {})

    def _declare_queue(self, session, seq, body):
        args = P.decode_json(body, "DECLARE_QUEUE")
        name = args.get("queue") or ""
        if not isinstance(name, str) or len(name.encode("utf-8")) > 255:
            raise ProtocolError("queue name must be a string of at most 255 bytes")
        _check_queue_args(args)
        queue = self.queues.get(name) if name else None
        if args.get("passive"):
            if queue is None:
                raise _refuse(P.NOT_FOUND, "no queue %r" % name)
            self._check_exclusive(session, queue)
        elif queue is None:
            if not name:
                name = "mt.gen-%s" % os.urandom(8).hex()
                args = dict(args, exclusive=True, durable=False, auto_delete=True)
            owner = session if args.get("exclusive") else None
            queue = self._make_queue(name, args, owner)
            if queue.durable and not queue.exclusive:
                self._topology("declare_queue", queue=name, **queue.arguments())
            # Every queue is bound to the default exchange under its own name (AMQP).
        else:
            self._check_exclusive(session, queue)
            wanted = dict(queue.arguments(), **{key: args[key] for key in queue.arguments()
                                                if key in args})
            wanted["durable"] = bool(wanted["durable"])
            if wanted != queue.arguments():
                raise _refuse(P.PRECONDITION_FAILED,
                              "queue %r exists with other arguments: %s" % (name, {
                                  key: value for key, value in queue.arguments().items()
                                  if wanted[key] != value}))
        self._reply(session, seq, {"queue": queue.name, "messages": queue.ready,
                                   "consumers": len(queue.consumers)})

    def _check_exclusive(self, session, queue):
        if queue.exclusive and queue.owner is not session:
            raise _refuse(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                          % queue.name)

    def _binding_args(self, body, what):
        args = P.decode_json(body, what)
        queue_name = _name(args, "queue")
        exchange_name = _name(args, "exchange")
        key = args.get("binding_key", args.get("routing_key", ""))
        arguments = args.get("arguments") or {}
        if not isinstance(key, str) or not isinstance(arguments, dict):
            raise ProtocolError("binding_key must be a string and arguments an object")
        if exchange_name == "":
            raise _refuse(P.PRECONDITION_FAILED, "the default exchange cannot be bound to")
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise _refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
        queue = self.queues.get(queue_name)
        if queue is None:
            raise _refuse(P.NOT_FOUND, "no queue %r" % queue_name)
        return exchange, queue, key, arguments

    def _bind(self, session, seq, body):
        exchange, queue, key, arguments = self._binding_args(body, "BIND")
        self._check_exclusive(session, queue)
        if exchange.bind(queue.name, key, arguments) and exchange.durable and queue.durable \
                and not queue.exclusive:
            self._topology("bind", queue=queue.name, exchange=exchange.name, binding_key=key,
                           arguments=arguments)
        self._reply(session, seq, {})

    def _unbind(self, session, seq, body):
        exchange, queue, key, arguments = self._binding_args(body, "UNBIND")
        if exchange.unbind(queue.name, key, arguments):
            if exchange.durable and queue.durable:
                self._topology("unbind", queue=queue.name, exchange=exchange.name,
                               binding_key=key, arguments=arguments)
            self._auto_delete_exchange(exchange)
        self._reply(session, seq, {})

    def _auto_delete_exchange(self, exchange):
        if exchange.auto_delete and not exchange.bindings and exchange.name in self.exchanges:
            del self.exchanges[exchange.name]
            if exchange.durable:
                self._topology("delete_exchange", exchange=exchange.name)

    def _queue_for(self, session, args, what):
        name = _name(args, "queue")
        queue = self.queues.get(name)
        if queue is None:
            raise _refuse(P.NOT_FOUND, "no queue %r" % name)
        self._check_exclusive(session, queue)
        return queue

    def _purge(self, session, seq, body):
        queue = self._queue_for(session, P.decode_json(body, "PURGE"), "PURGE")
        dropped = queue.drain()
        self._retire_all(dropped)
        self._reply(session, seq, {"messages": len(dropped)})

    def _delete_queue(self, session, seq, body):
        queue = self._queue_for(session, P.decode_json(body, "DELETE_QUEUE"), "DELETE_QUEUE")
        count = queue.ready
        self._drop_queue(queue)
        self._reply(session, seq, {"messages": count})

    def _drop_queue(self, queue):
        self._retire_all(queue.drain())
        unacked = [message for session in self.sessions.values()
                   for message in session.unacked.values()
                   if message.queue is queue and message.segment is not None]
        for message in unacked:             # gone with the queue, whatever the consumer does
            self.journal.untrack(message)
        if unacked:
            self.records.append(jr.ids_record(jr.ACK, [message.id for message in unacked]))
        for message in self._delayed_of(queue):
            self._retire(message)
        for consumer in list(queue.consumers):
            consumer.session.consumers.pop(consumer.tag, None)
        queue.consumers = []
        for exchange in list(self.exchanges.values()):
            exchange.unbind_queue(queue.name)
            self._auto_delete_exchange(exchange)
        del self.queues[queue.name]
        if queue.owner is not None and queue in queue.owner.exclusive_queues:
            queue.owner.exclusive_queues.remove(queue)
        if queue.durable and not queue.exclusive:
            self._topology("delete_queue", queue=queue.name)

    def _delayed_of(self, queue):
        return [entry[2] for entry in self._delayed
                if entry[2].queue is queue and entry[2].where == DELAYED]

    # -- publishing ----------------------------------------------------------------------------

    def _publish(self, session, seq, data):
        flags, priority, not_before, expires_at, exchange_name, key, headers_at = \
            P.routing_fields(data)
        if exchange_name:
            exchange = self.exchanges.get(exchange_name)
            if exchange is None:
                raise _refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
            names = exchange.route(key, P.headers_of(data, headers_at)
                                   if exchange.type == "headers" else None)
        else:
            names = (key,) if key in self.queues else ()
        session.published += 1
        if not names:
            if flags & P.MANDATORY:
                raise UnroutableError("message to exchange %r with routing key %r matched no "
                                      "queue" % (exchange_name, key))
            self.unroutable += 1                # dropped, as AMQP does; counted for status
            self._confirmable(session, seq)
            return
        queues = [self.queues[name] for name in names]
        if flags & P.IMMEDIATE and not any(_can_take_now(queue) for queue in queues):
            raise NotDeliverableError("no consumer of %s can take the message now"
                                      % ", ".join(repr(q.name) for q in queues))
        for queue in queues:
            if queue.is_full():
                raise PublishRefusedError("queue %r is full (max_length %d)"
                                          % (queue.name, queue.max_length))
        now = self.clock()
        if expires_at and expires_at <= now:
            self._task_revoked(P.message_id_of(data), "expired before it was queued")
            self._confirmable(session, seq)
            return
        if priority == P.NO_PRIORITY:
            priority = P.DEFAULT_PRIORITY
        persistent = bool(flags & P.PERSISTENT)
        stored = []
        for queue in queues:
            message = StoredMessage(self.next_message_id, data, queue, priority,
                                    expires_at or None, persistent)
            self.next_message_id += 1
            queue.published += 1
            if persistent and queue.durable and self.persist:
                self.records.append(jr.publish_record(message.id, 0, queue.name, data))
                self.journal.track(message)
                stored.append(message)
            self._place(message, not_before, now)
        if stored:
            self._turn_publishes.append((session, seq, stored))
        self._confirmable(session, seq)

    def _place(self, message, not_before, now):
        """Put a new (or recovered) message in its queue, or in the delay heap until due."""
        if expires_at_known(message):
            heapq.heappush(self._expiring, (message.expires_at, message.id, message))
        release_at = not_before - self.options.release_ahead
        if not_before and release_at > now:
            message.where = DELAYED
            message.queue.delayed += 1
            heapq.heappush(self._delayed, (release_at, message.id, message))
        else:
            message.queue.push(message)
            self.dirty.add(message.queue)

    def confirm_turn(self):
        """Send the CONFIRMs of this turn; the journal write that they promise has happened."""
        for session in self._confirm:
            if session.confirm_seq:
                session.send(P.HEADER.pack(0, P.CONFIRM, session.confirm_seq))
                session.confirm_seq = 0
        self._confirm = []
        self._turn_publishes = []

    def refuse_turn(self, reason, records):
        """The journal write of this turn failed: refuse its publishes, keep the rest for later.

        Publishes that were in the failed write are taken back out of their queues (they
        were not delivered: dispatch comes after the write) and answered with ERROR 507.
        Every other record (acks, results, declarations) is written again next turn.
        """
        refused = set()
        for session, seq, messages in self._turn_publishes:
            for message in messages:
                refused.add(message.id)
                self._retire(message, record=False)
                message.queue.published -= 1
            if seq:
                self._error(session, seq, P.REFUSED, "publish refused: %s" % reason)
                if session.confirm_seq == seq:      # nothing after it to confirm
                    session.confirm_seq = 0
        self._turn_publishes = []
        # Publish records of messages the broker made itself (dead-letter copies) are kept.
        self.records = [record for record in records if record[8] != jr.PUBLISH
                        or jr.decode_publish(record[9:])[0] not in refused] + self.records
        logger.error("journal write failed (%s): %d publishes refused; acks and results will "
                     "be written again", reason, len(refused))

    def take_records(self):
        records, self.records = self.records, []
        return records

    def retain(self, records):
        """A write of records that refuse nothing (deliveries) failed: try them again later."""
        self.records = list(records) + self.records

    # -- consuming and delivering ---------------------------------------------------------------

    def _consume(self, session, seq, body):
        args = P.decode_json(body, "CONSUME")
        queue = self._queue_for(session, args, "CONSUME")
        tag = args.get("consumer_tag")
        if tag is None:
            while session.next_consumer_tag in session.consumers:
                session.next_consumer_tag += 1
            tag = session.next_consumer_tag
            session.next_consumer_tag += 1
        elif not isinstance(tag, int) or isinstance(tag, bool) or not 0 < tag < 2 ** 32:
            raise ProtocolError("consumer_tag must be an integer in 1..2**32-1")
        elif tag in session.consumers:
            raise _refuse(P.PRECONDITION_FAILED, "consumer tag %d is in use" % tag)
        consumer = Consumer(tag, queue, session, bool(args.get("no_ack", False)))
        session.consumers[tag] = consumer
        queue.consumers.append(consumer)
        self.dirty.add(queue)
        self._reply(session, seq, {"consumer_tag": tag})

    def _cancel(self, session, seq, body):
        tag = P.decode_json(body, "CANCEL").get("consumer_tag")
        consumer = session.consumers.get(tag)
        if consumer is None:
            raise _refuse(P.NOT_FOUND, "no consumer %r on this connection" % (tag,))
        self._remove_consumer(consumer)
        self._reply(session, seq, {})

    def _remove_consumer(self, consumer):
        consumer.session.consumers.pop(consumer.tag, None)
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        if queue.auto_delete and not queue.consumers and self.queues.get(queue.name) is queue:
            self._drop_queue(queue)

    def _qos(self, session, seq, body):
        count = P.decode_json(body, "QOS").get("prefetch_count", 0)
        if not isinstance(count, int) or count < 0:
            raise ProtocolError("prefetch_count must be a non-negative integer")
        session.prefetch = count
        self._mark_dirty(session)
        self._reply(session, seq, {})

    def _mark_dirty(self, session):
        for consumer in session.consumers.values():
            if consumer.queue.ready:
                self.dirty.add(consumer.queue)

    def dispatch(self):
        """Hand ready messages to consumers with credit; DELIVERED records go to `records`."""
        delivered = []
        while self.dirty:
            dirty, self.dirty = self.dirty, set()
            for queue in dirty:
                if queue.ready and queue.consumers:
                    self._dispatch_queue(queue, delivered)
        if delivered:
            self.records.append(jr.ids_record(jr.DELIVERED, delivered))

    def _dispatch_queue(self, queue, delivered):
        consumers = queue.consumers
        count = len(consumers)
        index = queue.next_consumer % count
        idle = 0
        now = None
        results_inflight = self.results.inflight
        revoked = self.revoked.ids
        encode = P.encode_deliver
        outgoing = self.outgoing
        while idle < count and queue.ready:
            consumer = consumers[index]
            index = (index + 1) % count
            session = consumer.session
            if session.prefetch and len(session.unacked) >= session.prefetch:
                idle += 1
                continue
            message = queue.pop()
            if message is None:
                break
            if message.expires_at is not None:
                now = now or self.clock()
                if message.expires_at <= now:
                    self._expire(message)
                    continue
            task_id = P.message_id_of(message.data)
            if revoked and task_id in revoked:
                self._task_revoked(task_id, "revoked")
                self._retire(message)
                continue
            idle = 0
            message.deliveries += 1
            queue.delivered += 1
            session.delivered += 1
            if consumer.no_ack:
                self._retire(message)
                tag = 0
            else:
                tag = session.next_tag
                session.next_tag = tag + 1
                session.unacked[tag] = message
                message.where = UNACKED
                queue.unacked += 1
                if message.segment is not None:
                    delivered.append(message.id)
                if task_id and task_id not in results_inflight:
                    results_inflight[task_id] = "RECEIVED"
            session.out.append(encode(tag, consumer.tag, message.deliveries > 1,
                                      message.deliveries, message.data))
            outgoing.add(session)
        queue.next_consumer = index

    def _return(self, message):
        """An unacked message comes back: to its queue, or dead-lettered after too many tries."""
        queue = message.queue
        if self.queues.get(queue.name) is not queue:
            self._retire(message)                       # its queue was deleted meanwhile
        elif queue.max_redeliveries is not None and message.deliveries > queue.max_redeliveries:
            self._dead_letter(message, "delivered %d times" % message.deliveries)
        else:
            queue.requeue(message)
            self.dirty.add(queue)

    def _dead_letter(self, message, why):
        queue = message.queue
        name = queue.dead_letter_queue or dead_letter_name(queue.name)
        target = self.queues.get(name)
        if target is None:
            target = self._make_queue(name, {"durable": queue.durable, "max_redeliveries": None})
            if target.durable:
                self._topology("declare_queue", queue=name, **target.arguments())
        logger.warning("message %s of queue %r dead-lettered to %r: %s",
                       P.message_id_of(message.data), queue.name, name, why)
        queue.dead_lettered += 1
        self._retire(message)
        moved = StoredMessage(self.next_message_id, message.data, target, message.priority,
                              None, message.persistent, message.deliveries)
        self.next_message_id += 1
        if moved.persistent and target.durable and self.persist:
            self.records.append(jr.publish_record(moved.id, moved.deliveries, name, moved.data))
            self.journal.track(moved)
        target.push(moved)
        self.dirty.add(target)

    def _retire(self, message, record=True):
        """The message is gone for good (acked, expired, purged, refused)."""
        if message.where == READY:
            message.queue.discard(message)
        elif message.where == DELAYED:
            message.queue.delayed -= 1
        message.where = DEAD
        if message.segment is not None:
            self.journal.untrack(message)
            if record:
                self.records.append(jr.ids_record(jr.ACK, [message.id]))

    def _retire_all(self, messages):
        ids = []
        for message in messages:
            if message.where == DELAYED:
                message.queue.delayed -= 1
            message.where = DEAD
            if message.segment is not None:
                self.journal.untrack(message)
                ids.append(message.id)
        if ids:
            self.records.append(jr.ids_record(jr.ACK, ids))

    def _expire(self, message):
        self._task_revoked(P.message_id_of(message.data), "expired")
        self._retire(message)

    # -- acks ------------------------------------------------------------------------------------

    def _take_unacked(self, session, body, multiple=True):
        """Take the messages of these tags from the session; `multiple` honours ACK's bit 0
        (REJECT's bit 0 means requeue instead)."""
        flags, tags = P.decode_tags(body)
        unacked = session.unacked
        if multiple and flags & P.MULTIPLE and tags:
            top = max(tags)
            tags = [tag for tag in unacked if tag <= top]
        taken = []
        for tag in tags:
            message = unacked.pop(tag, None)
            if message is not None:
                message.queue.unacked -= 1
                taken.append(message)
        if taken and session.prefetch:
            self._mark_dirty(session)
        return flags, taken

    def _ack(self, session, seq, body):
        flags, messages = self._take_unacked(session, body)
        started = flags & P.STARTED
        ids, started_ids = [], []
        inflight = self.results.inflight
        for message in messages:
            message.queue.acked += 1
            message.where = DEAD
            task_id = P.message_id_of(message.data)
            if started:
                self.handovers.start(task_id, session)
                inflight[task_id] = "STARTED"
                started_ids.append(task_id)
            else:
                inflight.pop(task_id, None)
            if message.segment is not None:
                self.journal.untrack(message)
                ids.append(message.id)
        if self.persist:
            if ids:
                self.records.append(jr.ids_record(jr.ACK, ids))
            if started_ids:
                self.records.append(jr.names_record(jr.STARTED, started_ids))

    def _reject(self, session, seq, body):
        flags, messages = self._take_unacked(session, body, multiple=False)
        for message in messages:
            self._inflight_clear(message)
            if flags & P.REQUEUE:
                self._return(message)
            elif message.queue.dead_letter_queue:
                self._dead_letter(message, "rejected")
            else:
                self._retire(message)

    def _start(self, session, seq, body):
        _flags, tags = P.decode_tags(body)
        inflight = self.results.inflight
        for tag in tags:
            message = session.unacked.get(tag)
            if message is not None:
                task_id = P.message_id_of(message.data)
                if task_id:
                    inflight[task_id] = "STARTED"

    def _inflight_clear(self, message):
        task_id = P.message_id_of(message.data)
        if self.results.inflight.get(task_id) in ("RECEIVED", "STARTED") \
                and task_id not in self.handovers.owner:
            del self.results.inflight[task_id]

    # -- results ---------------------------------------------------------------------------------

    def _result_set(self, session, seq, body):
        task_id, state, flags, ttl, content_type, payload = P.decode_result(body)
        if not task_id:
            raise ProtocolError("RESULT_SET needs a task_id")
        if self.handovers.finish(task_id) and self.persist and not flags & P.STORE:
            self.records.append(jr.names_record(jr.FINISHED, [task_id]))
        if flags & P.STORE:
            now = self.clock()
            self.store_result(task_id, state, content_type, payload, now,
                              now + (ttl if ttl > 0 else self.options.result_expires))
        else:
            self.results.inflight.pop(task_id, None)
        self._confirmable(session, seq)

    def store_result(self, task_id, state, content_type, payload, now, expires_at):
        """Keep a result (journalled), and answer whoever waits for it if it is final."""
        entry = ResultEntry(task_id, state, content_type, payload, now, expires_at)
        old = self.results.set(entry)
        if old is not None:
            self.journal.untrack(old)
        if self.persist:
            self.records.append(jr.result_record(entry))
            self.journal.track(entry)
        if state == "FAILURE":
            self.recent_failures.append((now, task_id))
            del self.recent_failures[:-50]
        if state in P.READY_STATES:
            for waiter in self.results.take_waiters(task_id):
                self._answer_waiter(waiter, entry)

    def _answer_waiter(self, waiter, entry):
        session = waiter.session
        if session.stage != CLOSED:
            session.send(self._result_frame(waiter.seq, waiter.task_id, entry))

    def _result_frame(self, seq, task_id, entry):
        if entry is None:
            state = self.results.state_of(task_id)
            return P.encode_result(P.RESULT, seq, task_id, state, 0, 0.0, "", b"")
        ready = P.READY if entry.state in P.READY_STATES else 0
        return P.encode_result(P.RESULT, seq, task_id, entry.state, ready, entry.date_done,
                               entry.content_type, entry.payload)

    def _result_get(self, session, seq, body):
        task_id = _name(P.decode_json(body, "RESULT_GET"), "task_id")
        session.send(self._result_frame(seq, task_id, self.results.get(task_id)))

    def _result_wait(self, session, seq, body):
        args = P.decode_json(body, "RESULT_WAIT")
        task_id = _name(args, "task_id")
        timeout = args.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ProtocolError("timeout must be a non-negative number of seconds")
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            session.send(self._result_frame(seq, task_id, entry))
            return
        deadline = None if timeout is None else self.clock() + timeout
        self.results.add_waiter(Waiter(session, seq, task_id, deadline))

    def _result_forget(self, session, seq, body):
        args = P.decode_json(body, "RESULT_FORGET")
        forgotten = []
        if args.get("expired"):
            self._expire_results(self.clock())
        for task_id in _names(args, "task_ids"):
            entry = self.results.forget(task_id)
            if entry is not None:
                self.journal.untrack(entry)
                forgotten.append(task_id)
        if forgotten and self.persist:
            self.records.append(jr.names_record(jr.FORGET, forgotten))
        self._reply(session, seq, {"forgotten": len(forgotten)})

    def _task_revoked(self, task_id, why):
        """Store REVOKED for a task that will never run (expired, revoked before it ran)."""
        if not task_id:
            return
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            return
        from ..exceptions import TaskRevokedError
        now = self.clock()
        content_type, payload = _broker_meta(task_id, "REVOKED",
                                             TaskRevokedError("task %s %s" % (task_id, why)), now)
        self.store_result(task_id, "REVOKED", content_type, payload, now,
                          now + self.options.result_expires)

    def _revoke(self, session, seq, body):
        args = P.decode_json(body, "REVOKE")
        task_ids = _names(args, "task_ids")
        now = self.clock()
        expires_at = now + self.options.result_expires
        for task_id in task_ids:
            self.revoked.add(task_id, expires_at)
            if task_id not in self.results.inflight and task_id not in self.handovers.owner:
                self._task_revoked(task_id, "revoked")
        if self.persist and task_ids:
            self.records.append(jr.revoke_record(expires_at, task_ids))
        arguments = {"task_ids": task_ids, "terminate": bool(args.get("terminate", False)),
                     "signal": str(args.get("signal") or "SIGTERM")}
        self.publish_internal(control.command_message("revoke", arguments))
        self._reply(session, seq, {})

    def publish_internal(self, message):
        """Route a message the broker itself sends (control broadcasts); never persisted."""
        data = P.encode_message(message)
        exchange = self.exchanges.get(message.exchange)
        if exchange is None:
            return
        now = self.clock()
        for name in exchange.route(message.routing_key, message.headers):
            queue = self.queues[name]
            stored = StoredMessage(self.next_message_id, data, queue, P.DEFAULT_PRIORITY,
                                   None, False)
            self.next_message_id += 1
            self._place(stored, 0.0, now)

    def _revoked_list(self, session, seq, body):
        self._reply(session, seq, {"task_ids": sorted(self.revoked.ids)})

    def _claim(self, session, seq, body):
        claimed = 0
        for task_id in _names(P.decode_json(body, "CLAIM"), "task_ids"):
            if self.handovers.claim(task_id, session):
                self.results.inflight[task_id] = "STARTED"
                claimed += 1
        self._reply(session, seq, {"claimed": claimed})

    # -- small durable settings and leases ---------------------------------------------------

    def _lease(self, session, seq, body):
        args = P.decode_json(body, "LEASE")
        name, holder = _name(args, "name"), _name(args, "holder")
        ttl = args.get("ttl", 10)
        if not isinstance(ttl, (int, float)) or not 0 < ttl <= 3600:
            raise ProtocolError("lease ttl must be a number of seconds in (0, 3600]")
        now = self.clock()
        current = self.leases.get(name)
        if current is None or current[1] <= now or current[0] == holder:
            self.leases[name] = current = (holder, now + ttl)
        self._reply(session, seq, {"granted": current[0] == holder, "holder": current[0],
                                   "expires_in": current[1] - now})

    def _kv_set(self, session, seq, body):
        args = P.decode_json(body, "KV_SET")
        key = _name(args, "key")
        self.kv[key] = args.get("value")
        if self.persist:
            self.records.append(jr.json_record(jr.KV, {"key": key, "value": self.kv[key]}))
        self._reply(session, seq, {})

    def _kv_get(self, session, seq, body):
        self._reply(session, seq, {"value": self.kv.get(_name(P.decode_json(body, "KV_GET"),
                                                              "key"))})

    def _heartbeat(self, session, seq, body):
        pass

    def _close(self, session, seq, body):
        session.close_after_flush()

    def _status(self, session, seq, body):
        from .status import status_report
        self._reply(session, seq, status_report(self))

    # -- time ------------------------------------------------------------------------------------

    def tick(self, now):
        """Do what is due: release delayed messages, expire things, time out waits."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            message = heapq.heappop(delayed)[2]
            if message.where == DELAYED:
                message.queue.delayed -= 1
                message.queue.push(message)
                self.dirty.add(message.queue)
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            message = heapq.heappop(expiring)[2]
            if message.where in (READY, DELAYED):
                self._expire(message)
        for waiter in self.results.timed_out_waiters(now):
            self._answer_waiter(waiter, self.results.get(waiter.task_id))
        if self.results.next_expiry() is not None and self.results.next_expiry() <= now:
            self._expire_results(now)
        self.revoked.expire(now)
        for task_id in self.handovers.lost(now):
            self._worker_lost(task_id, now)

    def _expire_results(self, now):
        for entry in self.results.expire(now):
            self.journal.untrack(entry)

    def _worker_lost(self, task_id, now):
        entry = self.results.get(task_id)
        if entry is not None and entry.state in P.READY_STATES:
            return
        logger.warning("task %s: its worker is gone; stored FAILURE (WorkerLostError)", task_id)
        content_type, payload = _broker_meta(
            task_id, "FAILURE", WorkerLostError("the worker running the task was lost"), now)
        self.store_result(task_id, "FAILURE", content_type, payload, now,
                          now + self.options.result_expires)

    def next_deadline(self):
        """The earliest time tick() has something to do, or None."""
        soonest = None
        for when in (self._delayed[0][0] if self._delayed else None,
                     self._expiring[0][0] if self._expiring else None,
                     self.results.next_wait_deadline(), self.results.next_expiry(),
                     self.revoked.next_expiry(), self.handovers.next_deadline()):
            if when is not None and (soonest is None or when < soonest):
                soonest = when
        return soonest

    # -- journal support -------------------------------------------------------------------------

    def record_for(self, obj):
        """The record that recreates one live message or result (compaction)."""
        if isinstance(obj, StoredMessage):
            if obj.where == DEAD or self.queues.get(obj.queue.name) is not obj.queue:
                return None
            return jr.publish_record(obj.id, obj.deliveries, obj.queue.name, obj.data)
        if self.results.get(obj.task_id) is obj:
            return jr.result_record(obj)
        return None

    def live_objects(self):
        for queue in self.queues.values():
            for message in queue.iter_ready():
                if message.segment is not None:
                    yield message
        for entry in list(self._delayed):
            if entry[2].where == DELAYED and entry[2].segment is not None:
                yield entry[2]
        for session in self.sessions.values():
            for message in session.unacked.values():
                if message.segment is not None:
                    yield message
        for entry in self.results.entries.values():
            yield entry

    def snapshot_records(self):
        """One SNAPSHOT record of the small durable state (see journal.py)."""
        exchanges = [e.describe() for e in self.exchanges.values()
                     if e.durable and e.name and e.name != control.CONTROL_EXCHANGE]
        queues = [dict(q.arguments(), queue=q.name) for q in self.queues.values()
                  if q.durable and not q.exclusive]
        durable_queues = {q["queue"] for q in queues}
        bindings = [{"exchange": e.name, "queue": queue, "binding_key": key,
                     "arguments": arguments}
                    for e in self.exchanges.values() if e.durable and e.name
                    for (queue, key, _frozen), arguments in e.bindings.items()
                    if queue in durable_queues]
        revoked = {}
        for task_id, expires_at in self.revoked.ids.items():
            revoked.setdefault(repr(expires_at), []).append(task_id)
        snapshot = {"exchanges": exchanges, "queues": queues, "bindings": bindings,
                    "revoked": [[float(when), ids] for when, ids in revoked.items()],
                    "kv": self.kv, "started": sorted(self.handovers.owner)}
        return [jr.json_record(jr.SNAPSHOT, snapshot)]

    def recover(self):
        """Rebuild everything from the journal (see recovery.py); returns what was found."""
        from .recovery import recover
        return recover(self)


def expires_at_known(message):
    return message.expires_at is not None


def dead_letter_name(queue_name):
    """``<queue>.dead``, its queue part cut (on a character boundary) to fit in 255 bytes."""
    data = queue_name.encode("utf-8")[:250]
    return data.decode("utf-8", "ignore") + ".dead"


def auth_proof(secret, role, first_nonce, second_nonce):
    """HMAC-SHA256 proof of knowing the secret, bound to both nonces and the prover's role."""
    text = ("%s:%s:%s" % (role, first_nonce, second_nonce)).encode("utf-8")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def _can_take_now(queue):
    return any(consumer.session.has_credit() for consumer in queue.consumers)


def _name(args, key):
    value = args.get(key)
    if not isinstance(value, str):
        raise ProtocolError("%r must be a string" % key)
    if len(value.encode("utf-8")) > 255:
        raise ProtocolError("%r is longer than 255 bytes" % key)
    return value


def _names(args, key):
    values = args.get(key)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ProtocolError("%r must be a list of strings" % key)
    if any(len(v.encode("utf-8")) > 255 for v in values):
        raise ProtocolError("%r holds a string longer than 255 bytes" % key)
    return values


def _check_queue_args(args):
    for key in ("max_length", "max_redeliveries"):
        value = args.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ProtocolError("%s must be a non-negative integer or null" % key)
    dlq = args.get("dead_letter_queue")
    if dlq is not None and not isinstance(dlq, str):
        raise ProtocolError("dead_letter_queue must be a queue name")


def _broker_meta(task_id, state, exc, now):
    """A result written by the broker itself (REVOKED, WorkerLostError), in JSON."""
    value = {"v": 1, "task_id": task_id, "task": "", "status": state, "result": exc,
             "traceback": None, "retries": 0, "date_done": now}
    return serialization.dumps(value, "json")
