"""Celery's chord beside `python -m minitask bench chord`: the same workload on Celery.

A chord of N header tasks that return their argument and a body that sums them; seconds from
sending it to the body's result, median of RUNS after one dropped. Celery runs it with a Redis
result backend (its ``rpc://`` backend cannot run chords), on a Redis broker and on a RabbitMQ
broker, with one prefork worker of the same concurrency as the bench's (-c CPUs).

Run with the peers' venv after ``../shared/peers/setup.sh`` (Redis on 6379, RabbitMQ on 5672):

    ~/.cache/minitask-peers/venv/bin/python tests/perf/celery_chord.py [--size 1000] [--runs 5]

Not run by CI and never imported by minitask: Celery is a peer to compare with, not a
dependency. This file is also the worker's app module (``celery -A celery_chord``).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from celery import Celery, chord

BROKERS = {"redis": "redis://localhost:6379/0", "rabbitmq": "amqp://guest:guest@localhost:5672//"}
RESULTS = "redis://localhost:6379/1"

app = Celery("celery_chord", broker=BROKERS[os.environ.get("CHORD_BROKER", "redis")],
             backend=RESULTS)
app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=4)


@app.task(name="chord.echo")
def echo(index):
    return index


@app.task(name="chord.total")
def total(values):
    return sum(values)


def _worker(broker, concurrency):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, CHORD_BROKER=broker, PYTHONPATH=here)
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    return subprocess.Popen([celery, "-A", "celery_chord", "worker", "-P", "prefork", "-c",
                             str(concurrency), "--loglevel", "WARNING", "--without-gossip",
                             "--without-mingle", "--without-heartbeat"],
                            cwd=here, env=env, start_new_session=True)


def measure(broker, size, runs, concurrency):
    app.backend.client.flushdb()
    worker = _worker(broker, concurrency)
    try:
        seconds = []
        for run in range(runs + 1):
            started = time.perf_counter()
            value = chord(echo.s(i) for i in range(size))(total.s()).get(timeout=600)
            seconds.append(time.perf_counter() - started)
            assert value == size * (size - 1) // 2, (run, value)
        return sorted(seconds[1:])
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--brokers", nargs="*", default=sorted(BROKERS))
    options = parser.parse_args()
    concurrency = os.cpu_count() or 1
    for broker in options.brokers:
        if os.environ.get("CHORD_BROKER") != broker:     # the app's broker is set at import
            subprocess.run([sys.executable, os.path.abspath(__file__), "--size",
                            str(options.size), "--runs", str(options.runs), "--brokers",
                            broker], env=dict(os.environ, CHORD_BROKER=broker), check=True)
            continue
        measured = measure(broker, options.size, options.runs, concurrency)
        print("celery %s broker, redis results: chord of %d, send to body result: median "
              "%.3f s (min %.3f, max %.3f, %d runs, -c %d)"
              % (broker, options.size, statistics.median(measured), measured[0], measured[-1],
                 len(measured), concurrency))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
