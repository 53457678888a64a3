"""What the beat sent, read from the workers' logs, for the beat tests of both transports.

A run's own time is no proof of its send: after a broker restart, or when a killed worker's
beat comes back to another, a beat sent on time runs late, and two runs come closer than the
beat's period although nothing was sent twice (CI saw runs 0.72 s then 0.29 s apart across a
broker restart). So these tests judge the sends, from the beat's "sent" log lines, and check
that each send ran once.
"""

import re
import time

SENT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): .*\] beat: sent (\S+)\[")


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def sends(workers, name):
    """When the beat sent `name`, from the workers' logs (epoch seconds, in order)."""
    times = []
    for worker in workers:
        for line in worker.output().splitlines():
            match = SENT.match(line)
            if match and match.group(3) == name:
                stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                times.append(stamp + int(match.group(2)) / 1000.0)
    return sorted(times)


def assert_each_beat_sent_once_and_run_once(workers, name, ran):
    """No beat sent twice (sends most of a period apart), and each send ran once: as many
    runs as sends logged up to the last run (a send logs after its confirm, so it may log a
    little after its own run; the next send comes a period later)."""
    sent = sends(workers, name)
    assert sent and min(gaps(sent)) > 0.3, sent
    assert len(ran) == len([t for t in sent if t <= ran[-1] + 0.25]), (sent, ran)
