"""Celery's signals, by the names Celery users connect to:

    from minitask.signals import task_failure, worker_process_init

    @worker_process_init.connect
    def open_connections(**kwargs): ...

    @task_failure.connect(sender=add)          # the task, or its name
    def alert(sender=None, task_id=None, exception=None, **kwargs): ...

Where each is sent, and with what, is the table in the README ("Signals"). What a receiver
raises is logged, one line naming the signal and the receiver, and changes nothing else: a
task's outcome is decided before its signals go, and a worker never stops for a receiver.
Receivers are kept until disconnected (`weak` is accepted for Celery's signature and not
used): they are module-level functions in practice, and a weak reference would drop a
closure connected inside a function the moment that function returned.

Sending a signal nobody connected to costs one attribute look-up: the senders check
`receivers` first, on the path of every task.
"""

import inspect
import logging

from .exceptions import ConfigurationError

__all__ = [
    "Signal", "before_task_publish", "after_task_publish", "task_prerun", "task_postrun",
    "task_success", "task_failure", "task_retry", "task_received", "task_revoked",
    "worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown",
    "worker_process_init", "worker_process_shutdown", "setup_logging", "after_setup_logger",
    "after_setup_task_logger", "on_after_configure", "on_after_finalize",
]

logger = logging.getLogger(__name__)


class Signal:
    """Receivers to call when something happens; `send()` calls those that match. Celery's
    signature: ``Signal(providing_args=None, use_caching=False, name=None)``."""

    def __init__(self, providing_args=None, use_caching=False, name=None):
        self.name = name or "signal"
        self.providing_args = frozenset(providing_args or ())
        self.receivers = []             # (key, receiver, sender); empty: nothing to do

    def __repr__(self):
        return "<Signal %s>" % self.name

    def connect(self, receiver=None, sender=None, weak=True, dispatch_uid=None, retry=False):
        """Connect `receiver`; as a decorator, bare or with arguments. A receiver connected
        again (or under a `dispatch_uid` already used) for the same sender is not added
        twice; a task and its name are the same sender."""
        if retry:
            raise ConfigurationError("signal %s: connect(retry=True) is not supported: retry "
                                     "inside the receiver" % self.name)
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender, weak=weak,
                                           dispatch_uid=dispatch_uid)
        if not callable(receiver):
            raise TypeError("signal %s: a receiver must be callable, not %r"
                            % (self.name, receiver))
        if not _takes_keywords(receiver):
            raise ValueError("signal %s: receiver %s must accept keyword arguments "
                             "(**kwargs), as Celery requires" % (self.name, _name(receiver)))
        key = _key(receiver, sender, dispatch_uid)
        if not any(existing == key for existing, _r, _s in self.receivers):
            self.receivers = self.receivers + [(key, receiver, sender)]
        return receiver

    def disconnect(self, receiver=None, sender=None, weak=None, dispatch_uid=None):
        """Disconnect a receiver; True when one was connected."""
        key = _key(receiver, sender, dispatch_uid)
        kept = [entry for entry in self.receivers if entry[0] != key]
        found = len(kept) != len(self.receivers)
        self.receivers = kept
        return found

    def has_listeners(self, sender=None):
        return any(wanted is None or sender is None or _matches(wanted, sender)
                   for _key, _receiver, wanted in self.receivers)

    def send(self, sender, **named):
        """Call every receiver connected for `sender` (or for any sender); returns a list of
        ``(receiver, its return value or the exception it raised)``."""
        responses = []
        for _key, receiver, wanted in self.receivers:
            if wanted is not None and not _matches(wanted, sender):
                continue
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:    # the user's receiver: logged, never ours to raise
                logger.error("signal %s: receiver %s raised %s: %s", self.name,
                             _name(receiver), type(exc).__name__, exc)
                response = exc
            responses.append((receiver, response))
        return responses

    send_robust = send                  # Django's name; Celery's send() is robust too


def _key(receiver, sender, dispatch_uid):
    """Who a connection is, to connect it once and to disconnect it: the receiver (a bound
    method by its object and function, as each access makes a new one) or its
    `dispatch_uid`, and the sender (a task by its name)."""
    if dispatch_uid is not None:
        who = ("uid", dispatch_uid)
    elif hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        who = (id(receiver.__self__), id(receiver.__func__))
    else:
        who = id(receiver)
    return who, _sender_name(sender)


def _sender_name(sender):
    if sender is None or isinstance(sender, str):
        return sender
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else id(sender)


def _matches(wanted, sender):
    """A receiver connected for a task gets its signals whether it named the task object
    or its name (Celery matches by identity only, which surprises users of names)."""
    return wanted is sender or wanted == sender or (
        _sender_name(wanted) is not None and _sender_name(wanted) == _sender_name(sender))


def _takes_keywords(receiver):
    try:
        parameters = inspect.signature(receiver).parameters.values()
    except (TypeError, ValueError):     # a builtin or C callable: nothing to look at
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _name(receiver):
    module = getattr(receiver, "__module__", None)
    name = getattr(receiver, "__qualname__", None) or repr(receiver)
    return "%s.%s" % (module, name) if module else name


# -- the signals --------------------------------------------------------------------------------
# In the process that sends a task (sender: the task's name).
before_task_publish = Signal(name="before_task_publish", providing_args=(
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"))
after_task_publish = Signal(name="after_task_publish", providing_args=(
    "body", "exchange", "routing_key", "headers"))

# Where a task runs: a worker's pool process, or the caller's for apply() and eager calls
# (sender: the task).
task_prerun = Signal(name="task_prerun", providing_args=("task_id", "task", "args", "kwargs"))
task_postrun = Signal(name="task_postrun", providing_args=(
    "task_id", "task", "args", "kwargs", "retval", "state"))
task_success = Signal(name="task_success", providing_args=("result", "runtime"))
task_failure = Signal(name="task_failure", providing_args=(
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"))
task_retry = Signal(name="task_retry", providing_args=("request", "reason", "einfo"))

# A worker's main process: a task it took (sender: its consumer); one it revoked, found
# expired, or terminated before it could end (sender: the task).
task_received = Signal(name="task_received", providing_args=("request",))
task_revoked = Signal(name="task_revoked", providing_args=(
    "request", "terminated", "signum", "expired"))

# A worker's main process (sender: the worker; its hostname for worker_shutting_down).
worker_init = Signal(name="worker_init")
worker_ready = Signal(name="worker_ready")
worker_shutting_down = Signal(name="worker_shutting_down",
                              providing_args=("sig", "how", "exitcode"))
worker_shutdown = Signal(name="worker_shutdown")

# Each pool process (sender: None).
worker_process_init = Signal(name="worker_process_init")
# Logging (`minitask.log`): in the worker and each pool process once the task modules are
# imported; a setup_logging receiver takes logging over.
setup_logging = Signal(name="setup_logging", providing_args=(
    "loglevel", "logfile", "format", "colorize"))
after_setup_logger = Signal(name="after_setup_logger", providing_args=(
    "logger", "loglevel", "logfile", "format", "colorize"))
after_setup_task_logger = Signal(name="after_setup_task_logger", providing_args=(
    "logger", "loglevel", "logfile", "format", "colorize"))
worker_process_shutdown = Signal(name="worker_process_shutdown",
                                 providing_args=("pid", "exitcode"))
# The app's own signals (app.on_after_configure in Celery): the sender is minitask.app's
# current_app, whose add_periodic_task the Periodic Tasks guide calls.
on_after_configure = Signal(name="on_after_configure", providing_args=("source",))
on_after_finalize = Signal(name="on_after_finalize")


# Celery's signals that have no place here, and what to use instead: looking one up says so.
# An AttributeError, which `hasattr` and `getattr(signals, name, None)` probes expect; an
# import of one (`from minitask.signals import beat_init`) is Python's ImportError.
_NOT_SENT = dict.fromkeys(
    ("celeryd_init", "celeryd_after_setup", "beat_init", "beat_embedded_init",
     "import_modules"),
    "use worker_init (its sender is the worker; beat runs inside one, -B)")
_NOT_SENT.update(dict.fromkeys(
    ("task_internal_error", "task_unknown", "task_rejected"),
    "the worker logs such a message in one line and stores the task's FAILURE"))
_NOT_SENT.update(dict.fromkeys(
    ("worker_before_create_process", "heartbeat_sent", "eventlet_pool_started",
     "eventlet_pool_preshutdown", "eventlet_pool_postshutdown", "eventlet_pool_apply",
     "task_sent", "user_preload_options"),
    "minitask has no such event"))


def __getattr__(name):
    reason = _NOT_SENT.get(name)
    if reason is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    raise AttributeError("minitask.signals has no %s: minitask never sends it (%s); see "
                         "the README's Signals section" % (name, reason))
