"""The pool: child processes that run tasks, and what happens when one of them dies.

Data flow::

    Worker ──assign(job)──> Child.wbuf ──pipe──> child: run jobs in order ──pipe──> results
                 ^                                    |  writes "started seq, at" into
                 |                                    v  shared memory before each job
          Pool.notice_starts(), Pool.time_limits(now): read from shared memory

Jobs go down a pipe as pickled batches and results come back the same way, so a child never
waits on the network and the main process pays one write per batch, not one per task. A
child keeps up to `max_queued` (twice the prefetch multiplier, at most `MAX_FAST_JOBS`)
queued only while every job queued there is known to be fast; a slow or unknown task waits
in the main process until some child is idle, so one long task never holds up short ones
behind it. A fast job that runs long anyway (`SLOW_RUN`) gets nothing more queued behind it,
and what was is taken back for another child (`Pool.take_back`); the pool numbers jobs as it
hands them out, so each child's come in rising order. Results go back in batches, and a
child's flusher thread sends those that wait while its next job runs within `RESULT_DELAY`.

Shared memory per child slot: the seq of the last job it started, when, whether it is still
running, the job a soft time limit was meant for, and the signal the main process sent to stop
it (a child ignores a SIGTERM it was not sent that way: one sent to every process of the
worker is the main process's to act on). The main process reads it to tell, when
a child dies, which job was running (WorkerLostError or a requeue), which finished but were
never reported, and which never started (handed to another child). One shared `epoch`
invalidates every job queued before it (lost connection, shutdown): children skip those.

Works with the ``fork``, ``spawn`` and ``forkserver`` start methods; under spawn and
forkserver a child sets up as the worker did (settings, Django, the loader's `on_worker_init`,
``-I`` modules). Every child then runs the loader's `on_worker_process_init` and reports
``ready`` down its pipe before it takes a job; a child that cannot get that far reports one
line saying why (``failed``) and exits with `START_FAILED_EXIT`, without a traceback. The
worker gives jobs only to children that reported ready.
"""

import collections
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import select
import signal
import struct
import sys
import sysconfig
import threading
import time
import traceback

try:
    import ctypes                       # here, before the fork, not again in every pool process
except ImportError:                     # a Python built without it: see `die_with_parent`
    ctypes = None

from ..exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from ..protocol import message_id_of
from . import djangofixup
from .execution import execute_delivery, failed
from ..loaders import current_loader
from ..log import send_logging_signals, setup_logging
from ..result import set_task_join_will_block
from .mail import failure_mailer
from .. import config as settings_module, signals

__all__ = ["Pool", "Job", "ChildConfig", "MAX_FAST_JOBS", "MAX_REVOKED", "START_FAILED_EXIT",
           "remember_revoked"]

logger = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
# The shared memory: _GLOBALS doubles, then one slot of _SLOT doubles per child.
_EPOCH, _REVOKE_GEN = 0, 1              # globals: jobs queued before the epoch are skipped;
_GLOBALS = 2                            # the revoke list changed (children read their inbox)
# In a child's slot: the seq of the last job it started, when, whether it still runs it, the
# seq of the job a soft time limit or a terminating revoke was meant for (a signal must not
# hit the next job; a SIGTERM meant for no job of the child is ignored), and the last seq the
# worker took back from its queue (`Pool.take_back`).
_STARTED_SEQ, _STARTED_AT, _RUNNING, _SOFT_SEQ, _TERM_SEQ, _TAKEN_BACK = 0, 1, 2, 3, 4, 5
_SLOT = 6
# What the worker sends a pool process for the SIGTERM of a revoke(terminate=True): a SIGTERM
# itself is the main process's to act on (`_ChildRunner.on_sigterm`, in Python, so only once a
# call into C returns), so where there are real-time signals it sends one of those, nobody
# else's, which the child leaves to its default action: it ends the process at once.
_TERMINATE = signal.SIGRTMAX - 1 if hasattr(signal, "SIGRTMAX") else None

# prctl's option: the signal a Linux process gets when its parent ends (linux/prctl.h).
_PR_SET_PDEATHSIG = 1

# Revoked task ids the worker and each pool process remember, the newest (the broker keeps
# its own list, for the time results live): a worker that lives long is not a slow leak.
MAX_REVOKED = 50000

# A child may have this many jobs queued while all of them are fast; more only adds latency.
MAX_FAST_JOBS = 32
# A task type whose average run is under this is "fast" (it may queue behind others).
FAST_SECONDS = 0.002
# A job of a fast task still running after this long is not taken for fast any more
# (`runs_only_fast`), and the jobs queued behind it are taken back (`take_back`).
SLOW_RUN = 0.02
# A child sends the results of finished jobs at least this soon, even while a long job runs.
RESULT_DELAY = 0.001
# The exit code of a child that could not set itself up (EX_SOFTWARE).
START_FAILED_EXIT = 70


class Job:
    """One delivered task on its way through the pool."""

    __slots__ = ("seq", "tag", "task_id", "task_name", "data", "redelivered", "acks_late",
                 "time_limit", "soft_time_limit", "epoch", "child", "started_at",
                 "start_noticed", "handed_over", "soft_sent", "kill_reason", "kill_signum",
                 "generation", "fast", "received_at", "expires_at", "rate_held")

    def __init__(self, seq, tag, task_id, task_name, data, redelivered=False, acks_late=False,
                 time_limit=None, soft_time_limit=None, generation=0):
        self.seq = seq
        self.tag = tag
        self.task_id = task_id
        self.task_name = task_name
        self.data = data
        self.redelivered = redelivered
        self.acks_late = acks_late
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.generation = generation    # which broker connection delivered it
        self.epoch = 0
        self.child = None
        self.started_at = None
        self.start_noticed = False
        self.handed_over = False        # acked with the started flag
        self.soft_sent = False
        self.kill_reason = None         # exception to report if its child is killed for it
        self.kill_signum = None         # the signal that killed it (a terminating revoke)
        self.fast = False
        self.received_at = 0.0
        self.expires_at = 0.0           # epoch seconds; 0: it never expires
        self.rate_held = False          # in the worker's scheduler, waiting for a rate token

    def __repr__(self):
        return "<Job %d %s[%s]>" % (self.seq, self.task_name, self.task_id)


class ChildConfig:
    """What a child needs to set itself up (pickled for the spawn start method)."""

    def __init__(self, settings_overrides=None, imports=(), loglevel="WARNING", logfile=None,
                 accept=None, max_tasks=None, start_method="fork", environ=None):
        self.settings_overrides = settings_overrides or {}
        self.imports = list(imports)
        self.loglevel = loglevel
        self.logfile = logfile
        self.accept = accept
        self.max_tasks = max_tasks
        self.start_method = start_method
        self.environ = environ or {}
        self.worker_pid = os.getpid()   # a pool process's parent (but under forkserver)


class _Child:
    __slots__ = ("slot", "process", "inbox", "outbox", "in_fd", "out_fd", "wbuf", "rbuf",
                 "jobs", "by_seq", "assigned", "retiring", "closed", "pid", "ready",
                 "failure", "start_lock")

    def __init__(self, slot, process, inbox, outbox, start_lock):
        self.slot = slot
        self.start_lock = start_lock    # the child starts each job under it (`take_back`)
        self.process = process
        self.inbox = inbox              # parent's write end (a multiprocessing Connection)
        self.outbox = outbox            # parent's read end
        self.in_fd = inbox.fileno()
        self.out_fd = outbox.fileno()
        self.wbuf = bytearray()
        self.rbuf = bytearray()
        self.jobs = collections.deque()   # assigned, not reported, in the order sent
        self.by_seq = {}
        self.assigned = 0
        self.retiring = False
        self.closed = False
        self.pid = process.pid
        self.ready = False              # it has set itself up and takes jobs
        self.failure = None             # why it could not, as it reported

    def can_take(self, job, max_tasks, max_queued=MAX_FAST_JOBS):
        if self.retiring or self.closed or not self.ready:
            return False
        if max_tasks and self.assigned >= max_tasks:
            return False
        if not self.jobs:
            return True
        return job.fast and len(self.jobs) < max_queued and all(j.fast for j in self.jobs)


class Pool:
    """`concurrency` child processes; the worker's loop drives it through its file objects."""

    def __init__(self, concurrency, config, start_method=None, max_tasks_per_child=None,
                 close_in_child=None, max_queued=MAX_FAST_JOBS):
        self.concurrency = concurrency
        self.config = config
        self.context = multiprocessing.get_context(start_method)
        self.start_method = self.context.get_start_method()
        config.start_method = self.start_method
        config.max_tasks = max_tasks_per_child
        self.max_tasks = max_tasks_per_child
        # Fast jobs a child may have queued: a job stuck behind one that stalls waits there,
        # so the worker keeps more than twice a child's share of its prefetch itself (its
        # extra credit for short tasks, above all), for whichever child is free first.
        self.max_queued = max(1, min(max_queued, MAX_FAST_JOBS))
        self.close_in_child = close_in_child or (lambda: [])
        self.shm = self.context.RawArray("d", _GLOBALS + _SLOT * concurrency)
        self.children = {}              # slot -> _Child
        self.epoch = 0
        self.runtimes = {}              # task name -> moving average of run time
        self.started_total = 0
        # Jobs are numbered as they are handed out: each child gets them in rising order
        # (what `notice_starts` and `reap` rely on), a job taken back and handed out again
        # included, and above any mark of jobs taken back (`take_back`).
        self.seq = 0

    # -- children --------------------------------------------------------------------------------

    def start(self):
        for slot in range(self.concurrency):
            self._spawn(slot)

    def missing_slots(self):
        """Slots without a child (their last one could not start); see `start_slot`."""
        return [slot for slot in range(self.concurrency)
                if slot not in self.children or self.children[slot].closed]

    def start_slot(self, slot):
        """Start a child in an empty slot; returns it."""
        return self._spawn(slot)

    def complete(self):
        """Whether every slot has a child that has reported ready."""
        return all(slot in self.children and self.children[slot].ready
                   and not self.children[slot].closed for slot in range(self.concurrency))

    def _spawn(self, slot):
        base = _GLOBALS + slot * _SLOT
        for offset in range(_SLOT):
            self.shm[base + offset] = 0.0
        child_in, parent_in = self.context.Pipe(duplex=False)       # parent -> child
        parent_out, child_out = self.context.Pipe(duplex=False)     # child -> parent
        start_lock = self.context.Lock()
        close = []
        if self.start_method == "fork":
            close = [fd for fd in self.close_in_child() if fd is not None]
            for child in self.children.values():
                if not child.closed:        # a closed child's numbers may be reused by now
                    close.extend((child.in_fd, child.out_fd))
            close.extend((parent_in.fileno(), parent_out.fileno()))
        process = self.context.Process(
            target=child_main, name="minitask-pool-%d" % (slot + 1),
            args=(slot, child_in, child_out, self.shm, self.config, close, start_lock))
        process.daemon = True
        if self.start_method == "forkserver":
            _start_under_forkserver(process)
        else:
            process.start()
        child_in.close()
        child_out.close()
        os.set_blocking(parent_in.fileno(), False)
        os.set_blocking(parent_out.fileno(), False)
        child = self.children[slot] = _Child(slot, process, parent_in, parent_out, start_lock)
        logger.debug("pool child %d started (pid %d)", slot + 1, process.pid)
        return child

    def replace(self, child):
        """Start a new child in a dead one's slot; returns it."""
        self.close_child(child)
        return self._spawn(child.slot)

    def close_child(self, child):
        child.closed = True
        for conn in (child.inbox, child.outbox):
            try:
                conn.close()
            except OSError:
                pass                    # already closed with the process
        child.process.join(0)

    def alive(self):
        return [child for child in self.children.values() if not child.closed]

    def idle(self):
        return all(not child.jobs for child in self.alive())

    def has_free_child(self):
        """Whether some ready child has nothing queued."""
        return any(child.ready and not child.jobs for child in self.alive())

    # -- giving out work -------------------------------------------------------------------------

    def is_fast(self, task_name):
        runtime = self.runtimes.get(task_name)
        return runtime is not None and runtime < FAST_SECONDS

    def runs_only_fast(self, now):
        """Whether every job given out and not reported is of a task known to be fast, and
        none has been running for more than `SLOW_RUN` seconds (`now`: time.time())."""
        for child in self.alive():
            # A job that is not fast only ever goes to a child with nothing queued, and
            # nothing is queued behind it (`can_take`): the first job says for them all.
            if not child.jobs:
                continue
            if not child.jobs[0].fast:
                return False
            _seq, started_at, running = self.slot_state(child)
            if running and now - started_at > SLOW_RUN:
                return False
        return True

    def assign(self, job):
        """Give `job` to the least busy child that may take it; False when none may."""
        job.fast = self.is_fast(job.task_name)
        best, now = None, time.time()
        for child in self.children.values():
            if child.jobs and self._stalled(child, now):
                continue                # nothing queues behind a job that runs long
            if child.can_take(job, self.max_tasks, self.max_queued) and (best is None
                                                         or len(child.jobs) < len(best.jobs)):
                best = child
                if not child.jobs:
                    break
        if best is None:
            return False
        self.seq += 1
        job.seq = self.seq
        job.child = best
        job.epoch = self.epoch
        best.jobs.append(job)
        best.by_seq[job.seq] = job
        best.assigned += 1
        if self.max_tasks and best.assigned >= self.max_tasks:
            best.retiring = True
        best.wbuf += _frame(("jobs", [(job.seq, job.epoch, job.data, job.redelivered)]))
        return True

    def flush(self, child):
        """Write what is waiting for `child`; returns True when some is left (wait for EPOLLOUT)."""
        try:
            while child.wbuf:
                written = os.write(child.in_fd, child.wbuf)
                del child.wbuf[:written]
        except BlockingIOError:
            return True
        except OSError as exc:          # the child is gone; its death is handled by the sentinel
            logger.debug("pool child %d: write failed: %s", child.slot + 1, exc)
            child.wbuf.clear()
        return False

    def broadcast_revoke(self, task_ids):
        """Tell children about revoked ids, so queued jobs of those tasks are skipped."""
        self.shm[_REVOKE_GEN] += 1
        item = _frame(("revoke", list(task_ids)))
        for child in self.alive():
            child.wbuf += item

    def new_epoch(self):
        """Every job queued so far (and not yet started) is to be skipped."""
        self.epoch += 1
        self.shm[_EPOCH] = float(self.epoch)

    # -- hearing back ----------------------------------------------------------------------------

    def read(self, child):
        """Results waiting in `child`'s pipe: a list of ``(job, report)``; report is
        ``("skipped",)`` or ``(state, content_type, payload, store, runtime, summary,
        publish, chained)`` (`minitask.worker.execution.Executed`). Nothing for a closed
        child: its descriptor numbers may belong to its replacement's pipes already."""
        if child.closed:
            return []
        try:
            while True:
                data = os.read(child.out_fd, 1 << 20)
                if not data:
                    break
                child.rbuf += data
        except BlockingIOError:
            pass
        except OSError as exc:
            logger.debug("pool child %d: read failed: %s", child.slot + 1, exc)
        done = []
        for kind, items in _frames(child.rbuf):
            if kind == "ready":
                child.ready = True
                continue
            if kind == "failed":
                child.failure = items
                continue
            for item in items:
                job = child.by_seq.pop(item[0], None)
                if job is None:
                    continue
                if child.jobs[0] is job:        # children answer in order: the usual case
                    child.jobs.popleft()
                else:
                    child.jobs.remove(job)
                if item[1] != "skipped":
                    self._learn_runtime(job.task_name, item[5])
                done.append((job, item[1:]))
        return done

    def _learn_runtime(self, task_name, runtime):
        old = self.runtimes.get(task_name)
        self.runtimes[task_name] = runtime if old is None else old * 0.8 + runtime * 0.2

    def slot_state(self, child):
        """``(last started seq, started at, running)`` from shared memory."""
        base = _GLOBALS + child.slot * _SLOT
        return (int(self.shm[base + _STARTED_SEQ]), self.shm[base + _STARTED_AT],
                self.shm[base + _RUNNING] > 0)

    def notice_starts(self):
        """Jobs that started since last asked (for STARTED acks), each reported once."""
        started = []
        for child in self.children.values():
            if not child.jobs:
                continue
            seq, at, _running = self.slot_state(child)
            for job in child.jobs:
                if job.seq > seq:
                    break
                if not job.start_noticed:
                    job.start_noticed = True
                    job.started_at = at if job.seq == seq else job.started_at or at
                    started.append(job)
        return started

    def _stalled(self, child, now):
        """Whether `child`'s job has run longer than SLOW_RUN (`now`: time.time())."""
        _seq, started_at, running = self.slot_state(child)
        return running and now - started_at > SLOW_RUN

    def take_back(self, now):
        """The jobs queued in a child behind one that has run longer than SLOW_RUN (`now`:
        time.time()), taken back, in order, for whichever child is free first: a task of a
        fast type may once run long, and what was queued behind it must not wait for it
        while another child idles (Celery's -O fair). The child starts each job under its
        start lock, after checking that it was not taken back; under that lock, the jobs
        after the one it started last are not started and will not be."""
        taken = []
        for child in self.alive():
            if len(child.jobs) < 2 or not self._stalled(child, now):
                continue
            if not child.start_lock.acquire(False):
                continue                # starting its next job this moment: looked at again
            try:
                # Jobs of an earlier epoch stay: the child reports them skipped (it checks
                # the epoch first), and their messages went back with their connection.
                started = self.slot_state(child)[0]
                behind = [job for job in child.jobs
                          if job.seq > started and job.epoch == self.epoch]
                if behind:
                    self.shm[_GLOBALS + child.slot * _SLOT + _TAKEN_BACK] = \
                        float(behind[-1].seq)
            finally:
                child.start_lock.release()
            for job in behind:
                child.jobs.remove(job)
                del child.by_seq[job.seq]
                job.child = None
            child.assigned -= len(behind)
            if child.retiring and not (self.max_tasks and child.assigned >= self.max_tasks):
                child.retiring = False  # it will not reach its task count with these gone
            taken += behind
        return taken

    def time_limits(self, now):
        """Enforce soft and hard time limits; returns the jobs whose child was killed."""
        killed = []
        for child in self.children.values():
            if not child.jobs or child.closed:
                continue
            seq, at, running = self.slot_state(child)
            if not running:
                continue
            job = child.by_seq.get(seq)
            if job is None:
                continue
            elapsed = now - at
            if job.time_limit and elapsed >= job.time_limit and job.kill_reason is None:
                job.kill_reason = TimeLimitExceeded(
                    "task %s[%s] ran past its time limit of %ss"
                    % (job.task_name, job.task_id, job.time_limit))
                self.kill(child)
                killed.append(job)
            elif job.soft_time_limit and elapsed >= job.soft_time_limit and not job.soft_sent:
                job.soft_sent = True
                self.shm[_GLOBALS + child.slot * _SLOT + _SOFT_SEQ] = float(job.seq)
                _signal(child.pid, getattr(signal, "SIGUSR1", signal.SIGTERM))
        return killed

    def next_limit(self, now):
        """Seconds until the next time limit could fire, or None."""
        soonest = None
        for child in self.children.values():
            for job in child.jobs:
                for limit in (job.soft_time_limit if not job.soft_sent else None,
                              job.time_limit):
                    if limit:
                        at = (job.started_at or now) + limit
                        soonest = at if soonest is None else min(soonest, at)
                break
        return None if soonest is None else max(0.0, soonest - now)

    def kill(self, child, signum=None):
        """Send `child` `signum` (SIGKILL by default); a SIGTERM ends the job it runs now."""
        signum = signal.SIGKILL if signum is None else signum
        if signum == signal.SIGTERM:
            self.shm[_GLOBALS + child.slot * _SLOT + _TERM_SEQ] = \
                float(self.slot_state(child)[0])
            signum = _TERMINATE or signum
        _signal(child.pid, signum)

    def running_job(self, child):
        seq, _at, running = self.slot_state(child)
        return child.by_seq.get(seq) if running else None

    def reap(self, child):
        """The child died: sort its unreported jobs into (lost, unstarted).

        `lost` ran (the one running, or ones that finished but whose report died with the
        child); `unstarted` never began and can go to another child.
        """
        last_started, _at, _running = self.slot_state(child)
        lost, unstarted = [], []
        for job in child.jobs:
            (lost if job.seq <= last_started else unstarted).append(job)
        child.jobs.clear()
        child.by_seq.clear()
        for job in unstarted:
            job.child = None
            job.start_noticed = False
        return lost, unstarted

    def exit_description(self, child):
        child.process.join(1.0)
        code = child.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            if -code == _TERMINATE:
                code = -signal.SIGTERM  # the one it stands for
            try:
                return "signal %d (%s)" % (-code, signal.Signals(-code).name)
            except ValueError:
                return "signal %d" % -code
        return "exit code %d" % code

    # -- stopping --------------------------------------------------------------------------------

    def stop(self, timeout=5.0):
        """Ask children to exit (their inbox closes), then kill what is left after `timeout`."""
        for child in self.children.values():
            try:
                child.inbox.close()
            except OSError:
                pass                    # already closed
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            child.process.join(max(0.0, deadline - time.monotonic()))
        for child in self.children.values():
            if child.process.is_alive():
                self.kill(child)
                child.process.join(1.0)
            try:
                child.outbox.close()
            except OSError:
                pass                    # already closed
            child.closed = True


def remember_revoked(revoked, new):
    """Add the ids of `new` (a mapping) to `revoked`, then forget the oldest beyond
    `MAX_REVOKED`."""
    revoked.update(new)
    while len(revoked) > MAX_REVOKED:
        revoked.pop(next(iter(revoked)))


def _ensure_forkserver():
    """Start multiprocessing's fork server unless it runs, ignoring SIGTERM: one sent to
    every process of the worker would kill it, and the pool with it (its children die with
    it, `die_with_parent`; the worker reads their exit through it), where the worker stops
    warmly; the children leave such a SIGTERM to `_ChildRunner.on_sigterm`. Also when it
    is started again, after it died. (Signals can be set only from the main thread; from
    another, `process.start` starts it as multiprocessing does.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    ignored = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, ignored)


def _start_under_forkserver(process, patience=5.0):
    """Start `process` through the fork server, a new one if it died. One killed a moment
    ago (the OOM killer; its children die with it, and the worker replaces them at once)
    may not have ended yet: multiprocessing takes it for alive, and the start is refused.
    Look again until it has ended and a new one runs."""
    deadline = time.monotonic() + patience
    while True:
        _ensure_forkserver()
        try:
            process.start()
            return
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)            # the server is still ending: a poll, not a wait


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass                            # it died on its own meanwhile


def _frame(obj):
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(payload)) + payload


def _frames(buffer):
    """Pop every whole (kind, items) frame out of `buffer`."""
    offset = 0
    out = []
    while len(buffer) - offset >= 4:
        (length,) = _LEN.unpack_from(buffer, offset)
        end = offset + 4 + length
        if len(buffer) < end:
            break
        out.append(pickle.loads(bytes(buffer[offset + 4:end])))
        offset = end
    del buffer[:offset]
    return out


# -- the child -------------------------------------------------------------------------------

def child_main(slot, inbox, outbox, shm, config, close_fds, start_lock):
    """A pool child's whole life: set up, say so, then run jobs until the inbox closes."""
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass                        # not open in this process
    die_with_parent(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the main process decides on Ctrl-C
    # A forked child inherits the worker's wake-up fd, closed here: a signal handled in
    # Python would write to whatever now has that number.
    signal.set_wakeup_fd(-1)
    runner = _ChildRunner(slot, inbox, outbox, shm, config, start_lock)
    signal.signal(signal.SIGTERM, runner.on_sigterm)  # and on a SIGTERM sent to all of us,
    signal.siginterrupt(signal.SIGTERM, False)       # which must not cut a task's C calls short
    if _TERMINATE is not None:
        signal.signal(_TERMINATE, signal.SIG_DFL)
    try:
        runner.setup()
    except Exception as exc:            # the user's modules or loader: report it, once
        logger.debug("pool process could not start", exc_info=True)
        try:
            runner.send(("failed", start_failure(exc)))
        except OSError:
            pass                        # the worker is gone: nobody to tell
        sys.exit(START_FAILED_EXIT)
    runner.send(("ready", os.getpid()))
    runner.run()
    if signals.worker_process_shutdown.receivers:
        signals.worker_process_shutdown.send(None, pid=os.getpid(), exitcode=0)


def die_with_parent(config):
    """Have Linux kill this process (SIGKILL) when the process that started it dies.

    A pool process whose worker was killed alone (``kill -9 PID``, the OOM killer) would
    otherwise run its task on, unseen: the broker has already given an acks_late task to
    another worker, which runs it at the same time, and a default-acks one is reported lost
    while its side effects go on. Elsewhere, or without ctypes, only the check before each
    job remains: a running task then ends on its own time.

    Under forkserver the parent is the server, which ends once nothing holds the worker's
    end of the pipe it watches; its children inherit that end (multiprocessing keeps it for
    processes they would start, which a pool process may not), so the child closes it, and
    the server ends with the worker. The worker learns how its children ended through the
    server: if the server dies alone, the worker counts them dead (exit code 255), and
    dying with it keeps them from running on unseen then too.
    """
    parent = config.worker_pid
    if config.start_method == "forkserver":
        parent = os.getppid()
        server = multiprocessing.forkserver._forkserver
        fd = getattr(server, "_forkserver_alive_fd", None)
        if fd is not None:
            os.close(fd)
            server._forkserver_alive_fd = None
    if ctypes is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (AttributeError, OSError) as exc:
        logger.debug("a pool process cannot end with its worker: %s", exc)
        return
    if os.getppid() != parent:          # it died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def start_failure(exc):
    """One line on why a child could not set up: the error and where in the user's code.

    A loader's ConfigurationError already names the module; the innermost frame of the
    project's own code (not minitask's, the standard library's or an installed package's)
    is added when the message lacks it: that is the line to look at.
    """
    cause = exc.__cause__ or exc
    text = "%s: %s" % (type(exc).__name__, " ".join(str(exc).split()))
    elsewhere = _not_the_projects()
    frames = [frame for frame in traceback.extract_tb(cause.__traceback__)
              if not frame.filename.startswith(elsewhere)]
    if frames and "line %d" % frames[-1].lineno not in text:
        text += " (%s, line %d)" % (frames[-1].filename, frames[-1].lineno)
    return text


def _not_the_projects():
    """Where code that is not the project's lives: frozen modules, minitask, the standard
    library and installed packages (a virtual environment's and its base Python's)."""
    paths = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    for base in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        found = sysconfig.get_paths(vars=base)
        paths.update(found[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    return ("<",) + tuple(sorted(paths))


class _ChildRunner:
    def __init__(self, slot, inbox, outbox, shm, config, start_lock):
        self.base = _GLOBALS + slot * _SLOT
        self.start_lock = start_lock
        self.in_fd = inbox.fileno()
        self.out_fd = outbox.fileno()
        self._keep = (inbox, outbox)
        self.shm = shm
        self.config = config
        self.pending = collections.deque()
        self.results = []
        # Results go back in batches; one that waits while the next job runs is sent within
        # RESULT_DELAY by the flusher thread (`_flush_later`), which `results_wait` wakes.
        self.results_lock = threading.Lock()
        self.results_wait = threading.Event()
        self.revoked = {}               # task id -> None, oldest first (`remember_revoked`)
        self.revoke_gen = shm[_REVOKE_GEN]
        self.buffer = bytearray()
        self.last_flush = time.monotonic()
        self.current = None
        self.done = 0
        self.eof = False
        self.parent = os.getppid()
        self.pid = os.getpid()
        self.django = False

    def setup(self):
        """Become a worker's pool process: as the worker set up (unless forked from it), then
        the loader's per-process hook. Raises whatever stops it."""
        os.environ.update(self.config.environ)
        forked = self.config.start_method == "fork"
        if forked:
            djangofixup.forget_inherited_connections()
        else:
            settings_module.configure(**self.config.settings_overrides)
            djangofixup.setup()         # before any tasks module: they may import models
        # A forked child keeps the logging it inherited: the worker set it up and sent the
        # logging signals before the fork (a tasks module may have added a handler since),
        # and sending them again would have a receiver that adds a handler write every line
        # twice; as Celery's, it sends none. A fresh one sets up and sends them itself.
        if not forked:
            setup_logging(self.config.loglevel, self.config.logfile)
        elif not signals.setup_logging.receivers:   # else theirs, as the worker left it
            setup_logging(self.config.loglevel, self.config.logfile, take_over=False)
        loader = current_loader()
        if not forked:
            loader.on_worker_init()
            for name in self.config.imports:
                loader.import_module(name)
            send_logging_signals(self.config.loglevel, self.config.logfile)
        loader.on_worker_process_init()
        if signals.worker_process_init.receivers:
            signals.worker_process_init.send(None)
        self.django = djangofixup.active()
        set_task_join_will_block(True)     # a task's get() would wait on its own worker
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._soft_limit)
        self.execute = execute_delivery
        self.on_failure = failure_mailer()

    def on_sigterm(self, signum, frame):
        """A SIGTERM sent to every process of the worker (systemd's default KillMode,
        ``kill -- -PGID``, pkill) is ignored: the worker got it too, and stops warmly,
        letting the running task finish. One the worker meant for the running job (a
        terminating revoke, where there is no `_TERMINATE` signal) ends the process as the
        default action would; so does any after a fork of a task (another process), or once
        the worker is gone."""
        meant = self.current is not None \
            and self.shm[self.base + _TERM_SEQ] == float(self.current)
        if meant or os.getpid() != self.pid or os.getppid() != self.parent:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _soft_limit(self, signum, frame):
        if self.current is not None and self.shm[self.base + _SOFT_SEQ] == float(self.current) \
                and self.shm[self.base + _RUNNING] > 0:
            raise SoftTimeLimitExceeded("soft time limit exceeded")

    def run(self):
        """Run jobs until the inbox closes (after `setup`)."""
        accept = self.config.accept
        shm, base = self.shm, self.base
        threading.Thread(target=self._flush_later, name="minitask-results",
                         daemon=True).start()
        while True:
            if not self.pending:
                self.flush()
                if self.eof or not self.receive(block=True):
                    return
                continue
            if self.shm[_REVOKE_GEN] != self.revoke_gen:
                self.revoke_gen = self.shm[_REVOKE_GEN]
                self.receive(block=False)
            if os.getppid() != self.parent:
                # The worker died: the broker gives its unacked tasks to another worker now,
                # so starting one more here would run it twice.
                return
            seq, epoch, data, redelivered = self.pending.popleft()
            if epoch < shm[_EPOCH]:
                self._add_result((seq, "skipped"))
                continue
            if self.results and not self.results_wait.is_set():
                self.results_wait.set()     # sent soon, should this job run long
            with self.start_lock:
                if seq <= shm[base + _TAKEN_BACK]:
                    continue                # the worker gave it to another process
                revoked = bool(self.revoked) and message_id_of(data) in self.revoked
                if not revoked:
                    shm[base + _STARTED_SEQ] = float(seq)
                    shm[base + _STARTED_AT] = time.time()
            if revoked:
                report = failed(data, message_id_of(data), "", "REVOKED",
                                TaskRevokedError("revoked before it started"), None, 0.0,
                                "json", "revoked")
            else:
                if self.django:
                    djangofixup.before_task()
                self.current = seq
                shm[base + _RUNNING] = 1.0
                try:
                    report = self.execute(data, accept, self.config.logfile,
                                          self.config.loglevel, on_failure=self.on_failure,
                                          redelivered=redelivered)
                except SoftTimeLimitExceeded as exc:    # landed just outside the task's code
                    report = failed(data, message_id_of(data), "", "FAILURE", exc, None, 0.0,
                                    "json", "soft time limit exceeded")
                finally:
                    shm[base + _RUNNING] = 0.0
                    self.current = None
                if self.django:
                    djangofixup.after_task()
            self._add_result((seq, report.state, report.content_type, report.payload,
                              report.store, report.runtime, report.summary, report.publish,
                              report.chained))
            self.done += 1
            if self.config.max_tasks and self.done >= self.config.max_tasks:
                self.flush()
                return
            if time.monotonic() - self.last_flush > 0.001:
                self.flush()

    def receive(self, block):
        """Read jobs (and revoke lists) from the inbox; False at end of input."""
        if not block:
            ready, _, _ = select.select([self.in_fd], [], [], 0)
            if not ready:
                return True
        try:
            data = os.read(self.in_fd, 1 << 20)
        except InterruptedError:
            return True
        if not data:
            self.eof = True
            return bool(self.pending)
        self.buffer += data
        for kind, items in _frames(self.buffer):
            if kind == "jobs":
                self.pending.extend(items)
            elif kind == "revoke":
                remember_revoked(self.revoked, dict.fromkeys(items))
        return True

    def _add_result(self, item):
        with self.results_lock:
            self.results.append(item)

    def flush(self):
        with self.results_lock:
            if not self.results:
                return
            results, self.results = self.results, []
            self.send(("done", results))    # whole, under the lock: frames never interleave
            self.last_flush = time.monotonic()

    def _flush_later(self):
        """The flusher thread: once woken (results wait as a job starts), send them after
        RESULT_DELAY, unless the loop did first. A job that runs long then holds back no
        result of the jobs before it (their get(), their acks); a quick one lets the loop
        send them with the next ones, in one write."""
        while True:
            self.results_wait.wait()
            time.sleep(RESULT_DELAY)
            self.results_wait.clear()
            try:
                self.flush()
            except OSError:
                return                  # the worker is gone; the loop finds that out too

    def send(self, item):
        """Write one (kind, items) frame to the worker, whole."""
        view = memoryview(_frame(item))
        while view:
            written = os.write(self.out_fd, view)
            view = view[written:]


