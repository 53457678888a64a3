"""A broker run in this process (its loop in a thread, real sockets), where the journal's disk
can be made slow or its features changed: what clients see of it.

The disk is journalkit's `DiskFaults` standing in for `os` inside the journal module; every
wait is on a frame, an event or a condition polled with a deadline.
"""

import contextlib
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "unit"))

from cluster import wait_for  # noqa: E402
from journalkit import disk_faults, read_records, segment_files  # noqa: E402
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker.journal import Journal  # noqa: E402
from minitask.broker.server import BrokerServer  # noqa: E402
from minitask.broker.state import BrokerOptions, BrokerState  # noqa: E402
from minitask.transport.builtin import Connection  # noqa: E402


@contextlib.contextmanager
def broker_in_thread(data_dir, fsync="everysec"):
    """``(server, url)`` of a broker whose loop runs in a thread of this process."""
    journal = Journal(str(data_dir), fsync=fsync)
    state = BrokerState(time.time, journal, BrokerOptions())
    state.recover()
    server = BrokerServer(state, "127.0.0.1", 0)
    _host, port = server.bind()
    loop = threading.Thread(target=server.serve_forever, name="broker-loop", daemon=True)
    loop.start()
    try:
        yield server, "minitask://127.0.0.1:%d" % port
    finally:
        server.stop()
        loop.join(30.0)


class RawClient:
    """Frames over a plain socket: what was answered, and when, is plain to see."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.decoder = P.Decoder()
        self.frames = []                # (kind, seq, body) received, in order
        self.seq = 0
        self.send(P.HELLO, P.encode_json(P.HELLO, 0, {"protocol": 1})[P.HEADER.size:])
        self.wait_for(P.WELCOME, 1)

    def send(self, kind, body, seq=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.sock.sendall(P.encode_frame(kind, seq, body))
        return seq

    def wait_for(self, kind, seq):
        """Read until a frame of `kind` answering `seq` came (socket timeout: 5 s)."""
        while not any(f[0] == kind and f[1] == seq for f in self.frames):
            data = self.sock.recv(65536)
            assert data, "the broker closed the connection"
            self.decoder.feed(data)
            self.frames.extend(self.decoder.frames())

    def confirmed(self, seq):
        return any(f[0] == P.CONFIRM and f[1] >= seq for f in self.frames)

    def status(self):
        self.wait_for(P.OK, self.send(P.STATUS, b"{}"))

    def close(self):
        self.sock.close()


def _publish_body(task_id):
    return P.encode_message(P.Message(b"{}", routing_key="q", message_id=task_id,
                                      flags=P.PERSISTENT))


def test_a_stuck_fsync_stops_no_round_trip_and_confirms_wait_once_it_is_two_seconds_late(
        tmp_path):
    with disk_faults() as disk, broker_in_thread(tmp_path) as (server, url):
        with Connection(url).connect() as conn:
            conn.declare_queue("q")
        client = RawClient(server.address[1])
        gate = threading.Event()
        del disk.fsyncs[:]
        disk.fsync_gate = gate                              # every fsync now waits for it
        try:
            first = client.send(P.PUBLISH, _publish_body("t0"))
            client.wait_for(P.CONFIRM, first)
            wait_for(lambda: disk.fsyncs, 10.0, what="an fsync to be stuck")
            # The fsync is stuck: round trips go on, publishes are confirmed at once.
            for i in range(1, 51):
                seq = client.send(P.PUBLISH, _publish_body("t%d" % i))
                client.wait_for(P.CONFIRM, seq)
                client.status()
            assert set(disk.fsyncs) == {"minitask-fsync"}      # never the loop's thread
            # Two seconds on, confirms wait for the fsync; everything else is answered.
            wait_for(server.journal.lagging, 10.0, what="the journal to lag by 2 s")
            held = client.send(P.PUBLISH, _publish_body("held"))
            client.status()
            client.status()                                 # a turn after the publish's turn
            assert not client.confirmed(held)
            gate.set()                                      # the disk catches up
            client.wait_for(P.CONFIRM, held)
            assert not server.journal.lagging()
        finally:
            gate.set()
            client.close()


def _compound_records(data_dir):
    return [kind for path in segment_files(data_dir) for _s, _e, kind, _p in read_records(path)
            if kind in (rc.COMPOUND, rc.KV, rc.PUBLISH)]


def test_publish_with_record_is_one_atomic_unit_for_a_broker_that_knows_it(tmp_path):
    with broker_in_thread(tmp_path, fsync="always") as (_server, url):
        with Connection(url).connect() as conn:
            conn.declare_queue("q")
            assert "atomic" in conn.features
            conn.publish_with_record(_publish_body("beat-1"), "beat.last_run.t", 5.0)
            assert conn.call(P.KV_GET, {"key": "beat.last_run.t"})["value"] == 5.0
    assert _compound_records(tmp_path) == [rc.COMPOUND]


def test_publish_with_record_falls_back_for_a_broker_without_atomic(tmp_path, monkeypatch):
    """A broker of the release before ATOMIC names no features: the client sends KV_SET and
    PUBLISH as it always did (one write, two records)."""
    monkeypatch.setattr(P, "FEATURES", ())
    with broker_in_thread(tmp_path, fsync="always") as (_server, url):
        with Connection(url).connect() as conn:
            conn.declare_queue("q")
            assert conn.features == frozenset()
            conn.publish_with_record(_publish_body("beat-1"), "beat.last_run.t", 5.0)
            conn.consume("q")
            assert conn.get_delivery(5.0).message.message_id == "beat-1"
    assert _compound_records(tmp_path) == [rc.KV, rc.PUBLISH]


@pytest.mark.parametrize("features", [None, "atomic", 5, [5, None]])
def test_junk_in_welcome_features_means_no_features(tmp_path, monkeypatch, features):
    from minitask.broker import handshake
    original = handshake.Handshake._welcome

    def welcome(self, session, seq, proof):
        original(self, session, seq, proof)
        frame = session.out.pop()
        body = P.decode_json(frame[P.HEADER.size:])
        body["features"] = features
        session.send(P.encode_json(P.WELCOME, seq, body))
    monkeypatch.setattr(handshake.Handshake, "_welcome", welcome)
    with broker_in_thread(tmp_path, fsync="no") as (_server, url):
        with Connection(url).connect() as conn:
            assert conn.features == frozenset()
