"""The worker's loop asks its consumer for the extra credit short tasks earn, and withholds
it while it holds a task not known to be short (no processes: a recording consumer)."""

import pytest

from minitask.worker.credit import FACTOR
from minitask.worker.pool import Job
from minitask.worker.worker import IDLE_GRACE

from taskkit import worker_on


class RecordingConsumer:
    connected = True
    holds_deliveries = False
    queues = ["minitask"]

    def __init__(self):
        self.extra = []

    def set_extra_credit(self, held):
        self.extra.append(held)

    def heartbeat(self):
        pass

    def end_turn(self):
        pass

    def flush(self):
        return False

    def close(self):
        pass

    def flush_due(self):
        return None


@pytest.fixture
def worker():
    with worker_on(RecordingConsumer(), concurrency=2) as worker:
        worker._broker_fd = None
        worker._flush_broker = lambda: None
        yield worker


def earn(worker):
    for _ in range(worker.prefetch):
        worker.fast_credit.finished(0.0001)


def hold(worker, seq, name="short"):
    """A message taken and waiting for a pool process, as `_receive` queues one."""
    worker._queue(Job(seq, seq, "id-%d" % seq, name, b""))


@pytest.fixture
def short(worker):
    worker.pool.runtimes["short"] = 0.0001      # seen to run fast
    return worker


def test_the_turn_asks_for_the_extra_credit_once_earned(short):
    worker = short
    hold(worker, 1)
    worker._send()
    earn(worker)
    worker._send()
    assert worker.consumer.extra == [0, 8 * (FACTOR - 1)]
    assert worker.stats()["fast_credit"] == 8 * (FACTOR - 1)


def test_an_idle_worker_asks_for_its_prefetch_only_once_idle_a_moment(short):
    """Else a burst of slow tasks would find four times the prefetch waiting for it; a worker
    between two round trips keeps it, so that its credit does not change twice per task."""
    worker = short
    earn(worker)
    hold(worker, 1)
    worker._send()
    worker.ready.clear()
    worker._send()                      # idle a moment: kept
    worker._idle_since -= IDLE_GRACE    # idle for IDLE_GRACE now
    assert worker._timeout() == 0       # the loop wakes to drop it
    worker._send()
    assert worker.consumer.extra == [8 * (FACTOR - 1)] * 2 + [0]


def test_a_held_task_of_a_name_never_seen_to_run_fast_withholds_it_at_once(short):
    worker = short
    earn(worker)
    hold(worker, 1)
    worker._send()
    hold(worker, 2, "unknown")          # within BOOST_RECHECK: noticed as it is queued
    worker._send()
    assert worker.consumer.extra == [8 * (FACTOR - 1), 0]


def test_scheduled_messages_still_count_beside_it(short):
    worker = short
    earn(worker)
    hold(worker, 1)
    worker.held = 3
    worker._send()
    assert worker.consumer.extra == [3 + 8 * (FACTOR - 1)]


def test_a_pool_process_queues_at_most_twice_the_multiplier(worker):
    assert worker.pool.max_queued == 2 * 4      # the default PREFETCH_MULTIPLIER
