"""Messages: publishing, placing, delivering, acks, dead letters, delays and expiry.

The part of `BrokerState` that moves messages. It routes through `Topology`, reads and
updates what `ResultCommands` knows of tasks (in flight, revoked, handed over), and hands
its journal records to the `Sink`::

    publish ─> Topology.route ─> place ─┬──────────────────────> Queue ─> dispatch ─┐
                                         └─> delay heap ─ tick ─┘                    │
                  Session.unacked <──────────────────────────────────────────────────┘
                    ├─ ack: gone
                    ├─ reject with requeue, or its connection lost: back to its queue
                    │  (to the dead-letter queue once delivered too many times)
                    └─ reject without: gone, or to the queue's dead-letter queue

Invariants:

- Every message is in exactly one place: a queue (READY), the delay heap (DELAYED), one
  session's `unacked` (UNACKED), or nowhere (DEAD).
- Deliveries are made in `dispatch()`, which the loop runs after the turn's journal write:
  nothing a consumer sees can vanish in a crash, and a refused publish was never delivered.
- A refused publish leaves nothing behind: `take_back` removes its messages from their
  queues (they sit at the tail: nothing was delivered before the write), and the timers of
  this turn's persisted messages (delay, expiry) enter their heaps only in `start_timers`,
  after the write.
- Whether a task's message is revoked or expired is decided by `protocol.drop_reason`
  alone, asked when a message is published and handed to a consumer, and when its expiry
  comes; a message dropped so is counted and its task marked REVOKED.
"""

import heapq
import logging

from .. import protocol as P
from ..exceptions import NotDeliverableError, ProtocolError, PublishRefusedError, UnroutableError
from . import records as rc
from .arguments import refuse
from .queue import DEAD, DELAYED, READY, UNACKED, StoredMessage
from .results import HANDED, HANDING
from .session import Consumer

__all__ = ["Messages"]

logger = logging.getLogger(__name__)

_heappush, _heappop = heapq.heappush, heapq.heappop


class Messages:
    """Every message the broker holds, and the commands that move them."""

    def __init__(self, clock, options, sink, topology, results, sessions, outgoing,
                 task_stats):
        self.clock = clock
        # Delayed messages reach the worker this early; its own scheduler starts them on time.
        self.release_ahead = options.release_ahead
        self.sink = sink
        self.topology = topology
        self.results = results
        self.sessions = sessions                # id -> Session, kept by BrokerState
        self.outgoing = outgoing                # sessions with frames to send (Session.send)
        self.task_stats = task_stats
        self.dirty = set()                      # queues that may be able to deliver
        self.delayed = []                       # heap of (release_at, id, StoredMessage)
        self.expiring = []                      # heap of (expires_at, id, StoredMessage)
        self._timers = []                       # (heap, entry) of this turn's persisted ones
        self.next_message_id = 1
        self.unroutable = 0                     # dropped for matching no queue (AMQP's way)
        # Set by the chords part: chord_wait(data, fields) -> the ids a chord's body waits
        # for (None for any other message), park(session, seq, data, fields, ids) holds it.
        self.chord_wait = self.park = None

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, session, seq, data):
        fields = P.parse_message(data)
        flags, priority, not_before, expires_at, message_id, exchange, key = fields[:7]
        at = fields.headers_at
        if data[at] or data[at + 1]:            # headers: a chord's body is held, not routed
            ids = self.chord_wait(data, fields)
            if ids:
                self.park(session, seq, data, fields, ids)
                return
        if exchange:
            queues = self.topology.route(fields, data)
        else:                                   # the default exchange, inline: the hot path
            queue = self.topology.queues.get(key)
            queues = [queue] if queue is not None else ()
        session.published += 1
        sink = self.sink
        if not queues:
            if flags & P.MANDATORY:
                raise UnroutableError("message to exchange %r with routing key %r matched no "
                                      "queue" % (exchange, key))
            self.unroutable += 1
            sink.confirm(session, seq)
            return
        if flags & P.IMMEDIATE and not any(_can_take_now(queue) for queue in queues):
            raise NotDeliverableError("no consumer of %s can take the message now"
                                      % ", ".join(repr(q.name) for q in queues))
        for queue in queues:
            if queue.is_full():
                raise PublishRefusedError("queue %r is full (max_length %d)"
                                          % (queue.name, queue.max_length))
        now = self.clock()
        revoked = self.results.revoked.ids
        if revoked or expires_at:
            why = P.drop_reason(message_id, expires_at, now, revoked)
            if why is not None:
                self._count_dropped(data)
                self.results.task_revoked(message_id, why + " before it was queued", data)
                sink.confirm(session, seq)
                return
        placed, records = self._store(data, flags, priority, not_before, expires_at, queues,
                                      now)
        if records or sink.open is not None:
            sink.unit(session, seq, placed, records)
        if seq:                                 # sink.confirm, inline: the hot path
            if not session.confirm_seq:
                sink.confirming.append(session)
            session.confirm_seq = seq

    def _store(self, data, flags, priority, not_before, expires_at, queues, now):
        """Place a copy of message `data` in each of `queues`, journalling those that
        persist; returns ``(placed, records)``."""
        sink = self.sink
        if priority is None:
            priority = P.DEFAULT_PRIORITY
        persistent = bool(flags & P.PERSISTENT)
        expires_at = expires_at or None
        placed, records = [], []
        for queue in queues:
            message = StoredMessage(self.next_message_id, data, queue, priority, expires_at,
                                    persistent)
            self.next_message_id += 1
            queue.published += 1
            if persistent and queue.durable and sink.persist:
                record = rc.publish_record(message.id, 0, queue.name, data)
                sink.records.append(record)         # sink.add, inline: the hot path
                sink.track(message)
                records.append(record)
                self._place(message, not_before, now, self._timers)
            else:
                self._place(message, not_before, now)
            placed.append(message)
        return placed, records

    def publish_unlocked(self, data):
        """Route and queue a message the broker publishes itself because of a command it is
        applying (a chord's body, an errback): its records join that command's (inside an
        ATOMIC, its unit: refused with it). Never refused itself: a full queue takes it,
        and one that matches no queue is logged and counted as unroutable."""
        fields = P.parse_message(data)
        queues = self.topology.route(fields, data)
        if not queues:
            self.unroutable += 1
            logger.error("task %s (%s), unlocked by a workflow, matched no queue (exchange %r, "
                         "routing key %r): dropped", fields.message_id, fields.type,
                         fields.exchange, fields.routing_key)
            return
        now = self.clock()
        revoked = self.results.revoked.ids
        if revoked or fields.expires_at:
            why = P.drop_reason(fields.message_id, fields.expires_at, now, revoked)
            if why is not None:
                self._count_dropped(data)
                self.results.task_revoked(fields.message_id, why + " before it was queued",
                                          data)
                return
        placed, _records = self._store(data, fields.flags, fields.priority, fields.not_before,
                                       fields.expires_at, queues, now)
        if self.sink.open is not None:
            self.sink.open[0].extend(placed)

    def publish_internal(self, message):
        """Route a message the broker itself sends (control broadcasts); never persisted."""
        data = P.encode_message(message)
        fields = P.parse_message(data)
        if fields.exchange and fields.exchange not in self.topology.exchanges:
            return
        now = self.clock()
        for queue in self.topology.route(fields, data):
            stored = StoredMessage(self.next_message_id, data, queue, P.DEFAULT_PRIORITY,
                                   None, False)
            self.next_message_id += 1
            self._place(stored, 0.0, now)

    def _place(self, message, not_before, now, timers=None):
        """Put a new (or recovered) message in its queue, or in the delay heap until due.

        With `timers`, its heap entries (delay, expiry) wait there until the turn's write
        succeeded (`start_timers`), so a refused publish never enters a heap."""
        if message.expires_at is not None:
            entry = (message.expires_at, message.id, message)
            if timers is None:
                _heappush(self.expiring, entry)
            else:
                timers.append((self.expiring, entry))
        release_at = not_before - self.release_ahead
        if not_before and release_at > now:
            message.where = DELAYED
            message.queue.delayed += 1
            entry = (release_at, message.id, message)
            if timers is None:
                _heappush(self.delayed, entry)
            else:
                timers.append((self.delayed, entry))
        else:
            message.queue.push(message)
            self.dirty.add(message.queue)

    def restore(self, message, not_before, now):
        """Place a message recovered from the journal: one that had been delivered comes
        back ahead of newer ones (unless it is still delayed), the rest as when published."""
        if message.deliveries and not (not_before and not_before - self.release_ahead > now):
            message.queue.requeue(message)
            self.dirty.add(message.queue)
            if message.expires_at is not None:
                _heappush(self.expiring, (message.expires_at, message.id, message))
        else:
            self._place(message, not_before, now)

    def start_timers(self):
        """The turn's write is done (or refused): its surviving messages' timers start."""
        for heap, entry in self._timers:
            if entry[2].where != DEAD:
                _heappush(heap, entry)
        self._timers = []

    def take_back(self, messages):
        """Undo the placing of messages whose publish was refused: nothing of them stays.
        Newest first, so each one is found at its queue's tail."""
        for message in reversed(messages):
            if message.where == READY:
                message.queue.take_back(message)
            elif message.where == DELAYED:
                message.queue.delayed -= 1
            message.where = DEAD
            message.queue.published -= 1
            self.sink.untrack(message)

    # -- consumers -----------------------------------------------------------------------------

    def consume(self, session, seq, body):
        args = P.decode_json(body, "CONSUME")
        queue = self.topology.queue_for(session, args)
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
        session.reply(seq, {"consumer_tag": tag})

    def cancel(self, session, seq, body):
        tag = P.decode_json(body, "CANCEL").get("consumer_tag")
        if not isinstance(tag, int) or isinstance(tag, bool):
            raise ProtocolError("consumer_tag must be an integer")
        consumer = session.consumers.get(tag)
        if consumer is None:
            raise refuse(P.NOT_FOUND, "no consumer %r on this connection" % (tag,))
        self._remove_consumer(consumer)
        session.reply(seq, {})

    def _remove_consumer(self, consumer):
        consumer.session.consumers.pop(consumer.tag, None)
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        if queue.auto_delete and not queue.consumers and \
                self.topology.queues.get(queue.name) is queue:
            self.drop_queue(queue)

    def qos(self, session, seq, body):
        count = P.decode_json(body, "QOS").get("prefetch_count", 0)
        if not isinstance(count, int) or count < 0:
            raise ProtocolError("prefetch_count must be a non-negative integer")
        session.prefetch = count
        self.output_drained(session)
        session.reply(seq, {})

    def output_drained(self, session):
        """The session may take messages again (it read its backlog, acked, or asked for
        more): its queues with messages waiting may deliver."""
        for consumer in session.consumers.values():
            if consumer.queue.ready:
                self.dirty.add(consumer.queue)

    # -- delivering ----------------------------------------------------------------------------

    def dispatch(self):
        """Hand ready messages to consumers with credit; DELIVERED records go to the sink.

        Queues take turns, one round of their consumers each per pass, so a consumer of
        several queues fills its credit from all of them, not from whichever comes first.
        """
        delivered = []
        now = self.clock()
        while self.dirty:
            queues, self.dirty = list(self.dirty), set()
            while queues:
                queues = [queue for queue in queues
                          if queue.ready and queue.consumers
                          and self._dispatch_queue(queue, delivered, len(queue.consumers), now)]
        self.sink.ids(rc.DELIVERED, delivered)

    def _dispatch_queue(self, queue, delivered, limit, now):
        """Deliver up to `limit` messages of `queue` round-robin; True if it delivered any."""
        consumers = queue.consumers
        count = len(consumers)
        index = queue.next_consumer % count
        idle = 0
        given = 0
        inflight = self.results.store.inflight
        revoked = self.results.revoked.ids
        drop_reason, message_id_of, encode = P.drop_reason, P.message_id_of, P.encode_deliver
        count_received = self.task_stats.received
        type_of = P.type_bytes_of
        outgoing = self.outgoing
        while idle < count and queue.ready and given < limit:
            consumer = consumers[index]
            index = (index + 1) % count
            session = consumer.session
            # Prefetch counts unacked messages, as AMQP's: a consumer that acks nothing (a
            # worker's control queue) takes its messages however full the session's credit.
            if session.prefetch and len(session.unacked) >= session.prefetch \
                    and not consumer.no_ack or session.unsent >= session.MAX_UNSENT:
                idle += 1
                continue
            message = queue.pop()
            if message is None:
                break
            task_id = message_id_of(message.data)
            if revoked or message.expires_at is not None:
                why = drop_reason(task_id, message.expires_at, now, revoked)
                if why is not None:
                    self._drop(message, task_id, why)
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
                if task_id and task_id not in inflight:
                    inflight[task_id] = "RECEIVED"
                count_received(type_of(message.data))
            frame = encode(tag, consumer.tag, message.deliveries > 1, message.deliveries,
                           message.data)
            session.out.append(frame)               # Session.send, inline: the hot path
            session.unsent += len(frame)            # no more for it once over MAX_UNSENT
            outgoing.add(session)
        queue.next_consumer = index
        return given > 0

    # -- acks, rejects, returns ----------------------------------------------------------------

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
            self.output_drained(session)
        return flags, taken

    def ack(self, session, seq, body):
        flags, messages = self._take_unacked(session, body)
        started = flags & P.STARTED
        mark = self.sink.mark()
        ids, started_ids, kept = [], [], []
        inflight = self.results.store.inflight
        for message in messages:
            message.queue.acked += 1
            message.where = DEAD
            if started:
                fields = P.parse_message(message.data)
                self.results.handovers.start(fields.message_id, session, fields.type)
                at = fields.headers_at
                if message.data[at] or message.data[at + 1]:
                    kept.append(self._keep(fields.message_id, message.data))
                inflight[fields.message_id] = "STARTED"
                started_ids.append(fields.message_id)
            else:
                inflight.pop(P.message_id_of(message.data), None)
            if message.segment is not None:
                self.sink.untrack(message)
                ids.append(message.id)
        if not self.sink.persist:
            return
        for one in kept:
            self.sink.add(rc.publish_record(one.id, 0, HANDED, one.data))
        self.sink.ids(rc.ACK, ids)
        self.sink.names(rc.STARTED, started_ids)
        # The acks and the handovers they make (with the messages kept for them, and the
        # release of one kept for the same task before): all of them or none, so that a
        # torn write never leaves a task neither queued nor handed over.
        self.sink.bundle(mark)

    def _keep(self, task_id, data):
        """Keep the message of a task with a workflow, handed over as it starts: if its
        worker is lost, the WorkerLostError the broker stores unlocks its errbacks and ends
        its chain, even after a restart. A new message id, in no queue (HANDED)."""
        self.results.release_kept(task_id)      # the same task handed over again
        kept = StoredMessage(self.next_message_id, data, HANDING, P.DEFAULT_PRIORITY, None,
                             True)
        self.next_message_id += 1
        self.results.handovers.messages[task_id] = kept
        self.sink.track(kept)
        return kept

    def reject(self, session, seq, body):
        flags, messages = self._take_unacked(session, body, multiple=False)
        for message in messages:
            self._inflight_clear(message)
            if flags & P.REQUEUE:
                if flags & P.RELEASE:
                    self._uncount(message)
                self._return(message)
            elif message.queue.dead_letter_queue:
                self._dead_letter(message, "rejected")
            else:
                self._retire(message)
                self.results.task_dead_lettered(P.message_id_of(message.data),
                                                "was rejected and dropped", message.data)

    def start(self, session, seq, body):
        _flags, tags = P.decode_tags(body)
        inflight = self.results.store.inflight
        for tag in tags:
            message = session.unacked.get(tag)
            if message is not None:
                task_id = P.message_id_of(message.data)
                if task_id:
                    inflight[task_id] = "STARTED"

    def _uncount(self, message):
        """A message given back before it started: its last delivery does not count. The
        journal hears the count again as a copy of the message (as compaction makes them),
        which replay takes as the count from then on."""
        if message.deliveries <= 0:
            return
        message.deliveries -= 1
        if message.segment is not None:
            self.sink.add(rc.publish_record(message.id, message.deliveries, message.queue.name,
                                            message.data))
            self.sink.untrack(message)
            self.sink.track(message)

    def _inflight_clear(self, message):
        task_id = P.message_id_of(message.data)
        inflight = self.results.store.inflight
        if inflight.get(task_id) in ("RECEIVED", "STARTED") \
                and task_id not in self.results.handovers.owner:
            del inflight[task_id]

    def _return(self, message):
        """An unacked message comes back: to its queue, or dead-lettered after too many tries."""
        queue = message.queue
        if self.topology.queues.get(queue.name) is not queue:
            self._retire(message)                       # its queue was deleted meanwhile
        elif queue.max_redeliveries is not None and message.deliveries > queue.max_redeliveries:
            self._dead_letter(message, "delivered %d times" % message.deliveries)
        else:
            queue.requeue(message)
            self.dirty.add(queue)

    def _dead_letter(self, message, why):
        queue = message.queue
        target = self.topology.dead_letter_queue(queue)
        logger.warning("message %s of queue %r dead-lettered to %r: %s",
                       P.message_id_of(message.data), queue.name, target.name, why)
        queue.dead_lettered += 1
        self._retire(message)
        moved = StoredMessage(self.next_message_id, message.data, target, message.priority,
                              None, message.persistent, message.deliveries)
        self.next_message_id += 1
        if moved.persistent and target.durable and self.sink.persist:
            self.sink.add(rc.publish_record(moved.id, moved.deliveries, target.name, moved.data))
            self.sink.track(moved)
        target.push(moved)
        self.dirty.add(target)
        self.results.task_dead_lettered(
            P.message_id_of(message.data), "was dead-lettered to %r (%s)" % (target.name, why),
            message.data)

    def _retire(self, *messages):
        """The messages are gone for good (acked, expired, dropped, purged): one ACK record
        for those journalled."""
        ids = []
        for message in messages:
            if message.where == READY:
                message.queue.discard(message)
            elif message.where == DELAYED:
                message.queue.delayed -= 1
            message.where = DEAD
            if message.segment is not None:
                self.sink.untrack(message)
                ids.append(message.id)
        if ids:
            self.sink.ids(rc.ACK, ids)

    def _drop(self, message, task_id, why):
        """A task's message is dropped unrun (`why`: "revoked" or "expired")."""
        self._count_dropped(message.data)
        self._retire(message)
        self.results.task_revoked(task_id, why, message.data)

    def _count_dropped(self, data):
        self.task_stats.finished(P.type_bytes_of(data).decode("utf-8", "replace"), "REVOKED")

    def session_closed(self, session):
        """The connection is gone: its unacked messages go back, its consumers and exclusive
        queues go. Returns how many messages went back."""
        for message in session.unacked.values():
            message.queue.unacked -= 1
            self._inflight_clear(message)
            self._return(message)
        requeued = len(session.unacked)
        session.unacked = {}
        for consumer in list(session.consumers.values()):
            self._remove_consumer(consumer)
        for queue in list(session.exclusive_queues):
            if self.topology.queues.get(queue.name) is queue:
                self.drop_queue(queue)
        return requeued

    # -- whole queues --------------------------------------------------------------------------

    def purge(self, session, seq, body):
        queue = self.topology.queue_for(session, P.decode_json(body, "PURGE"))
        dropped = queue.drain()
        self._retire(*dropped)
        session.reply(seq, {"messages": len(dropped)})

    def delete_queue(self, session, seq, body):
        queue = self.topology.queue_for(session, P.decode_json(body, "DELETE_QUEUE"))
        count = queue.ready
        self.drop_queue(queue)
        session.reply(seq, {"messages": count})

    def drop_queue(self, queue):
        """Delete a queue with every message it holds, waiting, delayed or unacked."""
        self._retire(*queue.drain())
        self._retire(*[entry[2] for entry in self.delayed + [e for _h, e in self._timers]
                       if entry[2].queue is queue and entry[2].where == DELAYED])
        unacked = [message for session in self.sessions.values()
                   for message in session.unacked.values()
                   if message.queue is queue and message.segment is not None]
        for message in unacked:             # gone with the queue, whatever the consumer does
            self.sink.untrack(message)
        self.sink.ids(rc.ACK, [message.id for message in unacked])
        for consumer in list(queue.consumers):
            consumer.session.consumers.pop(consumer.tag, None)
        queue.consumers = []
        self.topology.remove_queue(queue)

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now):
        """Release delayed messages that are due; drop the expired."""
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            message = _heappop(delayed)[2]
            if message.where == DELAYED:
                message.queue.delayed -= 1
                message.queue.push(message)
                self.dirty.add(message.queue)
        expiring, revoked = self.expiring, self.results.revoked.ids
        while expiring and expiring[0][0] <= now:
            message = _heappop(expiring)[2]
            if message.where in (READY, DELAYED):
                task_id = P.message_id_of(message.data)
                why = P.drop_reason(task_id, message.expires_at, now, revoked)
                if why is not None:
                    self._drop(message, task_id, why)

    def next_deadline(self):
        soonest = self.delayed[0][0] if self.delayed else None
        if self.expiring and (soonest is None or self.expiring[0][0] < soonest):
            soonest = self.expiring[0][0]
        return soonest

    # -- looking -------------------------------------------------------------------------------

    def live(self):
        """Every persisted message held (waiting, delayed, unacked), for compaction."""
        for queue in self.topology.queues.values():
            for message in queue.iter_ready():
                if message.segment is not None:
                    yield message
        for entry in list(self.delayed):
            if entry[2].where == DELAYED and entry[2].segment is not None:
                yield entry[2]
        for session in self.sessions.values():
            for message in session.unacked.values():
                if message.segment is not None:
                    yield message

    def delayed_messages(self, limit):
        """Up to `limit` delayed messages, soonest first, found without disturbing the heap:
        a walk of its tree that only ever opens the children of what it has taken."""
        heap = self.delayed
        out = []
        frontier = [(heap[0], 0)] if heap else []
        while frontier and len(out) < limit:
            entry, index = _heappop(frontier)
            if entry[2].where == DELAYED:
                out.append(entry[2])
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    _heappush(frontier, (heap[child], child))
        return out


def _can_take_now(queue):
    return any(consumer.no_ack or consumer.session.has_credit() for consumer in queue.consumers)
