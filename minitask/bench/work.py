"""The machinery under `python -m minitask bench`: processes, counters, the TCP floor.

`Lab` starts brokers and workers as child processes, each in its own session, in a scratch
folder, and stops every one of them (then deletes the folder) when it is closed, whatever
happened: the bench's ``try/finally`` closes it on an exception, on Ctrl-C and on SIGTERM.
`bench.py` decides what to measure; this module only knows how to start, poll and stop.

Methods match the peers' harness (``../shared/peers/run.py``, ``limits.py``) so figures
compare: drain is timed by polling an ``O_APPEND`` counter file every millisecond, the floor
is blocking sockets with TCP_NODELAY and 200-byte frames, percentiles are nearest-rank.
"""

import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from .. import protocol as P
from .tasks import COUNTER_ENV, INDEX, QUEUE, noop
from ..exceptions import MinitaskError
from ..processes import READY_PREFIX, read_line
from ..transport.builtin import Connection

__all__ = ["Lab", "Progress", "Outcome", "percentile", "rss_bytes", "journal_bytes",
           "count_runs", "wait_drained", "tcp_floor", "mp_context", "consume_all",
           "raw_messages", "BODY_BYTES"]

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A drain that makes no progress for this long is stuck: stop and report what is missing.
STALL_SECONDS = 60.0
FLOOR_MESSAGE_BYTES = 200
BODY_BYTES = 100                # broker-only messages: the bodies the issue names
NOOP_NAME = noop.name


class Outcome:
    """What one workload measured: JSON figures, table rows, and the guarantee they had."""

    def __init__(self, figures, rows, setup, guarantee, lost=0):
        self.figures = figures
        self.rows = rows            # (label, value text, ratio-to-floor or note text)
        self.setup = setup
        self.guarantee = guarantee
        self.lost = lost


def percentile(values, fraction):
    """The nearest-rank percentile (as the peers' harness computes it); `fraction` in 0..1."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction %r: expected 0..1" % (fraction,))
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def mp_context():
    """fork where it is safe and cheap (Linux); spawn elsewhere."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def rss_bytes(pid):
    """Resident set size of process `pid` (VmRSS in /proc/<pid>/status); None off Linux."""
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def journal_bytes(data_dir):
    """Bytes in the broker's journal segments under `data_dir`."""
    total = 0
    for folder, _dirs, files in os.walk(os.path.join(data_dir, "journal")):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass                # compaction deleted it while we walked
    return total


class Progress:
    """One self-overwriting status line on a terminal, shown once a phase passes two seconds."""

    DELAY = 2.0
    INTERVAL = 0.1

    def __init__(self, stream):
        self.stream = stream
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.label = ""
        self.started = self.shown = 0.0
        self.width = 0

    def start(self, label):
        self.clear()
        self.label = label
        self.started = time.monotonic()

    def update(self, done=None, total=None):
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < self.DELAY or now - self.shown < self.INTERVAL:
            return
        self.shown = now
        text = "  %s ... %.0fs" % (self.label, now - self.started)
        if done is not None:
            text += "  %s" % format(done, ",")
            if total:
                text += " / %s (%d%%)" % (format(total, ","), 100 * done // total)
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def clear(self):
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
        self.width = 0


class Broker:
    """A running broker child: its URL, data folder and how long it took to be ready."""

    def __init__(self, process, url, data_dir, fsync, ready_s):
        self.process = process
        self.url = url
        self.data_dir = data_dir
        self.fsync = fsync
        self.ready_s = ready_s

    @property
    def pid(self):
        return self.process.pid


class Lab:
    """Child processes and scratch files of one bench run; `close()` removes them all."""

    def __init__(self):
        self.scratch = tempfile.mkdtemp(prefix="minitask-bench-")
        shm = "/dev/shm"                # the counter on tmpfs, as the peers' harness has it
        self.counters = (tempfile.mkdtemp(prefix="minitask-bench-", dir=shm)
                         if os.path.isdir(shm) and os.access(shm, os.W_OK) else self.scratch)
        self.processes = []
        self._serial = 0
        self.worker_args = []           # more flags for every worker (bench --prefetch-multiplier)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [_ROOT] + [p for p in [self.env.get("PYTHONPATH")] if p])

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def path(self, name):
        self._serial += 1
        return os.path.join(self.scratch, "%02d-%s" % (self._serial, name))

    def new_counter(self):
        """A fresh, empty counter file for `tasks.record`."""
        self._serial += 1
        path = os.path.join(self.counters, "counter-%02d" % self._serial)
        open(path, "wb").close()
        return path

    def _popen(self, command, name, stdout=None, env=None):
        log = open(self.path(name + ".log"), "ab")
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout or log, stderr=log,
                env=env or self.env, cwd=self.scratch, start_new_session=True)
        finally:
            log.close()                 # the child holds its own copy
        process.log_path = log.name
        self.processes.append(process)
        return process

    def start_broker(self, fsync="everysec", data_dir=None, timeout=120.0, port=0,
                     log_level="WARNING"):
        """Start `python -m minitask broker` (journal on) and wait for its ready line.

        `port` 0 picks a free one; a restart after a kill passes the old one (and data_dir).
        Its log is in the file ``process.log_path``.
        """
        data_dir = data_dir or self.path("broker-data")
        command = [sys.executable, "-m", "minitask", "broker", "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", data_dir, "--fsync", fsync,
                   "-l", log_level]
        started = time.perf_counter()
        process = self._popen(command, "broker", stdout=subprocess.PIPE)
        line = read_line(process, READY_PREFIX, timeout)
        ready_s = time.perf_counter() - started
        if line is None:
            self.stop(process)
            raise MinitaskError("the broker did not start within %gs; its log: %s"
                                % (timeout, _tail(process.log_path)))
        return Broker(process, line.rsplit(" ", 1)[1], data_dir, fsync, ready_s)

    def start_worker(self, url, concurrency, counter=None):
        """Start `python -m minitask worker` on the bench queue; returns the Popen."""
        env = dict(self.env)
        env.pop(COUNTER_ENV, None)
        if counter:
            env[COUNTER_ENV] = counter
        command = [sys.executable, "-m", "minitask", "worker", "--broker", url,
                   "-I", "minitask.bench.tasks", "-Q", QUEUE, "-c", str(concurrency),
                   "-l", "WARNING"] + self.worker_args
        return self._popen(command, "worker", env=env)

    def start_child(self, target, *args):
        """A helper process of our own (a consumer, an echo server); ignores Ctrl-C."""
        child = mp_context().Process(target=_ignoring_sigint, args=(target,) + args,
                                     daemon=True)
        child.start()
        self.processes.append(child)
        return child

    def kill(self, process):
        """SIGKILL a child and its process group (the crash the journal is there for)."""
        _signal_group(process, signal.SIGKILL)
        process.wait()

    def stop(self, process, grace=10.0):
        """SIGTERM (a warm shutdown), then SIGKILL the whole group after `grace` seconds."""
        if isinstance(process, subprocess.Popen):
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)
                    process.wait(grace)
                except (subprocess.TimeoutExpired, OSError):
                    pass
            _signal_group(process, signal.SIGKILL)      # and pool children left behind
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        elif process.is_alive():
            process.terminate()
            process.join(grace)
            if process.is_alive():
                process.kill()
                process.join()
        if process in self.processes:
            self.processes.remove(process)

    def close(self):
        """Stop every child (newest first) and delete the scratch files."""
        try:
            while self.processes:
                self.stop(self.processes[-1], grace=5.0)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
            if self.counters != self.scratch:
                shutil.rmtree(self.counters, ignore_errors=True)


def _ignoring_sigint(target, *args):
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent stops us; no traceback here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the bench's handler, inherited by fork
    try:
        target(*args)
    except MinitaskError:
        sys.exit(1)                 # the broker went away: the parent is stopping or reports it


def _signal_group(process, signum):
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, PermissionError, OSError):
        pass                            # already gone


def _tail(path, lines=5):
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty)"


# -- counting runs -----------------------------------------------------------------------------

def count_runs(path, tasks):
    """``(runs, lost, duplicates)`` from a counter file written by `tasks.noop`."""
    with open(path, "rb") as handle:
        data = handle.read()
    data = data[:len(data) - len(data) % INDEX.size]  # a torn write cannot happen; be safe
    seen = bytearray(tasks)
    runs = distinct = 0
    for (index,) in INDEX.iter_unpack(data):
        runs += 1
        if index < tasks and not seen[index]:
            seen[index] = 1
            distinct += 1
    return runs, tasks - distinct, runs - distinct


def wait_drained(path, tasks, started, worker, progress=None):
    """Poll the counter every millisecond until `tasks` runs are counted.

    Returns ``(t_first, t_done)`` in perf_counter time; ``t_done`` is None when the worker
    died or nothing moved for `STALL_SECONDS` (the caller then counts what is lost).
    """
    target = tasks * INDEX.size
    t_first = None
    last_size, last_move = 0, started
    while True:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        now = time.perf_counter()
        if size and t_first is None:
            t_first = now
        if size >= target:
            return t_first, now
        if size != last_size:
            last_size, last_move = size, now
        elif now - last_move > STALL_SECONDS or worker.poll() is not None:
            return t_first, None
        if progress is not None:
            progress.update(size // INDEX.size, tasks)
        time.sleep(0.001)


# -- the broker workload's consumer and messages -----------------------------------------------

def consume_all(url, secret, queue, count, prefetch, pipe):
    """Consumer process of the broker workload: ack everything, report when all are acked."""
    conn = Connection(url, secret=secret, timeout=60.0, client="minitask-bench").connect()
    conn.declare_queue(queue)
    conn.qos(prefetch)
    conn.consume(queue)
    pipe.send("ready")
    received = acked = last = 0
    while received < count:
        delivery = conn.get_delivery(timeout=60.0)
        if delivery is None:
            break
        received += 1
        last = delivery.delivery_tag
        # One ack frame per batch read (multiple=True acks every tag up to `last`).
        if not conn.deliveries or received - acked >= prefetch // 2:
            conn.ack([last], multiple=True)
            acked = received
    if last:
        conn.ack([last], multiple=True)
    conn.status()                   # one round trip: the broker has applied every ack
    pipe.send(received)
    conn.close()


def raw_messages(count, queue, not_before=0.0):
    """Broker messages of BODY_BYTES-byte bodies, shaped like tasks (a UUID id, a task name)."""
    body = b"x" * BODY_BYTES
    for _ in range(count):
        yield P.encode_message(P.Message(body, "", queue, str(uuid.uuid4()), NOOP_NAME,
                                         not_before=not_before))


# -- the floor: pure-Python localhost TCP (the method of ../shared/peers/limits.py) -----------

def _recv_exact(sock, buffer):
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        count = sock.recv_into(view[got:])
        if not count:
            return False
        got += count
    return True


def _tcp_server(conn, mode, count):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn.send(listener.getsockname()[1])
    sock, _address = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray(FLOOR_MESSAGE_BYTES)
    if mode == "echo":
        while _recv_exact(sock, buffer):
            sock.sendall(buffer)
    else:                       # sink: time from the first message to the last
        _recv_exact(sock, buffer)
        started = time.perf_counter()
        for _ in range(count - 1):
            _recv_exact(sock, buffer)
        conn.send(time.perf_counter() - started)
    sock.close()
    listener.close()


def _client(lab, mode, count):
    parent, child = mp_context().Pipe()
    server = lab.start_child(_tcp_server, child, mode, count)
    if not parent.poll(30.0):
        raise MinitaskError("the TCP echo server did not start")
    sock = socket.create_connection(("127.0.0.1", parent.recv()))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, parent, sock


def tcp_floor(lab, round_trips=2000, warm=20, one_way=200000):
    """TCP echo round trips (seconds, first `warm` dropped) and one-way messages per second."""
    message = b"x" * FLOOR_MESSAGE_BYTES
    buffer = bytearray(FLOOR_MESSAGE_BYTES)
    server, _pipe, sock = _client(lab, "echo", 0)
    latencies = []
    clock = time.perf_counter
    for _ in range(round_trips):
        started = clock()
        sock.sendall(message)
        _recv_exact(sock, buffer)
        latencies.append(clock() - started)
    sock.close()
    server.join(10.0)               # it leaves when we close
    lab.stop(server)
    server, pipe, sock = _client(lab, "sink", one_way)
    for _ in range(one_way):
        sock.sendall(message)
    if not pipe.poll(60.0):
        raise MinitaskError("the TCP sink did not report")
    elapsed = pipe.recv()
    sock.close()
    server.join(10.0)
    lab.stop(server)
    return latencies[warm:], (one_way - 1) / elapsed
