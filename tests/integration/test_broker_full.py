"""A broker with no room for what a result unlocks (a queue at its max_length here; a full
disk or Redis at maxmemory the same way): the worker keeps the task's outcome and sends it
again, with backoff, until the broker takes it. It used to store a FAILURE instead, and a
chain stopped at a link that had succeeded. On both transports (Redis skips, saying why,
where redis-server is not installed).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ittasks  # noqa: E402
from both import broker, server  # noqa: E402,F401  (fixtures: each transport)
from cluster import wait_for, workers_of  # noqa: E402

from minitask import chain  # noqa: E402
from minitask.transport import connection  # noqa: E402


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path)


def queue_row(broker, name):
    return next(row for row in broker.status()["queues"] if row["name"] == name)


def test_a_chain_link_whose_queue_is_full_waits_for_room_and_its_task_keeps_its_success(
        broker, start_worker):
    conn = connection()
    conn.declare_queue("narrow", max_length=1)
    ittasks.add.apply_async((0, 0), queue="narrow")         # the queue is full now
    worker = start_worker()
    # it.mul is acks late: its message stays unacked until its unit is taken.
    result = chain(ittasks.mul.s(2, 3), ittasks.add.s(1).set(queue="narrow")).apply_async()
    first = result.parent
    wait_for(lambda: "has no room for its SUCCESS" in worker.output(), 30,
             what="the worker to hear the broker has no room")
    assert first.state in ("RECEIVED", "STARTED")     # neither a FAILURE nor lost
    assert queue_row(broker, "minitask")["unacked"] == 1
    conn.purge("narrow")                        # room for the link
    assert first.get(timeout=30) == 6
    wait_for(lambda: queue_row(broker, "minitask")["unacked"] == 0, 30,
             what="the first task's ack")
    start_worker(args=("-Q", "narrow"))
    assert result.get(timeout=30) == 7
    assert "Traceback" not in worker.output()
