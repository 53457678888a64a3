"""The tasks of Celery's "Using Redis" guide (docs/getting-started/backends-and-brokers/
redis.rst), for test_redisidioms.py. The guide shows settings, not tasks: these are the tasks
its caveats talk about (an ETA/countdown task, a retry, a long ``acks_late`` task, a group
and a chord), written as a Celery user writes them (``@app.task`` is ``@shared_task`` here).

A task that must tell the test what it saw traces it to ITTASKS_DIR/trace-<tag>.log (see
ittasks._trace): the test, in another process, counts the runs there.
"""

import os
import time

from minitask import shared_task

from ittasks import _trace


@shared_task
def add(x, y):
    return x + y


@shared_task
def slow_add(x, y, delay):
    time.sleep(delay)
    return x + y


@shared_task
def collect(results):
    """A chord body: the header's results, as it got them."""
    return results


@shared_task(bind=True)
def remind(self, tag):
    """An ETA/countdown task: one line per run (when, whether redelivered)."""
    info = self.request.delivery_info or {}
    _trace(tag, "%.6f|%s" % (time.time(), info.get("redelivered")))
    return time.time()


@shared_task(bind=True, max_retries=1)
def poll_later(self, tag):
    """Retries once, "not before" a countdown longer than the visibility timeout."""
    _trace(tag, "run %d" % self.request.retries)
    if self.request.retries == 0:
        raise self.retry(countdown=1.5)
    return self.request.retries


@shared_task(bind=True, acks_late=True)
def long_task(self, tag, seconds):
    """Runs longer than the visibility timeout, acknowledged only when it ends."""
    info = self.request.delivery_info or {}
    _trace(tag, "start %s %d %s" % (self.request.hostname, os.getpid(),
                                    info.get("redelivered")))
    time.sleep(seconds)
    _trace(tag, "end")
    return seconds


@shared_task
def record(tag, value):
    """The order the worker ran things in."""
    _trace(tag, value)
    return value
