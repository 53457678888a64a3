"""Logging set-up shared by the command line, the worker and `Task.get_logger()`.

Only `setup_logging` (called by cli.py and the worker's pool children) touches the root
logger, which it takes over. Task loggers write their own lines, each naming the task and its
id, to the file the task's `logfile` names (the worker's, when run there) and do not
propagate, so a line is never written twice.

Celery's logging signals, as Celery sends them: once the modules that may connect them are
imported (`send_logging_signals`), a `setup_logging` receiver takes logging over (minitask's
set-up is undone, and task loggers then only propagate to what the receivers set up); else
`after_setup_logger` gets the root logger, and `after_setup_task_logger` each task's logger
as it is first set up.
"""

import logging
import sys
import threading
import time

__all__ = ["setup_logging", "send_logging_signals", "task_logger", "get_task_logger",
           "Throttle", "folded", "FORMAT", "TASK_FORMAT"]

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
TASK_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s] "
               "%(task_name)s[%(task_id)s]: %(message)s")

# The parent of `get_task_logger`'s loggers: task lines, each naming the running task.
TASKS_LOGGER = "minitask.task"

_handlers = {}                  # (logfile or None, format) -> shared handler
_lock = threading.Lock()


class _RunningTask(logging.Filter):
    """Names the task running in this thread on a record that does not name one already
    (a `get_task_logger` logger's; `get_logger`'s adapter names its own), as Celery's
    TaskFormatter does: ``???`` outside a task."""

    def filter(self, record):
        if not hasattr(record, "task_id"):
            from .task import current_request
            request = current_request()
            record.task_name = (request.name if request else None) or "???"
            record.task_id = (request.id if request else None) or "???"
        return True


def _handler(logfile, fmt):
    key = (logfile, fmt)
    with _lock:
        handler = _handlers.get(key)
        if handler is None:
            if logfile:
                handler = logging.FileHandler(logfile, encoding="utf-8")
            else:
                handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(fmt))
            if fmt == TASK_FORMAT:
                handler.addFilter(_RunningTask())
            _handlers[key] = handler
        return handler


def _drop_ours(logger):
    """Remove the handlers minitask put on `logger` (a receiver's or a project's stay)."""
    for handler in [h for h in logger.handlers if h in _handlers.values()]:
        logger.removeHandler(handler)


def get_task_logger(name):
    """Celery's ``get_task_logger(__name__)``: a logger for a tasks module. In a worker its
    lines go to the worker's log, each naming the task running (``???`` outside one), and
    not to the root logger as well; elsewhere they reach the root logger as any module's."""
    if name in (TASKS_LOGGER, "minitask.tasks"):
        raise ValueError("logger name %r is reserved for minitask's task loggers" % name)
    logger = logging.getLogger(name)
    logger.parent = logging.getLogger(TASKS_LOGGER)
    return logger


def level_of(loglevel, default=logging.WARNING):
    if loglevel is None:
        return default
    if isinstance(loglevel, int):
        return loglevel
    level = logging.getLevelName(str(loglevel).upper())
    return level if isinstance(level, int) else default


def setup_logging(loglevel="WARNING", logfile=None, take_over=True):
    """Send the process's log lines to `logfile` (stderr when None) at `loglevel`.

    As Celery's worker (``worker_hijack_root_logger``), the root logger is taken over: any
    other handler on it goes, so that no line is written twice (with `take_over` False,
    only minitask's own earlier ones). minitask's own loggers are enabled again, in case a
    ``dictConfig`` with ``disable_existing_loggers`` (a Django project's LOGGING, applied by
    ``django.setup()`` first) silenced them. Handlers added after this call stay."""
    root = logging.getLogger()
    handler = _handler(logfile, FORMAT)
    for old in [h for h in root.handlers if h is not handler
                and (take_over or h in _handlers.values())]:
        root.removeHandler(old)
    if handler not in root.handlers:
        root.addHandler(handler)
    root.setLevel(level_of(loglevel))
    tasks = logging.getLogger(TASKS_LOGGER)
    task_handler = _handler(logfile, TASK_FORMAT)
    _drop_ours(tasks)
    tasks.addHandler(task_handler)
    tasks.propagate = False
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name == "minitask" or name.startswith("minitask.")) \
                and isinstance(logger, logging.Logger):
            logger.disabled = False
    return root


def send_logging_signals(loglevel="WARNING", logfile=None):
    """Celery's `setup_logging` or `after_setup_logger`, once the modules that may connect
    them are imported (after `setup_logging`, so that their import errors were logged).
    With a `setup_logging` receiver, minitask's root handler goes: the receivers set logging
    up (a dictConfig, say), as with Celery."""
    from . import signals
    level = level_of(loglevel)
    if signals.setup_logging.receivers:
        _drop_ours(logging.getLogger())
        _drop_ours(logging.getLogger(TASKS_LOGGER))
        logging.getLogger(TASKS_LOGGER).propagate = True
        signals.setup_logging.send(None, loglevel=level, logfile=logfile, format=FORMAT,
                                   colorize=False)
        return
    if signals.after_setup_logger.receivers:
        signals.after_setup_logger.send(None, logger=logging.getLogger(), loglevel=level,
                                        logfile=logfile, format=FORMAT, colorize=False)
    if signals.after_setup_task_logger.receivers:
        signals.after_setup_task_logger.send(None, logger=logging.getLogger(TASKS_LOGGER),
                                             loglevel=level, logfile=logfile,
                                             format=TASK_FORMAT, colorize=False)


def task_logger(task_name, task_id, logfile=None, loglevel=None):
    """A logger adapter for one task run: `logfile` at `loglevel`, task name and id on each line."""
    from . import signals
    logger = logging.getLogger("minitask.tasks.%s" % task_name)
    extra = {"task_name": task_name, "task_id": task_id or "-"}
    if signals.setup_logging.receivers:     # theirs: it propagates to what they set up
        _drop_ours(logger)
        logger.propagate = True
        return logging.LoggerAdapter(logger, extra)
    handler = _handler(logfile, TASK_FORMAT)
    level = level_of(loglevel)
    logger.setLevel(level)
    logger.propagate = False
    if handler not in logger.handlers:
        _drop_ours(logger)
        logger.addHandler(handler)
        if signals.after_setup_task_logger.receivers:
            signals.after_setup_task_logger.send(None, logger=logger, loglevel=level,
                                                 logfile=logfile, format=TASK_FORMAT,
                                                 colorize=False)
    return logging.LoggerAdapter(logger, extra)


class Throttle:
    """At most one log line per reason per `interval` seconds; counts what it folded.

    A fault that repeats on every loop turn (a full disk) would otherwise write thousands of
    lines a second. `allow(reason, amount)` returns None when the line is to be folded, else
    ``(lines, amount)``: how many lines, and how much of `amount`, were folded since the last
    line logged for that reason (``(0, 0)`` the first time).
    """

    def __init__(self, interval=10.0, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last = {}                 # reason -> [time logged, lines folded, amount folded]
        self._lock = threading.Lock()   # the journal's fsync thread uses it too

    def allow(self, reason, amount=0):
        now = self.clock()
        with self._lock:
            entry = self._last.get(reason)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                entry[2] += amount
                return None
            self._last[reason] = [now, 0, 0]
            return (entry[1], entry[2]) if entry is not None else (0, 0)


def folded(counts, what=""):
    """" (and N more like it[: M what])" for a line that `Throttle.allow` let through."""
    lines, amount = counts
    if not lines:
        return ""
    if what:
        return " (and %d more like it: %d %s)" % (lines, amount, what)
    return " (and %d more like it)" % lines
