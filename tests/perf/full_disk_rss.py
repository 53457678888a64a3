"""The broker's memory while its disk is full and a client keeps retrying (not run by CI).

    sudo python3 tests/perf/full_disk_rss.py [--seconds 60] [--body 4000] [--size 20m]
                                              [--root CHECKOUT] [--data-dir DIR]

Mounts a small tmpfs (root only; or give --data-dir on a small filesystem of your own),
starts a broker from CHECKOUT (default: this one) with its journal there, fills the disk with
persistent publishes of BODY bytes until the broker refuses them, then for SECONDS one client
retries a publish the moment it is refused. Prints the broker's RSS once a second, the
refusals, and how many log lines the broker wrote; then the RSS once the client has left.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def mount_tmpfs(size):
    where = tempfile.mkdtemp(prefix="minitask-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", where],
                   check=True)
    return where


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--body", type=int, default=4000)
    parser.add_argument("--size", default="20m", help="tmpfs size (default 20m)")
    parser.add_argument("--root", default=ROOT, help="the minitask checkout to run")
    parser.add_argument("--data-dir", help="a folder on a small filesystem (no mount)")
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    from minitask import protocol as P
    from minitask.transport.builtin import Connection
    from minitask.exceptions import PublishRefusedError

    mounted = None
    if args.data_dir is None:
        mounted = mount_tmpfs(args.size)
        data_dir = os.path.join(mounted, "data")
    else:
        data_dir = args.data_dir
    log_path = os.path.join(tempfile.mkdtemp(prefix="minitask-full-log-"), "broker.log")
    log = open(log_path, "wb")
    env = dict(os.environ, PYTHONPATH=args.root)
    broker = subprocess.Popen([sys.executable, "-m", "minitask", "broker", "--port", "0",
                               "--data-dir", data_dir, "-l", "INFO"], stdout=subprocess.PIPE,
                              stderr=log, env=env, cwd=args.root, start_new_session=True)
    try:
        url = broker.stdout.readline().decode().split()[-1]
        body = b"x" * args.body
        conn = Connection(url).connect()
        conn.declare_queue("full")
        filled = 0
        while True:
            try:
                conn.publish(P.Message(body, routing_key="full", message_id="fill-%d" % filled,
                                       flags=P.PERSISTENT))
                filled += 1
            except PublishRefusedError as exc:
                print("disk full after %d publishes (%s)" % (filled, exc))
                break
        start = rss_mb(broker.pid)
        print("%6s %10s %12s" % ("second", "RSS MB", "refusals"))
        print("%6d %10.1f %12d" % (0, start, 0))
        refusals, began, next_report, peak = 0, time.monotonic(), 1.0, start
        while time.monotonic() - began < args.seconds:
            try:
                conn.publish(P.Message(body, routing_key="full", message_id="retry",
                                       flags=P.PERSISTENT))
            except PublishRefusedError:
                refusals += 1
            if time.monotonic() - began >= next_report:
                rss = rss_mb(broker.pid)
                peak = max(peak, rss)
                print("%6d %10.1f %12d" % (next_report, rss, refusals))
                next_report += 1.0
        conn.close()
        time.sleep(2.0)                 # the broker settles after the client left
        after = rss_mb(broker.pid)
        log.flush()
        with open(log_path, "rb") as handle:
            text = handle.read()
        print("refusals: %d in %.0f s; broker RSS %.1f MB at the start, %.1f MB at most, "
              "%.1f MB after the client left" % (refusals, args.seconds, start, peak, after))
        print("broker log: %d lines, %d bytes (%s)" % (text.count(b"\n"), len(text), log_path))
        for line in text.decode("utf-8", "replace").splitlines()[-5:]:
            print("  " + line)
    finally:
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait()
        log.close()
        if mounted is not None:
            subprocess.run(["umount", mounted], check=False)
            shutil.rmtree(mounted, ignore_errors=True)


if __name__ == "__main__":
    main()
