"""The tasks `python -m minitask bench` sends; its workers import this module
(``-I minitask.bench.tasks``).

They travel on their own queue (`QUEUE`), so a bench pointed at a shared broker with
``--broker`` never hands them to another worker, nor takes that worker's tasks.

`noop` counts its runs the way the peers' harness does (``../shared/peers/common.py``): each
run appends to one ``O_APPEND`` file named by ``BENCH_COUNTER`` (the harness's name; a
``MINITASK_`` name would be taken for a setting), which works across pool processes and forks
with no lock. It appends its 4-byte index rather than one byte, so the file's size still
counts runs and its content also shows which task ran twice.
"""

import os
import struct

from ..decorators import task

__all__ = ["QUEUE", "COUNTER_ENV", "INDEX", "noop", "echo", "total", "record"]

QUEUE = "minitask.bench"
COUNTER_ENV = "BENCH_COUNTER"
INDEX = struct.Struct("=I")         # the machine's own byte order: one machine writes and reads

_counter = {"pid": None, "fd": None}


def record(index):
    """Append `index` to the counter file (one write syscall); no-op when none is set."""
    pid = os.getpid()
    if _counter["pid"] != pid:      # first run in this process, or we were forked
        path = os.environ.get(COUNTER_ENV)
        if not path:
            return
        _counter["fd"] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _counter["pid"] = pid
    os.write(_counter["fd"], INDEX.pack(index))


@task(name="minitask.bench.noop", acks_late=True, ignore_result=True, routing_key=QUEUE)
def noop(index):
    record(index)


@task(name="minitask.bench.echo", acks_late=True, routing_key=QUEUE)
def echo(index):
    return index


@task(name="minitask.bench.total", acks_late=True, routing_key=QUEUE)
def total(values):
    """A chord's body: the sum of its header's results."""
    return sum(values)
