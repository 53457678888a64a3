"""Where a Redis round trip's time goes: `echo.delay(i).get()` against one worker, with
wall-clock marks in the client, the worker's main process and its pool processes.

    python3 tests/perf/redis_rtt_timeline.py redis://127.0.0.1:6379/0?vhost=timeline [CALLS]

It runs a worker (`-c 2`) with a few of its methods wrapped to note when they begin and end
(`time.time()`: one clock for every process on the machine), makes CALLS sequential round
trips (500; 50 first to warm up), and prints, for each mark, the median microseconds after
`delay()` was called that it came, in order. The marks cost a few microseconds each, so the
total is somewhat above `bench rtt`'s. Not run by CI. Marks:

    delay_end     delay() returned in the client
    read0/read1   the worker's consumer read() of what its reader got (the FETCH reply)
    arm0/arm1     ...within it, sending the reader's next XREAD and FETCH
    tochild       the worker wrote the job to a pool process
    c_recv1       the pool process has read it; c_exec0/c_exec1: it ran the task
    c_flush1      it wrote its report; report: the worker read it
    say0/say1     the worker's one pipelined round trip (result, ack) began / was answered
    client_recv   the client's socket got the result; get_end: get() returned

Each call counts the first of each mark between its delay() and its get()'s return. A mark
that often comes after that (say1, when the client has its result before the worker has
its own reply) shows in fewer calls, or with the small median of the next call's window.
"""

import bisect
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

MARKS_DIR = "TIMELINE_MARKS_DIR"    # not MINITASK_*: that is a setting


def _wrap(cls, name, before, after, note):
    function = getattr(cls, name)

    def wrapped(*args, **kwargs):
        note(before)
        try:
            return function(*args, **kwargs)
        finally:
            if after:
                note(after)
    setattr(cls, name, wrapped)


def run_worker(argv):
    """The worker, with its marks written to files in $MINITASK_TIMELINE_DIR (one per
    process, appended as they come: a pool process never runs atexit)."""
    from minitask.cli import main
    from minitask.transport import redis_consumer
    from minitask.worker import pool, worker
    files = {}

    def note(mark):
        pid = os.getpid()
        fd = files.get(pid)
        if fd is None:
            fd = files[pid] = os.open(os.path.join(os.environ[MARKS_DIR], "%d.marks" % pid),
                                      os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"%s %.6f\n" % (mark.encode(), time.time()))

    _wrap(redis_consumer.Consumer, "read", "read0", "read1", note)
    _wrap(redis_consumer.Consumer, "_arm", "arm0", "arm1", note)
    _wrap(redis_consumer.Consumer, "_say", "say0", "say1", note)
    _wrap(worker.Worker, "_flush_child", "tochild", None, note)
    _wrap(worker.Worker, "_finished", "report", None, note)
    _wrap(pool._ChildRunner, "receive", "c_recv0", "c_recv1", note)
    _wrap(pool._ChildRunner, "flush", "c_flush0", "c_flush1", note)
    setup = pool._ChildRunner.setup

    def setup_and_mark(runner):
        setup(runner)
        execute = runner.execute

        def marked(*args, **kwargs):
            note("c_exec0")
            try:
                return execute(*args, **kwargs)
            finally:
                note("c_exec1")
        runner.execute = marked
    pool._ChildRunner.setup = setup_and_mark
    sys.argv = ["minitask"] + argv
    return main()


def measure(url, calls):
    from minitask.bench.tasks import QUEUE, echo
    from minitask.config import configure
    from minitask.transport import connection, redis_client, reset_connection
    settings = configure(BROKER_URL=url)
    reset_connection()
    conn = connection(settings)
    conn.declare_queue(QUEUE)
    conn.bind(QUEUE, settings.DEFAULT_EXCHANGE, QUEUE)
    conn.purge(QUEUE)
    received = []
    recv = redis_client._Link.recv

    def noted_recv(link, timeout):
        count = recv(link, timeout)
        received.append(time.time())
        return count
    redis_client._Link.recv = noted_recv
    marks_dir = tempfile.mkdtemp(prefix="minitask-timeline-")
    worker = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", "worker", "--broker", url,
         "-I", "minitask.bench.tasks", "-Q", QUEUE, "-c", "2", "-l", "WARNING"],
        cwd=ROOT, start_new_session=True, env=dict(os.environ, **{MARKS_DIR: marks_dir}))
    calls_made = []
    try:
        for i in range(50):
            echo.delay(i).get(timeout=60)
        for i in range(calls):
            start = time.time()
            result = echo.delay(i)
            delayed = time.time()
            result.get(timeout=60)
            calls_made.append((start, delayed, time.time()))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    marks = []
    for path in glob.glob(os.path.join(marks_dir, "*.marks")):
        with open(path) as handle:
            marks += [(float(at), mark) for mark, at in (line.split() for line in handle)]
        os.unlink(path)
    os.rmdir(marks_dir)
    marks.sort()
    times = [at for at, _mark in marks]
    offsets = {}
    for start, delayed, done in calls_made:
        first = {}
        for at, mark in marks[bisect.bisect_left(times, start):bisect.bisect_right(times, done)]:
            first.setdefault(mark, at)
        first["delay_end"] = delayed
        first["client_recv"] = received[bisect.bisect_right(received, done) - 1]
        first["get_end"] = done
        for mark, at in first.items():
            offsets.setdefault(mark, []).append((at - start) * 1e6)
    for mark, values in sorted(offsets.items(), key=lambda item: statistics.median(item[1])):
        print("%-12s in %3d of %d calls   median %6.0f us" % (
            mark, len(values), calls, statistics.median(values)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(run_worker(sys.argv[2:]))
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 500)
