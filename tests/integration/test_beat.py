"""Periodic tasks: one beat sends at a time across workers, and nothing is sent twice."""

import time

import pytest

import itbeat  # noqa: F401  (registers the periodic task here too, as a client would)
import ittasks
from beatlog import assert_each_beat_sent_once_and_run_once, gaps, send_times
from cluster import wait_for


def runs(tmp_path):
    return [float(line) for line in ittasks.read_trace(tmp_path, "beat")]


def test_a_beat_worker_sends_a_periodic_task_every_run_every(broker, start_worker, tmp_path):
    worker = start_worker(args=["--beat"], modules="ittasks,itbeat")
    wait_for(lambda: len(runs(tmp_path)) >= 5, 15, what="five beats")
    first = send_times([worker], "it.every_half_second")[:5]
    assert all(0.3 < gap < 1.0 for gap in gaps(first))
    assert_each_beat_sent_once_and_run_once([worker], "it.every_half_second", tmp_path,
                                            "beat")


def test_two_beat_workers_send_each_beat_once_and_one_takes_over_from_the_other(
        broker, start_worker, tmp_path):
    workers = [start_worker(name=name, args=["--beat"], modules="ittasks,itbeat")
               for name in ("beat1", "beat2")]
    wait_for(lambda: len(runs(tmp_path)) >= 6, 15, what="six beats")
    assert_each_beat_sent_once_and_run_once(workers, "it.every_half_second", tmp_path,
                                            "beat")
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
    assert_each_beat_sent_once_and_run_once([worker], "it.every_half_second", tmp_path,
                                            "beat", broker_killed=True)


# -- BEAT_SCHEDULE and crontab (Celery's beat_schedule), from a settings module ---------------

BEAT_CONF = {"MINITASK_CONFIG_MODULE": "itbeatconf"}
BEAT_MODULES = "ittasks,ithabits"


def stamps(tmp_path, tag):
    return [float(line) for line in ittasks.read_trace(tmp_path, tag)]


def kv(broker, key):
    from minitask import protocol
    with broker.connect() as conn:
        return conn.call(protocol.KV_GET, {"key": key})["value"]


def test_two_beat_workers_send_each_beat_schedule_entry_once_across_a_broker_restart(
        broker, start_worker, tmp_path):
    workers = [start_worker(name=name, args=["--beat"], modules=BEAT_MODULES, env=BEAT_CONF)
               for name in ("sched1", "sched2")]
    wait_for(lambda: len(stamps(tmp_path, "entry")) >= 6, 15, what="six entry beats")
    assert_each_beat_sent_once_and_run_once(workers, "beat_schedule.every-half-second",
                                            tmp_path, "entry")
    assert sum("this worker now sends" in open(w.logfile).read() for w in workers) == 1
    broker.kill()
    broker.start()
    for worker in workers:
        worker.wait_ready(20)
    count = len(stamps(tmp_path, "entry"))
    wait_for(lambda: len(stamps(tmp_path, "entry")) >= count + 4, 20,
             what="entry beats after the restart")
    assert_each_beat_sent_once_and_run_once(workers, "beat_schedule.every-half-second",
                                            tmp_path, "entry", broker_killed=True)


def test_a_crontab_entry_first_met_is_written_down_and_kept_across_a_broker_restart(
        broker, start_worker, tmp_path):
    key = "beat.last_run.beat_schedule.new-year"
    before = time.time()
    worker = start_worker(args=["--beat"], modules=BEAT_MODULES, env=BEAT_CONF)
    met = wait_for(lambda: kv(broker, key), 15, what="the crontab's first meeting")
    assert before <= met <= time.time()
    broker.kill()
    broker.start()
    worker.wait_ready(20)
    count = len(stamps(tmp_path, "entry"))
    wait_for(lambda: len(stamps(tmp_path, "entry")) >= count + 3, 20,
             what="the beat to run again after the restart")
    assert kv(broker, key) == met               # not met anew: a due time would not be lost
    assert stamps(tmp_path, "new-year") == []


def test_a_crontab_time_missed_while_no_beat_ran_is_sent_once_on_return(
        broker, start_worker, tmp_path):
    from minitask import protocol
    key = "beat.last_run.beat_schedule.every-minute"
    with broker.connect() as conn:              # last sent two minutes ago, then no beat ran
        conn.call(protocol.KV_SET, {"key": key, "value": time.time() - 120})
    start_worker(args=["--beat"], modules=BEAT_MODULES, env=BEAT_CONF)
    first = wait_for(lambda: stamps(tmp_path, "minutely"), 15, what="the missed minute")[0]
    count = len(stamps(tmp_path, "entry"))
    wait_for(lambda: len(stamps(tmp_path, "entry")) >= count + 6, 20, what="three more seconds")
    boundaries = int(time.time() // 60) - int(first // 60)     # new minutes that began since
    assert len(stamps(tmp_path, "minutely")) <= 1 + boundaries
    assert first - 60 < kv(broker, key) <= time.time()


@pytest.mark.broker_args("--max-message-bytes", "65536")
def test_a_beat_entry_too_big_to_send_holds_up_no_other(broker, start_worker, tmp_path):
    """The first entry's message is over the broker's frame limit: its refusal was taken
    for a lost connection, and the beat kept trying the whole round again with backoff,
    so the entries after it were never sent. Now that run of it is skipped, saying so, and
    the others go out."""
    worker = start_worker(args=["--beat"], modules=BEAT_MODULES,
                          env={"MINITASK_CONFIG_MODULE": "itbeatbigconf"})
    wait_for(lambda: len(ittasks.read_trace(tmp_path, "small")) >= 2, 15,
             what="two sends of the small entry")
    assert "was not sent: ATOMIC of" in worker.output()
