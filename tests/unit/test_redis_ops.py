"""minitask.transport.redis_ops: each script call laid out as its script reads it (the
integration tests run them), and every key under the vhost's hash tag."""
import json

import pytest

from minitask import protocol as P
from minitask.transport import redis_ops as ops
from minitask.transport import redis_scripts as S
from minitask.transport.redis_keys import Keys, pack
from minitask.transport.redis_topology import Topology

KEYS = Keys("v")


def topology_with(*queues, max_length=None):
    definitions = []
    for name in queues:
        definitions += [name, json.dumps({"args": {"max_length": max_length}, "owner": None})]
    return Topology.from_snapshot(["7", [], definitions, []])


def encoded(routing_key="jobs", priority=None, not_before=0.0, expires_at=0.0, flags=0,
            exchange=""):
    return P.encode_message(P.Message(b"{}", exchange, routing_key, "task-1", "t.add",
                                      priority=priority, not_before=not_before,
                                      expires_at=expires_at, flags=flags))


def test_a_publication_names_its_queue_stream_of_its_priority_and_its_result():
    item = ops.publication(topology_with("jobs", max_length=5), KEYS,
                           encoded(priority=2, flags=P.MANDATORY | P.IMMEDIATE), 0.5)
    assert item.targets == ["jobs"]
    assert item.keys == ["mt:{v}:result:task-1", "mt:{v}:qstats:jobs", "mt:{v}:qconsumers:jobs",
                         "mt:{v}:bell:jobs", "mt:{v}:q:jobs:p2"]
    assert item.args[1:] == ["task-1", 2, 0, 0, 1, 1, 0, 1, "jobs", 5]


def test_no_priority_is_the_default_one_and_times_are_milliseconds():
    item = ops.publication(topology_with("jobs"), KEYS,
                           encoded(not_before=1000.0, expires_at=2000.5), 0.5)
    assert item.keys[-1] == "mt:{v}:q:jobs:p%d" % P.DEFAULT_PRIORITY
    assert item.args[2:5] == [P.DEFAULT_PRIORITY, 999500, 2000500]
    assert item.args[-1] == ""                  # no max_length


def test_a_control_message_has_no_queue():
    from minitask import control
    item = ops.publication(Topology(), KEYS, P.encode_message(
        control.command_message("ping")), 0.5)
    assert (item.targets, item.args[7], item.args[8]) == ([], 1, 0)


def test_a_malformed_message_is_a_protocol_error():
    with pytest.raises(P.ProtocolError):
        ops.publication(topology_with("jobs"), KEYS, b"\x00\x01", 0.5)


def test_publish_call_puts_record_and_result_before_the_messages():
    item = ops.publication(topology_with("jobs"), KEYS, encoded(), 0.5)
    script, keys, args = ops.publish_call(KEYS, 7, 1000, [item], record=("k", "1"),
                                          result=("t9", "SUCCESS", "application/json",
                                                  b"{}", True))
    assert script is S.PUBLISH
    assert args[:10] == [7, 1000, "all", "k", "1", "1", "t9", "SUCCESS", "application/json",
                         b"{}"]
    assert args[10:12] == [1, 1] and args[12:] == item.args
    assert keys[11] == "mt:{v}:result:t9" and keys[12:] == item.keys


def test_each_settle_operation_has_its_fixed_layout():
    held = ops.Held(1, "jobs", 3, True, "5-0", encoded(), 1)
    settlement = ops.Settlement(KEYS)
    settlement.ack(held, "c1")
    settlement.ack(held, "c1", handover=True)
    settlement.start(held, "c1")
    settlement.give_back(held, "c1", "requeue", topology_with("jobs"))
    script, keys, args = settlement.call(1000)
    assert script is S.SETTLE and args[:2] == [1000, 4]
    assert keys[6:9] == ["mt:{v}:q:jobs:b3", "mt:{v}:qstats:jobs", "mt:{v}:cstats:c1"]
    assert args[2:8] == ["ack", "jobs", "5-0", "c1", "task-1", ""]
    assert args[8:14] == ["handover", "jobs", "5-0", "c1", "task-1", "t.add"]
    assert args[14:19] == ["start", "5-0", "c1", "task-1", "t.add"]
    back = args[19:]
    assert back[:7] == ["back", "jobs", "5-0", "c1", 0, 3, "requeue"]
    assert back[7:9] == [10, "jobs.dead"] and back[10:] == ["task-1", ""]
    assert keys[-9:] == ["mt:{v}:q:jobs:b3", "mt:{v}:qstats:jobs", "mt:{v}:cstats:c1",
                         "mt:{v}:q:jobs:b3", "mt:{v}:bell:jobs", "mt:{v}:q:jobs.dead:p3",
                         "mt:{v}:qstats:jobs.dead", "mt:{v}:bell:jobs.dead",
                         "mt:{v}:result:task-1"]


def test_fetch_reply_is_read_into_entries():
    reply = [b"1000", b"", 1, [b"1-0", b"0-0"],
             [1, 4, b"b", b"7-0", b"data", b"2", 0, 2, 0, b"p", b"8-0", b"x", b"0", 1]]
    fetched = ops.parse_fetch(reply)
    assert (fetched.now, fetched.next_due, fetched.more, fetched.bells) == (
        1000, None, True, ["1-0", "0-0"])
    assert fetched.entries == [(0, 4, True, "7-0", b"data", 2, 0),
                               (1, 0, False, "8-0", b"x", 0, ops.REVOKED)]
    assert ops.parse_fetch([b"GONE"]) is None


def test_every_key_of_every_call_is_under_the_vhost_hash_tag():
    topology = topology_with("jobs")
    held = ops.Held(1, "jobs", 3, False, "5-0", encoded(), 1)
    settlement = ops.Settlement(KEYS)
    settlement.give_back(held, "c1", "dead", topology)
    member = pack("jobs", "task-1", "4", "9")
    calls = [
        ops.publish_call(KEYS, 7, 1, [ops.publication(topology, KEYS, encoded(), 0.5)]),
        ops.snapshot_call(KEYS), ops.commit_call(KEYS, 7, [], KEYS.queue_keys("jobs")),
        ops.fetch_call(KEYS, "c1", 10, 0, 0, ["jobs"]), settlement.call(1),
        ops.register_call(KEYS, "c1", "{}", 1, 1),
        ops.renew_call(KEYS, "c1", 1, 1, 1, 1, "", ["jobs"], {held.stream(KEYS): ["5-0"]}),
        ops.retire_call(KEYS, "c1", 1, ["jobs"], ["task-1"]), ops.due_call(KEYS),
        ops.promote_call(KEYS, [member]),
        ops.expire_call(KEYS, 1, [pack("jobs", "task-1", "4", "p", "5-0")]),
        ops.lose_call(KEYS, 1, "why", ["task-1"]), ops.claim_call(KEYS, "c1", ["task-1"]),
        ops.revoke_call(KEYS, 1, b"cmd", ["task-1"]), ops.purge_call(KEYS, "jobs", "me"),
        ops.lease_call(KEYS, "beat", "me", 1)]
    for _script, keys, _args in calls:
        assert keys and all(key.startswith("mt:{v}:") for key in keys)
