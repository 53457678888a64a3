"""Exchanges, queues and bindings as the Redis transport keeps them, and routing. Pure.

The topology lives in three Redis hashes under a version number (see `redis_keys`). Every
client caches a `Topology` read at one version and decides with it: which queues a message
goes to (the built-in broker's matcher, `minitask.broker.routing`), and what a declare or a
bind changes. The change is committed by a script only if the version is still the one it
was decided from; otherwise the client reloads and decides again. So routing is done by
clients, as kombu does, but a publish never lands by rules that changed meanwhile.

AMQP's rules, as the built-in broker keeps them: redeclaring with other arguments is refused
(406), ``amq.`` names are reserved, the default exchange ``""`` routes to the queue the
routing key names and takes no bindings, an exclusive queue belongs to the client that made
it (409 for others). The control exchange (`minitask.control.CONTROL_EXCHANGE`) is the
control stream on Redis: it exists without being declared and takes no bindings.
"""

import json
import os

from .. import control, protocol as P
from ..broker.routing import EXCHANGE_TYPES, Exchange
from ..broker.topology import dead_letter_name
from ..exceptions import BrokerError, ProtocolError

__all__ = ["Topology", "QueueDefinition", "QUEUE_DEFAULTS", "refusal", "binding_field"]

# A queue's arguments and their defaults (those of the built-in broker).
QUEUE_DEFAULTS = {"durable": True, "exclusive": False, "auto_delete": False,
                  "max_length": None, "max_redeliveries": 10, "dead_letter_queue": None}


def refusal(code, text):
    """The exception for a refusal with a protocol error code (404, 406, 409...)."""
    return BrokerError(text, code)


def _json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def binding_field(exchange, queue, key, arguments):
    """The field of a binding in the bindings hash: the same binding, the same field."""
    return _json([exchange, queue, key, arguments or {}])


class QueueDefinition:
    """A queue's arguments and its owner (the id of the client it is exclusive to, or None)."""

    __slots__ = ("name", "args", "owner")

    def __init__(self, name, args, owner=None):
        self.name, self.args, self.owner = name, args, owner

    def stored(self):
        """The value of the queue in the queues hash."""
        return _json({"args": self.args, "owner": self.owner})

    @classmethod
    def from_stored(cls, name, value):
        stored = json.loads(value)
        return cls(name, dict(QUEUE_DEFAULTS, **stored.get("args", {})), stored.get("owner"))

    def dead_letter(self):
        """``(name, stored definition)`` of this queue's dead-letter queue: the one its
        arguments name, else ``<queue>.dead``; durable as this one, never dead-lettering."""
        name = self.args["dead_letter_queue"] or dead_letter_name(self.name)
        args = dict(QUEUE_DEFAULTS, durable=self.args["durable"], max_redeliveries=None)
        return name, QueueDefinition(name, args).stored()


class Topology:
    """The exchanges, queues and bindings of one vhost at one `version`."""

    def __init__(self, version=0):
        self.version = version
        self.exchanges = {}                 # name -> routing.Exchange
        self.queues = {}                    # name -> QueueDefinition
        self.bindings = {}                  # field -> (exchange, queue, key, arguments)

    @classmethod
    def from_snapshot(cls, reply):
        """From the SNAPSHOT script's reply: [version, exchanges, queues, bindings]. A
        ProtocolError, in one line, when the keys hold what minitask did not write."""
        try:
            return cls._from_snapshot(reply)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProtocolError("the topology in Redis is not one minitask wrote (%s: %s)"
                                % (type(exc).__name__, exc)) from None

    @classmethod
    def _from_snapshot(cls, reply):
        version, exchanges, queues, bindings = reply
        topology = cls(int(version))
        for name, value in _pairs(exchanges):
            described = json.loads(value)
            topology.exchanges[name] = Exchange(name, described["type"],
                                                described.get("durable", True),
                                                described.get("auto_delete", False))
        for name, value in _pairs(queues):
            topology.queues[name] = QueueDefinition.from_stored(name, value)
        for field, _value in _pairs(bindings):
            exchange, queue, key, arguments = json.loads(field)
            topology.bindings[field] = (exchange, queue, key, arguments)
            if exchange in topology.exchanges:
                topology.exchanges[exchange].bind(queue, key, arguments)
        return topology

    # -- routing -----------------------------------------------------------------------------

    def route(self, fields, data):
        """The sorted names of the queues an encoded message goes to; None for the control
        exchange; BrokerError 404 when its exchange does not exist."""
        name, key = fields.exchange, fields.routing_key
        if name == control.CONTROL_EXCHANGE:
            return None
        if not name:
            return [key] if key in self.queues else []
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise refusal(P.NOT_FOUND, "no exchange %r" % name)
        headers = P.headers_of(data, fields.headers_at) if exchange.type == "headers" else None
        return sorted(exchange.route(key, headers))

    def has_exchange(self, name):
        return name in ("", control.CONTROL_EXCHANGE) or name in self.exchanges

    # -- declares: each returns the changes to commit, as (hash, "set"|"del", field, value) --

    def declare_exchange(self, name, type="direct", durable=True, auto_delete=False,
                         passive=False):
        existing = self.exchanges.get(name)
        if name == control.CONTROL_EXCHANGE:
            existing = Exchange(name, "fanout", False)
        if passive:
            if existing is None and name != "":
                raise refusal(P.NOT_FOUND, "no exchange %r" % name)
            return []
        if existing is not None:
            if existing.type != type:
                raise refusal(P.PRECONDITION_FAILED, "exchange %r exists with type %r, not %r"
                              % (name, existing.type, type))
            return []
        if name == "" or name.startswith("amq."):
            raise refusal(P.PRECONDITION_FAILED, "exchange name %r is reserved" % name)
        if type not in EXCHANGE_TYPES:
            raise ProtocolError("exchange type %r: expected one of %s"
                                % (type, ", ".join(EXCHANGE_TYPES)))
        described = {"type": type, "durable": bool(durable), "auto_delete": bool(auto_delete)}
        return [("exchanges", "set", name, _json(described))]

    def declare_queue(self, name, owner, passive=False, **given):
        """``(definition, changes)``; "" names a new exclusive queue of `owner`."""
        for key in ("max_length", "max_redeliveries"):
            value = given.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise ProtocolError("%s must be a non-negative integer or null" % key)
        if given.get("dead_letter_queue") is not None \
                and not isinstance(given["dead_letter_queue"], str):
            raise ProtocolError("dead_letter_queue must be a queue name or null")
        if not isinstance(name, str) or len(name.encode("utf-8", "replace")) > 255:
            raise ProtocolError("queue name must be a string of at most 255 bytes")
        unknown = set(given) - set(QUEUE_DEFAULTS)
        if unknown:
            raise ProtocolError("unknown queue arguments: %s" % ", ".join(sorted(unknown)))
        for key in ("durable", "exclusive", "auto_delete"):
            if key in given:
                given[key] = bool(given[key])
        queue = self.queues.get(name) if name else None
        if queue is None and passive:
            raise refusal(P.NOT_FOUND, "no queue %r" % name)
        if queue is not None:
            self.check_owner(queue, owner)
            wanted = dict(queue.args, **given)
            if not passive and wanted != queue.args:
                raise refusal(P.PRECONDITION_FAILED, "queue %r exists with other arguments: %s"
                              % (name, {key: value for key, value in queue.args.items()
                                        if wanted[key] != value}))
            return queue, []
        if not name:
            name = "mt.gen-%s" % os.urandom(8).hex()
            given.update(exclusive=True, durable=False, auto_delete=True)
        args = dict(QUEUE_DEFAULTS, **given)
        queue = QueueDefinition(name, args, owner if args["exclusive"] else None)
        return queue, [("queues", "set", name, queue.stored())]

    def check_owner(self, queue, owner):
        if queue.owner is not None and queue.owner != owner:
            raise refusal(P.RESOURCE_LOCKED, "queue %r is exclusive to another connection"
                          % queue.name)

    def queue(self, name, owner):
        """The definition of queue `name`, which `owner` may use; 404 or 409 otherwise."""
        queue = self.queues.get(name)
        if queue is None:
            raise refusal(P.NOT_FOUND, "no queue %r" % name)
        self.check_owner(queue, owner)
        return queue

    def bind(self, queue, exchange, binding_key="", arguments=None, owner=None, unbind=False):
        if not isinstance(binding_key, str) or not isinstance(arguments or {}, dict):
            raise ProtocolError("binding_key must be a string and arguments an object")
        if exchange == "":
            raise refusal(P.PRECONDITION_FAILED, "the default exchange cannot be bound to")
        if exchange == control.CONTROL_EXCHANGE:
            raise refusal(P.PRECONDITION_FAILED, "on Redis the control exchange is a stream "
                          "every worker reads; it takes no bindings")
        if exchange not in self.exchanges:
            raise refusal(P.NOT_FOUND, "no exchange %r" % exchange)
        self.queue(queue, owner)
        field = binding_field(exchange, queue, binding_key, arguments)
        if unbind:
            return [("bindings", "del", field, "")] if field in self.bindings else []
        return [] if field in self.bindings else [("bindings", "set", field, "1")]

    def delete_queue(self, name, owner):
        """The changes that delete queue `name` and its bindings (its keys are the caller's
        to delete in the same commit)."""
        self.queue(name, owner)
        changes = [("queues", "del", name, "")]
        changes += [("bindings", "del", field, "") for field, binding in self.bindings.items()
                    if binding[1] == name]
        return changes


def _pairs(flat):
    """A RESP2 HGETALL reply (or a RESP3 map) as (str, bytes) pairs."""
    if isinstance(flat, dict):
        items = flat.items()
    else:
        items = zip(flat[0::2], flat[1::2])
    return [(key.decode("utf-8") if isinstance(key, bytes) else key, value)
            for key, value in items]
