"""Tasks: early Celery's `Task` class, its registering metaclass, and how a call is sent.

A task is a class with a `run` method; creating the class registers its shared instance
under its name (``"<module>.<ClassName>"`` unless `name` is given), except for classes that
say ``abstract = True`` (their subclasses register). `@task()` builds such a class around a
function (see `minitask.decorators`). Calling methods work on the instance and on the class
alike: ``CreateUserTask.delay("bob", "pw")`` is the registered instance's `delay`.

Sending a call (`apply_async`) builds a `TaskMessage` and publishes it with confirms through
this process's connection (`minitask.client.connection`); with ``ALWAYS_EAGER`` it runs here
instead (`apply`). A task object pickles as a reference by name, never as code.
"""

import datetime
import inspect
import threading
import time

from . import registry as _registry_module
from .client import with_connection
from .config import get_settings
from .exceptions import ConfigurationError, RetryTaskError
from .message import TaskMessage, new_task_id, to_epoch
from .result import AsyncResult as _AsyncResult

__all__ = ["Task", "TaskType", "PeriodicTask", "registry", "Request", "current_request",
           "default_kwargs_for", "DEFAULT_KWARG_NAMES"]

registry = _registry_module

# The keyword arguments the worker offers every task (SPEC "Default keyword arguments").
DEFAULT_KWARG_NAMES = ("logfile", "loglevel", "task_id", "task_name", "task_retries")

_signature_cache = {}


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
    """What the running task may ask about its own call (id, retries, how it was routed)."""

    def __init__(self, id, name, args=(), kwargs=None, retries=0, is_eager=False,
                 logfile=None, loglevel=None, exchange=None, routing_key=None, priority=None,
                 injected=()):
        self.id = id
        self.name = name
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
    from .ratelimit import parse_rate
    from .serialization import check_serializer

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
    for option in ("routing_key", "exchange"):
        value = getattr(cls, option)
        if value is not None and not isinstance(value, str):
            raise bad(option, value, "a string or None")


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
    acks_late = False
    time_limit = None
    soft_time_limit = None

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
        return self.run(*args, **kwargs)

    def __reduce__(self):
        return (_task_by_name, (self.name, type(self).__module__))

    def __repr__(self):
        return "<@task: %s>" % self.name

    @property
    def request(self):
        return current_request()

    # -- calling --

    @_OnInstance
    def delay(self, *args, **kwargs):
        """Send a call with these arguments; returns its AsyncResult."""
        return self.apply_async(args, kwargs)

    @_OnInstance
    def apply_async(self, args=None, kwargs=None, countdown=None, eta=None, expires=None,
                    task_id=None, routing_key=None, exchange=None, mandatory=None,
                    immediate=None, priority=None, serializer=None, retries=0, **options):
        """Send a call with every option of SPEC section 2; returns its AsyncResult.

        Returns once the broker has the message in its journal (publisher confirms).
        Raises SerializationError here, in the caller, for arguments that cannot be sent.
        """
        settings = get_settings()
        if options:
            raise TypeError("apply_async() got unexpected options: %s"
                            % ", ".join(sorted(options)))
        if settings.ALWAYS_EAGER:
            return self.apply(args, kwargs, task_id=task_id, retries=retries)
        message = self.build_message(args, kwargs, countdown=countdown, eta=eta,
                                     expires=expires, task_id=task_id, routing_key=routing_key,
                                     exchange=exchange, mandatory=mandatory,
                                     immediate=immediate, priority=priority,
                                     serializer=serializer, retries=retries, settings=settings)
        data = message.encode()
        with_connection(lambda conn: conn.publish(data))
        return _AsyncResult(message.id, task_name=self.name)

    def build_message(self, args=None, kwargs=None, countdown=None, eta=None, expires=None,
                      task_id=None, routing_key=None, exchange=None, mandatory=None,
                      immediate=None, priority=None, serializer=None, retries=0,
                      settings=None):
        """The TaskMessage apply_async would send (options resolved against the settings)."""
        if settings is None:
            settings = get_settings()
        priority = self.priority if priority is None else priority
        if priority is not None and (not _is_int(priority) or not 0 <= priority <= 9):
            raise ConfigurationError("priority %r: expected 0..9 (0 is the highest)"
                                     % (priority,))
        now = time.time()
        if countdown is not None:
            eta = now + float(countdown)
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            expires = now + expires
        elif isinstance(expires, datetime.timedelta):
            expires = now + expires.total_seconds()
        if args is not None and not isinstance(args, (list, tuple)):
            raise TypeError("args must be a list or tuple, not %s" % type(args).__name__)
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError("kwargs must be a dict, not %s" % type(kwargs).__name__)
        return TaskMessage(
            self.name, args or (), kwargs or {}, id=task_id or new_task_id(), retries=retries,
            eta=to_epoch(eta), expires=to_epoch(expires),
            exchange=settings.DEFAULT_EXCHANGE if exchange is None and self.exchange is None
            else (self.exchange if exchange is None else exchange),
            routing_key=routing_key or self.routing_key or settings.DEFAULT_ROUTING_KEY,
            priority=priority,
            mandatory=self.mandatory if mandatory is None else mandatory,
            immediate=self.immediate if immediate is None else immediate,
            serializer=serializer or self.serializer or settings.TASK_SERIALIZER)

    @_OnInstance
    def apply(self, args=None, kwargs=None, task_id=None, retries=0, honour_countdown=False,
              logfile=None, loglevel=None, **options):
        """Run the task here and now, retries inline; returns an EagerResult.

        Countdowns of retries are skipped unless `honour_countdown` is true.
        """
        from .result import EagerResult
        from .worker.execution import run_eagerly
        outcome, message = run_eagerly(self, args, kwargs, task_id=task_id, retries=retries,
                                       honour_countdown=honour_countdown, logfile=logfile,
                                       loglevel=loglevel)
        return EagerResult(message.id, outcome.result, outcome.state, outcome.traceback)

    @_OnInstance
    def retry(self, args=None, kwargs=None, exc=None, countdown=None, eta=None,
              max_retries=None, **options):
        """Send this task again with ``task_retries + 1``, then raise RetryTaskError.

        The id and retry count come from the default kwargs in `kwargs` when given, else from
        the running task. When no retry is left: raises `exc`, or MaxRetriesExceededError.
        """
        from . import retry as policy
        request = current_request()
        kwargs = dict(kwargs) if kwargs is not None else None
        task_id = (kwargs or {}).get("task_id") or (request.id if request else None)
        if task_id is None:
            raise RetryTaskError("retry() called outside a running task and without task_id")
        retries = (kwargs or {}).get("task_retries")
        if retries is None:
            retries = request.retries if request else 0
        max_retries = self.max_retries if max_retries is None else max_retries
        if not policy.can_retry(retries, max_retries):
            raise policy.give_up(self.name, task_id, retries, max_retries, exc)
        if args is None and request is not None:
            args = request.args
        if kwargs is None:
            kwargs = dict(request.kwargs) if request is not None else {}
        injected = request.injected if request is not None else frozenset(DEFAULT_KWARG_NAMES)
        for name in injected:
            kwargs.pop(name, None)
        countdown = policy.next_countdown(countdown, eta, self.default_retry_delay)
        error = RetryTaskError(exc=exc, countdown=countdown)
        error.retry_args, error.retry_kwargs = tuple(args or ()), kwargs
        error.retry_task_id, error.retry_retries = task_id, retries + 1
        if request is None or not request.is_eager:
            if request is not None:
                options.setdefault("exchange", request.exchange)
                options.setdefault("routing_key", request.routing_key)
                options.setdefault("priority", request.priority)
            self.apply_async(args, kwargs, countdown=countdown, eta=eta, task_id=task_id,
                             retries=retries + 1, **options)
        raise error

    @_OnInstance
    def AsyncResult(self, task_id):
        return _AsyncResult(task_id, task_name=self.name)

    @_OnInstance
    def get_logger(self, **kwargs):
        """A logger for this task: to `logfile` at `loglevel` (the worker's when run there),
        each line naming the task and its id."""
        from .log import task_logger
        request = current_request()
        return task_logger(self.name, kwargs.get("task_id") or (request.id if request else ""),
                           kwargs.get("logfile", request.logfile if request else None),
                           kwargs.get("loglevel", request.loglevel if request else None))

    @_OnInstance
    def s(self, *args, **kwargs):
        """A signature of this call, for `group()`."""
        from .group import Signature
        return Signature(self, args, kwargs)

    subtask = s

    @_OnInstance
    def map_async(self, iterable, **options):
        """Send one call per item of `iterable` (an argument tuple each); returns a ResultSet."""
        from .group import group
        return group(*[self.s(*_as_args(item)) for item in iterable]).apply_async(**options)

    def effective_rate_limit(self, settings=None):
        if self.rate_limit is not None:
            return self.rate_limit
        if settings is None:
            settings = get_settings()
        return settings.DEFAULT_RATE_LIMIT


def _as_args(item):
    return tuple(item) if isinstance(item, (list, tuple)) else (item,)


def _task_by_name(name, module=None):
    """Unpickle a task reference: the registered object, importing its defining module once
    if needed (pickle is only ever accepted from trusted peers)."""
    try:
        return registry.tasks[name]
    except KeyError:
        if module:
            import importlib
            importlib.import_module(module)
        return registry.tasks[name]


class PeriodicTask(Task):
    """A task a worker started with ``--beat`` sends every `run_every` (seconds or timedelta)."""

    abstract = True
    type = "periodic"
    run_every = None

    def __init__(self):
        if self.run_every is None:
            raise ConfigurationError("periodic task %s needs run_every (seconds or a timedelta)"
                                     % self.name)
        self.run_every_seconds = timedelta_seconds(self.run_every)
        if self.run_every_seconds <= 0:
            raise ConfigurationError("periodic task %s: run_every %r: expected a positive "
                                     "interval" % (self.name, self.run_every))

    def is_due(self, last_run_at, now):
        """``(due, seconds until the next check)`` for a task last sent at `last_run_at`."""
        if last_run_at is None:
            return True, self.run_every_seconds
        remaining = last_run_at + self.run_every_seconds - now
        if remaining <= 0:
            return True, self.run_every_seconds
        return False, remaining


def timedelta_seconds(value):
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError("run_every %r: expected seconds or a timedelta" % (value,))

