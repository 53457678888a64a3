"""11. Results: AsyncResult, states, get(), failures, countdown, and ignore_result.

`delay` and `apply_async` return an `AsyncResult` at once. Its state moves PENDING (nothing
known yet) -> RECEIVED -> STARTED -> SUCCESS or FAILURE (RETRY while a retry waits, REVOKED
when revoked). ``get()`` waits for the end and returns the value, or raises the task's own
exception with the worker's traceback; ``get(propagate=False)`` returns the exception instead.
Any process can look a result up by id with ``AsyncResult(task_id)``.

A task with ``ignore_result=True`` stores nothing when it succeeds (saving the broker the
work), so its state stays PENDING; its failures are still stored. The guide's tip: ignore
the results you do not want.

Run it:  python examples/11_results.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import os
import time

from minitask import AsyncResult, task
from minitask.exceptions import TimeoutError


@task()
def add(x, y):
    return x + y


@task()
def divide(x, y):
    return x / y


@task(ignore_result=True)
def record_visit(page):
    with open("visits.txt", "a") as visits:
        visits.write(page + "\n")
    return "recorded"


@task(ignore_result=True)
def broken_visit(page):
    raise ValueError("no such page: %s" % page)


def main(cluster):
    result = add.delay(8, 8)
    print("add.delay(8, 8).get() = %r" % result.get(timeout=10))
    print("  state %s, ready() %s, successful() %s, result %r"
          % (result.state, result.ready(), result.successful(), result.result))
    print("  AsyncResult(its id).get() = %r" % AsyncResult(result.id).get(timeout=10))

    sent = time.time()
    later = add.apply_async(args=[10, 10], countdown=1)
    print("add.apply_async(args=[10, 10], countdown=1).get() = %r, after 1 s or more: %s"
          % (later.get(timeout=10), time.time() - sent >= 1.0))

    failed = divide.delay(1, 0)
    try:
        failed.get(timeout=10)
    except ZeroDivisionError as exc:
        print("divide.delay(1, 0).get() raised ZeroDivisionError: %s" % exc)
    print("  state %s, failed() %s, traceback ends %r"
          % (failed.state, failed.failed(), failed.traceback.strip().splitlines()[-1]))
    print("  get(propagate=False) returns %r" % failed.get(propagate=False))

    try:
        AsyncResult("no-such-task").get(timeout=0.2)
    except TimeoutError:
        print("an id nobody sent: state %s, get(timeout=0.2) raises TimeoutError"
              % AsyncResult("no-such-task").state)

    ignored = record_visit.delay("/index")
    _run.wait_for(lambda: os.path.exists(os.path.join(cluster.scratch, "visits.txt")),
                  what="record_visit to run")
    try:
        broken_visit.delay("/nowhere").get(timeout=10)
    except ValueError as exc:
        print("broken_visit (ignore_result=True) failed, and that is stored: %s" % exc)
    print("record_visit (ignore_result=True) ran, and its state stays %s" % ignored.state)


if __name__ == "__main__":
    _run.example(__file__)
