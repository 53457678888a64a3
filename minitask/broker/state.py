"""Everything the broker knows, changed only by commands and the passing of time.

No sockets, no clock of its own: the server feeds it frames with `handle()` and the time with
`tick()`; what it answers lands in each `Session.out`, what must survive a crash in `records`.
One loop turn, as the server drives it::

    handle() x N --> records --> journal.write() --+--> confirm_turn() --> dispatch() --> send
                                                    +--> refuse_turn() on a failed write
                                        (confirms may be held: take_confirms/send_confirms)

Invariants:

- A publish is confirmed only in `confirm_turn()`, after the journal write that holds it.
- Deliveries are made in `dispatch()`, after that write: nothing a consumer sees can vanish in
  a crash, and a refused publish was never delivered.
- Every message is in exactly one place: a queue (READY), the delay heap (DELAYED), one
  session's `unacked` (UNACKED), or nowhere (DEAD).
- A refused publish leaves nothing behind: its messages are taken back out of their queues
  (they sit at the tail: nothing was delivered before the write), and the timers of this
  turn's persisted messages (delay, expiry) only enter their heaps once the write succeeded.

The commands live by concept: this module publishes, delivers and acks; `handshake.py`,
`topology.py` and `result_commands.py` hold the rest as mixins of `BrokerState`.
"""

import heapq
import logging

from .. import control, protocol as P
from ..exceptions import (
    MinitaskError, NotDeliverableError, ProtocolError, PublishRefusedError, UnroutableError,
)
from ..log import Throttle, folded
from . import journal as jr
from .arguments import refuse
from .handshake import Handshake, auth_proof
from .queue import DEAD, DELAYED, READY, UNACKED, StoredMessage
from .atomic import AtomicCommands
from .result_commands import MISSING, ResultCommands, broker_meta
from .results import Handovers, ResultStore, Revoked
from .routing import Exchange
from .session import CLOSED, OPEN, Consumer, Session
from .taskstats import TaskStats
from .topology import TopologyCommands, dead_letter_name

__all__ = ["BrokerState", "BrokerOptions", "auth_proof", "dead_letter_name", "broker_meta"]

logger = logging.getLogger(__name__)

# STATUS lists at most this many of the broker's countdowns (its delayed messages).
MAX_SCHEDULED_LISTED = 10000


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


class BrokerState(Handshake, TopologyCommands, ResultCommands, AtomicCommands):
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
        # (session, seq, [StoredMessage], [(key, previous, value)]) persisted this turn: what
        # a failed write takes back (an ATOMIC unit's settings too).
        self._turn_publishes = []
        self._turn_timers = []          # (heap, entry) of this turn's persisted messages
        self._confirm = []              # sessions with something to confirm this turn
        self.dirty = set()              # queues that may be able to deliver
        self.outgoing = set()           # sessions with frames to send (see Session.send)
        self._delayed = []              # heap of (release_at, id, StoredMessage)
        self._expiring = []             # heap of (expires_at, id, StoredMessage)
        self.next_message_id = 1
        self.unroutable = 0
        self.started_at = clock()
        self.recent_failures = []       # (time, task id), newest last
        self._throttle = Throttle(clock=clock)
        self.task_stats = TaskStats()   # per task name, for /metrics
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
            P.ATOMIC: self._atomic,
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

    # -- publishing ----------------------------------------------------------------------------

    def _publish(self, session, seq, data):
        """Route and place one message; returns the messages placed (one per queue)."""
        fields = P.parse_message(data)
        flags, exchange_name, key = fields.flags, fields.exchange, fields.routing_key
        if exchange_name:
            exchange = self.exchanges.get(exchange_name)
            if exchange is None:
                raise refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
            names = exchange.route(key, P.headers_of(data, fields.headers_at)
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
        expires_at = fields.expires_at
        if expires_at and expires_at <= now:
            self._count_dropped(data)
            self._task_revoked(fields.message_id, "expired before it was queued")
            self._confirmable(session, seq)
            return
        priority = P.DEFAULT_PRIORITY if fields.priority is None else fields.priority
        persistent = bool(flags & P.PERSISTENT)
        stored = []
        placed = []
        for queue in queues:
            message = StoredMessage(self.next_message_id, data, queue, priority,
                                    expires_at or None, persistent)
            self.next_message_id += 1
            queue.published += 1
            if persistent and queue.durable and self.persist:
                self.records.append(jr.publish_record(message.id, 0, queue.name, data))
                self.journal.track(message)
                stored.append(message)
                self._place(message, fields.not_before, now, self._turn_timers)
            else:
                self._place(message, fields.not_before, now)
            placed.append(message)
        if stored:
            self._turn_publishes.append((session, seq, stored, ()))
        self._confirmable(session, seq)
        return placed

    def _place(self, message, not_before, now, timers=None):
        """Put a new (or recovered) message in its queue, or in the delay heap until due.

        With `timers`, its heap entries (delay, expiry) wait there until the turn's write
        succeeded (`settle_turn`), so a refused publish never enters a heap."""
        if expires_at_known(message):
            entry = (message.expires_at, message.id, message)
            if timers is None:
                heapq.heappush(self._expiring, entry)
            else:
                timers.append((self._expiring, entry))
        release_at = not_before - self.options.release_ahead
        if not_before and release_at > now:
            message.where = DELAYED
            message.queue.delayed += 1
            entry = (release_at, message.id, message)
            if timers is None:
                heapq.heappush(self._delayed, entry)
            else:
                timers.append((self._delayed, entry))
        else:
            message.queue.push(message)
            self.dirty.add(message.queue)

    def settle_turn(self):
        """The turn's write is done (or refused): its surviving messages' timers start."""
        for heap, entry in self._turn_timers:
            if entry[2].where != DEAD:
                heapq.heappush(heap, entry)
        self._turn_timers = []
        self._turn_publishes = []

    def confirm_turn(self):
        """Send the CONFIRMs of this turn; the journal write that they promise has happened."""
        self.send_confirms(self.take_confirms())

    def take_confirms(self):
        """The turn's ``(session, seq)`` to confirm, for a server that holds them back until
        an fsync covers their write (everysec, a slow disk); `send_confirms` sends them."""
        self.settle_turn()
        confirms = [(session, session.confirm_seq) for session in self._confirm
                    if session.confirm_seq]
        for session in self._confirm:
            session.confirm_seq = 0
        self._confirm = []
        return confirms

    def send_confirms(self, confirms):
        for session, seq in confirms:
            if self.sessions.get(session.id) is session:
                session.send(P.HEADER.pack(0, P.CONFIRM, seq))

    def refuse_turn(self, reason, records):
        """The journal write of this turn failed: refuse its publishes, keep the rest for later.

        Publishes that were in the failed write are taken back out of their queues (they
        were not delivered: dispatch comes after the write) and answered with ERROR 507;
        an ATOMIC unit's settings are put back as they were. Every other record (acks,
        results, declarations) is written again next turn. Returns how many were refused.
        """
        refused = set()
        for session, seq, messages, settings in reversed(self._turn_publishes):
            for message in reversed(messages):        # newest first: each at its queue's tail
                refused.add(message.id)
                self._take_back(message)
            for key, previous, value in settings:
                if self.kv.get(key, MISSING) is value:  # not set again since
                    if previous is MISSING:
                        del self.kv[key]
                    else:
                        self.kv[key] = previous
            if seq:
                self._error(session, seq, P.REFUSED, "publish refused: %s" % reason)
                if session.confirm_seq == seq:      # nothing after it to confirm
                    session.confirm_seq = 0
        self.settle_turn()
        # Publish records of messages the broker made itself (dead-letter copies) are kept.
        self.records = [record for record in records
                        if not refused.intersection(jr.publish_ids(record))] + self.records
        counts = self._throttle.allow(reason, len(refused))
        if counts is not None:
            logger.error("journal write failed (%s): %d publishes refused; acks and results "
                         "will be written again%s", reason, len(refused),
                         folded(counts, "publishes refused"))
        return len(refused)

    def _take_back(self, message):
        """Undo the placing of a message whose publish was refused: nothing of it stays."""
        if message.where == READY:
            message.queue.take_back(message)
        elif message.where == DELAYED:
            message.queue.delayed -= 1
        message.where = DEAD
        message.queue.published -= 1
        self.journal.untrack(message)

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
            raise refuse(P.PRECONDITION_FAILED, "consumer tag %d is in use" % tag)
        consumer = Consumer(tag, queue, session, bool(args.get("no_ack", False)))
        session.consumers[tag] = consumer
        queue.consumers.append(consumer)
        self.dirty.add(queue)
        self._reply(session, seq, {"consumer_tag": tag})

    def _cancel(self, session, seq, body):
        tag = P.decode_json(body, "CANCEL").get("consumer_tag")
        if not isinstance(tag, int) or isinstance(tag, bool):
            raise ProtocolError("consumer_tag must be an integer")
        consumer = session.consumers.get(tag)
        if consumer is None:
            raise refuse(P.NOT_FOUND, "no consumer %r on this connection" % (tag,))
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

    def output_drained(self, session):
        """The client read its backlog: it may be given messages again."""
        self._mark_dirty(session)

    def _mark_dirty(self, session):
        for consumer in session.consumers.values():
            if consumer.queue.ready:
                self.dirty.add(consumer.queue)

    def dispatch(self):
        """Hand ready messages to consumers with credit; DELIVERED records go to `records`.

        Queues take turns, one round of their consumers each per pass, so a consumer of
        several queues fills its credit from all of them, not from whichever comes first.
        """
        delivered = []
        while self.dirty:
            queues, self.dirty = list(self.dirty), set()
            while queues:
                queues = [queue for queue in queues
                          if queue.ready and queue.consumers
                          and self._dispatch_queue(queue, delivered, len(queue.consumers))]
        if delivered:
            self.records.append(jr.ids_record(jr.DELIVERED, delivered))

    def _dispatch_queue(self, queue, delivered, limit):
        """Deliver up to `limit` messages of `queue` round-robin; True if it delivered any."""
        consumers = queue.consumers
        count = len(consumers)
        index = queue.next_consumer % count
        idle = 0
        given = 0
        now = None
        results_inflight = self.results.inflight
        revoked = self.revoked.ids
        encode = P.encode_deliver
        outgoing = self.outgoing
        count_received = self.task_stats.received
        type_of = P.type_bytes_of
        while idle < count and queue.ready and given < limit:
            consumer = consumers[index]
            index = (index + 1) % count
            session = consumer.session
            if session.prefetch and len(session.unacked) >= session.prefetch \
                    or session.unsent >= session.MAX_UNSENT:
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
                self._count_dropped(message.data)
                self._task_revoked(task_id, "revoked")
                self._retire(message)
                continue
            idle = 0
            given += 1
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
                count_received(type_of(message.data))
            frame = encode(tag, consumer.tag, message.deliveries > 1, message.deliveries,
                           message.data)
            session.out.append(frame)
            session.unsent += len(frame)
            outgoing.add(session)
        queue.next_consumer = index
        return given > 0

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
        self._count_dropped(message.data)
        self._task_revoked(P.message_id_of(message.data), "expired")
        self._retire(message)

    def _count_dropped(self, data):
        """A task's message is dropped unrun (revoked, expired): counted as revoked."""
        self.task_stats.finished(P.type_bytes_of(data).decode("utf-8", "replace"), "REVOKED")

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
            if started:
                fields = P.parse_message(message.data)
                task_id, name = fields.message_id, fields.type
                self.handovers.start(task_id, session, name)
                inflight[task_id] = "STARTED"
                started_ids.append(task_id)
            else:
                inflight.pop(P.message_id_of(message.data), None)
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

    # -- connection-level commands ---------------------------------------------------------------

    def _heartbeat(self, session, seq, body):
        pass

    def _close(self, session, seq, body):
        session.close_after_flush()

    def _status(self, session, seq, body):
        from .status import scheduled_report, status_report
        scheduled = P.decode_json(body, "STATUS").get("scheduled")
        if scheduled is not None and (not isinstance(scheduled, int) or isinstance(scheduled, bool)
                                      or not 0 <= scheduled <= MAX_SCHEDULED_LISTED):
            raise ProtocolError("'scheduled' must be a whole number from 0 to %d"
                                % MAX_SCHEDULED_LISTED)
        report = status_report(self)
        if scheduled is not None:
            report["scheduled"] = scheduled_report(self, scheduled)
        self._reply(session, seq, report)

    def delayed_messages(self, limit):
        """Up to `limit` delayed messages, soonest first, found without disturbing the heap:
        a walk of its tree that only ever opens the children of what it has taken."""
        heap = self._delayed
        out = []
        frontier = [(heap[0], 0)] if heap else []
        while frontier and len(out) < limit:
            entry, index = heapq.heappop(frontier)
            if entry[2].where == DELAYED:
                out.append(entry[2])
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return out

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


def _can_take_now(queue):
    return any(consumer.session.has_credit() for consumer in queue.consumers)


