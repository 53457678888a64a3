"""Tools of the hostile-input suite: a live broker with a well-behaved client beside it, the
broker's memory watched, raw sockets that misbehave on purpose, and the figures of the run.

    arena = Arena(tmp_path).start()      # broker process, GoodClient, MemoryWatch
    raw = arena.raw()                    # a RawClient: bytes in, broker frames out
    raw.send(P.HEADER.pack(0xFFFFFFFF, P.PUBLISH, 1))
    frames, closed = raw.read_all()
    arena.finish()                       # no loss for the good client, memory bounded

The broker process comes from the integration harness (``tests/integration/conftest.py``),
loaded here under its own module name: several folders of the suite have a ``conftest.py``,
so the bare name ``conftest`` means whichever pytest imported last.

``LONG_MINITASK_TESTS=1`` (``python3 tests/run.py --long``) makes every attack longer and
bigger (`BUDGET`); the short form is what CI runs.
"""

import contextlib
import json
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)        # the harness, and ittasks for the workers


import cluster as harness  # noqa: E402  (tests/integration, put on the path above)

Broker, Worker, wait_for, ROOT = harness.Broker, harness.Worker, harness.wait_for, harness.ROOT
child_env = harness._env

from minitask import protocol as P  # noqa: E402  (after the harness put the project on the path)
from minitask.transport.builtin import Connection  # noqa: E402
from minitask.exceptions import MinitaskError  # noqa: E402

LONG = os.environ.get("LONG_MINITASK_TESTS") == "1"
MIB = 1024 * 1024


class Budget:
    """How hard each attack pushes: short for every run, long under LONG_MINITASK_TESTS=1."""

    def __init__(self, long):
        self.long = long
        self.fuzz_examples = 2000 if long else 150          # live broker, 1-3 connections each
        self.state_examples = 3000 if long else 400         # BrokerState, no sockets
        self.decoder_examples = 2000 if long else 200
        self.flood_rounds = 5 if long else 1
        self.flood_connections = 1100
        self.slowloris_connections = 200 if long else 40
        self.rss_headroom = 200 * MIB                       # over the broker's RSS at start


BUDGET = Budget(LONG)

# Frames the broker may send; anything else coming back is a broker bug.
BROKER_KINDS = frozenset((P.WELCOME, P.CHALLENGE, P.HEARTBEAT, P.CONFIRM, P.ERROR, P.DELIVER,
                          P.RESULT, P.OK))
ERROR_CODES = frozenset((312, 313, 400, 401, 404, 405, 406, 408, 409, 413, 503, 507))


def raise_fd_limit(wanted):
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass                        # stay where we are; the flood test skips with a reason
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the run's figures -------------------------------------------------------------------------

class Figures:
    """What the suite did, summed over its tests (printed at the end of the pytest run)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0            # sockets opened at a broker by the attacks
        self.refused = 0                # of them, answered ERROR 503 (the connection cap)
        self.frames = 0                 # frames sent by the live fuzzer
        self.streams = 0                # byte streams sent by the live fuzzer
        self.fuzz_bytes = 0
        self.state_frames = 0           # frames fed straight to a BrokerState
        self.good_sent = 0
        self.good_received = 0
        self.good_max_latency = 0.0
        self.peak_rss = None            # (peak, start, test) in bytes, the highest peak seen
        self.rows = []                  # one line per arena

    def add(self, **counts):
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def arena(self, test, good, watch):
        with self.lock:
            self.good_sent += good.sent
            self.good_received += good.received_count
            self.good_max_latency = max(self.good_max_latency, good.max_latency)
            if watch.peak is not None and (self.peak_rss is None
                                           or watch.peak > self.peak_rss[0]):
                self.peak_rss = (watch.peak, watch.start_rss, test)
            self.rows.append("%-62s rss %s -> peak %s; good client %d sent, %d received, "
                             "slowest confirm %.3fs" % (test[:62], _mib(watch.start_rss),
                                                         _mib(watch.peak), good.sent,
                                                         good.received_count,
                                                         good.max_latency))

    def lines(self):
        if not (self.rows or self.state_frames or self.connections):
            return []
        lines = ["hostile figures (%s run):" % ("long" if LONG else "short"),
                 "  connections tried %d (refused at the cap: %d); frames fuzzed %d in %d "
                 "streams (%d bytes) at a live broker, %d frames straight into BrokerState"
                 % (self.connections, self.refused, self.frames, self.streams,
                    self.fuzz_bytes, self.state_frames)]
        if self.peak_rss is not None:
            peak, start, test = self.peak_rss
            lines.append("  peak broker RSS %s (started at %s) in %s"
                         % (_mib(peak), _mib(start), test))
        lines.append("  good client: %d messages sent (confirmed), %d received; slowest "
                     "confirm %.3fs" % (self.good_sent, self.good_received,
                                       self.good_max_latency))
        lines.extend("  " + row for row in self.rows)
        return lines


FIGURES = Figures()


def _mib(value):
    return "?" if value is None else "%.1f MiB" % (value / MIB)


# -- the broker's memory -----------------------------------------------------------------------

class MemoryWatch:
    """Samples a process's resident memory (VmRSS in /proc) until stopped; keeps the peak."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.start_rss = self.peak = self.last = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    @property
    def available(self):
        return os.path.exists("/proc/%d/status" % self.pid)

    def rss(self):
        """Resident bytes now, or None (no /proc, or the process is gone)."""
        try:
            with open("/proc/%d/status" % self.pid) as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def cpu_seconds(self):
        """User + system CPU time the process has used, or None."""
        try:
            with open("/proc/%d/stat" % self.pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def start(self):
        self.start_rss = self.peak = self.last = self.rss()
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self):
        value = self.rss()
        if value is not None:
            self.last = value
            self.peak = value if self.peak is None else max(self.peak, value)
        return value

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sample()


# -- the well-behaved client -------------------------------------------------------------------

class GoodClient:
    """A client that does everything right, in its own thread on its own connection.

    It publishes a numbered message with a confirm to each of its queues in turn, consumes
    them back (prefetch 50), acks each, and at `finish()` drains until every confirmed message
    came back. The attacks must not cost it anything: no error, no redelivery, no loss, no
    duplicate, and per queue the order it published in.
    """

    QUEUES = ("good.a", "good.b")

    def __init__(self, url, secret=None, ca_file=None, interval=0.002, body_bytes=256):
        # interval: one publish per 2 ms at most, a steady 500 a second beside the attack
        self.url = url
        self.secret = secret
        self.ca_file = ca_file
        self.interval = interval
        self.padding = b"." * body_bytes
        self.confirmed = {queue: [] for queue in self.QUEUES}
        self.received = {queue: [] for queue in self.QUEUES}
        self.errors = []
        self.redelivered = 0
        self.max_latency = 0.0
        self.conn = None
        self._tags = {}
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._drained = threading.Event()
        self._thread = threading.Thread(target=self._run, name="good-client", daemon=True)

    @property
    def sent(self):
        return sum(len(numbers) for numbers in self.confirmed.values())

    @property
    def received_count(self):
        return sum(len(numbers) for numbers in self.received.values())

    def start(self):
        conn = self.conn = Connection(self.url, secret=self.secret, ca_file=self.ca_file,
                                      timeout=20.0, client="hostile-good-client")
        conn.connect()
        for queue in self.QUEUES:
            conn.declare_queue(queue)
            conn.purge(queue)
        conn.qos(50)
        for queue in self.QUEUES:
            self._tags[conn.consume(queue)] = queue
        self._thread.start()
        return self

    def progress(self):
        """How many messages have been confirmed so far (to see it is still moving)."""
        return self.sent

    def pause(self):
        """Stop publishing (it still reads and acks) until `resume()`: for idle measurements."""
        self._paused.set()

    def resume(self):
        self._paused.clear()

    def _run(self):
        number = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._paused.is_set():
                    self._collect(0.05)
                    continue
                queue = self.QUEUES[number % len(self.QUEUES)]
                message = P.Message(b"%d:" % number + self.padding, exchange="",
                                    routing_key=queue, message_id="good-%d" % number)
                started = time.monotonic()
                self.conn.publish(message)
                self.max_latency = max(self.max_latency, time.monotonic() - started)
                self.confirmed[queue].append(number)
                number += 1
                next_at = max(next_at + self.interval, time.monotonic() - 1.0)
                remaining = next_at - time.monotonic()
                while remaining > 0:            # a steady pace, reading as it waits
                    self._collect(remaining)
                    remaining = next_at - time.monotonic()
            deadline = time.monotonic() + 30.0
            while self.received_count < self.sent and time.monotonic() < deadline:
                self._collect(0.2)
        except MinitaskError as exc:
            self.errors.append("%s: %s" % (type(exc).__name__, exc))
        except Exception as exc:        # a bug in the client under attack counts too
            self.errors.append("unexpected %s: %s" % (type(exc).__name__, exc))
        finally:
            self._drained.set()

    def _collect(self, timeout):
        conn = self.conn
        delivery = conn.get_delivery(timeout)
        tags = []
        while delivery is not None:
            queue = self._tags.get(delivery.consumer_tag)
            number = int(delivery.message.body.split(b":", 1)[0])
            if queue is None:
                self.errors.append("delivery from unknown consumer %d" % delivery.consumer_tag)
            else:
                self.received[queue].append(number)
            if delivery.redelivered:
                self.redelivered += 1
            tags.append(delivery.delivery_tag)
            delivery = conn.get_delivery(0.0001) if conn.deliveries else None
        if tags:
            conn.ack(tags)

    def finish(self, timeout=60.0):
        """Stop publishing, drain, close; returns a list of problems (empty when all is well)."""
        self._stop.set()
        self._drained.wait(timeout)
        problems = list(self.errors)
        if not self._drained.is_set():
            problems.append("the good client did not finish draining in %gs" % timeout)
        if self.redelivered:
            problems.append("the good client got %d redeliveries" % self.redelivered)
        for queue in self.QUEUES:
            confirmed, received = self.confirmed[queue], self.received[queue]
            if received != confirmed:
                missing = sorted(set(confirmed) - set(received))
                extra = len(received) - len(set(received))
                problems.append("queue %s: %d confirmed, %d received; missing %s, duplicates "
                                "%d, in order %s" % (queue, len(confirmed), len(received),
                                                      missing[:10], extra,
                                                      received == sorted(received)))
        if self.sent == 0:
            problems.append("the good client got nothing confirmed at all")
        if self.conn is not None:
            try:
                self.conn.close()
            except MinitaskError:
                pass                    # already counted among the problems if it matters
        return problems


# -- raw sockets -------------------------------------------------------------------------------

def open_socket(port, host="127.0.0.1", timeout=5.0, rcvbuf=None, source=None):
    """A connected TCP socket; `rcvbuf` shrinks its receive buffer before connecting (so a
    client that does not read fills up fast); `source`, another loopback address to come
    from (the broker gives each address its own share of handshake slots)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    try:
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    FIGURES.add(connections=1)
    return sock


class RawClient:
    """A socket that speaks frames only as well as the test wants: bytes out, frames in."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, rcvbuf=None, sock=None):
        self.sock = sock or open_socket(port, host, timeout, rcvbuf)
        self.decoder = P.Decoder(1 << 31)
        self.frames = []                # read but not yet taken
        self.closed = False             # the broker closed (EOF or reset)
        self.seq = 0

    def send(self, data):
        """Send bytes; False when the broker has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return False

    def send_frame(self, kind, body=b"", seq=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.send(P.encode_frame(kind, seq, body))
        return seq

    def send_json(self, kind, obj, seq=None):
        return self.send_frame(kind, json.dumps(obj).encode("utf-8"), seq)

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except OSError:                 # reset: the broker closed with our bytes unread
            self.closed = True
            return True
        if not data:
            self.closed = True
            return True
        self.decoder.feed(data)
        self.frames.extend(self.decoder.frames())
        return True

    def read_frame(self, timeout=5.0):
        """The next frame ``(kind, seq, body)``, or None on close or timeout."""
        deadline = time.monotonic() + timeout
        while not self.frames and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._recv(remaining):
                break
        return self.frames.pop(0) if self.frames else None

    def call(self, kind, obj, timeout=5.0):
        """Send a JSON command and return the first frame that answers it."""
        seq = self.send_json(kind, obj)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if frame is None or frame[1] == seq:
                return frame

    def hello(self, secret=None, **fields):
        """HELLO (and AUTH when challenged); returns the WELCOME frame, or what came instead."""
        nonce = os.urandom(32).hex()
        frame = self.call(P.HELLO, dict({"protocol": 1, "nonce": nonce}, **fields))
        if frame is not None and frame[0] == P.CHALLENGE and secret is not None:
            broker_nonce = json.loads(frame[2].decode())["nonce"]
            proof = P.auth_proof(secret.encode(), "client", nonce, broker_nonce)
            frame = self.call(P.AUTH, {"proof": proof})
        return frame

    def read_all(self, timeout=5.0):
        """Everything until the broker closes or `timeout` passes: ``(frames, closed)``."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._recv(remaining)
        frames, self.frames = self.frames, []
        return frames, self.closed

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_until_closed(socks, timeout, started=None):
    """Read every socket until the broker closes it or `timeout` passes.

    Returns ``{sock: (frames, closed, seconds until closed)}``, the seconds counted from
    `started` (a time.monotonic() value; default now); bytes that cannot be cut into frames
    are reported as a ``("garbage", reason)`` entry.
    """
    selector = selectors.DefaultSelector()
    started = time.monotonic() if started is None else started
    state = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        state[sock] = [P.Decoder(1 << 31), [], False, None]
    open_count = len(socks)
    try:
        while open_count:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0:
                break
            for key, _mask in selector.select(remaining):
                sock = key.fileobj
                entry = state[sock]
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    entry[0].feed(data)
                    try:
                        entry[1].extend(entry[0].frames())
                    except MinitaskError as exc:
                        entry[1].append(("garbage", str(exc)))
                    continue
                entry[2], entry[3] = True, time.monotonic() - started
                selector.unregister(sock)
                open_count -= 1
    finally:
        selector.close()
    return {sock: (entry[1], entry[2], entry[3]) for sock, entry in state.items()}


def frame_problems(frames):
    """What is wrong with frames a broker sent: unknown types, unknown or internal error codes,
    error texts that are not one line, frames that cannot be cut at all."""
    problems = []
    for frame in frames:
        if frame[0] == "garbage":
            problems.append("undecodable bytes from the broker: %s" % frame[1])
            continue
        kind, _seq, body = frame
        if kind not in BROKER_KINDS:
            problems.append("the broker sent a frame of type %s" % P.command_name(kind))
        elif kind == P.ERROR:
            code, text = P.decode_error(body)
            if code not in ERROR_CODES:
                problems.append("ERROR %d (%s)" % (code, text))
            if "\n" in text or not text.strip():
                problems.append("ERROR %d text is not one line: %r" % (code, text))
    return problems


def errors_in(frames):
    """``[(code, text)]`` of the ERROR frames among `frames`."""
    return [P.decode_error(body) for kind, _seq, body in frames if kind == P.ERROR]


def make_certificate(directory, name, alt_names):
    """A self-signed certificate and key (PEM) made with openssl; skips the test without it."""
    import pytest
    openssl = shutil.which("openssl")
    if openssl is None:
        reason = "openssl not found on PATH: cannot make a self-signed certificate"
        print("skipped: " + reason)
        pytest.skip(reason)
    cert, key = str(directory / (name + ".pem")), str(directory / (name + ".key"))
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
         cert, "-days", "2", "-subj", "/CN=" + name, "-addext",
         "subjectAltName=" + alt_names], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = "openssl could not make a certificate: %s" % result.stderr.strip()[-300:]
        print("skipped: " + reason)
        pytest.skip(reason)
    return cert, key


# -- the arena ---------------------------------------------------------------------------------

class Arena:
    """A broker process under attack, with a GoodClient beside it and its memory watched."""

    def __init__(self, tmp_path, args=(), env=None, secret=None, ca_file=None):
        self.tmp_path = tmp_path
        self.broker = Broker(tmp_path, args=args, env=env)
        self.secret = secret
        self.ca_file = ca_file          # given: the broker speaks TLS (minitasks://localhost)
        self.allowance = 0
        self.watch = self.good = None
        self.finished = False
        self._connections = []

    def start(self):
        self.broker.start()
        self.watch = MemoryWatch(self.broker.proc.pid).start()
        self.good = GoodClient(self.url, secret=self.secret, ca_file=self.ca_file).start()
        return self

    @property
    def port(self):
        return self.broker.port

    @property
    def url(self):
        if self.ca_file:
            return "minitasks://localhost:%d" % self.broker.port
        return "minitask://127.0.0.1:%d" % self.broker.port

    def allow(self, nbytes):
        """The test legitimately makes the broker hold `nbytes` more (queued messages)."""
        self.allowance += nbytes

    def connect(self, **kwargs):
        """A well-behaved Connection of the test's own (closed at finish)."""
        kwargs.setdefault("secret", self.secret)
        kwargs.setdefault("ca_file", self.ca_file)
        conn = Connection(self.url, **kwargs).connect()
        self._connections.append(conn)
        FIGURES.add(connections=1)
        return conn

    def raw(self, **kwargs):
        return RawClient(self.port, **kwargs)

    def status(self):
        with Connection(self.url, secret=self.secret, ca_file=self.ca_file,
                        timeout=10.0) as conn:
            return conn.status()

    def queue(self, name):
        return next((q for q in self.status()["queues"] if q["name"] == name), None)

    def alive(self):
        return self.broker.proc.alive()

    def log(self):
        return self.broker.output()

    def idle_cpu(self, seconds=1.0):
        """CPU seconds the broker burns over `seconds` of (supposed) idleness, or None."""
        before = self.watch.cpu_seconds()
        time.sleep(seconds)
        after = self.watch.cpu_seconds()
        return None if before is None or after is None else after - before

    def finish(self, test):
        """The verdict every hostile test shares; returns a list of problems."""
        if self.finished:
            return []
        self.finished = True
        problems = []
        if not self.alive():
            problems.append("the broker died (exit code %s)" % self.broker.proc.process.poll())
        problems.extend(self.good.finish())
        self.watch.stop()
        for conn in self._connections:
            try:
                conn.close()
            except MinitaskError:
                pass                    # a test's own connection may have been cut on purpose
        FIGURES.arena(test, self.good, self.watch)
        if self.watch.start_rss is not None and self.watch.peak is not None:
            bound = self.watch.start_rss + BUDGET.rss_headroom + self.allowance
            if self.watch.peak > bound:
                problems.append("broker RSS peaked at %s, over the bound %s (start %s + %s "
                                "headroom + %s the test queued)"
                                % (_mib(self.watch.peak), _mib(bound), _mib(self.watch.start_rss),
                                   _mib(BUDGET.rss_headroom), _mib(self.allowance)))
        log = self.log()
        if "Traceback" in log:
            start = log.index("Traceback")
            problems.append("traceback in the broker's log:\n" + log[start:start + 3000])
        return problems

    def close(self):
        if self.broker.proc is not None:
            self.broker.proc.close()


@contextlib.contextmanager
def running(arena, test):
    """Start `arena`, hand it over, then give the shared verdict (a test failure) and stop it."""
    import pytest
    try:
        arena.start()
        yield arena
        problems = arena.finish(test)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
    finally:
        if not arena.finished and arena.good is not None:
            arena.finish(test)
        if os.environ.get("MINITASK_SHOW_LOGS") and arena.broker.proc is not None:
            print(arena.log())
        arena.close()
