"""`python -m minitask bench --chaos`: real work while the broker and workers are killed.

A fixed workload, the same on every machine::

    producers (PRODUCERS processes, RATE tasks/s each)   workers (WORKERS x -c CONCURRENCY)
      noop.delay(i), confirms --> broker (journal, everysec) --> acks_late noop(i)
      | confirmed i -> one file each                              | every run -> counter file
    every KILL_EVERY s, in turn: the broker | every worker | both:
      kill -9 (the whole process group), restart at once on the same port and data folder
      recovery = from the kill to the first task completed after the restart

A workflow producer sends, beside them, WORKFLOW_RATE workflows a second in turn: a chain
of CHAIN_LENGTH echo tasks, and a chord of CHORD_SIZE echo tasks whose body sums them; each
one whose send was confirmed is written down with the result it must end with.

After ``--duration`` seconds the producers stop; the bench waits until every confirmed task
has run (or nothing moves for `STALL_SECONDS`), then counts: confirmed, completed (distinct
tasks that ran), lost (confirmed and never ran: must be 0), duplicates (runs beyond the
first: allowed, acks_late is at-least-once). A producer's ``delay()`` that raised (the broker
gone for longer than the client retries) is not confirmed and not counted as lost; a task
that ran without ever being sent would be a stray, reported as an error. Then every confirmed
workflow must reach its result within WORKFLOW_PATIENCE seconds: completed, or stranded (must
be 0); a chord body the broker queued more than once (its log's "every header result is in"
lines; a body run twice because its worker died is at-least-once, not that) is reported.

Always on brokers of its own (``--broker`` cannot be killed from here). Counting works as for
``drain``: workers append each task's 4-byte index to an ``O_APPEND`` file.
"""

import collections
import logging
import os
import re
import time

from ..canvas import chain, chord
from ..config import configure
from ..exceptions import MinitaskError
from ..result import AsyncResult
from ..transport import reset_connection
from .tasks import INDEX, echo, noop, total
from .work import Outcome, mp_context, percentile

__all__ = ["run_chaos"]
PRODUCERS = 2
RATE = 200.0                # tasks/s per producer: steady work a 2-core machine keeps up with
WORKERS = 2
CONCURRENCY = 2             # pool processes per worker
WARM_UP = 2.0               # seconds of undisturbed work before the first kill
KILL_EVERY = 5.0            # seconds from one recovery to the next kill
TARGETS = ("broker", "workers", "both")
RECOVERY_TIMEOUT = 60.0     # a kill not recovered from by then is reported as a stall
STALL_SECONDS = 60.0        # the final drain gives up when nothing ran for this long
LATE_DUPLICATES_WAIT = 1.0  # as drain: look again for runs after the last one
POLL = 0.002
WORKFLOW_RATE = 2.0         # workflows/s, chains and chords in turn
CHAIN_LENGTH = 5
CHORD_SIZE = 50
WORKFLOW_PATIENCE = 60.0    # seconds after the drain for every workflow to reach its result
RELEASED = re.compile(r"chord (\S+): every header result is in")


class _Cluster:
    """The broker and workers under fire; restarted on the same port and data folder."""

    def __init__(self, lab, counter):
        self.lab = lab
        self.counter = counter
        self.broker = lab.start_broker("everysec", log_level="INFO")
        self.broker_logs = [self.broker.process.log_path]
        self.port = int(self.broker.url.rsplit(":", 1)[1])
        self.workers = [self.start_worker() for _ in range(WORKERS)]

    def start_worker(self):
        return self.lab.start_worker(self.broker.url, CONCURRENCY, self.counter)

    def kill(self, target):
        """kill -9 `target` and start it again; returns when the restart is under way."""
        if target in ("broker", "both"):
            self._kill(self.broker.process)
        if target in ("workers", "both"):
            for worker in self.workers:
                self._kill(worker)
        if target in ("broker", "both"):
            self.broker = self.lab.start_broker("everysec", data_dir=self.broker.data_dir,
                                                port=self.port, log_level="INFO")
            self.broker_logs.append(self.broker.process.log_path)
        if target in ("workers", "both"):
            self.workers = [self.start_worker() for _ in range(WORKERS)]

    def _kill(self, process):
        self.lab.kill(process)
        self.lab.stop(process)          # already dead: only forgets it


def _produce(url, first, stride, rate, confirmed_path, stop, pipe):
    """A producer process: ``noop.delay(i)`` at `rate`/s; each confirmed `i` to its file."""
    # delay() warns on each reconnect; here that is the workload, not news for the table.
    logging.getLogger("minitask.transport").addHandler(logging.NullHandler())
    logging.getLogger("minitask.transport").propagate = False
    configure(BROKER_URL=url)
    reset_connection()
    fd = os.open(confirmed_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    index, attempted, failed = first, 0, 0
    next_at = time.monotonic()
    while not stop.is_set():
        attempted += 1
        try:
            noop.delay(index)
            os.write(fd, INDEX.pack(index))
        except MinitaskError:           # the broker was gone longer than delay() retries
            failed += 1
        index += stride
        next_at = max(next_at + 1.0 / rate, time.monotonic() - 0.2)
        stop.wait(max(0.0, next_at - time.monotonic()))
    os.close(fd)
    pipe.send((attempted, failed))


def _send_workflows(url, rate, sent_path, stop, pipe):
    """The workflow producer: a chain, then a chord, ... at `rate`/s; each confirmed one as a
    line ``<result id> <expected value>`` in its file."""
    logging.getLogger("minitask.transport").addHandler(logging.NullHandler())
    logging.getLogger("minitask.transport").propagate = False
    configure(BROKER_URL=url)
    reset_connection()
    sent, failed = 0, 0
    next_at = time.monotonic()
    with open(sent_path, "a") as record:
        while not stop.is_set():
            sent += 1
            try:
                if sent % 2:
                    result = chain(echo.s(sent), *[echo.s() for _ in range(CHAIN_LENGTH - 1)])()
                    expected = sent
                else:
                    result = chord(echo.s(i) for i in range(CHORD_SIZE))(total.s())
                    expected = CHORD_SIZE * (CHORD_SIZE - 1) // 2
                record.write("%s %d\n" % (result.id, expected))
                record.flush()
            except MinitaskError:       # the broker was gone longer than a send retries
                failed += 1
                reset_connection()
            next_at = max(next_at + 1.0 / rate, time.monotonic() - 0.2)
            stop.wait(max(0.0, next_at - time.monotonic()))
    pipe.send((sent, failed))


def _check_workflows(sent_path, broker_logs, progress):
    """``(confirmed, completed, stranded, bodies queued twice, bodies queued)`` of the
    workflows sent."""
    with open(sent_path) as record:
        confirmed = [line.split() for line in record if line.strip()]
    deadline = time.monotonic() + WORKFLOW_PATIENCE
    completed = 0
    for result_id, expected in confirmed:
        progress.update()
        try:
            value = AsyncResult(result_id).get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:        # noqa: BLE001 - any failure is a stranded workflow
            logging.getLogger(__name__).warning("workflow %s: %s", result_id, exc)
            continue
        completed += value == int(expected)
    released = collections.Counter()
    for path in broker_logs:
        with open(path, errors="replace") as log:
            released.update(RELEASED.findall(log.read()))
    twice = sum(1 for count in released.values() if count > 1)
    return len(confirmed), completed, len(confirmed) - completed, twice, len(released)


def _read_indexes(path):
    with open(path, "rb") as handle:
        data = handle.read()
    return [index for (index,) in INDEX.iter_unpack(data[:len(data) - len(data)
                                                         % INDEX.size])]


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _await_recovery(counter, since, timeout=RECOVERY_TIMEOUT):
    """When the counter first grows past `since` bytes (perf_counter), or None at timeout."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if _size(counter) > since:
            return time.perf_counter()
        time.sleep(POLL)
    return None


def _kill_on_schedule(bench, cluster, duration):
    """Kill in turn until `duration` has passed; returns ``[(target, recovery s or None)]``."""
    kills = []
    began = time.perf_counter()
    next_kill = began + WARM_UP
    while True:
        now = time.perf_counter()
        if next_kill - began >= duration:
            time.sleep(max(0.0, began + duration - now))
            return kills
        bench.progress.update()
        if now < next_kill:             # the workload's schedule, not a wait for something
            time.sleep(min(0.1, next_kill - now))
            continue
        target = TARGETS[len(kills) % len(TARGETS)]
        killed_at = time.perf_counter()
        cluster.kill(target)
        recovered = _await_recovery(cluster.counter, _size(cluster.counter))
        kills.append((target, None if recovered is None else recovered - killed_at))
        next_kill = time.perf_counter() + KILL_EVERY


def _drain(counter, confirmed, progress):
    """Wait until every confirmed index has run, or nothing ran for STALL_SECONDS."""
    last_size, last_move = -1, time.perf_counter()
    while True:
        size = _size(counter)
        now = time.perf_counter()
        if size != last_size:
            if confirmed <= set(_read_indexes(counter)):
                return True
            last_size, last_move = size, now
        elif now - last_move > STALL_SECONDS:
            return False
        progress.update()
        time.sleep(0.05)


def run_chaos(bench):
    lab, duration = bench.lab, bench.args.duration
    counter = lab.new_counter()
    bench.progress.start("chaos: starting")
    cluster = _Cluster(lab, counter)
    bench.client(cluster.broker.url)    # declares the bench queue (durable) before any task
    context = mp_context()
    stop = context.Event()
    producers = []
    for number in range(PRODUCERS):
        parent, child = context.Pipe()
        path = lab.path("confirmed-%d" % number)
        process = lab.start_child(_produce, cluster.broker.url, number, PRODUCERS, RATE, path,
                                  stop, child)
        producers.append((process, parent, path))
    flows_pipe, flows_child = context.Pipe()
    flows_path = lab.path("workflows")
    open(flows_path, "w").close()
    flows = lab.start_child(_send_workflows, cluster.broker.url, WORKFLOW_RATE, flows_path,
                            stop, flows_child)
    bench.progress.start("chaos: %gs of kills under load" % duration)
    kills = _kill_on_schedule(bench, cluster, duration)
    stop.set()
    if not flows_pipe.poll(RECOVERY_TIMEOUT):
        raise MinitaskError("chaos workflow producer did not stop")
    flows_pipe.recv()
    lab.stop(flows)
    attempted = set()
    for number, (process, pipe, _path) in enumerate(producers):
        if not pipe.poll(RECOVERY_TIMEOUT):
            raise MinitaskError("chaos producer %d did not stop" % number)
        count, _failed = pipe.recv()
        attempted.update(range(number, number + count * PRODUCERS, PRODUCERS))
        lab.stop(process)
    confirmed = set()
    for _process, _pipe, path in producers:
        confirmed.update(_read_indexes(path))
    bench.progress.start("chaos: drain")
    if _drain(counter, confirmed, bench.progress):
        time.sleep(LATE_DUPLICATES_WAIT)
    runs = _read_indexes(counter)
    ran = set(runs)
    strays = ran - attempted
    if strays:
        raise MinitaskError("chaos: %d tasks ran that were never sent (e.g. %s)"
                            % (len(strays), sorted(strays)[:5]))
    bench.progress.start("chaos: workflows")
    workflows = _check_workflows(flows_path, cluster.broker_logs, bench.progress)
    return _outcome(kills, confirmed, attempted, runs, ran, duration, workflows)


def _outcome(kills, confirmed, attempted, runs, ran, duration, workflows):
    recoveries = [seconds for _target, seconds in kills if seconds is not None]
    stalled = len(kills) - len(recoveries)
    figures = {"kills": len(kills), "confirmed": len(confirmed), "completed": len(ran),
               "lost": len(confirmed - ran), "duplicates": len(runs) - len(ran),
               "recovery_p50_s": percentile(recoveries, 0.5) if recoveries else None,
               "recovery_max_s": max(recoveries) if recoveries else None,
               "workflows_sent": workflows[0], "workflows_completed": workflows[1],
               "workflows_stranded": workflows[2], "chord_bodies_queued_twice": workflows[3],
               "chord_bodies_queued": workflows[4]}
    by_target = {target: sorted(s for t, s in kills if t == target and s is not None)
                 for target in TARGETS}
    rows = [("kills (kill -9, then restart)", "%d" % len(kills), ", ".join(
                "%s %d" % (t, sum(1 for k, _s in kills if k == t)) for t in TARGETS)),
            ("tasks confirmed", "{:,}".format(len(confirmed)),
             "%s not confirmed" % "{:,}".format(len(attempted - confirmed))),
            ("tasks completed", "{:,}".format(len(ran)), ""),
            ("lost", "%d" % figures["lost"], "must be 0"),
            ("duplicates", "{:,}".format(figures["duplicates"]), "acks_late: at-least-once"),
            ("workflows sent / completed", "%d / %d" % workflows[:2],
             "chains of %d, chords of %d" % (CHAIN_LENGTH, CHORD_SIZE)),
            ("workflows stranded", "%d" % workflows[2], "must be 0"),
            ("chord bodies queued twice", "%d" % workflows[3],
             "must be 0 (of %d queued)" % workflows[4])]
    if recoveries:
        rows.append(("recovery p50 / max", "%.2f / %.2f s" % (figures["recovery_p50_s"],
                                                              figures["recovery_max_s"]), ""))
    for target in TARGETS:
        if by_target[target]:
            rows.append(("  %s kills: p50 / max" % target, "%.2f / %.2f s" % (
                percentile(by_target[target], 0.5), by_target[target][-1]), ""))
    if stalled:
        rows.append(("kills not recovered from", "%d" % stalled,
                     "no task ran within %gs" % RECOVERY_TIMEOUT))
    setup = ("%gs: %d producers at %g tasks/s each (delay(), confirms), %d workers -c %d; "
             "every %gs in turn the broker, every worker, or both killed with kill -9 and "
             "restarted; recovery = kill to the first task completed after the restart"
             "; beside them %g workflows/s" % (duration, PRODUCERS, RATE, WORKERS,
                                                CONCURRENCY, KILL_EVERY, WORKFLOW_RATE))
    return Outcome(figures, rows, setup, "at-least-once, confirms, acks_late, journal fsync "
                   "everysec", lost=figures["lost"] + workflows[2] + workflows[3])
