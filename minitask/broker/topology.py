"""Exchanges, queues and bindings: declaring, binding, purging and deleting them.

Durable ones (and their bindings) are journalled as TOPOLOGY records, so they survive a
restart; exclusive queues belong to one connection and go when it does; auto-delete queues
go with their last consumer, auto-delete exchanges with their last binding. AMQP's rules:
redeclaring with other arguments is refused (406), the default exchange cannot be bound to.
"""

import os

from .. import protocol as P
from ..exceptions import ProtocolError
from . import journal as jr
from .arguments import check_queue_args, name_arg, refuse, utf8_length
from .queue import DELAYED, Queue
from .routing import EXCHANGE_TYPES, Exchange

__all__ = ["TopologyCommands", "dead_letter_name"]


class TopologyCommands:
    """BrokerState's commands about exchanges, queues and bindings."""

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
        name = name_arg(args, "exchange")
        kind = args.get("type", "direct")
        existing = self.exchanges.get(name)
        if args.get("passive"):
            if existing is None:
                raise refuse(P.NOT_FOUND, "no exchange %r" % name)
        elif existing is not None:
            if existing.type != kind:
                raise refuse(P.PRECONDITION_FAILED, "exchange %r exists with type %r, not %r"
                              % (name, existing.type, kind))
        else:
            if name == "" or name.startswith("amq."):
                raise refuse(P.PRECONDITION_FAILED, "exchange name %r is reserved" % name)
            if kind not in EXCHANGE_TYPES:
                raise ProtocolError("exchange type %r: expected one of %s"
                                    % (kind, ", ".join(EXCHANGE_TYPES)))
            durable = bool(args.get("durable", True))
            self._make_exchange(name, kind, durable, bool(args.get("auto_delete", False)))
            if durable:
                self._topology("declare_exchange", **self.exchanges[name].describe())
        self._reply(session, seq, {})

    def _delete_exchange(self, session, seq, body):
        name = name_arg(P.decode_json(body, "DELETE_EXCHANGE"), "exchange")
        exchange = self.exchanges.get(name)
        if name == "" or exchange is None:
            raise refuse(P.NOT_FOUND, "no exchange %r" % name)
        del self.exchanges[name]
        if exchange.durable:
            self._topology("delete_exchange", exchange=name)
        self._reply(session, seq, {})

    def _declare_queue(self, session, seq, body):
        args = P.decode_json(body, "DECLARE_QUEUE")
        name = args.get("queue") or ""
        if not isinstance(name, str) or utf8_length(name, "queue") > 255:
            raise ProtocolError("queue name must be a string of at most 255 bytes")
        check_queue_args(args)
        queue = self.queues.get(name) if name else None
        if args.get("passive"):
            if queue is None:
                raise refuse(P.NOT_FOUND, "no queue %r" % name)
            self._check_exclusive(session, queue)
        elif queue is None:
            if not name:
                name = P.GENERATED_QUEUE_PREFIX + os.urandom(8).hex()
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
                raise refuse(P.PRECONDITION_FAILED,
                              "queue %r exists with other arguments: %s" % (name, {
                                  key: value for key, value in queue.arguments().items()
                                  if wanted[key] != value}))
        self._reply(session, seq, {"queue": queue.name, "messages": queue.ready,
                                   "consumers": len(queue.consumers)})

    def _check_exclusive(self, session, queue):
        if queue.exclusive and queue.owner is not session:
            raise refuse(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                          % queue.name)

    def _binding_args(self, body, what):
        args = P.decode_json(body, what)
        queue_name = name_arg(args, "queue")
        exchange_name = name_arg(args, "exchange")
        key = args.get("binding_key", args.get("routing_key", ""))
        arguments = args.get("arguments") or {}
        if not isinstance(key, str) or not isinstance(arguments, dict):
            raise ProtocolError("binding_key must be a string and arguments an object")
        if exchange_name == "":
            raise refuse(P.PRECONDITION_FAILED, "the default exchange cannot be bound to")
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise refuse(P.NOT_FOUND, "no exchange %r" % exchange_name)
        queue = self.queues.get(queue_name)
        if queue is None:
            raise refuse(P.NOT_FOUND, "no queue %r" % queue_name)
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
        name = name_arg(args, "queue")
        queue = self.queues.get(name)
        if queue is None:
            raise refuse(P.NOT_FOUND, "no queue %r" % name)
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
        """Its delayed messages: in the heap, or published this turn (not in it yet)."""
        pending = [entry for heap, entry in self._turn_timers if heap is self._delayed]
        return [entry[2] for entry in self._delayed + pending
                if entry[2].queue is queue and entry[2].where == DELAYED]


def dead_letter_name(queue_name):
    """``<queue>.dead``, its queue part cut (on a character boundary) to fit in 255 bytes."""
    data = queue_name.encode("utf-8")[:250]
    return data.decode("utf-8", "ignore") + ".dead"

