"""The tasks of Celery's "Periodic Tasks" user guide (docs/userguide/periodic-tasks.rst, Celery 5),
written as the guide writes them (``@app.task`` is ``@shared_task`` here), for
test_periodicidioms.py. The beat entries name them by their default names,
``periodicidioms.<function>`` (the guide's ``'tasks.add'`` is the ``add`` of a ``tasks.py``).

Where the guide's task prints what it saw, it also traces it to ITTASKS_DIR/trace-<tag>.log
(see ittasks._trace), so that the test, in another process, can read it.
"""

import time

from minitask import group, shared_task

from ittasks import _trace


# -- Entries: "Calls test('hello') every 10 seconds", "Run the tasks.add task every 30 seconds"

@shared_task
def test(arg):
    print(arg)
    _trace("test", arg)


@shared_task
def add(x, y):
    z = x + y
    print(z)
    _trace("add", z)
    return z


# -- Scheduling groups and other workflows -----------------------------------------------------

@shared_task
def run_add_group():
    group(add.s(i, i) for i in range(10)).apply_async()


# -- What the tests look at besides the guide's own tasks --------------------------------------

@shared_task(bind=True)
def report(self, tag, full=None):
    """Traces what a beat send carried: ``time|id|expires|routing_key|priority|full``."""
    info = self.request.delivery_info or {}
    _trace(tag, "%.6f|%s|%s|%s|%s|%s" % (
        time.time(), self.request.id, self.request.expires, info.get("routing_key"),
        info.get("priority"), full))


@shared_task
def slow(seconds):
    """"Like with cron, the tasks may overlap if the first task doesn't complete before the
    next": a run longer than its entry's interval."""
    _trace("slow", "start %.6f" % time.time())
    time.sleep(seconds)
    _trace("slow", "end %.6f" % time.time())
