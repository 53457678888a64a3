"""Signals the worker's main process sends for what its pool processes report (no
processes: a recording consumer)."""

import pytest

from minitask import signals
from minitask.worker.pool import Job

from taskkit import worker_on


class Consumer:
    connected = True
    generation = 0

    def __init__(self):
        self.stored, self.acked = [], []

    def oversized(self, *args):
        return None

    def store_result(self, task_id, state, *args, **kwargs):
        self.stored.append((task_id, state))
        if kwargs.get("ack") is not None:       # acked with what is stored
            self.acked.append(kwargs["ack"])

    def ack(self, tag):
        self.acked.append(tag)

    def close(self):
        pass

    def cancel_all(self):               # a warm shutdown takes no more tasks
        pass

    def set_extra_credit(self, credit):
        pass


@pytest.fixture
def worker():
    with worker_on(Consumer()) as worker:
        try:
            yield worker
        finally:
            signals.task_revoked.receivers = []


def report(state, summary):
    return (state, "application/json", b"{}", True, 0.0, summary, (), ())


@pytest.mark.parametrize("summary, expired", [("expired", True), ("revoked", False)])
def test_a_task_a_pool_process_found_expired_or_revoked_sends_task_revoked(
        worker, summary, expired):
    seen = []
    signals.task_revoked.connect(lambda sender=None, request=None, terminated=None,
                                 expired=None, **kwargs:
                                 seen.append((sender, request.id, terminated, expired)))
    worker._finished(Job(1, 7, "t-1", "not.here", b""), report("REVOKED", summary))
    assert seen == [("not.here", "t-1", False, expired)]
    assert worker.consumer.stored == [("t-1", "REVOKED")] and worker.consumer.acked == [7]


def test_a_revoked_report_does_not_count_as_a_short_run(worker):
    worker._finished(Job(1, 7, "t-1", "not.here", b""), report("REVOKED", "revoked"))
    assert worker.fast_credit.streak == 0
    worker._finished(Job(2, 8, "t-2", "not.here", b""), report("SUCCESS", "ok"))
    assert worker.fast_credit.streak == 1


class Exits:
    """Unpickled, it calls sys.exit(3): a body this worker's main process must survive."""

    def __reduce__(self):
        import sys
        return (sys.exit, (3,))


def test_a_body_whose_unpickling_exits_does_not_end_the_main_process(worker):
    from minitask import protocol
    from minitask.message import TaskMessage
    from minitask.worker.request import WorkerRequest
    data = protocol.encode_message(
        TaskMessage("not.here", (Exits(),), id="t-9", serializer="pickle").encode())
    request = WorkerRequest(Job(1, 7, "t-9", "not.here", data), None, "w", ["pickle"])
    assert (request.id, request.args, request.kwargs) == ("t-9", (), {})


def test_worker_shutting_down_gives_the_exit_code_the_worker_will_end_with(worker):
    seen = []
    signals.worker_shutting_down.connect(lambda exitcode=None, how=None, **kwargs:
                                         seen.append((how, exitcode)))
    try:
        worker.start_failures = 99      # pool processes that never start: it gives up
        worker.taking_tasks, worker.degraded = False, "no fork for you"    # said already
        worker._start_failed("no fork for you")
        assert worker.exit_error is not None
    finally:
        signals.worker_shutting_down.receivers = []
    assert seen == [("Warm", 1)]
