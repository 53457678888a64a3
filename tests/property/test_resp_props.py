"""Invariants of minitask.transport.resp for any replies, any split of the stream, any bytes."""
import contextlib
import os
import sys

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "unit"))

from test_protocol_props import split  # noqa: E402
from respkit import (  # noqa: E402
    FEEDS, NEXT_REPLY_START, chunks_for, encode_reply, expected, is_push,
)

from minitask.exceptions import ProtocolError  # noqa: E402
from minitask.transport import resp  # noqa: E402

line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                    max_size=30)
error_text = st.builds(lambda word, rest: word + rest,
                       st.sampled_from(["ERR", "MOVED", "LOADING", "NOSCRIPT", "x", ""]),
                       line_text)

# Map keys must decode to something hashable, and distinct keys must stay distinct, as they
# do in every real reply: bulk strings only.
keys = st.binary(max_size=12).map(lambda data: ("bulk", data))

scalars = st.one_of(
    line_text.map(lambda text: ("simple", text)),
    error_text.map(lambda text: ("error", text)),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda n: ("int", n)),
    st.one_of(st.none(), st.binary(max_size=40)).map(lambda data: ("bulk", data)),
    st.just(("null", None)),
    st.booleans().map(lambda b: ("bool", b)),
    st.floats().map(lambda f: ("double", f)),
    st.integers(-10 ** 60, 10 ** 60).map(lambda n: ("bignum", n)),
    error_text.map(lambda text: ("bulk_error", text)),
    st.tuples(st.sampled_from([b"txt", b"mkd"]), st.binary(max_size=20)).map(
        lambda v: ("verbatim", v)),
)


def _containers(inner):
    pairs = st.lists(st.tuples(keys, inner), max_size=4, unique_by=lambda kv: kv[0][1])
    return st.one_of(
        st.one_of(st.none(), st.lists(inner, max_size=5)).map(lambda v: ("array", v)),
        st.lists(inner, max_size=5).map(lambda v: ("set", v)),
        pairs.map(lambda v: ("map", v)),
        st.tuples(pairs, inner).map(lambda v: ("attribute", v)),
    )


replies = st.recursive(scalars, _containers, max_leaves=25)
# Pushes only at the top level, as servers send them.
top_level = st.one_of(replies, st.lists(replies, max_size=4).map(lambda v: ("push", v)))
streams = st.lists(top_level, max_size=8)


def decode_pieces(pieces):
    decoder = resp.Decoder()
    out = []
    for piece in pieces:
        decoder.feed(piece)
        out.extend(decoder.replies())
    return out, decoder


def check(nodes, out, decoder):
    assert out == [expected(node) for node in nodes if not is_push(node)]
    assert list(decoder.pushes) == [expected(node) for node in nodes if is_push(node)]


@given(streams, st.lists(st.integers(min_value=0), max_size=30))
def test_every_reply_round_trips_however_the_stream_is_cut(nodes, cuts):
    data = b"".join(encode_reply(node) for node in nodes)
    out, decoder = decode_pieces(split(data, cuts))
    check(nodes, out, decoder)
    assert not decoder.partial


@given(streams)
def test_replies_round_trip_whole_bytewise_and_before_another_reply(nodes):
    data = b"".join(encode_reply(node) for node in nodes)
    for how in FEEDS:
        out, decoder = decode_pieces(chunks_for(data, how))
        check(nodes, out, decoder)
        assert decoder.partial == (how == "then_next_start")


@given(top_level)
def test_every_split_offset_of_one_reply(node):
    data = encode_reply(node)
    for cut in range(len(data) + 1):
        out, decoder = decode_pieces([data[:cut], data[cut:] + NEXT_REPLY_START])
        check([node], out, decoder)


@given(st.lists(st.lists(st.one_of(st.binary(max_size=30), st.text(max_size=10),
                                   st.integers(), st.floats(allow_nan=False)),
                         min_size=1, max_size=6), max_size=6))
def test_commands_decode_back_to_their_arguments_as_bytes(commands):
    out, _ = decode_pieces([resp.encode_commands(commands)])
    assert out == [[_as_sent(arg) for arg in command] for command in commands]


def _as_sent(arg):
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int):
        return str(arg).encode()
    return repr(arg).encode()


def feed_garbage(pieces):
    decoder = resp.Decoder(max_bulk_bytes=1000, max_line_bytes=100, max_aggregate_length=50,
                           max_depth=8)
    with contextlib.suppress(ProtocolError):    # the one failure allowed
        for piece in pieces:
            decoder.feed(piece)
            for _reply in decoder.replies():
                pass


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_yields_replies_need_data_or_protocol_error(data, cuts):
    feed_garbage(split(data, cuts))


resp_tokens = st.sampled_from([b"*", b"$", b"%", b"~", b">", b"|", b":", b"+", b"-", b"_",
                               b"#", b",", b"(", b"!", b"=", b"\r\n", b"1", b"2", b"-1",
                               b"0", b"t", b"x", b"?", b"txt:"])


@given(st.lists(resp_tokens, max_size=60), st.lists(st.integers(min_value=0), max_size=10))
def test_near_resp_garbage_never_hangs_or_crashes(tokens, cuts):
    # Random bytes rarely look like RESP; these tokens do, so the parser's deeper paths run.
    feed_garbage(split(b"".join(tokens), cuts))
