"""What the transport contract tests use: a `Harness` per transport, a `Stream` per consumer.

Everything here goes through `minitask.transport` (`client_for`, `consumer_for`) and the
interface of `minitask.transport.base`, never a transport's own extras, so a new transport
is tested by adding it to the `transport` fixture and nothing else.

Waits are polls (`wait_for`, the integration suite's) or selects with deadlines; none is a
bare sleep.
"""

import collections
import os
import select
import time
import uuid

from cluster import wait_for  # noqa: F401  (tests/integration, on the path: conftest.py)
from minitask import config, control, protocol as P, transport
from minitask.message import ResultMeta, decode_result_meta, encode_result_meta

# Seconds a transport's broker gives a lost consumer to come back before its handed-over tasks
# fail with WorkerLostError; short, so the tests that wait for it stay short.
GRACE = 1.5
# A delayed message may reach the consumer up to this long before it is due (the worker holds
# it until then); the built-in broker's is 0.5 s. Generous bounds on lateness come with it.
RELEASE_AHEAD_AT_MOST = 1.0
LATE_AT_MOST = 3.0
# Deadline of every wait for something that must happen.
PATIENCE = 15.0


def message(routing_key, exchange="", body=b"{}", message_id=None, priority=None,
            not_before=0.0, expires_at=0.0, mandatory=False, immediate=False, headers=None):
    """An encoded task message (protocol section 3.1), as the task API would publish it."""
    flags = P.PERSISTENT | (P.MANDATORY if mandatory else 0) | (P.IMMEDIATE if immediate else 0)
    return P.encode_message(P.Message(
        body=body, exchange=exchange, routing_key=routing_key,
        message_id=message_id or uuid.uuid4().hex, type="contract.task", headers=headers,
        priority=priority, not_before=not_before, expires_at=expires_at, flags=flags))


def task_id(data):
    return P.message_id_of(data)


def result_payload(task, state="SUCCESS", value=42):
    """``(content_type, payload)`` of a result meta, as a worker stores it."""
    return encode_result_meta(ResultMeta(task, state, value, None, "contract.task", 0,
                                         time.time()))


def result_value(task, result):
    """The value (or exception) a stored `Result` carries."""
    return decode_result_meta(task, result.state, result.content_type, result.payload).result


class Stream:
    """One consumer, with the deliveries it has read that the test has not taken yet."""

    def __init__(self, consumer, early):
        self.consumer = consumer
        self.tasks = collections.deque()
        self.commands = collections.deque()     # control commands, decoded
        self._file(early)

    def _file(self, deliveries):
        for delivery in deliveries:
            if delivery.consumer_tag == self.consumer.control_tag:
                self.commands.append(control.decode_body(delivery.message.body))
            else:
                self.tasks.append(delivery)

    def pump(self, timeout):
        """Wait up to `timeout` for the consumer's descriptor, then read what came (at once
        when the consumer holds deliveries already, as the worker does)."""
        if self.consumer.holds_deliveries:
            timeout = 0.0
        readable, _, _ = select.select([self.consumer], [], [], max(0.0, timeout))
        if readable or self.consumer.holds_deliveries:
            self._file(self.consumer.read())

    def receive(self, count=1, timeout=PATIENCE):
        """The next `count` task deliveries; fails when they do not all come in time."""
        deadline = time.monotonic() + timeout
        while len(self.tasks) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%d of %d deliveries came within %gs"
                                     % (len(self.tasks), count, timeout))
            self.pump(left)
        return [self.tasks.popleft() for _ in range(count)]

    def command(self, timeout=PATIENCE):
        """The next control command (decoded body)."""
        deadline = time.monotonic() + timeout
        while not self.commands:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no control command came within %gs" % timeout)
            self.pump(left)
        return self.commands.popleft()

    def say(self):
        """End the turn and write everything said (acks, results...) to the broker,
        including what the consumer holds back for a moment (`flush_due`), as the worker's
        loop does when its select times out."""
        deadline = time.monotonic() + PATIENCE
        while True:
            self.consumer.end_turn()
            while self.consumer.flush():
                if time.monotonic() > deadline:
                    raise AssertionError("the consumer could not write what it said")
                select.select([], [self.consumer], [], 0.05)
            due = self.consumer.flush_due()
            if due is None:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the consumer kept holding back what it said")
            self.pump(due)


class Harness:
    """One transport under test: makes clients and consumers, and closes them all after."""

    def __init__(self, name, url, stop_broker):
        self.name = name
        self.url = url
        self.settings = config.Settings({"BROKER_URL": url})
        self.stop_broker = stop_broker      # the broker goes away at once, as if killed
        self._closers = []

    def client(self):
        conn = transport.client_for(self.settings, client="contract")
        self._closers.append(conn.close)
        return conn.connect()

    def consumer(self, queues, prefetch=10, hostname="w1", paused=False):
        info = {"hostname": hostname, "pid": os.getpid(), "concurrency": 1,
                "queues": list(queues)}
        consumer = transport.consumer_for(self.settings, queues, prefetch, info, hostname)
        self._closers.append(consumer.close)
        if not paused:
            consumer.resume()
        return Stream(consumer, consumer.connect())

    def jobs(self, *messages):
        """A client, once it has declared the queue ``jobs`` and published `messages` to it."""
        conn = self.client()
        conn.declare_queue("jobs")
        for data in messages:
            conn.publish(data)
        return conn

    def queue_row(self, conn, name):
        """The status row of queue `name` (None when there is no such queue)."""
        return next((row for row in conn.status()["queues"] if row["name"] == name), None)

    def close(self):
        for close in reversed(self._closers):
            close()
