"""minitask.transport.redis_ops: each script call laid out as its script reads it (the
integration tests run them), and every key under the vhost's hash tag."""
import base64
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


def test_a_publication_is_routed_at_its_priority():
    item = ops.publication(topology_with("jobs"), encoded(priority=2, flags=P.IMMEDIATE))
    assert (item.targets, item.level, item.control) == (["jobs"], 2, False)
    assert item.group == (False, True, 2, ("jobs",), "")
    assert ops.publication(topology_with("jobs"), encoded()).level == P.DEFAULT_PRIORITY
    assert ops.publication(topology_with("jobs"), encoded("ghost")).targets == []


def test_a_control_message_has_no_queue():
    from minitask import control
    item = ops.publication(Topology(), P.encode_message(control.command_message("ping")))
    assert (item.targets, item.control) == ([], True)


def test_a_malformed_message_is_a_protocol_error():
    with pytest.raises(P.ProtocolError):
        ops.publication(topology_with("jobs"), b"\x00\x01")


def test_publish_call_groups_messages_going_alike_and_names_results_of_expiring_ones():
    topology = topology_with("jobs", "other", max_length=5)
    items = [ops.publication(topology, data) for data in (
        encoded(), encoded(expires_at=2000.0), encoded("other"), encoded(flags=P.IMMEDIATE))]
    script, keys, args = ops.publish_call(KEYS, 7, 1000, topology, items, release_ahead=0.5)
    # The chord keys: a message that may have expired may decide a chord.
    assert script is S.PUBLISH and args[:7] == [7, 1000, "all", 500, "1", "0", "0"]
    assert args[7] == 3                                     # groups
    jobs = ["mt:{v}:qstats:jobs", "mt:{v}:bell:jobs", "mt:{v}:q:jobs:p4"]
    assert args[8:16] == [0, 0, 4, "", 1, "jobs", 5, 2]
    assert args[16:18] == [items[0].data, items[1].data]
    assert keys[6:13] == KEYS.chord_keys
    assert keys[13:17] == jobs + ["mt:{v}:result:task-1"]   # only the expiring one's result
    assert args[18:26] == [0, 0, 4, "", 1, "other", 5, 1]
    assert args[27:35] == [0, 1, 4, "", 1, "jobs", 5, 1]    # immediate: its own group
    assert keys[-4:] == jobs + ["mt:{v}:qconsumers:jobs"]


def test_a_plain_publish_does_without_the_chord_keys():
    topology = topology_with("jobs")
    _script, keys, args = ops.publish_call(KEYS, 7, 1000, topology,
                                           [ops.publication(topology, encoded())])
    assert args[4] == "0" and len(keys) == 6 + 3


def test_a_chord_body_is_parked_with_its_errbacks_and_names_its_header_results():
    topology = topology_with("jobs", "bodies")
    errback = encoded()
    body = P.encode_message(P.Message(b"{}", "", "bodies", "body-1", "t.sum", headers={
        "x-chord-wait": ["h1", "h2"], "x-chain": ["next-1"],
        "x-errbacks": [base64.b64encode(errback).decode("ascii")]}))
    items = ops.chord_publications(topology, body)
    assert [item.park for item in items] == ["body", "errback"]
    assert items[1].data == errback and items[1].targets == ["jobs"]
    _script, keys, args = ops.publish_call(KEYS, 7, 1000, topology, items)
    assert args[4] == "1" and keys[6:13] == KEYS.chord_keys
    assert args[7] == 2                                     # groups: body, errback
    assert args[8:13] == [0, 0, 4, "body", 1]
    assert args[13:22] == ["bodies", "", 1, body, 2, "h1", "h2", 1, "next-1"]
    assert keys[16:20] == ["mt:{v}:result:body-1", "mt:{v}:result:h1", "mt:{v}:result:h2",
                           "mt:{v}:result:next-1"]
    assert args[22:27] == [0, 0, 4, "errback", 1]
    assert ops.chord_publications(topology, errback)[0].park == ""


def test_publish_call_puts_record_and_result_before_the_messages():
    topology = topology_with("jobs")
    item = ops.publication(topology, encoded())
    script, keys, args = ops.publish_call(KEYS, 7, 1000, topology, [item], record=("k", "1"),
                                          result=("t9", "SUCCESS", "application/json",
                                                  b"{}", True))
    assert args[4:14] == ["1", "1", "k", "1", "1", "t9", "SUCCESS", "application/json", b"{}",
                          1]
    assert keys[13:19] == ["mt:{v}:kv", "mt:{v}:result:t9", "mt:{v}:inflight",
                          "mt:{v}:handovers", "mt:{v}:orphans", "mt:{v}:failures"]


def test_each_settle_operation_has_its_fixed_layout():
    held = ops.Held(1, "jobs", 3, True, "5-0", encoded(), 1)
    other = ops.Held(2, "jobs", 3, True, "6-0", encoded(), 1)
    settlement = ops.Settlement(KEYS)
    settlement.start(held, "c1")
    settlement.ack(held, "c1")
    settlement.ack(other, "c1")
    settlement.ack(held, "c1", handover=True)
    settlement.give_back(held, "c1", "requeue", topology_with("jobs"))
    script, keys, args = settlement.call(1000)
    assert script is S.SETTLE and settlement.count == 5
    assert args[:2] == [1000, 4]            # two groups of acks, the start, the give-back
    ack_keys = ["mt:{v}:q:jobs:b3", "mt:{v}:qstats:jobs", "mt:{v}:cstats:c1"]
    assert keys[6] == "mt:{v}:handovers:messages"  # what a handover keeps of a workflow
    assert keys[7:14] == KEYS.chord_keys
    assert keys[14:20] == ack_keys * 2
    assert args[2:11] == ["acks", "jobs", "c1", 0, 2, "5-0", "task-1", "6-0", "task-1"]
    # A handover sends the message along only when it has headers (a workflow): not here.
    assert args[11:20] == ["acks", "jobs", "c1", 1, 1, "5-0", "task-1", "t.add", ""]
    assert args[20:25] == ["start", "5-0", "c1", "task-1", "t.add"]
    back = args[25:]
    assert back[:7] == ["back", "jobs", "5-0", "c1", 0, 3, "requeue"]
    assert back[7:9] == [10, "jobs.dead"] and back[10:] == ["task-1", ""]
    assert keys[20] == "mt:{v}:q:jobs:b3"          # the start's stream
    assert keys[-9:] == ["mt:{v}:q:jobs:b3", "mt:{v}:qstats:jobs", "mt:{v}:cstats:c1",
                         "mt:{v}:q:jobs:b3", "mt:{v}:bell:jobs", "mt:{v}:q:jobs.dead:p3",
                         "mt:{v}:qstats:jobs.dead", "mt:{v}:bell:jobs.dead",
                         "mt:{v}:result:task-1"]


def test_a_handover_sends_the_message_along_only_when_it_has_a_workflow():
    plain = ops.Held(1, "jobs", 0, False, "1-0", encoded(), 1)
    workflow_data = P.encode_message(P.Message(b"{}", "", "jobs", "task-2", "t.add",
                                               headers={"x-chain": ["task-3"]}))
    workflow = ops.Held(2, "jobs", 0, False, "2-0", workflow_data, 1)
    assert plain.handover() == ("t.add", "")
    assert workflow.handover() == ("t.add", workflow_data)
    assert ops.Held(3, "jobs", 0, False, "3-0", b"junk", 1).handover() == ("", "")


def test_fetch_reply_is_read_into_entries():
    reply = [b"1000", b"", 1, [b"1-0", b"0-0"],
             [b"1 4 b 7-0 2 0", b"data", b"2 0 p 8-0 0 1", b"x"]]
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
        ops.publish_call(KEYS, 7, 1, topology, [ops.publication(topology, encoded())]),
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
