"""Workers and their pool processes killed with SIGKILL at random moments under load.

A kill takes a worker's main process alone (its pool processes are orphaned and must go),
one pool process (the worker replaces it), or the whole process group; a dead worker is
replaced by a new one. With ``acks_late`` tasks nothing confirmed is lost (duplicates are
allowed and reported); with the default (acked when the task starts) every task ends
SUCCESS, or FAILURE with WorkerLostError, and none stays STARTED or RECEIVED.
"""

import collections
import time

import chaostasks
from chaoskit import (
    BUDGET, FIGURES, Producers, Outcome, check_at_least_once, check_final_states,
    explain, trace_indexes, work_for,
)


def _kill_workers(cluster, rng, kills):
    done = collections.Counter()
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.5))           # the workload: a random moment to kill
        done[cluster.kill_worker(rng)] += 1
    return done


def _no_lingering_orphans(cluster):
    lingering = cluster.lingering_orphans()
    assert not lingering, ("pool processes outlived their killed worker by 10 s: pids %s"
                           % lingering)


def test_worker_and_pool_kills_lose_no_confirmed_acks_late_task(cluster, rng):
    cluster = cluster(workers=2)
    with Producers(lambda i: chaostasks.late.delay(i, work_for(i))) as producers:
        kills = _kill_workers(cluster, rng, BUDGET.worker_kills)
        time.sleep(rng.uniform(0.5, 1.0))
    outcome = check_at_least_once(cluster, "late", producers, "worker kills")
    _no_lingering_orphans(cluster)
    FIGURES.add("worker/pool kills, acks_late", rng.seed_value,
                kills=BUDGET.worker_kills, worker_kills=BUDGET.worker_kills,
                how=dict(kills), confirmed=len(producers.confirmed), runs=outcome.runs,
                lost=len(outcome.lost), duplicates=outcome.duplicates)


def test_worker_and_pool_kills_leave_every_default_task_final(cluster, rng):
    cluster = cluster(broker_args=["--worker-lost-grace", "1"], workers=2)
    with Producers(lambda i: chaostasks.early.delay(i, work_for(i))) as producers:
        kills = _kill_workers(cluster, rng, BUDGET.final_state_kills)
        time.sleep(rng.uniform(0.5, 1.0))
    states = check_final_states(producers, "worker kills, default acks", cluster=cluster)
    _no_lingering_orphans(cluster)
    runs = trace_indexes(cluster.tmp_path, "early")
    outcome = Outcome(runs, producers.attempted, producers.confirmed)
    assert not outcome.strays, "tasks ran that were never sent: %s" % outcome.strays[:20]
    if outcome.duplicated:
        print("default acks ran twice: %s" % outcome.duplicated)
        explain(cluster, "early", outcome.duplicated)
    FIGURES.add("worker/pool kills, default acks", rng.seed_value,
                kills=BUDGET.final_state_kills, worker_kills=BUDGET.final_state_kills,
                how=dict(kills), confirmed=len(producers.confirmed), runs=outcome.runs,
                success=states["SUCCESS"], worker_lost=states["WorkerLostError"],
                duplicates=outcome.duplicates)
