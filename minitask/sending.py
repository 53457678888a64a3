"""Sending a call: the message it becomes, and publishing it.

`compose_message` turns a call (a task's name, its arguments, the task's own options and the
call's) into a `TaskMessage`: when it runs (countdown, eta, expires), where it goes (as
`minitask.routes` decides) and how it is encoded. `publish` sends it with confirms through this
thread's connection, first declaring a queue the call was routed to that is not in QUEUES.
`send_task` does both for a task known only by name, as Celery's ``app.send_task``.
"""

import datetime
import time

from .client import with_connection
from .config import get_settings
from .exceptions import ConfigurationError
from .message import TaskMessage, new_task_id, to_epoch
from .options import check_call_options
from .result import AsyncResult
from .routes import destination, router_for

__all__ = ["compose_message", "publish", "send_task"]


def compose_message(name, args=None, kwargs=None, task=None, settings=None, countdown=None,
                    eta=None, expires=None, task_id=None, queue=None, routing_key=None,
                    exchange=None, mandatory=None, immediate=None, priority=None,
                    serializer=None, retries=0):
    """``(TaskMessage, queue to declare first or None)`` for a call of task `name`.

    `task` gives the defaults of the task's own options (None: a task not known here, as for
    `send_task`); where the call goes follows `minitask.routes`.
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
        eta=to_epoch(eta), expires=to_epoch(expires), exchange=exchange,
        routing_key=routing_key, priority=priority,
        mandatory=own.mandatory if mandatory is None else mandatory,
        immediate=own.immediate if immediate is None else immediate,
        serializer=serializer or own.serializer or settings.TASK_SERIALIZER)
    return message, declare


class _NoTask:
    """The options of a task not known here (`send_task`): none set."""

    queue = exchange = routing_key = priority = serializer = expires = None
    mandatory = immediate = False


_NO_TASK = _NoTask()


def publish(data, declare=None):
    """Publish encoded task message `data` through this thread's connection, declaring the
    queue `declare` first when it is not declared on that connection yet."""
    if declare is None:
        with_connection(lambda conn: conn.publish(data))
    else:
        def declare_and_publish(conn):
            conn.ensure_queue(declare)
            conn.publish(data)
        with_connection(declare_and_publish)


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
    call = check_call_options(None, options)
    message, declare = compose_message(name, args, kwargs, None, settings, retries=retries,
                                       **call)
    publish(message.encode(), declare)
    return AsyncResult(message.id, task_name=name)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
