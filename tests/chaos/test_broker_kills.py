"""The broker killed with SIGKILL at random moments while real work flows.

Producers publish ``acks_late`` tasks with confirms and workers consume them; the broker is
killed (``kill -9``) at a random moment, restarted on the same port and data folder, and
killed again. Afterwards: every confirmed task ran at least once, nothing ran that was never
sent, and the queue empties. Duplicates are allowed (at-least-once) and reported.

It runs twice: with the default 64 MiB journal segments, and with 16 KiB ones (see
`smallsegments`), where the broker rotates and compacts its journal all the time, so kills
land in the middle of compaction passes too.
"""

import os
import time

import pytest

import chaostasks
from chaoskit import BUDGET, FIGURES, Producers, check_at_least_once, work_for


@pytest.mark.parametrize("segment_bytes", [None, 16 * 1024], ids=["segments-64MiB",
                                                                  "segments-16KiB"])
def test_broker_kill_9_loses_no_confirmed_acks_late_task(cluster, rng, segment_bytes):
    cluster = cluster(workers=2, segment_bytes=segment_bytes)
    restarts = []
    with Producers(lambda i: chaostasks.late.delay(i, work_for(i))) as producers:
        for _ in range(BUDGET.broker_kills):
            time.sleep(rng.uniform(0.3, 2.0))       # the workload: a random moment to kill
            cluster.kill_broker()
            time.sleep(rng.uniform(0.0, 0.5))       # down for a while
            restarts.append(cluster.restart_broker())
        time.sleep(rng.uniform(0.5, 1.0))           # and a little work after the last one
    outcome = check_at_least_once(cluster, "late", producers, "broker kills")
    if segment_bytes:                   # the point of the case: it rotated, and compacted
        journal = os.path.join(cluster.broker.data_dir, "journal")
        newest = max(int(name.split(".")[0]) for name in os.listdir(journal)
                     if name.endswith(".seg"))
        assert newest > 3, "the broker never rotated its journal (segment %d)" % newest
    FIGURES.add("broker kill -9 x%d, %s" % (BUDGET.broker_kills, "small segments, "
                                           "compacting" if segment_bytes else "64 MiB segments"),
                rng.seed_value,
                kills=BUDGET.broker_kills, broker_kills=BUDGET.broker_kills,
                confirmed=len(producers.confirmed), unconfirmed=len(producers.attempted)
                - len(producers.confirmed), runs=outcome.runs, lost=len(outcome.lost),
                duplicates=outcome.duplicates,
                restart_max_s="%.2f" % max(restarts),
                delay_max_s="%.2f" % producers.slowest)

