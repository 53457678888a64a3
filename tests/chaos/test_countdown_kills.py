"""Countdown and retrying tasks across broker kills: they run once due, never before, never lost.

A producer sends tasks with an ETA a fraction of a second to several seconds ahead
(``acks_late`` and default) and tasks that fail and retry with a countdown a few times,
while the broker is killed with SIGKILL and restarted on the same port and data. Each run
records when it ran: a countdown task never before its ETA, a retry never before the run
that sent it plus its countdown; every confirmed task runs, and every retry chain reaches
its successful last run.
"""

import collections
import time

import chaostasks
from chaoskit import BUDGET, DRAIN_SECONDS, FIGURES, Producers, check_final_states

RATE = 12.0                 # tasks/s: enough to span every kill with tasks in each state


def _delta(index):
    """The countdown of task `index`: 0.2 to ~8 s, a function of the index."""
    return 0.2 + (index * 0.37) % (8.0 if index % 4 == 3 else 4.0)


def _failures(index):
    return 1 + index % 3


def _countdown(index):
    return 0.3 + (index % 5) * 0.2


_confirmed_at = {}          # index -> when delay() returned (a publish may wait out an outage)


def _send(index):
    kind = index % 4
    if kind == 2:
        return chaostasks.retrying.delay(index, _failures(index), _countdown(index))
    eta = round(time.time() + _delta(index), 6)
    task = chaostasks.due if kind == 1 else chaostasks.due_late
    result = task.apply_async(args=[index, eta], eta=eta)
    _confirmed_at[index] = time.time()
    return result


def _due_runs(tmp_path):
    return [(int(f[0]), float(f[1]), float(f[2])) for f in
            chaostasks.read_trace(tmp_path, "due")]


def _retry_runs(tmp_path):
    return [(int(f[0]), int(f[1]), float(f[2])) for f in
            chaostasks.read_trace(tmp_path, "retry")]


def _missing(tmp_path, confirmed):
    due = set(index for index, _ran, _eta in _due_runs(tmp_path))
    finished = set(index for index, retries, _ran in _retry_runs(tmp_path)
                   if retries == _failures(index))
    return sorted(index for index in confirmed
                  if index not in (finished if index % 4 == 2 else due))


def test_countdown_and_retrying_tasks_survive_broker_kills_and_never_run_early(cluster, rng,
                                                                                tmp_path):
    cluster = cluster(workers=2)
    with Producers(_send, threads=1, rate=RATE) as producers:
        for _ in range(BUDGET.countdown_kills):
            time.sleep(rng.uniform(1.0, 3.0))       # the workload: a random moment to kill
            cluster.kill_broker()
            time.sleep(rng.uniform(0.0, 1.0))
            cluster.restart_broker()
        time.sleep(1.0)
    confirmed = producers.confirmed
    deadline = time.monotonic() + DRAIN_SECONDS
    while _missing(tmp_path, confirmed) and time.monotonic() < deadline:
        time.sleep(0.2)
    missing = _missing(tmp_path, confirmed)
    assert not missing, "confirmed countdown or retrying tasks never ran (to the end): %s" % (
        missing[:20],)

    early = [(index, ran, eta) for index, ran, eta in _due_runs(tmp_path) if ran < eta]
    assert not early, "countdown tasks ran before their ETA (index, ran, eta): %s" % early[:10]
    runs = _retry_runs(tmp_path)
    first = {}
    for index, retries, ran in runs:
        first[index, retries] = min(ran, first.get((index, retries), ran))
    too_soon = [(index, retries, ran) for index, retries, ran in runs if retries
                and ran < first[index, retries - 1] + _countdown(index)]
    assert not too_soon, "retries ran before their countdown (index, retry, ran): %s" % (
        too_soon[:10],)
    stray = set(index for index, _r, _t in runs) | set(i for i, _r, _e in _due_runs(tmp_path))
    assert stray <= producers.attempted, "tasks ran that were never sent"

    final = {index: result for index, result in confirmed.items() if index % 4 in (1, 2)}
    results = Producers(None)
    results.confirmed = final
    states = check_final_states(results, "countdown and retries", cluster=cluster)
    assert states["SUCCESS"] == len(final), "every default countdown and retry chain ends " \
        "SUCCESS: %s" % dict(states)

    # How late each ran after it was both due and confirmed (a publish held up by an outage
    # cannot run before it reaches the broker). Not asserted: reported, with the slowest.
    lateness = sorted((ran - max(eta, _confirmed_at.get(index, eta)), index, ran, eta)
                      for index, ran, eta in _due_runs(tmp_path))
    if lateness[-1][0] > 3.0:
        print("slowest countdown tasks (late s, index, ran, eta): %s" % lateness[-5:])
        for event in cluster.events:
            print("  event %s" % event)
    counts = collections.Counter(index for index, _ran, _eta in _due_runs(tmp_path))
    FIGURES.add("countdown + retry, broker kills", rng.seed_value,
                kills=BUDGET.countdown_kills, broker_kills=BUDGET.countdown_kills,
                confirmed=len(confirmed), runs=len(lateness) + len(runs), lost=len(missing),
                duplicates=sum(count - 1 for count in counts.values()),
                late_p50_s="%.3f" % lateness[len(lateness) // 2][0],
                late_max_s="%.3f" % lateness[-1][0], delay_max_s="%.2f" % producers.slowest)
