"""Topic routing: the exchange's trie agrees with two independent reference matchers.

`topic_matches` is the slow, obviously correct matcher; `regex_matches` is written from the
AMQP rules alone, in another way, so a mistake shared by the trie and one of them still shows.
"""
import re

from hypothesis import given
from hypothesis import strategies as st

from minitask.broker.routing import Exchange

def topic_matches(pattern, key):
    """AMQP topic matching the slow, obviously correct way: word by word, trying every
    split for ``#`` (the exchange's trie must agree)."""
    return _match_words(pattern.split(".") if pattern else [], key.split(".") if key else [])


def _match_words(pattern, words):
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match_words(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match_words(rest, words[1:])


# A small alphabet makes collisions, empty words and runs of '#' common.
key_words = st.sampled_from(["a", "b", "", "ab"])
pattern_words = st.sampled_from(["a", "b", "", "ab", "*", "#", "#"])
keys = st.lists(key_words, max_size=5).map(".".join)
patterns = st.lists(pattern_words, max_size=5).map(".".join)
queues = st.sampled_from(["q1", "q2", "q3"])


def regex_matches(pattern, key):
    """AMQP topic matching by regular expression over words written as <word>."""
    words = key.split(".") if key else []            # "" has no words; "a." has two
    subject = "".join("<%s>" % word for word in words)
    parts = []
    for word in (pattern.split(".") if pattern else []):
        if word == "#":
            parts.append("(?:<[^<>]*>)*")
        elif word == "*":
            parts.append("<[^<>]*>")
        else:
            parts.append(re.escape("<%s>" % word))
    return re.fullmatch("".join(parts), subject) is not None


@given(patterns, keys)
def test_the_reference_matchers_agree(pattern, key):
    assert topic_matches(pattern, key) == regex_matches(pattern, key)


@given(st.lists(st.tuples(queues, patterns), max_size=12), st.lists(keys, max_size=8))
def test_the_trie_routes_like_the_references(bindings, probe_keys):
    exchange = Exchange("t", "topic")
    for queue, pattern in bindings:
        exchange.bind(queue, pattern)
    for key in probe_keys:
        expected = {queue for queue, pattern in bindings if regex_matches(pattern, key)}
        assert exchange.route(key) == expected
        assert expected == {queue for queue, pattern in bindings if topic_matches(pattern, key)}


operations = st.lists(st.tuples(st.sampled_from(["bind", "unbind", "unbind_queue", "route"]),
                                queues, patterns, keys), max_size=40)


@given(operations)
def test_the_trie_stays_right_through_binds_and_unbinds(steps):
    exchange = Exchange("t", "topic")
    bound = set()
    seen_keys = set()
    for op, queue, pattern, key in steps:
        if op == "bind":
            exchange.bind(queue, pattern)
            bound.add((queue, pattern))
        elif op == "unbind":
            exchange.unbind(queue, pattern)
            bound.discard((queue, pattern))
        elif op == "unbind_queue":
            exchange.unbind_queue(queue)
            bound = {b for b in bound if b[0] != queue}
        seen_keys.add(key)
        for probe in seen_keys:                      # cached answers must follow changes
            expected = {q for q, p in bound if regex_matches(p, probe)}
            assert exchange.route(probe) == expected
    assert {(q, k) for q, k, _ in exchange.bindings} == bound


@given(st.lists(st.tuples(queues, st.sampled_from(["k1", "k2", ""])), max_size=10),
       st.sampled_from(["k1", "k2", "", "k3"]))
def test_direct_routes_exactly_the_equal_keys(bindings, key):
    exchange = Exchange("d", "direct")
    for queue, binding_key in bindings:
        exchange.bind(queue, binding_key)
    assert exchange.route(key) == {queue for queue, binding_key in bindings
                                   if binding_key == key}
