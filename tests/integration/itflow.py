"""Tasks of the workflow tests (chains, groups, chords, callbacks), run by real workers with
``-I itflow``. Runs leave one line each in a trace file of the test's folder (``ITTASKS_DIR``)
so the tests can count them across processes."""

import os

from minitask import task


def _trace(name, line):
    path = os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "trace-%s.log" % name)
    with open(path, "a") as handle:
        handle.write("%s\n" % line)


@task(name="flow.add")
def add(x, y):
    return x + y


@task(name="flow.mul")
def mul(x, y):
    return x * y


@task(name="flow.tsum")
def tsum(numbers, tag=""):
    """A chord's body: the sum of its header's results; with `tag`, each run leaves a line."""
    if tag:
        _trace(tag, sum(numbers))
    return sum(numbers)


@task(name="flow.divide")
def divide(x, y):
    return x / y


@task(name="flow.errback")
def errback(task_id, tag):
    """A link_error callback: it records the id of the task that failed."""
    _trace(tag, task_id)
    return task_id


@task(name="flow.retry_once", max_retries=3, default_retry_delay=0.05)
def retry_once(x, tag, **kwargs):
    """A link that fails its first run and retries: its chain must go on after the retry."""
    if kwargs["task_retries"] == 0:
        _trace(tag, "retrying")
        retry_once.retry(args=[x, tag], kwargs=kwargs)
    return x + 1


@task(name="flow.noop")
def noop(*args):
    return None


@task(name="flow.first")
def first(values):
    return values[0] if values else None


# At-least-once tasks for the workflow chaos test: a worker killed mid-run has them run again.

@task(name="flow.step", acks_late=True)
def step(x, y):
    return x + y


@task(name="flow.part", acks_late=True)
def part(i):
    return i


@task(name="flow.join", acks_late=True)
def join(values, tag):
    """A chord's body: records the body's run (its id), returns the sum of its header."""
    _trace(tag, join.request.id)
    return sum(values)


@task(name="flow.hang")
def hang(tag):
    """A header task that leaves a line, then runs until its worker is killed."""
    _trace(tag, "started")
    import time
    time.sleep(60)
