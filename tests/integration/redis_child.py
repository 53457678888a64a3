"""A consumer in a process of its own, for tests that kill it: `python redis_child.py URL
QUEUE PREFETCH HANDOVERS`.

It takes PREFETCH deliveries of QUEUE, acks the first HANDOVERS of them as started (handing
them over, as a worker does with tasks that are not acks_late), keeps the rest unacked,
prints one JSON line ``{"tasks": [task ids in delivery order], "consumer": id}`` and then
carries on as a live worker would, renewing its heartbeat and leases, until it is killed.
"""
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from minitask import config, transport  # noqa: E402


def main(url, queue, prefetch, handovers):
    settings = config.Settings({"BROKER_URL": url})
    consumer = transport.consumer_for(settings, [queue], prefetch,
                                      {"hostname": "child", "pid": os.getpid()}, "child")
    consumer.resume()
    deliveries = consumer.connect()
    deadline = time.monotonic() + 30
    while len(deliveries) < prefetch and time.monotonic() < deadline:
        if select.select([consumer], [], [], 0.5)[0]:
            deliveries += [d for d in consumer.read() if d.consumer_tag != consumer.control_tag]
    for delivery in deliveries[:handovers]:
        consumer.ack_started(delivery.delivery_tag)
    consumer.end_turn()
    consumer.flush()
    print(json.dumps({"tasks": [d.message.message_id for d in deliveries],
                      "consumer": consumer.id}), flush=True)
    while True:                         # alive, as a worker whose tasks run long
        if select.select([consumer], [], [], 1.0)[0]:
            consumer.read()
        consumer.end_turn()
        consumer.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
