"""Stopping, killing and reconnecting workers: nothing lost, nothing left STARTED."""

import os
import signal
import time

import pytest

import ittasks
from cluster import wait_for
from minitask.exceptions import WorkerLostError


@pytest.mark.parametrize("sent_to, start_method", [
    ("the worker", "fork"), ("every process", "fork"), ("every process", "forkserver")])
def test_warm_shutdown_finishes_running_tasks_and_returns_the_rest(broker, start_worker,
                                                                   tmp_path, sent_to,
                                                                   start_method):
    """SIGTERM to the worker; or to every process of it, as systemd's default KillMode
    (control-group), `kill -- -PGID` and pkill send it (the pool's processes and a
    forkserver's too): either way the running task finishes."""
    worker = start_worker(args=["-c", "1", "--start-method", start_method])
    running = ittasks.sleep.delay(1.0, "warm")
    waiting = [ittasks.add.delay(i, i) for i in range(3)]
    wait_for(lambda: ittasks.read_trace(tmp_path, "warm") == ["start"], 10,
             what="the long task to start")
    (os.killpg if sent_to == "every process" else os.kill)(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.process.wait(20) == 0
    assert running.get(timeout=5) == 1.0
    assert ittasks.read_trace(tmp_path, "warm") == ["start", "end"]
    assert all(r.state == "PENDING" for r in waiting)
    assert broker.queue()["ready"] == 3
    output = worker.proc.output()
    assert "died" not in output and "Exception ignored" not in output, output
    second = start_worker()
    assert [r.get(timeout=10) for r in waiting] == [0, 2, 4]
    # Given back before they started: not counted as deliveries (none says redelivered).
    assert "(redelivered)" not in second.output()


@pytest.mark.parametrize("how", ["a second SIGTERM", "SIGQUIT"])
def test_a_second_signal_or_sigquit_is_a_cold_shutdown(broker, start_worker, tmp_path, how):
    """SIGQUIT is Celery's cold shutdown; it used to kill the worker by its default action,
    with no shutdown signals and its tasks lost until the broker's grace ran out."""
    worker = start_worker(args=["-c", "1", "--shutdown-timeout", "60"])
    ittasks.sleep_late.delay(30, "cold")
    wait_for(lambda: ittasks.read_trace(tmp_path, "cold") == ["start"], 10,
             what="the task to start")
    if how == "SIGQUIT":
        os.kill(worker.proc.pid, signal.SIGQUIT)
    else:
        os.kill(worker.proc.pid, signal.SIGTERM)
        time.sleep(0.3)          # a person pressing Ctrl-C twice; the worker is waiting
        os.kill(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.process.wait(10) == 0
    assert "cold shutdown" in worker.output()
    wait_for(lambda: broker.queue()["ready"] == 1, 10, what="the acks_late task to return")


@pytest.mark.broker_args("--worker-lost-grace", "1")
def test_a_killed_worker_fails_its_started_tasks_and_returns_its_prefetched_ones(
        broker, start_worker, tmp_path):
    worker = start_worker(args=["-c", "1"])
    started = ittasks.sleep.delay(30, "killed")
    prefetched = [ittasks.add.delay(i, 1) for i in range(3)]
    wait_for(lambda: ittasks.read_trace(tmp_path, "killed") == ["start"], 10,
             what="the task to start")
    wait_for(lambda: started.state == "STARTED", 10, what="the STARTED state")
    worker.kill()
    with pytest.raises(WorkerLostError):
        started.get(timeout=15)
    assert broker.queue()["ready"] == 3
    start_worker()
    assert [r.get(timeout=10) for r in prefetched] == [1, 2, 3]


def test_an_acks_late_task_of_a_killed_worker_runs_again_redelivered(broker, start_worker,
                                                                     tmp_path):
    worker = start_worker(args=["-c", "1"])
    result = ittasks.record_late.apply_async(("again", "run"), countdown=0)
    ittasks.sleep_late.delay(30, "blocker")
    wait_for(lambda: ittasks.read_trace(tmp_path, "again") == ["run"], 10,
             what="the first run")
    wait_for(lambda: ittasks.read_trace(tmp_path, "blocker") == ["start"], 10,
             what="the blocker to start")
    worker.kill()
    start_worker(name="second")
    wait_for(lambda: ittasks.read_trace(tmp_path, "blocker") == ["start", "start"], 15,
             what="the acks_late blocker to run again")
    assert result.get(timeout=10) == "run"


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_a_running_task_ends_with_its_worker_killed_alone(broker, start_worker, tmp_path,
                                                          start_method):
    """kill -9 of the worker's main process only (the OOM killer, `kill -9 PID`): its
    acks_late task goes to the next worker, so the pool process must not run on with it
    unseen, and run it twice at once."""
    worker = start_worker(args=["-c", "1", "--start-method", start_method])
    ittasks.sleep_pid.delay(60, "orphan")
    wait_for(lambda: ittasks.read_trace(tmp_path, "orphan"), 10, what="the task to start")
    child = int(ittasks.read_trace(tmp_path, "orphan")[0].split()[1])
    try:
        assert _running(child)
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.process.wait(10)
        wait_for(lambda: not _running(child), 10,
                 what="the pool process to end with its worker")
        assert ittasks.read_trace(tmp_path, "orphan") == ["pid %d" % child]
    finally:                            # the worker's clean-up no longer reaches an orphan
        if _running(child):
            os.kill(child, signal.SIGKILL)


def test_a_forkserver_killed_alone_takes_its_children_and_the_next_one_ignores_sigterm(
        broker, start_worker, tmp_path):
    """Under forkserver the worker learns how a pool process ended through the server: one
    killed alone (the OOM killer) makes the worker count its children dead. They die with
    it rather than run on unseen, the worker starts a new server, and that one ignores a
    SIGTERM sent to every process of the worker too (only the first did: then the group
    SIGTERM of a warm shutdown killed the new server and every task with it)."""
    worker = start_worker(args=["-c", "1", "--start-method", "forkserver"])
    lost = ittasks.sleep.delay(60, "server")
    wait_for(lambda: ittasks.read_trace(tmp_path, "server") == ["start"], 10,
             what="the task to start")
    server = _forkserver_of(worker)
    [child] = _children(server)
    try:
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not _running(child), 10, what="the pool process to end with it")
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        lost.get(timeout=15)
    assert ittasks.add.delay(1, 1).get(timeout=20) == 2      # a new server, a new child
    running = ittasks.sleep.delay(1.0, "after")
    wait_for(lambda: ittasks.read_trace(tmp_path, "after") == ["start"], 10,
             what="a task to start under the new server")
    os.killpg(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.process.wait(20) == 0
    assert running.get(timeout=5) == 1.0


def _forkserver_of(worker):
    [server] = [pid for pid in _children(worker.proc.pid)
                if b"forkserver" in _command_line(pid)]
    return server


def _children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
        return [int(child) for child in handle.read().split()]


def _command_line(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return b""


def _running(pid):
    """Whether `pid` is a live process (a zombie nobody reaped is not)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_survives_a_broker_restart_and_reports_running_tasks(broker, start_worker,
                                                                      tmp_path):
    worker = start_worker(args=["-c", "1"])
    result = ittasks.sleep.delay(2.0, "across")
    wait_for(lambda: ittasks.read_trace(tmp_path, "across") == ["start"], 10,
             what="the task to start")
    wait_for(lambda: result.state == "STARTED", 10, what="the STARTED state")
    broker.kill()
    broker.start()
    from minitask.transport import reset_connection
    reset_connection()
    worker.wait_ready(20)
    assert result.get(timeout=20) == 2.0
    assert ittasks.add.delay(2, 2).get(timeout=10) == 4
    assert "connected to" in worker.output()
