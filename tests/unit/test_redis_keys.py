"""minitask.transport.redis_keys: one hash tag per vhost, no two names sharing a key, and the
members of the delayed and expiring sets read back as written."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitask.transport.redis_keys import LEVELS, Keys, pack, unpack

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
