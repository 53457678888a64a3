"""Workflows while the broker and the worker are killed (kill -9) on overlapping schedules:
every chain reaches its end, every chord's body is released once and runs with all its
header's results, nothing waits forever."""

import collections
import glob
import os
import re
import threading
import time

import itflow
from minitask import chord
from minitask.exceptions import BrokerConnectionError, TimeoutError
from minitask.transport import reset_connection

SEND_FOR = 6.0          # seconds of sending while processes are killed
CHORD_SIZE = 50
CHAIN_LENGTH = 5


def test_chains_and_chords_survive_kill_9_of_broker_and_worker(broker, start_worker,
                                                                tmp_path):
    workers = [start_worker(modules="itflow")]
    stop = threading.Event()
    kills = collections.Counter()

    def killer():
        # broker at 1.0 and 3.5 s, worker at 2.0 and 4.5 s: each kill overlaps the other's
        # recovery (the worker reconnects to a broker that is replaying).
        for at, what in ((1.0, "broker"), (2.0, "worker"), (3.5, "broker"), (4.5, "worker")):
            if stop.wait(max(0.0, started + at - time.monotonic())):
                return
            if what == "broker":
                broker.kill()
                broker.start()
            else:
                workers[-1].kill()
                workers.append(start_worker(name="w%d" % (len(workers) + 1),
                                            modules="itflow", ready=False))
            kills[what] += 1

    chains, chords, unsure = [], [], 0
    started = time.monotonic()
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        n = 0
        while time.monotonic() - started < SEND_FOR:
            n += 1
            try:
                if n % 2:
                    workflow = itflow.step.s(n, 1)
                    for _ in range(CHAIN_LENGTH - 1):
                        workflow = workflow | itflow.step.s(1)
                    chains.append((workflow.delay(), n + CHAIN_LENGTH))
                else:
                    result = chord((itflow.part.s(i) for i in range(CHORD_SIZE)),
                                   itflow.join.s("bodies"))()
                    chords.append(result)
            except (BrokerConnectionError, TimeoutError):
                unsure += 1             # sent or not: it has no confirm, so it is not counted
                reset_connection()
    finally:
        stop.set()
        thread.join()
    assert kills == {"broker": 2, "worker": 2}
    assert len(chains) >= 3 and len(chords) >= 3
    for result, expected in chains:
        assert result.get(timeout=60) == expected
    for result in chords:
        assert result.get(timeout=60) == sum(range(CHORD_SIZE))
    released = collections.Counter()
    for path in glob.glob(os.path.join(str(tmp_path), "broker-*.log")):
        with open(path) as log:
            released.update(re.findall(r"chord (\S+): every header result is in", log.read()))
    assert {result.id: released[result.id] for result in chords} \
        == {result.id: 1 for result in chords}
    runs = collections.Counter(itflow_trace(tmp_path, "bodies"))
    assert all(runs[result.id] >= 1 for result in chords)
    print("workflows under kill -9: %d chains and %d chords of %d sent, all completed; "
          "%d sends unconfirmed; bodies released twice: 0; bodies run twice "
          "(at-least-once): %d; kills: %s"
          % (len(chains), len(chords), CHORD_SIZE, unsure,
             sum(1 for count in runs.values() if count > 1), dict(kills)))


def itflow_trace(directory, name):
    path = os.path.join(str(directory), "trace-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]
