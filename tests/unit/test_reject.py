"""Celery's Reject: a task rejects its own message (acks_late), back to its queue or to be
dead-lettered or dropped; nothing is stored and no hook is called. There was no Reject
(ImportError). Also the run's `request.delivery_info['redelivered']` the guide's example
reads, and after_return's value for a retry (the Retry, as Celery's)."""

import logging

import pytest

from minitask import Task, protocol, states, task
from minitask.exceptions import Reject, RetryTaskError
from minitask.message import TaskMessage
from minitask.worker.execution import REQUEUED, execute_delivery, run_task
from minitask.worker.pool import Job

from taskkit import isolated_tasks, no_broker, worker_on  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")

HEARD = []


class Hooked(Task):
    abstract = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        HEARD.append(("on_failure", type(exc).__name__))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        HEARD.append(("on_retry", type(exc).__name__))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        HEARD.append(("after_return", status, type(retval).__name__))


@task(name="tests.reject.picky", base=Hooked, bind=True, acks_late=True)
def picky(self, requeue):
    HEARD.append(("redelivered", self.request.delivery_info["redelivered"]))
    raise Reject("not now", requeue=requeue)


def delivered(requeue, redelivered=False):
    data = protocol.encode_message(TaskMessage(picky.name, (requeue,), {}, id="r-1").encode())
    return execute_delivery(data, redelivered=redelivered)


@pytest.mark.parametrize("requeue, state", [(True, REQUEUED), (False, states.REJECTED)])
def test_a_rejected_run_stores_nothing_and_calls_no_hook(requeue, state):
    del HEARD[:]
    report = delivered(requeue, redelivered=True)
    assert (report.state, report.store, report.payload) == (state, False, b"")
    assert report.summary == "rejected: not now" + (" (requeued)" if requeue else "")
    assert HEARD == [("redelivered", True)]


def test_eagerly_it_is_a_rejected_result_and_the_errbacks_are_not_called():
    del HEARD[:]
    result = picky.apply((False,), link_error=picky.si(True))
    assert result.state == states.REJECTED and isinstance(result.result, Reject)
    assert result.result.reason == "not now" and result.result.requeue is False
    assert HEARD == [("redelivered", False)]            # no errback ran


@task(name="tests.reject.retrying", base=Hooked, bind=True)
def retrying(self):
    raise self.retry(exc=KeyError("x"), countdown=5)


def test_after_return_gets_the_retry_and_on_retry_the_exception_given():
    del HEARD[:]
    message = TaskMessage(retrying.name, (), {}, id="t-9")
    outcome = run_task(retrying, message, hold=True)
    assert outcome.state == "RETRY"
    assert HEARD == [("on_retry", "KeyError"), ("after_return", "RETRY", "RetryTaskError")]
    assert isinstance(outcome.retry, RetryTaskError)


class Consumer:
    connected = True
    generation = 0
    holds_deliveries = False

    def __init__(self):
        self.rejected, self.stored = [], []

    def oversized(self, *args):
        return None

    def reject(self, tag, requeue=True):
        self.rejected.append((tag, requeue))

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        self.stored.append((task_id, state, store, ack))

    def close(self):
        pass


@pytest.fixture
def worker():
    with worker_on(Consumer()) as worker:
        yield worker


def report(state):
    return (state, "", b"", False, 0.01, "rejected: not now", (), ())


def test_the_worker_rejects_the_message_of_an_acks_late_task(worker):
    worker._finished(Job(1, 7, "t-1", picky.name, b"", acks_late=True), report(REQUEUED))
    worker._finished(Job(2, 8, "t-2", picky.name, b"", acks_late=True),
                     report(states.REJECTED))
    assert worker.consumer.rejected == [(7, True), (8, False)]
    assert worker.consumer.stored == []
    assert (worker.counts["requeued"], worker.counts["rejected"]) == (1, 1)


def test_a_task_acked_as_it_started_has_nothing_to_reject(worker, caplog):
    job = Job(1, 7, "t-1", picky.name, b"")
    job.handed_over = True
    with caplog.at_level(logging.WARNING, logger="minitask.worker.worker"):
        worker._finished(job, report(states.REJECTED))
    assert worker.consumer.rejected == []
    assert worker.consumer.stored == [("t-1", "SUCCESS", False, None)]     # as Ignore
    assert "give it acks_late=True" in caplog.text
