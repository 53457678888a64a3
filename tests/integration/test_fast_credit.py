"""A worker of short tasks reserves more than its prefetch, and stops as soon as a task is
not short (`minitask.worker.credit`): seen in `inspect stats` as `fast_credit`, on a real
worker. test_redis_fast_credit.py runs these again on Redis."""

import os

import ittasks
from cluster import wait_for
from minitask import group
from ittasks import read_trace


def stats(broker, name):
    with broker.connect() as conn:
        return conn.broadcast("stats", destination=[name], timeout=5, limit=1)[name]


def credit(broker, name):
    """``(extra credit asked for now, whether short tasks have earned it)``."""
    answer = stats(broker, name)
    return answer["fast_credit"], answer["fast_credit_earned"]


def test_short_tasks_earn_a_worker_more_credit_and_one_slow_task_takes_it_away(
        broker, start_worker):
    start_worker(name="quick", args=("-c", "1", "--prefetch-multiplier", "2"))
    assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert credit(broker, "quick") == (0, False)     # one short task: not a prefetch's worth
    assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert credit(broker, "quick")[1]                # earned
    wait_for(lambda: credit(broker, "quick") == (0, True), 5,
             what="an idle worker to give the extra credit back")
    assert ittasks.sleep.delay(0.05).get(timeout=15) == 0.05
    assert credit(broker, "quick") == (0, False)


def test_a_multiplier_of_one_reserves_exactly_that(broker, start_worker):
    start_worker(name="fair", args=("-c", "1", "--prefetch-multiplier", "1"))
    for _ in range(5):
        assert ittasks.sleep.delay(0).get(timeout=15) == 0
    assert credit(broker, "fair") == (0, False)


def test_a_short_task_that_runs_long_takes_it_away_while_it_runs(broker, start_worker):
    start_worker(name="stall", args=("-c", "1", "--prefetch-multiplier", "2"))
    for _ in range(2):
        assert ittasks.sleep.delay(0).get(timeout=15) == 0
    wait_for(lambda: credit(broker, "stall") == (0, True), 5, what="the worker idle")
    long_run = ittasks.sleep.delay(3, tag="stall")      # a name known to be short
    wait_for(lambda: "start" in read_trace(os.environ["ITTASKS_DIR"], "stall"), 15,
             what="the long run to start")
    # Busy with a task of a short name: only its running past 20 ms keeps the credit back.
    assert wait_for(lambda: credit(broker, "stall") == (0, True), 2.5,
                    what="the credit to stay back while the task runs")
    assert long_run.state != "SUCCESS"                  # still running meanwhile
    assert long_run.get(timeout=15) == 3


def test_a_flow_of_short_tasks_is_given_the_extra_credit(broker, start_worker):
    start_worker(name="flow", args=("-c", "1", "--prefetch-multiplier", "2"))
    for _ in range(2):
        assert ittasks.add.delay(1, 1).get(timeout=15) == 2
    blocker = ittasks.sleep.delay(0.3)                  # a backlog forms behind it
    results = group(ittasks.add.s(i, i) for i in range(3000)).apply_async()
    seen = set()
    while not results[-1].ready():
        seen.add(stats(broker, "flow")["fast_credit"])
    assert blocker.get(timeout=15) == 0.3
    assert 6 in seen, seen                              # prefetch 2, asked for up to 4x
    assert [r.get(timeout=30) for r in results[-3:]] == [5994, 5996, 5998]
