"""The worker's loop asks its consumer for the extra credit short tasks earn, and withholds
it while it holds a task not known to be short (no processes: a recording consumer)."""

import pytest

from minitask import config
from minitask.worker.credit import FACTOR
from minitask.worker.pool import Job
from minitask.worker.worker import Worker


class RecordingConsumer:
    connected = True

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


@pytest.fixture
def worker():
    worker = Worker(config.Settings({"BROKER_URL": "memory://worker-credit"}), concurrency=2)
    worker.consumer = RecordingConsumer()
    worker._broker_fd = None
    worker._flush_broker = lambda: None
    try:
        yield worker
    finally:
        worker.selector.close()
        worker._wake_r.close()
        worker._wake_w.close()


def earn(worker):
    for _ in range(worker.prefetch):
        worker.fast_credit.finished(0.0001)


def test_the_turn_asks_for_the_extra_credit_once_earned(worker):
    worker._send()
    earn(worker)
    worker._send()
    assert worker.consumer.extra == [0, 8 * (FACTOR - 1)]
    assert worker.stats()["fast_credit"] == 8 * (FACTOR - 1)


def test_a_held_task_of_a_name_never_seen_to_run_fast_withholds_it(worker):
    earn(worker)
    worker.pool.runtimes["short"] = 0.0001
    worker.ready.append(Job(1, 1, "a", "short", b""))
    worker._send()
    worker.ready.append(Job(2, 2, "b", "unknown", b""))
    worker._send()
    assert worker.consumer.extra == [8 * (FACTOR - 1), 0]


def test_scheduled_messages_still_count_beside_it(worker):
    earn(worker)
    worker.held = 3
    worker._send()
    assert worker.consumer.extra == [3 + 8 * (FACTOR - 1)]
