"""The tasks of Celery's "Calling Tasks" user guide, written as the guide writes them (``@app.task``
is ``@shared_task`` here, ``celery.result`` is ``minitask.result``), for test_callingidioms.py.

Where the guide's task prints what it saw, it also traces it to ITTASKS_DIR/trace-<tag>.log
(see ittasks._trace), so that the test, in another process, can read it. The guide's tasks
take no tag, so they trace under a fixed name ("error_handler", "on_error", ...) and the
tests, each in its own ITTASKS_DIR, read that.
"""

import time

from minitask import shared_task
from minitask.result import AsyncResult, allow_join_result

from ittasks import _trace


# -- Basics: "All examples use a task called add, returning the sum of two arguments" -------

@shared_task
def add(x, y):
    return x + y


@shared_task
def other_task(value):
    """The guide's `other_task` of ``link=[add.s(16), other_task.s()]``."""
    _trace("other_task", repr(value))
    return value


@shared_task
def with_kwargs(arg1, arg2, kwarg1=None, kwarg2=None):
    """The guide's ``task.delay(arg1, arg2, kwarg1='x', kwarg2='y')``."""
    return [arg1, arg2, kwarg1, kwarg2]


@shared_task(bind=True)
def when(self, tag):
    """Traces when it ran (time.time()), its eta and expires as the worker gave them, and
    where: ``time|eta|expires|hostname|exchange|routing_key|priority``."""
    info = self.request.delivery_info or {}
    _trace(tag, "%.6f|%s|%s|%s|%s|%s|%s" % (
        time.time(), self.request.eta, self.request.expires, self.request.hostname,
        info.get("exchange"), info.get("routing_key"), info.get("priority")))
    return self.request.id


@shared_task(rate_limit="2/s")
def limited(tag):
    """A rate-limited task: "the rate limit is enforced once the ETA has passed"."""
    _trace(tag, "%.6f" % time.time())


# -- Linking (callbacks/errbacks) -------------------------------------------------------------

@shared_task
def error_handler(request, exc, traceback):
    print('Task {0} raised exception: {1!r}\n{2!r}'.format(
          request.id, exc, traceback))
    _trace("error_handler", "%s %r" % (request.id, exc))


@shared_task
def on_error(task_id):
    with allow_join_result():
        result = AsyncResult(task_id)
        exc = result.get(propagate=False)
        print('Task {0} raised exception: {1!r}'.format(task_id, exc))
    _trace("on_error", "%s|%s|%s" % (task_id, type(exc).__name__, exc))


@shared_task(bind=True)
def on_error_bound(self, task_id):
    """The guide's note: an errback that "is a bind=True task" is applied as a task, "passing
    the failed task's id as the only argument"."""
    _trace("on_error_bound", "%s|%s" % (task_id, self.request.id is not None))


# -- On message -------------------------------------------------------------------------------

@shared_task(bind=True)
def hello(self, a, b):
    time.sleep(1)
    self.update_state(state="PROGRESS", meta={'progress': 50})
    time.sleep(1)
    self.update_state(state="PROGRESS", meta={'progress': 90})
    time.sleep(1)
    return 'hello world: %i' % (a+b)


# -- Serializers ------------------------------------------------------------------------------

@shared_task
def describe(value):
    """What the worker received: its type and repr (json and pickle carry different things)."""
    return "%s %r" % (type(value).__name__, value)


@shared_task(serializer="pickle")
def pickled_by_default(value):
    """A task whose serializer attribute is pickle (the guide's order: the execution option,
    then this attribute, then task_serializer)."""
    return "%s %r" % (type(value).__name__, value)


class Money:
    """A class instance: json cannot carry it, pickle can."""

    def __init__(self, amount):
        self.amount = amount

    def __eq__(self, other):
        return isinstance(other, Money) and other.amount == self.amount

    def __repr__(self):
        return "Money(%r)" % (self.amount,)


# -- Results options --------------------------------------------------------------------------

@shared_task(ignore_result=True)
def add_ignored(x, y):
    _trace("add_ignored", x + y)
    return x + y


@shared_task
def divide(x, y):
    return x / y

