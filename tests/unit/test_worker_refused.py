"""A result the broker refuses as one unit with what it unlocks (a message it cannot route,
a journal it cannot write) leaves the task unfinished unless the worker stores something
else: the task's FAILURE saying so, with its errbacks and the rest of its chain; then
without the errbacks; then alone (no processes: a recording consumer)."""

import base64

import pytest

from minitask import protocol
from minitask.exceptions import PublishRefusedError
from minitask.message import TaskMessage, decode_result_meta
from minitask.transport.base import Refused

from taskkit import worker_on


class Consumer:
    """Refuses every result unit it is given (one with something to publish or chained)
    with `error`, the first `refusals` of them (all by default)."""

    connected = True
    generation = 0
    holds_deliveries = False

    def flush_due(self):
        return None

    def __init__(self, error=None, refusals=None):
        self.stored, self.units, self._refused = [], [], []
        self.error = error or PublishRefusedError("no exchange 'gone'")
        self.refusals = refusals
        self.acks = []                  # (tag, the index in `stored` of what acked it)

    def oversized(self, *args):
        return None

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        self.stored.append((task_id, state, len(publish), list(chained),
                            decode_result_meta(task_id, state, content_type, payload)))
        unit = publish or chained
        if unit and (self.refusals is None or self.refusals > 0):
            if self.refusals is not None:
                self.refusals -= 1
            self._refused.append(Refused(task_id, state, task_name, context, self.error,
                                         ack))
        elif ack is not None:
            self.acks.append((ack, len(self.stored) - 1))

    def refused(self):
        refused, self._refused = self._refused, []
        return refused

    def flush(self):
        return False

    def close(self):
        pass


@pytest.fixture
def worker():
    with worker_on(Consumer()) as worker:
        worker.selector.register(worker._wake_r, 1, "broker")   # stands for the broker's socket
        worker._broker_fd = worker._wake_r
        yield worker


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


def test_the_ack_goes_with_what_is_stored_in_the_refused_units_place(worker):
    """The broker never took the unit: acked then, an acks-late task lost with the
    connection before the refusal was heard would stay PENDING for ever."""
    link = protocol.encode_message(TaskMessage("tests.second", (2,), {}, id="t-2").encode())
    worker._store("t-1", "SUCCESS", "application/json", b'{"result": 2}', True, "tests.first",
                  0.001, [link], (), message_with_workflow(), ack=7)
    assert worker.consumer.acks == []               # refused: not acked with it
    worker._flush_broker()
    # Refused three times, then stored one by one: the task's own store acks it, once.
    assert worker.consumer.acks == [(7, 3)]
    assert worker.consumer.stored[3][:2] == ("t-1", "FAILURE")


def test_a_result_the_broker_has_no_room_for_is_sent_again_unchanged(worker, monkeypatch):
    """A full disk or queue, or Redis at maxmemory: the outcome is kept, never a FAILURE."""
    from minitask.exceptions import BrokerFullError
    worker.consumer = Consumer(BrokerFullError("publish refused: No space left on device"),
                               refusals=2)
    now = [100.0]
    monkeypatch.setattr("minitask.worker.worker.time.monotonic", lambda: now[0])
    link = protocol.encode_message(TaskMessage("tests.second", (2,), {}, id="t-2").encode())
    worker._store("t-1", "SUCCESS", "application/json", b'{"result": 2}', True, "tests.first",
                  0.001, [link], (), message_with_workflow(), ack=7)
    worker._flush_broker()
    assert len(worker.stores_again) == 1 and worker._timeout() == pytest.approx(0.1)
    worker._store_again()                           # not due yet
    assert len(worker.consumer.stored) == 1
    now[0] += 0.1
    worker._store_again()                           # refused again: twice the wait
    worker._flush_broker()
    assert worker._timeout() == pytest.approx(0.2)
    now[0] += 0.2
    worker._store_again()                           # taken
    worker._flush_broker()
    assert [(task_id, state, published) for task_id, state, published, _, _
            in worker.consumer.stored] == [("t-1", "SUCCESS", 1)] * 3
    assert worker.consumer.acks == [(7, 2)] and not worker.stores_again


def test_a_result_waiting_for_room_is_dropped_with_its_connection_when_acks_late(worker):
    """Its message comes back with the connection (acks late): sent too, it would run
    twice. Without an ack (acked as it started), it waits for the next connection."""
    from minitask.exceptions import BrokerFullError
    worker.consumer = Consumer(BrokerFullError("queue 'next' is full (max_length 1)"))
    link = protocol.encode_message(TaskMessage("tests.second", (2,), {}, id="t-2").encode())
    for task_id, ack in (("t-1", 7), ("t-5", None)):
        worker._store(task_id, "SUCCESS", "application/json", b'{"result": 2}', True,
                      "tests.first", 0.001, [link], (), message_with_workflow(), ack=ack)
    worker._flush_broker()
    assert [entry[2] for entry in worker.stores_again] == [7, None]
    worker.consumer.lost = worker.consumer.set_extra_credit = lambda *args: None
    worker._connection_lost(BrokerFullError("gone"))
    assert [entry[1]["task_id"] for entry in worker.stores_again] == ["t-5"]
