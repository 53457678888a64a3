"""Pool processes that cannot start: the worker backs off, says so, and never fails a task.

Causes (startfaults.py, brokentasks.py), one per start method: a tasks module that the pool
processes cannot import (spawn), a loader's ``on_worker_init`` that fails when a pool process
runs it again (forkserver), and a loader's ``on_worker_process_init`` that fails (fork, and
the test where the fault goes away).
"""

import subprocess
import sys

import pytest

import ittasks
from cluster import wait_for

CAUSES = {
    "spawn": ({}, "ittasks,brokentasks",
              "cannot import 'brokentasks': ModuleNotFoundError: No module named "
              "'reportlab_missing_here'"),
    "forkserver": ({"MINITASK_LOADER": "startfaults.FailingWorkerInit"}, "ittasks",
                   "RuntimeError: the worker's start-up hook cannot run twice"),
    "fork": ({"MINITASK_LOADER": "startfaults.FailingProcessInit"}, "ittasks",
             "RuntimeError: the licence server is unreachable"),
}


def stats(broker, name):
    with broker.connect() as conn:
        return conn.broadcast("stats", destination=[name], timeout=5, limit=1).get(name)


def status_of(broker, name):
    return next((w for w in broker.status()["workers"] if w.get("hostname") == name), None)


def start_lines(text):
    return [line for line in text.splitlines() if "could not start" in line]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_processes_that_cannot_start_degrade_the_worker_then_stop_it(
        broker, start_worker, tmp_path, method):
    env, modules, cause = CAUSES[method]
    if method == "fork":
        (tmp_path / "pool-broken").write_text("")
    waiting = ittasks.add.delay(1, 2)
    worker = start_worker(args=["--start-method", method, "-c", "2"], env=env,
                          modules=modules)
    seen = wait_for(lambda: (status_of(broker, worker.name) or {}).get("state") == "degraded"
                    and status_of(broker, worker.name), 20, what="status to say degraded")
    assert cause in seen["degraded"]
    wait_for(lambda: not worker.proc.alive(), 40, what="the worker to give up")
    assert worker.proc.process.returncode == 1
    output = worker.output()
    assert "Traceback" not in output
    lines = start_lines(output)
    # one line per try, each with the cause; the fifth says it stops
    assert len(lines) == 6, output      # 5 logged + the command line's own one-line error
    assert all(cause in line for line in lines)
    assert sum("trying again in" in line for line in lines) == 4
    assert sum("5 times in a row" in line for line in lines) == 2
    assert worker.proc.output().startswith("minitask worker: pool processes could not start")
    # no task was given to it, so none failed: it waits in its queue for a working worker
    assert waiting.state == "PENDING"
    queue = broker.queue()
    assert (queue["ready"], queue["unacked"]) == (1, 0)


def test_a_worker_whose_new_pool_process_cannot_start_hands_back_its_tasks_and_recovers(
        broker, start_worker, tmp_path):
    marker = tmp_path / "pool-broken"
    # One pool process, replaced after each task: the first replacement meets the fault.
    worker = start_worker(args=["-c", "1", "--max-tasks-per-child", "1"],
                          env={"MINITASK_LOADER": "startfaults.FailingProcessInit"})
    running = ittasks.sleep.delay(0.5)
    wait_for(lambda: running.state == "STARTED", 10, what="the first task to start")
    marker.write_text("")
    queued = [ittasks.add.delay(i, i) for i in range(3)]
    wait_for(lambda: broker.queue()["unacked"] == 3, 10, what="the worker to reserve them")
    degraded = wait_for(lambda: (stats(broker, worker.name) or {}).get("state") == "degraded"
                        and stats(broker, worker.name), 20, what="inspect to say degraded")
    assert "RuntimeError: the licence server is unreachable" in degraded["degraded"]
    assert "startfaults.py, line" in degraded["degraded"]
    assert degraded["taking_tasks"] is False
    assert status_of(broker, worker.name)["state"] == "degraded"
    shown = subprocess.run([sys.executable, "-m", "minitask", "status", "--broker", broker.url],
                           stdout=subprocess.PIPE, text=True, timeout=30).stdout
    assert [line.split()[-1] for line in shown.splitlines()
            if line.startswith("w1 ") and "is degraded" not in line] == ["degraded"]
    assert "w1 is degraded: RuntimeError: the licence server is unreachable" in shown
    assert running.get(timeout=10) == 0.5
    queue = broker.queue()
    assert (queue["ready"], queue["unacked"], queue["consumers"]) == (3, 0, 0)
    assert all(result.state == "PENDING" for result in queued)     # handed back, not failed
    marker.unlink()
    assert [result.get(timeout=20) for result in queued] == [0, 2, 4]
    assert status_of(broker, worker.name)["state"] == "ok"
    assert stats(broker, worker.name)["taking_tasks"] is True
    output = worker.output()
    assert "Traceback" not in output
    assert start_lines(output) and all("the licence server is unreachable" in line
                                       for line in start_lines(output))
    assert "pool processes started; taking tasks again" in output


def test_pool_processes_a_worker_spawns_do_not_warn_about_its_own_variables(broker,
                                                                            start_worker):
    worker = start_worker(args=["--start-method", "spawn", "-c", "1"])
    assert ittasks.add.delay(3, 4).get(timeout=20) == 7
    assert "ignoring environment variable" not in worker.output()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_pool_process_runs_the_loaders_hooks_its_start_method_needs(
        broker, start_worker, tmp_path, method):
    start_worker(args=["--start-method", method, "-c", "1"],
                 env={"MINITASK_LOADER": "startfaults.RecordingLoader"})
    assert ittasks.add.delay(1, 1).get(timeout=20) == 2
    hooks = (tmp_path / "hooks.log").read_text().splitlines()
    # a forked process has the worker's set-up already; the others replay it
    replayed = [] if method == "fork" else ["minitask-pool-1 on_worker_init"]
    assert hooks == ["MainProcess on_worker_init"] + replayed + [
        "minitask-pool-1 on_worker_process_init"]
