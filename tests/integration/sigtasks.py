"""A tasks module as a Celery user writes one with signal receivers (test_signals.py): each
receiver traces what it got to ITTASKS_DIR/trace-signals.log, one line each."""

import os

from minitask import task
from minitask.signals import (
    task_failure, task_postrun, task_prerun, task_received, task_revoked, worker_init,
    worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown,
    worker_shutting_down,
)

from ittasks import _trace


def trace(*words):
    _trace("signals", " ".join(str(word) for word in words))


@task(name="sig.mul")
def mul(x, y):
    return x * y


@task(name="sig.boom")
def boom():
    raise ValueError("boom")


@worker_init.connect
def on_worker_init(sender=None, **kwargs):
    trace("worker_init", sender.hostname, os.getpid())


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    trace("worker_ready", sender.hostname, os.getpid())


@worker_process_init.connect
def on_process_init(**kwargs):
    trace("process_init", os.getpid())


@task_prerun.connect
def on_prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **kwds):
    trace("prerun", task.name, task_id, list(args), os.getpid())


@task_postrun.connect
def on_postrun(sender=None, task_id=None, task=None, args=None, kwargs=None, retval=None,
               state=None, **kwds):
    trace("postrun", task.name, task_id, retval, state)


@task_failure.connect(sender=boom)
def on_failure(sender=None, task_id=None, exception=None, **kwargs):
    trace("failure", sender.name, task_id, type(exception).__name__, exception)


@task_received.connect
def on_received(sender=None, request=None, **kwargs):
    trace("received", request.task_id, request.task_name, request.task.name,
          list(request.args), os.getpid())


@task_revoked.connect
def on_revoked(sender=None, request=None, terminated=None, signum=None, expired=None,
               **kwargs):
    trace("revoked", sender.name, request.id, terminated, signum, expired)


@worker_shutting_down.connect
def on_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kwargs):
    trace("shutting_down", sender, sig, how, exitcode)


@worker_process_shutdown.connect
def on_process_shutdown(pid=None, exitcode=None, **kwargs):
    trace("process_shutdown", pid, exitcode)


@worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs):
    trace("worker_shutdown", sender.hostname)
