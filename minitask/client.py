"""A blocking connection to the broker: what `delay()`, `AsyncResult`, the CLI and the worker use.

Small on purpose — connect, declare, publish, consume, ack, results — so another engine could
sit behind the same surface. Built on `minitask.protocol`; one socket, one lock, no threads.

Replies are matched to commands by number (protocol section 2). While waiting for one reply
the connection files away whatever else arrives: deliveries into `deliveries`, confirms and
errors of other commands into their own slots, so pipelined publishes (`publish_many`) and a
consumer's stream never get in each other's way.

`connection()` gives each thread (of each process, forks included) its own connection made
from the settings; it declares the exchanges, queues and bindings of ``QUEUES`` once per
connection, so tasks sent before any worker starts wait in their queue. `with_connection()`
runs a call on it, reconnecting with backoff when a connection that worked is lost.
"""

import collections
import hashlib
import hmac
import logging
import os
import socket
import ssl
import struct
import sys
import threading
import time

from . import protocol as P
from .exceptions import (
    AuthenticationError, BrokerConnectionError, MinitaskError, ProtocolError, TimeoutError,
)

__all__ = ["Connection", "Delivery", "connection", "with_connection", "reset_connection",
           "declare_topology"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
_CONFIRM_BYTES = P.HEADER.size           # a CONFIRM is a bare header


class Delivery:
    """One message handed to this connection: ack or reject it by `delivery_tag`."""

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
        return "<Delivery %d %r>" % (self.delivery_tag, self.message)


class Connection:
    """One connection to one broker. Methods raise `BrokerConnectionError` when it is lost."""

    def __init__(self, url="minitask://127.0.0.1:5679", secret=None, ca_file=None,
                 timeout=10.0, heartbeat=0.0, client="minitask", worker_info=None,
                 on_connect=None, local=True):
        from .config import parse_broker_url
        self.url = url
        _scheme, self.host, self.port, self.tls = parse_broker_url(url)
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.ca_file = ca_file
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.client = client
        self.worker_info = worker_info
        self.on_connect = on_connect        # callback(connection) after each handshake
        self.local = local                  # try the broker's local socket first (Linux)
        self.sock = None
        self.decoder = None
        self.welcome = {}
        self.features = frozenset()         # commands beyond protocol 1 the broker knows
        self.lock = threading.RLock()
        self.deliveries = collections.deque()
        self.declared_queues = set()        # declared by ensure_queue on this connection
        self._seq = 0
        self._unconfirmed = collections.deque()   # seqs waiting for CONFIRM, in order
        self._failed = {}                         # seq -> exception from an ERROR frame
        self._replies = {}                        # seq -> (kind, body)
        self._waiting = set()                     # seqs whose replies we still want
        self.on_error = None                      # callback(exc) for ERRORs of seq-0 commands
        self.last_received = 0.0
        self._closing_error = None
        self._scratch = bytearray(_RECV_BYTES)         # reused by every recv (see _read_some)
        self._scratch_view = memoryview(self._scratch)

    # -- connecting ------------------------------------------------------------------------------

    @property
    def connected(self):
        return self.sock is not None

    def connect(self):
        """Open the socket and do the handshake. Raises BrokerConnectionError naming the URL."""
        with self.lock:
            if self.sock is not None:
                return self
            sock = None if self.tls else self._connect_local()
            if sock is None:
                try:
                    sock = socket.create_connection((self.host, self.port),
                                                    timeout=self.timeout)
                except OSError as exc:
                    raise BrokerConnectionError(
                        "cannot connect to %s: %s (is `python -m minitask broker` running "
                        "there?)" % (self.url, exc.strerror or exc)) from None
            try:
                if sock.family != getattr(socket, "AF_UNIX", None):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls:
                    sock = self._wrap_tls(sock)
                self._read_timeout = _UNSET
                self._kernel_timeouts = not self.tls and _set_kernel_timeouts(sock,
                                                                              self.timeout)
                self.sock = sock
                self.decoder = P.Decoder()
                self._reset_pending()
                self.declared_queues = set()
                self._handshake()
            except BaseException:
                self._drop()
                raise
            if self.on_connect is not None:
                self.on_connect(self)
            return self

    def _connect_local(self):
        """The broker's local socket, when the URL names this machine and it has one."""
        name = P.local_socket_name(self.port) if _is_loopback(self.host) else None
        if name is None or not self.local:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(name)
        except OSError:                 # no broker listening there: TCP it is
            sock.close()
            return None
        return sock

    def _wrap_tls(self, sock):
        context = ssl.create_default_context(cafile=self.ca_file)
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            sock.close()
            raise BrokerConnectionError("TLS handshake with %s failed: %s" % (self.url, exc)) \
                from None

    def _handshake(self):
        nonce = os.urandom(32).hex()
        hello = {"protocol": P.PROTOCOL_VERSION, "client": self.client, "nonce": nonce,
                 "heartbeat": self.heartbeat}
        if self.worker_info:
            hello["worker"] = self.worker_info
        seq = self._next_seq()
        self._send(P.encode_json(P.HELLO, seq, hello))
        kind, body = self._wait_reply(seq, self.timeout)
        if kind == P.CHALLENGE:
            if not self.secret:
                raise AuthenticationError("the broker at %s requires a secret (BROKER_SECRET)"
                                          % self.url)
            broker_nonce = str(P.decode_json(body, "CHALLENGE").get("nonce", ""))
            proof = _proof(self.secret, "client", nonce, broker_nonce)
            seq = self._next_seq()
            self._send(P.encode_json(P.AUTH, seq, {"proof": proof}))
            kind, body = self._wait_reply(seq, self.timeout)
            if kind != P.WELCOME:
                raise ProtocolError("expected WELCOME after AUTH, got %s" % P.command_name(kind))
            welcome = P.decode_json(body, "WELCOME")
            expected = _proof(self.secret, "broker", broker_nonce, nonce)
            if not hmac.compare_digest(str(welcome.get("proof", "")), expected):
                raise AuthenticationError("the broker at %s could not prove it knows the secret"
                                          % self.url)
        elif kind == P.WELCOME:
            welcome = P.decode_json(body, "WELCOME")
        else:
            raise ProtocolError("expected WELCOME, got %s" % P.command_name(kind))
        self.welcome = welcome
        features = welcome.get("features")
        self.features = frozenset(name for name in features if isinstance(name, str)) \
            if isinstance(features, list) else frozenset()
        self.decoder.max_frame_bytes = max(int(welcome.get("max_frame_bytes", 0)),
                                           P.MAX_FRAME_BYTES) + 64

    def close(self):
        """Say CLOSE if the socket takes it at once (never wait for that), then close."""
        with self.lock:
            if self.sock is not None:
                try:
                    self.sock.setblocking(False)
                    self.sock.send(P.encode_frame(P.CLOSE, 0))
                except (OSError, ValueError):
                    pass            # closing anyway: the broker sees the connection end
            self._drop()

    def _drop(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass                # already gone
        self.sock = None

    def _reset_pending(self):
        self._closing_error = None
        self.welcome = {}
        self._seq = 0
        self._unconfirmed.clear()
        self._failed.clear()
        self._replies.clear()
        self._waiting.clear()
        self.deliveries.clear()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    # -- frames ----------------------------------------------------------------------------------

    def _next_seq(self):
        self._seq = self._seq + 1 if self._seq < 0xFFFFFFFF else 1
        return self._seq

    def _send(self, data):
        if self.sock is None:
            raise BrokerConnectionError("not connected to %s" % self.url)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._drop()
            raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) from None

    def send_frames(self, data):
        """Send already-encoded frames (acks, results) without waiting for anything."""
        with self.lock:
            self._send(data)

    def _read_some(self, timeout):
        """Receive once and file away every whole frame; False on timeout."""
        sock = self.sock
        if sock is None:
            raise BrokerConnectionError("not connected to %s" % self.url)
        if timeout != self._read_timeout:
            self._set_read_timeout(sock, timeout)
        try:
            count = sock.recv_into(self._scratch)
            data = self._scratch_view[:count]
        except (socket.timeout, BlockingIOError):      # BlockingIOError: a timeout of 0
            return False
        except OSError as exc:
            self._drop()
            raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) from None
        if not count:
            self._drop()
            if self._closing_error is not None:        # it said why before it closed
                raise self._closing_error
            raise BrokerConnectionError("the broker at %s closed the connection" % self.url)
        self.last_received = time.monotonic()
        if count == _CONFIRM_BYTES and not self.decoder.pending_bytes:
            # The usual answer to a publish, alone in its read: no need for the decoder.
            length, kind, seq = P.HEADER.unpack_from(self._scratch)
            if kind == P.CONFIRM and not length:
                self._confirmed(seq)
                return True
        self.decoder.feed(data)
        try:
            for frame in self.decoder.frames():
                self._file(*frame)
        except ProtocolError:
            self._drop()
            raise
        return True

    def _set_read_timeout(self, sock, timeout):
        """Where the kernel can time out a blocking recv (SO_RCVTIMEO), use that: Python's own
        socket timeouts cost a poll() before every recv and a syscall to change them."""
        if self._kernel_timeouts:
            if timeout is not None and timeout <= 0:
                sock.setblocking(False)
            else:
                sock.setblocking(True)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                _timeval(timeout or 0.0))
        else:
            sock.settimeout(timeout)
        self._read_timeout = timeout

    def _file(self, kind, seq, body):
        if kind == P.DELIVER:
            self.deliveries.append(Delivery(*P.decode_deliver(body)))
        elif kind == P.CONFIRM:
            self._confirmed(seq)
        elif kind == P.ERROR:
            code, text = P.decode_error(body)
            exc = P.error_for(code, text)
            if seq and (seq in self._waiting or seq in self._unconfirmed):
                self._failed[seq] = exc
                try:
                    self._unconfirmed.remove(seq)
                except ValueError:
                    pass            # it was waiting for a reply, not a confirm
            else:
                self._closing_error = exc           # raised if the broker closes next
                if self.on_error is not None:
                    self.on_error(exc)
                elif self.welcome:
                    logger.warning("broker %s: %s", self.url, exc)
        elif kind == P.HEARTBEAT:
            pass
        elif seq in self._waiting:
            self._replies[seq] = (kind, body)

    def _confirmed(self, seq):
        """Every command numbered up to `seq` is confirmed (serial-number order: the numbers
        wrap); one that got an ERROR left the queue already."""
        unconfirmed = self._unconfirmed
        while unconfirmed and (seq - unconfirmed[0]) % 0x100000000 < 0x80000000:
            unconfirmed.popleft()

    def _wait_reply(self, seq, timeout):
        """Wait for the reply (or ERROR) numbered `seq`; returns ``(kind, body)``."""
        self._waiting.add(seq)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if seq in self._replies:
                    return self._replies.pop(seq)
                if seq in self._failed:
                    raise self._failed.pop(seq)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no reply from %s within %ss" % (self.url, timeout))
                self._read_some(remaining)
        finally:
            self._waiting.discard(seq)

    def _wait_confirms(self, seqs, timeout):
        """Wait until every seq in `seqs` is confirmed; raise the first ERROR among them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = set(seqs)
        while True:
            failed = pending.intersection(self._failed)
            if failed:
                errors = {seq: self._failed.pop(seq) for seq in failed}
                raise errors[min(failed, key=seqs.index)]
            if not pending.intersection(self._unconfirmed):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no confirm from %s within %ss" % (self.url, timeout))
            self._read_some(remaining)

    def call(self, kind, args=None, timeout=None):
        """Send a JSON command and return its OK reply as a dict."""
        with self.lock:
            seq = self._next_seq()
            self._send(P.encode_json(kind, seq, args or {}))
            reply_kind, body = self._wait_reply(seq, self.timeout if timeout is None else timeout)
            return P.decode_json(body, P.command_name(reply_kind))

    # -- topology --------------------------------------------------------------------------------

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

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, message, confirm=True, timeout=None):
        """Publish a `protocol.Message`; with `confirm`, return once the broker holds it."""
        data = message if isinstance(message, (bytes, bytearray)) else P.encode_message(message)
        with self.lock:
            if not confirm:
                self._send(P.encode_frame(P.PUBLISH, 0, data))
                return
            seq = self._next_seq()
            unconfirmed = self._unconfirmed
            unconfirmed.append(seq)
            self._send(P.HEADER.pack(len(data), P.PUBLISH, seq) + data)
            # The common case, inlined: the CONFIRM is usually in the very next read.
            timeout = self.timeout if timeout is None else timeout
            deadline = None if timeout is None else time.monotonic() + timeout
            while seq in unconfirmed:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no confirm from %s within %ss" % (self.url, timeout))
                self._read_some(timeout)        # the same value each time: no syscall to set it
            if seq in self._failed:
                raise self._failed.pop(seq)

    def publish_with_record(self, message, key, value, timeout=None):
        """Set a durable broker setting and publish, as one unit: a broker crash keeps both
        or neither (periodic tasks' last send times).

        A broker that lists "atomic" in its WELCOME gets one ATOMIC frame, which it journals
        as one record. An older broker gets KV_SET and PUBLISH in one write: two records in
        one write, which a crash tearing that very write could split.
        """
        data = message if isinstance(message, (bytes, bytearray)) else P.encode_message(message)
        with self.lock:
            timeout = self.timeout if timeout is None else timeout
            if "atomic" in self.features:
                seq = self._next_seq()
                self._unconfirmed.append(seq)
                self._send(P.encode_atomic(seq, [
                    P.encode_json(P.KV_SET, 0, {"key": key, "value": value}),
                    P.encode_frame(P.PUBLISH, 0, data)]))
                self._wait_confirms([seq], timeout)
                return
            kv_seq = self._next_seq()
            seq = self._next_seq()
            self._unconfirmed.append(seq)
            self._send(P.encode_json(P.KV_SET, kv_seq, {"key": key, "value": value})
                       + P.encode_frame(P.PUBLISH, seq, data))
            self._wait_reply(kv_seq, timeout)
            self._wait_confirms([seq], timeout)

    def publish_many(self, messages, window=100, timeout=None):
        """Publish many messages keeping up to `window` unconfirmed; return once all are held."""
        timeout = self.timeout if timeout is None else timeout
        with self.lock:
            batch, frames = [], []
            for message in messages:
                data = message if isinstance(message, (bytes, bytearray)) \
                    else P.encode_message(message)
                seq = self._next_seq()
                self._unconfirmed.append(seq)
                batch.append(seq)
                frames.append(P.encode_frame(P.PUBLISH, seq, data))
                if len(frames) >= window:
                    self._send(b"".join(frames))
                    frames = []
                    self._wait_confirms(batch[:-window // 2] or batch, timeout)
                    batch = batch[-window // 2:] if len(batch) > window // 2 else []
            if frames:
                self._send(b"".join(frames))
            self._wait_confirms(batch, timeout)

    # -- consuming -------------------------------------------------------------------------------

    def qos(self, prefetch_count):
        return self.call(P.QOS, {"prefetch_count": prefetch_count})

    def consume(self, queue, no_ack=False):
        """Start consuming `queue`; returns the consumer tag. Messages arrive in `deliveries`."""
        return self.call(P.CONSUME, {"queue": queue, "no_ack": no_ack})["consumer_tag"]

    def cancel(self, consumer_tag):
        return self.call(P.CANCEL, {"consumer_tag": consumer_tag})

    def get_delivery(self, timeout=None):
        """The next delivery, waiting up to `timeout` seconds; None when none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while not self.deliveries:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._read_some(remaining)
            return self.deliveries.popleft()

    def ack(self, tags, multiple=False, started=False):
        flags = (P.MULTIPLE if multiple else 0) | (P.STARTED if started else 0)
        self.send_frames(P.encode_tags(P.ACK, flags, list(tags)))

    def reject(self, tags, requeue=True):
        self.send_frames(P.encode_tags(P.REJECT, P.REQUEUE if requeue else 0, list(tags)))

    # -- results ---------------------------------------------------------------------------------

    def set_result(self, task_id, state, content_type, payload, ttl=0.0, store=True,
                   confirm=True):
        frame_seq = 0
        with self.lock:
            if confirm:
                frame_seq = self._next_seq()
                self._unconfirmed.append(frame_seq)
            self._send(P.encode_result(P.RESULT_SET, frame_seq, task_id, state,
                                       P.STORE if store else 0, ttl, content_type, payload))
            if confirm:
                self._wait_confirms([frame_seq], self.timeout)

    def get_result(self, task_id):
        """``(state, ready, date_done, content_type, payload)`` as the broker has it now."""
        return self._result_command(P.RESULT_GET, {"task_id": task_id}, self.timeout)

    def wait_result(self, task_id, timeout=None):
        """Like get_result, but the broker answers when the state is final (or at `timeout`)."""
        args = {"task_id": task_id}
        if timeout is not None:
            args["timeout"] = max(0.0, timeout)
        # The broker answers at the timeout; allow a little for the trip back.
        local = None if timeout is None else timeout + max(5.0, self.timeout)
        return self._result_command(P.RESULT_WAIT, args, local)

    def _result_command(self, kind, args, timeout):
        with self.lock:
            seq = self._next_seq()
            self._send(P.encode_json(kind, seq, args))
            reply_kind, body = self._wait_reply(seq, timeout)
        if reply_kind != P.RESULT:
            raise ProtocolError("expected RESULT, got %s" % P.command_name(reply_kind))
        _task_id, state, flags, date_done, content_type, payload = P.decode_result(body)
        return state, bool(flags & P.READY), date_done, content_type, payload

    def forget(self, task_ids):
        return self.call(P.RESULT_FORGET, {"task_ids": list(task_ids)})

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        return self.call(P.REVOKE, {"task_ids": list(task_ids), "terminate": terminate,
                                    "signal": signal})

    def status(self):
        return self.call(P.STATUS, {})

    def drain(self, timeout=0.0):
        """Read whatever has arrived (deliveries, confirms) within `timeout`."""
        with self.lock:
            self._read_some(timeout)


_UNSET = object()


def _is_loopback(host):
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
_TIMEVAL = struct.Struct("@ll")


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
    False where it has not, and the connection then uses Python's socket timeouts."""
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


def _proof(secret, role, first, second):
    text = ("%s:%s:%s" % (role, first, second)).encode("utf-8")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


# -- each thread's own connection ---------------------------------------------------------------

# A lost connection is tried again for this long (a broker restart takes about a second);
# a broker that was never reached is reported at once.
RECONNECT_SECONDS = 5.0

_local = threading.local()
_generation = [0]           # bumped by reset_connection(): every thread makes a new one


def _forget_after_fork():
    """A forked child must not share its parent's sockets: it starts with no connection."""
    global _local
    _local = threading.local()
    _generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def connection(settings=None):
    """This thread's connection to the configured broker, made on demand, and made again
    after a fork, a lost connection or `reset_connection()`.

    One per thread, so a thread blocked in `AsyncResult.get()` never holds up another
    thread's `delay()`.
    """
    conn = getattr(_local, "connection", None)
    if conn is not None and _local.generation != _generation[0]:
        _close_quietly(conn)
        conn = None
    if conn is None:
        if settings is None:
            from .config import get_settings
            settings = get_settings()
        conn = Connection(settings.BROKER_URL, secret=settings.BROKER_SECRET,
                          ca_file=settings.BROKER_CA_FILE, client="minitask-client",
                          on_connect=lambda c: declare_topology(c, settings))
        _local.connection, _local.generation = conn, _generation[0]
        _local.reached = False
    if not conn.connected:
        conn.connect()
    _local.reached = True
    return conn


def with_connection(function):
    """``function(connection)``, tried again with backoff (for up to RECONNECT_SECONDS) when a
    connection that worked is lost. A message may then be published twice, never not at all
    (at-least-once, as every broker client that retries)."""
    deadline = None
    pause = 0.05
    while True:
        reached = getattr(_local, "reached", False)
        try:
            return function(connection())
        except AuthenticationError:
            raise
        except BrokerConnectionError:
            if not reached:
                raise
            deadline = deadline or time.monotonic() + RECONNECT_SECONDS
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("lost the connection to the broker; trying again in %.2fs", pause)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _close_quietly(conn):
    try:
        conn.close()
    except MinitaskError:
        pass                        # it was already broken; we are dropping it anyway


def reset_connection():
    """Forget every thread's connection (tests, or after the settings changed)."""
    conn = getattr(_local, "connection", None)
    if conn is not None:
        _close_quietly(conn)
    _local.connection = None
    _local.reached = False
    _generation[0] += 1


def declare_topology(conn, settings):
    """Declare the default exchange and every exchange, queue and binding of ``QUEUES``."""
    conn.declare_exchange(settings.DEFAULT_EXCHANGE, settings.DEFAULT_EXCHANGE_TYPE)
    for name, spec in settings.QUEUES.items():
        conn.declare_exchange(spec["exchange"], spec["exchange_type"])
        conn.declare_queue(name, durable=spec.get("durable", True))
        conn.bind(name, spec["exchange"], spec["binding_key"], spec.get("arguments") or {})
