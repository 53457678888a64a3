"""A consumer of several queues is served from all of them, not from whichever comes first."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import brokerkit  # noqa: E402
from minitask import protocol as P  # noqa: E402


def test_a_consumer_of_several_queues_gets_messages_from_each_of_them():
    broker = brokerkit.Broker()
    publisher = broker.connect()
    consumer = broker.connect()
    names = ["emails", "billing", "images"]
    for name in names:
        publisher.ok(P.DECLARE_QUEUE, {"queue": name})
        for i in range(50):
            publisher.publish(body=b"%s-%d" % (name.encode(), i), routing_key=name)
    broker.turn()
    consumer.qos(6)
    for name in names:
        consumer.consume(name)
    broker.turn()
    bodies = [d.message.body for d in consumer.deliveries()]
    assert len(bodies) == 6
    assert sorted(body.split(b"-")[0].decode() for body in bodies) == sorted(names * 2)
