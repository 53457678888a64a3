"""A result the broker refuses as one unit with what it unlocks (a message it cannot route,
a journal it cannot write) leaves the task unfinished unless the worker stores something
else: the task's FAILURE saying so, with its errbacks and the rest of its chain; then
without the errbacks; then alone (no processes: a recording consumer)."""

import base64

import pytest

from minitask import config, protocol
from minitask.exceptions import PublishRefusedError
from minitask.message import TaskMessage, decode_result_meta
from minitask.transport.base import Refused
from minitask.worker.worker import Worker


class Consumer:
    """Refuses every result unit it is given (one with something to publish or chained)."""

    connected = True
    generation = 0

    def __init__(self):
        self.stored, self.units, self._refused = [], [], []

    def oversized(self, *args):
        return None

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None):
        self.stored.append((task_id, state, len(publish), list(chained),
                            decode_result_meta(task_id, state, content_type, payload)))
        if publish or chained:
            self._refused.append(Refused(task_id, state, task_name, context,
                                         PublishRefusedError("no exchange 'gone'")))

    def refused(self):
        refused, self._refused = self._refused, []
        return refused

    def flush(self):
        return False

    def close(self):
        pass


@pytest.fixture
def worker():
    worker = Worker(config.Settings({"BROKER_URL": "memory://worker-refused"}),
                    concurrency=1)
    worker.consumer = Consumer()
    worker.selector.register(worker._wake_r, 1, "broker")   # stands for the broker's socket
    worker._broker_fd = worker._wake_r
    try:
        yield worker
    finally:
        worker.selector.close()
        worker._wake_r.close()
        worker._wake_w.close()


def message_with_workflow():
    errback = protocol.encode_message(TaskMessage("tests.errback", ("t-1",), {}).encode())
    message = TaskMessage("tests.first", (), {}, id="t-1")
    message.headers = {"x-chain": ["t-2", "t-3"],
                       "x-errbacks": [base64.b64encode(errback).decode("ascii")]}
    return protocol.encode_message(message.encode())


def test_a_refused_unit_becomes_a_failure_then_less_then_the_failure_alone(worker):
    link = protocol.encode_message(TaskMessage("tests.second", (2,), {}, id="t-2").encode())
    worker._store("t-1", "SUCCESS", "application/json", b'{"result": 2}', True, "tests.first",
                  0.001, [link], (), message_with_workflow())
    worker._flush_broker()
    stored = worker.consumer.stored
    assert [(task_id, state, published, chained) for task_id, state, published, chained, _
            in stored] == [
        ("t-1", "SUCCESS", 1, []),              # refused: the link's exchange is gone
        ("t-1", "FAILURE", 1, ["t-2", "t-3"]),  # with the errback: refused as well
        ("t-1", "FAILURE", 0, ["t-2", "t-3"]),  # refused (the fake refuses any unit)
        ("t-1", "FAILURE", 0, []), ("t-2", "FAILURE", 0, []),   # one by one: never a
        ("t-3", "FAILURE", 0, [])]              # unit, so never refused, and no waiter hangs
    for _, _, _, _, meta in stored[1:]:
        assert isinstance(meta.result, PublishRefusedError)
        assert str(meta.result) == ("task t-1: the broker refused what its SUCCESS "
                                    "unlocks: no exchange 'gone'")
    assert not worker.consumer.refused()


@pytest.mark.parametrize("state", ["FAILURE", "REVOKED"])
def test_a_failure_whose_errbacks_are_refused_keeps_its_own_outcome(worker, state):
    from minitask.message import ResultMeta, encode_result_meta
    meta = ResultMeta("t-1", state, KeyError("the real reason"), "Traceback ...",
                      "tests.first", 0, 0.0)
    content_type, payload = encode_result_meta(meta)
    errback = protocol.encode_message(TaskMessage("tests.errback", ("t-1",), {}).encode())
    worker._store("t-1", state, content_type, payload, True, "tests.first", 0.001, [errback],
                  ["t-2", "t-3"], message_with_workflow())
    worker._flush_broker()
    stored = worker.consumer.stored
    assert [(task_id, kept, published) for task_id, kept, published, _, _ in stored] == [
        ("t-1", state, 1), ("t-1", state, 0),   # without the errbacks
        ("t-1", state, 0), ("t-2", state, 0), ("t-3", state, 0)]
    assert all(isinstance(meta.result, KeyError) for *_, meta in stored)


def test_a_refused_retry_fails_the_task_naming_its_retry(worker):
    retry = protocol.encode_message(TaskMessage("tests.first", (), {}, id="t-1",
                                                retries=1).encode())
    plain = protocol.encode_message(TaskMessage("tests.first", (), {}, id="t-1").encode())
    worker._store("t-1", "RETRY", "application/json", b'{"result": null}', True,
                  "tests.first", 0.001, [retry], (), plain)
    worker._flush_broker()
    states = [(state, published) for _, state, published, _, _ in worker.consumer.stored]
    assert states == [("RETRY", 1), ("FAILURE", 0)]     # no workflow: nothing else to send
    assert str(worker.consumer.stored[1][4].result) == (
        "task t-1: the broker refused its retry: no exchange 'gone'")
