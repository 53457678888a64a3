"""What a task and its result carry on the wire.

A task message is a broker message (`minitask.protocol.Message`, protocol section 3.1) whose
properties carry what the broker and the worker's main process need without decoding the
body, and whose body carries the call itself, serialized with the task's serializer:

=================  ==========================================================================
property           meaning
=================  ==========================================================================
``message_id``     the task id (a UUID string unless the caller chose one)
``type``           the task's registered name; never code
``content_type``   how the body is serialized (checked against ``ACCEPT_CONTENT`` first)
``not_before``     the ETA as epoch seconds (0 = now): the broker holds it until then
``expires_at``     epoch seconds after which the task must not run (0 = never)
``priority``       0..9, 0 first; None = the queue's default (4)
``exchange``,      where the client sent it
``routing_key``
flags              ``mandatory``, ``immediate``, persistent (always, for tasks)
=================  ==========================================================================

Body, version 1 (an object; unknown keys are ignored, so later versions may add some)::

    {"v": 1, "id": str, "task": str, "args": [...], "kwargs": {...}, "retries": int,
     "eta": ISO-8601 UTC str or null, "expires": ISO-8601 UTC str or null}

``id`` and ``task`` repeat the properties so a body read on its own still says what it is.

Workflows (`minitask.canvas`) add optional body keys, for the worker that runs the task (an
older worker ignores them), each present only when it has something to say; a signature
travels in Celery's dict form, every task id in it assigned when the workflow was sent::

    "chain":     [signature, ...]   the links that come after this task, in order: on
                                    SUCCESS the first one is sent with the result prepended
                                    to its args (unless immutable), carrying the rest
    "callbacks": [signature, ...]   ``link=``: each sent with the result on SUCCESS
    "chord":     {"results": [id or [id, ...], ...], "immutable": true}
                                    on a chord's body: the ids of the header's results, in
                                    the header's order (a list where a header member is a
                                    group); the body gets their values, nested alike, as its
                                    first argument, unless it is immutable (``.si()``; the
                                    key is there only then)

and optional message headers, for the broker (which never decodes a body)::

    "x-errbacks":   [base64 text, ...]  ``link_error=``: encoded task messages (3.1), built
                                        when this task was sent, with this task's id first in
                                        their args; published when this task ends in FAILURE
                                        or REVOKED, whoever stores that outcome
    "x-chain":      [id, ...]           every task id the rest of the chain would run: when
                                        this task fails or is revoked they never will, and
                                        each is given the same outcome (so no waiter hangs)
    "x-chord":      [id, ...]           on a task whose result a chord's body waits for: the
                                        ids of the body's messages that wait for it
    "x-chord-wait": [id, ...]           on a chord's body: every result id it waits for; the
                                        broker holds the message until each has a final
                                        result

A result ("meta") is serialized the same way and stored by the broker's result store::

    {"v": 1, "task_id": str, "task": str, "status": state, "result": value or exception,
     "traceback": str or null, "retries": int, "date_done": epoch seconds}

Exceptions travel as tagged JSON (`minitask.serialization`); they are rebuilt as their own
class only when it is a builtin, in `minitask.exceptions`, or in a module already imported.
"""

import datetime
import os
import random

from . import protocol, serialization
from .exceptions import ConfigurationError, ContentDisallowed, ProtocolError, SerializationError

__all__ = ["TaskMessage", "ResultMeta", "new_task_id", "to_epoch", "from_epoch",
           "encode_result_meta", "decode_result_meta", "BODY_VERSION"]

BODY_VERSION = 1
UTC = datetime.timezone.utc


# Task ids are random UUIDs (version 4). They need to be unique, not secret, so they come
# from a generator of our own, seeded from the OS and again in every forked child, rather
# than one os.urandom() call (a syscall) per task; the global `random` is not used, so a
# program that seeds it cannot make two processes share ids.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


# A version 4 UUID: 122 random bits, version 0100 and variant 10 in the places RFC 4122 says.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_task_id():
    """A random UUID (version 4) as text, as `str(uuid.uuid4())` but from `_ids`."""
    text = "%032x" % (_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return "%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


def to_epoch(value, what="a time"):
    """Epoch seconds for a datetime (a naive one is taken as UTC), an ISO 8601 string of one
    (as Celery takes `eta` and `expires`), a number, or None -> 0. ConfigurationError,
    naming `what`, for anything else."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        try:        # fromisoformat takes no "Z" before Python 3.11
            value = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz"
                                                    and text else text)
        except ValueError:
            raise ConfigurationError("%s=%r: expected a datetime, an ISO 8601 date and time "
                                     "or a number" % (what, text)) from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError("%s=%r: expected a datetime, an ISO 8601 date and time or "
                                 "a number" % (what, value)) from None


def from_epoch(value):
    """An aware UTC datetime for epoch seconds; None for 0."""
    if not value:
        return None
    return datetime.datetime.fromtimestamp(value, UTC)


def _iso(epoch):
    return from_epoch(epoch).isoformat() if epoch else None


class TaskMessage:
    """One call of one task: who, with what, when, and where it is routed."""

    __slots__ = ("id", "task", "args", "kwargs", "retries", "eta", "expires", "exchange",
                 "routing_key", "priority", "mandatory", "immediate", "serializer",
                 "redelivered", "delivery_tag", "chain", "callbacks", "chord", "headers",
                 "argsrepr", "kwargsrepr")

    def __init__(self, task, args=(), kwargs=None, id=None, retries=0, eta=0.0, expires=0.0,
                 exchange="", routing_key="", priority=None, mandatory=False,
                 immediate=False, serializer="json", chain=None, callbacks=None, chord=None,
                 headers=None):
        self.id = id or new_task_id()
        self.task = task
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.retries = retries
        self.eta = to_epoch(eta)            # epoch seconds, 0 = none
        self.expires = to_epoch(expires)
        self.exchange = exchange
        self.routing_key = routing_key
        self.priority = priority
        self.mandatory = mandatory
        self.immediate = immediate
        self.serializer = serializer
        self.redelivered = False
        self.delivery_tag = None
        self.chain = chain                  # workflows: see the module docstring
        self.callbacks = callbacks
        self.chord = chord
        self.headers = headers
        self.argsrepr = None                # what shows in place of the args (a string)
        self.kwargsrepr = None

    def __repr__(self):
        return "<TaskMessage %s[%s] retries=%d>" % (self.task, self.id, self.retries)

    def to_dict(self):
        body = {"v": BODY_VERSION, "id": self.id, "task": self.task, "args": list(self.args),
                "kwargs": self.kwargs, "retries": self.retries, "eta": _iso(self.eta),
                "expires": _iso(self.expires)}
        if self.chain:
            body["chain"] = self.chain
        if self.callbacks:
            body["callbacks"] = self.callbacks
        if self.chord is not None:
            body["chord"] = self.chord
        if self.argsrepr is not None:
            body["argsrepr"] = self.argsrepr
        if self.kwargsrepr is not None:
            body["kwargsrepr"] = self.kwargsrepr
        return body

    def shown_args(self):
        """``(args, kwargs)`` as logs and e-mails show them: Celery's argsrepr and kwargsrepr
        when the call gave them (to hide secrets), else their repr."""
        return (self.argsrepr if self.argsrepr is not None else repr(self.args),
                self.kwargsrepr if self.kwargsrepr is not None else repr(self.kwargs))

    def encode(self):
        """The broker message for this call. Raises SerializationError in the caller's process
        for arguments the serializer cannot carry, naming the argument's type."""
        content_type, body = serialization.dumps(self.to_dict(), self.serializer)
        flags = protocol.PERSISTENT
        if self.mandatory:
            flags |= protocol.MANDATORY
        if self.immediate:
            flags |= protocol.IMMEDIATE
        return protocol.Message(
            body=body, exchange=self.exchange, routing_key=self.routing_key,
            message_id=self.id, type=self.task, content_type=content_type,
            priority=self.priority, not_before=self.eta, expires_at=self.expires, flags=flags,
            headers=self.headers)

    @classmethod
    def decode(cls, message, accept=None):
        """Rebuild a call from a broker message. Raises ContentDisallowed before decoding
        anything whose content type is not accepted, SerializationError for a bad body."""
        body = serialization.loads(message.body, message.content_type, accept)
        if not isinstance(body, dict):
            raise SerializationError("task message body is a %s, expected an object"
                                     % type(body).__name__)
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise SerializationError("task message args must be a list and kwargs an object")
        if not all(isinstance(key, str) for key in kwargs):
            raise SerializationError("task message kwargs must have string keys")
        retries = body.get("retries", 0)
        if not isinstance(retries, int) or retries < 0:
            raise SerializationError("task message retries %r is not a count" % (retries,))
        self = cls(message.type or body.get("task", ""), args, kwargs,
                   id=message.message_id or body.get("id"), retries=retries,
                   eta=message.not_before, expires=message.expires_at,
                   exchange=message.exchange, routing_key=message.routing_key,
                   priority=message.priority,
                   mandatory=bool(message.flags & protocol.MANDATORY),
                   immediate=bool(message.flags & protocol.IMMEDIATE),
                   serializer=_name_or_type(message.content_type),
                   headers=message.headers or None)
        if "chain" in body or "callbacks" in body or "chord" in body:
            _read_workflow(self, body)
        if "argsrepr" in body or "kwargsrepr" in body:
            for key in ("argsrepr", "kwargsrepr"):  # for display only: not text, dropped
                value = body.get(key)
                if isinstance(value, str):
                    setattr(self, key, value)
        return self

    @classmethod
    def from_bytes(cls, data, accept=None):
        """Decode an encoded broker message (3.1) straight into a TaskMessage."""
        return cls.decode(protocol.decode_message(data), accept)


def _read_workflow(message, body):
    """Check and keep a body's workflow keys; a malformed one is a SerializationError."""
    for key in ("chain", "callbacks"):
        value = body.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(item, dict) for item in value)):
            raise SerializationError("task message %s must be a list of signatures" % key)
    chord = body.get("chord")
    if chord is not None and (not isinstance(chord, dict)
                              or not isinstance(chord.get("results"), list)):
        raise SerializationError("task message chord must be an object with a results list")
    message.chain, message.callbacks, message.chord = (body.get("chain"),
                                                       body.get("callbacks"), chord)


def _name_or_type(content_type):
    try:
        return serialization.name_for(content_type)
    except Exception:           # an unregistered type was already refused by loads()
        return content_type


class ResultMeta:
    """A decoded result: the state, the value or exception, the remote traceback, and the
    ids of the tasks a SUCCESS sent on (`children`: its callbacks, its chain's next link)."""

    __slots__ = ("task_id", "task", "status", "result", "traceback", "retries", "date_done",
                 "children")

    def __init__(self, task_id, status, result=None, traceback=None, task="", retries=0,
                 date_done=0.0, children=()):
        self.task_id = task_id
        self.task = task
        self.status = status
        self.result = result
        self.traceback = traceback
        self.retries = retries
        self.date_done = date_done
        self.children = children

    def __repr__(self):
        return "<ResultMeta %s %s>" % (self.task_id, self.status)


def encode_result_meta(meta, serializer="json"):
    """``(content_type, payload)`` for a result. A result the task's serializer cannot carry
    is stored as a FAILURE saying so, rather than lost (and `meta.status` says FAILURE)."""
    value = {"v": BODY_VERSION, "task_id": meta.task_id, "task": meta.task,
             "status": meta.status, "result": meta.result, "traceback": meta.traceback,
             "retries": meta.retries, "date_done": meta.date_done}
    if meta.children:
        value["children"] = list(meta.children)
    try:
        return serialization.dumps(value, serializer)
    except SerializationError as exc:
        value["status"] = meta.status = "FAILURE"
        value["result"] = meta.result = exc
        value["traceback"] = None
        return serialization.dumps(value, "json")


def decode_result_meta(task_id, state, content_type, payload, accept=None):
    """Rebuild a ResultMeta from what the broker stored; PENDING and friends have no payload."""
    if not payload:
        return ResultMeta(task_id, state)
    try:
        value = serialization.loads(payload, content_type, accept)
    except ContentDisallowed:
        raise
    except SerializationError as exc:
        raise ProtocolError("result of %s cannot be decoded: %s" % (task_id, exc)) from exc
    if not isinstance(value, dict):
        raise ProtocolError("result of %s is not an object" % task_id)
    if state == "STARTED" and isinstance(value.get("status"), str) and value["status"]:
        state = value["status"]         # a running task's own state (update_state)
    # Fields of another type than minitask writes (another program's result) read as none.
    children = value.get("children") or ()
    if not isinstance(children, list) or not all(isinstance(one, str) for one in children):
        children = ()
    traceback, task = value.get("traceback"), value.get("task", "")
    retries, date_done = value.get("retries", 0), value.get("date_done", 0.0)
    return ResultMeta(task_id, state, value.get("result"),
                      traceback if isinstance(traceback, str) else None,
                      task if isinstance(task, str) else "",
                      retries if type(retries) is int else 0,
                      date_done if type(date_done) in (int, float) else 0.0, tuple(children))
