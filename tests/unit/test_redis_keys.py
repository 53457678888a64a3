"""minitask.transport.redis_keys: one hash tag per vhost, no two names sharing a key, and the
members of the delayed and expiring sets read back as written."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitask.transport.redis_keys import LEVELS, Keys, kept_type, pack, unpack

names = st.text(min_size=0, max_size=20)


def hash_tag(key):
    """The part of a key Redis Cluster hashes: the first non-empty {...}."""
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


def every_key(keys, queue="q", task_id="t", consumer="c"):
    fixed = [keys.topology, keys.exchanges, keys.queues, keys.bindings, keys.delayed,
             keys.delayed_messages, keys.expiring, keys.inflight, keys.handovers,
             keys.orphans, keys.revoked, keys.consumers, keys.control, keys.kv, keys.stats,
             keys.failures, keys.sweep, keys.backstop]
    return fixed + keys.queue_keys(queue) + [
        keys.result(task_id), keys.heartbeat(consumer), keys.consumer_stats(consumer),
        keys.wake(consumer), keys.reply("r"), keys.lease("beat")]


@given(names, names, names)
def test_every_key_of_a_vhost_hashes_by_its_vhost_alone(queue, task_id, consumer):
    keys = Keys("myapp")
    for key in every_key(keys, queue, task_id, consumer):
        assert key.startswith("mt:{myapp}:")
        assert hash_tag(key) == "myapp"


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20),
       st.text(min_size=1, max_size=20))
def test_every_key_has_the_type_the_layout_documents(queue, task_id, consumer):
    """The layout's table is what names the key of a WRONGTYPE refusal: each key minitask
    makes must be in it, with its type; any other key is not minitask's."""
    keys = Keys("v")
    expected = {keys.topology: "string", keys.epoch: "string", keys.exchanges: "hash",
                keys.queues: "hash", keys.bindings: "hash", keys.delayed: "zset",
                keys.delayed_messages: "hash", keys.expiring: "zset", keys.inflight: "hash",
                keys.handovers: "hash", keys.handed_messages: "hash", keys.orphans: "zset",
                keys.revoked: "zset", keys.consumers: "hash", keys.control: "stream",
                keys.kv: "hash", keys.stats: "hash", keys.failures: "list",
                keys.sweep: "string", keys.backstop: "string", keys.chords: "hash",
                keys.tasks: "hash", keys.given_up: "stream", keys.given_up_lock: "string",
                keys.queue_stats(queue): "hash", keys.queue_consumers(queue): "hash",
                keys.bell(queue): "stream", keys.result(task_id): "stream",
                keys.heartbeat(consumer): "string", keys.consumer_stats(consumer): "hash",
                keys.wake(consumer): "stream", keys.reply(consumer): "stream",
                keys.lease(consumer): "string"}
    expected.update((stream, "stream") for stream in keys.streams(queue))
    assert {key: kept_type(key) for key in expected} == expected
    assert kept_type("mt:{v}:nothing") is None and kept_type("other:" + queue) is None


def test_the_keys_of_one_vhost_are_all_different():
    keys = every_key(Keys("v"))
    assert len(set(keys)) == len(keys)


@given(names, names)
def test_two_queues_never_share_a_key(first, second):
    keys = Keys("v")
    if first != second:
        assert not set(keys.queue_keys(first)) & set(keys.queue_keys(second))


def test_streams_are_read_returned_first_then_new_priority_by_priority():
    keys = Keys("v")
    assert keys.streams("jobs")[:4] == ["mt:{v}:q:jobs:b0", "mt:{v}:q:jobs:p0",
                                        "mt:{v}:q:jobs:b1", "mt:{v}:q:jobs:p1"]
    assert len(keys.streams("jobs")) == 2 * len(LEVELS) == 20


@given(st.lists(st.text(), max_size=6))
def test_pack_and_unpack_round_trip(fields):
    assert unpack(pack(*fields)) == fields


@pytest.mark.parametrize("member", [b"5:abc", b"x:abc", b"3abc", b"-1:"])
def test_unpack_refuses_what_pack_cannot_write(member):
    with pytest.raises(ValueError):
        unpack(member)
