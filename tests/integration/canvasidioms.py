"""The tasks of Celery's "Canvas: Designing Work-flows" user guide, written as the guide writes
them (``@app.task`` is ``@shared_task`` here), for test_canvasidioms.py.

Where a guide task only has a side effect (``reset_buffers``, ``log_result``, the errbacks,
``import_contact`` ...), it records what it saw as one line of a trace file under ITTASKS_DIR
(see ittasks._trace), so that the tests can read it across processes.
"""

import os
import time

from minitask import Task, shared_task
from minitask.result import AsyncResult

from ittasks import _trace


@shared_task
def add(x, y, debug=False):
    if debug:                       # the guide's add.s(2, 2, debug=True)
        _trace("debug", "%s %s" % (x, y))
    return x + y


@shared_task
def mul(x, y):
    return x * y


@shared_task
def subtract(x, y):
    return x - y


@shared_task
def tsum(numbers):
    return sum(numbers)


@shared_task
def xsum(numbers):
    return sum(numbers)


@shared_task
def other_task(value):
    _trace("other_task", value)
    return value


@shared_task
def reset_buffers():
    _trace("reset_buffers", "reset")
    return "reset"


@shared_task
def log_result(result):
    _trace("log_result", result)
    return result


@shared_task
def raising_task():
    raise ValueError("something something")


@shared_task
def fail():
    raise ValueError("failed on purpose")


@shared_task
def slow_add(x, y, seconds):
    """add, taking its time: a header task that ends after the others."""
    time.sleep(seconds)
    return x + y


@shared_task
def slow_raising_task(seconds):
    """raising_task, failing after the others."""
    time.sleep(seconds)
    raise KeyError("slow failure")


# -- errbacks -----------------------------------------------------------------------------

@shared_task
def log_error(task_id):
    """The errback that takes the failed task's id (the guide's chord section: "An errback
    that accepts a single argument ... receives the id of the failed chord callback")."""
    result = AsyncResult(task_id)
    _trace("errors", "%s %s %s" % (task_id, type(result.result).__name__, result.result))
    return task_id


@shared_task(bind=True)
def log_error_bound(self, task_id):
    """The guide: "a bound errback declared with @app.task(bind=True), is dispatched as a
    task and receives the id of the failed chord callback"."""
    result = self.AsyncResult(task_id)
    _trace("errors", "%s %s %s" % (task_id, type(result.result).__name__, result.result))
    return task_id


@shared_task
def log_error_request(request, exc, traceback):
    """The guide's Chains-section errback, verbatim but for the folder."""
    with open(os.path.join(os.environ["ITTASKS_DIR"], "errors-" + request.id), "a") as fh:
        print("--\n\n{0} {1} {2}".format(request.id, exc, traceback), file=fh)


@shared_task
def on_chord_error(request, exc, traceback):
    print("Task {0!r} raised error: {1!r}".format(request.id, exc))


# -- the guide's new-user and contacts workflows -----------------------------------------

@shared_task
def create_user(username, first, last, email):
    _trace("users", "%s %s %s %s" % (username, first, last, email))
    return username


@shared_task
def import_contacts(username):
    return "contacts of %s" % username


@shared_task
def send_welcome_email(username):
    return "welcome %s" % username


@shared_task
def import_contact(contact):
    _trace("contacts", contact)
    return contact


@shared_task
def notify_complete(import_id):
    _trace("contacts", "complete %s" % import_id)
    return import_id


# -- a signature passed to another process, as an argument ---------------------------------

@shared_task
def apply_signature(sig, *args):
    """The guide's opening: a signature "can be passed to functions or even serialized and
    sent across the wire"; this task gets one as its argument (a dict, over JSON) and sends
    it with the partial arguments it is given. Returns the id of what it sent."""
    from minitask import signature
    return signature(sig).delay(*args).id


# -- the guide's chord "Important Notes": tasks in a chord must not ignore their results ----

class MyTask(Task):
    ignore_result = False


@shared_task(base=MyTask)
def double(x):
    return 2 * x


@shared_task(ignore_result=False)
def another_task(project):
    return "did %s" % project


@shared_task(ignore_result=True)
def forgetful_task(project):
    return "did %s" % project
