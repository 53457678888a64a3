"""Exchanges, queues and bindings: declaring, binding, routing, and removing them.

The part of `BrokerState` that knows names: which exchanges and queues exist, how they are
bound, and so which queues a message goes to. It never touches messages: emptying and
deleting a queue is done by `Messages`, which then asks `remove_queue` here.

Durable ones (and their bindings) are journalled as TOPOLOGY records, so they survive a
restart (`apply` replays one); exclusive queues belong to one connection and go when it
does; auto-delete exchanges go with their last binding. AMQP's rules: redeclaring with other
arguments is refused (406), the default exchange cannot be bound to.
"""

import os

from .. import control, protocol as P
from ..exceptions import ProtocolError
from . import records as rc
from .arguments import check_queue_args, name_arg, refuse, utf8_length
from .queue import Queue
from .routing import EXCHANGE_TYPES, Exchange

__all__ = ["Topology", "dead_letter_name"]


class Topology:
    """Exchanges and queues by name, and the commands that change them."""

    def __init__(self, options, sink):
        self.sink = sink
        self.exchanges = {"": Exchange("", "direct")}
        self.queues = {}
        self.make_exchange(options.default_exchange, options.default_exchange_type, True, False)
        self.make_queue(options.default_queue, {"durable": True})
        self.exchanges[options.default_exchange].bind(options.default_queue,
                                                      options.default_routing_key)
        self.make_exchange(control.CONTROL_EXCHANGE, "fanout", False, False)

    def make_exchange(self, name, kind, durable, auto_delete):
        self.exchanges[name] = Exchange(name, kind, durable, auto_delete)

    def make_queue(self, name, args, owner=None):
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

    def _record(self, op, **fields):
        fields["op"] = op
        self.sink.json(rc.TOPOLOGY, fields)

    # -- routing -----------------------------------------------------------------------------

    def route(self, fields, data):
        """The queues a message (`protocol.parse_message` fields, and its bytes for a headers
        exchange) goes to; BrokerError 404 for an exchange that does not exist."""
        name, key = fields.exchange, fields.routing_key
        if not name:
            queue = self.queues.get(key)
            return [queue] if queue is not None else []
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise refuse(P.NOT_FOUND, "no exchange %r" % name)
        headers = P.headers_of(data, fields.headers_at) if exchange.type == "headers" else None
        return [self.queues[queue] for queue in exchange.route(key, headers)]

    def dead_letter_queue(self, queue):
        """Where `queue`'s dead letters go: its ``dead_letter_queue``, or ``<queue>.dead``,
        declared (like `queue`, durable or not) when it does not exist yet."""
        name = queue.dead_letter_queue or dead_letter_name(queue.name)
        target = self.queues.get(name)
        if target is None:
            target = self.make_queue(name, {"durable": queue.durable, "max_redeliveries": None})
            if target.durable:
                self._record("declare_queue", queue=name, **target.arguments())
        return target

    # -- commands ----------------------------------------------------------------------------

    def declare_exchange(self, session, seq, body):
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
            self.make_exchange(name, kind, durable, bool(args.get("auto_delete", False)))
            if durable:
                self._record("declare_exchange", **self.exchanges[name].describe())
        session.reply(seq, {})

    def delete_exchange(self, session, seq, body):
        name = name_arg(P.decode_json(body, "DELETE_EXCHANGE"), "exchange")
        exchange = self.exchanges.get(name)
        if name == "" or exchange is None:
            raise refuse(P.NOT_FOUND, "no exchange %r" % name)
        del self.exchanges[name]
        if exchange.durable:
            self._record("delete_exchange", exchange=name)
        session.reply(seq, {})

    def declare_queue(self, session, seq, body):
        args = P.decode_json(body, "DECLARE_QUEUE")
        name = args.get("queue") or ""
        if not isinstance(name, str) or utf8_length(name, "queue") > 255:
            raise ProtocolError("queue name must be a string of at most 255 bytes")
        if name.startswith("\x00"):
            # The journal names the broker's own holdings so (a chord's parked body).
            raise ProtocolError("queue name must not start with a NUL character")
        check_queue_args(args)
        queue = self.queues.get(name) if name else None
        if args.get("passive"):
            if queue is None:
                raise refuse(P.NOT_FOUND, "no queue %r" % name)
            _check_exclusive(session, queue)
        elif queue is None:
            if not name:
                name = P.GENERATED_QUEUE_PREFIX + os.urandom(8).hex()
                args = dict(args, exclusive=True, durable=False, auto_delete=True)
            owner = session if args.get("exclusive") else None
            queue = self.make_queue(name, args, owner)
            if queue.durable and not queue.exclusive:
                self._record("declare_queue", queue=name, **queue.arguments())
        else:
            _check_exclusive(session, queue)
            current = queue.arguments()
            wanted = dict(current, **{key: args[key] for key in current if key in args})
            wanted["durable"] = bool(wanted["durable"])
            if wanted != current:
                raise refuse(P.PRECONDITION_FAILED, "queue %r exists with other arguments: %s"
                             % (name, {key: value for key, value in current.items()
                                       if wanted[key] != value}))
        session.reply(seq, {"queue": queue.name, "messages": queue.ready,
                            "consumers": len(queue.consumers)})

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

    def bind(self, session, seq, body):
        exchange, queue, key, arguments = self._binding_args(body, "BIND")
        _check_exclusive(session, queue)
        if exchange.bind(queue.name, key, arguments) and exchange.durable and queue.durable \
                and not queue.exclusive:
            self._record("bind", queue=queue.name, exchange=exchange.name, binding_key=key,
                         arguments=arguments)
        session.reply(seq, {})

    def unbind(self, session, seq, body):
        exchange, queue, key, arguments = self._binding_args(body, "UNBIND")
        if exchange.unbind(queue.name, key, arguments):
            if exchange.durable and queue.durable:
                self._record("unbind", queue=queue.name, exchange=exchange.name,
                             binding_key=key, arguments=arguments)
            self._auto_delete_exchange(exchange)
        session.reply(seq, {})

    def _auto_delete_exchange(self, exchange):
        if exchange.auto_delete and not exchange.bindings and exchange.name in self.exchanges:
            del self.exchanges[exchange.name]
            if exchange.durable:
                self._record("delete_exchange", exchange=exchange.name)

    def queue_for(self, session, args):
        """The queue a command's ``{"queue"}`` names, if `session` may use it."""
        name = name_arg(args, "queue")
        queue = self.queues.get(name)
        if queue is None:
            raise refuse(P.NOT_FOUND, "no queue %r" % name)
        _check_exclusive(session, queue)
        return queue

    def remove_queue(self, queue):
        """Forget an emptied queue: its name, its bindings, its owner's claim on it."""
        for exchange in list(self.exchanges.values()):
            exchange.unbind_queue(queue.name)
            self._auto_delete_exchange(exchange)
        del self.queues[queue.name]
        if queue.owner is not None and queue in queue.owner.exclusive_queues:
            queue.owner.exclusive_queues.remove(queue)
        if queue.durable and not queue.exclusive:
            self._record("delete_queue", queue=queue.name)

    # -- the journal -------------------------------------------------------------------------

    def snapshot(self):
        """The durable exchanges, queues and bindings, for a SNAPSHOT record."""
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
        return {"exchanges": exchanges, "queues": queues, "bindings": bindings}

    def apply(self, op):
        """Replay one TOPOLOGY operation (a record's JSON, or a snapshot's entry with its
        ``op``): what was declared, deleted, bound or unbound."""
        kind = op.pop("op")
        if kind == "declare_exchange":
            if op["exchange"] not in self.exchanges:
                self.make_exchange(op["exchange"], op["type"], True, op.get("auto_delete", False))
        elif kind == "delete_exchange":
            self.exchanges.pop(op["exchange"], None)
        elif kind == "declare_queue":
            if op["queue"] not in self.queues:
                self.make_queue(op.pop("queue"), op)
        elif kind == "delete_queue":
            queue = self.queues.pop(op["queue"], None)
            if queue is not None:
                for exchange in self.exchanges.values():
                    exchange.unbind_queue(queue.name)
        elif kind in ("bind", "unbind"):
            exchange = self.exchanges.get(op["exchange"])
            if exchange is not None and op["queue"] in self.queues:
                method = exchange.bind if kind == "bind" else exchange.unbind
                method(op["queue"], op.get("binding_key", ""), op.get("arguments") or {})

    def apply_snapshot(self, snapshot):
        for exchange in snapshot.get("exchanges", ()):
            self.apply(dict(exchange, op="declare_exchange"))
        for queue in snapshot.get("queues", ()):
            self.apply(dict(queue, op="declare_queue"))
        for binding in snapshot.get("bindings", ()):
            self.apply(dict(binding, op="bind"))


def _check_exclusive(session, queue):
    if queue.exclusive and queue.owner is not session:
        raise refuse(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                     % queue.name)


def dead_letter_name(queue_name):
    """``<queue>.dead``, its queue part cut (on a character boundary) to fit in 255 bytes."""
    data = queue_name.encode("utf-8")[:250]
    return data.decode("utf-8", "ignore") + ".dead"
