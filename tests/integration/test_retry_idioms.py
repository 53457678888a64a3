"""Celery's documented retry idioms (the "Tasks" guide's Retrying section, autoretry_for with
retry_backoff / retry_jitter, max_retries, Task.retry()'s countdown, eta, exc, max_retries and
queue options, retries in chains and with link / link_error, catching Retry, the on_retry hook,
the task_retry and publish signals, acks_late and a worker killed between retries), pasted as
a Celery user writes them (retryidioms.py), run by real workers on both transports: the
built-in broker and Redis (every test is parametrized by `broker`; Redis skips, saying why,
where redis-server is not installed).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import retryidioms as ri  # noqa: E402
from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import new_tag, wait_for, workers_of  # noqa: E402
from ittasks import _trace, read_trace  # noqa: E402

from minitask import chain, chord  # noqa: E402
from minitask.exceptions import MaxRetriesExceededError  # noqa: E402

MODULES = "ittasks,retryidioms"


# -- fixtures: one broker per test, on each transport ----------------------------------------

@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def ints(tmp_path, tag):
    return [int(line) for line in read_trace(tmp_path, tag)]


def signals(tmp_path, *words):
    return [line.split() for line in read_trace(tmp_path, "signals")
            if tuple(line.split()[:len(words)]) == words]


# -- retry(countdown=0), many times, two pool processes --------------------------------------

def test_retry_with_countdown_0_under_concurrency_2_never_ends_in_retry(broker, start_worker,
                                                                        tmp_path):
    start_worker(args=("-c", "2"))
    finals = {}
    # One after the other: each retried twice at once, then SUCCESS or FAILURE.
    for i in range(12):
        tag = new_tag("seq%d" % i)
        result = ri.countdown_zero.delay(tag, 2, fail_at_end=bool(i % 2))
        if i % 2:
            with pytest.raises(ValueError, match="failed after 2 retries"):
                result.get(timeout=30)
            assert result.state == "FAILURE"
        else:
            assert result.get(timeout=30) == 2
            assert result.state == "SUCCESS"
        finals[result.id] = (result, tag, 2, "FAILURE" if i % 2 else "SUCCESS")
    # A burst: both pool processes busy with retries sent at once.
    burst = []
    for i in range(30):
        tag = new_tag("burst%d" % i)
        failures = i % 4
        result = ri.countdown_zero.delay(tag, failures, fail_at_end=bool(i % 3 == 0))
        burst.append(result)
        finals[result.id] = (result, tag, failures, "FAILURE" if i % 3 == 0 else "SUCCESS")
    for result in burst:
        result.get(timeout=60, propagate=False)
    settle(broker)
    stuck = {}
    for task_id, (result, tag, failures, expected) in finals.items():
        state = ri.countdown_zero.AsyncResult(task_id).state
        if state != expected:
            stuck[task_id] = state
        assert ints(tmp_path, tag) == list(range(failures + 1)), (task_id, tag)
    assert stuck == {}


# -- autoretry_for, retry_backoff, retry_jitter ----------------------------------------------

def test_autoretry_for_with_retry_backoff_waits_1_then_2_seconds(broker, start_worker,
                                                                 tmp_path):
    start_worker()
    tag = new_tag("backoff")
    assert ri.backoff.delay(tag, 2).get(timeout=60) == "connected after 2 retries"
    runs = [line.split() for line in read_trace(tmp_path, tag)]
    assert [int(r) for r, _ in runs] == [0, 1, 2]
    times = [float(t) for _, t in runs]
    assert 1.0 - 0.05 <= times[1] - times[0] <= 1.0 + 5
    assert 2.0 - 0.05 <= times[2] - times[1] <= 2.0 + 5
    # Past retry_kwargs' max_retries: the original exception, not MaxRetriesExceededError.
    tag = new_tag("backoff-fails")
    result = ri.backoff.delay(tag, 10)
    with pytest.raises(ConnectionError, match="refused, run 2"):
        result.get(timeout=60)
    assert result.state == "FAILURE"
    assert [int(line.split()[0]) for line in read_trace(tmp_path, tag)] == [0, 1, 2]


def test_retry_jitter_stays_within_the_capped_backoff_and_dont_autoretry_for(
        broker, start_worker, tmp_path):
    start_worker()
    tag = new_tag("jitter")
    result = ri.jitter.delay(tag)
    with pytest.raises(ConnectionResetError, match="reset, run 3"):
        result.get(timeout=60)
    runs = [line.split() for line in read_trace(tmp_path, tag)]
    assert [int(r) for r, _ in runs] == [0, 1, 2, 3]
    times = [float(t) for _, t in runs]
    for gap, bound in zip([b - a for a, b in zip(times, times[1:])], [1, 2, 2]):
        assert -0.05 <= gap <= bound + 3        # full jitter: 0..min(2**n, backoff_max) s
    excluded, included = new_tag("dont"), new_tag("do")
    with pytest.raises(KeyError):
        ri.not_retried.delay(excluded, "KeyError").get(timeout=30)
    with pytest.raises(IndexError):
        ri.not_retried.delay(included, "IndexError").get(timeout=30)
    assert ints(tmp_path, excluded) == [0]
    assert ints(tmp_path, included) == [0, 1, 2, 3]


# -- max_retries -----------------------------------------------------------------------------

def test_max_retries_exceeded_raises_the_original_exc_or_max_retries_exceeded_error(
        broker, start_worker, tmp_path):
    start_worker()
    tag = new_tag("give-up")
    result = ri.give_up.delay(tag)
    with pytest.raises(OSError, match="disk on fire, run 2"):
        result.get(timeout=30)
    assert result.state == "FAILURE" and ints(tmp_path, tag) == [0, 1, 2]
    tag = new_tag("give-up-noexc")
    result = ri.give_up.delay(tag, with_exc=False)
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=30)
    assert result.state == "FAILURE" and ints(tmp_path, tag) == [0, 1, 2]
    tag = new_tag("override")
    with pytest.raises(ArithmeticError, match="run 1"):
        ri.override_max.delay(tag).get(timeout=30)
    assert ints(tmp_path, tag) == [0, 1]
    tag = new_tag("forever")
    assert ri.forever.delay(tag, 6).get(timeout=30) == 6       # max_retries=None
    assert ints(tmp_path, tag) == list(range(7))


# -- retry's options: eta, args/kwargs, queue ------------------------------------------------

def test_retry_with_eta_and_with_new_args(broker, start_worker, tmp_path):
    start_worker()
    tag = new_tag("eta")
    ran_at = ri.eta.delay(tag, 1.0).get(timeout=30)
    first = float(read_trace(tmp_path, tag)[0].split()[1])
    assert ran_at >= first + 1.0 - 0.05                         # never early
    tag = new_tag("args")
    assert ri.new_args.delay(tag, 0).get(timeout=30) == {"attempt": 2, "history": [0, 1],
                                                         "retries": 2}
    assert read_trace(tmp_path, tag) == ["0 0", "1 1", "2 2"]


def test_retry_to_another_queue_runs_on_the_worker_that_consumes_it(broker, start_worker,
                                                                    tmp_path):
    start_worker("w-main")
    start_worker("w-other", args=("-c", "1", "-Q", "other"))
    tag = new_tag("queue")
    result = ri.to_queue.delay(tag, "other")
    assert result.get(timeout=30) == "w-other"
    runs = [line.split() for line in read_trace(tmp_path, tag)]
    assert [(r[0], r[1]) for r in runs] == [("0", "w-main"), ("1", "w-other")]
    assert runs[1][2] == "other"


def test_retry_to_a_queue_declared_by_the_retry_waits_there_for_a_worker(broker, start_worker,
                                                                        tmp_path):
    start_worker("w-main")
    queue = new_tag("fresh")
    tag = new_tag("fresh-queue")
    result = ri.to_queue.delay(tag, queue)
    wait_for(lambda: result.state == "RETRY", 30, what="the RETRY")
    wait_for(lambda: (broker.queue(queue) or {}).get("ready") == 1, 30,
             what="the retry in queue %s" % queue)
    start_worker("w-fresh", args=("-c", "1", "-Q", queue))
    assert result.get(timeout=30) == "w-fresh"
    assert [line.split()[:2] for line in read_trace(tmp_path, tag)] == [
        ["0", "w-main"], ["1", "w-fresh"]]


# -- retries in workflows --------------------------------------------------------------------

def test_retry_within_a_chain_continues_and_runs_the_next_link_once(broker, start_worker,
                                                                    tmp_path):
    start_worker()
    first, middle, last = new_tag("first"), new_tag("middle"), new_tag("last")
    result = chain(ri.flaky_first.s(first, 2), ri.flaky_link.s(middle, 2),
                   ri.record.s(last)).apply_async()
    assert result.get(timeout=30) == 11
    settle(broker)
    assert ints(tmp_path, first) == [0, 1, 2]
    assert read_trace(tmp_path, middle) == ["0 10", "1 10", "2 10"]     # args kept
    assert read_trace(tmp_path, last) == ["11"]
    # The retried link gives up: the rest of the chain fails with it, and never runs.
    gives_up, after = new_tag("gives-up"), new_tag("after")
    result = chain(ri.give_up.si(gives_up), ri.record.s(after)).apply_async()
    with pytest.raises(OSError, match="run 2"):
        result.get(timeout=30)
    settle(broker)
    assert ints(tmp_path, gives_up) == [0, 1, 2] and read_trace(tmp_path, after) == []


def test_retry_with_link_and_link_error(broker, start_worker, tmp_path):
    start_worker()
    ok, ok_errback = new_tag("ok"), new_tag("ok-errback")
    succeeded = ri.flaky_first.apply_async((ok, 2), link_error=ri.errback.s(ok_errback))
    assert succeeded.get(timeout=30) == 10
    linked, callback = new_tag("linked"), new_tag("callback")
    assert ri.flaky_first.apply_async((linked, 1), link=ri.record.s(callback)).get(
        timeout=30) == 10
    bad, bad_errback = new_tag("bad"), new_tag("bad-errback")
    failed = ri.give_up.apply_async((bad,), link_error=ri.errback.s(bad_errback))
    with pytest.raises(OSError):
        failed.get(timeout=30)
    wait_for(lambda: read_trace(tmp_path, bad_errback), 30, what="the errback")
    settle(broker)
    assert read_trace(tmp_path, bad_errback) == [failed.id]     # on the final FAILURE, once
    assert ints(tmp_path, bad) == [0, 1, 2]
    assert read_trace(tmp_path, ok_errback) == []               # never for a RETRY
    assert read_trace(tmp_path, callback) == ["10"]             # the callback: once


def test_a_chord_header_task_that_retries_is_waited_for(broker, start_worker, tmp_path):
    start_worker()
    tags = [new_tag("header%d" % i) for i in range(3)]
    body = new_tag("body")
    result = chord([ri.flaky_first.s(tag, i) for i, tag in enumerate(tags)],
                   ri.record.s(body)).apply_async()
    assert result.get(timeout=30) == [10, 10, 10]
    settle(broker)
    assert read_trace(tmp_path, body) == ["[10, 10, 10]"]
    assert [ints(tmp_path, tag) for tag in tags] == [[0], [0, 1], [0, 1, 2]]
    # A body that retries keeps its header's values.
    body = new_tag("retried-body")
    result = chord([ri.flaky_first.s(new_tag("h"), 1) for _ in range(2)],
                   ri.flaky_sum.s(body, 2)).apply_async()
    assert result.get(timeout=30) == 20
    assert read_trace(tmp_path, body) == ["0 20", "1 20", "2 20"]


# -- catching Retry --------------------------------------------------------------------------

def test_a_task_that_catches_retry_and_returns(broker, start_worker, tmp_path):
    """The retry was sent all the same (as in Celery): it runs, and succeeds too."""
    start_worker()
    tag = new_tag("swallow")
    result = ri.swallow.delay(tag)
    # The retry (countdown 0) may have succeeded too by the time the client reads.
    assert result.get(timeout=30) in ("swallowed", "retried anyway")
    wait_for(lambda: len(ints(tmp_path, tag)) == 2, 30, what="the retry it sent to run")
    settle(broker)
    assert ints(tmp_path, tag) == [0, 1]
    # Both runs succeeded; the second's SUCCESS may replace the first's (as in Celery).
    again = ri.swallow.AsyncResult(result.id)
    assert again.state == "SUCCESS" and again.result in ("swallowed", "retried anyway")
    tag, link = new_tag("swallow-chain"), new_tag("swallow-link")
    result = chain(ri.swallow.si(tag), ri.record.s(link)).apply_async()
    assert result.get(timeout=30) in ("swallowed", "retried anyway")
    wait_for(lambda: len(ints(tmp_path, tag)) == 2, 30, what="the retry it sent to run")
    settle(broker)
    # Each successful run sends the next link on, under the same task id: as two copies of
    # one task, the link runs once or twice (at-least-once), never not at all.
    ran = read_trace(tmp_path, link)
    assert 1 <= len(ran) <= 2 and set(ran) <= {"'retried anyway'", "'swallowed'"}


# -- the on_retry hook, the task_retry and publish signals -----------------------------------

def test_on_retry_task_retry_and_publish_signals_in_a_worker(broker, start_worker, tmp_path):
    start_worker()
    tag = new_tag("signalled")
    result = ri.signalled.delay(tag)
    assert result.get(timeout=30) == "signalled done"
    settle(broker)
    task_id = result.id
    assert signals(tmp_path, "task_retry") == [
        ["task_retry", "worker", "ri.signalled", task_id, "0", "RetryTaskError", "KeyError",
         "0"]]
    befores = [line[1:5] for line in signals(tmp_path, "before_task_publish")
               if line[3] == task_id]
    assert befores == [["client", "ri.signalled", task_id, "0"],
                       ["worker", "ri.signalled", task_id, "1"]]
    afters = [line[1:5] for line in signals(tmp_path, "after_task_publish")
              if line[3] == task_id]
    assert afters == [["client", "ri.signalled", task_id, "0"],
                      ["worker", "ri.signalled", task_id, "1"]]
    # A chain link a worker sends, and the retry of the chain's first task.
    first, last = new_tag("sig-first"), new_tag("sig-last")
    result = chain(ri.flaky_first.s(first, 1), ri.record.s(last)).apply_async()
    assert result.get(timeout=30) == 10
    settle(broker)
    link_id = result.id
    assert [line[1:6] for line in signals(tmp_path, "before_task_publish")
            if line[3] == link_id] == [["worker", "ri.record", link_id, "0", "10"]]
    assert [line[1:5] for line in signals(tmp_path, "after_task_publish")
            if line[3] == link_id] == [["worker", "ri.record", link_id, "0"]]
    first_id = result.parent.id if getattr(result, "parent", None) is not None else None
    retried = [line[1:5] for line in signals(tmp_path, "before_task_publish")
               if line[2] == "ri.flaky_first" and line[1] == "worker"]
    assert len(retried) == 1 and retried[0][3] == "1"
    if first_id is not None:
        assert retried[0][2] == first_id
    # The on_retry hook, in the pool process, once per retry.
    tag = new_tag("hooked")
    hooked = ri.HookedTask.delay(tag, 2)
    assert hooked.get(timeout=30) == "hooked done"
    assert read_trace(tmp_path, tag + "-hook") == [
        "on_retry KeyError %s %s KeyError" % (hooked.id, tag)] * 2


# -- acks_late, and a worker killed between retries ------------------------------------------

def _runs(tmp_path, tag):
    return [line for line in read_trace(tmp_path, tag) if line.startswith("run ")]


@pytest.mark.parametrize("when", ["countdown", "on_retry", "retried_run"])
def test_an_acks_late_task_whose_worker_is_killed_between_retries_completes(
        broker, start_worker, tmp_path, when):
    """SIGKILL of the worker (pool included):

    - countdown: while the retry waits its 3 s in the broker;
    - on_retry: after retry() was called (countdown 0), before the worker heard of it;
    - retried_run: while the retry itself runs.

    At least once: every run that was cut short runs again; nothing more. The retry is
    published with the RETRY, so a run killed before its RETRY is stored left no retry: the
    first run runs again, and its retry runs once."""
    doomed = start_worker("doomed")
    tag = new_tag("late-" + when)
    if when == "countdown":
        result = ri.late.apply_async((tag, "none", 3.0))
        wait_for(lambda: result.state == "RETRY", 30, what="the RETRY")
    elif when == "on_retry":
        result = ri.LateHooked.apply_async((tag, 0.0))
        wait_for(lambda: "wait hook" in read_trace(tmp_path, tag), 30, what="on_retry")
    else:
        result = ri.late.apply_async((tag, 1, 0.0))
        wait_for(lambda: "wait 1" in read_trace(tmp_path, tag), 30, what="the retried run")
    doomed.kill()
    _trace(tag, "killed")
    start_worker("survivor")
    expected = "late hooked done" if when == "on_retry" else "late done"
    assert result.get(timeout=90) == expected
    settle(broker, 60)
    assert (result.state, result.result) == ("SUCCESS", expected)
    runs = _runs(tmp_path, tag)
    if when == "countdown":
        assert runs == ["run 0", "run 1"]               # nothing was in flight: no repeat
    elif when == "on_retry":
        assert runs == ["run 0", "run 0", "run 1"]      # the killed run again, one retry
    else:
        assert runs == ["run 0", "run 1", "run 1"]      # the killed retry again


# -- a retry that cannot be delivered, or not in time ----------------------------------------

@pytest.mark.parametrize("how", ["call", "retry"])
def test_a_retry_due_after_its_expiry_is_revoked_and_calls_its_errback(broker, start_worker,
                                                                       tmp_path, how):
    """README: a retry keeps the call's `expires` (or takes its own): due after it, it is
    dropped as expired (REVOKED), as in Celery; REVOKED unlocks the errbacks."""
    start_worker()
    tag, errback = new_tag("expiring"), new_tag("expired-errback")
    if how == "call":
        result = ri.expiring.apply_async((tag, 2.0), expires=1.0,
                                         link_error=ri.errback.s(errback))
    else:
        result = ri.expiring.apply_async((tag, 2.0, 1.0), link_error=ri.errback.s(errback))
    result.get(timeout=30, propagate=False)
    assert result.state == "REVOKED"
    wait_for(lambda: read_trace(tmp_path, errback), 30, what="the errback")
    settle(broker)
    assert read_trace(tmp_path, errback) == [result.id]
    assert ints(tmp_path, tag) == [0]


@pytest.mark.parametrize("how", ["mandatory", "exchange"])
def test_a_retry_that_cannot_be_routed_fails_the_task_instead_of_losing_it(
        broker, start_worker, tmp_path, how):
    """retry(**options) passes apply_async's options on (Celery's API reference): a retry
    with mandatory=True that no queue takes, or to an exchange that does not exist, cannot
    be sent. Sent from the task (as before held retries) that raised in retry(): the task
    ended FAILURE. It must end in some final state, not stay PENDING / RETRY for ever."""
    start_worker()
    tag = new_tag("unroutable-" + how)
    result = ri.unroutable.delay(tag, how)
    outcome = result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE", (result.state, outcome)
    assert ints(tmp_path, tag) == [0]
    import ittasks                              # and the worker goes on
    assert ittasks.add.delay(2, 2).get(timeout=30) == 4
