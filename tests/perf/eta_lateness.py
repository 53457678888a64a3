#!/usr/bin/env python3
"""How late do countdown tasks start? (Not run by CI: a measurement for the issue notes.)

    python3 tests/perf/eta_lateness.py [--tasks 500] [--spread 5]

Starts a broker and a worker (-c 2) in a scratch folder, sends `--tasks` tasks with
countdowns spread evenly over `--spread` seconds, and prints the p50/p99/max of
(time the task body started - its ETA), read from a file each task appends to.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--spread", type=float, default=5.0)
    args = parser.parse_args()
    from cluster import Broker, Worker
    from minitask import config
    import pathlib
    import ittasks
    folder = pathlib.Path(tempfile.mkdtemp(prefix="minitask-eta-"))
    os.environ["ITTASKS_DIR"] = str(folder)
    broker = Broker(folder).start()
    config.configure(BROKER_URL=broker.url)
    worker = Worker(broker, folder, "eta")
    try:
        worker.wait_ready()
        now = time.time()
        etas = {}
        for i in range(args.tasks):
            eta = now + 1.0 + args.spread * i / args.tasks
            result = ittasks.when.apply_async(("eta",), eta=eta)
            etas[result.id] = (result, eta)
        lateness = sorted(result.get(timeout=args.spread + 30) - eta
                          for result, eta in etas.values())
        pick = lambda q: lateness[min(len(lateness) - 1, int(q * len(lateness)))]
        print("countdown tasks: %d over %.1fs; lateness p50 %.2f ms, p99 %.2f ms, max %.2f ms,"
              " min %.2f ms" % (len(lateness), args.spread, pick(0.5) * 1000, pick(0.99) * 1000,
                                lateness[-1] * 1000, lateness[0] * 1000))
    finally:
        worker.proc.close()
        broker.proc.close()


if __name__ == "__main__":
    main()
