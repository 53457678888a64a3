"""Remote control messages: how a client or the broker talks to every worker at once.

Every worker binds an exclusive, auto-deleted queue to the fanout exchange
``minitask.control``; a command published there reaches all of them. Replies, when asked for,
go through the default exchange to the queue named in ``reply_to``. Bodies are JSON::

    command: {"method": str, "arguments": {...}, "destination": [hostname, ...] or null,
              "reply_to": queue name or null, "ticket": str}
    reply:   {"ticket": str, "hostname": str, "reply": any}

Methods the worker answers: ``ping``, ``revoke`` (``task_ids``, ``terminate``, ``signal``),
``rate_limit`` (``task_name``, ``rate_limit``), ``shutdown``, ``add_consumer`` / ``cancel_consumer``
(``queue``), and the inspections ``active``, ``scheduled``, ``reserved``, ``revoked``,
``registered``, ``stats``.

The functions below are Celery's ``app.control`` for Python code, with Celery's replies:
``control.ping()``, ``control.revoke(id, terminate=True)``, ``control.rate_limit(name,
"10/m", reply=True)``, ``control.broadcast(...)``, ``control.inspect().active()`` and the
rest. A reply is a list of ``{worker name: answer}`` (``inspect()``'s, one dict of them, or
None when no worker answered in time). With ``destination``, the wait ends once each named
worker answered.
"""

import json
import uuid

from . import protocol
from .config import safe_url
from .exceptions import BrokerError, ConfigurationError

__all__ = ["CONTROL_EXCHANGE", "CONTROL_TYPE", "REPLY_TYPE", "command_message",
           "reply_message", "decode_body", "broadcast", "ping", "revoke", "terminate",
           "rate_limit", "add_consumer", "cancel_consumer", "shutdown", "purge", "inspect",
           "Inspect"]

CONTROL_EXCHANGE = "minitask.control"
CONTROL_TYPE = "minitask.control"
REPLY_TYPE = "minitask.control.reply"


def command_message(method, arguments=None, destination=None, reply_to=None, ticket=None):
    """A broker message carrying one control command to every worker."""
    body = {"method": method, "arguments": arguments or {}, "destination": destination,
            "reply_to": reply_to, "ticket": ticket or uuid.uuid4().hex}
    return protocol.Message(
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        exchange=CONTROL_EXCHANGE, routing_key="", message_id=body["ticket"],
        type=CONTROL_TYPE, content_type="application/json", flags=0)


def reply_message(reply_to, ticket, hostname, reply):
    """A broker message carrying one worker's answer back to the asker's queue."""
    body = {"ticket": ticket, "hostname": hostname, "reply": reply}
    return protocol.Message(
        body=json.dumps(body, separators=(",", ":"), default=repr).encode("utf-8"),
        exchange="", routing_key=reply_to, message_id=ticket, type=REPLY_TYPE,
        content_type="application/json", flags=0)


def decode_body(body):
    """The JSON object of a control message or reply; ProtocolError when it is not one."""
    return protocol.decode_json(body, "control message")


# -- Celery's app.control, for Python code ----------------------------------------------------

DEFAULT_TIMEOUT = 1.0           # Celery's: seconds to wait for replies
# `scheduled` lists at most this many of the countdowns the broker holds.
SCHEDULED_LISTED = 1000
_BROKER = "broker"              # their key (a worker of that name: the broker's URL)


def _with_connection(function):
    from .transport import with_connection      # here: the transports import this module
    return with_connection(function)


def _names(destination):
    """Celery takes a list of worker names, or one name."""
    if destination is None:
        return None
    return [destination] if isinstance(destination, str) else list(destination)


def _replies(method, arguments=None, destination=None, timeout=DEFAULT_TIMEOUT, limit=None):
    """{worker name: reply} of the workers that answered within `timeout`."""
    names = _names(destination)
    if limit is None and names:
        limit = len(names)
    return _with_connection(lambda conn: conn.broadcast(
        method, arguments, names, timeout=timeout, reply=True, limit=limit))


def broadcast(command, arguments=None, destination=None, reply=False,
              timeout=DEFAULT_TIMEOUT, limit=None, **_celery):
    """Send `command` to every worker (or those `destination` names). With `reply`, the
    answers, as Celery's ``[{name: answer}, ...]``; else None. (Celery's connection,
    channel and callback arguments are taken and not needed.)"""
    if not reply:
        _with_connection(lambda conn: conn.broadcast(command, arguments,
                                                     _names(destination), reply=False))
        return None
    replies = _replies(command, arguments, destination, timeout, limit)
    return [{name: answer} for name, answer in sorted(replies.items())]


def ping(destination=None, timeout=DEFAULT_TIMEOUT, **kwargs):
    """``[{name: "pong"}, ...]`` of the workers that answered in time (the guide's)."""
    return broadcast("ping", destination=destination, reply=True, timeout=timeout, **kwargs)


def revoke(task_id, destination=None, terminate=False, signal="SIGTERM", **_celery):
    """Revoke a task id or a list of them. The broker keeps the revocation for every worker,
    those started later too, so `destination` and Celery's `reply` change nothing."""
    task_ids = [task_id] if isinstance(task_id, str) else list(task_id)
    _with_connection(lambda conn: conn.revoke(task_ids, terminate=terminate, signal=signal))


def terminate(task_id, destination=None, signal="SIGTERM", **kwargs):
    """Celery's shortcut for ``revoke(task_id, terminate=True)``."""
    revoke(task_id, destination, terminate=True, signal=signal, **kwargs)


def rate_limit(task_name, rate_limit, destination=None, **kwargs):
    """Set a task's rate limit ("10/m"; 0 or None: none) on the workers, until they stop."""
    return broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit},
                     destination, **kwargs)


def add_consumer(queue, exchange=None, exchange_type="direct", routing_key=None,
                 options=None, destination=None, **kwargs):
    """Make the workers consume `queue` too (declared, and bound to the default exchange by
    its name; bind it otherwise in ``QUEUES``): Celery's exchange, type, key and options
    are refused when given, rather than ignored."""
    if exchange is not None or routing_key is not None or options:
        raise ConfigurationError("add_consumer(%r): exchange, routing_key and options are not "
                                 "taken; declare the queue's binding in QUEUES" % (queue,))
    return broadcast("add_consumer", {"queue": queue}, destination, **kwargs)


def cancel_consumer(queue, destination=None, **kwargs):
    """Make the workers stop consuming `queue`."""
    return broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)


def shutdown(destination=None, **kwargs):
    """A warm shutdown of the workers (running tasks finish)."""
    return broadcast("shutdown", destination=destination, **kwargs)


def configured_queues(settings):
    """Every queue the settings name, DEFAULT_QUEUE first: what Celery's purge empties."""
    return list(dict.fromkeys([settings.DEFAULT_QUEUE] + list(settings.QUEUES)))


def purge():
    """Drop the waiting messages of every queue the settings name (DEFAULT_QUEUE and
    QUEUES); returns how many were dropped. A queue not declared yet counts as empty."""
    from .config import get_settings

    queues = configured_queues(get_settings())

    def drop(conn):
        dropped = 0
        for queue in queues:
            try:
                dropped += conn.purge(queue) or 0
            except BrokerError as exc:
                if exc.code != 404:
                    raise
        return dropped
    return _with_connection(drop)


def inspect(destination=None, timeout=DEFAULT_TIMEOUT, limit=None, **_celery):
    """Celery's ``app.control.inspect()``: ``.active()``, ``.scheduled()``, ``.reserved()``,
    ``.revoked()``, ``.registered()``, ``.stats()``, ``.ping()``."""
    return Inspect(destination, timeout, limit)


class Inspect:
    """Asks the workers what they hold; each method returns ``{name: answer}`` of those
    that answered within the timeout, or None when none did (as Celery's)."""

    def __init__(self, destination=None, timeout=DEFAULT_TIMEOUT, limit=None):
        self.destination, self.timeout, self.limit = destination, timeout, limit

    def __repr__(self):
        return "<Inspect destination=%r timeout=%g>" % (self.destination, self.timeout)

    def _request(self, method, arguments=None):
        return _replies(method, arguments, self.destination, self.timeout, self.limit) or None

    def active(self):
        return self._request("active")

    def scheduled(self):
        """The workers' tasks waiting for their eta (or a rate token); also, under
        "broker", the countdowns the broker holds until shortly before they are due (a
        worker holds what Celery's would only then), as ``minitask inspect scheduled``."""
        names = _names(self.destination)
        limit = len(names) if self.limit is None and names else self.limit

        def ask(conn):
            replies = conn.broadcast("scheduled", None, names, timeout=self.timeout,
                                     reply=True, limit=limit)
            held = broker_scheduled(conn)
            if held:
                replies[_BROKER if _BROKER not in replies else safe_url(conn.url)] = held
            return replies or None
        return _with_connection(ask)

    def reserved(self):
        return self._request("reserved")

    def revoked(self):
        return self._request("revoked")

    def registered(self):
        return self._request("registered")

    registered_tasks = registered

    def stats(self):
        return self._request("stats")

    def query_task(self, *ids):
        """``{name: {id: [state, task]}}``: which of these tasks each worker holds, and
        how ("active", "reserved" or "scheduled"). Ids one by one, or as one list."""
        return self._request("query_task", {"ids": _task_ids(ids)})

    def ping(self):
        return self._request("ping")


def broker_scheduled(conn):
    """The countdowns the broker holds (`conn`'s), as `scheduled` items (with the task again
    as `request`); None from a broker older than the "scheduled" argument of STATUS."""
    held = conn.status(scheduled=SCHEDULED_LISTED).get("scheduled")
    return None if held is None else [dict(item, request=item) for item in held]


def _task_ids(ids):
    """``("a", "b")`` or ``(["a", "b"],)`` as ``["a", "b"]``, as Celery's calls take them."""
    flat = []
    for item in ids:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            flat += list(item)
        else:
            raise TypeError("query_task takes task ids (strings), not %r" % (item,))
    return flat
