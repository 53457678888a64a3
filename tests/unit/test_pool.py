"""minitask.worker.pool: the main process's bookkeeping of its children, without processes.

Each child here is a `_Child` over real pipes but with no process behind it: the test plays
the child, writing its reports into the pipe and its "started" marks into shared memory, as
`_ChildRunner` does. What is checked is what the worker relies on: who gets a job, what a
report means, which jobs a dead child had started (lost) and which it had not (given again).
"""

import multiprocessing
import os
import threading
import time
import types

import pytest

from minitask.worker import pool as pool_module
from minitask.worker.pool import MAX_FAST_JOBS, ChildConfig, Job, Pool

_SLOT, _GLOBALS = pool_module._SLOT, pool_module._GLOBALS


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid


@pytest.fixture
def pool():
    made = Pool(3, ChildConfig(), start_method="fork")
    pipes = []
    for slot in range(3):
        child_in, parent_in = multiprocessing.Pipe(duplex=False)
        parent_out, child_out = multiprocessing.Pipe(duplex=False)
        os.set_blocking(parent_out.fileno(), False)
        child = pool_module._Child(slot, FakeProcess(1000 + slot), parent_in, parent_out,
                                   multiprocessing.Lock())
        child.ready = True
        made.children[slot] = child
        pipes.append((child_in, child_out))
    made.test_pipes = pipes
    yield made
    for child in made.children.values():
        child.inbox.close()
        child.outbox.close()
    for child_in, child_out in pipes:
        child_in.close()
        child_out.close()


def job(seq, name="t.slow"):
    return Job(seq, tag=seq, task_id="id-%d" % seq, task_name=name, data=b"")


def report(pool, slot, *items):
    """Play child `slot`: write its "done" reports into its pipe."""
    os.write(pool.test_pipes[slot][1].fileno(), pool_module._frame(("done", list(items))))


def started(pool, slot, seq, at=100.0, running=True):
    """Play child `slot`: mark `seq` started in shared memory."""
    base = _GLOBALS + slot * _SLOT
    pool.shm[base + pool_module._STARTED_SEQ] = float(seq)
    pool.shm[base + pool_module._STARTED_AT] = at
    pool.shm[base + pool_module._RUNNING] = 1.0 if running else 0.0


def success(seq, runtime=0.5):
    return (seq, "SUCCESS", "application/json", b"{}", True, runtime, "ok")


def test_jobs_go_to_idle_ready_children_first_and_wait_when_none_is_free(pool):
    pool.children[2].ready = False                  # still setting itself up
    first, second, third = job(1), job(2), job(3)
    assert pool.assign(first) and pool.assign(second)
    assert {first.child.slot, second.child.slot} == {0, 1}
    assert not pool.assign(third)                   # slow or unknown: waits for a free child
    assert third.child is None


def test_fast_jobs_queue_behind_fast_jobs_only_and_up_to_a_limit(pool):
    for slot in (1, 2):
        pool.children[slot].ready = False
    pool.runtimes["t.fast"] = 0.0001
    jobs = [job(n, "t.fast") for n in range(1, MAX_FAST_JOBS + 2)]
    assert all(pool.assign(j) for j in jobs[:MAX_FAST_JOBS])
    assert not pool.assign(jobs[MAX_FAST_JOBS])
    slow = job(99)
    pool.children[0].jobs.clear()
    pool.children[0].by_seq.clear()
    assert pool.assign(slow)
    assert not pool.assign(job(100, "t.fast"))      # nothing queues behind a slow job


def test_a_child_queues_no_more_fast_jobs_than_the_pool_allows(pool):
    """The worker allows twice its multiplier: what is beyond waits in the worker, for the
    first child to be free, rather than behind a job that may stall."""
    for slot in (1, 2):
        pool.children[slot].ready = False
    pool.max_queued = 8
    pool.runtimes["t.fast"] = 0.0001
    jobs = [job(n, "t.fast") for n in range(1, 10)]
    assert all(pool.assign(j) for j in jobs[:8])
    assert not pool.assign(jobs[8])


def queue(pool, slot, *jobs):
    """Jobs assigned to child `slot` and not reported yet, as `assign` leaves them."""
    child = pool.children[slot]
    for j in jobs:
        j.child = child
        child.jobs.append(j)
        child.by_seq[j.seq] = j
    child.assigned += len(jobs)
    return child


def test_jobs_queued_behind_one_that_runs_long_are_taken_back_in_order(pool):
    """A fast task type that once runs long (an outside check of Celery's -O fair advice):
    what was queued behind it goes to whichever child is free first, and the child will
    skip it (its _TAKEN_BACK mark)."""
    now = time.time()
    running, second, third = job(1, "t.fast"), job(2, "t.fast"), job(3, "t.fast")
    child = queue(pool, 0, running, second, third)
    started(pool, 0, 1, at=now - pool_module.SLOW_RUN / 2)
    assert pool.take_back(now) == []                # not long yet
    started(pool, 0, 1, at=now - 1.0)
    assert pool.take_back(now) == [second, third]
    assert list(child.jobs) == [running] and list(child.by_seq) == [1]
    assert child.assigned == 1 and second.child is None
    assert pool.shm[_GLOBALS + pool_module._TAKEN_BACK] == 3.0
    assert pool.take_back(now) == []                # nothing left behind it


def test_a_job_taken_back_is_numbered_again_when_handed_out(pool):
    """Each child must get its jobs in rising order, and the child skips what is at or
    below its mark: a job taken back and handed out again (to any child, the same one
    included) gets a number above both."""
    for slot in (1, 2):
        pool.children[slot].ready = False
    pool.runtimes["t.fast"] = 0.0001
    jobs = [job(n, "t.fast") for n in (7, 8, 9)]
    assert all(pool.assign(j) for j in jobs)
    assert [j.seq for j in jobs] == [1, 2, 3]           # numbered as handed out
    now = time.time()
    started(pool, 0, 1, at=now - 1.0)
    taken = pool.take_back(now)
    assert taken == jobs[1:]
    started(pool, 0, 1, at=now - 1.0, running=False)     # the long one ended
    pool.children[0].jobs.clear()
    pool.children[0].by_seq.clear()
    assert all(pool.assign(j) for j in taken)
    mark = pool.shm[_GLOBALS + pool_module._TAKEN_BACK]
    assert [j.seq for j in taken] == [4, 5] and min(j.seq for j in taken) > mark == 3.0


def test_jobs_of_an_earlier_epoch_are_not_taken_back(pool):
    """After a lost connection (a new epoch) the child skips what was queued, and the
    broker gives those messages out again: taken back and run here, they would run twice."""
    now = time.time()
    child = queue(pool, 0, job(1, "t.fast"), job(2, "t.fast"))
    pool.new_epoch()
    started(pool, 0, 1, at=now - 1.0)
    assert pool.take_back(now) == [] and len(child.jobs) == 2


def test_nothing_is_taken_back_while_the_child_starts_a_job(pool):
    now = time.time()
    child = queue(pool, 0, job(1, "t.fast"), job(2, "t.fast"))
    started(pool, 0, 1, at=now - 1.0)
    child.start_lock.acquire()                      # the child, starting its next job
    try:
        assert pool.take_back(now) == []
    finally:
        child.start_lock.release()
    assert len(pool.take_back(now)) == 1


def test_nothing_queues_behind_a_job_that_runs_long(pool):
    for slot in (1, 2):
        pool.children[slot].ready = False
    pool.runtimes["t.fast"] = 0.0001
    queue(pool, 0, job(1, "t.fast"))
    started(pool, 0, 1, at=time.time() - 1.0)
    assert not pool.assign(job(2, "t.fast"))        # waits in the worker for a free child


def test_a_pool_process_skips_a_job_taken_back_and_sends_results_while_a_job_runs():
    """The child's side: a job at or below the _TAKEN_BACK mark is not run nor reported;
    and the results of jobs done go back while the next job still runs (they waited for
    it: an outside check saw get() wait three seconds for a job that ran after them)."""
    child_in, parent_in = multiprocessing.Pipe(duplex=False)
    parent_out, child_out = multiprocessing.Pipe(duplex=False)
    shm = multiprocessing.RawArray("d", _GLOBALS + _SLOT)
    config = ChildConfig()
    config.accept = ("json",)
    runner = pool_module._ChildRunner(0, child_in, child_out, shm, config,
                                      multiprocessing.Lock())
    ran, release = [], threading.Event()
    results_seen = threading.Event()

    def execute(data, accept, logfile, loglevel, on_failure=None, redelivered=False):
        ran.append(data)
        if data == b"slow":
            results_seen.wait(5)        # until the worker side has the earlier results
        return types.SimpleNamespace(state="SUCCESS", content_type="application/json",
                                     payload=b"{}", store=True, runtime=0.0, summary="ok",
                                     publish=(), chained=())

    runner.execute, runner.on_failure = execute, None
    # 2 and 3 were queued behind a job (1) that ran long, and taken back; 4 and 5 came later.
    runner.pending.extend([(2, 0, b"gone", False), (3, 0, b"gone", False),
                           (4, 0, b"quick", False), (5, 0, b"slow", False)])
    shm[_GLOBALS + pool_module._TAKEN_BACK] = 3.0
    got = []

    def worker_side():
        buffer = bytearray()
        while not got:
            buffer += os.read(parent_out.fileno(), 1 << 16)
            for kind, items in pool_module._frames(buffer):
                got.extend(item[0] for item in items)
        results_seen.set()
    reader = threading.Thread(target=worker_side)
    reader.start()
    parent_in.close()                   # no more jobs: the runner ends after these
    try:
        runner.run()
    finally:
        results_seen.set()
        reader.join(5)
        for end in (child_in, parent_out, child_out):
            end.close()
    assert ran == [b"quick", b"slow"]
    assert got == [4]                   # before the slow job ended (it waited for this)


def test_reports_come_back_in_order_and_teach_the_pool_which_tasks_are_fast(pool):
    jobs = [job(1, "t.quick"), job(2, "t.quick")]
    for j in jobs:
        pool.children[0].jobs.append(j)
        pool.children[0].by_seq[j.seq] = j
    report(pool, 0, success(1, 0.0005), (2, "skipped"))
    done = pool.read(pool.children[0])
    assert [(j.seq, r[0]) for j, r in done] == [(1, "SUCCESS"), (2, "skipped")]
    assert done[0][1][:5] == ("SUCCESS", "application/json", b"{}", True, 0.0005)
    assert not pool.children[0].jobs and not pool.children[0].by_seq
    assert pool.is_fast("t.quick")


def test_a_report_split_across_reads_is_kept_until_whole(pool):
    j = job(1)
    pool.children[0].jobs.append(j)
    pool.children[0].by_seq[1] = j
    data = pool_module._frame(("done", [success(1)]))
    os.write(pool.test_pipes[0][1].fileno(), data[:7])
    assert pool.read(pool.children[0]) == []
    os.write(pool.test_pipes[0][1].fileno(), data[7:])
    assert [done.seq for done, _report in pool.read(pool.children[0])] == [1]


def test_each_start_is_noticed_once_from_shared_memory(pool):
    jobs = [job(n, "t.fast") for n in (1, 2, 3)]
    for j in jobs:
        pool.children[0].jobs.append(j)
        pool.children[0].by_seq[j.seq] = j
    started(pool, 0, 2, at=123.0)
    assert [j.seq for j in pool.notice_starts()] == [1, 2]
    assert jobs[1].started_at == 123.0
    assert pool.notice_starts() == []
    started(pool, 0, 3)
    assert [j.seq for j in pool.notice_starts()] == [3]


def test_a_dead_childs_started_jobs_are_lost_and_the_rest_go_to_another(pool):
    jobs = [job(n, "t.fast") for n in (4, 5, 6)]
    child = pool.children[1]
    for j in jobs:
        j.child = child
        child.jobs.append(j)
        child.by_seq[j.seq] = j
    started(pool, 1, 5)                 # 4 finished unreported, 5 was running, 6 never began
    lost, unstarted = pool.reap(child)
    assert [j.seq for j in lost] == [4, 5]
    assert [j.seq for j in unstarted] == [6] and unstarted[0].child is None
    assert not child.jobs and not child.by_seq


def test_a_new_epoch_marks_every_queued_job_to_be_skipped(pool):
    first = job(1)
    pool.assign(first)
    pool.new_epoch()
    second = job(2)
    pool.assign(second)
    assert first.epoch < pool.shm[pool_module._EPOCH] <= second.epoch


def test_a_child_retires_after_max_tasks_and_takes_nothing_more(pool):
    pool.max_tasks = 2
    for slot in (1, 2):
        pool.children[slot].ready = False
    pool.runtimes["t.fast"] = 0.0001
    assert pool.assign(job(1, "t.fast")) and pool.assign(job(2, "t.fast"))
    assert pool.children[0].retiring
    assert not pool.assign(job(3, "t.fast"))


def test_a_revoke_reaches_every_living_child_and_bumps_the_generation(pool):
    before = pool.shm[pool_module._REVOKE_GEN]
    pool.children[2].closed = True
    pool.broadcast_revoke(["a", "b"])
    assert pool.shm[pool_module._REVOKE_GEN] == before + 1
    frame = pool_module._frame(("revoke", ["a", "b"]))
    assert [bytes(child.wbuf) == frame for child in pool.children.values()] \
        == [True, True, False]


def test_a_pool_process_remembers_only_the_newest_revoked_ids(monkeypatch):
    """As the worker does: each revoke used to stay in every pool process for its whole
    life, a slow leak in a worker that lives long (an outside soak check saw its pool
    processes grow while revokes went on)."""
    monkeypatch.setattr(pool_module, "MAX_REVOKED", 5)
    child_in, parent_in = multiprocessing.Pipe(duplex=False)
    parent_out, child_out = multiprocessing.Pipe(duplex=False)
    shm = multiprocessing.RawArray("d", _GLOBALS + _SLOT)
    runner = pool_module._ChildRunner(0, child_in, child_out, shm, ChildConfig(),
                                      multiprocessing.Lock())
    try:
        for start in range(0, 20, 4):
            os.write(parent_in.fileno(), pool_module._frame(
                ("revoke", ["t%d" % n for n in range(start, start + 4)])))
            assert runner.receive(block=False)
        assert list(runner.revoked) == ["t15", "t16", "t17", "t18", "t19"]
    finally:
        for end in (child_in, parent_in, parent_out, child_out):
            end.close()


def test_a_closed_childs_events_read_nothing_from_a_reused_descriptor(pool):
    """A dead child's pipes are closed and a replacement may get the same descriptor
    numbers in the same turn: a stale event for the old child must not read the new one's
    reports (its "ready" frame lost, the new child never got a job)."""
    old = pool.children[0]
    new_in, new_out = pool.test_pipes[0]
    pool_module.os.write(new_out.fileno(), pool_module._frame(("ready", [])))
    old.closed = True                               # its numbers may be anyone's now
    assert pool.read(old) == [] and not old.rbuf
    assert pool_module.os.read(old.out_fd, 1 << 16)  # left for the pipe's new owner


def test_a_fork_server_still_ending_is_waited_for_not_a_crash(monkeypatch):
    """A fork server killed a moment ago (its children died with it, and the worker replaces
    them at once) may not have ended yet: multiprocessing takes it for alive, and the start
    is refused (ConnectionRefusedError). That went up through the worker's loop as a
    traceback and the worker stopped (seen in CI). Now the start is tried again until a
    new server runs."""
    ensured = []
    monkeypatch.setattr(pool_module, "_ensure_forkserver", lambda: ensured.append(1))

    class Starting:
        tries = 0

        def start(self):
            self.tries += 1
            if self.tries < 3:
                raise ConnectionRefusedError(111, "Connection refused")

    process = Starting()
    pool_module._start_under_forkserver(process)
    assert process.tries == 3 and len(ensured) == 3

    class Refused:
        def start(self):
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        pool_module._start_under_forkserver(Refused(), patience=0.05)
