"""Celery's documented retry idioms, written as a Celery user pastes them (``bind=True``,
``raise self.retry(...)``, ``autoretry_for`` ...), for test_retry_idioms.py.

Every task traces what each run saw to ITTASKS_DIR/trace-<tag>.log (one line per event; see
ittasks._trace). The signal receivers at the bottom trace too, saying which process sent the
signal ("worker" in a pool process, "client" elsewhere).
"""

import os
import time

from minitask import Task, task
from minitask.exceptions import RetryTaskError
from minitask.signals import after_task_publish, before_task_publish, task_retry

from ittasks import _trace, read_trace


def _where():
    return "worker" if os.environ.get("MINITASK_WORKER_HOSTNAME") else "client"


# -- retry(countdown=0) ----------------------------------------------------------------------

@task(bind=True, name="ri.countdown_zero", max_retries=5)
def countdown_zero(self, tag, failures, fail_at_end=False):
    """Retry at once `failures` times, then return (or raise, with fail_at_end)."""
    _trace(tag, self.request.retries)
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    if fail_at_end:
        raise ValueError("failed after %d retries" % self.request.retries)
    return self.request.retries


# -- autoretry_for, retry_backoff, retry_jitter ----------------------------------------------

@task(bind=True, name="ri.backoff", autoretry_for=(ConnectionError,), retry_backoff=True,
      retry_jitter=False, retry_kwargs={"max_retries": 2})
def backoff(self, tag, failures):
    """Celery's guide: an exception in autoretry_for retries with an exponential backoff
    (1 s, then 2 s without jitter); past max_retries the original exception is raised."""
    _trace(tag, "%d %.6f" % (self.request.retries, time.time()))
    if self.request.retries < failures:
        raise ConnectionError("refused, run %d" % self.request.retries)
    return "connected after %d retries" % self.request.retries


@task(bind=True, name="ri.jitter", autoretry_for=(ConnectionResetError,), retry_backoff=True,
      retry_backoff_max=2, max_retries=3)
def jitter(self, tag):
    """Always fails: backoff capped at 2 s, with (default) full jitter."""
    _trace(tag, "%d %.6f" % (self.request.retries, time.time()))
    raise ConnectionResetError("reset, run %d" % self.request.retries)


@task(bind=True, name="ri.not_retried", autoretry_for=(LookupError,),
      dont_autoretry_for=(KeyError,), retry_kwargs={"max_retries": 3, "countdown": 0})
def not_retried(self, tag, exc_name):
    _trace(tag, self.request.retries)
    raise {"KeyError": KeyError, "IndexError": IndexError}[exc_name](exc_name)


# -- max_retries -----------------------------------------------------------------------------

@task(bind=True, name="ri.give_up", max_retries=2)
def give_up(self, tag, with_exc=True):
    """Always fails; retries with exc=exc as Celery's guide does."""
    _trace(tag, self.request.retries)
    try:
        raise OSError("disk on fire, run %d" % self.request.retries)
    except OSError as exc:
        if with_exc:
            raise self.retry(exc=exc, countdown=0)
        raise self.retry(countdown=0)


@task(bind=True, name="ri.override_max", max_retries=10)
def override_max(self, tag):
    """retry(max_retries=1) overrides the task's 10."""
    _trace(tag, self.request.retries)
    raise self.retry(exc=ArithmeticError("run %d" % self.request.retries), countdown=0,
                     max_retries=1)


@task(bind=True, name="ri.forever", max_retries=None)
def forever(self, tag, failures):
    """max_retries=None: retries for ever (here: 6 times, twice the default 3)."""
    _trace(tag, self.request.retries)
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return self.request.retries


# -- retry options: eta, args, queue ---------------------------------------------------------

@task(bind=True, name="ri.eta")
def eta(self, tag, seconds):
    import datetime
    now = time.time()
    _trace(tag, "%d %.6f" % (self.request.retries, now))
    if self.request.retries == 0:
        raise self.retry(eta=datetime.datetime.now(datetime.timezone.utc)
                         + datetime.timedelta(seconds=seconds))
    return now


@task(bind=True, name="ri.new_args")
def new_args(self, tag, attempt, history=()):
    """retry(args=...) with arguments of its own; kwargs kept."""
    _trace(tag, "%d %d" % (self.request.retries, attempt))
    if attempt < 2:
        raise self.retry(args=[tag, attempt + 1], kwargs={"history": list(history) + [attempt]},
                         countdown=0)
    return {"attempt": attempt, "history": list(history), "retries": self.request.retries}


@task(bind=True, name="ri.to_queue")
def to_queue(self, tag, queue):
    """The first run retries to `queue`; each run traces the worker it ran on."""
    _trace(tag, "%d %s %s" % (self.request.retries, self.request.hostname,
                              self.request.delivery_info["routing_key"]))
    if self.request.retries == 0:
        raise self.retry(queue=queue, countdown=0)
    return self.request.hostname


# -- workflows -------------------------------------------------------------------------------

@task(bind=True, name="ri.flaky_link", max_retries=3)
def flaky_link(self, value, tag, failures):
    """A chain link that retries `failures` times, then passes value + 1 on."""
    _trace(tag, "%d %r" % (self.request.retries, value))
    if self.request.retries < failures:
        raise self.retry(countdown=0, exc=RuntimeError("link not ready"))
    return value + 1


@task(bind=True, name="ri.flaky_first", max_retries=3)
def flaky_first(self, tag, failures):
    _trace(tag, self.request.retries)
    if self.request.retries < failures:
        raise self.retry(countdown=0, exc=RuntimeError("first not ready"))
    return 10


@task(bind=True, name="ri.flaky_sum", max_retries=3)
def flaky_sum(self, values, tag, failures):
    """A chord body that retries `failures` times (its header's values kept), then sums."""
    _trace(tag, "%d %s" % (self.request.retries, sum(values)))
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return sum(values)


@task(name="ri.record")
def record(value, tag):
    _trace(tag, repr(value))
    return value


@task(name="ri.errback")
def errback(task_id, tag):
    _trace(tag, task_id)
    return task_id


# -- catching Retry --------------------------------------------------------------------------

@task(bind=True, name="ri.swallow", max_retries=3)
def swallow(self, tag):
    """The first run calls retry() but catches the Retry and returns; the retry it sent
    runs all the same (as in Celery) and returns something else."""
    _trace(tag, self.request.retries)
    if self.request.retries == 0:
        try:
            raise self.retry(countdown=0)
        except RetryTaskError:
            return "swallowed"
    return "retried anyway"


# -- hooks and signals -----------------------------------------------------------------------

class HookedTask(Task):
    """Celery's on_retry hook: called in the pool process with the tombstone."""

    name = "ri.hooked"
    max_retries = 2

    def run(self, tag, failures):
        _trace(tag, self.request.retries)
        if self.request.retries < failures:
            raise self.retry(exc=KeyError("hooked %d" % self.request.retries), countdown=0)
        return "hooked done"

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        _trace(args[0] + "-hook", "on_retry %s %s %s %s" % (
            type(exc).__name__, task_id, args[0], type(einfo.exception).__name__))


@task(bind=True, name="ri.signalled", max_retries=2)
def signalled(self, tag):
    _trace(tag, self.request.retries)
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("signalled"), countdown=0)
    return "signalled done"


@task_retry.connect
def on_task_retry(sender=None, request=None, reason=None, einfo=None, **kwargs):
    _trace("signals", "task_retry %s %s %s %d %s %s %s" % (
        _where(), sender.name, request.id, request.retries, type(reason).__name__,
        type(getattr(reason, "exc", None)).__name__, getattr(reason, "when", None)))


@before_task_publish.connect
def on_before_publish(sender=None, body=None, headers=None, routing_key=None, **kwargs):
    _trace("signals", "before_task_publish %s %s %s %s %s" % (
        _where(), sender, headers["id"], headers["retries"], body["args"] and
        repr(body["args"][0]).replace(" ", "")))


@after_task_publish.connect
def on_after_publish(sender=None, body=None, headers=None, **kwargs):
    _trace("signals", "after_task_publish %s %s %s %s" % (
        _where(), sender, headers["id"], headers["retries"]))


# -- acks_late and a worker killed between retries -------------------------------------------

@task(bind=True, name="ri.late", acks_late=True, max_retries=3)
def late(self, tag, pause_at, countdown=0.0):
    """Runs twice (one retry). The run whose ``retries`` is `pause_at` waits (after tracing
    "wait N") for the test to kill the worker; with `pause_at` "hook" it is the on_retry of
    the first run that waits, after retry() was called and before the worker heard of it."""
    _trace(tag, "run %d" % self.request.retries)
    if str(self.request.retries) == str(pause_at):
        _wait_for_kill(tag, self.request.retries)
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return "late done"


def _wait_for_kill(tag, retries):
    _trace(tag, "wait %s" % retries)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "killed" not in read_trace(
            os.environ["ITTASKS_DIR"], tag):
        time.sleep(0.02)


class LateHooked(Task):
    name = "ri.late_hooked"
    acks_late = True
    max_retries = 3

    def run(self, tag, countdown=0.0):
        _trace(tag, "run %d" % self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=countdown)
        return "late hooked done"

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        tag = args[0]
        if "killed" not in read_trace(os.environ["ITTASKS_DIR"], tag):
            _wait_for_kill(tag, "hook")


# -- a retry that cannot be delivered, or not in time ----------------------------------------

@task(bind=True, name="ri.expiring")
def expiring(self, tag, countdown, expires=None):
    """Retries once with `countdown`; with `expires`, the retry's own expiry."""
    _trace(tag, self.request.retries)
    if self.request.retries == 0:
        raise self.retry(countdown=countdown, expires=expires)
    return "ran after its expiry"


@task(bind=True, name="ri.unroutable")
def unroutable(self, tag, how):
    """Retries where no queue is bound: with mandatory=True, or to an unknown exchange."""
    _trace(tag, self.request.retries)
    if self.request.retries == 0:
        if how == "mandatory":
            raise self.retry(countdown=0, routing_key="nowhere-" + tag, mandatory=True)
        raise self.retry(countdown=0, exchange="no-such-exchange-" + tag)
    return "delivered after all"
