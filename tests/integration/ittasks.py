"""Tasks the integration tests send to real workers (imported by them with ``-I ittasks``).

Tasks that must leave a trace across processes append one line to a file in the test's
temporary folder (``ITTASKS_DIR``): appends of a short line are atomic, so the tests can count
runs even when pool processes die.
"""

import hashlib
import os
import signal
import time

from minitask import Task, task
from minitask.exceptions import SoftTimeLimitExceeded


def _trace(name, line):
    path = os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "trace-%s.log" % name)
    with open(path, "a") as handle:
        handle.write("%s\n" % line)


def read_trace(directory, name):
    path = os.path.join(str(directory), "trace-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]


@task(name="it.add")
def add(x, y):
    return x + y


@task(name="it.echo")
def echo(value):
    return value


@task(name="it.mul", acks_late=True)
def mul(x, y):
    return x * y


@task(name="it.fail")
def fail(message="boom"):
    raise ValueError(message)


@task(name="it.sleep")
def sleep(seconds, tag=""):
    if tag:
        _trace(tag, "start")
    time.sleep(seconds)
    if tag:
        _trace(tag, "end")
    return seconds


@task(name="it.progress", bind=True)
def progress(self, tag, total):
    """Celery's progress idiom: one PROGRESS state per step; each step waits until the test
    has seen it (the test writes "seen N" into the task's trace)."""
    for done in range(1, total + 1):
        self.update_state(state="PROGRESS", meta={"current": done, "total": total})
        deadline = time.monotonic() + 20
        while "seen %d" % done not in read_trace(os.environ["ITTASKS_DIR"], tag):
            if time.monotonic() > deadline:
                raise RuntimeError("the test did not see step %d" % done)
            time.sleep(0.01)
    return total


class Point:
    """A value only pickle carries."""

    def __init__(self, x, y):
        self.x, self.y = x, y


@task(name="it.report", bind=True)
def report(self, steps, meta=None):
    for done in range(1, steps + 1):
        self.update_state(state="PROGRESS",
                          meta={"current": done, "total": steps} if meta is None else meta)
    return steps


@task(name="it.crunch")
def crunch(tag=""):
    """Minutes in one call into C that checks no signal (a stuck C extension)."""
    _trace(tag, "start")
    hashlib.pbkdf2_hmac("sha256", b"minitask", b"salt", 10 ** 9)
    _trace(tag, "end")


@task(name="it.sleep_late", acks_late=True)
def sleep_late(seconds, tag=""):
    if tag:
        _trace(tag, "start")
    time.sleep(seconds)
    return seconds


@task(name="it.sleep_pid", acks_late=True)
def sleep_pid(seconds, tag):
    """Trace the pool process's pid, sleep, trace "end": whether a run outlived its worker."""
    _trace(tag, "pid %d" % os.getpid())
    time.sleep(seconds)
    _trace(tag, "end")


@task(name="it.record")
def record(tag, value):
    """Append `value` to the trace `tag` (order of execution across the worker)."""
    _trace(tag, value)
    return value


@task(name="it.record_late", acks_late=True)
def record_late(tag, value):
    _trace(tag, value)
    return value


@task(name="it.flaky", max_retries=5, default_retry_delay=0.1)
def flaky(tag, failures, use_exc=True, **kwargs):
    """Fail `failures` times (retrying each time), recording each run's task_retries."""
    retries = kwargs["task_retries"]
    _trace(tag, retries)
    if retries < failures:
        exc = KeyError("failure %d" % retries) if use_exc else None
        flaky.retry(args=[tag, failures, use_exc], kwargs=kwargs, exc=exc)
    return "done after %d" % retries


class PlannedRetry(Task):
    """A retry plan: fail `failures` times with `max_retries` and a countdown."""

    name = "it.planned_retry"
    max_retries = 3
    default_retry_delay = 0.05

    def run(self, tag, failures, max_retries, countdown=None, use_exc=True, task_retries=0):
        _trace(tag, task_retries)
        if task_retries < failures:
            exc = RuntimeError("planned failure %d" % task_retries) if use_exc else None
            self.retry(args=[tag, failures, max_retries, countdown, use_exc], exc=exc,
                       countdown=countdown, max_retries=max_retries)
        return task_retries


class RetryThenWait(Task):
    """Retries at once, then (in on_retry, before the worker hears of the RETRY) waits up to a
    second for the retry to run; the retry fails. A retry published before its RETRY is
    stored would run on the other pool process and store FAILURE first, which the RETRY
    would then overwrite for good."""

    name = "it.retry_then_wait"
    max_retries = 1

    def run(self, tag, task_retries=0):
        _trace(tag, task_retries)
        if task_retries == 0:
            self.retry(args=[tag], countdown=0)
        raise RuntimeError("the retry fails")

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        directory, tag = os.environ["ITTASKS_DIR"], args[0]
        deadline = time.monotonic() + 1.0
        while len(read_trace(directory, tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        _trace(tag + "-hook", len(read_trace(directory, tag)))


class CreateUserTask(Task):
    """The guide's first example."""

    def run(self, username, password):
        _trace("users", "%s:%s" % (username, password))
        return username


@task(name="it.kwargs_all")
def kwargs_all(**kwargs):
    return sorted(kwargs)


@task(name="it.kwargs_some")
def kwargs_some(x, task_id=None, task_retries=None):
    return {"x": x, "task_id": task_id, "task_retries": task_retries}


@task(name="it.kwargs_none")
def kwargs_none(x):
    return x


@task(name="it.log")
def log(x, y, **kwargs):
    logger = log.get_logger(**kwargs)
    logger.info("Adding %s + %s" % (x, y))
    return x + y


@task(name="it.exit")
def exit_now(code=3):
    os._exit(code)


@task(name="it.exit_late", acks_late=True, max_retries=0)
def exit_late(tag, times=1):
    """Dies (os._exit) the first `times` runs, then succeeds."""
    runs = len([1 for _ in open(os.path.join(os.environ["ITTASKS_DIR"], "trace-%s.log" % tag))]) \
        if os.path.exists(os.path.join(os.environ["ITTASKS_DIR"], "trace-%s.log" % tag)) else 0
    _trace(tag, "run")
    if runs < times:
        os._exit(1)
    return "survived"


@task(name="it.segfault")
def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


@task(name="it.hard_limit", time_limit=0.5)
def hard_limit(seconds):
    time.sleep(seconds)
    return "finished"


@task(name="it.soft_limit", soft_time_limit=0.3)
def soft_limit(seconds):
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@task(name="it.rate_limited", rate_limit="5/s")
def rate_limited(tag):
    _trace(tag, "%.6f" % time.time())
    return tag


@task(name="it.unlimited")
def unlimited(tag):
    _trace(tag, "%.6f" % time.time())
    return tag


@task(name="it.when")
def when(tag):
    """Record when it ran (epoch seconds) to measure countdown lateness."""
    now = time.time()
    _trace(tag, "%.6f" % now)
    return now


@task(name="it.ignored", ignore_result=True)
def ignored(x):
    return x


@task(name="it.ignored_fail", ignore_result=True)
def ignored_fail():
    raise RuntimeError("failures are still stored")


@task(name="it.pid")
def pid():
    return os.getpid()


@task(name="it.subtask")
def subtask(x, y):
    """A task that sends another task from inside a pool process."""
    return add.delay(x, y).id


@task(name="it.priority", acks_late=True)
def priority_record(tag, value):
    _trace(tag, value)
    return value


@task(name="it.big")
def big(size):
    """A result of `size` bytes (and a little JSON)."""
    return "x" * size


@task(name="it.length")
def length(value):
    return len(value)


@task(name="it.big_retry", bind=True, max_retries=3)
def big_retry(self, size):
    """Retried once with a reason of `size` bytes (its tombstone), then done."""
    if self.request.retries == 0:
        raise self.retry(exc=ValueError("x" * size), countdown=0.1)
    return "ok after a retry"


@task(name="it.retry_too_big", bind=True, max_retries=3)
def retry_too_big(self, size):
    """Retries with an argument of `size` bytes: a retry too big for the broker to take."""
    if isinstance(size, int):
        raise self.retry(args=["x" * size], countdown=0)
    return "never: the retry cannot be sent"


@task(name="it.slow_big")
def slow_big(seconds, size, tag):
    _trace(tag, "start")
    time.sleep(seconds)
    return "x" * size
