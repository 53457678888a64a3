#!/usr/bin/env python3
"""What one publish, delivery, ack and RESULT_SET cost the broker's state, in microseconds.
(Not run by CI: a measurement for the issue notes, e.g. of per-task counting.)

    python3 tests/perf/dispatch_cost.py [--messages 200000] [--runs 5]

In one process, no sockets: times `--messages` PUBLISHes of task messages to a queue with one
consumer, `dispatch()` handing them all over, an ACK for each, then as many RESULT_SETs
(described ones when the broker offers that, plain ones otherwise). Prints the best of
`--runs`. To compare two versions, run it with PYTHONPATH pointing at each, alternating.
"""

import argparse
import os
import sys
import time

if not os.environ.get("PYTHONPATH"):          # else the version PYTHONPATH names
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

from minitask import protocol as P  # noqa: E402
from minitask.broker.session import OPEN  # noqa: E402
from minitask.broker.state import BrokerState  # noqa: E402


def body(frame):
    return frame[P.HEADER.size:]


def one_run(count):
    state = BrokerState(clock=lambda: 1000.0)
    session = state.open_session(1, "perf")
    session.stage = OPEN
    session.MAX_UNSENT = 1 << 40                # measure the state, not its back-pressure
    state.handle(session, P.DECLARE_QUEUE, 0, body(P.encode_json(P.DECLARE_QUEUE, 0,
                                                                 {"queue": "q"})))
    state.handle(session, P.CONSUME, 0, body(P.encode_json(P.CONSUME, 0, {"queue": "q"})))
    messages = [P.encode_message(P.Message(b"x" * 100, "", "q", "id-%d" % i, "tasks.add"))
                for i in range(count)]
    started = time.perf_counter()
    for data in messages:
        state.handle(session, P.PUBLISH, 0, data)
    publish = time.perf_counter() - started
    state.confirm_turn()
    started = time.perf_counter()
    state.dispatch()
    dispatch = time.perf_counter() - started
    acks = [body(P.encode_tags(P.ACK, 0, [tag])) for tag in range(1, count + 1)]
    started = time.perf_counter()
    for frame in acks:
        state.handle(session, P.ACK, 0, frame)
    ack = time.perf_counter() - started
    described = "DESCRIBED" in dir(P)
    frames = [body(P.encode_result(P.RESULT_SET, 0, "id-%d" % i, "SUCCESS", P.STORE, 0.0,
                                   "application/json", b"{}",
                                   *(("tasks.add", 0.001) if described else ())))
              for i in range(count)]
    started = time.perf_counter()
    for frame in frames:
        state.handle(session, P.RESULT_SET, 0, frame)
    results = time.perf_counter() - started
    return [seconds / count * 1e6 for seconds in (publish, dispatch, ack, results)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run(args.messages) for _ in range(args.runs)]
    print("publish %.2f, dispatch %.2f, ack %.2f us/message, RESULT_SET %.2f us/result "
          "(best of %d)" % (tuple(min(r[i] for r in runs) for i in range(4)) + (args.runs,)))


if __name__ == "__main__":
    main()
