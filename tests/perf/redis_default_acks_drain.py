"""Drain of default-acks tasks (acked as they start, handed over) on Redis, for old/new trees.

`python -m minitask bench` drains acks-late tasks; a change to what a handover costs (SETTLE
with handover) needs tasks acked as they start. This enqueues N no-op tasks with the
default acks on the queue ``perf.handover``, starts one worker (-c 2) and times it from its
launch to the last task run (a counter file, as the bench counts). With several trees it
runs them alternately, ROUNDS times, and prints each run and the medians:

    python3 tests/perf/redis_default_acks_drain.py redis://127.0.0.1:6390/0 OLD_TREE NEW_TREE

Not run by CI; a figure for a closing note, not an assertion. This file is also the
worker's task module (``-I redis_default_acks_drain``).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE = "perf.handover"


def define_task():
    from minitask import task

    @task(name="perf.handover.noop", ignore_result=True, routing_key=QUEUE)
    def noop(index):
        with open(os.environ["PERF_COUNTER"], "ab") as counter:
            counter.write(b"x")
    return noop


if os.environ.get("PERF_COUNTER") and "minitask" in sys.modules:
    noop = define_task()          # imported by the worker (-I): register the task there


def one_run(tree, url, tasks):
    """One drain with `tree`'s minitask, in a fresh process; returns tasks a second."""
    code = ("import sys; sys.path[:0] = [%r, %r]; import redis_default_acks_drain as m; "
            "print(m.drain(%r, %d))" % (tree, HERE, url, tasks))
    out = subprocess.check_output([sys.executable, "-c", code], cwd=tree, text=True)
    return float(out.strip().splitlines()[-1])


def drain(url, tasks):
    os.environ["MINITASK_BROKER_URL"] = url
    counter = tempfile.NamedTemporaryFile(prefix="perf-handover-", delete=False).name
    os.environ["PERF_COUNTER"] = counter
    from minitask import config
    from minitask.transport import connection
    task = define_task()
    conn = connection()
    conn.declare_queue(QUEUE)
    conn.bind(QUEUE, config.get_settings().DEFAULT_EXCHANGE, QUEUE)
    conn.purge(QUEUE)
    for index in range(tasks):
        task.delay(index)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2]))
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "minitask", "worker", "-I",
                               "redis_default_acks_drain", "-Q", QUEUE, "-c", "2",
                               "-l", "WARNING"], env=env)
    try:
        deadline = started + 300
        while os.path.getsize(counter) < tasks:
            if time.perf_counter() > deadline or worker.poll() is not None:
                raise RuntimeError("the drain did not finish (worker exit %s)" % worker.poll())
            time.sleep(0.002)
        return tasks / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait()
        os.unlink(counter)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    figures = {tree: [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            figures[tree].append(one_run(os.path.abspath(tree), args.url, args.tasks))
            print("%s: %.0f tasks/s" % (tree, figures[tree][-1]), flush=True)
    for tree, values in figures.items():
        print("median %s: %.0f tasks/s (%.0f-%.0f)" % (tree, statistics.median(values),
                                                        min(values), max(values)))


if __name__ == "__main__":
    main()
