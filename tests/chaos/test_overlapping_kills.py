"""The broker and the workers killed on two independent, overlapping schedules.

Two producers run side by side: ``acks_late`` tasks (nothing confirmed may be lost) and
default tasks (each must end SUCCESS, or FAILURE with WorkerLostError). The broker is killed
and, after a random outage, restarted; meanwhile, on a schedule of their own, workers, their
main processes alone, or single pool processes are killed, while the broker is up or down.
"""

import collections
import time

import chaostasks
from chaoskit import (
    BUDGET, FIGURES, Producers, check_at_least_once, check_final_states, trace_indexes,
    work_for,
)

EARLY_FIRST_INDEX = 10 ** 7     # the default tasks' indexes, apart from the acks_late ones


def test_broker_and_worker_kills_overlapping(cluster, rng):
    cluster = cluster(broker_args=["--worker-lost-grace", "1"], workers=2)
    kills = collections.Counter()
    late = Producers(lambda i: chaostasks.late.delay(i, work_for(i)), threads=1)
    early = Producers(lambda i: chaostasks.early.delay(i, work_for(i)), threads=1,
                      first_index=EARLY_FIRST_INDEX)
    with late, early:
        began = time.monotonic()
        broker_at = began + rng.uniform(0.5, 3.0)       # next broker kill
        restart_at = None                               # next broker restart (while down)
        worker_at = began + rng.uniform(0.3, 1.5)       # next worker kill
        while time.monotonic() - began < BUDGET.overlap_seconds:
            now = time.monotonic()
            if restart_at is not None and now >= restart_at:
                cluster.restart_broker()
                restart_at = None
                broker_at = time.monotonic() + rng.uniform(0.5, 3.0)
            elif restart_at is None and now >= broker_at:
                cluster.kill_broker()
                kills["broker"] += 1
                restart_at = time.monotonic() + rng.uniform(0.0, 1.5)
            elif now >= worker_at:
                kills[cluster.kill_worker(rng)] += 1
                worker_at = time.monotonic() + rng.uniform(0.3, 1.5)
            else:       # the workload: nothing to kill until the next moment drawn
                time.sleep(max(0.0, min(restart_at or broker_at, worker_at) - now))
        if restart_at is not None:
            cluster.restart_broker()
        time.sleep(rng.uniform(0.5, 1.0))
    outcome = check_at_least_once(cluster, "late", late, "overlapping kills, acks_late")
    states = check_final_states(early, "overlapping kills, default acks", cluster=cluster)
    worker_kills = sum(kills.values()) - kills["broker"]
    FIGURES.add("broker + worker kills overlapping", rng.seed_value,
                kills=sum(kills.values()), broker_kills=kills["broker"],
                worker_kills=worker_kills, how=dict(kills),
                confirmed=len(late.confirmed) + len(early.confirmed),
                unconfirmed=len(late.attempted) + len(early.attempted)
                - len(late.confirmed) - len(early.confirmed),
                runs=outcome.runs + len(trace_indexes(cluster.tmp_path, "early")),
                lost=len(outcome.lost), late_duplicates=outcome.duplicates,
                default_success=states["SUCCESS"], default_worker_lost=states["WorkerLostError"])
