"""The tasks of Celery's "Optimizing" user guide (docs/userguide/optimizing.rst, Celery 5), for
test_optidioms.py: ``proj.tasks.add`` of its task_routes example, the "many tasks with a long
duration" and "many short-running tasks" it sizes the prefetch for, and a task whose result is
not wanted. ``@app.task`` is ``@shared_task`` here.

A long task runs until the test lets it go (it polls for ITTASKS_DIR/go-<tag>, a file the
test writes), so that the tests look at what a worker holds *while* it runs without guessing
how long that is; each task returns where it ran (the worker's name and the pool process), and
traces its start (ittasks._trace) for the test, in another process, to wait on.
"""

import os
import time

from minitask import shared_task

from ittasks import _trace


def _go(tag):
    return os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "go-%s" % tag)


def let_go(directory, tag):
    """What the test calls: the long task `tag` may end now."""
    with open(os.path.join(str(directory), "go-%s" % tag), "w"):
        pass


@shared_task
def add(x, y):
    return x + y


@shared_task(bind=True)
def long_task(self, tag):
    """A task with a long duration: it runs until the test lets it go (20 s at most)."""
    _trace(tag, "start %s %d" % (self.request.hostname, os.getpid()))
    deadline = time.monotonic() + 20
    while not os.path.exists(_go(tag)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [self.request.hostname, os.getpid()]


@shared_task(bind=True)
def short_task(self, i):
    """A short-running task: where it ran (traced too, for a test that counts its runs)."""
    _trace("short", "%d %s %d" % (i, self.request.hostname, os.getpid()))
    return [i, self.request.hostname, os.getpid()]


@shared_task(ignore_result=True)
def fire_and_forget(tag, i):
    """"If you don't care about the results of a task, be sure to set the ignore_result
    option, as storing results wastes time and resources." It traces that it ran."""
    _trace(tag, "ran %d" % i)
    return i


@shared_task
def leak(megabytes):
    """A task with a "high watermark": it grows its pool process by `megabytes` and keeps
    it, as a leak would."""
    leak.__dict__.setdefault("kept", []).append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()
