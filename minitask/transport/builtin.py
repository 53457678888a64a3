"""The built-in broker's transport (``minitask://``, ``minitasks://`` for TLS) over sockets.

Two classes share one `Link` (the socket) and one `Conversation` (the protocol state):

- `Connection`, the blocking `Client`: each call sends its frames and reads until the
  conversation says its answer came. Whatever else arrives meanwhile (deliveries, other
  commands' confirms) is filed away by the conversation, so pipelined publishes and a
  consumer's stream never get in each other's way.
- `Consumer`, the worker's side: set up with blocking calls, then non-blocking; `read()`
  returns deliveries as they come and everything the worker says back is buffered and
  written by `flush()`.

On Linux a broker without TLS also listens on the abstract UNIX socket of its port, and a
client of a loopback URL tries it first: a round trip costs a fraction of one over loopback
TCP. Any local process could have bound that name, so before sending a byte the client asks
the kernel who is listening (``SO_PEERCRED``) and uses the socket only when that is itself,
root or the configured broker user; otherwise it falls back to TCP.
"""

import collections
import logging
import os
import socket
import ssl
import struct
import sys
import time

from .. import control, protocol as P
from ..exceptions import (
    BrokerConnectionError, BrokerError, ProtocolError, PublishRefusedError,
    TimeoutError,
)
from . import base, declare_topology, declare_worker_queues
from .base import HEARTBEAT, Delivery
from .conversation import Conversation
from ..config import get_settings
from ..config import parse_broker_url, safe_url

__all__ = ["Connection", "Consumer", "Delivery", "client"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
_FROM_SETTINGS = object()                # broker_uid: BROKER_UID of the settings in force
RETRY_HANDSHAKE_FOR = 5.0               # connect() without a timeout: how long it asks again


class Link:
    """One socket to the broker: connecting (local, TCP, TLS), timeouts, reads into a buffer."""

    def __init__(self, url, host, port, tls, ca_file, timeout, local=True,
                 broker_uid=_FROM_SETTINGS):
        self.url = url
        self.host, self.port, self.tls = host, port, tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.local = local and not tls
        self.broker_uid = broker_uid
        self.sock = None
        self._read_timeout = _UNSET
        self._kernel_timeouts = False
        self.scratch = bytearray(_RECV_BYTES)       # reused by every recv: no allocation
        self.view = memoryview(self.scratch)

    def open(self):
        sock = self._open_local() if self.local and _is_loopback(self.host) else None
        if sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise BrokerConnectionError(
                    "cannot connect to %s: %s (is `python -m minitask broker` running there?)"
                    % (self.url, exc.strerror or exc)) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = self._wrap_tls(sock)
        self._read_timeout = _UNSET
        self._kernel_timeouts = not self.tls and _set_kernel_timeouts(sock, self.timeout)
        self.sock = sock

    def _open_local(self):
        name = P.local_socket_name(self.port)
        if name is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(name)
        except OSError:                 # no broker listening there: TCP it is
            sock.close()
            return None
        uid = _peer_uid(sock)
        broker_uid = self.broker_uid
        if broker_uid is _FROM_SETTINGS:
            broker_uid = get_settings().BROKER_UID
        if uid not in (os.geteuid(), 0, broker_uid):
            _warn_once("the local socket of port %d belongs to uid %s, not to the broker's "
                       "user; using TCP (set BROKER_UID if the broker runs as that user)"
                       % (self.port, uid))
            sock.close()
            return None
        return sock

    def _wrap_tls(self, sock):
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            sock.close()
            raise BrokerConnectionError("TLS handshake with %s failed: %s"
                                        % (self.url, exc)) from None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass                    # already gone
        self.sock = None

    def send(self, data):
        if self.sock is None:
            raise BrokerConnectionError("not connected to %s" % self.url)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) from None

    def recv(self, timeout):
        """Bytes read in one call (a view of the shared buffer), or None on timeout."""
        sock = self.sock
        if sock is None:
            raise BrokerConnectionError("not connected to %s" % self.url)
        if timeout != self._read_timeout:
            self._set_read_timeout(sock, timeout)
        try:
            count = sock.recv_into(self.scratch)
        except (socket.timeout, BlockingIOError, ssl.SSLWantReadError):
            return None
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) from None
        if not count:
            self.close()
            raise BrokerConnectionError("the broker at %s closed the connection" % self.url)
        return self.view[:count]

    def pending(self):
        """Decrypted TLS bytes that select() cannot see."""
        pending = getattr(self.sock, "pending", None)
        return bool(pending and pending())

    def _set_read_timeout(self, sock, timeout):
        """Where the kernel can time out a blocking recv (SO_RCVTIMEO), use that: Python's own
        socket timeouts cost a poll() before every recv and a syscall to change them."""
        if self._kernel_timeouts:
            if timeout is not None and timeout <= 0:
                sock.setblocking(False)
            else:
                sock.setblocking(True)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout or 0))
        else:
            sock.settimeout(timeout)
        self._read_timeout = timeout


class Connection(base.Client):
    """One blocking connection to one broker. Methods raise BrokerConnectionError when lost."""

    def __init__(self, url="minitask://127.0.0.1:5679", secret=None, ca_file=None,
                 timeout=10.0, heartbeat=0.0, client="minitask", worker_info=None,
                 on_connect=None, local=True, broker_uid=_FROM_SETTINGS):
        self.url = url
        _scheme, host, port, tls = parse_broker_url(url)
        self.link = Link(url, host, port, tls, ca_file, timeout, local, broker_uid)
        self.secret = secret
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.client = client
        self.worker_info = worker_info
        self.on_connect = on_connect        # callback(connection) after each handshake
        self.conversation = None
        self.declared_queues = set()        # declared by ensure_queue on this connection

    @property
    def connected(self):
        return self.link.sock is not None

    @property
    def deliveries(self):
        return self.conversation.deliveries

    @property
    def welcome(self):
        return self.conversation.welcome if self.conversation else {}

    @property
    def features(self):
        """What the broker offers beyond protocol 1 (WELCOME's "features")."""
        features = self.welcome.get("features")
        return frozenset(name for name in features if isinstance(name, str)) \
            if isinstance(features, list) else frozenset()

    def connect(self):
        """Open the socket and do the handshake. Raises BrokerConnectionError naming the URL.

        A broker that turns the handshake away for want of room (it makes room for newer
        handshakes by dropping the oldest, see `broker.admission`) is asked again, with a
        short backoff, until the connect timeout: a process flooding our address with
        half-open handshakes can push a slow client out once, not keep it out."""
        if self.link.sock is not None:
            return self
        deadline = time.monotonic() + (self.timeout or RETRY_HANDSHAKE_FOR)
        pause = 0.02
        while True:
            try:
                return self._connect_once()
            except BrokerConnectionError:
                turned_away = self.conversation is not None and self.conversation.turned_away
                if not turned_away or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _connect_once(self):
        self.link.open()
        self.conversation = Conversation(self.secret, self.client, self.heartbeat,
                                         self.worker_info, peer="the broker at %s" % self.url)
        self.declared_queues = set()
        try:
            self.conversation.hello()
            self._flush()
            self._wait(self._handshake_step, self.timeout, "answer to the handshake")
        except BaseException:
            self.link.close()
            raise
        if self.on_connect is not None:
            self.on_connect(self)
        return self

    def _handshake_step(self):
        self._flush()                       # AUTH, once the CHALLENGE came
        return self.conversation.is_open

    def close(self):
        """Say CLOSE if the socket takes it at once (never wait for that), then close."""
        sock = self.link.sock
        if sock is not None:
            try:
                sock.setblocking(False)
                sock.send(P.encode_frame(P.CLOSE, 0))
            except (OSError, ValueError):
                pass            # closing anyway: the broker sees the connection end
        self.link.close()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    # -- moving bytes --

    def _flush(self):
        outgoing = self.conversation.outgoing
        if outgoing:
            self.conversation.outgoing = bytearray()
            self.link.send(outgoing)

    def _read(self, timeout):
        """Receive once and let the conversation file it; False on timeout."""
        data = self.link.recv(timeout)
        if data is None:
            return False
        try:
            self.conversation.receive(data)
        except ProtocolError:
            self.link.close()
            raise
        except BrokerConnectionError:       # the handshake failed: drop the socket too
            self.link.close()
            raise
        return True

    def _wait(self, done, timeout, what):
        """Read until ``done()`` is true (it may raise the command's error); `what` names
        the answer awaited, for the TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Each read waits for what is left, rounded up to a sixteenth of the timeout: the
        # kernel's read timeout is set again (a syscall) only when that changes, not on every
        # read, and a wait overruns its deadline by less than a step.
        step = None if not timeout else timeout / 16.0
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no %s from %s within %ss" % (what, self.url, timeout))
                self._read(left if step is None else -(-left // step) * step)
        except BrokerConnectionError:
            closing = self.conversation.closing_error
            if closing is not None and not self.connected:
                raise closing from None     # the broker said why before it closed
            raise

    def send_frames(self, data):
        """Send already-encoded frames (acks, results) without waiting for anything."""
        self.conversation.send_frames(data)
        self._flush()

    def call(self, kind, args=None, timeout=None):
        """Send a JSON command and return its OK reply as a dict."""
        reply_kind, body = self._request(kind, args, timeout)
        return P.decode_json(body, P.command_name(reply_kind))

    def _request(self, kind, args, timeout):
        conversation = self.conversation or self.connect().conversation
        seq = conversation.command(kind, args)
        self._flush()
        answer = []

        def done():
            reply = conversation.reply(seq)
            if reply is not None:
                answer.append(reply)
            return bool(answer)
        try:
            self._wait(done, self.timeout if timeout is None else timeout, "reply")
        except TimeoutError:
            conversation.abandon(seq)
            raise
        return answer[0]

    # -- topology --

    def declare_exchange(self, exchange, type="direct", durable=True, auto_delete=False,
                         passive=False):
        return self.call(P.DECLARE_EXCHANGE, {"exchange": exchange, "type": type,
                                              "durable": durable, "auto_delete": auto_delete,
                                              "passive": passive})

    def declare_queue(self, queue, durable=True, exclusive=False, auto_delete=False,
                      passive=False, **arguments):
        args = {"queue": queue, "durable": durable, "exclusive": exclusive,
                "auto_delete": auto_delete, "passive": passive}
        args.update(arguments)
        return self.call(P.DECLARE_QUEUE, args)

    def ensure_queue(self, queue):
        """Declare durable `queue` unless this connection did already: a call routed to a
        queue that is not in QUEUES (Celery's task_create_missing_queues)."""
        if queue not in self.declared_queues:
            self.declare_queue(queue)
            self.declared_queues.add(queue)

    def bind(self, queue, exchange, binding_key="", arguments=None):
        return self.call(P.BIND, {"queue": queue, "exchange": exchange,
                                  "binding_key": binding_key, "arguments": arguments or {}})

    def unbind(self, queue, exchange, binding_key="", arguments=None):
        return self.call(P.UNBIND, {"queue": queue, "exchange": exchange,
                                    "binding_key": binding_key, "arguments": arguments or {}})

    def purge(self, queue):
        return self.call(P.PURGE, {"queue": queue})["messages"]

    def delete_queue(self, queue):
        return self.call(P.DELETE_QUEUE, {"queue": queue})["messages"]

    def delete_exchange(self, exchange):
        return self.call(P.DELETE_EXCHANGE, {"exchange": exchange})

    # -- publishing --

    def publish(self, data, confirm=True, timeout=None):
        """Publish an encoded message; with `confirm`, return once the broker holds it."""
        conversation = self.conversation or self.connect().conversation
        seq = conversation.publish(_encoded(data), confirm)
        self._flush()
        if confirm:
            self._wait(lambda: conversation.confirmed(seq),
                       self.timeout if timeout is None else timeout, "confirm")

    def publish_with_record(self, data, key, value, timeout=None):
        """Set a durable broker setting and publish, as one unit: a broker crash keeps both
        or neither (periodic tasks' last send times).

        A broker that lists "atomic" in its WELCOME gets one ATOMIC frame, which it journals
        as one record. An older broker gets KV_SET and PUBLISH in one write: two records in
        one write, which a crash tearing that very write could split.
        """
        conversation = self.conversation or self.connect().conversation
        timeout = self.timeout if timeout is None else timeout
        kv = P.encode_json(P.KV_SET, 0, {"key": key, "value": value})
        if "atomic" in self.features:
            seq = conversation.confirmable(P.ATOMIC,
                                           kv + P.encode_frame(P.PUBLISH, 0, _encoded(data)))
            self._flush()
            self._wait(lambda: conversation.confirmed(seq), timeout, "confirm")
            return
        conversation.check_size(P.PUBLISH, _encoded(data))    # before the KV_SET is queued
        kv_seq = conversation.command(P.KV_SET, {"key": key, "value": value})
        seq = conversation.publish(_encoded(data))
        self._flush()
        self._wait(lambda: conversation.reply(kv_seq) is not None, timeout, "reply")
        self._wait(lambda: conversation.confirmed(seq), timeout, "confirm")

    def publish_atomic(self, messages, timeout=None):
        """One ATOMIC frame of PUBLISHes, journalled by the broker as one record."""
        if "atomic" not in self.features:
            raise BrokerError("the broker at %s cannot take several messages as one unit (it "
                              "is older than this client)" % self.url, P.COMMAND_INVALID)
        frames = [P.encode_frame(P.PUBLISH, 0, _encoded(data)) for data in messages]
        if len(frames) > P.MAX_ATOMIC_FRAMES:
            raise ProtocolError("%d messages in one unit: at most %d"
                                % (len(frames), P.MAX_ATOMIC_FRAMES))
        conversation = self.conversation or self.connect().conversation
        timeout = self.timeout if timeout is None else timeout
        seq = conversation.confirmable(P.ATOMIC, b"".join(frames))
        self._flush()
        self._wait(lambda: conversation.confirmed(seq), timeout, "confirm")

    def publish_many(self, messages, timeout=None, window=100):
        """Publish many messages keeping up to `window` unconfirmed; return once all are held.
        A refusal stops there: the messages before it are sent (and confirmed) first, as on
        Redis, and none of them waits for a later call to go out."""
        conversation = self.conversation or self.connect().conversation
        timeout = self.timeout if timeout is None else timeout
        what = "confirm"
        batch = []
        try:
            for data in messages:
                batch.append(conversation.publish(_encoded(data)))
                if len(batch) >= window:
                    self._flush()
                    older, batch = batch[:window // 2], batch[window // 2:]
                    self._wait(lambda: conversation.all_confirmed(older), timeout, what)
        except (PublishRefusedError, ProtocolError):   # refused before it was queued
            self._flush()
            self._wait(lambda: conversation.all_confirmed(batch), timeout, what)
            raise
        self._flush()
        self._wait(lambda: conversation.all_confirmed(batch), timeout, what)

    # -- consuming (the CLI's control replies, tests) --

    def qos(self, prefetch_count):
        return self.call(P.QOS, {"prefetch_count": prefetch_count})

    def consume(self, queue, no_ack=False):
        """Start consuming `queue`; returns the consumer tag. Messages arrive in `deliveries`."""
        return self.call(P.CONSUME, {"queue": queue, "no_ack": no_ack})["consumer_tag"]

    def cancel(self, consumer_tag):
        return self.call(P.CANCEL, {"consumer_tag": consumer_tag})

    def get_delivery(self, timeout=None):
        """The next delivery, waiting up to `timeout` seconds; None when none came."""
        deliveries = self.conversation.deliveries
        try:
            self._wait(lambda: bool(deliveries), timeout, "delivery")
        except TimeoutError:
            return None
        return deliveries.popleft()

    def ack(self, tags, multiple=False, started=False):
        flags = (P.MULTIPLE if multiple else 0) | (P.STARTED if started else 0)
        self.send_frames(P.encode_tags(P.ACK, flags, list(tags)))

    def reject(self, tags, requeue=True):
        self.send_frames(P.encode_tags(P.REJECT, P.REQUEUE if requeue else 0, list(tags)))

    def drain(self, timeout=0.0):
        """Read whatever has arrived (deliveries, confirms) within `timeout`."""
        self._read(timeout)

    # -- results --

    def set_result(self, task_id, state, content_type, payload, ttl=0.0, store=True):
        conversation = self.conversation or self.connect().conversation
        seq = conversation.confirmable(P.RESULT_SET, _result_body(
            task_id, state, P.STORE if store else 0, ttl, content_type, payload))
        self._flush()
        self._wait(lambda: conversation.confirmed(seq), self.timeout, "confirm")

    def set_state(self, task_id, content_type, payload):
        if "task_states" not in self.connect().features:
            return False
        self.set_result(task_id, "STARTED", content_type, payload)
        return True

    def get_result(self, task_id):
        return self._result(P.RESULT_GET, {"task_id": task_id}, self.timeout)

    def wait_result(self, task_id, timeout=None):
        args = {"task_id": task_id}
        if timeout is not None:
            args["timeout"] = max(0.0, timeout)
        # The broker answers at the timeout; allow a little for the trip back.
        return self._result(P.RESULT_WAIT, args,
                            None if timeout is None else timeout + max(5.0, self.timeout))

    def _result(self, kind, args, timeout):
        reply_kind, body = self._request(kind, args, timeout)
        if reply_kind != P.RESULT:
            raise ProtocolError("expected RESULT, got %s" % P.command_name(reply_kind))
        _task_id, state, flags, date_done, content_type, payload = P.decode_result(body)
        return base.Result(state, bool(flags & P.READY), date_done, content_type, payload)

    def forget(self, task_ids, expired=False):
        args = {"task_ids": list(task_ids)}
        if expired:
            args["expired"] = True
        return self.call(P.RESULT_FORGET, args)

    def kv_set(self, key, value):
        return self.call(P.KV_SET, {"key": key, "value": value})

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        return self.call(P.REVOKE, {"task_ids": list(task_ids), "terminate": terminate,
                                    "signal": signal})

    # -- the rest --

    def broadcast(self, method, arguments=None, destination=None, timeout=1.0, reply=True,
                  limit=None):
        if not reply:
            self.publish(P.encode_message(control.command_message(method, arguments,
                                                                  destination)))
            return {}
        reply_queue = self.declare_queue("", durable=False, exclusive=True,
                                         auto_delete=True)["queue"]
        tag = self.consume(reply_queue, no_ack=True)
        message = control.command_message(method, arguments, destination, reply_queue)
        try:
            self.publish(P.encode_message(message))
            return self._gather(tag, message.message_id, timeout, limit)
        finally:
            self.cancel(tag)            # the reply queue goes with its consumer
            self.conversation.deliveries = collections.deque(
                delivery for delivery in self.conversation.deliveries
                if delivery.consumer_tag != tag)    # late replies, no ack needed

    def _gather(self, tag, ticket, timeout, limit):
        replies = {}
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            delivery = self.get_delivery(max(0.0, deadline - time.monotonic()))
            if delivery is None:
                break
            try:
                body = control.decode_body(delivery.message.body)
            except ProtocolError:
                continue            # not a reply of ours
            if delivery.consumer_tag == tag and body.get("ticket") == ticket:
                replies[body.get("hostname", "?")] = body.get("reply")
        return replies

    def lease(self, name, holder, ttl):
        return self.call(P.LEASE, {"name": name, "holder": holder, "ttl": ttl})

    def kv_get(self, key):
        return self.call(P.KV_GET, {"key": key})["value"]

    def status(self, scheduled=0):
        return self.call(P.STATUS, {"scheduled": scheduled} if scheduled else {})


class Consumer(base.Consumer):
    """A worker's connection: blocking set-up, then a non-blocking stream (see the module)."""

    def __init__(self, settings, queues, prefetch, worker_info, hostname):
        self.settings = settings
        self.queues = list(queues)
        self.prefetch = prefetch
        self.extra_credit = 0           # messages held by the worker (ETA, rate limits)
        self.worker_info = worker_info
        self.hostname = hostname
        self.conn = None
        self.generation = 0
        self.consumer_tags = {}         # consumer tag -> queue name
        self.control_tag = None
        self.control_queue = None
        self.out = bytearray()
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._releases = []
        self._qos_sent = None
        self.paused = True              # no task consumers until resume()
        self.features = frozenset()     # what the broker offers beyond protocol 1
        self.max_body = P.MAX_FRAME_BYTES   # the broker's frame limit, as it announced it
        self._units = {}                # seq of an ATOMIC result -> base.Refused, no error
        self._refusals = []
        # The results' time to live: the worker's RESULT_EXPIRES when its settings give one
        # (Celery's result_expires is the app's, as on Redis), else the broker's (0).
        self.result_ttl = settings.RESULT_EXPIRES if _given(settings, "RESULT_EXPIRES") else 0.0

    def connect(self, timeout=5.0):
        settings = self.settings
        conn = Connection(settings.BROKER_URL, secret=settings.BROKER_SECRET,
                          ca_file=settings.BROKER_CA_FILE, timeout=timeout,
                          heartbeat=HEARTBEAT, client="minitask-worker",
                          worker_info=self.worker_info, broker_uid=settings.BROKER_UID)
        conn.connect()
        try:
            declare_topology(conn, settings)
            declare_worker_queues(conn, settings, self.queues)
            self.control_queue = conn.declare_queue(
                "", durable=False, exclusive=True, auto_delete=True)["queue"]
            conn.bind(self.control_queue, control.CONTROL_EXCHANGE)
            conn.qos(self.prefetch + self.extra_credit)
            self._qos_sent = self.prefetch + self.extra_credit
            self.consumer_tags = {}
            if not self.paused:
                for name in self.queues:
                    self.consumer_tags[conn.consume(name)] = name
            self.control_tag = conn.consume(self.control_queue, no_ack=True)
        except BaseException:
            conn.link.close()
            raise
        conn.link.sock.setblocking(False)
        self.conn = conn
        self.generation += 1
        self.features = conn.features
        self.max_body = conn.conversation.max_body
        self.out = bytearray()
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._releases = []
        early = list(conn.deliveries)       # arrived while we waited for the last reply
        conn.deliveries.clear()
        return early

    @property
    def connected(self):
        return self.conn is not None and self.conn.connected

    def fileno(self):
        return self.conn.link.sock.fileno()

    def read(self):
        conn = self.conn
        try:
            while True:
                data = conn.link.recv(0)
                if data is None:
                    break
                conn.conversation.receive(data)
                if not conn.link.pending():
                    break
        except ProtocolError as exc:
            raise BrokerConnectionError("broker sent a malformed frame: %s" % exc) from None
        conversation = conn.conversation
        if self._units:
            self._settle_units(conversation)
        while conversation.errors:
            logger.error("broker refused a command: %s", conversation.errors.popleft())
        deliveries = list(conversation.deliveries)
        conversation.deliveries.clear()
        return deliveries

    # -- what the worker says --

    def ack(self, tag):
        self._acks.append(tag)

    def ack_started(self, tag):
        self._started.append(tag)

    def started(self, tag):
        self._starts.append(tag)

    def reject(self, tag, requeue=True):
        if requeue:
            self._rejects.append(tag)
        else:
            self.out += P.encode_tags(P.REJECT, 0, [tag])

    def release(self, tag):
        self._releases.append(tag)

    def store_result(self, task_id, state, content_type, payload, store=True, publish=(),
                     task_name="", runtime=None, chained=(), context=None, ack=None):
        if self._started:
            # A task handed over this turn may be the one ending: its handover goes first.
            self.out += P.encode_tags(P.ACK, P.STARTED, self._started)
            self._started = []
        seq = 0
        if (publish or chained) and "atomic_results" in self.features:
            # A unit the broker may refuse: numbered, to hear it; acked once confirmed.
            seq = self.conn.conversation.numbered()
            self._units[seq] = base.Refused(task_id, state, task_name, context, None, ack)
        elif ack is not None:
            self._acks.append(ack)
        self.out += self._result_frames(task_id, state, content_type, payload, store, publish,
                                        task_name, runtime, chained, seq)

    def _settle_units(self, conversation):
        """Ack the deliveries of the result units the broker confirmed; keep those it
        refused for `refused()`."""
        for seq, error in conversation.outcomes(self._units).items():
            unit = self._units.pop(seq)
            if error is not None:
                self._refusals.append(unit._replace(error=error))
            elif unit.ack is not None:
                self._acks.append(unit.ack)

    def _result_frames(self, task_id, state, content_type, payload, store=True, publish=(),
                       task_name="", runtime=None, chained=(), seq=0):
        described = "described_results" in self.features
        ttl = self.result_ttl
        frame = P.encode_result(P.RESULT_SET, 0, task_id, state, P.STORE if store else 0, ttl,
                                content_type, payload, task_name if described else None,
                                runtime)
        if not publish and not chained:
            return frame
        # The rest of a stopped chain: the same result under each id (uncounted: they never
        # ran).
        others = [P.encode_result(P.RESULT_SET, 0, other, state, P.STORE, ttl, content_type,
                                  payload, None, None) for other in chained]
        published = [P.encode_frame(P.PUBLISH, 0, data) for data in publish]
        if "atomic_results" not in self.features:
            # A broker older than ATOMIC: the same frames one by one, the result first (so a
            # retry still cannot run before its RETRY is stored), without the all-or-nothing.
            _warn_once("the broker at %s is older than this worker: results and what they "
                       "unlock are sent one by one, not as one unit (upgrade it)"
                       % safe_url(self.settings.BROKER_URL))
            return frame + b"".join(others) + b"".join(published)
        return P.encode_atomic(seq, [frame] + others + published)

    def oversized(self, task_id, state, content_type, payload, publish=(), task_name="",
                  runtime=None, chained=()):
        limit = self.max_body
        # At most this much besides the payloads: frame headers, ids, names, counts.
        rough = len(payload) * (1 + len(chained)) + sum(len(data) for data in publish) \
            + 1024 * (2 + len(chained) + len(publish))
        if rough <= limit:
            return None                 # the usual case: nothing is built to know it
        size = len(self._result_frames(task_id, state, content_type, payload, True, publish,
                                       task_name, runtime, chained)) - P.HEADER.size
        if size <= limit:
            return None
        return ("takes %d bytes%s, over the %d-byte frame limit of %s" % (
            size, " with what it unlocks" if publish or chained else "", limit,
            safe_url(self.settings.BROKER_URL)))

    def reply(self, reply_to, data):
        self.out += P.encode_frame(P.PUBLISH, 0, data)

    def claim(self, task_ids):
        self.out += P.encode_json(P.CLAIM, 0, {"task_ids": list(task_ids)})

    def heartbeat(self):
        self.out += P.HEADER.pack(0, P.HEARTBEAT, 0)

    def pause(self):
        self.paused = True
        if self.connected:
            for tag in self.consumer_tags:
                self.out += P.encode_json(P.CANCEL, 0, {"consumer_tag": tag})
        self.consumer_tags = {}

    def resume(self):
        if not self.paused:
            return
        self.paused = False
        if self.connected:
            for name in self.queues:
                self._consume(name)

    def report(self, info):
        """Say it in HELLO from now on, and to the broker now: a HEARTBEAT may carry the
        worker's description (protocol section 4), which status shows."""
        self.worker_info = info
        if self.connected:
            self.out += P.encode_json(P.HEARTBEAT, 0, {"worker": info})

    def set_extra_credit(self, held):
        self.extra_credit = held

    def add_queue(self, name):
        """Start consuming one more queue (remote control `add_consumer`)."""
        if name in self.queues:
            return False
        self.queues.append(name)
        self.out += P.encode_json(P.DECLARE_QUEUE, 0, {"queue": name})
        if name != self.settings.DEFAULT_QUEUE:
            self.out += P.encode_json(P.BIND, 0, {"queue": name,
                                                  "exchange": self.settings.DEFAULT_EXCHANGE,
                                                  "binding_key": name})
        if not self.paused:
            self._consume(name)
        return True

    def _consume(self, name):
        tag = max(list(self.consumer_tags) + [self.control_tag or 0, 1000]) + 1
        self.consumer_tags[tag] = name
        self.out += P.encode_json(P.CONSUME, 0, {"queue": name, "consumer_tag": tag})

    def cancel_queue(self, name):
        """Stop consuming `name` (remote control `cancel_consumer`, warm shutdown)."""
        for tag, queue in list(self.consumer_tags.items()):
            if queue == name:
                self.out += P.encode_json(P.CANCEL, 0, {"consumer_tag": tag})
                del self.consumer_tags[tag]
        if name in self.queues:
            self.queues.remove(name)
            return True
        return False

    def end_turn(self):
        """Turn this turn's acks, starts and rejects into frames, and adjust QOS."""
        if self._started:
            self.out += P.encode_tags(P.ACK, P.STARTED, self._started)
            self._started = []
        if self._starts:
            self.out += P.encode_tags(P.START, 0, self._starts)
            self._starts = []
        if self._acks:
            self.out += P.encode_tags(P.ACK, 0, self._acks)
            self._acks = []
        if self._rejects:
            self.out += P.encode_tags(P.REJECT, P.REQUEUE, self._rejects)
            self._rejects = []
        if self._releases:
            self.out += P.encode_tags(P.REJECT, P.REQUEUE | P.RELEASE, self._releases)
            self._releases = []
        wanted = self.prefetch + self.extra_credit
        if self._qos_sent is not None and wanted != self._qos_sent:
            self.out += P.encode_json(P.QOS, 0, {"prefetch_count": wanted})
            self._qos_sent = wanted

    def flush(self):
        out = self.out
        if not out or self.conn is None:
            return False
        sock = self.conn.link.sock
        if sock is None:                # a read found the connection gone
            raise BrokerConnectionError("not connected to %s"
                                        % safe_url(self.settings.BROKER_URL))
        try:
            sent = sock.send(out)
            del out[:sent]
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            return True
        except (OSError, ssl.SSLError) as exc:
            raise BrokerConnectionError("connection to %s lost: %s"
                                        % (self.settings.BROKER_URL, exc)) from None
        return bool(out)

    def lost(self):
        if self.conn is not None:
            self.conn.link.close()
        self.conn = None
        self.out = bytearray()
        self._units = {}                # their fate went with the connection
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._releases = []
        self._qos_sent = None

    def close(self):
        if self.conn is None:
            return
        self.end_turn()
        sock = self.conn.link.sock
        if self.out and sock is not None:
            sock.settimeout(2.0)
            try:
                sock.sendall(bytes(self.out))
            except OSError as exc:
                logger.warning("could not send the last acks and results: %s", exc)
            self.out = bytearray()
        try:
            self.conn.close()
        except (OSError, BrokerConnectionError) as exc:
            logger.debug("closing the broker connection: %s", exc)
        self.conn = None


def _encoded(message):
    """An encoded message (3.1): as given, or encoded from a `protocol.Message`."""
    return message if isinstance(message, (bytes, bytearray)) else P.encode_message(message)


def _given(settings, name):
    """Whether `settings` give `name` themselves (a module, the environment, a flag), rather
    than take minitask's default."""
    return settings.source(name) != "default"


def _result_body(task_id, state, flags, ttl, content_type, payload):
    return P.encode_result(P.RESULT_SET, 0, task_id, state, flags, ttl, content_type,
                           payload)[P.HEADER.size:]


_UNSET = object()
_TIMEVAL = struct.Struct("@ll")
_warned = set()


def _warn_once(text):
    if text not in _warned:
        _warned.add(text)
        logger.warning(text)


def _is_loopback(host):
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _peer_uid(sock):
    """The uid of the process that listens at the other end of a UNIX socket (Linux)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[1]


def _timeval(seconds):
    """A struct timeval for SO_RCVTIMEO/SO_SNDTIMEO; 0 means no timeout at all, so a positive
    time under a microsecond is rounded up to one, never down to "wait forever"."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1e6)
    if seconds > 0 and not whole and not micros:
        micros = 1
    return _TIMEVAL.pack(whole, micros)


def _set_kernel_timeouts(sock, timeout):
    """Blocking mode with SO_RCVTIMEO/SO_SNDTIMEO where this platform has them (Linux);
    False where it has not, and the link then uses Python's socket timeouts."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout or 0.0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout or 0.0))
    except (OSError, AttributeError):
        sock.settimeout(timeout)
        return False
    return True


def client(settings, client="minitask-client", on_connect=None, timeout=10.0):
    """A `Connection` made from the settings (see `minitask.transport.client_for`)."""
    return Connection(settings.BROKER_URL, secret=settings.BROKER_SECRET,
                      ca_file=settings.BROKER_CA_FILE, timeout=timeout, client=client,
                      on_connect=on_connect, broker_uid=settings.BROKER_UID)
