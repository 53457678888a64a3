"""The tasks of Celery's "Workers Guide" (docs/userguide/workers.rst, Celery 5), written as the
guide writes them (``@app.task`` is ``@shared_task`` here, ``celery.exceptions`` is
``minitask.exceptions``), for test_workeridioms.py.

Where the guide's task only does something, it also traces it to ITTASKS_DIR/trace-<name>.log
(see ittasks._trace) so that the test, in another process, can tell what happened and when.
"""

import os
import time

from minitask import shared_task
from minitask.exceptions import SoftTimeLimitExceeded

from ittasks import _trace


@shared_task
def add(x, y):
    return x + y


@shared_task
def sleeptask(i):
    """The guide's ``tasks.sleeptask`` of ``i.active()``: ``'args': '(8,)'``."""
    _trace("sleeptask", "start %s %d" % (i, os.getpid()))
    time.sleep(i)
    _trace("sleeptask", "end %s" % (i,))
    return i


@shared_task
def pid():
    """Which pool process ran it (``--max-tasks-per-child``, ``--concurrency``)."""
    return os.getpid()


# -- Time Limits: "this raises an exception the task can catch to clean up before the hard
# time limit kills it". The guide gives the limits on the command line (--soft-time-limit),
# which minitask refuses for @task(soft_time_limit=...) (README, "Celery's command lines").

def do_work():
    _trace("mytask", "working %d" % os.getpid())
    time.sleep(30)


def clean_up_in_a_hurry():
    _trace("mytask", "cleaned up")


@shared_task(soft_time_limit=0.3, time_limit=5)
def mytask():
    try:
        do_work()
    except SoftTimeLimitExceeded:
        clean_up_in_a_hurry()


@shared_task(soft_time_limit=0.3, time_limit=0.8)
def stuck():
    """A task that swallows the soft limit and goes on: the hard limit kills its process."""
    _trace("stuck", "start %d" % os.getpid())
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        _trace("stuck", "soft")
        time.sleep(30)
