"""The Redis transport on loopback: what a publish, a consume and a wake-up cost (not run by
CI).

    python3 tests/perf/redis_transport.py [--runs 3] [--messages 20000] [--appendfsync everysec]

Starts its own redis-server (AOF on with the fsync policy given, a temporary folder, a free
port; and a replica on the same machine for the WAIT rows) and stops them at the end. Each
run uses a fresh virtual host. Prints the median (min-max) of the runs:

- publish, one round trip each: `Client.publish` in a loop (a confirmed ``delay()``);
- publish, batched: `Client.publish_many` (100 messages a script, 10 scripts a round trip);
- "raw" rows: the plain Redis commands the transport's scripts stand on, on the same client,
  as the floor to compare with;
- the publish rows again with a replica attached, without and with ``publish_confirm=wait:1``
  (alternating: the cost of WAIT);
- consume + ack at prefetch 10 and 100: a `Consumer` driven as the worker drives it (a
  select loop; every delivery acked; acks said once per turn), the queue filled beforehand;
- wake latency: a consumer blocked with nothing to do, one message published; from the
  publish call to `read()` returning it, p50 and p99;
- memory per queued message: Redis's used_memory grown by N waiting messages, over N.

Messages carry a 260-byte body, as the figures in the design notes do.
"""
import argparse
import os
import select
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from rediskit import RedisServer  # noqa: E402

from minitask import config, protocol as P, transport  # noqa: E402

BODY = b"x" * 260


def message(queue="jobs"):
    return P.encode_message(P.Message(BODY, "", queue, uuid.uuid4().hex, "perf.task",
                                      content_type="application/json"))


def fresh(url_of, **options):
    settings = config.Settings({"BROKER_URL": url_of(vhost="perf-%s" % uuid.uuid4().hex[:8],
                                                     **options)})
    conn = transport.client_for(settings).connect()
    conn.declare_queue("jobs")
    return settings, conn


def publish_one_by_one(url_of, count, **options):
    _settings, conn = fresh(url_of, **options)
    messages = [message() for _ in range(count)]
    started = time.perf_counter()
    for data in messages:
        conn.publish(data)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def publish_batched(url_of, count, **options):
    _settings, conn = fresh(url_of, **options)
    messages = [message() for _ in range(count)]
    started = time.perf_counter()
    conn.publish_many(messages)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def consume_and_ack(url_of, count, prefetch):
    settings, conn = fresh(url_of)
    conn.publish_many([message() for _ in range(count)])
    consumer = transport.consumer_for(settings, ["jobs"], prefetch, {"hostname": "perf"},
                                      "perf")
    consumer.resume()
    started = time.perf_counter()
    got = consumer.connect()            # the first fetch comes with the connection
    done = 0
    while True:
        for delivery in got:
            consumer.ack(delivery.delivery_tag)
            done += 1
        if done >= count:
            break
        consumer.end_turn()
        consumer.flush()
        got = consumer.read() if select.select([consumer], [], [], 5.0)[0] else []
    consumer.end_turn()
    consumer.flush()
    elapsed = time.perf_counter() - started
    consumer.close()
    conn.close()
    return count / elapsed


def wake_latency(url_of, samples):
    settings, conn = fresh(url_of)
    consumer = transport.consumer_for(settings, ["jobs"], 10, {"hostname": "perf"}, "perf")
    consumer.resume()
    for delivery in consumer.connect():
        consumer.ack(delivery.delivery_tag)
    latencies = []
    for _ in range(samples):
        while select.select([consumer], [], [], 0.05)[0]:      # settle: blocked, idle
            consumer.read()
        started = time.perf_counter()
        conn.publish(message())
        got = []
        while not got:
            if select.select([consumer], [], [], 5.0)[0]:
                got = consumer.read()
        latencies.append(time.perf_counter() - started)
        for delivery in got:
            consumer.ack(delivery.delivery_tag)
        consumer.end_turn()
        consumer.flush()
    consumer.close()
    conn.close()
    latencies.sort()
    return (latencies[len(latencies) // 2] * 1000.0,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000.0)


def bytes_per_message(url_of, count):
    _settings, conn = fresh(url_of)
    conn.execute("MEMORY", "PURGE")
    before = int(_info(conn)["used_memory"])
    conn.publish_many([message() for _ in range(count)])
    after = int(_info(conn)["used_memory"])
    conn.purge("jobs")
    conn.close()
    return (after - before) / count


def _info(conn):
    text = conn.execute("INFO", "memory").decode("ascii", "replace")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def summary(values, unit="/s", digits=0):
    def show(value):
        return "{:,.{}f}".format(value, digits)
    return "%s%s (%s-%s)" % (show(statistics.median(values)), unit, show(min(values)),
                             show(max(values)))


def raw_xadd(url_of, count):
    """The floor of a confirmed publish: one plain XADD a round trip, on the same client."""
    from minitask.transport.redis_client import RedisClient
    with RedisClient(url_of()) as client:
        key = "{raw-%s}:s" % uuid.uuid4().hex[:8]
        started = time.perf_counter()
        for _ in range(count):
            client.execute("XADD", key, "*", "m", BODY)
        elapsed = time.perf_counter() - started
        client.execute("DEL", key)
    return count / elapsed


def raw_consume(url_of, count):
    """The floor of consume + ack: XREADGROUP COUNT 100, then XACK + XDEL pipelined."""
    from minitask.transport.redis_client import RedisClient
    with RedisClient(url_of()) as client:
        key = "{raw-%s}:s" % uuid.uuid4().hex[:8]
        client.execute("XGROUP", "CREATE", key, "w", "0", "MKSTREAM")
        client.pipeline([("XADD", key, "*", "m", BODY)] * count)
        started = time.perf_counter()
        done = 0
        while done < count:
            reply = client.execute("XREADGROUP", "GROUP", "w", "c", "COUNT", 100, "STREAMS",
                                   key, ">")
            ids = tuple(entry[0] for entry in reply[0][1])
            client.pipeline([("XACK", key, "w") + ids, ("XDEL", key) + ids])
            done += len(ids)
        elapsed = time.perf_counter() - started
        client.execute("DEL", key)
    return count / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--appendfsync", default="everysec",
                        choices=("always", "everysec", "no"))
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="minitask-perf-")
    primary = RedisServer(folder, "--appendfsync", args.appendfsync).start()
    replica = RedisServer(folder, "--appendfsync", args.appendfsync)
    count = args.messages

    def url_of(**query):
        return primary.url("/0", **query)

    def show(name, run):
        print("%-44s %s" % (name, summary([run() for _ in range(args.runs)])), flush=True)
    try:
        print("Python %s, redis-server %s, appendfsync %s, %d messages, median (min-max) of "
              "%d runs" % (sys.version.split()[0], _server_version(url_of), args.appendfsync,
                           count, args.runs))
        show("raw XADD, one round trip each", lambda: raw_xadd(url_of, count // 4))
        show("publish, one round trip each", lambda: publish_one_by_one(url_of, count // 4))
        show("publish, batched (publish_many)", lambda: publish_batched(url_of, count))
        show("raw XREADGROUP COUNT 100 + XACK + XDEL", lambda: raw_consume(url_of, count))
        show("consume + ack, prefetch 10", lambda: consume_and_ack(url_of, count, 10))
        show("consume + ack, prefetch 100", lambda: consume_and_ack(url_of, count, 100))
        wakes = [wake_latency(url_of, args.samples) for _ in range(args.runs)]
        print("%-44s p50 %s, p99 %s" % ("wake: publish() called -> read() returns it",
                                       summary([w[0] for w in wakes], " ms", 3),
                                       summary([w[1] for w in wakes], " ms", 3)))
        print("%-44s %s" % ("memory per waiting message", summary(
            [bytes_per_message(url_of, count) for _ in range(args.runs)], " B")))
        replica.start("--replicaof", "127.0.0.1", str(primary.port))
        print("with a replica on the same machine, alternating without and with wait:1:")
        one, one_wait, batch, batch_wait = [], [], [], []
        for _ in range(args.runs):
            one.append(publish_one_by_one(url_of, count // 4))
            one_wait.append(publish_one_by_one(url_of, count // 4, publish_confirm="wait:1"))
            batch.append(publish_batched(url_of, count))
            batch_wait.append(publish_batched(url_of, count, publish_confirm="wait:1"))
        print("%-44s %s" % ("publish, one round trip each", summary(one)))
        print("%-44s %s" % ("publish, one round trip each, wait:1", summary(one_wait)))
        print("%-44s %s" % ("publish, batched", summary(batch)))
        print("%-44s %s" % ("publish, batched, WAIT 1 per 1000 messages", summary(batch_wait)))
    finally:
        replica.kill()
        primary.stop()


def _server_version(url_of):
    from minitask.transport.redis_client import RedisClient
    with RedisClient(url_of()) as client:
        return ".".join(map(str, client.server_version))


if __name__ == "__main__":
    main()
