"""Tools of the crash suite: a cluster of real processes to kill, producers, and the checks.

    cluster = Cluster(tmp_path, broker_args=["--worker-lost-grace", "1"]).start(workers=2)
    with Producers(lambda i: chaostasks.late.delay(i, 0.005)) as producers:
        cluster.kill_broker(); cluster.restart_broker()      # kill -9, same port and data
        cluster.kill_worker(rng)                             # parent, a pool child, or all
    outcome = check_at_least_once(cluster, "late", producers, "label")
    cluster.close()                                          # every process, even on failure

The processes come from the integration harness (``tests/integration/conftest.py``), loaded
here under its own module name: several folders of the suite have a ``conftest.py``, so the
bare name ``conftest`` means whichever pytest imported last. Workers import `chaostasks`
(this folder) and find the trace folder in ``ITTASKS_DIR``, as the harness sets it.

Kills are random but reproducible: every test takes a ``random.Random(seed)``, prints the
seed, and ``MINITASK_CHAOS_SEED=<seed>`` replays it (the order of kills; the processes'
timing still varies). ``LONG_MINITASK_TESTS=1`` (``python3 tests/run.py --long``) makes every
test longer (`BUDGET`); the short form is what CI runs.
"""

import collections
import os
import random
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


import cluster as harness  # noqa: E402  (tests/integration, put on the path above)

Broker, Worker, wait_for, ROOT = harness.Broker, harness.Worker, harness.wait_for, harness.ROOT

from minitask import config  # noqa: E402  (after the harness put the project on the path)
from minitask.transport import reset_connection  # noqa: E402
from minitask.exceptions import MinitaskError  # noqa: E402

import chaostasks  # noqa: E402

LONG = os.environ.get("LONG_MINITASK_TESTS") == "1"


class Budget:
    """How hard each test pushes: short for every run (~3 minutes in all on 2 cores), long
    under LONG_MINITASK_TESTS=1."""

    def __init__(self, long):
        self.broker_kills = 20 if long else 5
        self.worker_kills = 40 if long else 8
        self.final_state_kills = 30 if long else 8
        self.overlap_seconds = 90.0 if long else 18.0
        self.countdown_kills = 12 if long else 4
        self.cut_messages = 40 if long else 20
        self.cut_offsets = None if long else 40         # None: every offset of the range
        self.cut_records = 3                            # the tail cut: this many last records
        self.rate = 120.0                               # tasks/s per producer thread


BUDGET = Budget(LONG)
PRODUCER_THREADS = 2
# A test's drain: every confirmed task must have run within this long after the last kill.
DRAIN_SECONDS = 90.0 if LONG else 60.0


def make_rng(name):
    """A seeded Random for one test; the seed is printed (and kept in the figures)."""
    seed = os.environ.get("MINITASK_CHAOS_SEED")
    seed = int(seed) if seed else random.SystemRandom().randrange(1 << 32)
    print("%s: MINITASK_CHAOS_SEED=%d" % (name, seed))
    return random.Random(seed), seed


# -- the figures of the run --------------------------------------------------------------------

class Figures:
    """One line per test, printed at the end of the pytest run (even under ``-q``)."""

    def __init__(self):
        self.rows = []
        self.totals = collections.Counter()

    def add(self, test, seed, **counts):
        self.rows.append((test, seed, counts))
        for key, value in counts.items():
            if isinstance(value, int):
                self.totals[key] += value

    def lines(self):
        out = []
        for test, seed, counts in self.rows:
            out.append("%s (seed %d): %s" % (test, seed, ", ".join(
                "%s %s" % (key, value) for key, value in counts.items())))
        if self.rows:
            keys = ("kills", "broker_kills", "worker_kills", "confirmed", "runs", "lost",
                    "duplicates", "broker_starts")
            out.append("total: %s" % ", ".join("%s %d" % (key, self.totals[key])
                                               for key in keys if key in self.totals))
        return out


FIGURES = Figures()


# -- processes ---------------------------------------------------------------------------------

def _stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None                         # it exited
    return stat[stat.rfind(b")") + 2:].split()


def children_of(pid):
    """``[(pid, start time)]`` of the processes whose parent is `pid` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(name)
            if fields and int(fields[1]) == pid:
                found.append((int(name), fields[19]))
    return found


def _alive(process):
    """Is this ``(pid, start time)`` still running (not a zombie, and not a reused pid)?"""
    fields = _stat(process[0])
    return bool(fields) and fields[19] == process[1] and fields[0] != b"Z"


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass                                # the whole group is gone already


class SmallSegmentBroker(Broker):
    """A broker whose journal segments are `segment_bytes` long (see `smallsegments`), so
    it compacts all the time; killed and restarted like any other."""

    def __init__(self, tmp_path, args=(), env=None, segment_bytes=64 * 1024):
        super().__init__(tmp_path, args, env)
        self.segment_bytes = segment_bytes

    def command(self):
        return [sys.executable, os.path.join(HERE, "smallsegments.py"), str(self.segment_bytes),
                "broker", "--port", str(self.port), "-l", "INFO",
                "--data-dir", self.data_dir] + self.args


class Cluster:
    """One broker (killed and restarted on the same port and data) and its workers."""

    def __init__(self, tmp_path, broker_args=(), worker_args=("-c", "2"), segment_bytes=None):
        self.tmp_path = tmp_path
        self.broker = Broker(tmp_path, broker_args) if segment_bytes is None else \
            SmallSegmentBroker(tmp_path, broker_args, segment_bytes=segment_bytes)
        self.worker_args = list(worker_args)
        self.workers = []                   # the live ones
        self.orphans = []                   # (pid, start time) of pool processes orphaned
        self.serial = 0
        self.events = []                    # "1795698685.458 kill parent 1234 (pool ...)"

    def note(self, text):
        self.events.append("%.3f %s" % (time.time(), text))

    def start(self, workers=2):
        self.broker.start()
        return self.start_workers(workers)

    def start_workers(self, workers):
        """Point this process's producers at the broker; start `workers` and wait for them."""
        config.configure(BROKER_URL=self.broker.url, ACCEPT_CONTENT=["json"])
        reset_connection()
        os.environ["ITTASKS_DIR"] = str(self.tmp_path)
        for _ in range(workers):
            self.add_worker()
        for worker in self.workers:
            worker.wait_ready()
        return self

    def add_worker(self):
        self.serial += 1
        env = {"PYTHONPATH": os.pathsep.join([ROOT, HERE, INTEGRATION])}
        worker = Worker(self.broker, self.tmp_path, "w%d" % self.serial, self.worker_args,
                        env, modules="chaostasks")
        self.workers.append(worker)
        return worker

    # -- killing --

    def kill_broker(self):
        self.note("kill broker %d" % self.broker.proc.pid)
        self.broker.kill()
        self.broker.proc.log.close()

    def restart_broker(self):
        """Start the broker again on its port and data; returns seconds to its ready line."""
        began = time.monotonic()
        self.broker.start()
        self.note("broker %d ready" % self.broker.proc.pid)
        return time.monotonic() - began

    def kill_worker(self, rng, how=None):
        """SIGKILL a random worker's main process ("parent"), one of its pool processes
        ("child"), or its whole process group ("group"); a dead worker is replaced."""
        worker = rng.choice(self.workers)
        how = how or rng.choice(("parent", "child", "group"))
        if how == "child":
            children = children_of(worker.proc.pid)
            if not children:
                how = "group"               # still starting: kill it whole instead
            else:
                victim = rng.choice(children)[0]
                self.note("kill pool process %d of %s" % (victim, worker.name))
                os.kill(victim, signal.SIGKILL)     # its parent is alive: no pid reuse yet
                return how
        children = children_of(worker.proc.pid)
        self.note("kill %s %d of %s (pool %s)" % (how, worker.proc.pid, worker.name,
                                                  " ".join(str(pid) for pid, _t in children)))
        if how == "parent":
            self.orphans.extend(children)
            os.kill(worker.proc.pid, signal.SIGKILL)
        else:
            _killpg(worker.proc.pid)            # the leader is alive: the group is ours
        worker.proc.process.wait(10)
        worker.proc.log.close()
        self.workers.remove(worker)
        replacement = self.add_worker()
        self.note("started %s %d" % (replacement.name, replacement.proc.pid))
        return how

    def lingering_orphans(self, timeout=10.0):
        """Pool processes still alive `timeout` s after their worker was killed (pids)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [pid for pid, started in self.orphans if _alive((pid, started))]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)

    def queue_settled(self, name="minitask"):
        """True once the queue holds nothing ready, unacked or delayed."""
        try:
            queue = self.broker.queue(name)
        except MinitaskError:
            return False
        return queue is not None and not (queue["ready"] or queue["unacked"]
                                          or queue["delayed"])

    def close(self):
        try:
            for worker in self.workers:
                worker.proc.close()
        finally:
            for orphan in self.orphans:     # pool processes of killed workers, if still ours
                if _alive(orphan):
                    try:
                        os.kill(orphan[0], signal.SIGKILL)
                    except ProcessLookupError:
                        pass                # it left between the look and the kill
            if self.broker.proc is not None:
                self.broker.proc.close()
            reset_connection()
            config.reset()
            if os.environ.get("MINITASK_SHOW_LOGS"):
                print(self.broker.output())


# -- producers ---------------------------------------------------------------------------------

class Producers:
    """Threads sending tasks with confirms (``delay()``) at a steady pace, until stopped.

    `send(index)` sends task `index`; it counts as confirmed only when it returned (what it
    returned is kept in `confirmed`, by index). Indexes
    are attempted before the call, so a task that ran but was never attempted is a stray.
    A `MinitaskError` (the broker gone for longer than the client retries) is the call
    failing as documented: that index stays unconfirmed. Anything else is a client bug,
    kept in `unexpected`.
    """

    def __init__(self, send, threads=PRODUCER_THREADS, rate=None, first_index=0):
        self.send = send
        self.threads = threads
        self.rate = rate or BUDGET.rate
        self.first_index = first_index
        self.attempted = set()
        self.confirmed = {}                 # index -> what send() returned (an AsyncResult)
        self.failures = collections.Counter()
        self.unexpected = []
        self.slowest = 0.0                  # the longest delay() call (an outage rides it)
        self.confirmed_so_far = 0           # counted as they come (`confirmed` is at the end)
        self._stop = threading.Event()
        self._workers = []
        self._lock = threading.Lock()

    def __enter__(self):
        for number in range(self.threads):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def wait_confirmed(self, count, timeout):
        """Go on until `count` tasks in all were confirmed (or `timeout` seconds passed), so
        that a slow machine still gives a test the load it needs to say something."""
        deadline = time.monotonic() + timeout
        while self.confirmed_so_far < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        for thread in self._workers:
            thread.join(30.0)
        self._workers = []

    def _run(self, number):
        index = self.first_index + number
        next_at = time.monotonic()
        attempted, confirmed = [], []
        try:
            while not self._stop.is_set():
                attempted.append(index)
                began = time.monotonic()
                try:
                    confirmed.append((index, self.send(index)))
                    with self._lock:
                        self.confirmed_so_far += 1
                except MinitaskError as exc:
                    with self._lock:
                        self.failures[type(exc).__name__] += 1
                except Exception as exc:    # a bug in the client: reported by the test
                    with self._lock:
                        self.unexpected.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - began)
                index += self.threads
                next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 0.2)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            reset_connection()
            with self._lock:
                self.attempted.update(attempted)
                self.confirmed.update(confirmed)


def work_for(index):
    """Seconds of work for task `index`: a few milliseconds, so kills land while tasks run
    (a function of the index, so the threads never share the test's seeded Random)."""
    return (0.0, 0.001, 0.005, 0.01)[index % 4]


# -- checks ------------------------------------------------------------------------------------

class Outcome:
    """What ran of one trace against what was sent."""

    def __init__(self, runs, attempted, confirmed):
        counts = collections.Counter(runs)
        self.runs = len(runs)
        self.ran = set(counts)
        self.lost = sorted(set(confirmed) - self.ran)
        self.strays = sorted(self.ran - set(attempted))
        self.duplicated = sorted(index for index, count in counts.items() if count > 1)
        self.duplicates = self.runs - len(self.ran)

    def summary(self):
        return "runs %d, lost %d, strays %d, duplicates %d%s" % (
            self.runs, len(self.lost), len(self.strays), self.duplicates,
            " (indexes %s)" % _short_list(self.duplicated) if self.duplicated else "")


def _short_list(values, limit=20):
    text = ", ".join(str(value) for value in values[:limit])
    return text + (", ..." if len(values) > limit else "")


def trace_indexes(directory, name):
    return [int(fields[0]) for fields in chaostasks.read_trace(directory, name)]


def wait_until_ran(directory, name, confirmed, timeout=DRAIN_SECONDS):
    """Poll the trace until every confirmed index ran, or the deadline; returns the Outcome
    inputs (the runs) either way: the test asserts on what is missing."""
    confirmed = set(confirmed)
    deadline = time.monotonic() + timeout
    while True:
        runs = trace_indexes(directory, name)
        if confirmed <= set(runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)


def check_at_least_once(cluster, name, producers, label, queue="minitask"):
    """Drain, then assert: nothing confirmed lost, nothing ran that was never sent."""
    if producers.unexpected:
        raise AssertionError("%s: delay() raised unexpected errors: %s"
                             % (label, _short_list(producers.unexpected)))
    runs = wait_until_ran(cluster.tmp_path, name, producers.confirmed)
    settled = _wait_settled(cluster, queue)
    runs = trace_indexes(cluster.tmp_path, name)
    outcome = Outcome(runs, producers.attempted, producers.confirmed)
    print("%s: %d attempted, %d confirmed, %s" % (label, len(producers.attempted),
                                                  len(producers.confirmed), outcome.summary()))
    if outcome.lost:
        raise AssertionError("%s: %d confirmed tasks never ran: %s" % (
            label, len(outcome.lost), _short_list(outcome.lost)))
    if outcome.strays:
        raise AssertionError("%s: tasks ran that were never sent: %s" % (
            label, _short_list(outcome.strays)))
    if not settled:
        raise AssertionError("%s: the queue never settled (messages left ready, unacked or "
                             "delayed after every task ran): %s" % (label,
                                                                   cluster.broker.queue(queue)))
    return outcome


def _wait_settled(cluster, queue, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.queue_settled(queue):
            return True
        time.sleep(0.1)
    return False


def check_final_states(producers, label, timeout=DRAIN_SECONDS, cluster=None):
    """Every confirmed default task (acked when it starts) ends SUCCESS, or FAILURE with
    WorkerLostError; none stays PENDING, RECEIVED or STARTED. Returns the state counts.

    With `cluster`, the broker must also come to list no task as received or started."""
    from minitask.exceptions import TimeoutError, WorkerLostError
    if producers.unexpected:
        raise AssertionError("%s: delay() raised unexpected errors: %s"
                             % (label, _short_list(producers.unexpected)))
    deadline = time.monotonic() + timeout
    states = collections.Counter()
    stuck, wrong = [], []
    for index, result in sorted(producers.confirmed.items()):
        try:
            value = result.get(timeout=max(0.5, deadline - time.monotonic()),
                               propagate=False)
        except TimeoutError:
            stuck.append("%d:%s:%s" % (index, result.id, result.state))
            continue
        state = result.state
        states[state] += 1
        if state == "SUCCESS" and value != index:
            wrong.append("%d: SUCCESS with %r" % (index, value))
        elif state == "FAILURE":
            states["WorkerLostError" if isinstance(value, WorkerLostError)
                   else type(value).__name__] += 1
            if not isinstance(value, WorkerLostError):
                wrong.append("%d: FAILURE with %r" % (index, value))
        elif state != "SUCCESS":
            wrong.append("%d: %s" % (index, state))
    print("%s: final states %s" % (label, dict(states)))
    if stuck:
        raise AssertionError("%s: %d tasks never reached a final state (index:id:state): %s"
                             % (label, len(stuck), _short_list(stuck)))
    if wrong:
        raise AssertionError("%s: tasks ended wrongly: %s" % (label, _short_list(wrong)))
    if cluster is not None:
        def idle():
            tasks = cluster.broker.status()["tasks"]
            return not tasks["received"] and not tasks["started"]
        try:
            wait_for(idle, 30.0, 0.1, "the broker to list no task received or started")
        except AssertionError:
            raise AssertionError("%s: every task is final, yet the broker still lists tasks "
                                 "in flight: %s" % (label, cluster.broker.status()["tasks"]))
    return states


def explain(cluster, name, indexes, limit=10):
    """Print which processes ran these indexes, and the cluster's kill log (for a report)."""
    lines = chaostasks.read_trace(cluster.tmp_path, name)
    wanted = set(str(index) for index in indexes[:limit])
    for fields in lines:
        if fields[0] in wanted:
            print("  ran %s" % " ".join(fields))
    for event in cluster.events:
        print("  event %s" % event)
