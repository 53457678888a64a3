"""The tasks of Celery's "Monitoring and Management Guide" (docs/userguide/monitoring.rst,
Celery 5), written as the guide writes them (``@app.task`` is ``@shared_task`` here), for
test_monitoridioms.py.

The guide's commands name one task, ``tasks.add`` (``celery -A proj result -t tasks.add
<id>``): it is registered under that name. ``div`` is a task that fails, for ``result
--traceback``; ``hold`` is a task still running when the test looks (``inspect active``:
"all the tasks that are currently being executed"), until the test creates its file.
"""

import os
import time

from minitask import shared_task


@shared_task(name='tasks.add')
def add(x, y):
    return x + y


@shared_task(name='tasks.div')
def div(x, y):
    return x / y


@shared_task(name='tasks.hold')
def hold(path, seconds=20):
    """Run until the file `path` exists (the test creates it), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)
