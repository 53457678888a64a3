"""Throughput of the RESP codec and of the Redis client on loopback (not run by CI).

    python3 tests/perf/resp_throughput.py [--runs 5] [--url redis://127.0.0.1:6379/0]

Without --url it starts its own redis-server (AOF off, a temporary folder, a free port) and
stops it at the end. Prints the median (min-max) of the runs, each figure per second. The
codec figures need no server. The "idle check" rows compare a round trip with and without
the poll() the client makes before sending, which is what lets it reconnect safely after a
server closed an idle connection.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from minitask.transport import resp  # noqa: E402
from minitask.transport.redis_client import RedisClient  # noqa: E402

BODY = b"x" * 260            # the task body size SCALEOUT measured with


def rate(count, function):
    started = time.perf_counter()
    function()
    return count / (time.perf_counter() - started)


def codec_encode_xadd(n=20000):
    commands = [("XADD", "{app}:q:default:p4", "*", "body", BODY)] * n
    return rate(n, lambda: resp.encode_commands(commands))


def codec_decode(data, n):
    def run():
        decoder = resp.Decoder()
        for start in range(0, len(data), 65536):          # as reads of 64 KiB arrive
            decoder.feed(data[start:start + 65536])
            for _reply in decoder.replies():
                pass
    return rate(n, run)


def xreadgroup_reply(entries):
    """What XREADGROUP COUNT `entries` returns for one stream, in RESP2."""
    items = b"".join(b"*2\r\n$15\r\n1700000000000-%d\r\n*2\r\n$4\r\nbody\r\n$%d\r\n%s\r\n"
                     % (n % 10, len(BODY), BODY) for n in range(entries))
    return b"*1\r\n*2\r\n$17\r\n{app}:q:default:4\r\n*%d\r\n%s" % (entries, items)


def client_figures(url):
    client = RedisClient(url)
    client.execute("DEL", "{perf}:s")
    client.execute("XGROUP", "CREATE", "{perf}:s", "g", "$", "MKSTREAM")
    figures = {}
    # With and without the idle check, alternating in small batches so that the machine's
    # noise falls on both alike; the ratio is the median of the batches' ratios.
    link = client._link
    idle_input = link.idle_input
    checked, unchecked = [], []
    for _ in range(10):
        checked.append(rate(500, lambda: [client.execute("PING") for _ in range(500)]))
        link.idle_input = lambda: None
        unchecked.append(rate(500, lambda: [client.execute("PING") for _ in range(500)]))
        link.idle_input = idle_input
    figures["PING, one round trip each"] = statistics.median(checked)
    figures["PING, one round trip each, no idle check"] = statistics.median(unchecked)
    figures["idle check's cost, % of a round trip"] = 100 * statistics.median(
        1 - a / b for a, b in zip(checked, unchecked))
    for size in (100, 1000):
        batch = [("PING",)] * size
        figures["PING pipelined x%d" % size] = rate(
            50 * size, lambda: [client.pipeline(batch) for _ in range(50)])
    figures["XADD 260 B, one round trip each"] = rate(5000, lambda: [
        client.execute("XADD", "{perf}:s", "*", "body", BODY) for _ in range(5000)])
    client.execute("XTRIM", "{perf}:s", "MAXLEN", 0)
    xadds = [("XADD", "{perf}:s", "*", "body", BODY)] * 100
    figures["XADD 260 B pipelined x100"] = rate(20000, lambda: [client.pipeline(xadds)
                                                                for _ in range(200)])

    def consume():
        for _ in range(200):
            reply = client.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 100, "STREAMS",
                                   "{perf}:s", ">")
            ids = [entry[0] for entry in reply[0][1]]
            client.pipeline([("XACK", "{perf}:s", "g") + tuple(ids),
                             ("XDEL", "{perf}:s") + tuple(ids)])
    figures["XREADGROUP COUNT 100 + XACK + XDEL"] = rate(20000, consume)
    client.close()
    return figures


def start_server(folder):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", folder],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, "redis://127.0.0.1:%d/0" % port
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--url", help="a Redis to measure against (default: start one)")
    args = parser.parse_args()
    pong = b"+PONG\r\n" * 100000
    bulk = (b"$260\r\n" + BODY + b"\r\n") * 50000
    nested = xreadgroup_reply(100) * 200
    runs = {}
    process, folder = None, None
    url = args.url
    if url is None and shutil.which("redis-server"):
        folder = tempfile.mkdtemp(prefix="resp-perf-")
        process, url = start_server(folder)
    try:
        for _ in range(args.runs):
            figures = {
                "codec: encode XADD 260 B": codec_encode_xadd(),
                "codec: decode +PONG": codec_decode(pong, 100000),
                "codec: decode 260 B bulk strings": codec_decode(bulk, 50000),
                "codec: decode XREADGROUP entries (100 a reply)": codec_decode(nested, 20000),
            }
            if url is not None:
                figures.update(client_figures(url))
            for name, value in figures.items():
                runs.setdefault(name, []).append(value)
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
            shutil.rmtree(folder, ignore_errors=True)
    print("Python %s, %d runs, per second: median (min-max)" % (sys.version.split()[0],
                                                               args.runs))
    for name, values in runs.items():
        print("  %-48s %9.1f  (%.1f-%.1f)" % (name, statistics.median(values), min(values),
                                              max(values)))


if __name__ == "__main__":
    main()
