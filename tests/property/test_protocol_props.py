"""Invariants of minitask.protocol for any frames, any split of the stream, any message."""
import contextlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from minitask import protocol as P
from minitask.exceptions import ProtocolError

frames = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 2 ** 32 - 1),
                            st.binary(max_size=300)), max_size=12)


def names(max_bytes=255):
    return st.text(max_size=80).filter(lambda s: len(s.encode("utf-8")) <= max_bytes)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 53, 2 ** 53),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)

messages = st.builds(
    P.Message,
    body=st.binary(max_size=200), exchange=names(), routing_key=names(), message_id=names(),
    type=names(), content_type=names(),
    headers=st.dictionaries(st.text(max_size=15), json_values, max_size=5),
    priority=st.one_of(st.none(), st.integers(0, 9)),
    not_before=st.floats(min_value=0, max_value=9e10),
    expires_at=st.floats(min_value=0, max_value=9e10),
    flags=st.integers(0, 255))


def split(data, cuts):
    """`data` cut at the given offsets (any order, repeats allowed)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def same_message(a, b):
    return all(getattr(a, name) == getattr(b, name) for name in P.Message.__slots__)


@given(frames, st.lists(st.integers(min_value=0), max_size=40))
def test_frames_split_anywhere_decode_to_the_same_frames(sent, cuts):
    data = b"".join(P.encode_frame(kind, seq, body) for kind, seq, body in sent)
    decoder = P.Decoder()
    got = []
    for piece in split(data, cuts):
        decoder.feed(piece)
        got.extend(decoder.frames())
    assert got == sent
    assert decoder.pending_bytes == 0


@given(st.binary())
def test_decoder_yields_frames_or_protocol_error(data):
    decoder = P.Decoder()
    decoder.feed(data)
    with contextlib.suppress(ProtocolError):  # the one failure allowed
        while decoder.next_frame() is not None:
            pass


@given(st.integers(0, 64), st.lists(st.binary(max_size=100), max_size=20))
def test_decoder_buffer_never_holds_more_than_one_frame_and_the_latest_chunk(limit, chunks):
    decoder = P.Decoder(limit)
    with contextlib.suppress(ProtocolError):
        for chunk in chunks:
            decoder.feed(chunk)
            bound = limit + P.HEADER.size + len(chunk)
            # _buffer is the memory a peer controls; pending_bytes is what is unread of it.
            assert len(decoder._buffer) <= bound
            assert decoder.pending_bytes <= bound
            for kind, seq, body in decoder.frames():
                assert len(body) <= limit


@given(messages)
def test_a_message_decodes_to_exactly_what_was_encoded(message):
    assert same_message(P.decode_message(P.encode_message(message)), message)


@given(messages)
def test_message_id_of_reads_the_id_parse_message_reads(message):
    data = P.encode_message(message)
    assert P.message_id_of(data) == P.parse_message(data).message_id == message.message_id


@given(messages, st.data())
def test_a_message_truncated_anywhere_decodes_or_raises_protocol_error_only(message, data):
    encoded = P.encode_message(message)
    cut = data.draw(st.integers(0, len(encoded)))
    body_starts = len(encoded) - len(message.body)
    if cut < body_starts:
        try:
            P.decode_message(encoded[:cut])
        except ProtocolError:
            pass
        else:
            raise AssertionError("a message cut at %d of %d decoded" % (cut, body_starts))
    else:
        assert P.decode_message(encoded[:cut]).body == message.body[:cut - body_starts]


@given(st.binary(max_size=400))
def test_any_bytes_as_a_message_decode_or_raise_protocol_error_only(data):
    for reader in (P.decode_message, P.parse_message):
        with contextlib.suppress(ProtocolError):
            reader(data)
    with contextlib.suppress(ProtocolError):
        P.headers_of(data, P.parse_message(data).headers_at)


@given(st.binary(max_size=200))
def test_any_bytes_as_other_bodies_decode_or_raise_protocol_error_only(data):
    for reader in (P.decode_result, P.decode_tags, P.decode_deliver):
        with contextlib.suppress(ProtocolError):
            reader(data)
    code, text = P.decode_error(data)            # never raises at all
    assert isinstance(code, int) and isinstance(text, str)


@given(st.integers(0, 255), st.lists(st.integers(0, 2 ** 64 - 1), max_size=50))
def test_tag_lists_round_trip(flags, tags):
    frame = P.encode_tags(P.ACK, flags, tags)
    assert P.decode_tags(frame[P.HEADER.size:]) == (flags, tags)


@given(st.integers(0, 255), st.lists(st.integers(0, 2 ** 64 - 1), max_size=20),
       st.integers(0, 2 ** 32 - 1))
def test_a_tag_list_with_the_wrong_count_is_refused(flags, tags, count):
    body = struct.pack("!BI", flags, count) + struct.pack("!%dQ" % len(tags), *tags)
    if count == len(tags):
        assert P.decode_tags(body) == (flags, tags)
    else:
        try:
            P.decode_tags(body)
        except ProtocolError:
            pass
        else:
            raise AssertionError("count %d accepted with %d tags" % (count, len(tags)))


@given(names(), st.sampled_from(P.STATES), st.integers(0, 255),
       st.floats(allow_nan=False), names(), st.binary(max_size=200))
def test_results_round_trip(task_id, state, flags, time, content_type, payload):
    frame = P.encode_result(P.RESULT, 1, task_id, state, flags, time, content_type, payload)
    assert P.decode_result(frame[P.HEADER.size:]) == (task_id, state, flags, time or 0.0,
                                                      content_type, payload)


@given(st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 32 - 1), st.booleans(),
       st.integers(0, 1000), st.binary(max_size=200))
def test_deliveries_round_trip(tag, consumer_tag, redelivered, count, data):
    frame = P.encode_deliver(tag, consumer_tag, redelivered, count, data)
    decoder = P.Decoder()
    decoder.feed(frame)
    [(kind, seq, body)] = list(decoder.frames())
    assert (kind, seq) == (P.DELIVER, 0)
    assert P.decode_deliver(body) == (tag, consumer_tag, redelivered, min(count, 255), data)


@given(st.integers(0, 65535), st.text(max_size=100))
def test_errors_round_trip(code, text):
    frame = P.encode_error(3, code, text)
    assert P.decode_error(frame[P.HEADER.size:]) == (code, text)


atomic_frames = st.lists(st.one_of(
    st.builds(lambda key, value: P.encode_json(P.KV_SET, 0, {"key": key, "value": value}),
              st.text(max_size=20), st.integers()),
    st.builds(lambda body: P.encode_frame(P.PUBLISH, 0, body), st.binary(max_size=60))),
    min_size=1, max_size=P.MAX_ATOMIC_FRAMES)


@given(atomic_frames)
def test_an_atomic_unit_decodes_to_its_frames(frames):
    frame = P.encode_atomic(7, frames)
    decoder = P.Decoder()
    decoder.feed(frame)
    kind, seq, body = decoder.next_frame()
    assert (kind, seq) == (P.ATOMIC, 7)
    assert [P.encode_frame(k, 0, b) for k, b in P.decode_atomic(body)] == frames


@given(st.binary(max_size=300))
def test_any_bytes_as_an_atomic_body_decode_or_raise_protocol_error_only(data):
    with contextlib.suppress(ProtocolError):
        frames = P.decode_atomic(data)
        assert 1 <= len(frames) <= P.MAX_ATOMIC_FRAMES
        assert all(kind in (P.PUBLISH, P.KV_SET) for kind, _body in frames)
