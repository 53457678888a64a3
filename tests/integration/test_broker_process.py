"""A real broker process driven through the client: delivery rules, persistence, bad input."""

import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from cluster import ROOT, Broker, _env, wait_for
from minitask import protocol as P
from minitask.transport.builtin import Connection
from minitask.exceptions import (
    BrokerConnectionError, BrokerError, BrokerFullError, NotDeliverableError,
    PublishRefusedError, UnroutableError,
)


def message(body=b"x", queue="q", **fields):
    fields.setdefault("message_id", body.decode("latin-1")[:200])
    return P.Message(body=body, exchange="", routing_key=queue, **fields)


def declare(conn, queue="q", **arguments):
    conn.declare_queue(queue, **arguments)
    return queue


def take(conn, count, timeout=5.0):
    """`count` deliveries, in order (fails the test if they do not all come)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        delivery = conn.get_delivery(max(0.01, deadline - time.monotonic()))
        assert delivery is not None, "only %d of %d deliveries came" % (len(out), count)
        out.append(delivery)
    return out


def bodies(deliveries):
    return [d.message.body for d in deliveries]


@pytest.fixture
def bare_broker(tmp_path):
    instance = Broker(tmp_path).start()
    try:
        yield instance
    finally:
        instance.proc.close()


def test_the_ready_line_names_the_port_that_was_picked(bare_broker):
    assert bare_broker.url.startswith("minitask://127.0.0.1:")
    assert bare_broker.port > 0
    socket.create_connection(("127.0.0.1", bare_broker.port), timeout=2).close()


def test_sigterm_stops_the_broker_cleanly(bare_broker):
    assert bare_broker.stop() == 0
    assert "Traceback" not in bare_broker.output()


def test_a_publish_is_confirmed_and_delivered_in_priority_then_fifo_order(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn)
        for body, priority in [(b"a", 5), (b"b", 0), (b"c", 5), (b"d", 9), (b"e", 0)]:
            conn.publish(message(body, priority=priority))
        conn.consume("q")
        got = take(conn, 5)
        assert bodies(got) == [b"b", b"e", b"a", b"c", b"d"]
        conn.ack([d.delivery_tag for d in got])


def test_prefetch_limits_unacked_deliveries(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn)
        conn.publish_many([message(b"%d" % i) for i in range(10)])
        conn.qos(3)
        conn.consume("q")
        first = take(conn, 3)
        assert conn.get_delivery(0.3) is None
        conn.ack([first[0].delivery_tag])
        assert bodies(take(conn, 1)) == [b"3"]


def test_unacked_messages_return_ahead_of_newer_ones_flagged_redelivered(bare_broker):
    with bare_broker.connect() as publisher:
        declare(publisher)
        publisher.publish_many([message(b"%d" % i) for i in range(4)])
        with bare_broker.connect() as consumer:
            consumer.qos(2)
            consumer.consume("q")
            assert bodies(take(consumer, 2)) == [b"0", b"1"]
        publisher.publish(message(b"new"))
        publisher.consume("q")
        got = take(publisher, 5)
        assert bodies(got) == [b"0", b"1", b"2", b"3", b"new"]
        assert [d.redelivered for d in got] == [True, True, False, False, False]


def test_a_message_redelivered_too_often_is_dead_lettered(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn, max_redeliveries=2)
        conn.publish(message(b"poison"))
    for _ in range(3):
        with bare_broker.connect() as consumer:
            consumer.consume("q")
            assert bodies(take(consumer, 1)) == [b"poison"]
    queue = bare_broker.queue("q.dead")
    assert queue is not None and queue["ready"] == 1
    assert bare_broker.queue("q")["ready"] == 0


def test_mandatory_unroutable_and_immediate_undeliverable_are_refused(bare_broker):
    with bare_broker.connect() as conn:
        with pytest.raises(UnroutableError):
            conn.publish(message(b"x", queue="nowhere", flags=P.MANDATORY | P.PERSISTENT))
        conn.publish(message(b"x", queue="nowhere"))            # dropped, counted
        declare(conn)
        with pytest.raises(NotDeliverableError):
            conn.publish(message(b"x", flags=P.IMMEDIATE | P.PERSISTENT))
        conn.consume("q")
        conn.publish(message(b"now", flags=P.IMMEDIATE | P.PERSISTENT))
        assert bodies(take(conn, 1)) == [b"now"]
        assert conn.status()["broker"]["unroutable"] == 1


def test_a_full_queue_refuses_publishes(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn, max_length=2)
        conn.publish(message(b"1"))
        conn.publish(message(b"2"))
        with pytest.raises(BrokerFullError, match="full"):
            conn.publish(message(b"3"))


def test_a_delayed_message_waits_in_the_broker_until_shortly_before_it_is_due(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn)
        due = time.time() + 1.5
        conn.publish(message(b"later", not_before=due))
        conn.consume("q")
        assert conn.get_delivery(0.5) is None
        delivery = take(conn, 1, timeout=5)[0]
        assert time.time() >= due - 0.6
        assert delivery.message.not_before == due


def test_a_result_wait_is_answered_the_moment_the_result_is_set(bare_broker):
    with bare_broker.connect() as waiter, bare_broker.connect() as setter:
        started = time.monotonic()
        setter_thread_delay = 0.3

        import threading

        def set_later():
            time.sleep(setter_thread_delay)
            setter.set_result("t1", "SUCCESS", "application/json", b'{"result": 1}')
        thread = threading.Thread(target=set_later)
        thread.start()
        state, ready, _when, _ct, payload = waiter.wait_result("t1", timeout=10)
        thread.join()
        assert (state, ready, payload) == ("SUCCESS", True, b'{"result": 1}')
        assert time.monotonic() - started < 2


def test_garbage_costs_only_its_own_connection(bare_broker):
    with bare_broker.connect() as good:
        declare(good)
        raw = socket.create_connection(("127.0.0.1", bare_broker.port), timeout=5)
        raw.sendall(b"\xff" * 64)
        reply = raw.recv(4096)
        raw.close()
        assert P.ERROR in reply[:9]
        http = socket.create_connection(("127.0.0.1", bare_broker.port), timeout=5)
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert http.recv(4096).startswith(b"HTTP/1.0 400")
        http.close()
        good.publish(message(b"still fine"))
        good.consume("q")
        assert bodies(take(good, 1)) == [b"still fine"]


def test_an_unknown_command_gets_an_error_and_the_broker_carries_on(bare_broker):
    with bare_broker.connect() as conn:
        with pytest.raises(BrokerError, match="no queue"):
            conn.call(P.PURGE, {"queue": "missing"})
        assert conn.status()["broker"]["connections"] >= 1


def test_confirmed_messages_survive_kill_9_and_acked_ones_stay_gone(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn)
        conn.publish_many([message(b"%d" % i) for i in range(100)])
        conn.qos(10)
        conn.consume("q")
        got = take(conn, 10)
        conn.ack([d.delivery_tag for d in got[:5]])
        conn.drain(0.2)
        conn.status()                               # the ack is processed by now
    bare_broker.kill()
    bare_broker.start()
    with bare_broker.connect() as conn:
        conn.consume("q")
        got = take(conn, 95)
        assert bodies(got) == [b"%d" % i for i in range(5, 100)]
        # 5..9 were unacked; the 5 acks made room for 10..14: all ten were delivered before.
        assert [d.redelivered for d in got[:10]] == [True] * 10
        assert not any(d.redelivered for d in got[10:])
        assert conn.get_delivery(0.3) is None


def test_delayed_messages_results_and_revoked_ids_survive_a_restart(bare_broker):
    due = time.time() + 3.0
    with bare_broker.connect() as conn:
        declare(conn)
        conn.publish(message(b"later", not_before=due))
        conn.set_result("r1", "SUCCESS", "application/json", b'{"result": 7}')
        conn.revoke(["gone"])
    bare_broker.kill()
    bare_broker.start()
    with bare_broker.connect() as conn:
        assert conn.get_result("r1")[:2] == ("SUCCESS", True)
        assert conn.get_result("gone")[0] == "REVOKED"
        assert conn.call(P.REVOKED, {})["task_ids"] == ["gone"]
        conn.consume("q")
        assert conn.get_delivery(max(0.1, due - time.time() - 1.0)) is None
        assert bodies(take(conn, 1, timeout=6)) == [b"later"]


def test_no_persist_keeps_nothing_across_a_restart(tmp_path):
    broker = Broker(tmp_path, args=["--no-persist"]).start()
    try:
        with broker.connect() as conn:
            declare(conn)
            conn.publish(message(b"lost"))
        broker.kill()
        broker.start()
        assert broker.queue("q") is None
    finally:
        broker.proc.close()


def test_listening_beyond_loopback_without_a_secret_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "minitask", "broker", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(tmp_path)], env=_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "without a secret" in result.stderr


def test_two_brokers_cannot_share_a_data_directory(bare_broker, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "minitask", "broker", "--port", "0", "--data-dir",
         bare_broker.data_dir], env=_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 1               # held by another, as a port in use: not bad use
    assert "in use by broker %d" % bare_broker.proc.pid in result.stderr


def test_a_status_page_port_in_use_is_one_line_and_exit_code_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for command in (["broker", "--port", "0", "--data-dir", str(tmp_path)], ["status"]):
            result = subprocess.run(
                [sys.executable, "-m", "minitask"] + command + ["--http", "127.0.0.1:%d" % port],
                env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert result.returncode == 1, (command, result.stderr)
            last = result.stderr.strip().splitlines()[-1]       # after the broker's log
            assert "Traceback" not in result.stderr, result.stderr
            assert last.endswith(": cannot serve the status page on 127.0.0.1:%d: Address "
                                 "already in use" % port), result.stderr


def test_nothing_listening_is_a_clear_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BrokerConnectionError, match="minitask://127.0.0.1:%d" % port):
        Connection("minitask://127.0.0.1:%d" % port).connect()


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _segments(data_dir):
    journal = os.path.join(data_dir, "journal")
    return sorted(os.path.join(journal, name) for name in os.listdir(journal)
                  if name.endswith(".seg"))


def test_a_file_size_limit_starts_new_segments_and_refuses_only_what_cannot_fit(tmp_path):
    """Under RLIMIT_FSIZE (``prlimit --fsize``) a write past the limit fails with EFBIG: the
    broker starts a new segment and carries on. A message too big for even a fresh segment
    is refused, without a new segment per try."""
    limit = 200 * 1000
    broker = Broker(tmp_path)
    command = [sys.executable, "-m", "minitask", "broker", "--port", "0", "--data-dir",
               broker.data_dir, "-l", "INFO"]
    log = open(str(tmp_path / "broker.log"), "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=_env(),
                               cwd=ROOT, preexec_fn=_limit_file_size(limit),
                               start_new_session=True)
    try:
        line = process.stdout.readline().decode()
        url = line.rsplit(" ", 1)[1].strip()
        with Connection(url).connect() as conn:
            declare(conn)
            names = ["m%d" % i for i in range(1000)]
            for name in names:                          # 1 MB: five times the limit
                conn.publish(message(b"z" * 1000, message_id=name))
            segments = _segments(broker.data_dir)
            assert len(segments) >= 5
            assert all(os.path.getsize(path) <= limit for path in segments)
            for attempt in range(3):
                with pytest.raises(PublishRefusedError, match="File too large"):
                    conn.publish(message(b"h" * (limit + 1000), message_id="huge"))
            assert len(_segments(broker.data_dir)) <= len(segments) + 1
            conn.publish(message(b"after", message_id="after"))
            names.append("after")
            conn.consume("q")
            assert [d.message.message_id for d in take(conn, len(names))] == names
            assert conn.get_delivery(0.3) is None
        assert process.poll() is None                   # still serving
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    # Restarted without the limit: every confirmed message is there (unacked), no huge one.
    broker.start()
    try:
        with broker.connect() as conn:
            conn.consume("q")
            assert [d.message.message_id for d in take(conn, len(names))] == names
            assert conn.get_delivery(0.3) is None
        assert "ERROR" not in broker.output(), broker.output()
    finally:
        broker.proc.close()


def test_a_torn_tail_is_cut_off_with_one_warning(bare_broker):
    with bare_broker.connect() as conn:
        declare(conn)
        conn.publish_many([message(b"%d" % i) for i in range(10)])
    bare_broker.kill()
    journal = os.path.join(bare_broker.data_dir, "journal")
    segment = os.path.join(journal, sorted(os.listdir(journal))[-1])
    with open(segment, "ab") as handle:
        handle.write(struct.pack("!IIB", 500, 0, 1) + b"half a record")
    bare_broker.start()
    assert bare_broker.output().count("torn record") == 1
    with bare_broker.connect() as conn:
        conn.consume("q")
        assert bodies(take(conn, 10)) == [b"%d" % i for i in range(10)]


def test_a_journal_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "journal").write_text("a file where the journal folder goes")
    result = subprocess.run([sys.executable, "-m", "minitask", "broker", "--port", "0",
                             "--data-dir", str(data_dir)], env=_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot open the journal: %s" % (data_dir / "journal") in result.stderr
