"""What the broker says when a middle segment of its journal is deleted, cut short or corrupted
(not run by CI; the unit tests pin the behaviour, this shows it on a real broker).

    python3 tests/perf/journal_faults.py [--segments 14] [--segment-bytes 16384]

A broker (``--fsync always``, small segments) gets confirmed messages until its journal has
SEGMENTS segments, and is killed with SIGKILL. Then, on a fresh copy each time, segment 8 is
deleted, cut to half its size, or has 10 bytes of its last record overwritten, and a broker
started on the copy: its journal log lines are printed, with the messages it still holds.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "unit"))

from journalkit import read_records  # noqa: E402
from minitask import protocol as P  # noqa: E402
from minitask.transport.builtin import Connection  # noqa: E402


def start(data_dir, log_path, segment_bytes=None):
    command = [sys.executable, "-m", "minitask", "broker", "--port", "0", "--data-dir",
               data_dir, "--fsync", "always", "-l", "INFO"]
    if segment_bytes:
        command = [sys.executable, os.path.join(ROOT, "tests", "chaos", "smallsegments.py"),
                   str(segment_bytes)] + command[3:]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
    line = process.stdout.readline().decode()
    if not line.startswith("minitask broker listening on"):
        log.close()
        raise SystemExit("the broker did not start:\n" + open(log_path).read())
    return process, line.split()[-1], log


def kill(process, log):
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()


def segments(data_dir):
    journal = os.path.join(data_dir, "journal")
    return sorted(os.path.join(journal, n) for n in os.listdir(journal) if n.endswith(".seg"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=14)
    parser.add_argument("--segment-bytes", type=int, default=16384)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minitask-faults-")
    pristine = os.path.join(work, "pristine")
    process, url, log = start(pristine, os.path.join(work, "make.log"), args.segment_bytes)
    published = 0
    with Connection(url).connect() as conn:
        conn.declare_queue("q")
        while len(segments(pristine)) < args.segments:
            conn.publish(P.Message(b"m" * 1000, routing_key="q", message_id="m%05d" % published,
                                   flags=P.PERSISTENT))
            published += 1
    kill(process, log)
    os.remove(os.path.join(pristine, "broker.lock"))
    print("%d confirmed messages in %d segments" % (published, len(segments(pristine))))

    def corrupt(path):
        start, end, _kind, _payload = read_records(path)[-1]
        with open(path, "r+b") as handle:
            handle.seek(end - 10)
            handle.write(b"\xee" * 10)

    def cut(path):
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)

    for name, fault in (("deleted", os.unlink), ("cut to half", cut),
                        ("10 bytes of its last record overwritten", corrupt)):
        copy = os.path.join(work, name.split()[0])
        shutil.copytree(pristine, copy)
        fault(segments(copy)[7])
        log_path = os.path.join(work, name.split()[0] + ".log")
        process, url, log = start(copy, log_path)
        try:
            with Connection(url).connect() as conn:
                held = conn.declare_queue("q")["messages"]
                lost = conn.status()["broker"]["journal_records_lost"]
        finally:
            kill(process, log)
        print("\nsegment 8 %s: the broker holds %d of %d messages; status says "
              "journal_records_lost %d" % (name, held, published, lost))
        with open(log_path) as handle:
            for line in handle:
                if "journal" in line and ("ERROR" in line or "WARNING" in line):
                    print("  " + line.rstrip().replace(work, "<tmp>"))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
