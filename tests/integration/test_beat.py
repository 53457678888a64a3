"""Periodic tasks: one beat sends at a time across workers, and nothing is sent twice."""

import time

import itbeat  # noqa: F401  (registers the periodic task here too, as a client would)
import ittasks
from cluster import wait_for


def runs(tmp_path):
    return [float(line) for line in ittasks.read_trace(tmp_path, "beat")]


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def test_a_beat_worker_sends_a_periodic_task_every_run_every(broker, start_worker, tmp_path):
    start_worker(args=["--beat"], modules="ittasks,itbeat")
    wait_for(lambda: len(runs(tmp_path)) >= 5, 15, what="five beats")
    assert all(0.3 < gap < 1.0 for gap in gaps(runs(tmp_path)[:5]))


def test_two_beat_workers_send_each_beat_once_and_one_takes_over_from_the_other(
        broker, start_worker, tmp_path):
    workers = [start_worker(name=name, args=["--beat"], modules="ittasks,itbeat")
               for name in ("beat1", "beat2")]
    wait_for(lambda: len(runs(tmp_path)) >= 6, 15, what="six beats")
    assert min(gaps(runs(tmp_path))) > 0.3          # never two sends of one beat
    holders = [w for w in workers if "this worker now sends" in open(w.logfile).read()]
    assert len(holders) == 1
    holder = holders[0]
    other = workers[1 - workers.index(holder)]
    holder.kill()
    killed_at = time.time()
    wait_for(lambda: "this worker now sends" in open(other.logfile).read(), 15,
             what="the other worker to take the lease")
    wait_for(lambda: len([t for t in runs(tmp_path) if t > killed_at]) >= 3, 15,
             what="beats to go on")
    assert [t for t in runs(tmp_path) if t > killed_at][0] - killed_at < 8.0


def test_a_broker_restart_neither_skips_nor_doubles_a_beat(broker, start_worker, tmp_path):
    worker = start_worker(args=["--beat"], modules="ittasks,itbeat")
    wait_for(lambda: len(runs(tmp_path)) >= 3, 15, what="three beats")
    broker.kill()
    broker.start()
    worker.wait_ready(20)
    count = len(runs(tmp_path))
    wait_for(lambda: len(runs(tmp_path)) >= count + 3, 20, what="beats after the restart")
    assert min(gaps(runs(tmp_path))) > 0.3
