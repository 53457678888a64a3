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

import logging

__all__ = [
    "Signal", "before_task_publish", "after_task_publish", "task_prerun", "task_postrun",
    "task_success", "task_failure", "task_retry", "task_received", "task_revoked",
    "worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown",
    "worker_process_init", "worker_process_shutdown",
]

logger = logging.getLogger(__name__)


class Signal:
    """Receivers to call when something happens; `send()` calls those that match."""

    def __init__(self, name, providing_args=()):
        self.name = name
        self.providing_args = frozenset(providing_args)
        self.receivers = []             # (key, receiver, sender); empty: nothing to do

    def __repr__(self):
        return "<Signal %s>" % self.name

    def connect(self, receiver=None, sender=None, weak=True, dispatch_uid=None):
        """Connect `receiver`; as a decorator, bare or with arguments. A receiver connected
        again (or under a `dispatch_uid` already used) for the same sender is not added
        twice."""
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender, weak=weak,
                                           dispatch_uid=dispatch_uid)
        if not callable(receiver):
            raise TypeError("signal %s: a receiver must be callable, not %r"
                            % (self.name, receiver))
        key = (dispatch_uid if dispatch_uid is not None else id(receiver), _sender_key(sender))
        if not any(existing == key for existing, _r, _s in self.receivers):
            self.receivers = self.receivers + [(key, receiver, sender)]
        return receiver

    def disconnect(self, receiver=None, sender=None, dispatch_uid=None):
        """Disconnect a receiver; True when one was connected."""
        key = (dispatch_uid if dispatch_uid is not None else id(receiver), _sender_key(sender))
        kept = [entry for entry in self.receivers if entry[0] != key]
        found = len(kept) != len(self.receivers)
        self.receivers = kept
        return found

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


def _sender_key(sender):
    return None if sender is None else (sender if isinstance(sender, str) else id(sender))


def _matches(wanted, sender):
    """A receiver connected for a task gets its signals whether it named the task object
    or its name (Celery matches by identity only, which surprises users of names)."""
    if wanted is sender or wanted == sender:
        return True
    name = getattr(sender, "name", None) if not isinstance(sender, str) else sender
    wanted_name = wanted if isinstance(wanted, str) else getattr(wanted, "name", None)
    return name is not None and name == wanted_name


def _name(receiver):
    module = getattr(receiver, "__module__", None)
    name = getattr(receiver, "__qualname__", None) or repr(receiver)
    return "%s.%s" % (module, name) if module else name


# -- the signals --------------------------------------------------------------------------------
# In the process that sends a task (sender: the task's name).
before_task_publish = Signal("before_task_publish", (
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"))
after_task_publish = Signal("after_task_publish", ("body", "exchange", "routing_key", "headers"))

# Where a task runs: a worker's pool process, or the caller's for apply() and eager calls
# (sender: the task).
task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
task_postrun = Signal("task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state"))
task_success = Signal("task_success", ("result", "runtime"))
task_failure = Signal("task_failure", (
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"))
task_retry = Signal("task_retry", ("request", "reason", "einfo"))

# A worker's main process: a task it took (sender: its consumer), one it revoked or found
# expired before it started, or terminated (sender: the task).
task_received = Signal("task_received", ("request",))
task_revoked = Signal("task_revoked", ("request", "terminated", "signum", "expired"))

# A worker's main process (sender: its hostname).
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down", ("sig", "how", "exitcode"))
worker_shutdown = Signal("worker_shutdown")

# Each pool process (sender: None).
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", ("pid", "exitcode"))
