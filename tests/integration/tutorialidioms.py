"""The tasks module of Celery's "First Steps with Celery" tutorial
(docs/getting-started/first-steps-with-celery.rst), for test_tutorialidioms.py.

The tutorial's ``tasks.py``::

    from celery import Celery

    app = Celery('tasks', broker='pyamqp://guest@localhost//')

    @app.task
    def add(x, y):
        return x + y

minitask has no app object: ``@app.task`` is ``@shared_task`` (README, "Migrating from
Celery"), and the broker's URL is a setting (BROKER_URL; the tests give it as
MINITASK_BROKER_URL). The "Next Steps" tutorial's project is the package ``tutorialproj``.

`hold` is not the tutorial's: it is a task that is still running when the test looks, for
the tutorial's ``celery -A proj inspect active`` ("see what tasks the worker is currently
working on").
"""

import os
import time

from minitask import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def hold(path, seconds=20):
    """Run until the file `path` exists (the test creates it), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)
