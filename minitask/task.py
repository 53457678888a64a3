"""Tasks: early Celery's `Task` class, its registering metaclass, and how a call is sent.

A task is a class with a `run` method; creating the class registers its shared instance
under its name (``"<module>.<ClassName>"`` unless `name` is given), except for classes that
say ``abstract = True`` (their subclasses register). `@task()` builds such a class around a
function (see `minitask.decorators`). Calling methods work on the instance and on the class
alike: ``CreateUserTask.delay("bob", "pw")`` is the registered instance's `delay`.

Sending a call (`apply_async`) builds a `TaskMessage` and publishes it with confirms
(`minitask.sending`, where `send_task` sends one by name alone); with ``ALWAYS_EAGER`` it runs
here instead (`apply`). A call with `link` or `link_error`, and every workflow, goes through
`minitask.canvas`, which also makes the signatures (`s`, `si`, `signature`, `map`, `starmap`,
`chunks`). Which Celery options do what is `minitask.options`'s business. A task object
pickles as a reference by name, never as code.
"""

import datetime
import functools
import importlib
import inspect
import logging
import os
import socket
import threading
import time

from . import canvas, eager, registry as _registry_module, retry as policy
from .canvas import Signature, chunks, group, send, xmap, xstarmap
from .config import get_settings
from .exceptions import (
    BrokerConnectionError, ConfigurationError, MaxRetriesExceededError, RetryTaskError,
)
from .log import task_logger
from .message import ResultMeta, encode_result_meta, from_epoch
from .options import PUBLISH_OPTIONS, check_call_options, check_task_attributes, \
    is_call_option
from .protocol import READY_STATES
from .ratelimit import parse_rate
from .result import AsyncResult as _AsyncResult, EagerResult
from .schedules import as_schedule
from .states import IGNORED, REJECTED
from .serialization import check_serializer
from .sending import compose_message, held_for_result, on_commit, publish_message, send_task
from .transport import with_connection

__all__ = ["Task", "TaskType", "PeriodicTask", "registry", "Request", "current_request",
           "default_kwargs_for", "DEFAULT_KWARG_NAMES", "PUBLISH_OPTIONS", "send_task",
           "compose_message"]

registry = _registry_module

# The keyword arguments the worker offers every task (early Celery's "default keyword
# arguments").
DEFAULT_KWARG_NAMES = ("logfile", "loglevel", "task_id", "task_name", "task_retries")

# What retry_kwargs may hold: retry()'s own arguments and the publish options it passes on.
_RETRY_KWARGS = ("countdown", "eta", "max_retries") + tuple(
    name for name in PUBLISH_OPTIONS if name not in ("countdown", "eta", "task_id"))

_signature_cache = {}
_OLD_BROKER_SAID = []           # update_state() warned once that the broker keeps no state

logger = logging.getLogger(__name__)


def default_kwargs_for(fun, defaults):
    """The default kwargs `fun` should get: all of them if it takes ``**kwargs``, else exactly
    the ones it names as parameters, and none that it does not."""
    key = getattr(fun, "__func__", fun)
    accepted = _signature_cache.get(key)
    if accepted is None:
        try:
            parameters = inspect.signature(fun).parameters.values()
        except (TypeError, ValueError):     # builtins without a signature: offer nothing
            parameters = ()
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            accepted = True
        else:
            accepted = frozenset(p.name for p in parameters
                                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        _signature_cache[key] = accepted
    if accepted is True:
        return dict(defaults)
    return {name: value for name, value in defaults.items() if name in accepted}


class Request:
    """What the running task may ask about its own call: Celery's `self.request`.

    Celery's attribute names: `id`, `task` (the name), `args`, `kwargs` (with the default
    kwargs the task takes), `retries`, `is_eager`, `eta` and `expires` (ISO 8601 UTC text or
    None), `hostname` (the worker's), `delivery_info` (exchange, routing_key, priority,
    redelivered: whether the broker delivered the message before),
    `called_directly` (True when the task was called as a plain function), `timelimit`
    (hard, soft), `ignore_result`, `correlation_id` and `root_id` (the id: minitask has no
    parent tasks yet), `parent_id` and `group` (None). `get(name, default)` as in Celery.
    Made for every task run, so what few tasks ask for is worked out only when asked.
    """

    parent_id = None
    group = None
    reply_to = None
    workflow = None                     # the TaskMessage, when it carries workflow fields
    held = None                         # a worker's: what retry() sends, sent with the result
    serializer = None                   # the message's: its results are encoded so
    redelivered = False                 # a worker's: delivered before (Reject's guide reads it)
    argsrepr = kwargsrepr = None        # the call's, when it gave them (text shown instead)

    def __init__(self, id, name, args=(), kwargs=None, retries=0, is_eager=False,
                 logfile=None, loglevel=None, exchange=None, routing_key=None, priority=None,
                 injected=(), eta=0.0, expires=0.0, called_directly=False, task_object=None):
        self.id = id
        self.name = self.task = name
        self.args = args
        self.kwargs = kwargs or {}
        self.retries = retries
        self.is_eager = is_eager
        self.logfile = logfile
        self.loglevel = loglevel
        self.exchange = exchange
        self.routing_key = routing_key
        self.priority = priority
        self.injected = frozenset(injected)
        self.called_directly = called_directly
        self._eta = eta                 # epoch seconds, 0 = none
        self._expires = expires
        self._task = task_object
        self.entering = task_object     # the task whose call runs under it, until it does

    @property
    def eta(self):
        return from_epoch(self._eta).isoformat() if self._eta else None

    @property
    def expires(self):
        return from_epoch(self._expires).isoformat() if self._expires else None

    @property
    def hostname(self):
        """The worker's name (``-n``) in its pool processes; this machine's for an eager run;
        None for a direct call (as in Celery)."""
        if self.called_directly:
            return None
        name = None if self.is_eager else os.environ.get("MINITASK_WORKER_HOSTNAME")
        return name or socket.gethostname()

    @property
    def timelimit(self):
        if self._task is None:
            return (None, None)
        return (self._task.effective("time_limit"), self._task.effective("soft_time_limit"))

    @property
    def ignore_result(self):
        return bool(self._task is not None and self._task.ignore_result)

    @property
    def delivery_info(self):
        return {"exchange": self.exchange, "routing_key": self.routing_key,
                "priority": self.priority, "redelivered": self.redelivered}

    @property
    def correlation_id(self):
        return self.id

    @property
    def root_id(self):
        return self.id

    def get(self, name, default=None):
        return getattr(self, name, default)

    def __repr__(self):
        return "<Request %s[%s] retries=%d>" % (self.name, self.id, self.retries)


def _send_retry(task, request, args, kwargs, **options):
    workflow = getattr(request, "workflow", None)
    if workflow is None:
        task.apply_async(args, kwargs, **options)
    else:
        _send_retry_in_workflow(task, workflow, args, kwargs, **options)


def _send_retry_in_workflow(task, workflow, args, kwargs, **options):
    """Send the retry of a task that is part of a workflow: the same chain, callbacks and
    workflow headers as the message it retries (`workflow`), so the workflow goes on after
    it. A chord's body has its header's values in its args already: it waits for nothing."""
    message, declare = compose_message(task.name, args, kwargs, task, get_settings(),
                                       **options)
    message.chain, message.callbacks = workflow.chain, workflow.callbacks
    headers = {name: value for name, value in (workflow.headers or {}).items()
               if name != "x-chord-wait"}
    message.headers = headers or None
    publish_message(message, declare)


_context = threading.local()


def current_request():
    """The Request of the task running in this thread, or None."""
    stack = getattr(_context, "stack", None)
    return stack[-1] if stack else None


def push_request(request):
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    stack.append(request)


def pop_request():
    _context.stack.pop()


class _OnInstance:
    """A method that works on the class too: ``Cls.delay(...)`` is the shared instance's."""

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__

    def __get__(self, obj, cls):
        if obj is None:
            obj = cls._instance()
        return self.function.__get__(obj, cls)


def _check_options(cls):
    """Refuse malformed options when the task is defined, naming the task and the option."""

    def bad(option, value, expected):
        return ConfigurationError("task %s: %s %r: expected %s" % (cls.name, option, value,
                                                                  expected))
    if cls.priority is not None and (not _is_int(cls.priority) or not 0 <= cls.priority <= 9):
        raise bad("priority", cls.priority, "0..9 (0 is the highest) or None")
    if cls.max_retries is not None and (not _is_int(cls.max_retries) or cls.max_retries < 0):
        raise bad("max_retries", cls.max_retries, "a count >= 0 or None")
    if not _is_number(cls.default_retry_delay) or cls.default_retry_delay < 0:
        raise bad("default_retry_delay", cls.default_retry_delay, "seconds >= 0")
    for option in ("time_limit", "soft_time_limit"):
        value = getattr(cls, option)
        if value is not None and (not _is_number(value) or value <= 0):
            raise bad(option, value, "seconds > 0 or None")
    if cls.rate_limit is not None:
        try:
            parse_rate(cls.rate_limit)
        except ConfigurationError as exc:
            raise ConfigurationError("task %s: %s" % (cls.name, exc)) from None
    if cls.serializer is not None:
        try:
            check_serializer(cls.serializer)
        except ConfigurationError as exc:
            raise ConfigurationError("task %s: %s" % (cls.name, exc)) from None
    for option in ("routing_key", "exchange", "queue"):
        value = getattr(cls, option)
        if value is not None and not isinstance(value, str):
            raise bad(option, value, "a string or None")
    if cls.queue == "":
        raise bad("queue", cls.queue, "a queue name or None")
    if cls.expires is not None and not isinstance(cls.expires, (datetime.timedelta,
                                                                 datetime.datetime)) \
            and (not _is_number(cls.expires) or cls.expires <= 0):
        raise bad("expires", cls.expires, "seconds > 0, a timedelta, a datetime or None")
    for option in ("autoretry_for", "dont_autoretry_for", "throws"):
        value = getattr(cls, option)
        if not isinstance(value, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
            setattr(cls, option, value)
        if not all(isinstance(item, type) and issubclass(item, BaseException)
                   for item in value):
            raise bad(option, value, "a tuple of exception classes")
    if cls.retry_kwargs is not None and (not isinstance(cls.retry_kwargs, dict) or any(
            key not in _RETRY_KWARGS for key in cls.retry_kwargs)):
        raise bad("retry_kwargs", cls.retry_kwargs, "a dict of " + ", ".join(_RETRY_KWARGS))
    if not isinstance(cls.retry_backoff, bool) and (
            not _is_number(cls.retry_backoff) or cls.retry_backoff < 0):
        raise bad("retry_backoff", cls.retry_backoff, "True, False or a factor in seconds")
    if not _is_number(cls.retry_backoff_max) or cls.retry_backoff_max < 0:
        raise bad("retry_backoff_max", cls.retry_backoff_max, "seconds >= 0")
    for option in ("retry_jitter", "bind"):
        if not isinstance(getattr(cls, option), bool):
            raise bad(option, getattr(cls, option), "True or False")
    for option in ("acks_late", "typing"):
        if getattr(cls, option) not in (None, True, False):
            raise bad(option, getattr(cls, option), "True, False or None")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TaskType(type):
    """Registers every non-abstract Task class when it is created, under its name."""

    def __new__(mcs, name, bases, attrs):
        attrs.setdefault("abstract", False)        # abstract is not inherited
        explicit_name = attrs.get("name")
        cls = super().__new__(mcs, name, bases, attrs)
        if not explicit_name:
            cls.name = "%s.%s" % (attrs.get("__module__", "__main__"), name)
        cls._shared_instance = None
        check_task_attributes(cls.name, attrs)
        _check_options(cls)
        if not cls.abstract:
            registry.tasks.register(cls)
        return cls


class Task(metaclass=TaskType):
    """A task type. Subclass it and define `run`; options are class attributes."""

    abstract = True
    name = None
    type = "regular"
    max_retries = 3
    default_retry_delay = 180
    rate_limit = None                 # None: the DEFAULT_RATE_LIMIT setting
    ignore_result = False
    disable_error_emails = False
    serializer = None                 # None: the TASK_SERIALIZER setting
    routing_key = None                # None: DEFAULT_ROUTING_KEY
    exchange = None                   # None: DEFAULT_EXCHANGE
    mandatory = False
    immediate = False
    priority = None                   # None: 4; 0 is the highest
    queue = None                      # a queue name: sent straight to it (see minitask.routes)
    expires = None                    # default expires= of every call
    acks_late = None                  # None: the TASK_ACKS_LATE setting
    time_limit = None                 # None: TASK_TIME_LIMIT
    soft_time_limit = None            # None: TASK_SOFT_TIME_LIMIT
    bind = False                      # True: run(self, ...) of a decorated function
    autoretry_for = ()                # exceptions that retry the task by themselves
    dont_autoretry_for = ()           # ... except these
    retry_kwargs = None               # retry()'s arguments for those retries
    retry_backoff = False             # True or a factor: countdown factor * 2**retries
    retry_backoff_max = 600           # seconds, the most a backoff waits
    retry_jitter = True               # a random countdown from 0 up to the backoff
    throws = ()                       # expected exceptions: FAILURE, logged without traceback
    typing = None                     # True: check the arguments against run() when called
    # Celery's names for the errors a caller and a task catch: ``except add.OperationalError``
    # around delay() (the broker cannot be reached), ``except self.MaxRetriesExceededError``.
    OperationalError = BrokerConnectionError
    MaxRetriesExceededError = MaxRetriesExceededError

    @classmethod
    def _instance(cls):
        instance = cls.__dict__.get("_shared_instance")
        if instance is None:
            instance = cls()
            cls._shared_instance = instance
        return instance

    def run(self, *args, **kwargs):
        raise NotImplementedError("task %s does not define run()" % self.name)

    def __call__(self, *args, **kwargs):
        """Run the task here. The worker's own call runs under the request it made; any
        other (a task called as a plain function, even inside a running task) gets a
        request of its own saying `called_directly`, as in Celery, so that its
        `update_state()` and `retry()` never act for the task that runs."""
        request = current_request()
        if request is not None and request.entering is self:
            request.entering = None
            if args and kwargs and request.injected:
                _drop_filled_defaults(self.run, args, kwargs, request.injected)
            return self.run(*args, **kwargs)
        push_request(Request(None, self.name, args, kwargs, called_directly=True))
        try:
            return self.run(*args, **kwargs)
        finally:
            pop_request()

    def __reduce__(self):
        return (_task_by_name, (self.name, type(self).__module__))

    def __repr__(self):
        return "<@task: %s>" % self.name

    @property
    def app(self):
        """Celery's ``self.app``: `minitask.app.current_app` (``conf``, ``control``,
        ``tasks``, ``send_task``, ``add_periodic_task``); minitask has no app of its own."""
        from .app import current_app        # here: app imports this module
        return current_app

    @property
    def request(self):
        """The running call's Request; outside one, a Request saying `called_directly`."""
        request = current_request()
        if request is None:
            return Request(None, self.name, called_directly=True)
        return request

    def effective(self, option, settings=None):
        """`acks_late`, `time_limit` or `soft_time_limit` in force: the task's own, else the
        TASK_* setting's."""
        value = getattr(self, option)
        if value is None:
            value = (settings or get_settings())["TASK_" + option.upper()]
        return value

    # -- hooks: override them in a Task subclass (they run in the pool process) --

    def before_start(self, task_id, args, kwargs):
        """Called just before the task runs; an exception here fails the task."""

    def on_success(self, retval, task_id, args, kwargs):
        """Called after the task returned `retval`."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        """Called after the task asked to be retried (`exc` is the tombstone)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Called after the task failed with `exc`; `einfo.traceback` is the text."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        """Called after any of the three above, with the final state."""

    # -- calling --

    @_OnInstance
    def delay(self, *args, **kwargs):
        """Send a call with these arguments; returns its AsyncResult."""
        return self.apply_async(args, kwargs)

    @_OnInstance
    def delay_on_commit(self, *args, **kwargs):
        """Celery 5.4's: `delay` once the database transaction in progress commits (never,
        if it rolls back), so that the task never looks for a row not committed yet; at
        once outside a transaction, or without Django. Returns None: nothing is sent yet."""
        on_commit(functools.partial(self.delay, *args, **kwargs))

    @_OnInstance
    def apply_async_on_commit(self, args=None, kwargs=None, **options):
        """Celery 5.4's: `apply_async` once the transaction in progress commits (see
        `delay_on_commit`). Returns None."""
        on_commit(functools.partial(self.apply_async, args, kwargs, **options))

    @_OnInstance
    def apply_async(self, args=None, kwargs=None, countdown=None, eta=None, expires=None,
                    task_id=None, routing_key=None, exchange=None, mandatory=None,
                    immediate=None, priority=None, serializer=None, retries=0, queue=None,
                    link=None, link_error=None, argsrepr=None, kwargsrepr=None, **options):
        """Send a call; returns its AsyncResult. The options are listed in the README's "Task
        options" (Celery's others are accepted with no effect, or refused, by name);
        `link` and `link_error` take a signature or a list of them (see `minitask.canvas`).

        Returns once the broker has the message in its journal (publisher confirms).
        Raises SerializationError here, in the caller, for arguments that cannot be sent.
        """
        settings = get_settings()
        if options:
            check_call_options(self, options, known=())
        if self.typing:
            check_arguments(self, args, kwargs)
        if settings.ALWAYS_EAGER:
            return self.apply(args, kwargs, task_id=task_id, retries=retries, link=link,
                              link_error=link_error)
        if link is not None or link_error is not None:
            call = {"countdown": countdown, "eta": eta, "expires": expires,
                    "task_id": task_id, "routing_key": routing_key, "exchange": exchange,
                    "mandatory": mandatory, "immediate": immediate, "priority": priority,
                    "serializer": serializer, "queue": queue, "retries": retries or None,
                    "link": link, "link_error": link_error, "argsrepr": argsrepr,
                    "kwargsrepr": kwargsrepr}
            return send(Signature(self, args, kwargs, {name: value for name, value
                                                       in call.items() if value is not None}))
        message, declare = compose_message(
            self.name, args, kwargs, self, settings, countdown=countdown, eta=eta,
            expires=expires, task_id=task_id, queue=queue, routing_key=routing_key,
            exchange=exchange, mandatory=mandatory, immediate=immediate, priority=priority,
            serializer=serializer, retries=retries, argsrepr=argsrepr, kwargsrepr=kwargsrepr)
        publish_message(message, declare)
        return _AsyncResult(message.id, task_name=self.name)

    def build_message(self, args=None, kwargs=None, settings=None, **options):
        """The TaskMessage apply_async would send (options resolved against the settings)."""
        return compose_message(self.name, args, kwargs, self, settings or get_settings(),
                               **options)[0]

    @_OnInstance
    def apply(self, args=None, kwargs=None, task_id=None, retries=0, honour_countdown=False,
              logfile=None, loglevel=None, link=None, link_error=None, **options):
        """Run the task here and now, retries inline; returns an EagerResult.

        Countdowns of retries are skipped unless `honour_countdown` is true. `link` callbacks
        run here after a success (their results are the result's `children`), `link_error`
        errbacks after a failure, with this task's id.
        """
        from .worker.execution import run_eagerly  # execution imports this module
        check_call_options(self, options)
        errbacks = [canvas.maybe_signature(errback) for errback in canvas.as_list(link_error)]
        for errback in errbacks:
            canvas.check_errback(errback)
        outcome, message = run_eagerly(self, args, kwargs, task_id=task_id, retries=retries,
                                       honour_countdown=honour_countdown, logfile=logfile,
                                       loglevel=loglevel)
        result = EagerResult(message.id, outcome.result, outcome.state, outcome.traceback,
                             task_name=self.name)
        if outcome.state == "SUCCESS" and link is not None:
            result.children = eager.call_callbacks(link, outcome.result)
        elif outcome.state not in ("SUCCESS", IGNORED, REJECTED) and errbacks:  # nothing
            eager.call_errbacks(errbacks, message.id)
        return result

    @_OnInstance
    def retry(self, args=None, kwargs=None, exc=None, countdown=None, eta=None,
              max_retries=None, **options):
        """Send this task again with ``task_retries + 1``, then raise RetryTaskError. On a
        worker the message is held and published with the RETRY result (atomically, after).

        Every form of early Celery's guide works: ``retry(args=[...], exc=exc, **kwargs)``,
        ``retry([x, y], exc=exc, countdown=60, **kwargs)`` and ``retry(args, kwargs=kwargs)``.
        So the default keyword arguments may arrive in `options`, in `kwargs`, or not at all:
        the id and retry count come from them when given, else from the running task, and
        none of them is sent on (the worker offers them afresh). The rest of `options` are
        call options, as `apply_async` takes them; any other name is a ConfigurationError.
        When no retry is left: raises `exc`, or MaxRetriesExceededError.
        """
        defaults, options = _split_retry_options(self, options)
        request = current_request()
        if kwargs is not None:
            kwargs = dict(kwargs)
            defaults = dict({name: kwargs.pop(name) for name in DEFAULT_KWARG_NAMES
                             if name in kwargs}, **defaults)
        task_id = defaults.get("task_id") or (request.id if request else None)
        if task_id is None:
            raise RetryTaskError("retry() called outside a running task and without task_id")
        retries = defaults.get("task_retries")
        if retries is None:
            retries = request.retries if request else 0
        max_retries = self.max_retries if max_retries is None else max_retries
        if not policy.can_retry(retries, max_retries):
            raise policy.give_up(self.name, task_id, retries, max_retries, exc)
        if args is None and request is not None:
            args = request.args
        if kwargs is None:
            kwargs = {name: value for name, value in
                      (request.kwargs if request is not None else {}).items()
                      if name not in DEFAULT_KWARG_NAMES}
        countdown = policy.next_countdown(countdown, eta, self.default_retry_delay)
        error = RetryTaskError(exc=exc, countdown=countdown)
        error.retry_args, error.retry_kwargs = tuple(args or ()), kwargs
        error.retry_task_id, error.retry_retries = task_id, retries + 1
        if request is None or not request.is_eager:
            held = getattr(request, "held", None)
            if request is not None:
                # As Celery's: where the call went, unless a queue is named (its own
                # exchange and key then); its expiry, which a retry never outlives.
                if options.get("queue") is None:
                    options.setdefault("exchange", request.exchange)
                    options.setdefault("routing_key", request.routing_key)
                options.setdefault("priority", request.priority)
                # Arguments the call hid (argsrepr: a password) stay hidden in the retry's
                # logs, e-mails and inspect lines, unless the retry says otherwise.
                for name in ("argsrepr", "kwargsrepr"):
                    if getattr(request, name) is not None:
                        options.setdefault(name, getattr(request, name))
                if request._expires:
                    options.setdefault("expires", from_epoch(request._expires))
            if held is None:
                _send_retry(self, request, args, kwargs, countdown=countdown, eta=eta,
                            task_id=task_id, retries=retries + 1, **options)
            else:       # in a worker: published with the RETRY, after it is stored
                with held_for_result() as messages:
                    _send_retry(self, request, args, kwargs, countdown=countdown, eta=eta,
                                task_id=task_id, retries=retries + 1, **options)
                held.extend(messages)
        raise error

    @_OnInstance
    def AsyncResult(self, task_id):
        return _AsyncResult(task_id, task_name=self.name)

    @_OnInstance
    def get_logger(self, **kwargs):
        """A logger for this task: to `logfile` at `loglevel` (the worker's when run there),
        each line naming the task and its id."""
        request = current_request()
        return task_logger(self.name, kwargs.get("task_id") or (request.id if request else "")
                           or "",
                           kwargs.get("logfile", request.logfile if request else None),
                           kwargs.get("loglevel", request.loglevel if request else None))

    @_OnInstance
    def s(self, *args, **kwargs):
        """A signature of this call: ``add.s(2, 2)``; in a chain it gets the previous result
        first."""
        return Signature(self, args, kwargs)

    @_OnInstance
    def si(self, *args, **kwargs):
        """An immutable signature: in a chain or as a callback it gets no other arguments."""
        return Signature(self, args, kwargs, immutable=True)

    @_OnInstance
    def signature(self, args=None, kwargs=None, **options):
        """A signature with call options: ``add.signature((2, 2), countdown=10)``;
        ``immutable=True`` as `si`."""
        return Signature(self, args or (), kwargs, **options)

    subtask = signature

    @_OnInstance
    def map(self, it):
        """One message that calls this task on each item of `it` in turn (the built-in task
        minitask.map): ``add.map([...]).delay()``; its result is the list."""
        return xmap(self.s(), it)

    @_OnInstance
    def starmap(self, it):
        """As `map`, each item an argument tuple (minitask.starmap)."""
        return xstarmap(self.s(), it)

    @_OnInstance
    def chunks(self, it, n):
        """The argument tuples of `it` in parts of `n`, one starmap message per part; runs as
        a group (``.group()``) whose result is a list per part."""
        return chunks(self.s(), it, n)

    @_OnInstance
    def replace(self, sig):
        raise ConfigurationError(_NOT_FROM_A_TASK % "replace()")

    @_OnInstance
    def add_to_chord(self, sig, lazy=False):
        raise ConfigurationError(_NOT_FROM_A_TASK % "add_to_chord()")

    @_OnInstance
    def update_state(self, task_id=None, state=None, meta=None, **kwargs):
        """Celery's progress idiom: ``self.update_state(state="PROGRESS", meta={...})`` while
        the task runs. Clients read `state` as the result's ``state`` and `meta` as its
        ``info`` until the task ends (its own result then takes their place); the task is
        not ready meanwhile. A final state is refused: a task reaches one by returning or
        raising. Nothing is stored by an eager run, nor without a task id off a worker (a
        direct call, or a thread of the task: the request is the task's thread's)."""
        if kwargs:
            raise ConfigurationError("update_state() takes task_id, state and meta, not %s"
                                     % ", ".join(sorted(kwargs)))
        state = "PENDING" if state is None else state
        if not isinstance(state, str) or not state:
            raise ConfigurationError("update_state() state %r: expected a state name"
                                     % (state,))
        if state in READY_STATES:
            raise ConfigurationError("update_state() state %s: a final state, which a task "
                                     "reaches by returning or raising" % state)
        request = current_request()
        if request is not None and request.is_eager:
            return
        if task_id is None:
            if request is None or request.id is None:
                return
            task_id = request.id
        meta_object = ResultMeta(task_id, state, meta, None, self.name,
                                 request.retries if request is not None else 0, time.time())
        content_type, payload = encode_result_meta(
            meta_object, getattr(request, "serializer", None) or self.serializer
            or get_settings().TASK_SERIALIZER)
        if meta_object.status != state:         # the meta could not be encoded
            raise ConfigurationError("update_state() meta: %s" % meta_object.result)
        if not with_connection(lambda conn: conn.set_state(task_id, content_type, payload)) \
                and not _OLD_BROKER_SAID:
            _OLD_BROKER_SAID.append(True)
            logger.warning("update_state() stores nothing: the broker is older than this "
                           "minitask (upgrade it to keep task states)")

    @_OnInstance
    def send_event(self, type_, **fields):
        raise ConfigurationError("send_event() is not supported: minitask has no event "
                                 "stream; log instead (get_logger())")

    @_OnInstance
    def map_async(self, iterable, **options):
        """Send one call per item of `iterable` (an argument tuple each); returns a ResultSet."""
        return group(*[self.s(*_as_args(item)) for item in iterable]).apply_async(**options)

    def effective_rate_limit(self, settings=None):
        if self.rate_limit is not None:
            return self.rate_limit
        if settings is None:
            settings = get_settings()
        return settings.DEFAULT_RATE_LIMIT


_NOT_FROM_A_TASK = ("%s is not supported: a running task cannot change its own place in a "
                    "workflow; return a value and let a chain or chord pass it on")


def _as_args(item):
    return tuple(item) if isinstance(item, (list, tuple)) else (item,)


_positional_cache = {}


def _positional_names(fun):
    """The names of `fun`'s parameters that positional arguments fill, in order."""
    key = getattr(fun, "__func__", fun)
    names = _positional_cache.get(key)
    if names is None:
        try:
            parameters = inspect.signature(fun).parameters.values()
        except (TypeError, ValueError):
            parameters = ()
        names = _positional_cache[key] = tuple(
            p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names


def _drop_filled_defaults(fun, args, kwargs, injected):
    """Take out of `kwargs` the default keyword arguments the worker offered that `args`
    already fill: ``def errback(task_id)`` called with an id is given that id, not its own."""
    for name in _positional_names(fun)[:len(args)]:
        if name in injected:
            kwargs.pop(name, None)



def _split_retry_options(task, options):
    """Split retry()'s ``**options`` into (default kwargs, publish options to send with).

    The guide spreads the task's ``**kwargs`` into retry(), so the default keyword arguments
    land here. The rest must be call options: the publish options are kept, Celery's others
    are accepted with no effect or refused as `apply_async` does, and any other name is
    refused rather than sent on.
    """
    defaults = {name: options.pop(name) for name in DEFAULT_KWARG_NAMES if name in options}
    unknown = sorted(name for name in options if not is_call_option(name))
    if unknown:
        raise ConfigurationError(
            "retry() of %s got %s: expected a default keyword argument (%s) or a call option "
            "(%s); pass the task's own keyword arguments as kwargs={...}"
            % (task.name, ", ".join(repr(name) for name in unknown),
               ", ".join(DEFAULT_KWARG_NAMES), ", ".join(PUBLISH_OPTIONS)))
    return defaults, check_call_options(task, options)


def _task_by_name(name, module=None):
    """Unpickle a task reference: the registered object, importing its defining module once
    if needed (pickle is only ever accepted from trusted peers)."""
    try:
        return registry.tasks[name]
    except KeyError:
        if module:
            importlib.import_module(module)
        return registry.tasks[name]


class PeriodicTask(Task):
    """A task a worker started with ``--beat`` sends on its schedule: `run_every` is seconds, a
    timedelta or a `minitask.crontab` (see `minitask.schedules`)."""

    abstract = True
    type = "periodic"
    run_every = None

    def __init__(self):
        if self.run_every is None:
            raise ConfigurationError("periodic task %s needs run_every (seconds, a timedelta "
                                     "or a crontab)" % self.name)
        try:
            self.schedule = as_schedule(self.run_every)
        except ConfigurationError as exc:
            raise ConfigurationError("periodic task %s: %s" % (self.name, exc)) from None
        self.run_every_seconds = getattr(self.schedule, "seconds", None)

    def is_due(self, last_run_at, now):
        """``(due, seconds until the next check)`` for a task last sent at `last_run_at`."""
        return self.schedule.is_due(last_run_at, now)


def check_arguments(task, args, kwargs):
    """``typing=True``: refuse a call that run() could not take, here rather than in a worker
    (the default keyword arguments a worker adds need not be given)."""
    try:
        signature = inspect.signature(task.run)
    except (TypeError, ValueError):     # no signature to check against
        return
    given = dict(kwargs or {})
    filled = _positional_names(task.run)[:len(args or ())]
    for parameter in signature.parameters.values():
        if parameter.name in DEFAULT_KWARG_NAMES and parameter.name not in given \
                and parameter.name not in filled:
            given[parameter.name] = None
    try:
        signature.bind(*(args or ()), **given)
    except TypeError as exc:
        raise TypeError("%s%s: %s" % (task.name, signature, exc)) from None
