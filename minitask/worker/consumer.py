"""The worker's side of the broker connection: set up, then a non-blocking stream.

Setting up (connect, declare, QOS, CONSUME) uses the blocking `client.Connection`, replies and
all. After that the socket goes non-blocking and the worker's own loop drives it: `read()`
returns deliveries as they come, and everything the worker says back — acks (one frame per
loop turn, listing every tag), started notices, results, QOS changes, control replies — is
appended to one output buffer that `flush()` writes as far as the socket takes it.

`generation` counts connections: a delivery tag means something only on the connection that
delivered it, so the worker drops acks of an older generation (the broker has already put
those messages back in their queues).
"""

import logging
import os
import socket
import ssl

from .. import control, protocol as P
from ..client import Connection, Delivery, declare_topology
from ..exceptions import BrokerConnectionError, ProtocolError

__all__ = ["Consumer", "HEARTBEAT"]

logger = logging.getLogger(__name__)

# Seconds between heartbeats the worker promises; the broker drops it after missing two.
HEARTBEAT = 10.0


class Consumer:
    """Consume `queues` (and this worker's control queue) with a given prefetch."""

    def __init__(self, settings, queues, prefetch, worker_info, hostname):
        self.settings = settings
        self.queues = list(queues)
        self.prefetch = prefetch
        self.extra_credit = 0           # messages held by the worker (ETA, rate limits)
        self.worker_info = worker_info
        self.hostname = hostname
        self.conn = None
        self.generation = 0
        self.describes_results = False  # the broker takes described RESULT_SETs (3.4)
        self.consumer_tags = {}         # consumer tag -> queue name
        self.control_tag = None
        self.control_queue = None
        self.out = bytearray()
        self._acks = []
        self._started = []
        self._starts = []
        self._rejects = []
        self._qos_sent = None

    # -- connecting --

    def connect(self, timeout=5.0):
        """Connect and set everything up; raises BrokerConnectionError on failure."""
        settings = self.settings
        conn = Connection(settings.BROKER_URL, secret=settings.BROKER_SECRET,
                          ca_file=settings.BROKER_CA_FILE, timeout=timeout,
                          heartbeat=HEARTBEAT, client="minitask-worker",
                          worker_info=self.worker_info)
        conn.connect()
        try:
            declare_topology(conn, settings)
            for name in self.queues:
                self._declare_queue(conn, name)
            self.control_queue = conn.declare_queue(
                "", durable=False, exclusive=True, auto_delete=True)["queue"]
            conn.bind(self.control_queue, control.CONTROL_EXCHANGE)
            conn.qos(self.prefetch + self.extra_credit)
            self._qos_sent = self.prefetch + self.extra_credit
            self.consumer_tags = {}
            for name in self.queues:
                self.consumer_tags[conn.consume(name)] = name
            self.control_tag = conn.consume(self.control_queue, no_ack=True)
        except BaseException:
            conn._drop()
            raise
        conn.sock.setblocking(False)
        self.conn = conn
        self.generation += 1
        features = conn.welcome.get("features")
        self.describes_results = isinstance(features, list) and \
            "described_results" in features
        self.out = bytearray()
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        # Deliveries that arrived while we waited for the last setup reply.
        early = list(conn.deliveries)
        conn.deliveries.clear()
        return early

    def _declare_queue(self, conn, name):
        spec = self.settings.QUEUES.get(name)
        if spec is not None:
            return                      # declare_topology did it
        conn.declare_queue(name)
        if name != self.settings.DEFAULT_QUEUE:
            conn.bind(name, self.settings.DEFAULT_EXCHANGE, name)

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
        tag = max(list(self.consumer_tags) + [self.control_tag or 0, 1000]) + 1
        self.consumer_tags[tag] = name
        self.out += P.encode_json(P.CONSUME, 0, {"queue": name, "consumer_tag": tag})
        return True

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

    def cancel_all(self):
        for name in list(self.queues):
            self.cancel_queue(name)

    @property
    def connected(self):
        return self.conn is not None and self.conn.sock is not None

    def fileno(self):
        return self.conn.sock.fileno()

    def lost(self):
        """Forget the connection (it failed); acks for its tags are meaningless now."""
        if self.conn is not None:
            self.conn._drop()
        self.conn = None
        self.out = bytearray()
        self._acks, self._started, self._starts, self._rejects = [], [], [], []
        self._qos_sent = None

    def close(self):
        if self.conn is not None:
            try:
                self.flush_blocking(2.0)
                self.conn.sock.setblocking(True)
                self.conn.close()
            except (OSError, BrokerConnectionError) as exc:
                logger.debug("closing the broker connection: %s", exc)
            self.conn = None

    # -- reading --

    def read(self):
        """Deliveries that have arrived (a list); raises BrokerConnectionError when lost."""
        conn = self.conn
        try:
            count = conn.sock.recv_into(conn._scratch)
            data = conn._scratch_view[:count]
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return []
        except (OSError, ssl.SSLError) as exc:
            raise BrokerConnectionError("connection to %s lost: %s"
                                        % (self.settings.BROKER_URL, exc)) from None
        if not count:
            raise BrokerConnectionError("the broker at %s closed the connection"
                                        % self.settings.BROKER_URL)
        conn.decoder.feed(data)
        deliveries = []
        try:
            for kind, seq, body in conn.decoder.frames():
                if kind == P.DELIVER:
                    deliveries.append(Delivery(*P.decode_deliver(body)))
                elif kind == P.ERROR:
                    code, text = P.decode_error(body)
                    logger.error("broker refused a command: %s (%d)", text, code)
        except ProtocolError as exc:
            raise BrokerConnectionError("broker sent a malformed frame: %s" % exc) from None
        pending = getattr(conn.sock, "pending", None)
        if pending is not None and pending():      # TLS may hold decrypted bytes back
            deliveries.extend(self.read())
        return deliveries

    # -- writing --

    def ack(self, tag):
        self._acks.append(tag)

    def ack_started(self, tag):
        self._started.append(tag)

    def started(self, tag):
        self._starts.append(tag)

    def reject(self, tag):
        self._rejects.append(tag)

    def send(self, frame):
        self.out += frame

    def send_result(self, frame):
        """A RESULT_SET frame, described (task name, run time) if the broker takes that."""
        self.out += frame if self.describes_results else P.plain_result(frame)

    def publish(self, message):
        """Publish without waiting for a confirm (control replies)."""
        self.out += P.encode_frame(P.PUBLISH, 0, P.encode_message(message))

    def claim(self, task_ids):
        self.out += P.encode_json(P.CLAIM, 0, {"task_ids": list(task_ids)})

    def heartbeat(self):
        self.out += P.HEADER.pack(0, P.HEARTBEAT, 0)

    def set_extra_credit(self, held):
        self.extra_credit = held

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
        wanted = self.prefetch + self.extra_credit
        if self._qos_sent is not None and wanted != self._qos_sent:
            self.out += P.encode_json(P.QOS, 0, {"prefetch_count": wanted})
            self._qos_sent = wanted

    def flush(self):
        """Write as much as the socket takes; True when something is left."""
        out = self.out
        if not out or self.conn is None:
            return False
        try:
            sent = self.conn.sock.send(out)
            del out[:sent]
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            return True
        except (OSError, ssl.SSLError) as exc:
            raise BrokerConnectionError("connection to %s lost: %s"
                                        % (self.settings.BROKER_URL, exc)) from None
        return bool(out)

    def flush_blocking(self, timeout):
        self.end_turn()
        if self.out and self.conn is not None:
            sock = self.conn.sock
            sock.settimeout(timeout)
            try:
                sock.sendall(bytes(self.out))
            except (OSError, socket.timeout) as exc:
                logger.warning("could not send the last acks and results: %s", exc)
            finally:
                sock.setblocking(False)
            self.out = bytearray()


def worker_info(hostname, concurrency, queues):
    return {"hostname": hostname, "pid": os.getpid(), "concurrency": concurrency,
            "queues": list(queues)}
