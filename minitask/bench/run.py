"""The workloads of `python -m minitask bench` (the command itself is in `minitask.bench`).

Workloads (issue 11), each on its own freshly started broker (journal on, ``--fsync
everysec``, a scratch folder, a free port) unless ``--broker URL`` names one; workers are
always the bench's own (they count runs into its counter file) and consume only the bench's
queue (`tasks.QUEUE`)::

    floor    pure-Python localhost TCP: echo round trip p50/p99, one-way 200-byte msgs/s
    drain    N x noop.delay(i) (confirms on, results off, acks_late), then one worker -c C:
             enqueue/s, drain/s from worker launch and first->last task, lost, duplicates
    rtt      sequential echo.delay(i).get() (results on), the first 20 dropped: p50/p99/max
    chord    chord(echo.s(i) for 1,000 i)(total.s()), one after the other (the first one
             dropped): seconds from sending it to its body's result, median/min/max
    broker   broker only, 100-byte bodies, one publisher (confirms, a window of 100) and one
             consumer (acks): msgs/s with --fsync everysec, then with --fsync always
    memory   1M queued and, on a second broker, 1M countdown messages due tomorrow: RSS and
             journal bytes per message, restart time after kill -9
    scaling  drain/s first->last at 10k, 100k and 1M tasks (enqueued with publish_many
             pipelining of prebuilt task messages), and the per-task cost ratio 1M / 10k
    chaos    (``--chaos [--duration S]``, `minitask.bench.chaos`) acks_late tasks under load
             while the broker and workers are killed with kill -9 and restarted: confirmed,
             completed, lost, duplicates, recovery time p50/max

``--broker`` applies to drain, rtt, chord and scaling; floor needs no broker, and broker, memory and
chaos measure (or kill) broker processes of their own, so they always start them.

Adding a workload: write ``run_<name>(bench) -> Outcome``, add it to
`WORKLOADS`; its figures become ``<name>`` in the JSON and its rows a block of the table.
Methods match ``../shared/peers/run.py`` and ``limits.py``, so the figures compare with the
peers' (see `minitask.bench.work`).
"""

import contextlib
import json
import os
import platform
import signal
import sys
import textwrap
import time

from .. import protocol as P
from ..canvas import chord
from ..config import configure, get_settings
from . import DEFAULT_TASKS, WORKLOAD_NAMES
from .chaos import run_chaos
from .tasks import QUEUE, echo, noop, total
from .work import (
    BODY_BYTES, Lab, Outcome, Progress, consume_all, count_runs, journal_bytes, mp_context,
    percentile, raw_messages, rss_bytes, tcp_floor, wait_drained,
)
from ..exceptions import MinitaskError
from ..transport import connection, reset_connection
from ..transport.builtin import Connection

__all__ = ["run", "WORKLOADS", "Outcome"]
RTT_CALLS = 500             # at the default --tasks; scaled with it
CHORD_SIZE = 1000           # header tasks, at the default --tasks; scaled with it
CHORD_RUNS = 5              # after one dropped (it includes the worker's start-up)
WARM_CALLS = 20             # round trips dropped: they include the worker's start-up
BROKER_MESSAGES = 10        # per task of --tasks, for each fsync policy: ~1 s at the default
BROKER_WINDOW = 100         # publisher window: unconfirmed messages in flight
MEMORY_MESSAGES = 1000000
SCALING_POINTS = (10000, 100000, 1000000)
CHUNK = 5000                # messages per publish_many call, so progress can be shown
LATE_DUPLICATES_WAIT = 1.0  # as the peers' harness: look again for runs after the last one
DAY = 86400.0
BROKER_QUEUE = "minitask.bench.broker"


class Bench:
    """One run's options, processes, floor and progress line, handed to every workload."""

    def __init__(self, args, lab, progress):
        self.args = args
        self.lab = lab
        self.progress = progress
        self.tasks = args.tasks
        self.concurrency = args.concurrency or os.cpu_count() or 1
        self.floor = None           # floor figures, once measured
        multiplier = getattr(args, "prefetch_multiplier", None)
        if multiplier:
            lab.worker_args = ["--prefetch-multiplier", str(multiplier)]

    @property
    def worker_label(self):
        """How the bench's workers run, for the notes under each workload."""
        return " ".join(["one worker -c %d" % self.concurrency] + self.lab.worker_args)

    @contextlib.contextmanager
    def broker(self):
        """The URL of the broker to use: ``--broker``, or a fresh one stopped afterwards."""
        if self.args.broker:
            yield self.args.broker
            return
        broker = self.lab.start_broker("everysec")
        try:
            yield broker.url
        finally:
            self.lab.stop(broker.process)

    def client(self, url):
        """Point this process's tasks at `url`; declare (and empty) the bench queue."""
        settings = configure(BROKER_URL=url)
        reset_connection()
        conn = connection(settings)
        conn.declare_queue(QUEUE)
        conn.bind(QUEUE, settings.DEFAULT_EXCHANGE, QUEUE)
        if self.args.broker:
            conn.purge(QUEUE)       # leftovers of an interrupted run would count as strays
        return conn

    def ratio(self, value, kind):
        """A figure's cost as a multiple of the floor's (1x is what the machine allows)."""
        if not self.floor or not value:
            return ""
        if kind == "rtt":           # a per-call time against the echo round trip
            return "%.1fx RTT" % (value / self.floor["tcp_echo_p50_ms"])
        if kind == "rtt99":
            return "%.1fx RTT p99" % (value / self.floor["tcp_echo_p99_ms"])
        if kind == "call":          # sequential confirmed calls per second
            return "%.1fx RTT" % (1000.0 / value / self.floor["tcp_echo_p50_ms"])
        return "%.0fx 1-way" % (self.floor["tcp_oneway_msgs_per_s"] / value)


def _connect(url):
    settings = get_settings()
    return Connection(url, secret=settings.BROKER_SECRET, ca_file=settings.BROKER_CA_FILE,
                      timeout=60.0, client="minitask-bench").connect()


def _guarantee(conn, *parts):
    broker = conn.status()["broker"]
    journal = ("journal fsync %s" % broker["fsync"]) if broker["persistent"] \
        else "journal off (--no-persist)"
    return ", ".join(parts + (journal,))


def _rate(count, seconds):
    return count / seconds if seconds and seconds > 0 else None


def _publish(bench, conn, messages, total, label):
    """publish_many in chunks (a window of `BROKER_WINDOW`), updating the progress line."""
    bench.progress.start(label)
    done, chunk = 0, []
    for data in messages:
        chunk.append(data)
        if len(chunk) >= CHUNK:
            conn.publish_many(chunk, window=BROKER_WINDOW)
            done += len(chunk)
            chunk = []
            bench.progress.update(done, total)
    if chunk:
        conn.publish_many(chunk, window=BROKER_WINDOW)


# -- workloads ---------------------------------------------------------------------------------

def run_floor(bench):
    bench.progress.start("floor: TCP echo")
    latencies, one_way = tcp_floor(bench.lab)
    figures = {"tcp_echo_p50_ms": percentile(latencies, 0.50) * 1e3,
               "tcp_echo_p99_ms": percentile(latencies, 0.99) * 1e3,
               "tcp_oneway_msgs_per_s": one_way}
    bench.floor = figures
    rows = [("TCP echo round trip p50", "%.3f ms" % figures["tcp_echo_p50_ms"], "1x"),
            ("TCP echo round trip p99", "%.3f ms" % figures["tcp_echo_p99_ms"], ""),
            ("TCP one way, 200 B", "%s msgs/s" % _n(one_way), "1x")]
    return Outcome(figures, rows, "blocking sockets, TCP_NODELAY, 200-byte frames, an echo "
                   "server process", "none: no broker")


def _drain(bench, url, tasks, enqueue):
    """Enqueue with `enqueue(conn, tasks)`, then run one worker until every task ran."""
    conn = bench.client(url)
    guarantee = _guarantee(conn, "at-least-once", "confirms", "acks_late")
    counter = bench.lab.new_counter()
    started = time.perf_counter()
    enqueue(conn, tasks)
    enqueue_s = time.perf_counter() - started
    bench.progress.start("drain of %s tasks" % _n(tasks))
    launched = time.perf_counter()
    worker = bench.lab.start_worker(url, bench.concurrency, counter)
    try:
        t_first, t_done = wait_drained(counter, tasks, launched, worker, bench.progress)
        if t_done is not None:
            time.sleep(LATE_DUPLICATES_WAIT)
        _runs, lost, duplicates = count_runs(counter, tasks)
    finally:
        bench.lab.stop(worker)
    figures = {"tasks": tasks, "concurrency": bench.concurrency,
               "enqueue_per_s": _rate(tasks, enqueue_s),
               "drain_per_s": _rate(tasks, t_done and t_done - launched),
               "drain_steady_per_s": _rate(tasks, t_done and t_first and t_done - t_first),
               "lost": lost, "duplicates": duplicates}
    return figures, guarantee


def _delay_each(bench):
    def enqueue(conn, tasks):
        bench.progress.start("enqueue of %s tasks with delay()" % _n(tasks))
        for index in range(tasks):
            noop.delay(index)
            if not index % 500:
                bench.progress.update(index, tasks)
    return enqueue


def run_drain(bench):
    with bench.broker() as url:
        figures, guarantee = _drain(bench, url, bench.tasks, _delay_each(bench))
    rows = [("enqueue, delay() each", _per_s(figures["enqueue_per_s"]),
             bench.ratio(figures["enqueue_per_s"], "call")),
            ("drain from worker launch", _per_s(figures["drain_per_s"]),
             bench.ratio(figures["drain_per_s"], "one_way")),
            ("drain first->last task", _per_s(figures["drain_steady_per_s"]),
             bench.ratio(figures["drain_steady_per_s"], "one_way")),
            ("lost / duplicates", "%d / %d" % (figures["lost"], figures["duplicates"]), "")]
    note = "%s no-op tasks, %s" % (_n(bench.tasks), bench.worker_label)
    return Outcome(figures, rows, note, guarantee, lost=figures["lost"])


def run_rtt(bench):
    calls = max(WARM_CALLS * 2, RTT_CALLS * bench.tasks // DEFAULT_TASKS)
    latencies = []
    with bench.broker() as url:
        conn = bench.client(url)
        guarantee = _guarantee(conn, "at-least-once", "acks_late", "results stored")
        worker = bench.lab.start_worker(url, bench.concurrency)
        bench.progress.start("%d round trips" % calls)
        clock = time.perf_counter
        try:
            for index in range(calls):
                started = clock()
                value = echo.delay(index).get(timeout=60)
                latencies.append(clock() - started)
                if value != index:
                    raise MinitaskError("round trip %d returned %r" % (index, value))
                bench.progress.update(index + 1, calls)
        finally:
            bench.lab.stop(worker)
    measured = [seconds * 1e3 for seconds in latencies[WARM_CALLS:]]
    figures = {"calls": calls, "p50_ms": percentile(measured, 0.50),
               "p99_ms": percentile(measured, 0.99), "max_ms": max(measured)}
    rows = [("delay(i).get() p50", "%.3f ms" % figures["p50_ms"],
             bench.ratio(figures["p50_ms"], "rtt")),
            ("delay(i).get() p99", "%.3f ms" % figures["p99_ms"],
             bench.ratio(figures["p99_ms"], "rtt99")),
            ("delay(i).get() max", "%.3f ms" % figures["max_ms"], "")]
    note = "%d sequential calls (first %d dropped), %s" % (
        calls, WARM_CALLS, bench.worker_label)
    return Outcome(figures, rows, note, guarantee)


def run_chord(bench):
    size = max(10, CHORD_SIZE * bench.tasks // DEFAULT_TASKS)
    seconds = []
    with bench.broker() as url:
        conn = bench.client(url)
        guarantee = _guarantee(conn, "at-least-once", "acks_late", "results stored",
                               "the body held by the broker")
        worker = bench.lab.start_worker(url, bench.concurrency)
        bench.progress.start("%d chords of %d" % (CHORD_RUNS + 1, size))
        clock = time.perf_counter
        try:
            for run in range(CHORD_RUNS + 1):
                started = clock()
                value = chord(echo.s(index) for index in range(size))(total.s()).get(
                    timeout=300)
                seconds.append(clock() - started)
                if value != size * (size - 1) // 2:
                    raise MinitaskError("chord %d's body returned %r" % (run, value))
                bench.progress.update(run + 1, CHORD_RUNS + 1)
        finally:
            bench.lab.stop(worker)
    measured = sorted(seconds[1:])
    figures = {"size": size, "runs": len(measured), "median_s": percentile(measured, 0.50),
               "min_s": measured[0], "max_s": measured[-1]}
    rows = [("send to body result, median", "%.3f s" % figures["median_s"], ""),
            ("min / max", "%.3f / %.3f s" % (figures["min_s"], figures["max_s"]), ""),
            ("per header task", "%.1f us" % (figures["median_s"] / size * 1e6), "")]
    note = "chord of %s echo tasks and a sum, %d runs (one more dropped), %s" % (
        _n(size), len(measured), bench.worker_label)
    return Outcome(figures, rows, note, guarantee)


def _pump(bench, fsync, count):
    """Publish `count` messages through a fresh broker to one consumer; msgs/s end to end."""
    broker = bench.lab.start_broker(fsync)
    consumer = None
    try:
        parent, child = mp_context().Pipe()
        consumer = bench.lab.start_child(consume_all, broker.url, get_settings().BROKER_SECRET,
                                         BROKER_QUEUE, count, BROKER_WINDOW * 2, child)
        if not parent.poll(60.0) or parent.recv() != "ready":
            raise MinitaskError("the bench consumer did not start")
        conn = _connect(broker.url)
        messages = list(raw_messages(count, BROKER_QUEUE))
        started = time.perf_counter()
        _publish(bench, conn, messages, count, "broker, fsync %s" % fsync)
        if not parent.poll(120.0):
            raise MinitaskError("the bench consumer stalled (fsync %s)" % fsync)
        received = parent.recv()
        elapsed = time.perf_counter() - started
        conn.close()
        if received != count:
            raise MinitaskError("the bench consumer got %d of %d messages (fsync %s)"
                                % (received, count, fsync))
        return count / elapsed
    finally:
        if consumer is not None:
            bench.lab.stop(consumer)
        bench.lab.stop(broker.process)


def run_broker(bench):
    count = BROKER_MESSAGES * bench.tasks
    figures = {"everysec_msgs_per_s": _pump(bench, "everysec", count),
               "always_msgs_per_s": _pump(bench, "always", count)}
    rows = [("publish->ack, fsync everysec", _per_s(figures["everysec_msgs_per_s"], "msgs/s"),
             bench.ratio(figures["everysec_msgs_per_s"], "one_way")),
            ("publish->ack, fsync always", _per_s(figures["always_msgs_per_s"], "msgs/s"),
             bench.ratio(figures["always_msgs_per_s"], "one_way"))]
    note = ("%s messages of %d B through a fresh broker per policy, one publisher "
            "(window %d), one consumer" % (_n(count), BODY_BYTES, BROKER_WINDOW))
    return Outcome(figures, rows, note, "confirms after the journal write (always: after "
                   "its fsync too), acks; persistent messages")


def _fill(bench, kind, not_before):
    """A broker holding MEMORY_MESSAGES messages, measured; then killed and restarted."""
    lab = bench.lab
    broker = lab.start_broker("everysec")
    conn = _connect(broker.url)
    conn.declare_queue(BROKER_QUEUE)
    baseline = rss_bytes(broker.pid)
    _publish(bench, conn, raw_messages(MEMORY_MESSAGES, BROKER_QUEUE, not_before),
             MEMORY_MESSAGES, "memory: %s messages" % kind)
    rss = rss_bytes(broker.pid)
    journal = journal_bytes(broker.data_dir)
    _check_held(conn, kind)
    conn.close()
    lab.kill(broker.process)
    bench.progress.start("memory: restart with %s messages" % kind)
    restarted = lab.start_broker("everysec", data_dir=broker.data_dir, timeout=1800.0)
    try:
        conn = _connect(restarted.url)
        _check_held(conn, kind)
        conn.close()
    finally:
        lab.stop(restarted.process)
    per_message = None if rss is None else (rss - baseline) / MEMORY_MESSAGES
    return per_message, journal / MEMORY_MESSAGES, restarted.ready_s


def _check_held(conn, kind):
    queue = [q for q in conn.status()["queues"] if q["name"] == BROKER_QUEUE][0]
    held = queue["ready"] if kind == "queued" else queue["delayed"]
    if held != MEMORY_MESSAGES:
        raise MinitaskError("the broker holds %d %s messages, expected %d"
                            % (held, kind, MEMORY_MESSAGES))


def run_memory(bench):
    rss_q, journal_q, restart_q = _fill(bench, "queued", 0.0)
    rss_d, journal_d, restart_d = _fill(bench, "delayed", time.time() + DAY)
    figures = {"messages": MEMORY_MESSAGES, "rss_bytes_per_queued": rss_q,
               "rss_bytes_per_delayed": rss_d, "journal_bytes_per_queued": journal_q,
               "restart_s": restart_q}
    rows = [("RSS per queued message", _bytes(rss_q), ""),
            ("RSS per delayed message", _bytes(rss_d), ""),
            ("journal per queued message", _bytes(journal_q), ""),
            ("journal per delayed message", _bytes(journal_d), ""),
            ("restart, %s queued (kill -9)" % _short(MEMORY_MESSAGES), "%.2f s" % restart_q, ""),
            ("restart, %s delayed (kill -9)" % _short(MEMORY_MESSAGES), "%.2f s" % restart_d,
             "")]
    note = ("%s messages of %d B (delayed: countdown of a day), a fresh broker each; "
            "restart = launch to ready line" % (_n(MEMORY_MESSAGES), BODY_BYTES))
    return Outcome(figures, rows, note, "persistent messages, journal fsync everysec")


def _prebuilt(bench):
    def enqueue(conn, tasks):
        settings = get_settings()
        messages = (P.encode_message(noop.build_message((index,), settings=settings).encode())
                    for index in range(tasks))
        _publish(bench, conn, messages, tasks, "enqueue of %s tasks" % _n(tasks))
    return enqueue


def run_scaling(bench):
    points, rows, lost, guarantee = [], [], 0, ""
    for tasks in SCALING_POINTS:
        with bench.broker() as url:
            figures, guarantee = _drain(bench, url, tasks, _prebuilt(bench))
        lost += figures["lost"]
        points.append({"tasks": tasks, "drain_per_s": figures["drain_steady_per_s"]})
        rows.append(("drain first->last, %s" % _short(tasks),
                     _per_s(figures["drain_steady_per_s"]),
                     bench.ratio(figures["drain_steady_per_s"], "one_way")))
        if figures["lost"] or figures["duplicates"]:
            rows.append(("  lost / duplicates", "%d / %d" % (figures["lost"],
                                                             figures["duplicates"]), ""))
    first, last = points[0]["drain_per_s"], points[-1]["drain_per_s"]
    ratio = first / last if first and last else None
    rows.append(("per-task cost %s / %s" % (_short(SCALING_POINTS[-1]),
                                             _short(SCALING_POINTS[0])),
                 "%.2f" % ratio if ratio else "n/a", ""))
    note = ("enqueued with publish_many pipelining of prebuilt task messages (not "
            "delay()), %s" % bench.worker_label)
    return Outcome({"points": points, "cost_ratio_1m_10k": ratio}, rows, note, guarantee,
                   lost=lost)


WORKLOADS = {"floor": run_floor, "drain": run_drain, "rtt": run_rtt, "chord": run_chord,
             "broker": run_broker, "memory": run_memory, "scaling": run_scaling,
             "chaos": run_chaos}
if tuple(WORKLOADS) != WORKLOAD_NAMES:           # the command lists them without importing us
    raise ImportError("minitask.bench.WORKLOAD_NAMES is out of step with minitask.bench.run.WORKLOADS")


# -- output ------------------------------------------------------------------------------------

def _n(value):
    return format(int(round(value)), ",")


def _short(count):
    for size, suffix in ((1000000, "M"), (1000, "k")):
        if count >= size and count % size == 0:
            return "%d%s" % (count // size, suffix)
    return _n(count)


def _per_s(value, unit="/s"):
    return "n/a" if value is None else "%s %s" % (_n(value), unit)


def _bytes(value):
    return "n/a" if value is None else "%.0f B" % value


def _rounded(value):
    if isinstance(value, float):        # 4 significant digits, or 0.1 for big rates
        return float("%.4g" % value) if abs(value) < 1000 else round(value, 1)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _print_block(name, outcome, seconds):
    print("%s (%.1f s)" % (name, seconds))
    print(textwrap.fill(outcome.setup, 80, initial_indent="  setup: ",
                        subsequent_indent="    "))
    print(textwrap.fill(outcome.guarantee, 80, initial_indent="  guarantee: ",
                        subsequent_indent="    "))
    for label, value, ratio in outcome.rows:
        print(("  %-32s %16s  %s" % (label, value, ratio)).rstrip())
    print()


def _machine():
    """What the figures depend on besides the code. `bytecode_cache` is False under
    PYTHONDONTWRITEBYTECODE (or -B): every process the bench starts then compiles the package
    from source, and "drain from worker launch" includes that."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "bytecode_cache": not sys.dont_write_bytecode}


# -- running -------------------------------------------------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt        # SIGTERM stops the bench as Ctrl-C does: cleaning up


def run(args, names):
    """Run the named workloads; raises MinitaskError (exit code 1) if any task was lost."""
    progress = Progress(sys.stderr if args.json else sys.stdout)
    report = {"machine": _machine()}
    lost = {}
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:              # not the main thread: leave signals alone
        previous = None
    if not args.json:
        print("minitask bench: Python %s, %d CPUs; %s\n" % (
            report["machine"]["python"], report["machine"]["cpus"],
            "broker %s" % args.broker if args.broker else
            "a fresh broker per workload (journal on, fsync everysec)"))
        if not report["machine"]["bytecode_cache"]:
            print("note: no bytecode cache (PYTHONDONTWRITEBYTECODE): every process compiles\n"
                  "  minitask from source, and 'drain from worker launch' includes that.\n")
    try:
        with Lab() as lab:
            bench = Bench(args, lab, progress)
            for name in names:
                started = time.perf_counter()
                try:
                    outcome = WORKLOADS[name](bench)
                finally:
                    progress.clear()
                report[name] = _rounded(outcome.figures)
                if outcome.lost:
                    lost[name] = outcome.lost
                if not args.json:
                    _print_block(name, outcome, time.perf_counter() - started)
                    sys.stdout.flush()
    finally:
        reset_connection()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report, indent=2))
    elif "floor" in names and len(names) > 1:
        print(textwrap.fill(
            "x floor: each figure's cost as a multiple of what the machine allows: RTT = time "
            "per call / TCP echo round trip (same percentile); 1-way = TCP one-way msgs/s / "
            "rate. 1x is the limit; lower is better.", 80))
    if lost:
        raise MinitaskError("tasks lost: %s" % ", ".join(
            "%d in %s" % (count, name) for name, count in lost.items()))
    return 0
