"""15. Workflows: signatures, chains, groups, chords, map, starmap, chunks, link, link_error.

A signature is a call not sent yet: ``add.s(2, 2)``. Signatures combine as in Celery:
``a | b`` is a chain (b gets a's result first), ``group(a, b)`` runs calls side by side,
``chord(header, body)`` (or ``group(...) | body``) calls body with the list of the header's
results. ``add.si(...)`` is immutable: it gets no result. A failing task stops its chain; its
``link_error`` errbacks get its id (``errback(task_id)``, Celery's form); a failing header task
fails its chord with ChordError and the body never runs. Signatures are plain dicts (JSON),
so a workflow can be stored and rebuilt with ``signature(dict)``.

The broker joins workflows: a task's result is stored together with what it unlocks (the
next link, a callback, an errback) in one journal write, and a chord's body is held by the
broker until its header's results are in, so killing any process never strands one. The
same code runs eagerly too (ALWAYS_EAGER).

Run it:  python examples/15_workflows.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import json
import os

from minitask import AsyncResult, chain, chord, group, signature, task
from minitask.exceptions import ChordError


@task()
def add(x, y):
    return x + y


@task()
def mul(x, y):
    return x * y


@task()
def tsum(numbers):
    return sum(numbers)


@task()
def divide(x, y):
    return x / y


@task()
def log_error(task_id, path):
    """An errback: it gets the id of the task that failed first, then its own arguments."""
    with open(path, "a") as errors:
        errors.write(task_id + "\n")


def _read(path):
    with open(path) as handle:
        return handle.read()


def main(cluster):
    result = (add.s(2, 2) | mul.s(8) | add.s(1)).delay()
    print("(add.s(2, 2) | mul.s(8) | add.s(1)).delay().get() = %r" % result.get())
    print("  .parent.get() = %r, .parent.parent.get() = %r"
          % (result.parent.get(), result.parent.parent.get()))
    print("chain(add.s(4), mul.s(8))(16).get() = %r" % chain(add.s(4), mul.s(8))(16).get())
    print("(add.si(1, 1) | add.si(2, 2)).delay().get() = %r   (immutable: no result passed)"
          % (add.si(1, 1) | add.si(2, 2)).delay().get())

    print("group(add.s(i, i) for i in range(5))().get() = %r"
          % group(add.s(i, i) for i in range(5))().get())
    print("chord((add.s(i, i) for i in range(10)), tsum.s())().get() = %r"
          % chord((add.s(i, i) for i in range(10)), tsum.s())().get())
    print("(group(add.s(1, 1), add.s(2, 2)) | tsum.s()).delay().get() = %r"
          % (group(add.s(1, 1), add.s(2, 2)) | tsum.s()).delay().get())

    print("tsum.map([[1, 2], [3, 4]]).delay().get() = %r"
          % tsum.map([[1, 2], [3, 4]]).delay().get())
    print("add.starmap([(1, 2), (3, 4)]).delay().get() = %r"
          % add.starmap([(1, 2), (3, 4)]).delay().get())
    print("add.chunks(zip(range(6), range(6)), 4)().get() = %r"
          % add.chunks(zip(range(6), range(6)), 4)().get())

    linked = add.apply_async((2, 2), link=mul.s(10))
    print("add.apply_async((2, 2), link=mul.s(10)): %r, its callback %r"
          % (linked.get(), linked.children[0].get()))

    errors = os.path.join(cluster.scratch, "errors.txt")
    failed = (add.s(1, 1) | divide.s(0) | add.s(1)).on_error(log_error.s(errors)).delay()
    try:
        failed.get(timeout=10)
    except ZeroDivisionError as exc:
        print("a chain whose divide.s(0) fails: .get() raises ZeroDivisionError: %s" % exc)
    print("  the failed link's state: %s, and its last task's too: %s"
          % (failed.parent.state, failed.state))
    logged = _run.wait_for(lambda: os.path.exists(errors) and _read(errors).split(),
                           what="the errback")
    print("  log_error got the failed task's id: %s" % (logged == [failed.parent.id]))

    broken = chord([add.s(1, 1), divide.s(1, 0)], tsum.s()).delay()
    try:
        broken.get(timeout=10)
    except ChordError as exc:
        print("a chord whose header fails: the body never runs; ChordError names the task: %s"
              % ("divide[%s]" % broken.parent[1].id in str(exc)))

    stored = json.dumps(add.s(3, 3) | mul.s(7))
    rebuilt = signature(json.loads(stored))
    print("stored as JSON (%d characters) and rebuilt: %r = %r"
          % (len(stored), rebuilt, rebuilt.delay().get()))
    print("AsyncResult ids exist before anything runs: %s"
          % isinstance((add.s(1, 1) | mul.s(2)).freeze(), AsyncResult))


if __name__ == "__main__":
    _run.example(__file__)
