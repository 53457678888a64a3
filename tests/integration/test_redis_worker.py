"""Real `python -m minitask worker` processes on a real redis-server (``BROKER_URL=redis://``):
the task API, results, retries with countdowns, rate limits, revocations, the CLI's inspect
and status, a worker killed with kill -9 losing nothing, and the beat's lease across two
workers. Skips, saying why, where
redis-server is not installed.

The workers are `cluster.Worker`s, the built-in broker's integration tests' own; what they ask
of a broker (its URL, its status) comes from `RedisBroker`.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import itflow  # noqa: E402
from beatlog import assert_each_beat_sent_once_and_run_once, gaps, send_times  # noqa: E402
import ittasks  # noqa: E402
from cluster import ROOT, Worker, _env, client_of, workers_of  # noqa: E402
from rediskit import (  # noqa: E402
    REDIS_SERVER, SKIP_REASON, RedisBroker, RedisServer, free_port, wait_for,
)
from test_worker_e2e import (  # noqa: E402,F401  (collected here again, on Redis)
    test_date_done_is_when_the_task_ended_and_none_before,
    test_revoke_with_terminate_stops_a_task_inside_one_long_call_into_c,
    test_update_state_shows_progress_until_the_task_ends,
)

from minitask import config, group  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    BrokerFullError, TaskRevokedError, WorkerLostError,
)
from minitask.transport import reset_connection  # noqa: E402
from minitask.transport.redis_client import RedisClient  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

# Short liveness settings, so that a killed worker's tasks come back within seconds.
HEARTBEAT = 2.0
GRACE = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-worker"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def broker(server, tmp_path):
    """A fresh virtual host; the client settings of this process point at it."""
    with client_of(RedisBroker(server, heartbeat=HEARTBEAT, handover_grace=GRACE),
                   tmp_path) as instance:
        yield instance


@pytest.fixture
def start_worker(broker, tmp_path):
    """As the built-in broker's `start_worker` (cluster.py): same arguments."""
    yield from workers_of(broker, tmp_path)


def cli(broker, *args):
    """``python -m minitask ARGS`` on the broker's URL; its stdout (it must exit 0)."""
    done = subprocess.run([sys.executable, "-m", "minitask"] + list(args), cwd=ROOT,
                          env=_env({"MINITASK_BROKER_URL": broker.url}), timeout=60,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return done.stdout.decode("utf-8", "replace")


def test_a_worker_on_redis_runs_tasks_retries_and_stores_results(broker, start_worker,
                                                                 tmp_path):
    start_worker()
    assert ittasks.add.delay(2, 3).get(timeout=15) == 5
    failed = ittasks.fail.delay("on redis")
    with pytest.raises(ValueError, match="on redis"):
        failed.get(timeout=15)
    assert failed.state == "FAILURE"
    # Two failures, each retried after its countdown (0.1 s), then success.
    assert ittasks.flaky.delay("flaky", 2).get(timeout=15) == "done after 2"
    assert len(ittasks.read_trace(tmp_path, "flaky")) == 3
    sent = time.time()
    ran_at = ittasks.when.apply_async(("countdown",), countdown=1).get(timeout=15)
    assert ran_at >= sent + 1.0 - 0.01          # never early (10 ms of clock rounding)


def test_a_group_on_redis_joins_in_order(broker, start_worker):
    start_worker()
    assert group(ittasks.add.s(i, i) for i in range(5)).apply_async().join(timeout=15) == [
        0, 2, 4, 6, 8]


def test_a_chain_on_redis_passes_results_on_and_a_failure_ends_it_with_its_errback(
        broker, start_worker, tmp_path):
    start_worker(modules="itflow")
    assert (itflow.add.s(2, 2) | itflow.mul.s(8) | itflow.add.s(1)).delay().get(timeout=20) \
        == 33
    failed = (itflow.add.s(1, 1) | itflow.divide.s(0) | itflow.add.s(1)) \
        .on_error(itflow.errback.s("redis-errors")).delay()
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)              # the last link never ran: it has the failure
    assert failed.parent.state == "FAILURE"
    assert wait_for(lambda: trace(tmp_path, "redis-errors"), what="the errback") \
        == [failed.parent.id]


def trace(directory, name):
    path = os.path.join(str(directory), "trace-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]


def test_a_rate_limit_holds_on_redis(broker, start_worker, tmp_path):
    start_worker()
    sent = time.time()
    results = [ittasks.rate_limited.delay("limited") for _ in range(10)]
    for result in results:
        result.get(timeout=20)
    times = sorted(float(line) for line in ittasks.read_trace(tmp_path, "limited"))
    # 5/s with a burst of 1: the k-th run (from 0) needed k + 1 tokens, one at once and one
    # each 0.2 s after, so it cannot start before `sent` + k * 0.2 (the last 1.8 s after).
    # Counted from the send, not from the first run: a first run started late (a loaded
    # machine) made the runs' own spread look short although no token came early.
    for k, ran in enumerate(times):
        assert ran - sent >= k / 5.0 - 0.01, (k, ran - sent, [t - sent for t in times])


def test_a_revoked_countdown_never_runs_and_inspect_and_status_see_the_worker(
        broker, start_worker, tmp_path):
    start_worker("rw1")
    revoked = ittasks.record.apply_async(("revoked", "ran"), countdown=2)
    waiting = ittasks.record.apply_async(("waiting", "ran"), countdown=30)
    assert "it.record[%s]" % waiting.id in cli(broker, "inspect", "scheduled")
    revoked.revoke()
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=15)
    assert ittasks.add.delay(1, 1).get(timeout=15) == 2
    assert "pong" in cli(broker, "inspect", "ping")
    status = cli(broker, "status")
    assert "rw1" in status and broker.url.split("?")[0] in status
    # The countdown was due 2 s after it was sent; a worker that saw it would have run it.
    wait_for(lambda: broker.queue()["delayed"] == 1, what="the revoked countdown to go")
    assert ittasks.read_trace(tmp_path, "revoked") == []
    waiting.revoke()


def test_a_worker_killed_with_kill_9_loses_nothing(broker, start_worker, tmp_path):
    """Tasks acked late come back and succeed elsewhere; tasks acked early that had started
    fail with WorkerLostError (as on the built-in broker); the rest run elsewhere. Every one
    ends in a final state, and the queue is empty."""
    first = start_worker("doomed", args=["-c", "2"])
    late = [ittasks.sleep_late.delay(0.3, "late") for _ in range(12)]
    early = [ittasks.sleep.delay(0.3, "early") for _ in range(12)]
    wait_for(lambda: len(ittasks.read_trace(tmp_path, "late")) +
             len(ittasks.read_trace(tmp_path, "early")) >= 3, what="some tasks to start")
    first.kill()                                # kill -9, pool processes included
    start_worker("survivor", args=["-c", "2"])
    for result in late:
        assert result.get(timeout=60) == 0.3
    lost = 0
    for result in early:
        try:
            assert result.get(timeout=60) == 0.3
        except WorkerLostError:
            lost += 1
    # At most the two that ran in the doomed worker's pool (acked as they started) failed.
    assert lost <= 2
    assert len(ittasks.read_trace(tmp_path, "late")) >= 12
    row = wait_for(lambda: (lambda q: q if q["ready"] == 0 and q["unacked"] == 0 else None)(
        broker.queue()), what="an empty queue")
    assert row["dead"] == 0


@pytest.mark.parametrize("asked_by", ["get", "state"])
def test_a_task_of_a_killed_worker_ends_with_no_other_worker_alive(broker, start_worker,
                                                                  asked_by):
    """No broker process of ours watches on Redis: a client waiting on the task, or asking
    its state, looks for dead workers as a worker would, so the task of the only worker,
    killed, still ends WorkerLostError (a helper's outside check saw it STARTED for ever)."""
    doomed = start_worker("alone", args=["-c", "1"])
    started, prefetched = ittasks.sleep.delay(30, "alone"), ittasks.sleep.delay(30, "alone")
    wait_for(lambda: started.state == "STARTED", what="the task to start")
    doomed.kill()
    patience = HEARTBEAT * 2 + GRACE + 20
    if asked_by == "get":
        with pytest.raises(WorkerLostError):
            started.get(timeout=patience)
    else:
        wait_for(lambda: started.state == "FAILURE", patience, what="the WorkerLostError")
        assert isinstance(started.result, WorkerLostError)
    # Prefetched, never started: back in its queue for the next worker.
    wait_for(lambda: broker.queue()["ready"] == 1, what="the prefetched task to return")
    assert prefetched.state == "PENDING"


def test_two_beat_workers_on_redis_send_each_beat_once_and_one_takes_over(
        broker, start_worker, tmp_path):
    def runs():
        return [float(line) for line in ittasks.read_trace(tmp_path, "beat")]
    workers = [start_worker(name, args=["--beat"], modules="ittasks,itbeat")
               for name in ("beat1", "beat2")]
    wait_for(lambda: len(runs()) >= 6, 20, what="six beats")
    assert_each_beat_sent_once_and_run_once(workers, "it.every_half_second", tmp_path,
                                            "beat")
    holders = [w for w in workers if "this worker now sends" in w.output()]
    assert len(holders) == 1
    holder = holders[0]
    other = workers[1 - workers.index(holder)]
    holder.kill()
    killed_at = time.time()
    wait_for(lambda: "this worker now sends" in other.output(), 20,
             what="the other worker to take the lease")
    wait_for(lambda: len([t for t in runs() if t > killed_at]) >= 3, 20,
             what="beats to go on")
    # A beat the killed worker had taken may be lost with it, so only the sends are judged.
    assert min(gaps(send_times(workers, "it.every_half_second"))) > 0.3


def test_status_http_serves_the_page_metrics_and_failures_of_a_redis_broker(
        broker, start_worker):
    """Redis has no process of ours to serve the status page: ``minitask status --http``
    serves it, asking Redis as ``minitask status`` does."""
    start_worker("w1")
    failed = ittasks.fail.delay("kaput")
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    assert ittasks.add.delay(1, 2).get(timeout=30) == 3
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "minitask", "status", "--http", "127.0.0.1:%d" % port],
        cwd=ROOT, env=_env({"MINITASK_BROKER_URL": broker.url}), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        def get(path):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                            timeout=10) as answer:
                    return answer.read().decode("utf-8")
            except OSError:
                return None
        status = json.loads(wait_for(lambda: get("/api/status.json"), what="the page"))
        assert [w["hostname"] for w in status["workers"]] == ["w1"]
        assert any(q["name"] == "minitask" for q in status["queues"])
        metrics = get("/metrics")
        assert 'minitask_queue_messages{queue="minitask",state="ready"} 0' in metrics
        assert "minitask_workers 1" in metrics
        assert "minitask_journal_faults_total" not in metrics    # Redis keeps no journal
        # Per-task counts: the worker adds what it saw to Redis about once a second.
        events = 'minitask_task_events_total{event="%s",task="it.%s"} 1'
        wait_for(lambda: all(events % pair in (get("/metrics") or "") for pair in (
            ("received", "fail"), ("failed", "fail"), ("received", "add"),
            ("succeeded", "add"))), what="per-task counts in /metrics")
        assert 'minitask_task_runtime_seconds_count{task="it.add"} 1' in get("/metrics")
        [failure] = json.loads(get("/api/failures.json"))["failures"]
        assert (failure["task_id"], failure["task"]) == (failed.id, "it.fail")
        assert (failure["exc_type"], failure["exc_message"]) == ("ValueError", "kaput")
        assert "<html" in get("/").lower()
    finally:
        server.terminate()
        output = server.communicate(timeout=15)[0].decode("utf-8", "replace")
    assert server.returncode == 0, output
    assert "minitask status page on http://127.0.0.1:%d/" % port in output


def test_status_http_beyond_loopback_without_a_secret_is_refused_in_one_line(broker):
    done = subprocess.run(
        [sys.executable, "-m", "minitask", "status", "--http", "0.0.0.0:%d" % free_port()],
        cwd=ROOT, env=_env({"MINITASK_BROKER_URL": broker.url}), timeout=60,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.returncode != 0
    lines = done.stderr.decode("utf-8").strip().splitlines()
    assert len(lines) == 1 and "BROKER_SECRET" in lines[0], lines


def test_a_password_in_the_url_is_never_shown_in_logs_status_or_stats(tmp_path):
    """A Redis password in BROKER_URL (and a Sentinel's, in its options) shows as ``**``, as
    Celery shows it: not in the worker's log, `status`, `inspect stats` or an error."""
    server = RedisServer(tmp_path, "--requirepass", "s3cretpw").start()
    try:
        broker = RedisBroker(server)
        broker.url = broker.url.replace("//", "//:s3cretpw@", 1)
        broker.settings = config.Settings({"BROKER_URL": broker.url})
        worker = Worker(broker, tmp_path, "pw1")
        try:
            worker.wait_ready()
            outputs = [cli(broker, "status"), cli(broker, "inspect", "stats")]
            assert "redis://:**@127.0.0.1" in outputs[0]
            worker.stop()
            outputs.append(worker.output())
        finally:
            worker.proc.close()
        unknown = subprocess.run(
            [sys.executable, "-m", "minitask", "status"], cwd=ROOT, timeout=60,
            env=_env({"MINITASK_BROKER_URL": "redis+x://:s3cretpw@127.0.0.1:1/0"}),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert unknown.returncode != 0
        outputs.append(unknown.stdout.decode("utf-8", "replace"))
        assert "connected to redis://:**@127.0.0.1" in outputs[2]
        for output in outputs:
            assert "s3cretpw" not in output
    finally:
        server.stop()


@pytest.mark.parametrize("where, code, says", [
    ("a database Redis does not have", 2, "DB index is out of range"),
    ("a server that is not Redis", 1, "sent bytes that are not RESP")])
def test_a_worker_whose_first_connect_fails_for_good_says_why_in_one_line_and_exits(
        server, where, code, says):
    """The line, then the exit (the pool processes used to keep the worker waiting for them,
    deaf to SIGTERM)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)

    def answer_http():
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return                  # closed: the test is over
            peer.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            peer.close()
    threading.Thread(target=answer_http, daemon=True).start()
    url = server.url("/99") if code == 2 else "redis://127.0.0.1:%d/0" % listener.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "minitask", "worker", "-I", "ittasks", "-c", "1"], cwd=ROOT,
            env=_env({"MINITASK_BROKER_URL": url}), timeout=60,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        listener.close()
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    assert done.returncode == code
    assert lines[-1].startswith("minitask worker: ") and says in lines[-1]
    assert "Traceback" not in done.stderr.decode("utf-8", "replace")


def test_redis_out_of_memory_refuses_delay_and_the_worker_waits_it_out(tmp_path):
    """At maxmemory (noeviction): delay() is refused saying so, and a worker whose calls
    Redis refuses takes it as a lost connection and tries again (it used to exit), saying
    why in one line whichever call was refused first."""
    server = RedisServer(tmp_path).start()
    try:
        broker = RedisBroker(server)
        config.configure(BROKER_URL=broker.url)
        reset_connection()
        worker = Worker(broker, tmp_path, "oom")
        try:
            worker.wait_ready()
            admin = RedisClient(server.url())
            admin.execute("CONFIG", "SET", "maxmemory-policy", "noeviction")
            admin.execute("CONFIG", "SET", "maxmemory", "1")
            with pytest.raises(BrokerFullError, match="Redis is out of memory"):
                ittasks.add.delay(1, 1)
            try:
                wait_for(lambda: "refused a worker's call: Redis is out of memory"
                         in worker.output(), 30, what="the worker to hear the refusal")
            except AssertionError as exc:   # CI25 met this once: say what the worker did
                raise AssertionError("%s; the worker's output ends:\n%s"
                                     % (exc, worker.output()[-4000:])) from None
            assert worker.proc.alive()
            # Every refusal that drops the connection says why the same way, the FETCH
            # behind the reader's XREAD's too (it gave Redis's raw error: CI25 waited 30 s
            # for a second refusal to say it)
            drops = [line for line in worker.output().splitlines()
                     if "reconnecting" in line or "retrying in" in line]
            assert drops and all("refused a worker's call: Redis is out of memory" in line
                                 for line in drops), drops
            admin.execute("CONFIG", "SET", "maxmemory", "0")
            assert ittasks.add.delay(2, 2).get(timeout=30) == 4
        finally:
            worker.proc.close()
    finally:
        reset_connection()
        config.reset()
        server.stop()
