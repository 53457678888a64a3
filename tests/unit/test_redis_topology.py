"""minitask.transport.redis_topology: AMQP's declare rules decided from a cached topology,
routing with the built-in broker's matcher, and the changes a commit writes."""
import json

import pytest

from minitask import control, protocol as P
from minitask.exceptions import BrokerError, ProtocolError
from minitask.transport.redis_topology import (
    QUEUE_DEFAULTS, QueueDefinition, Topology, binding_field,
)


def apply(topology, changes):
    """A new topology with `changes` committed, as a reload after the commit would read it."""
    hashes = {"exchanges": {}, "queues": {}, "bindings": {}}
    for name, exchange in topology.exchanges.items():
        hashes["exchanges"][name] = json.dumps({"type": exchange.type})
    for name, queue in topology.queues.items():
        hashes["queues"][name] = queue.stored()
    for field in topology.bindings:
        hashes["bindings"][field] = "1"
    for hash_name, op, field, value in changes:
        if op == "set":
            hashes[hash_name][field] = value
        else:
            hashes[hash_name].pop(field, None)
    flat = [[item for pair in hashes[name].items() for item in pair]
            for name in ("exchanges", "queues", "bindings")]
    return Topology.from_snapshot([str(topology.version + 1)] + flat)


def fields_of(routing_key, exchange="", headers=None):
    data = P.encode_message(P.Message(b"", exchange, routing_key, "id", "t", headers=headers))
    return P.parse_message(data), data


@pytest.fixture
def topology():
    topology = Topology()
    topology = apply(topology, topology.declare_exchange("ex", "topic"))
    for name in ("a", "b"):
        _queue, changes = topology.declare_queue(name, "me")
        topology = apply(topology, changes)
    return topology


def test_declaring_what_exists_the_same_way_changes_nothing(topology):
    assert topology.declare_exchange("ex", "topic") == []
    assert topology.declare_queue("a", "me")[1] == []
    assert topology.declare_queue("a", "me", passive=True)[1] == []


def test_redeclaring_otherwise_is_refused_with_406(topology):
    with pytest.raises(BrokerError) as refused:
        topology.declare_exchange("ex", "direct")
    assert refused.value.code == P.PRECONDITION_FAILED
    with pytest.raises(BrokerError) as refused:
        topology.declare_queue("a", "me", max_length=3)
    assert refused.value.code == P.PRECONDITION_FAILED


@pytest.mark.parametrize("name", ["amq.topic", ""])
def test_reserved_exchange_names_are_refused(topology, name):
    with pytest.raises(BrokerError) as refused:
        topology.declare_exchange(name, "direct")
    assert refused.value.code == P.PRECONDITION_FAILED


def test_missing_things_are_404(topology):
    for declare in (lambda: topology.declare_queue("ghost", "me", passive=True),
                    lambda: topology.declare_exchange("ghost", passive=True),
                    lambda: topology.bind("a", "ghost"), lambda: topology.bind("ghost", "ex")):
        with pytest.raises(BrokerError) as refused:
            declare()
        assert refused.value.code == P.NOT_FOUND


def test_bad_arguments_are_protocol_errors(topology):
    with pytest.raises(ProtocolError):
        topology.declare_exchange("new", "sideways")
    with pytest.raises(ProtocolError):
        topology.declare_queue("new", "me", max_length=-1)
    with pytest.raises(ProtocolError):
        topology.declare_queue("new", "me", colour="red")


def test_an_unnamed_queue_is_new_exclusive_and_409_to_other_clients(topology):
    queue, changes = topology.declare_queue("", "me")
    assert queue.name.startswith("mt.gen-") and queue.owner == "me"
    assert (queue.args["exclusive"], queue.args["durable"], queue.args["auto_delete"]) == (
        True, False, True)
    topology = apply(topology, changes)
    for use in (lambda: topology.declare_queue(queue.name, "other", passive=True),
                lambda: topology.bind(queue.name, "ex", "k", owner="other"),
                lambda: topology.delete_queue(queue.name, "other")):
        with pytest.raises(BrokerError) as refused:
            use()
        assert refused.value.code == P.RESOURCE_LOCKED
    assert topology.declare_queue(queue.name, "me", passive=True)[0].name == queue.name


def test_routing_uses_the_bindings_of_the_topology(topology):
    topology = apply(topology, topology.bind("a", "ex", "eu.*")
                     + topology.bind("b", "ex", "#.paris"))
    assert topology.route(*fields_of("eu.paris", "ex")) == ["a", "b"]
    assert topology.route(*fields_of("us.paris", "ex")) == ["b"]
    assert topology.route(*fields_of("a")) == ["a"]            # the default exchange
    assert topology.route(*fields_of("ghost")) == []
    assert topology.route(*fields_of("", control.CONTROL_EXCHANGE)) is None
    with pytest.raises(BrokerError) as missing:
        topology.route(*fields_of("k", "ghost"))
    assert missing.value.code == P.NOT_FOUND


def test_binding_twice_is_one_binding_and_unbinding_removes_it(topology):
    changes = topology.bind("a", "ex", "k", {"x": 1})
    assert changes == [("bindings", "set", binding_field("ex", "a", "k", {"x": 1}), "1")]
    topology = apply(topology, changes)
    assert topology.bind("a", "ex", "k", {"x": 1}) == []
    topology = apply(topology, topology.bind("a", "ex", "k", {"x": 1}, unbind=True))
    assert topology.route(*fields_of("k", "ex")) == []


def test_the_default_and_control_exchanges_take_no_bindings(topology):
    for exchange in ("", control.CONTROL_EXCHANGE):
        with pytest.raises(BrokerError) as refused:
            topology.bind("a", exchange, "k")
        assert refused.value.code == P.PRECONDITION_FAILED


def test_deleting_a_queue_deletes_its_bindings(topology):
    topology = apply(topology, topology.bind("a", "ex", "k") + topology.bind("b", "ex", "k"))
    topology = apply(topology, topology.delete_queue("a", "me"))
    assert "a" not in topology.queues
    assert topology.route(*fields_of("k", "ex")) == ["b"]


def test_a_queues_dead_letter_queue_is_named_by_it_or_dot_dead():
    plain = QueueDefinition("jobs", dict(QUEUE_DEFAULTS, durable=False))
    name, stored = plain.dead_letter()
    assert name == "jobs.dead"
    dead = QueueDefinition.from_stored(name, stored)
    assert (dead.args["durable"], dead.args["max_redeliveries"], dead.owner) == (
        False, None, None)
    named = QueueDefinition("jobs", dict(QUEUE_DEFAULTS, dead_letter_queue="graveyard"))
    assert named.dead_letter()[0] == "graveyard"
