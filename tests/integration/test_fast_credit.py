"""A worker of short tasks reserves more than its prefetch, and stops as soon as a task is
not short (`minitask.worker.credit`): seen in `inspect stats` as `fast_credit`, on a real
worker. test_redis_fast_credit.py runs these again on Redis."""

import os

import ittasks
from cluster import wait_for
from ittasks import read_trace
from minitask.worker.credit import FACTOR


def fast_credit(broker, name):
    with broker.connect() as conn:
        return conn.broadcast("stats", destination=[name], timeout=5, limit=1)[name][
            "fast_credit"]


def test_short_tasks_earn_a_worker_more_credit_and_one_slow_task_takes_it_away(
        broker, start_worker):
    start_worker(name="quick", args=("-c", "1", "--prefetch-multiplier", "2"))
    assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert fast_credit(broker, "quick") == 0         # one short task is not a prefetch's worth
    assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert fast_credit(broker, "quick") == 2 * (FACTOR - 1)
    assert ittasks.sleep.delay(0.05).get(timeout=15) == 0.05
    assert fast_credit(broker, "quick") == 0


def test_a_multiplier_of_one_reserves_exactly_that(broker, start_worker):
    start_worker(name="fair", args=("-c", "1", "--prefetch-multiplier", "1"))
    for _ in range(5):
        assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert fast_credit(broker, "fair") == 0


def test_a_short_task_that_runs_long_takes_it_away_while_it_runs(broker, start_worker):
    start_worker(name="stall", args=("-c", "1", "--prefetch-multiplier", "2"))
    for _ in range(2):
        assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert fast_credit(broker, "stall") == 2 * (FACTOR - 1)
    long_run = ittasks.sleep.delay(3, tag="stall")      # a name known to be short
    wait_for(lambda: "start" in read_trace(os.environ["ITTASKS_DIR"], "stall"), 15,
             what="the long run to start")
    wait_for(lambda: fast_credit(broker, "stall") == 0, 2.5,
             what="the credit to go while the task runs")
    assert long_run.state != "SUCCESS"                  # still running: taken away meanwhile
    assert long_run.get(timeout=15) == 3
