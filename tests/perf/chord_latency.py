"""Chord of N no-op header tasks: seconds from sending it to its body's result.

Starts its own broker (journal in a temporary folder) and one worker (-c 2, the tests'
``itflow`` tasks), sends a few chords one after the other and prints the median:

    python3 tests/perf/chord_latency.py [--size 1000] [--runs 5]

Not run by CI; a figure for the closing note, not an assertion.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import itflow  # noqa: E402
from cluster import Broker, Worker  # noqa: E402
from minitask import chord, config  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402


class _Path(str):
    def __truediv__(self, name):
        return _Path(os.path.join(self, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        broker = Broker(_Path(scratch)).start()
        worker = None
        try:
            config.configure(BROKER_URL=broker.url)
            reset_connection()
            os.environ["ITTASKS_DIR"] = scratch
            worker = Worker(broker, _Path(scratch), "bench", modules="itflow").wait_ready()
            times = []
            for _ in range(options.runs + 1):           # the first one warms up
                started = time.perf_counter()
                result = chord((itflow.part.s(i) for i in range(options.size)),
                               itflow.tsum.s())()
                assert result.get(timeout=120) == sum(range(options.size))
                times.append(time.perf_counter() - started)
            times = times[1:]
            print("chord of %d no-ops, send to body result: median %.3fs (min %.3fs, max %.3fs,"
                  " %d runs)" % (options.size, statistics.median(times), min(times),
                                 max(times), len(times)))
        finally:
            if worker is not None:
                worker.proc.close()
            broker.proc.close()


if __name__ == "__main__":
    main()
