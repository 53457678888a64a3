"""Drive a BrokerState and its Journal the way broker/server.py does, with no sockets.

Shared by tests/unit/test_journal.py, tests/unit/test_recovery.py and
tests/property/test_journal_props.py. One `Broker` is one broker process: `Client`s send
frames built with minitask.protocol, `turn()` is `BrokerServer.run_once` without the
sockets (the server's own `Loop`), and `reopen()` is ``kill -9`` followed by a restart on
the same data directory.
"""

import contextlib
import errno
import json
import os
import struct
import threading
import zlib

from minitask import protocol as P
from minitask.broker import journal as jr
from minitask.broker.journal import Journal
from minitask.broker.loop import Loop
from minitask.broker.queue import StoredMessage
from minitask.broker.state import BrokerOptions, BrokerState

__all__ = ["FakeClock", "Broker", "Client", "DiskFaults", "disk_faults", "read_records",
           "segment_files", "live_messages", "live_ids", "ready_view"]

START = 1_700_000_000.0


class FakeClock:
    """Stands in for time.time; time moves only through advance()."""

    def __init__(self, now=START):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# -- the disk ------------------------------------------------------------------------------------

class DiskFaults:
    """Stands in for the `os` module inside minitask.broker.journal; os.write fails on demand.

    `full` makes every write fail with ENOSPC. `room` (bytes) lets that much more be written,
    in part if need be (a short write), and fails the write after it: a disk that fills up in
    the middle of a batch. `truncate_fails` makes os.ftruncate fail with EIO. `fsyncs` lists
    the thread that made each fsync; while `fsync_gate` (an Event) is set to a cleared Event,
    fsync waits for it: a slow disk. Everything else is the real `os`.
    """

    def __init__(self):
        self.full = False
        self.room = None
        self.failures = 0
        self.truncate_fails = False
        self.fsyncs = []
        self.fsync_gate = None

    def fsync(self, fd):
        self.fsyncs.append(threading.current_thread().name)
        gate = self.fsync_gate
        if gate is not None:
            gate.wait(60.0)
        return os.fsync(fd)

    def ftruncate(self, fd, size):
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        return os.ftruncate(fd, size)

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full or (self.room is not None and self.room <= 0):
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.room is not None:
            written = os.write(fd, bytes(data[:self.room]))
            self.room -= written
            return written
        return os.write(fd, data)

    def heal(self):
        self.full = False
        self.room = None


@contextlib.contextmanager
def disk_faults():
    """Install a DiskFaults as journal.py's `os` for the duration (usable under hypothesis)."""
    faults = DiskFaults()
    saved = jr.os
    jr.os = faults
    try:
        yield faults
    finally:
        jr.os = saved


def segment_files(data_dir, suffix=".seg"):
    """Full paths of the journal's files ending in `suffix`, in name order."""
    directory = os.path.join(str(data_dir), "journal")
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory))
            if name.endswith(suffix)]


# Record types 12-14 (OPEN, ROTATE, RETIRED) describe the journal's shape, not the broker's.
SHAPE_TYPES = (12, 13, 14)


def read_records(path, shape=False):
    """``[(start, end, type, payload)]`` of one segment, read straight from the docstrings
    of segments.py and records.py (a 12-byte header: "MTJ1", version u32 (1 or 2), seed u32;
    then length u32, crc32 u32 XORed with the seed, type u8, payload): a reference independent
    of the journal's own reader. Stops at the first record that does not check out. Shape
    records are left out unless `shape`."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"MTJ1" or data[4:8] not in (struct.pack("!I", 1), struct.pack("!I", 2)):
        raise AssertionError("%s: bad file header %r" % (path, data[:8]))
    (seed,) = struct.unpack_from("!I", data, 8)
    records, offset = [], 12
    while offset + 9 <= len(data):
        length, crc = struct.unpack_from("!II", data, offset)
        end = offset + 8 + length
        typed = data[offset + 8:end]
        if length < 1 or end > len(data) or zlib.crc32(typed) ^ seed != crc:
            break
        if shape or typed[0] not in SHAPE_TYPES:
            records.append((offset, end, typed[0], typed[1:]))
        offset = end
    return records


# -- the broker ----------------------------------------------------------------------------------

class Broker:
    """A BrokerState over a Journal in `data_dir`, recovered on construction."""

    def __init__(self, data_dir, clock=None, segment_bytes=4096, fsync="no", options=None,
                 journal=None):
        """`journal`: another journal instead (a NullJournal: --no-persist)."""
        self.data_dir = str(data_dir)
        self.clock = clock or FakeClock()
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.options = options
        self.journal = journal or Journal(self.data_dir, fsync=fsync,
                                          segment_bytes=segment_bytes, clock=self.clock)
        self.state = BrokerState(self.clock, self.journal, options or BrokerOptions())
        self.summary = self.state.recover()
        self.loop = Loop(self.state, clock=self.clock, monotonic=self.clock,
                         compaction_interval=0.0)
        self._next_session = 1

    def connect(self, worker=None):
        session = self.state.open_session(self._next_session, "test:%d" % self._next_session)
        self._next_session += 1
        client = Client(self, session)
        hello = {"protocol": P.PROTOCOL_VERSION}
        if worker:
            hello["worker"] = {"hostname": worker}
        client.send(P.HELLO, json.dumps(hello).encode())
        client.pump()
        return client

    def turn(self, compact=False):
        """One loop turn of the server, without its sockets: tick, write, confirm or refuse,
        (compact), dispatch, write the DELIVERED records (kept for later when that fails)."""
        self.loop.turn(compact)

    def compact(self, max_steps=10000, budget_bytes=1 << 20):
        """compact_step until it says there is nothing left; returns the number of steps."""
        for step in range(1, max_steps + 1):
            if not self.journal.compact_step(self.state, budget_bytes):
                return step
        raise AssertionError("compaction still busy after %d steps" % max_steps)

    def crash(self):
        """kill -9: what os.write put in the files stays; nothing pending is written."""
        self.journal.close()

    def reopen(self, **changes):
        """Crash, then start a new broker on the same data directory."""
        self.crash()
        kwargs = dict(clock=self.clock, segment_bytes=self.segment_bytes, fsync=self.fsync,
                      options=self.options)
        kwargs.update(changes)
        return Broker(self.data_dir, **kwargs)


class Delivery:
    __slots__ = ("tag", "consumer_tag", "redelivered", "deliveries", "task_id", "data")

    def __init__(self, body):
        self.tag, self.consumer_tag, self.redelivered, self.deliveries, self.data = \
            P.decode_deliver(body)
        self.task_id = P.message_id_of(self.data)

    def __repr__(self):
        return "<Delivery %d %s x%d>" % (self.tag, self.task_id, self.deliveries)


class Client:
    """One connection: sends frames to the state, reads back what the state answered."""

    def __init__(self, broker, session):
        self.broker = broker
        self.session = session
        self._seq = 0
        self.deliveries = []            # Delivery, in the order they came
        self.errors = {}                # seq -> (code, text)
        self.oks = {}                   # seq -> JSON reply
        self.results = {}               # seq -> (task_id, state, flags, time, type, payload)
        self.confirmed = 0              # the highest CONFIRM seq

    # -- sending --

    def send(self, kind, body=b"", seq=None):
        if seq is None:
            self._seq += 1
            seq = self._seq
        self.broker.state.handle(self.session, kind, seq, body)
        return seq

    def call(self, kind, obj, seq=None):
        return self.send(kind, json.dumps(obj).encode(), seq)

    def declare_queue(self, queue, **args):
        return self.call(P.DECLARE_QUEUE, dict(args, queue=queue))

    def declare_exchange(self, exchange, type="direct", **args):
        return self.call(P.DECLARE_EXCHANGE, dict(args, exchange=exchange, type=type))

    def delete_exchange(self, exchange):
        return self.call(P.DELETE_EXCHANGE, {"exchange": exchange})

    def bind(self, queue, exchange, binding_key=""):
        return self.call(P.BIND, {"queue": queue, "exchange": exchange,
                                  "binding_key": binding_key})

    def unbind(self, queue, exchange, binding_key=""):
        return self.call(P.UNBIND, {"queue": queue, "exchange": exchange,
                                    "binding_key": binding_key})

    def purge(self, queue):
        return self.call(P.PURGE, {"queue": queue})

    def delete_queue(self, queue):
        return self.call(P.DELETE_QUEUE, {"queue": queue})

    def publish(self, queue, task_id, body=b"{}", priority=None, not_before=0.0,
                expires_at=0.0, exchange="", routing_key=None, flags=P.PERSISTENT, seq=None):
        message = P.Message(body, exchange=exchange,
                            routing_key=queue if routing_key is None else routing_key,
                            message_id=task_id, type="tasks.add", priority=priority,
                            not_before=not_before, expires_at=expires_at, flags=flags)
        return self.send(P.PUBLISH, P.encode_message(message), seq)

    def consume(self, queue, no_ack=False):
        return self.call(P.CONSUME, {"queue": queue, "no_ack": no_ack})

    def cancel(self, consumer_tag):
        return self.call(P.CANCEL, {"consumer_tag": consumer_tag})

    def qos(self, prefetch_count):
        return self.call(P.QOS, {"prefetch_count": prefetch_count})

    def _tags(self, kind, flags, tags):
        body = struct.pack("!BI", flags, len(tags)) + struct.pack("!%dQ" % len(tags), *tags)
        return self.send(kind, body, 0)

    def ack(self, *tags, started=False):
        return self._tags(P.ACK, P.STARTED if started else 0, tags)

    def reject(self, *tags, requeue=False, release=False):
        flags = (P.REQUEUE if requeue or release else 0) | (P.RELEASE if release else 0)
        return self._tags(P.REJECT, flags, tags)

    def set_result(self, task_id, state="SUCCESS", payload=b'{"result": 42}',
                   content_type="application/json", store=True, ttl=0.0, seq=None):
        frame = P.encode_result(P.RESULT_SET, 0, task_id, state, P.STORE if store else 0,
                                ttl, content_type, payload)
        return self.send(P.RESULT_SET, frame[P.HEADER.size:], seq)

    def forget(self, *task_ids):
        return self.call(P.RESULT_FORGET, {"task_ids": list(task_ids)})

    def revoke(self, *task_ids):
        return self.call(P.REVOKE, {"task_ids": list(task_ids)})

    def claim(self, *task_ids):
        return self.call(P.CLAIM, {"task_ids": list(task_ids)})

    def kv_set(self, key, value):
        return self.call(P.KV_SET, {"key": key, "value": value})

    def close(self):
        self.broker.state.close_session(self.session, "closed")

    # -- reading --

    def pump(self):
        """Decode what the state queued for this connection; returns the frames."""
        decoder = P.Decoder()
        decoder.feed(b"".join(self.session.out))
        self.session.out.clear()
        frames = list(decoder.frames())
        for kind, seq, body in frames:
            if kind == P.DELIVER:
                self.deliveries.append(Delivery(body))
            elif kind == P.ERROR:
                self.errors[seq] = P.decode_error(body)
            elif kind == P.OK:
                self.oks[seq] = json.loads(body.decode())
            elif kind == P.CONFIRM:
                self.confirmed = max(self.confirmed, seq)
            elif kind == P.RESULT:
                self.results[seq] = P.decode_result(body)
        return frames

    def take_deliveries(self):
        self.pump()
        taken, self.deliveries = self.deliveries, []
        return taken

    def is_confirmed(self, seq):
        """CONFIRM covers every numbered command up to its seq that got no ERROR."""
        self.pump()
        return seq <= self.confirmed and seq not in self.errors


# -- looking at a state --------------------------------------------------------------------------

def live_messages(state):
    """Every persisted message the state holds (ready, delayed, unacked) as StoredMessage."""
    return [obj for obj in state.live_objects() if isinstance(obj, StoredMessage)]


def live_ids(state):
    """The task ids of every persisted message the state holds."""
    return sorted(P.message_id_of(message.data) for message in live_messages(state))


def ready_view(state, queue):
    """``[(task_id, deliveries)]`` of a queue's waiting messages, in delivery order."""
    return [(P.message_id_of(message.data), message.deliveries)
            for message in state.queues[queue].iter_ready()]
