"""Chord bodies parked in the broker: journalled, compacted, replayed, released once."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from journalkit import Broker  # noqa: E402
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.broker.results import ResultEntry  # noqa: E402


def park(client, body_id, ids, queue="q"):
    message = P.Message(b"{}", routing_key=queue, message_id=body_id, type="tasks.body",
                        headers={"x-chord-wait": list(ids)}, flags=P.PERSISTENT)
    return client.send(P.PUBLISH, P.encode_message(message))


def ready(broker, queue="q"):
    return broker.state.queues[queue].ready


def test_a_parked_body_survives_compaction_and_a_crash_and_is_released_once(tmp_path):
    broker = Broker(tmp_path / "data", segment_bytes=1024)
    client = broker.connect()
    client.declare_queue("q")
    park(client, "body", ["h1", "h2"])
    client.set_result("h1")
    for n in range(40):                 # enough records to seal and compact segments
        client.publish("q", "filler-%d" % n)
        client.purge("q")
    broker.turn()
    broker.compact()
    assert ready(broker) == 0 and len(broker.state.chords) == 1
    broker = broker.reopen()
    assert len(broker.state.chords) == 1 and ready(broker) == 0
    client = broker.connect()
    client.set_result("h2")
    client.set_result("h2")             # the header task ran twice: counted once
    broker.turn()
    assert ready(broker) == 1 and len(broker.state.chords) == 0
    broker = broker.reopen()
    assert ready(broker) == 1 and len(broker.state.chords) == 0


def test_a_body_whose_results_were_written_without_its_release_is_released_on_replay(
        tmp_path):
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    park(client, "body", ["h1"])
    broker.turn()
    # As if the write that held h1's result and the body's release were torn after the
    # result: write the result record alone, then crash.
    entry = ResultEntry("h1", "SUCCESS", "application/json", b"{}", 1.0, 1e12)
    broker.journal.write([rc.result_record(entry)])
    broker = broker.reopen()
    broker.turn()
    assert ready(broker) == 1 and len(broker.state.chords) == 0
    broker = broker.reopen()
    assert ready(broker) == 1           # the release was written: not released twice


def test_a_header_result_a_parked_body_needs_does_not_expire(tmp_path):
    broker = Broker(tmp_path / "data")
    client = broker.connect()
    client.declare_queue("q")
    park(client, "body", ["h1", "h2"])
    client.set_result("h1", ttl=1.0)
    broker.turn()
    broker.clock.advance(5.0)
    broker.turn()
    assert broker.state.results.get("h1") is not None
    client.set_result("h2")
    broker.turn()
    assert ready(broker) == 1
