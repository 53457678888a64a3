"""3. Default keyword arguments: the worker offers them, each task takes what it wants.

The worker offers every task ``logfile``, ``loglevel``, ``task_id``, ``task_name`` and
``task_retries``. A task that takes ``**kwargs`` gets all five; otherwise it gets exactly the
ones it names as parameters, and none that it does not. "The worker will do the right thing."

Run it:  python examples/03_default_keyword_arguments.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import os

from minitask import task


@task()
def takes_all(**kwargs):
    return sorted(kwargs)


@task()
def takes_some(x, task_id=None, task_name=None, task_retries=None):
    return {"x": x, "task_id": task_id, "task_name": task_name, "task_retries": task_retries}


@task()
def takes_none(x):
    return x * 2


@task()
def where_it_logs(logfile=None, loglevel=None):
    return os.path.basename(logfile), loglevel


def main(cluster):
    print("takes_all(**kwargs) gets: %s" % ", ".join(takes_all.delay().get(timeout=10)))
    result = takes_some.delay(1)
    got = result.get(timeout=10)
    print("takes_some(x, task_id, task_name, task_retries) gets:")
    print("  task_id is its own id: %s" % (got["task_id"] == result.id))
    print("  task_name = %r" % got["task_name"])
    print("  task_retries = %r" % got["task_retries"])
    print("takes_none(x) gets none of them: takes_none.delay(21).get() = %r"
          % takes_none.delay(21).get(timeout=10))
    print("where_it_logs(logfile, loglevel) = %r   (the worker's -f and -l)"
          % (tuple(where_it_logs.delay().get(timeout=10)),))
    print("called here, like a function, it gets none: takes_some(5)['task_id'] = %r"
          % takes_some(5)["task_id"])


if __name__ == "__main__":
    _run.example(__file__)
