"""The transport seam: everything the task API, results, the CLI and the worker ask of a broker.

Nothing above this line knows how a broker is reached. A transport gives two objects:

- a `Client`, one per thread, for producers: publish with confirms, topology, results and
  waits, revocations, remote control, the beat lease, status;
- a `Consumer`, one per worker, for the worker's loop: deliveries with prefetch, acks and
  rejects, task starts, results with what they unlock, control replies. It is non-blocking and
  selectable (`fileno()`), so the worker waits on the broker, its pool and its clock at once.

Messages cross the seam already encoded, in the layout of `minitask.protocol` section 3.1
(`protocol.encode_message`), whatever the transport stores them in: the task API builds them
once, the worker reads the few fields it needs without decoding the body, and a transport
never decodes a task's payload (it may be pickled).

Results cross as ``Result(state, ready, date_done, content_type, payload)``: the payload is a
serialized result meta (`minitask.message`), opaque to the transport.

Two operations exist for workflows. `Client.publish_atomic` publishes several messages as one
unit (a chord: its parked body and its header's tasks). `Consumer.store_result(...,
publish=[...])` stores a task's result and publishes the messages it unlocks (the next link
of a chain, callbacks, errbacks) in one atomic, durable step: after a crash, both happened or
neither did (with `chained`, the same result is stored for the rest of a chain that stops at
this task, in that step too). A transport holds a message with header "x-chord-wait" (a
chord's body) until those results are final (`minitask.joins`).

Errors: a lost connection is `BrokerConnectionError`; a refused publish is
`UnroutableError`, `NotDeliverableError` or `PublishRefusedError`; a malformed message or
argument is `ProtocolError`; anything else the broker refuses is `BrokerError` with its
protocol code (404 no such queue or exchange, 406 declared otherwise, 409 exclusive to
another connection). A transport raises nothing else.

Transports register by URL scheme (`minitask.transport.transport_for`); the contract every
one of them keeps is `tests/contract/`.
"""

import collections

from .. import protocol as P

__all__ = ["HEARTBEAT", "Client", "Consumer", "Delivery", "Refused", "Result"]

# Seconds between the heartbeats a worker promises; a broker (or the workers of a Redis) counts
# a worker lost after missing about two.
HEARTBEAT = 10.0

Result = collections.namedtuple("Result", "state ready date_done content_type payload")


class Delivery:
    """One message handed to a consumer: ack or reject it by `delivery_tag` (0 for a queue
    consumed without acks, such as the control queue). `deliveries` counts the times the
    message was delivered, this one included; `redelivered` is ``deliveries > 1``."""

    __slots__ = ("delivery_tag", "consumer_tag", "redelivered", "deliveries", "data",
                 "_message")

    def __init__(self, delivery_tag, consumer_tag, redelivered, deliveries, data):
        self.delivery_tag = delivery_tag
        self.consumer_tag = consumer_tag
        self.redelivered = redelivered
        self.deliveries = deliveries
        self.data = data
        self._message = None

    @property
    def message(self):
        """The decoded `protocol.Message` (decoded on first use)."""
        if self._message is None:
            self._message = P.decode_message(self.data)
        return self._message

    def __repr__(self):
        return "<Delivery %d of consumer %d>" % (self.delivery_tag, self.consumer_tag)


class Client:
    """A producer's connection. Every method may raise BrokerConnectionError."""

    url = ""

    def connect(self):
        """Connect (and authenticate) if not connected; returns self."""
        raise NotImplementedError

    @property
    def connected(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    # -- topology (AMQP's model: exchanges, queues, bindings) --

    def declare_exchange(self, exchange, type="direct", durable=True, auto_delete=False,
                         passive=False):
        raise NotImplementedError

    def declare_queue(self, queue, durable=True, exclusive=False, auto_delete=False,
                      passive=False, **arguments):
        """Returns ``{"queue": name, "messages": ready, "consumers": n}``; "" names a new
        exclusive queue."""
        raise NotImplementedError

    def bind(self, queue, exchange, binding_key="", arguments=None):
        raise NotImplementedError

    def ensure_queue(self, queue):
        """Declare durable `queue` (on the default exchange) unless it was already: a call
        routed to a queue that is not in QUEUES (Celery's task_create_missing_queues)."""
        self.declare_queue(queue)

    def purge(self, queue):
        """Drop the waiting messages of `queue`; returns how many."""
        raise NotImplementedError

    # -- publishing --

    def publish(self, data, confirm=True, timeout=None):
        """Publish one encoded message; with `confirm`, return once the broker holds it."""
        raise NotImplementedError

    def publish_many(self, messages, timeout=None):
        """Publish many encoded messages, pipelined; return once every one is held."""
        raise NotImplementedError

    def publish_atomic(self, messages, timeout=None):
        """Publish encoded messages as one unit: all of them are held, or none (a chord:
        its parked body and its header's tasks). Raises BrokerError when the broker cannot
        (an older one)."""
        raise NotImplementedError

    def publish_with_record(self, data, key, value, timeout=None):
        """Set the durable setting `key` and publish, atomically (the beat's send record)."""
        raise NotImplementedError

    # -- results --

    def get_result(self, task_id):
        """The `Result` as the broker has it now (state PENDING when it knows nothing)."""
        raise NotImplementedError

    def wait_result(self, task_id, timeout=None):
        """The `Result` once its state is final, or as it is when `timeout` seconds passed.
        Pushed by the broker, never polled."""
        raise NotImplementedError

    def set_state(self, task_id, content_type, payload):
        """Store a running task's own state (``update_state``): a STARTED result whose
        payload's "status" names the state. Kept until the task ends, never over a final
        result; the task stays running. Returns False where the broker cannot (an older
        built-in broker)."""
        raise NotImplementedError

    def forget(self, task_ids, expired=False):
        """Remove these results; with `expired`, also every result whose time is up now."""
        raise NotImplementedError

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        """Revoke tasks everywhere, workers that start later included."""
        raise NotImplementedError

    # -- the rest --

    def broadcast(self, method, arguments=None, destination=None, timeout=1.0, reply=True,
                  limit=None):
        """Send a remote-control command to every worker (or those in `destination`);
        returns ``{hostname: reply}`` gathered until `timeout` or `limit` replies."""
        raise NotImplementedError

    def lease(self, name, holder, ttl):
        """Take or renew the lease `name` for `holder`; returns ``{"granted", "holder",
        "expires_in"}``. At most one holder at a time, across every client."""
        raise NotImplementedError

    def kv_get(self, key):
        raise NotImplementedError

    def kv_set(self, key, value):
        """Set a durable setting (a beat entry's first run)."""
        raise NotImplementedError

    def status(self, scheduled=0):
        """A JSON-ready report: queues, workers, running tasks (see `minitask status`); with
        `scheduled`, also up to that many delayed messages, soonest first."""
        raise NotImplementedError


# A result the broker refused with what it unlocked (`Consumer.refused`): nothing of it
# happened. `state` is the one that was to be stored, `context` what the worker passed,
# `ack` the delivery it was to ack (not acked: whatever is stored instead acks it).
Refused = collections.namedtuple("Refused", "task_id state task_name context error ack",
                                 defaults=(None,))


class Consumer:
    """A worker's connection: consume, ack, report. Non-blocking after `connect()`.

    Everything said to the broker (acks, starts, rejects, results, replies) is buffered and
    written by `flush()`; `end_turn()` turns a loop turn's acks into as few frames as it can.
    `generation` counts connections: a delivery tag means something only on the connection
    that delivered it, so a worker drops what it kept for an older generation.
    """

    generation = 0
    control_tag = None
    # True while `read()` has deliveries to hand over that `fileno()` does not announce (a
    # transport that fetched them in `flush()`): the worker then reads without waiting.
    holds_deliveries = False

    def connect(self, timeout=5.0):
        """Connect, declare, start consuming; returns deliveries that arrived meanwhile."""
        raise NotImplementedError

    def flush_due(self):
        """Seconds until `flush()` must run again for what it held back; None: nothing."""
        return None

    @property
    def connected(self):
        raise NotImplementedError

    def fileno(self):
        """What the worker's selector waits on for `read()`."""
        raise NotImplementedError

    def read(self):
        """The `Delivery`s that have arrived, in order; control commands come with
        ``consumer_tag == control_tag``."""
        raise NotImplementedError

    def ack(self, tag):
        raise NotImplementedError

    def ack_started(self, tag):
        """Ack a task as it starts, handing it over: if this worker is lost before its result
        arrives, the broker stores FAILURE / WorkerLostError for it."""
        raise NotImplementedError

    def started(self, tag):
        """Report an acks-late task as started, leaving it unacked."""
        raise NotImplementedError

    def reject(self, tag, requeue=True):
        raise NotImplementedError

    def release(self, tag):
        """Give back a message taken but never started (a warm shutdown, a pool that could
        not start): it goes back to its queue, and this delivery does not count toward the
        queue's ``max_redeliveries``, which is for messages whose runs keep failing."""
        raise NotImplementedError

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        """Store a task's result and publish the encoded messages it unlocks, atomically.
        `chained`: more task ids given the same result in the same step (the rest of a chain
        that stops at this task, which never runs: its waiters get this outcome).
        `store=False`: the task finished but keeps no result (ignore_result). `task_name` and
        `runtime` (seconds; None when it did not run) are for the broker's per-task counts.
        A result with something to publish may be refused by the broker as one unit (a
        message it cannot route, a journal that cannot be written): `refused()` then gives
        it back, with `context`, for the worker to store what it can instead.
        `ack`: the tag of the delivery to ack once the result is stored. A plain result's
        ack follows it at once; a unit's waits until the broker took the unit, so that a
        unit refused, or lost with the connection before the broker said, never leaves an
        acks-late task acked with nothing stored: its message comes back instead."""
        raise NotImplementedError

    _refusals = ()                      # a transport's list of Refused, for refused()

    def refused(self):
        """The `Refused` units of `store_result` the broker turned down since the last call."""
        if not self._refusals:          # every flush asks: the usual answer costs nothing
            return ()
        refused, self._refusals = self._refusals, []
        return refused

    # The most a frame's body may take on this transport (the built-in broker's frame
    # limit, as it announced it); without a bound of its own, more than anything sent.
    max_body = float("inf")

    def oversized(self, task_id, state, content_type, payload, publish=(), task_name="",
                  runtime=None, chained=()):
        """Why `store_result` of this would be more than the broker takes in one message (one
        line), or None. Only the built-in broker has such a bound (its frame limit)."""
        return None

    def reply(self, reply_to, data):
        """Send an encoded control reply to the asker's queue (no confirm)."""
        raise NotImplementedError

    def claim(self, task_ids):
        """After a reconnect: these handed-over tasks still run here."""
        raise NotImplementedError

    def set_extra_credit(self, held):
        """Messages the worker holds itself (ETAs, rate limits) raise its prefetch by as many."""
        raise NotImplementedError

    def add_queue(self, name):
        raise NotImplementedError

    def cancel_queue(self, name):
        raise NotImplementedError

    def cancel_all(self):
        """Stop consuming every queue (a warm shutdown)."""
        for name in list(self.queues):
            self.cancel_queue(name)

    def pause(self):
        """Stop taking tasks (keep the queues to take them from): the pool cannot run them."""
        raise NotImplementedError

    def resume(self):
        """Take tasks from every queue, now or as soon as connected. A consumer starts paused,
        until the worker's pool processes are ready."""
        raise NotImplementedError

    def report(self, info):
        """The worker's description changed (degraded, well again): tell the broker, for
        `status`."""
        raise NotImplementedError

    def heartbeat(self):
        raise NotImplementedError

    def end_turn(self):
        raise NotImplementedError

    def flush(self):
        """Write what the connection takes now; True when something is left to write."""
        raise NotImplementedError

    def lost(self):
        """Forget a failed connection; everything unacked goes back to its queue."""
        raise NotImplementedError

    def close(self):
        """Send what is buffered (briefly), then close."""
        raise NotImplementedError
