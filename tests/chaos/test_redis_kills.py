"""Chaos on Redis: redis-server, workers and a primary killed with SIGKILL under load.

Producers in this process call ``delay()`` on ``acks_late`` tasks at a steady pace while real
``python -m minitask worker`` processes run them, everything on ``BROKER_URL=redis://...``
(`rediscluster`). What is killed, and what must hold afterwards:

- redis-server (AOF, ``appendfsync everysec``), restarted on its port and folder: the
  workers and producers reconnect by themselves and every confirmed task (``delay()``
  returned) runs at least once. A kill of the process loses nothing Redis answered: it
  writes the AOF before it replies, and the page cache outlives the process.
- workers (the main process alone, or its whole process group): every confirmed task runs
  at least once, once a live worker finds the dead one's heartbeat gone.
- the primary of a primary, a replica and a Sentinel (``redis+sentinel://``), killed with
  kill -9 ("kill") or switched by ``SENTINEL FAILOVER`` while it still takes writes
  ("switch": a split brain of about a second, until it is demoted as Sentinel demotes it);
  Sentinel promotes the replica. With ``publish_confirm=wait:1`` nothing confirmed is lost;
  without it the loss is measured and reported, not asserted (a failover loses what the
  replica had not received: after a kill -9 on one machine that is next to nothing, since
  the dead primary's socket buffers still reach the replica; in a switch it is what was
  written to the old primary meanwhile and not yet run), and the system must carry on.
  A quarter of these tasks have a countdown, so that some are still queued at a failover.
- a failover while every worker is idle, blocked in its read (``SENTINEL FAILOVER``): the
  workers hear it, find the new primary, and get tasks again.
- the replica, under load with ``publish_confirm=wait:1``: delay() is refused while it is
  away, the workers carry on and store their results; and a publish meeting a demoted
  primary with it goes to the new primary.

Duplicates are allowed (at-least-once) and reported in the suite's figures. Skips, saying
why, where redis-server is not installed. The short form takes about a minute;
``LONG_MINITASK_TESTS=1`` kills more.
"""

import collections
import time

import pytest

import chaostasks
from chaoskit import (
    BUDGET, DRAIN_SECONDS, FIGURES, LONG, Outcome, Producers, check_at_least_once,
    check_final_states, trace_indexes, wait_for, work_for,
)
from rediscluster import REDIS_SERVER, SKIP_REASON

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

REDIS_KILLS = BUDGET.broker_kills               # 5, or 20 in the long form
WORKER_KILLS = BUDGET.worker_kills              # 8, or 40
FAILOVERS = 4 if LONG else 1                    # per test: each takes 3-5 s
IDLE_FAILOVERS = 6 if LONG else 2
COUNTDOWN = 1.0                                 # seconds some failover tasks wait
MIN_CONFIRMED = 100                             # less load than this says nothing


def _enough_load(producers, label):
    assert len(producers.confirmed) >= MIN_CONFIRMED, (
        "%s: only %d tasks confirmed: too little load to say anything (failures %s)"
        % (label, len(producers.confirmed), dict(producers.failures)))


# -- redis-server killed ----------------------------------------------------------------------

def test_kill_9_of_redis_server_loses_no_confirmed_acks_late_task(redis_cluster, rng):
    cluster = redis_cluster(workers=2)
    first_workers = [worker.proc.pid for worker in cluster.workers]
    restarts = []
    with Producers(lambda i: chaostasks.late.delay(i, work_for(i))) as producers:
        for _ in range(REDIS_KILLS):
            time.sleep(rng.uniform(0.3, 1.5))       # the workload: a random moment to kill
            cluster.kill_broker()
            time.sleep(rng.uniform(0.0, 0.5))       # down for a while
            restarts.append(cluster.restart_broker())
        time.sleep(rng.uniform(0.5, 1.0))           # and a little work after the last one
        producers.wait_confirmed(MIN_CONFIRMED, timeout=30.0)
    _enough_load(producers, "redis-server kills")
    outcome = check_at_least_once(cluster, "late", producers, "redis-server kills")
    # Nobody restarted the workers: they reconnected by themselves.
    assert [worker.proc.pid for worker in cluster.workers] == first_workers
    dead = [worker for worker in cluster.workers if not worker.proc.alive()]
    assert not dead, "workers exited when Redis went away: %s" % "; ".join(
        "%s (exit %s): %s" % (worker.name, worker.proc.process.returncode,
                              worker.proc.output().strip()[-1500:]) for worker in dead)
    FIGURES.add("redis-server kill -9 x%d (AOF everysec)" % REDIS_KILLS, rng.seed_value,
                kills=REDIS_KILLS, broker_kills=REDIS_KILLS,
                confirmed=len(producers.confirmed),
                unconfirmed=len(producers.attempted) - len(producers.confirmed),
                runs=outcome.runs, lost=len(outcome.lost), duplicates=outcome.duplicates,
                restart_max_s="%.2f" % max(restarts), delay_max_s="%.2f" % producers.slowest)


# -- workers killed ---------------------------------------------------------------------------

def test_kill_9_of_workers_on_redis_loses_no_confirmed_acks_late_task(redis_cluster, rng):
    cluster = redis_cluster(workers=2)
    kills = collections.Counter()
    with Producers(lambda i: chaostasks.late.delay(i, work_for(i))) as producers:
        for _ in range(WORKER_KILLS):
            time.sleep(rng.uniform(0.3, 1.5))       # the workload: a random moment to kill
            kills[cluster.kill_worker(rng, rng.choice(("parent", "group")))] += 1
        time.sleep(rng.uniform(0.5, 1.0))
        producers.wait_confirmed(MIN_CONFIRMED, timeout=30.0)
    _enough_load(producers, "worker kills on Redis")
    outcome = check_at_least_once(cluster, "late", producers, "worker kills on Redis")
    lingering = cluster.lingering_orphans()
    assert not lingering, ("pool processes outlived their killed worker by 10 s: pids %s"
                           % lingering)
    FIGURES.add("redis: worker kill -9 x%d (main process or group)" % WORKER_KILLS,
                rng.seed_value, kills=WORKER_KILLS, worker_kills=WORKER_KILLS,
                how=dict(kills), confirmed=len(producers.confirmed), runs=outcome.runs,
                lost=len(outcome.lost), duplicates=outcome.duplicates)


# -- the primary lost, the replica promoted by Sentinel ---------------------------------------

def _drain_measuring(cluster, producers, name="late", timeout=DRAIN_SECONDS):
    """Wait until every confirmed task ran, or Redis holds nothing left to run (the queue
    settled twice in a row with tasks still missing: those were lost); the runs then."""
    confirmed = set(producers.confirmed)
    deadline = time.monotonic() + timeout
    settled_before = False
    while time.monotonic() < deadline:
        if confirmed <= set(trace_indexes(cluster.tmp_path, name)):
            break
        settled = cluster.queue_settled()
        if settled and settled_before:
            break
        settled_before = settled
        time.sleep(0.25)
    return trace_indexes(cluster.tmp_path, name)


@pytest.mark.parametrize("confirm", ["wait:1", "none"], ids=["publish_confirm-wait1",
                                                             "no-replica-wait"])
@pytest.mark.parametrize("how", ["kill", "switch"])
def test_a_primary_lost_and_its_replica_promoted_by_sentinel(redis_cluster, rng, confirm, how):
    """"kill": kill -9 of the primary. "switch": SENTINEL FAILOVER while the primary still
    takes writes, then the old primary demoted as Sentinel demotes it (a split brain of a
    second: what clients wrote to the old primary meanwhile never reaches the new one)."""
    options = dict(publish_confirm="wait:1", publish_confirm_timeout=1) \
        if confirm != "none" else {}
    cluster = redis_cluster(workers=2, replica=True, **options)
    confirmed_at = {}

    def send(index):
        # A quarter wait in Redis a while (a countdown, as retries and ETAs do): a task run
        # at once is rarely still queued when a failover drops what the replica lacked.
        countdown = COUNTDOWN if index % 4 == 3 else None
        result = chaostasks.late.apply_async(args=[index, work_for(index)],
                                             countdown=countdown)
        confirmed_at[index] = time.monotonic()
        return result
    with Producers(send) as producers:
        for _ in range(FAILOVERS):
            time.sleep(rng.uniform(0.3, 1.0))       # the workload: a random moment to fail
            cluster.fail_over(graceful=how == "switch")
        recovered_at = time.monotonic()             # the old primary is a replica again
        time.sleep(rng.uniform(0.7, 1.0))           # the system must carry on from here
        # A failover blocks publishes for about 4 s: a seed that fails early can leave too
        # few confirmed to say anything (96 of 100 in one CI run): wait for them.
        producers.wait_confirmed(MIN_CONFIRMED, timeout=30.0)
    label = "failover (%s), publish_confirm=%s" % (how, confirm)
    cluster.check_no_failover_of_sentinels_own()
    _enough_load(producers, label)
    after = sorted(index for index in producers.confirmed
                   if confirmed_at[index] > recovered_at)
    assert after, ("%s: no delay() returned after the failover (failures %s)"
                   % (label, dict(producers.failures)))
    if confirm == "none":
        runs = _drain_measuring(cluster, producers)
        outcome = Outcome(runs, producers.attempted, producers.confirmed)
        print("%s: %d attempted, %d confirmed, %s (loss measured, not asserted)"
              % (label, len(producers.attempted), len(producers.confirmed),
                 outcome.summary()))
        assert not outcome.strays, "tasks ran that were never sent: %s" % outcome.strays[:20]
        missing_after = sorted(set(after) - outcome.ran)
        assert not missing_after, ("%s: tasks confirmed after the failover ended never ran: "
                                   "%s" % (label, missing_after[:20]))
    else:
        outcome = check_at_least_once(cluster, "late", producers, label)
    assert all(worker.proc.alive() for worker in cluster.workers), "a worker exited"
    FIGURES.add("redis: primary %s x%d, Sentinel promotes, publish_confirm=%s"
                % ("kill -9" if how == "kill" else "switched (split brain)", FAILOVERS,
                   confirm), rng.seed_value, kills=FAILOVERS if how == "kill" else 0,
                confirmed=len(producers.confirmed),
                unconfirmed=len(producers.attempted) - len(producers.confirmed),
                refused=dict(producers.failures), runs=outcome.runs, lost=len(outcome.lost),
                duplicates=outcome.duplicates,
                failover_max_s="%.2f" % max(cluster.failovers),
                delay_max_s="%.2f" % producers.slowest)


# -- a failover while the workers block on reads -----------------------------------------------

def _wait(cluster, predicate, what, missing=list, timeout=30.0):
    """wait_for, failing with the cluster's state (and what is `missing`) in the message."""
    try:
        wait_for(predicate, timeout, 0.05, what)
    except AssertionError as exc:
        raise AssertionError("%s\n%s" % (exc, cluster.describe(missing()))) from None


def test_workers_blocked_on_reads_get_tasks_again_after_a_failover(redis_cluster, rng):
    workers = 2
    cluster = redis_cluster(workers=workers, replica=True)
    names = sorted(worker.name for worker in cluster.workers)
    sent = []

    def send_batch(count=20):
        batch = list(range(len(sent), len(sent) + count))
        for index in batch:
            chaostasks.late.delay(index, 0.02)
        sent.extend(batch)
        _wait(cluster, lambda: set(sent) <= set(trace_indexes(cluster.tmp_path, "late")),
              "every task sent after the failover to run (%d sent)" % len(sent),
              lambda: sorted(set(sent) - set(trace_indexes(cluster.tmp_path, "late"))))

    send_batch()                                    # the set-up works
    took = []
    for number in range(IDLE_FAILOVERS):
        _wait(cluster, lambda: cluster.blocked_readers() >= workers,
              "every worker idle, blocked in its read on the primary")
        time.sleep(rng.uniform(0.0, 1.0))           # a random moment within the block
        # The first failover (and every other): the old primary demoted by a bare REPLICAOF,
        # so the blocked reads are answered UNBLOCKED; the second: as Sentinel demotes it,
        # dropping its clients.
        took.append(cluster.fail_over(graceful=True, sentinel_demotes=number % 2 == 1))
        send_batch()                                # through Sentinel, to the new primary
        # Every worker (not just one) is back: blocked on the new primary, and listed there.
        _wait(cluster, lambda: cluster.blocked_readers() >= workers,
              "every worker blocked in its read on the new primary")
        listed = sorted(worker.get("hostname") for worker in cluster.broker.status()["workers"])
        assert listed == names, "workers on the new primary: %s, expected %s" % (listed, names)
    cluster.check_no_failover_of_sentinels_own()
    runs = trace_indexes(cluster.tmp_path, "late")
    outcome = Outcome(runs, sent, sent)
    assert not outcome.lost and not outcome.strays
    # Whether a worker heard UNBLOCKED on its blocked read or READONLY on its other
    # connection first is a race; either way it must be back, as checked above.
    heard = sum("UNBLOCKED" in worker.output() for worker in cluster.workers)
    assert all(worker.proc.alive() for worker in cluster.workers), "a worker exited"
    assert [worker.name for worker in cluster.workers] == names     # none was replaced
    print("idle failovers: %d, each named in %s s; tasks %d, runs %d, duplicates %d; "
          "workers that heard UNBLOCKED: %d" % (IDLE_FAILOVERS, ", ".join(
              "%.2f" % t for t in took), len(sent), outcome.runs, outcome.duplicates, heard))
    FIGURES.add("redis: SENTINEL FAILOVER x%d under idle blocked workers" % IDLE_FAILOVERS,
                rng.seed_value, kills=0, confirmed=len(sent), runs=outcome.runs,
                lost=len(outcome.lost), duplicates=outcome.duplicates, heard_unblocked=heard,
                failover_max_s="%.2f" % max(took))


# -- the replica lost while publishes wait for it ----------------------------------------------

REPLICA_AWAY = 2.0          # seconds the replica is gone: several publish_confirm_timeouts


def test_a_replica_lost_under_load_with_publish_confirm_leaves_the_workers_running(
        redis_cluster, rng):
    """While the replica is gone, delay() is refused (PublishRefusedError, as documented),
    but the workers must carry on: run what Redis holds and store its results."""
    cluster = redis_cluster(workers=2, replica=True, publish_confirm="wait:1",
                            publish_confirm_timeout=0.5)
    label = "replica killed, publish_confirm=wait:1"
    with Producers(lambda i: chaostasks.early.delay(i, work_for(i))) as producers:
        time.sleep(rng.uniform(0.3, 1.0))           # the workload: a random moment to kill
        cluster.kill_replica()
        deadline = time.monotonic() + REPLICA_AWAY
        while time.monotonic() < deadline:          # every worker lives on meanwhile
            dead = [worker for worker in cluster.workers if not worker.proc.alive()]
            assert not dead, "%s: workers exited while the replica was away: %s" % (
                label, "; ".join("%s (exit %s): %s" % (
                    worker.name, worker.proc.process.returncode,
                    worker.proc.output().strip()[-300:]) for worker in dead))
            time.sleep(0.1)
        cluster.restart_replica()
        time.sleep(rng.uniform(0.5, 1.0))
        producers.wait_confirmed(MIN_CONFIRMED, timeout=30.0)
    assert producers.failures["PublishRefusedError"], \
        "%s: no delay() was refused while the replica was away" % label
    _enough_load(producers, label)
    states = check_final_states(producers, label)
    assert all(worker.proc.alive() for worker in cluster.workers), "a worker exited"
    FIGURES.add("redis: replica kill -9, publish_confirm=wait:1, results stored",
                rng.seed_value, kills=1, confirmed=len(producers.confirmed),
                refused=dict(producers.failures), success=states["SUCCESS"])


def test_with_publish_confirm_a_delay_meeting_the_demoted_primary_goes_to_the_new_one(
        redis_cluster):
    """A demotion that leaves the clients connected (REPLICAOF by an operator, or Sentinel
    dropping them a moment later than the demotion): without publish_confirm the publish
    is sent again to the new primary; with it, it must be too."""
    cluster = redis_cluster(workers=0, replica=True, publish_confirm="wait:1")
    chaostasks.late.delay(0)                # this thread's connection: to the primary
    cluster.fail_over(graceful=True, sentinel_demotes=False)
    chaostasks.late.delay(1)                # meets the old primary, a replica now
    assert cluster.broker.queue()["ready"] == 2
