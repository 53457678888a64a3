"""Every exception minitask raises, under one base class, `MinitaskError`.

Callers catch `MinitaskError` for "anything minitask refused or could not do"; the command line
prints such errors as one line and never as a traceback. A task's own exceptions are not wrapped:
they travel back to the caller as data (see `minitask.serialization`) and are raised again there.
"""

__all__ = [
    "MinitaskError", "RetryTaskError", "MaxRetriesExceededError", "MaxRetriesExceeded",
    "NotRegistered", "TimeoutError", "UnroutableError", "NotDeliverableError",
    "PublishRefusedError", "BrokerFullError", "ContentDisallowed", "SerializationError", "ConfigurationError",
    "WorkerLostError", "TaskRevokedError", "TimeLimitExceeded", "SoftTimeLimitExceeded",
    "RemoteTaskError", "BrokerConnectionError", "AuthenticationError", "ProtocolError",
    "BrokerError", "ReplyError", "PoolStartupError", "ChordError", "DeadLetteredError",
    "Ignore", "Reject",
]


class MinitaskError(Exception):
    """Raised for anything minitask refuses or cannot do; the base of every class here."""


class RetryTaskError(MinitaskError):
    """Raised by `Task.retry()` to end the current run once the retry has been sent."""

    def __init__(self, message=None, exc=None, countdown=None):
        self.exc = exc
        self.countdown = countdown
        self.when = countdown           # Celery's name for it
        if message is None:
            message = "Retry in %ss" % (countdown,) if countdown is not None else "Retry"
            if exc is not None:
                message += ": %r" % (exc,)
        super().__init__(message)


class MaxRetriesExceededError(MinitaskError):
    """Raised by `Task.retry()` when the task has already been retried `max_retries` times."""


MaxRetriesExceeded = MaxRetriesExceededError   # the name early Celery used


class Ignore(MinitaskError):
    """Raised by a task to end its run with nothing recorded, as Celery's: the message is
    acked, no state is stored over what the task reported itself (``update_state``), and
    nothing it would unlock is sent (callbacks, errbacks, the rest of a chain)."""


class Reject(MinitaskError):
    """Raised by a task to reject its message, as Celery's: with ``acks_late``, the message
    goes back to its queue (``requeue=True``: beware of a loop; ``max_redeliveries`` ends
    one) or is dead-lettered, or dropped with the task a FAILURE (DeadLetteredError) when
    its queue has no dead-letter queue. Nothing is stored and nothing it would unlock is
    sent. A task acked as it started (acks_late off) has no message left to reject: then it
    is as Ignore."""

    def __init__(self, reason=None, requeue=False):
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __str__(self):
        return "%s%s" % (self.reason if self.reason is not None else "rejected",
                         " (requeued)" if self.requeue else "")


class NotRegistered(MinitaskError, KeyError):
    """Raised when a task name is not in the registry."""

    def __str__(self):
        # KeyError quotes its argument; the message reads better without the quotes.
        return str(self.args[0]) if self.args else "task not registered"


class TimeoutError(MinitaskError):   # noqa: A001 - the name the guide uses
    """Raised when waiting for a result takes longer than the timeout given."""


class UnroutableError(MinitaskError):
    """Raised when a `mandatory` message matched no queue."""


class NotDeliverableError(MinitaskError):
    """Raised when an `immediate` message found no consumer able to take it at once."""


class PublishRefusedError(MinitaskError):
    """Raised when the broker refuses a message: queue full, disk trouble, message too big."""


class BrokerFullError(PublishRefusedError):
    """The broker has no room for it now: a queue at its max_length, a journal it cannot
    write (disk full), Redis at maxmemory. Nothing of it was taken; the same may succeed
    later (a worker storing a result tries again, with backoff)."""


class ContentDisallowed(MinitaskError):
    """Raised when a message's content type is not in `ACCEPT_CONTENT`."""


class SerializationError(MinitaskError):
    """Raised when a value cannot be encoded, or a body cannot be decoded."""


class ConfigurationError(MinitaskError):
    """Raised when a setting, option or command-line value is malformed."""


class WorkerLostError(MinitaskError):
    """Raised (as a task's result) when the process running the task died before it finished."""


class PoolStartupError(MinitaskError):
    """Raised by a worker that stops because its pool processes failed to start too often."""


class TaskRevokedError(MinitaskError):
    """Raised (as a task's result) when the task was revoked or expired before it ran."""


class DeadLetteredError(MinitaskError):
    """Raised (as a task's result) when the broker gave up on the task's message: rejected
    without requeue, or delivered more times than its queue's ``max_redeliveries`` (a task
    that kills its worker each time). It is in the dead-letter queue, or gone."""


class ChordError(MinitaskError):
    """Raised (as a chord's result) when a task of its header failed, so its body never ran."""


class TimeLimitExceeded(MinitaskError):
    """Raised (as a task's result) when a task ran past its hard `time_limit` and was killed."""


class SoftTimeLimitExceeded(MinitaskError):
    """Raised inside a task when it runs past its `soft_time_limit`; the task may clean up."""


class RemoteTaskError(MinitaskError):
    """Raised by `AsyncResult.get()` for a task exception whose class is not importable here.

    Carries what the worker saw: `type_name` (e.g. ``"myapp.errors.QuotaError"``), the message
    and the remote traceback text.
    """

    def __init__(self, type_name, message="", traceback_text=None):
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__("%s: %s" % (type_name, message) if message else type_name)

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback_text))


class BrokerConnectionError(MinitaskError):
    """Raised when the broker cannot be reached or the connection to it was lost."""


class AuthenticationError(BrokerConnectionError):
    """Raised when the broker refuses the handshake: wrong or missing secret."""


class ProtocolError(MinitaskError):
    """Raised when a peer sends bytes that break the wire protocol; that connection is closed.

    `code` is the protocol's error code to answer with when it is not the usual 400 (413 for
    a frame over the size limit); None means 400.
    """

    def __init__(self, message="", code=None):
        self.code = code
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.code))


class BrokerError(MinitaskError):
    """Raised when the broker answers a command with an error that has no more specific class.

    `code` is the protocol's numeric error code (404 no such queue, 406 precondition...).
    """

    def __init__(self, message="", code=500):
        self.code = code
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.code))


class ReplyError(BrokerError):
    """Raised when Redis or Valkey answers a command with an error reply.

    Also a value: a pipeline returns it in place of that command's reply, since the other
    commands ran. `prefix` is the error's first word (``NOSCRIPT``, ``LOADING``, ``READONLY``,
    ``BUSYGROUP``, ``WRONGTYPE``, ``ERR``...), which is what a caller acts on.
    """

    def __init__(self, message=""):
        self.prefix = message.split(" ", 1)[0]
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self),))
