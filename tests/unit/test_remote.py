"""minitask.worker.remote: a control command's envelope and arguments, however wrong their
types, get an error reply or are ignored; they never raise into the worker's loop."""

import pytest

from minitask import control, protocol as P
from minitask.protocol import decode_message
from minitask.worker.remote import handle_control


class FakeConsumer:
    connected = True
    max_body = 1 << 20

    def __init__(self):
        self.replies = []

    def reply(self, reply_to, data):
        message = decode_message(data)
        self.replies.append((reply_to, control.decode_body(message.body)))


class FakeWorker:
    hostname = "w1"

    def __init__(self):
        self.consumer = FakeConsumer()
        self.rates = []

    def set_rate_limit(self, task_name, rate_limit):
        self.rates.append((task_name, rate_limit))


@pytest.mark.parametrize("body, replied", [
    ({"method": "ping", "destination": 5, "reply_to": "q"}, None),
    ({"method": "ping", "destination": [5, None], "reply_to": "q"}, None),
    ({"method": ["ping"], "reply_to": "q"}, "unknown control method ['ping']"),
    ({"method": {"a": 1}, "reply_to": "q"}, "unknown control method {'a': 1}"),
    ({"method": "ping", "reply_to": 7}, None),
    ({"method": "ping", "reply_to": "q", "ticket": 9}, "pong"),
    ({"method": "ping", "reply_to": "q", "arguments": ["x"]}, "arguments must be an object"),
    ({"method": "rate_limit", "reply_to": "q", "arguments": {"task_name": ["t"],
                                                            "rate_limit": "1/s"}},
     "rate_limit: task_name must be a string"),
    ({"method": "revoke", "reply_to": "q", "arguments": {"task_ids": 5}},
     "revoke: task_ids must be a list of ids"),
    ({"method": "query_task", "reply_to": "q", "arguments": {"ids": 5}},
     "query_task: ids must be a list of task ids"),
])
def test_a_command_of_the_wrong_shape_is_answered_or_ignored_never_raised(body, replied):
    worker = FakeWorker()
    handle_control(worker, body)
    if replied is None:
        assert worker.consumer.replies == []
    else:
        [(reply_to, answer)] = worker.consumer.replies
        reply = answer["reply"]
        assert reply_to == "q"
        assert reply == replied or reply == {"error": replied}, reply
    assert worker.rates == []


def test_a_destination_of_one_name_is_that_name_not_a_substring_of_it():
    worker = FakeWorker()
    handle_control(worker, {"method": "ping", "destination": "w12", "reply_to": "q"})
    handle_control(worker, {"method": "ping", "destination": "w1", "reply_to": "q"})
    assert [answer["reply"] for _q, answer in worker.consumer.replies] == ["pong"]


def test_a_reply_over_the_brokers_frame_limit_says_so_rather_than_cut_the_connection():
    """`inspect revoked` with many ids made a reply bigger than a broker's frame limit: the
    broker dropped the worker's connection (handing back its prefetched messages) and the
    asker heard nothing. The worker now answers that the reply was too big."""
    worker = FakeWorker()
    worker.consumer.max_body = 300
    worker.revoked = ["task-%05d" % number for number in range(100)]
    handle_control(worker, {"method": "revoked", "reply_to": "q"})
    [(reply_to, answer)] = worker.consumer.replies
    assert "revoked: the reply takes" in answer["reply"]["error"]
    assert "over the broker's frame limit of 300" in answer["reply"]["error"]


def test_inspect_items_show_the_arguments_as_celery_does_and_never_unpickle():
    """``'args': '(8,)', 'kwargs': '{}'``, argsrepr and kwargsrepr when the call gave them;
    the main process reads no pickle (nor a body that does not decode). There were none."""
    from minitask.message import TaskMessage
    from minitask.worker.remote import _shown_args

    def data(message):
        return P.encode_message(message.encode())

    assert _shown_args(data(TaskMessage("t", (8,), {}))) == ("(8,)", "{}")
    hidden = TaskMessage("t", ("secret",), {"card": "1234"})
    hidden.argsrepr, hidden.kwargsrepr = "(<hidden>,)", "{'card': '****'}"
    assert _shown_args(data(hidden)) == ("(<hidden>,)", "{'card': '****'}")
    assert _shown_args(data(TaskMessage("t", (8,), {}, serializer="pickle"))) == ("...", "...")
    assert _shown_args(b"\x00garbage") == ("...", "...")


def test_inspect_scheduled_items_nest_the_request_as_celerys_do():
    """Celery's ``inspect().scheduled()`` items are ``{'eta': ..., 'request': {'id': ...,
    'name': ..., 'args': ..., 'kwargs': ...}}``: code reading ``item['request']['id']``
    works; minitask's own flat keys stay."""
    from minitask.message import TaskMessage
    from minitask.worker.pool import Job
    from minitask.worker.remote import scheduled
    from minitask.worker.scheduler import Scheduler

    worker = FakeWorker()
    worker.scheduler = Scheduler(lambda: 0)
    data = P.encode_message(TaskMessage("t", (8,), {}, id="the-id").encode())
    worker.scheduler.enter(1234.5, Job(1, 1, "the-id", "t", data))
    [item] = scheduled(worker)
    assert item["eta"] == 1234.5 and item["id"] == "the-id"
    assert {key: item["request"][key] for key in ("id", "name", "args", "kwargs")} == {
        "id": "the-id", "name": "t", "args": "(8,)", "kwargs": "{}"}
