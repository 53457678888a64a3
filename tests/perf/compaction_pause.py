#!/usr/bin/env python3
"""How long does one compaction step hold up the broker's loop? (Not run by CI.)

    python3 tests/perf/compaction_pause.py [--messages 300000] [--keep 0.1]

Builds a journal in a scratch folder the way the broker does (a BrokerState driven through
publish and ack frames, 8 MiB segments), acks all but `--keep` of the messages, then runs
`journal.compact_step()` to the end, as the server does once per loop turn, and prints the
longest and median step, the bytes before and after, and the restart time afterwards.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from minitask import protocol as P  # noqa: E402
from minitask.broker.journal import Journal  # noqa: E402
from minitask.broker.state import BrokerState  # noqa: E402


def turn(state, journal):
    journal.write(state.take_records())
    state.confirm_turn()
    state.dispatch()
    records = state.take_records()
    if records:
        journal.write(records)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300000)
    parser.add_argument("--keep", type=float, default=0.1)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="minitask-compaction-")
    try:
        journal = Journal(folder, fsync="no", segment_bytes=8 * 1024 * 1024)
        state = BrokerState(time.time, journal)
        state.recover()
        session = state.open_session(1)
        state.handle(session, P.HELLO, 1, b'{"protocol": 1}')
        state.handle(session, P.DECLARE_QUEUE, 2, b'{"queue": "q"}')
        state.handle(session, P.QOS, 3, b'{"prefetch_count": 0}')
        state.handle(session, P.CONSUME, 4, b'{"queue": "q"}')
        turn(state, journal)
        body = b"x" * 100
        seq = 10
        for start in range(0, args.messages, 1000):
            for index in range(start, min(args.messages, start + 1000)):
                seq += 1
                state.handle(session, P.PUBLISH, seq, P.encode_message(
                    P.Message(body, routing_key="q", message_id="m%d" % index)))
            turn(state, journal)
            tags = sorted(session.unacked)
            acked = [tag for tag in tags if (tag * 7919) % 1000 >= args.keep * 1000]
            if acked:
                state.handle(session, P.ACK, 0, P.encode_tags(P.ACK, 0, acked)[9:])
            turn(state, journal)
            session.out.clear()          # as if the client read everything:
            session.unsent = 0           # the server would say so after its send
        before = journal.total_bytes()
        steps = []
        while True:
            started = time.perf_counter()
            more = journal.compact_step(state)
            steps.append(time.perf_counter() - started)
            turn(state, journal)
            if not more and not journal.wants_compaction():
                break
        after = journal.total_bytes()
        journal.close()
        started = time.perf_counter()
        again = BrokerState(time.time, Journal(folder, fsync="no"))
        found = again.recover()
        restart = time.perf_counter() - started
        print("messages %d, kept unacked %d; journal %.1f MiB -> %.1f MiB in %d compaction "
              "steps; longest step %.1f ms, median %.2f ms; restart %.2f s, %d messages back"
              % (args.messages, len(session.unacked), before / 2 ** 20, after / 2 ** 20,
                 len(steps), max(steps) * 1000, statistics.median(steps) * 1000, restart,
                 found["messages"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
