"""A short crash run on Redis, end to end: producers keep calling ``delay()`` on acks-late
tasks while redis-server (AOF, ``appendfsync everysec``) is killed with ``kill -9`` and
restarted on the same port and folder, and while a worker is killed with ``kill -9`` and
replaced. Every task whose ``delay()`` returned must run at least once; runs twice are
allowed (at-least-once) and counted. Skips, saying why, where redis-server is missing.

A kill of the redis-server process loses nothing it answered: Redis writes the AOF before it
replies, and the page cache outlives the process (power loss is another matter; see the
README's "What differs").
"""
import os
import random
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ittasks  # noqa: E402
from cluster import Worker  # noqa: E402
from rediskit import (  # noqa: E402
    REDIS_SERVER, SKIP_REASON, RedisBroker, RedisServer, wait_for,
)

from minitask import config  # noqa: E402
from minitask.exceptions import MinitaskError  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

ROUNDS = 2                  # each: two kills of redis-server, one of a worker
TRACE = "crash"


class Producer(threading.Thread):
    """Sends ``record_late(TRACE, i)`` for i = 0, 1, ... until stopped; an index is
    confirmed when ``delay()`` returned, and sent again (a new index) when it raised."""

    def __init__(self):
        super().__init__(daemon=True)
        self.confirmed, self.refused = [], 0
        self.halt = threading.Event()

    def run(self):
        index = 0
        while not self.halt.is_set():
            try:
                ittasks.record_late.delay(TRACE, index)
                self.confirmed.append(index)
            except MinitaskError:
                self.refused += 1       # Redis was down past retry_seconds: not confirmed
            index += 1
            time.sleep(0.002)


def restart(server, rng):
    server.kill()
    time.sleep(rng.uniform(0.05, 0.3))                  # down for a moment
    server.start()


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path, "--appendfsync", "everysec")
    try:
        yield server.start()
    finally:
        server.kill()


def test_kill_9_of_redis_and_of_workers_under_load_loses_no_confirmed_task(redis, tmp_path):
    seed = int(os.environ.get("MINITASK_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    broker = RedisBroker(redis, "crash", heartbeat=2, handover_grace=2, retry_seconds=30)
    config.configure(BROKER_URL=broker.url)
    reset_connection()
    os.environ["ITTASKS_DIR"] = str(tmp_path)
    workers = [Worker(broker, tmp_path, "w0", ["-c", "2"]).wait_ready()]
    producer = Producer()
    try:
        producer.start()
        for round_ in range(ROUNDS):
            # redis-server killed while a worker runs tasks ...
            time.sleep(rng.uniform(0.3, 0.8))
            restart(redis, rng)
            # ... and, with the worker killed too, while a backlog waits in Redis alone.
            time.sleep(rng.uniform(0.3, 0.8))
            workers[-1].kill()                          # kill -9, pool processes included
            time.sleep(rng.uniform(0.3, 0.8))
            restart(redis, rng)
            workers.append(Worker(broker, tmp_path, "w%d" % (round_ + 1), ["-c", "2"])
                           .wait_ready())
        time.sleep(0.5)
        producer.halt.set()
        producer.join(60)
        confirmed = set(producer.confirmed)
        assert len(confirmed) > 100, "too little load to say anything: %d" % len(confirmed)

        def runs():
            return [int(line) for line in ittasks.read_trace(tmp_path, TRACE)]
        try:
            wait_for(lambda: confirmed <= set(runs()), timeout=60, what="every task to run")
        except AssertionError:
            pass                        # said below, with what is missing
        done = runs()
        lost = sorted(confirmed - set(done))
        assert not lost, "%d of %d confirmed tasks never ran (seed %d), e.g. %s" % (
            len(lost), len(confirmed), seed, lost[:20])
        duplicates = len(done) - len(set(done))
        strays = set(done) - confirmed - set(range(max(confirmed) + 1))
        assert not strays, "tasks ran that were never sent: %s" % sorted(strays)[:20]
        print("redis crash run (MINITASK_CHAOS_SEED=%d): %d kills of redis-server, %d of "
              "workers; confirmed %d, refused %d, runs %d, lost 0, duplicates %d"
              % (seed, 2 * ROUNDS, ROUNDS, len(confirmed), producer.refused, len(done), duplicates))
    finally:
        producer.halt.set()
        for worker in workers:
            worker.proc.close()
        reset_connection()
        config.reset()
