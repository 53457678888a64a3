"""The horizontal proof of the Redis transport: 1, 2 and 4 worker processes on one Redis, as
separate hosts would be, beside the same on the built-in broker (not run by CI).

    python3 tests/perf/redis_scaling.py [--runs 3] [--tasks 20000] [--workers 1,2,4]

Each measurement starts a fresh server: its own redis-server (AOF on, ``appendfsync
everysec``, a temporary folder, a free port) or a built-in broker (journal on, ``--fsync
everysec``), so neither carries an AOF or journal grown by the runs before. It enqueues
``--tasks`` no-op tasks (`minitask.bench.tasks.noop`: results off, acks_late) with
``publish_many``, as bench's scaling workload does, then launches N ``python -m minitask
worker -c 1``, each in its own session (its own process group, as a separate host would be)
and times, as bench's drain does (polling the counter file the tasks append to):

- drain/s from the launch of the workers to the last task done (start-up included);
- drain/s from the first task done to the last (the steady rate).

It also reads the server process's CPU time (utime + stime in /proc/<pid>/stat, all its
threads) just before the launch and at the last task done: server CPU per task, and the rate
at which the server would fill one core (1e6 / µs per task). The workers' start-up and idle
waits cost the server ~10 ms at most, little beside 20,000 tasks. On a machine with few
cores the workers and the server share them, so more workers cannot add throughput; the CPU
per task is then the figure that says where one Redis would saturate with workers on other
hosts.

Workers run with ``-c 1`` so N is the number of task-running processes (each worker is a
main process and one pool child). Rounds alternate which server goes first. Prints the
median (min-max) of ``--runs`` rounds as a markdown table.
"""
import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from rediskit import RedisServer  # noqa: E402

from minitask import protocol as P  # noqa: E402
from minitask.bench.tasks import QUEUE, noop  # noqa: E402
from minitask.bench.work import Lab, count_runs, wait_drained  # noqa: E402
from minitask.config import configure  # noqa: E402
from minitask.transport import connection, reset_connection  # noqa: E402

CONCURRENCY = 1             # pool processes per worker
CHUNK = 5000                # task messages per publish_many call
LATE_RUNS_WAIT = 1.0        # as bench's drain: look again for duplicates after the last run
SERVERS = ("redis", "built-in")


def cpu_seconds(pid):
    """utime + stime of process `pid` (every thread of it), in seconds."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()   # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AnyExited:
    """Several workers as the one `wait_drained` watches: "dead" once any of them exits."""

    def __init__(self, processes):
        self.processes = processes

    def poll(self):
        codes = [p.poll() for p in self.processes if p.poll() is not None]
        return codes[0] if codes else None


def enqueue(url, tasks):
    """Point this process at `url`, declare the bench queue and publish `tasks` noop tasks."""
    settings = configure(BROKER_URL=url)
    reset_connection()
    conn = connection(settings)
    conn.declare_queue(QUEUE)
    conn.bind(QUEUE, settings.DEFAULT_EXCHANGE, QUEUE)
    for start in range(0, tasks, CHUNK):
        conn.publish_many([P.encode_message(noop.build_message((index,),
                                                               settings=settings).encode())
                           for index in range(start, min(tasks, start + CHUNK))])
    reset_connection()


def start_server(kind, lab, folder):
    """A fresh server: ``(url, pid, stop)``."""
    if kind == "redis":
        server = RedisServer(tempfile.mkdtemp(dir=folder), "--appendfsync", "everysec")
        try:
            server.start()
        except BaseException:       # a failed or interrupted start: leave nothing running
            server.kill()
            raise
        return (server.url("/0", vhost="scaling-%s" % uuid.uuid4().hex[:8]),
                server.process.pid, server.stop)
    broker = lab.start_broker("everysec")
    return broker.url, broker.pid, lambda: lab.stop(broker.process)


def drain(kind, workers, tasks, lab, folder):
    """One measurement: a dict of figures (rates None when the drain did not finish)."""
    url, pid, stop = start_server(kind, lab, folder)
    started = []
    try:
        enqueue(url, tasks)
        counter = lab.new_counter()
        cpu_before = cpu_seconds(pid)
        launched = time.perf_counter()
        started = [lab.start_worker(url, CONCURRENCY, counter) for _ in range(workers)]
        t_first, t_done = wait_drained(counter, tasks, launched, AnyExited(started))
        cpu_used = cpu_seconds(pid) - cpu_before
        if t_done is not None:
            time.sleep(LATE_RUNS_WAIT)
        _runs, lost, duplicates = count_runs(counter, tasks)
    finally:
        for worker in started:
            lab.stop(worker)
        stop()
    return {"launch": tasks / (t_done - launched) if t_done else None,
            "steady": tasks / (t_done - t_first) if t_done and t_first else None,
            "cpu_us": cpu_used / tasks * 1e6, "lost": lost, "duplicates": duplicates}


def summary(values, digits=0):
    """median (min-max), or n/a when a run did not finish."""
    if any(value is None for value in values):
        return "n/a"
    show = "{:,.%df}" % digits
    return "%s (%s-%s)" % (show.format(statistics.median(values)), show.format(min(values)),
                           show.format(max(values)))


def print_table(results, worker_counts, tasks, runs):
    print("\n%s no-op tasks (results off, acks_late), workers `-c %d` each in its own process "
          "group; median (min-max) of %d runs; %d CPU cores (%d usable by this process)\n"
          % (format(tasks, ","), CONCURRENCY, runs, os.cpu_count(),
             len(os.sched_getaffinity(0))))
    print("| server | workers | drain/s from launch | drain/s first->last "
          "| server CPU µs/task | 1-core saturation, tasks/s | lost / dup |")
    print("|---|---|---|---|---|---|---|")
    for workers in worker_counts:
        for kind in SERVERS:
            rows = results[kind, workers]
            saturation = [1e6 / row["cpu_us"] if row["cpu_us"] else None for row in rows]
            print("| %s | %d | %s | %s | %s | %s | %d / %d |" % (
                kind, workers, summary([r["launch"] for r in rows]),
                summary([r["steady"] for r in rows]), summary([r["cpu_us"] for r in rows], 1),
                summary(saturation), sum(r["lost"] for r in rows),
                sum(r["duplicates"] for r in rows)))
    print("\nserver CPU = utime+stime of redis-server (AOF everysec) or of the built-in broker "
          "(journal fsync everysec), from the workers' launch to the last task done. With "
          "workers and server sharing %d cores, more workers cannot add throughput: the CPU "
          "per task says where the server alone would fill a core." % os.cpu_count())


def _interrupt(signum, frame):
    raise KeyboardInterrupt         # SIGTERM cleans up as Ctrl-C does


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    args = parser.parse_args()
    worker_counts = [int(n) for n in args.workers.split(",")]
    signal.signal(signal.SIGTERM, _interrupt)
    folder = tempfile.mkdtemp(prefix="minitask-scaling-")
    results = {(kind, n): [] for kind in SERVERS for n in worker_counts}
    try:
        with Lab() as lab:
            for run in range(args.runs):
                order = SERVERS if run % 2 == 0 else SERVERS[::-1]
                for workers in worker_counts:
                    for kind in order:
                        row = drain(kind, workers, args.tasks, lab, folder)
                        results[kind, workers].append(row)
                        print("run %d, %s, %d workers: %s/s first->last, %.1f µs CPU/task"
                              % (run + 1, kind, workers,
                                 "n/a" if row["steady"] is None else "%.0f" % row["steady"],
                                 row["cpu_us"]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(results, worker_counts, args.tasks, args.runs)


if __name__ == "__main__":
    main()
