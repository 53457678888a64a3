#!/usr/bin/env python3
"""What the attacks of the security issue cost a broker and a good client. (Not run by CI.)

    python3 tests/perf/security_attacks.py [--seconds 20] [--attacks none,lockout,partial,guess]

Starts a broker with a secret on a free port (default limits: 1,024 connections, 256 MiB of
unfinished frames), then for each attack in turn, against a fresh broker:

    none      nothing: the good client alone, for comparison
    lockout   1,100 sockets from 127.0.0.1, each sending half a HELLO and holding it; each
              one the broker closes is opened again at once (`--reopen-after` seconds later)
    partial   30 connections with the secret, each sending 15 MiB of a 16 MiB PUBLISH and
              holding it (with `--reconnect`, each one the broker cuts off connects again
              and sends it all again: a flood of 15 MiB frames)
    guess     one guesser in a row, and 64 in parallel, with wrong secrets

The attacker runs in its own process (this script, `--role`), so it does not share a GIL
with the good client. The good client is three threads: one keeps a connection (TCP, with
the secret) and publishes with a confirm each time as fast as it can; the others open a new
connection every 50 ms and publish once, one over TCP from 127.0.0.1 (the attacker's own
address), one over the local socket (another peer: this user). It prints the broker's peak
RSS (sampled every 20 ms), the publisher's throughput and slowest confirm, each newcomer's
successes, failures and slowest handshake, and the attacker's counters.
"""

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from minitask import protocol as P  # noqa: E402
from minitask.protocol import auth_proof  # noqa: E402
from minitask.transport.builtin import Connection  # noqa: E402
from minitask.exceptions import MinitaskError  # noqa: E402

SECRET = "perf secret"
MIB = 1024 * 1024


def raise_fd_limit(wanted=8192):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- the attackers (run in a child process) ----------------------------------------------------

def attack_lockout(port, seconds, reopen_after, count=1100):
    hello = P.encode_json(P.HELLO, 1, {"protocol": 1, "nonce": "ab" * 32})
    selector = selectors.DefaultSelector()
    counts = {"opened": 0, "closed": 0, "errors_503": 0, "connect_failed": 0}
    due = [0.0] * count
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.monotonic()
        ready, due = [w for w in due if w <= now], [w for w in due if w > now]
        for _ in ready:
            sock = socket.socket()
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(hello[:len(hello) // 2])
            except OSError:
                sock.close()
                counts["connect_failed"] += 1
                due.append(now + max(reopen_after, 0.01))
                continue
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            counts["opened"] += 1
        for key, _mask in selector.select(0.01):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if data:
                counts["errors_503"] += data.count(b"\x01\xf7")    # ERROR code 503
                continue
            selector.unregister(key.fileobj)
            key.fileobj.close()
            counts["closed"] += 1
            due.append(time.monotonic() + reopen_after)
    return counts


def _handshake(sock, secret):
    """HELLO and AUTH on a blocking socket: WELCOME, an ERROR's code, or None (closed)."""
    decoder = P.Decoder()

    def read_frame():
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                return frame
            data = sock.recv(65536)
            if not data:
                return None
            decoder.feed(data)
    def outcome(frame):         # WELCOME, or the ERROR's code
        if frame is None or frame[0] != P.ERROR:
            return None if frame is None else frame[0]
        return P.decode_error(frame[2])[0]
    nonce = os.urandom(32).hex()
    sock.sendall(P.encode_json(P.HELLO, 1, {"protocol": 1, "nonce": nonce}))
    frame = read_frame()
    if frame is None or frame[0] != P.CHALLENGE:
        return outcome(frame)
    broker_nonce = P.decode_json(frame[2])["nonce"]
    proof = auth_proof(secret.encode(), "client", nonce, broker_nonce)
    sock.sendall(P.encode_json(P.AUTH, 2, {"proof": proof}))
    return outcome(read_frame())


def attack_partial(port, seconds, reconnect, holders=30, sent=15 * MIB,
                   frame_bytes=16 * MIB):
    body = P.encode_message(P.Message(b"x" * (frame_bytes - 200), routing_key="perf.partial"))
    frame = P.encode_frame(P.PUBLISH, 3, body)[:sent]
    counts = {"sent_bytes": 0, "cut_off": 0, "connections": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def holder():
        while time.monotonic() < deadline:
            sock = socket.create_connection(("127.0.0.1", port))
            try:
                sock.settimeout(5.0)
                if _handshake(sock, SECRET) != P.WELCOME:
                    time.sleep(0.1)
                    continue
                with lock:
                    counts["connections"] += 1
                sock.sendall(frame)
                with lock:
                    counts["sent_bytes"] += len(frame)
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                if not sock.recv(65536):
                    raise ConnectionResetError
                with lock:
                    counts["cut_off"] += 1
            except socket.timeout:
                pass                        # held to the end: what the attacker wants
            except OSError:
                with lock:
                    counts["cut_off"] += 1
            finally:
                sock.close()
            if not reconnect:
                return
    threads = [threading.Thread(target=holder, daemon=True) for _ in range(holders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return counts


def attack_guess(port, seconds, parallel):
    counts = {"refused_401": 0, "dropped_503": 0, "parallel": parallel}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def guesser():
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
                    code = _handshake(sock, "wrong %f" % time.monotonic())
                with lock:
                    if code == P.AUTH_FAILED:
                        counts["refused_401"] += 1
                    elif code == P.UNAVAILABLE:
                        counts["dropped_503"] += 1
            except OSError:
                pass                        # the answer came late: try again
    threads = [threading.Thread(target=guesser, daemon=True) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    counts["refused_per_second"] = round(counts["refused_401"] / seconds, 1)
    return counts


# -- the good client ---------------------------------------------------------------------------

class GoodClient:
    def __init__(self, url):
        self.url = url
        self.published = 0
        self.slowest_confirm = 0.0
        self.errors = []
        # local? -> [connected, [failures], slowest handshake]
        self.newcomers = {False: [0, [], 0.0], True: [0, [], 0.0]}
        self.stop = threading.Event()

    def publisher(self):
        try:
            with Connection(self.url, secret=SECRET, timeout=30.0, local=False) as conn:
                conn.declare_queue("perf.good")
                message = P.Message(b"x" * 100, routing_key="perf.good")
                while not self.stop.is_set():
                    started = time.monotonic()
                    conn.publish(message)
                    self.slowest_confirm = max(self.slowest_confirm,
                                               time.monotonic() - started)
                    self.published += 1
                    if self.published % 1000 == 0:
                        conn.purge("perf.good")
        except MinitaskError as exc:
            self.errors.append(str(exc))

    def newcomer(self, local):
        tally = self.newcomers[local]
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                with Connection(self.url, secret=SECRET, timeout=10.0, local=local) as conn:
                    tally[2] = max(tally[2], time.monotonic() - started)
                    conn.publish(P.Message(b"y", routing_key="perf.good"))
                tally[0] += 1
            except MinitaskError as exc:
                tally[1].append(str(exc)[:120])

    def report(self):
        report = {}
        for local, name in ((False, "tcp"), (True, "local")):
            ok, failed, slowest = self.newcomers[local]
            report["new_%s_ok" % name] = ok
            report["new_%s_failed" % name] = len(failed)
            if failed:
                report["new_%s_failures" % name] = sorted(set(failed))[:2]
            report["new_%s_slowest_handshake_ms" % name] = round(slowest * 1000, 1)
        return report


def rss_of(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_attack(name, seconds, reopen_after, reconnect, folder):
    secret_file = os.path.join(folder, "secret-" + name)
    with open(secret_file, "w") as handle:
        handle.write(SECRET)
    broker = subprocess.Popen(
        [sys.executable, "-m", "minitask", "broker", "--port", "0", "--no-persist",
         "--secret-file", secret_file, "-l", "WARNING"],
        stdout=subprocess.PIPE, stderr=open(os.path.join(folder, name + ".log"), "wb"),
        cwd=ROOT, start_new_session=True)
    attacker = None
    try:
        url = broker.stdout.readline().decode().split()[-1]
        port = int(url.rsplit(":", 1)[1])
        url = "minitask://127.0.0.1:%d" % port
        start_rss = peak = rss_of(broker.pid)
        good = GoodClient(url)
        threads = [threading.Thread(target=good.publisher, daemon=True),
                   threading.Thread(target=good.newcomer, args=(False,), daemon=True),
                   threading.Thread(target=good.newcomer, args=(True,), daemon=True)]
        if name != "none":
            attacker = subprocess.Popen(
                [sys.executable, __file__, "--role", name, "--port", str(port), "--seconds",
                 str(seconds), "--reopen-after", str(reopen_after)]
                + (["--reconnect"] if reconnect else []),
                stdout=subprocess.PIPE, cwd=ROOT)
            time.sleep(1.0)             # the attack is under way before the good client starts
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < seconds - 1.0:
            value = rss_of(broker.pid)
            if value is not None:
                peak = max(peak, value)
            time.sleep(0.02)
        good.stop.set()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        report = {"attack": name, "broker_rss_start_mib": round(start_rss / MIB, 1),
                  "broker_rss_peak_mib": round(peak / MIB, 1),
                  "publishes_per_s": round(good.published / elapsed),
                  "slowest_confirm_ms": round(good.slowest_confirm * 1000, 1),
                  "publisher_errors": good.errors[:3]}
        report.update(good.report())
        if attacker is not None:
            out, _err = attacker.communicate(timeout=seconds + 120)
            report["attacker"] = json.loads(out.decode() or "{}")
        return report
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--attacks", default="none,lockout,partial,guess")
    parser.add_argument("--reopen-after", type=float, default=0.0)
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--role")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    raise_fd_limit()
    if args.role:
        if args.role == "lockout":
            result = attack_lockout(args.port, args.seconds, args.reopen_after)
        elif args.role == "partial":
            result = attack_partial(args.port, args.seconds, args.reconnect)
        else:
            half = args.seconds / 2
            result = {"one_in_a_row": attack_guess(args.port, half, 1),
                      "64_in_parallel": attack_guess(args.port, half, 64)}
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="minitask-security-perf-") as folder:
        for name in args.attacks.split(","):
            print(json.dumps(run_attack(name, args.seconds, args.reopen_after, args.reconnect,
                                        folder)),
                  flush=True)


if __name__ == "__main__":
    main()
