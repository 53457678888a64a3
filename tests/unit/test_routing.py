"""minitask.broker.routing: which queues an exchange sends a message to (AMQP 0-9-1 rules)."""
import pytest

from minitask.broker.routing import (
    EXCHANGE_TYPES, Exchange, headers_match, split_words,
)


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


def topic(*bindings):
    exchange = Exchange("t", "topic")
    for queue, key in bindings:
        exchange.bind(queue, key)
    return exchange


# -- direct ----------------------------------------------------------------------------------

def test_direct_routes_to_queues_whose_binding_key_equals_the_routing_key():
    exchange = Exchange("d", "direct")
    exchange.bind("q1", "a")
    exchange.bind("q2", "a")
    exchange.bind("q3", "b")
    assert exchange.route("a") == {"q1", "q2"}
    assert exchange.route("b") == {"q3"}
    assert exchange.route("c") == set()
    assert exchange.route("A") == set()


def test_direct_keys_are_not_patterns():
    exchange = Exchange("d", "direct")
    exchange.bind("q", "a.*")
    exchange.bind("h", "#")
    assert exchange.route("a.b") == set()
    assert exchange.route("a.*") == {"q"}
    assert exchange.route("x") == set()


def test_the_empty_key_is_a_key_like_any_other_for_direct():
    exchange = Exchange("d", "direct")
    exchange.bind("q", "")
    assert exchange.route("") == {"q"}
    assert exchange.route("x") == set()


# -- fanout -----------------------------------------------------------------------------------

def test_fanout_routes_to_every_bound_queue_whatever_the_key():
    exchange = Exchange("f", "fanout")
    exchange.bind("q1", "ignored")
    exchange.bind("q2")
    assert exchange.route("anything") == {"q1", "q2"}
    assert exchange.route("") == {"q1", "q2"}


def test_fanout_with_no_bindings_routes_nowhere():
    assert Exchange("f", "fanout").route("x") == set()


def test_fanout_queue_bound_with_two_keys_stays_until_both_are_unbound():
    exchange = Exchange("f", "fanout")
    exchange.bind("q", "one")
    exchange.bind("q", "two")
    assert exchange.route("x") == {"q"}
    exchange.unbind("q", "one")
    assert exchange.route("x") == {"q"}
    exchange.unbind("q", "two")
    assert exchange.route("x") == set()


# -- headers ----------------------------------------------------------------------------------

def headers_exchange(arguments, queue="q"):
    exchange = Exchange("h", "headers")
    exchange.bind(queue, "", arguments)
    return exchange


@pytest.mark.parametrize("headers, routed", [
    ({"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2, "c": 3}, True),
    ({"a": 1}, False),
    ({"a": 1, "b": 3}, False),
    ({}, False),
    (None, False),
])
def test_headers_all_needs_every_argument_to_match(headers, routed):
    exchange = headers_exchange({"x-match": "all", "a": 1, "b": 2})
    assert exchange.route("", headers) == ({"q"} if routed else set())


@pytest.mark.parametrize("headers, routed", [
    ({"a": 1}, True),
    ({"b": 2}, True),
    ({"a": 2, "b": 2}, True),
    ({"a": 2, "b": 3}, False),
    ({"c": 1}, False),
    ({}, False),
])
def test_headers_any_needs_one_argument_to_match(headers, routed):
    exchange = headers_exchange({"x-match": "any", "a": 1, "b": 2})
    assert exchange.route("", headers) == ({"q"} if routed else set())


def test_headers_x_match_defaults_to_all():
    exchange = headers_exchange({"a": 1, "b": 2})
    assert exchange.route("", {"a": 1}) == set()
    assert exchange.route("", {"a": 1, "b": 2}) == {"q"}


def test_headers_arguments_starting_with_x_are_not_compared():
    exchange = headers_exchange({"x-match": "all", "x-custom": "zzz", "a": 1})
    assert exchange.route("", {"a": 1}) == {"q"}
    assert exchange.route("", {"a": 1, "x-custom": "other"}) == {"q"}


def test_headers_argument_none_asks_only_for_presence():
    exchange = headers_exchange({"a": None})
    assert exchange.route("", {"a": "anything"}) == {"q"}
    assert exchange.route("", {"a": None}) == {"q"}
    assert exchange.route("", {"b": 1}) == set()


def test_headers_ignore_the_routing_key():
    exchange = headers_exchange({"a": 1})
    assert exchange.route("whatever", {"a": 1}) == {"q"}


def test_headers_values_compare_by_equality_including_type():
    exchange = headers_exchange({"a": "1"})
    assert exchange.route("", {"a": 1}) == set()
    assert exchange.route("", {"a": "1"}) == {"q"}


def test_headers_with_no_arguments_match_all_messages_under_all_and_none_under_any():
    assert headers_match({}, {}) is True
    assert headers_match({"x-match": "all"}, {"a": 1}) is True
    assert headers_match({"x-match": "any"}, {"a": 1}) is False


def test_headers_x_match_is_case_insensitive():
    assert headers_match({"x-match": "ANY", "a": 1, "b": 2}, {"b": 2}) is True


def test_headers_bindings_with_different_arguments_are_different_bindings():
    exchange = Exchange("h", "headers")
    exchange.bind("q", "", {"a": 1})
    exchange.bind("q", "", {"b": 2})
    assert len(exchange.bindings) == 2
    assert exchange.route("", {"b": 2}) == {"q"}
    exchange.unbind("q", "", {"b": 2})
    assert exchange.route("", {"b": 2}) == set()
    assert exchange.route("", {"a": 1}) == {"q"}


def test_headers_arguments_with_nested_values_bind_and_unbind():
    exchange = Exchange("h", "headers")
    exchange.bind("q", "", {"a": {"k": [1, 2]}})
    assert exchange.route("", {"a": {"k": [1, 2]}}) == {"q"}
    assert exchange.bind("q", "", {"a": {"k": [1, 2]}}) is False
    assert exchange.unbind("q", "", {"a": {"k": [1, 2]}}) is True
    assert exchange.route("", {"a": {"k": [1, 2]}}) == set()


# -- topic ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, words", [
    ("", []), ("a", ["a"]), ("a.b", ["a", "b"]), ("a.", ["a", ""]), (".", ["", ""]),
    ("a..b", ["a", "", "b"]), (".a", ["", "a"]),
])
def test_split_words_counts_empty_words_but_not_an_empty_key(key, words):
    assert split_words(key) == words


TOPIC_CASES = [
    # pattern, key, matches
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.b", "a.b.c", False),
    ("*", "a", True), ("*", "", False), ("*", "a.b", False), ("*", ".", False),
    ("*.*", ".", True), ("*.b", "a.b", True), ("*.b", ".b", True), ("a.*", "a.", True),
    ("a.*", "a", False), ("#", "", True), ("#", "a", True), ("#", "a.b.c", True),
    ("#", ".", True), ("a.#", "a", True), ("a.#", "a.b.c", True), ("a.#", "b.a", False),
    ("#.a", "a", True), ("#.a", "x.y.a", True), ("#.a", "a.x", False),
    ("a.#.b", "a.b", True), ("a.#.b", "a.x.y.b", True), ("a.#.b", "a.x.y", False),
    ("#.#", "", True), ("#.#", "a.b", True), ("#.*", "", False), ("#.*", "a", True),
    ("*.#", "a", True), ("*.#", "", False), ("#.*.#", "a", True), ("a.*.#", "a.b", True),
    ("a.*.#", "a", False), ("", "", True), ("", "a", False), ("", ".", False),
    ("a..b", "a..b", True), ("a..b", "a.b", False), ("a.*.b", "a..b", True),
    ("a.#.#.b", "a.b", True), ("#.b.#", "a.b.c", True), ("#.b.#", "a.c", False),
    ("a.#", "a.", True), ("*.a.*", "x.a.y", True), ("*.a.*", "a.y", False),
    ("a#", "ab", False), ("a*", "ab", False), ("a#", "a#", True), ("a*", "a*", True),
]


@pytest.mark.parametrize("pattern, key, matches", TOPIC_CASES)
def test_topic_patterns_follow_rabbitmq_rules(pattern, key, matches):
    assert topic_matches(pattern, key) is matches
    assert topic(("q", pattern)).route(key) == ({"q"} if matches else set())


def test_topic_routes_to_each_matching_queue():
    exchange = topic(("all", "#"), ("stock", "stock.*"), ("nyse", "stock.nyse"),
                     ("usd", "*.*.usd"))
    assert exchange.route("stock.nyse") == {"all", "stock", "nyse"}
    assert exchange.route("stock.lse") == {"all", "stock"}
    assert exchange.route("stock.nyse.usd") == {"all", "usd"}
    assert exchange.route("") == {"all"}


def test_a_queue_bound_twice_gets_a_message_once():
    exchange = topic(("q", "a.*"), ("q", "*.b"), ("q", "#"))
    assert exchange.route("a.b") == {"q"}


def test_binding_twice_is_one_binding_and_one_unbind_removes_it():
    exchange = Exchange("t", "topic")
    assert exchange.bind("q", "a.*") is True
    assert exchange.bind("q", "a.*") is False
    assert len(exchange.bindings) == 1
    assert exchange.unbind("q", "a.*") is True
    assert exchange.route("a.b") == set()
    assert exchange.unbind("q", "a.*") is False


def test_unbind_of_an_unknown_binding_changes_nothing():
    exchange = topic(("q", "a.b"))
    assert exchange.unbind("q", "a.c") is False
    assert exchange.unbind("other", "a.b") is False
    assert exchange.route("a.b") == {"q"}


def test_unbinding_one_pattern_keeps_other_patterns_of_the_same_queue():
    exchange = topic(("q", "a.*"), ("q", "a.b"))
    exchange.unbind("q", "a.*")
    assert exchange.route("a.b") == {"q"}
    assert exchange.route("a.c") == set()


def test_unbinding_a_deeper_pattern_keeps_the_shorter_one_on_its_path():
    exchange = topic(("q", "a"), ("r", "a.b.c"))
    exchange.unbind("r", "a.b.c")
    assert exchange.route("a") == {"q"}
    assert exchange.route("a.b.c") == set()
    exchange.bind("r", "a.b")
    assert exchange.route("a.b") == {"r"}


def test_topic_answers_change_when_bindings_change():
    exchange = Exchange("t", "topic")
    assert exchange.route("a.b") == set()            # cached as no queue
    exchange.bind("q", "a.*")
    assert exchange.route("a.b") == {"q"}
    exchange.bind("r", "#.b")
    assert exchange.route("a.b") == {"q", "r"}
    exchange.unbind("q", "a.*")
    assert exchange.route("a.b") == {"r"}
    exchange.unbind_queue("r")
    assert exchange.route("a.b") == set()


def test_the_set_route_returns_can_be_changed_without_touching_the_exchange():
    exchange = topic(("q", "a"))
    exchange.route("a").add("intruder")
    exchange.route("a").clear()
    assert exchange.route("a") == {"q"}


def test_unbind_queue_removes_every_binding_of_that_queue_only():
    for kind in EXCHANGE_TYPES:
        exchange = Exchange("x", kind)
        exchange.bind("gone", "a", {"h": 1})
        exchange.bind("gone", "b")
        exchange.bind("kept", "a", {"h": 1})
        exchange.unbind_queue("gone")
        assert [ident[0] for ident in exchange.bindings] == ["kept"]
        assert exchange.route("a", {"h": 1}) == {"kept"}


def test_many_topic_keys_beyond_the_cache_size_still_route_correctly():
    exchange = topic(("even", "#.0"), ("any", "k.*"))
    for i in range(5000):
        key = "k.%d" % (i % 10)
        expected = {"any", "even"} if key.endswith(".0") else {"any"}
        assert exchange.route(key) == expected
        assert exchange.route("x.%d" % i) == ({"even"} if i == 0 else set())


def test_five_thousand_topic_bindings_route_like_the_reference():
    exchange = Exchange("t", "topic")
    patterns = []
    for i in range(5000):
        pattern = ["task.%d.*" % i, "#.%d" % i, "task.*.%d" % (i % 50), "*.%d.#" % i,
                   "task.%d" % i][i % 5]
        queue = "q%d" % (i % 700)
        exchange.bind(queue, pattern)
        patterns.append((queue, pattern))
    keys = ["task.0.x", "task.5.1", "x.y.10", "task.7", "task.3.3", "a.3.b.c", "task.1.50",
            "", "task", "task.4999", "z.4998.w", "task.1.0"]
    for key in keys:
        expected = {queue for queue, pattern in patterns if topic_matches(pattern, key)}
        assert exchange.route(key) == expected, key
    assert exchange.route("task.5.1")                # the keys above are not all misses


# -- exchanges in general ---------------------------------------------------------------------

def test_an_unknown_exchange_type_is_refused():
    with pytest.raises(ValueError, match="x-delayed"):
        Exchange("e", "x-delayed")


def test_describe_names_the_exchange_and_its_flags():
    assert Exchange("e", "fanout", durable=False, auto_delete=True).describe() == {
        "exchange": "e", "type": "fanout", "durable": False, "auto_delete": True}


@pytest.mark.parametrize("kind", EXCHANGE_TYPES)
def test_no_bindings_route_nowhere(kind):
    assert Exchange("e", kind).route("a", {"a": 1}) == set()
