"""Sending a call: the message it becomes, and publishing it.

`compose_message` turns a call (a task's name, its arguments, the task's own options and the
call's) into a `TaskMessage`: when it runs (countdown, eta, expires), where it goes (as
`minitask.routes` decides) and how it is encoded. `publish` sends it with confirms through this
thread's connection, first declaring a queue the call was routed to that is not in QUEUES.
`send_task` does both for a task known only by name, as Celery's ``app.send_task``.

Workflows (`minitask.canvas`) are turned into messages by one function, `compose_signature`,
which the client calls to send a workflow and a worker calls to send what a task's result
unlocks (`compose_unlocked`: the next link of a chain, the callbacks). It gives each message
the workflow fields of `minitask.message` (body keys for the worker, headers for the broker)::

    signature                  messages
    task(args)                 one, with "callbacks" and "x-errbacks" from link/link_error
    chain(a, b, c)             a's, with "chain": [b, c] and "x-chain": the ids of b and c
    group(a, b)                a's and b's
    chord(header, body)        body's, parked ("chord", "x-chord-wait"), then the header's,
                               whose last tasks carry "x-chord"

A workflow holding a chord is sent by `publish_chords`, as one unit: the broker holds a
chord's body until its header's results are in (see `minitask.joins`).
"""

import base64
import binascii
import contextlib
import datetime
import json
import os
import threading
import time

from . import protocol, signals
from .canvas import (
    Signature, as_list, chain, check_errback, chord, chunks, group, holds_chord,
    maybe_signature, result_ids, send, task_ids,
)
from .config import get_settings
from .exceptions import ChordError, ConfigurationError, SerializationError
from .message import TaskMessage, new_task_id, to_epoch
from .options import WORKFLOW_OPTIONS, PUBLISH_OPTIONS, check_call_options
from .result import AsyncResult
from .routes import destination, router_for
from .transport import with_connection

__all__ = ["compose_message", "publish", "publish_message", "send_task", "compose_signature",
           "compose_unlocked", "errbacks_of", "success_unlocks", "failure_unlocks", "chord_values",
           "send_workflow", "publish_all", "publish_chords", "held_for_result", "on_commit"]

# The most a message's headers may hold (protocol 3.1: a str16).
MAX_HEADER_BYTES = 0xFFFF


def compose_message(name, args=None, kwargs=None, task=None, settings=None, countdown=None,
                    eta=None, expires=None, task_id=None, queue=None, routing_key=None,
                    exchange=None, mandatory=None, immediate=None, priority=None,
                    serializer=None, retries=0, argsrepr=None, kwargsrepr=None):
    """``(TaskMessage, queue to declare first or None)`` for a call of task `name`.

    `task` gives the defaults of the task's own options (None: a task not known here, as for
    `send_task`); where the call goes follows `minitask.routes`. `argsrepr` and
    `kwargsrepr` (text) are shown in place of the arguments (worker e-mails, `inspect`).
    """
    if settings is None:
        settings = get_settings()
    if args is not None and not isinstance(args, (list, tuple)):
        raise TypeError("args must be a list or tuple, not %s" % type(args).__name__)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError("kwargs must be a dict, not %s" % type(kwargs).__name__)
    own = task if task is not None else _NO_TASK
    if settings.TASK_ROUTES or queue is not None or own.queue is not None:
        route = router_for(settings).route(name, args or (), kwargs, task=task) \
            if settings.TASK_ROUTES else None
        exchange, routing_key, priority, declare = destination((
            {"queue": queue, "exchange": exchange, "routing_key": routing_key,
             "priority": priority},
            route,
            {"queue": own.queue, "exchange": own.exchange, "routing_key": own.routing_key,
             "priority": own.priority}), settings)
    else:                               # the common case, kept short: no queue, no routes
        declare = None
        if exchange is None:
            exchange = settings.DEFAULT_EXCHANGE if own.exchange is None else own.exchange
        routing_key = routing_key or own.routing_key or settings.DEFAULT_ROUTING_KEY
        if priority is None:
            priority = own.priority
    if priority is not None and (not _is_int(priority) or not 0 <= priority <= 9):
        raise ConfigurationError("priority %r: expected 0..9 (0 is the highest)" % (priority,))
    now = time.time()
    if countdown is not None:
        eta = now + float(countdown)
    if expires is None:
        expires = own.expires
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        expires = now + expires
    elif isinstance(expires, datetime.timedelta):
        expires = now + expires.total_seconds()
    message = TaskMessage(
        name, args or (), kwargs or {}, id=task_id or new_task_id(), retries=retries,
        eta=to_epoch(eta, "eta"), expires=to_epoch(expires, "expires"), exchange=exchange,
        routing_key=routing_key, priority=priority,
        mandatory=own.mandatory if mandatory is None else mandatory,
        immediate=own.immediate if immediate is None else immediate,
        serializer=serializer or own.serializer or settings.TASK_SERIALIZER)
    for option, value in (("argsrepr", argsrepr), ("kwargsrepr", kwargsrepr)):
        if value is not None:
            if not isinstance(value, str):
                raise ConfigurationError("%s %r: expected text, as repr() gives it"
                                         % (option, value))
            setattr(message, option, value)
    return message, declare


class _NoTask:
    """The options of a task not known here (`send_task`): none set."""

    queue = exchange = routing_key = priority = serializer = expires = None
    mandatory = immediate = False


_NO_TASK = _NoTask()


_holding = threading.local()


@contextlib.contextmanager
def held_for_result():
    """Within this block, what this thread publishes (`publish`, `publish_all`) is not sent:
    it is collected, encoded, in the list this yields, for a worker to publish with the
    running task's result in one atomic step. So a retry can never run, and store its own
    result, before the RETRY of the run that sent it is stored (which would overwrite it).
    The queues the messages need are declared at once."""
    outer = getattr(_holding, "messages", None)
    held = _holding.messages = []
    try:
        yield held
    finally:
        _holding.messages = outer


def _hold(messages, declare):
    """True when a `held_for_result` block is collecting this thread's messages: `messages`
    (encoded) are added to it, after the queues in `declare` are declared."""
    held = getattr(_holding, "messages", None)
    if held is None:
        return False
    if declare:
        def ensure(conn):
            for queue in sorted(declare):
                conn.ensure_queue(queue)
        with_connection(ensure)
    held.extend(_encoded(data) for data in messages)
    return True


def publish(data, declare=None):
    """Publish encoded task message `data` through this thread's connection, declaring the
    queue `declare` first when it is not declared on that connection yet."""
    if _hold([data], [declare] if declare else ()):
        return
    if declare is None:
        with_connection(lambda conn: conn.publish(data))
    else:
        def declare_and_publish(conn):
            conn.ensure_queue(declare)
            conn.publish(data)
        with_connection(declare_and_publish)


def publish_message(message, declare=None):
    """Publish TaskMessage `message` (see `publish`), with Celery's before_task_publish and
    after_task_publish signals around it."""
    announced([message], declare, lambda: publish(message.encode(), declare))


def announced(messages, declare, send_them):
    """``send_them()``, with before_task_publish for each TaskMessage of `messages` before it
    and after_task_publish after it, when anything is connected to them."""
    before, after = signals.before_task_publish, signals.after_task_publish
    if not (before.receivers or after.receivers):
        return send_them()
    fields = []
    for message in messages:
        body = message.to_dict()
        fields.append((message.task, {
            "body": body, "exchange": message.exchange, "routing_key": message.routing_key,
            "headers": dict(message.headers or {}, lang="py", task=message.task,
                            id=message.id, retries=message.retries, eta=body["eta"],
                            expires=body["expires"])}))
        before.send(message.task, properties={"priority": message.priority},
                    declare=sorted(declare) if isinstance(declare, set) else
                    [declare] if declare else [], retry_policy=None, **fields[-1][1])
    sent = send_them()
    for name, named in fields:
        after.send(name, **named)
    return sent


def send_task(name, args=None, kwargs=None, **options):
    """Send a call of task `name` without needing the task here; returns its AsyncResult.

    Celery's ``app.send_task``: only the name travels, so the worker's registry decides what
    runs. The call options are apply_async's; TASK_ROUTES applies, the task's own options do
    not (this process may not know them). Always sent, even under ALWAYS_EAGER, as in Celery.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("send_task() name %r: expected a task name" % (name,))
    settings = get_settings()
    retries = options.pop("retries", 0) or 0
    call = check_call_options(None, options, known=PUBLISH_OPTIONS + WORKFLOW_OPTIONS)
    if "link" in call or "link_error" in call:
        if retries:
            call["retries"] = retries
        return send(Signature(name, args, kwargs, call))
    message, declare = compose_message(name, args, kwargs, None, settings, retries=retries,
                                       **call)
    publish_message(message, declare)
    return AsyncResult(message.id, task_name=name)


# -- workflows ---------------------------------------------------------------------------------

def compose_signature(sig, args=(), kwargs=None, settings=None):
    """The task messages that start workflow `sig`, with partial `args` and `kwargs` (given to
    what comes first: a chain's first task, a group's members, a chord's header); returns
    ``(messages, queues to declare first)``.

    `sig` is a signature or its dict form; a task id it lacks is assigned here. Raises
    ConfigurationError for what cannot be sent, naming it, before anything is.
    """
    sig = maybe_signature(sig)
    sig.freeze()
    outbox = _Outbox(settings or get_settings())
    outbox.add(sig, tuple(args or ()), dict(kwargs or {}))
    return outbox.messages, outbox.declare


def compose_unlocked(message, value, settings=None):
    """What the SUCCESS of the task of `message` (a TaskMessage) unlocks: the next link of its
    chain, carrying the rest, and its callbacks, each given `value` first; returns
    ``(messages, queues to declare)``. A worker publishes them with the result, atomically."""
    parts = ([chain(message.chain)] if message.chain else []) + list(message.callbacks or ())
    messages, declare = [], set()
    for part in parts:
        more, queues = compose_signature(part, (value,), settings=settings)
        messages += more
        declare |= queues
    return messages, declare


def errbacks_of(headers):
    """The encoded errback messages (3.1) in message `headers` (its "x-errbacks"): what is
    published when the task ends in FAILURE or REVOKED. SerializationError if malformed."""
    texts = (headers or {}).get("x-errbacks") or []
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise SerializationError("x-errbacks must be a list of base64 text")
    try:
        return [base64.b64decode(text, validate=True) for text in texts]
    except (binascii.Error, ValueError) as exc:
        raise SerializationError("x-errbacks holds text that is not base64: %s" % exc) from exc


def success_unlocks(message, value, settings=None):
    """The encoded messages the SUCCESS of `message`'s task (a TaskMessage) with `value`
    unlocks, for the worker to publish with the result; a queue they are routed to that is
    not declared yet is declared first, through this thread's connection. The publish
    signals are sent for them here."""
    if not message.chain and not message.callbacks:
        return []
    messages, declare = compose_unlocked(message, value, settings)
    with held_for_result() as held:     # Celery's publish signals, as for a send of its own
        announced(messages, declare,
                  lambda: publish_all([unlocked.encode() for unlocked in messages], declare))
    return held


def failure_unlocks(headers):
    """``(errback messages, chained ids)`` that a FAILURE or REVOKED of the task whose message
    has `headers` unlocks: its encoded errbacks ("x-errbacks"), and the ids of the rest of its
    chain ("x-chain"), which never run and get the same outcome so that no waiter hangs.
    SerializationError if either header is malformed."""
    chained = (headers or {}).get("x-chain") or []
    if not isinstance(chained, list) or not all(isinstance(one, str) for one in chained):
        raise SerializationError("x-chain must be a list of task ids")
    return errbacks_of(headers), chained


def chord_values(results, fetch):
    """The values of a chord's header results, nested as `results` (the ids in a chord
    body's "chord" field); `fetch(task_id)` gives a result's ``(state, value)``.

    Raises ChordError naming the first result that is not a SUCCESS (failed, or gone:
    expired or forgotten), so the body fails with a reason instead of running short."""
    values = []
    for item in results:
        if isinstance(item, list):
            values.append(chord_values(item, fetch))
            continue
        state, value = fetch(item)
        if state != "SUCCESS":
            why = "has no result (expired or forgotten)" if state == "PENDING" else \
                "ended in %s: %r" % (state, value)
            raise ChordError("chord header task %s %s" % (item, why))
        values.append(value)
    return values


def send_workflow(workflow, settings=None):
    """Publish the messages of `workflow` (every id assigned: `Signature.freeze`) in one
    pipelined batch, declaring the queues they need first."""
    if holds_chord(workflow):
        return publish_chords(workflow, settings)
    messages, declare = compose_signature(workflow, settings=settings)
    announced(messages, declare,
              lambda: publish_all([message.encode() for message in messages], declare))


def publish_chords(workflow, settings=None):
    """Send a workflow that holds a chord, as one unit (all its messages are held by the
    broker, or none: a chord's body never waits for header tasks that were not sent).

    A chord's body is published parked (header "x-chord-wait"): the broker holds it until each
    of its header's results is in, counts each once, and queues it, or fails it with
    ChordError; a chord inside a chain or a callback is sent by the worker whose result
    unlocks it, in the same atomic step as that result.
    """
    messages, declare = compose_signature(workflow, settings=settings)
    encoded = [_encoded(message.encode()) for message in messages]

    def send(conn):
        for queue in sorted(declare):
            conn.ensure_queue(queue)
        conn.publish_atomic(encoded)
    announced(messages, declare, lambda: with_connection(send))


def publish_all(messages, declare=()):
    """Publish encoded messages through this thread's connection in one pipelined batch (one
    round of confirms), declaring the queues in `declare` first. Messages cross the transport
    seam as bytes (protocol 3.1): a `protocol.Message` is encoded here."""
    if _hold(messages, declare):
        return
    messages = [_encoded(data) for data in messages]

    def send(conn):
        for queue in sorted(declare):
            conn.ensure_queue(queue)
        if len(messages) == 1:
            conn.publish(messages[0])
        else:
            conn.publish_many(messages)
    with_connection(send)


class _Outbox:
    """The messages of one workflow as `compose_signature` builds them, in order."""

    def __init__(self, settings):
        self.settings = settings
        self.messages = []
        self.declare = set()

    def add(self, sig, args, kwargs, parked=None, given=True):
        """Add the messages that start `sig`; `parked`: they wait for these result ids (a
        chord's body), whose values they get as their first argument unless not `given`."""
        if isinstance(sig, chain):
            steps = sig.tasks
            if not steps:
                raise ConfigurationError("chain(): an empty chain has nothing to run")
            if len(steps) == 1:
                self.add(steps[0], args, kwargs, parked, given)
            elif isinstance(steps[0], (chain, group, chord)):
                raise ConfigurationError("%r: a chain's first link must be a task when more "
                                         "follow (build it with chain() or |)" % (sig,))
            else:
                self.add_task(steps[0], args, kwargs, parked, given, rest=steps[1:])
        elif isinstance(sig, group):
            for member in sig.tasks:
                self.add(member, args, kwargs, parked, given)
        elif isinstance(sig, chord):
            waited = result_ids(sig.tasks)
            if not waited:
                # As Celery: nothing to wait for, the body runs with [] (after what this
                # chord waits for, if it is another chord's body, whose values its empty
                # header would have taken).
                self.add(sig.body, ([],), {}, parked, given=False)
                return
            self.add(sig.body, (), {}, parked=waited)
            self.add(sig.tasks, args, kwargs, parked, given)
        elif isinstance(sig, chunks):
            self.add(sig.group(), args, kwargs, parked, given)
        else:
            self.add_task(sig, args, kwargs, parked, given)

    def add_task(self, sig, args, kwargs, parked=None, given=True, rest=None):
        if not sig.immutable:
            args, kwargs = args + sig.args, dict(sig.kwargs, **kwargs)
        else:
            args, kwargs = sig.args, sig.kwargs
        options = dict(sig.options)
        task_id = options.pop("task_id")
        callbacks = as_list(options.pop("link", None))
        errbacks = as_list(options.pop("link_error", None))
        waiting = options.pop("chord", None)
        retries = options.pop("retries", 0) or 0
        task = sig._local_type()
        message, declare = compose_message(sig.task, args, kwargs, task, self.settings,
                                           task_id=task_id, retries=retries,
                                           **check_call_options(task, options))
        headers = {}
        if callbacks:
            message.callbacks = [callback.to_dict() for callback in callbacks]
        if rest:
            message.chain = [step.to_dict() for step in rest]
            headers["x-chain"] = [one for step in rest for one in task_ids(step)]
        if errbacks:
            headers["x-errbacks"] = [text for errback in errbacks
                                     for text in self.errback(errback, task_id)]
        if waiting:
            headers["x-chord"] = list(waiting)
        if parked is not None:
            # An immutable body waits all the same, and fails if the header does, but is
            # not given the header's values.
            message.chord = {"results": parked, "immutable": True} \
                if sig.immutable or not given else {"results": parked}
            headers["x-chord-wait"] = list(_flat(parked))
        if headers:
            _check_header_size(sig, headers)
            message.headers = headers
        self.messages.append(message)
        if declare is not None:
            self.declare.add(declare)

    def errback(self, errback, task_id):
        """The base64 texts of the messages of `errback` for failed task `task_id`."""
        errback = maybe_signature(errback)
        check_errback(errback)
        messages, declare = compose_signature(errback, (task_id,), settings=self.settings)
        self.declare |= declare
        return [base64.b64encode(protocol.encode_message(message.encode())).decode("ascii")
                for message in messages]


def _check_header_size(sig, headers):
    size = len(json.dumps(headers, separators=(",", ":")))
    if size > MAX_HEADER_BYTES:
        parts = ", ".join("%s: %d" % (name, len(value)) for name, value in sorted(
            headers.items()))
        raise ConfigurationError(
            "%r: its workflow headers would be %d bytes (%s entries); a message's headers "
            "hold at most %d: split the workflow into smaller ones"
            % (sig, size, parts, MAX_HEADER_BYTES))


def _encoded(data):
    return data if isinstance(data, (bytes, bytearray)) else protocol.encode_message(data)


def _flat(ids):
    for item in ids:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def on_commit(send):
    """Run `send` once the database transaction in progress commits, through Django's
    ``transaction.on_commit`` (at once outside a transaction, never after a rollback); at
    once where Django does not apply (no DJANGO_SETTINGS_MODULE, or no Django)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        try:
            from django.db import transaction
        except ImportError:
            transaction = None
        if transaction is not None:
            transaction.on_commit(send)
            return
    send()
