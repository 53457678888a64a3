"""minitask: early Celery's task model on a broker written in the standard library alone.

    from minitask import task

    @task()
    def add(x, y):
        return x + y

    add.delay(2, 2).get()     # with `python -m minitask broker` and `... worker -I <module>`

Public names are re-exported here; see the README for the guide.
"""

__version__ = "0.1.0"

from .exceptions import (  # noqa: E402  (the version is read by the modules below)
    MinitaskError, RetryTaskError, MaxRetriesExceededError, MaxRetriesExceeded, NotRegistered,
    TimeoutError, UnroutableError, NotDeliverableError, PublishRefusedError, BrokerFullError,
    ContentDisallowed, SerializationError, ConfigurationError, WorkerLostError, TaskRevokedError,
    TimeLimitExceeded, SoftTimeLimitExceeded, RemoteTaskError, BrokerConnectionError,
    AuthenticationError, ProtocolError, ChordError, DeadLetteredError,
)
from . import registry  # noqa: E402
from .task import Task, TaskType, PeriodicTask  # noqa: E402
from .sending import send_task  # noqa: E402
from .decorators import task, shared_task, periodic_task  # noqa: E402
from .result import AsyncResult, EagerResult, ResultSet, GroupResult  # noqa: E402
from .canvas import (  # noqa: E402
    Signature, signature, maybe_signature, subtask, chain, group, chord, chunks, xmap, xstarmap,
)
from .schedules import crontab, schedule  # noqa: E402
from .config import configure, get_settings  # noqa: E402
from . import builtins as _builtins  # noqa: E402,F401  (registers the built-in tasks)

__all__ = [
    "__version__", "Task", "TaskType", "PeriodicTask", "registry", "task", "shared_task",
    "periodic_task", "send_task", "crontab", "schedule", "AsyncResult", "EagerResult",
    "ResultSet", "GroupResult", "Signature", "signature", "maybe_signature", "subtask",
    "chain", "group", "chord", "chunks", "xmap", "xstarmap", "configure",
    "get_settings", "MinitaskError", "RetryTaskError", "MaxRetriesExceededError",
    "MaxRetriesExceeded", "NotRegistered", "TimeoutError", "UnroutableError",
    "NotDeliverableError", "PublishRefusedError", "BrokerFullError", "ContentDisallowed",
    "SerializationError", "ConfigurationError", "WorkerLostError", "TaskRevokedError", "TimeLimitExceeded",
    "SoftTimeLimitExceeded", "RemoteTaskError", "BrokerConnectionError",
    "AuthenticationError", "ProtocolError", "ChordError", "DeadLetteredError",
]
