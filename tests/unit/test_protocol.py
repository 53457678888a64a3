"""minitask.protocol: frames, the Decoder, and every body layout of the wire spec.

Every decoder test is fed three ways (STYLE 7): the bytes whole, one byte at a time, and
followed by the start of another frame.
"""
import json
import struct

import pytest

from minitask import protocol as P
from minitask.exceptions import (
    AuthenticationError, BrokerConnectionError, BrokerError, BrokerFullError, MinitaskError,
    NotDeliverableError, ProtocolError, PublishRefusedError, TimeoutError, UnroutableError,
)

# The first bytes of a frame that has not finished arriving.
NEXT_FRAME_START = P.encode_frame(P.HEARTBEAT, 7, b"next")[:6]

FEEDS = ("whole", "bytewise", "then_next_start")


def chunks_for(data, how):
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    return [data + NEXT_FRAME_START]


def decode(data, how, limit=P.MAX_FRAME_BYTES):
    """Feed `data` the way `how` says; returns (frames, decoder)."""
    decoder = P.Decoder(limit)
    frames = []
    for chunk in chunks_for(data, how):
        decoder.feed(chunk)
        frames.extend(decoder.frames())
    return frames, decoder


def body_of(frame):
    return frame[P.HEADER.size:]


def leftover(how):
    return len(NEXT_FRAME_START) if how == "then_next_start" else 0


@pytest.fixture(params=FEEDS)
def how(request):
    return request.param


# -- frames and the Decoder --------------------------------------------------------------------

def test_frame_layout_is_length_type_seq_then_body_big_endian():
    frame = P.encode_frame(0x20, 0x01020304, b"ab")
    assert frame == b"\x00\x00\x00\x02" + b"\x20" + b"\x01\x02\x03\x04" + b"ab"
    assert P.HEADER.size == 9


def test_a_frame_decodes_to_its_type_seq_and_body(how):
    frames, decoder = decode(P.encode_frame(P.PUBLISH, 42, b"hello"), how)
    assert frames == [(P.PUBLISH, 42, b"hello")]
    assert decoder.pending_bytes == leftover(how)


def test_an_empty_body_frame_decodes(how):
    frames, decoder = decode(P.encode_frame(P.HEARTBEAT, 0), how)
    assert frames == [(P.HEARTBEAT, 0, b"")]
    assert decoder.pending_bytes == leftover(how)


def test_several_frames_in_one_feed_all_come_out_in_order(how):
    sent = [(P.HELLO, 1, b"{}"), (P.HEARTBEAT, 0, b""), (P.PUBLISH, 2, b"x" * 300),
            (P.ACK, 0, b"\x00" * 13)]
    data = b"".join(P.encode_frame(*frame) for frame in sent)
    frames, decoder = decode(data, how)
    assert frames == sent
    assert decoder.pending_bytes == leftover(how)


def test_the_largest_seq_and_a_zero_seq_survive(how):
    data = P.encode_frame(P.OK, 2 ** 32 - 1, b"{}") + P.encode_frame(P.OK, 0, b"{}")
    frames, _ = decode(data, how)
    assert [seq for _kind, seq, _body in frames] == [2 ** 32 - 1, 0]


def test_a_body_exactly_at_the_limit_is_accepted(how):
    frames, _ = decode(P.encode_frame(P.PUBLISH, 1, b"z" * 64), how, limit=64)
    assert frames == [(P.PUBLISH, 1, b"z" * 64)]


def test_a_length_over_the_limit_raises_before_the_body_arrives(how):
    header = P.HEADER.pack(65, P.PUBLISH, 1)          # no body sent at all
    decoder = P.Decoder(64)
    with pytest.raises(ProtocolError, match="65") as raised:
        for chunk in chunks_for(header, how):
            decoder.feed(chunk)
            list(decoder.frames())
    assert P.code_for(raised.value) == P.TOO_LARGE      # the code travels with the error


def test_frames_before_an_oversized_one_are_returned_first(how):
    good = P.encode_frame(P.HEARTBEAT, 0)
    data = good + P.HEADER.pack(10 ** 6, P.PUBLISH, 3)
    decoder = P.Decoder(1000)
    got = []
    with pytest.raises(ProtocolError):
        for chunk in chunks_for(data, how):
            decoder.feed(chunk)
            for frame in decoder.frames():
                got.append(frame)
    assert got == [(P.HEARTBEAT, 0, b"")]


def test_an_incomplete_frame_gives_none_and_counts_as_pending():
    frame = P.encode_frame(P.PUBLISH, 5, b"0123456789")
    decoder = P.Decoder()
    for size in range(len(frame)):
        decoder.feed(frame[size:size + 1])
        if size < len(frame) - 1:
            assert decoder.next_frame() is None
            assert decoder.pending_bytes == size + 1
    assert decoder.next_frame() == (P.PUBLISH, 5, b"0123456789")
    assert decoder.pending_bytes == 0
    assert decoder.next_frame() is None


def test_pending_bytes_is_zero_for_a_new_decoder_and_after_whole_frames():
    decoder = P.Decoder()
    assert decoder.pending_bytes == 0
    decoder.feed(P.encode_frame(P.OK, 1, b"{}") * 3)
    assert len(list(decoder.frames())) == 3
    assert decoder.pending_bytes == 0


def test_a_decoder_keeps_working_after_being_drained_many_times():
    decoder = P.Decoder()
    for seq in range(1, 200):
        decoder.feed(P.encode_frame(P.OK, seq, b"{}")[:4])
        assert decoder.next_frame() is None
        decoder.feed(P.encode_frame(P.OK, seq, b"{}")[4:])
        assert decoder.next_frame() == (P.OK, seq, b"{}")


# -- JSON bodies --------------------------------------------------------------------------------

def test_encode_json_writes_compact_utf8_json():
    frame = P.encode_json(P.OK, 3, {"queue": "ü", "n": 1})
    kind_seq = P.HEADER.unpack_from(frame)
    assert kind_seq[1:] == (P.OK, 3)
    assert frame[9:] == b'{"queue":"\\u00fc","n":1}'              # compact, ASCII-safe JSON
    assert json.loads(frame[9:].decode("utf-8")) == {"queue": "ü", "n": 1}
    assert kind_seq[0] == len(frame) - 9


@pytest.mark.parametrize("body, expected", [
    (b"", {}), (b"{}", {}), (b'{"a": [1, 2]}', {"a": [1, 2]}),
    ('{"q": "\u00e9"}'.encode("utf-8"), {"q": "\u00e9"}),
])
def test_decode_json_reads_objects_and_an_empty_body_as_empty(body, expected):
    assert P.decode_json(body) == expected


@pytest.mark.parametrize("body", [
    b"[]", b"1", b'"s"', b"null", b"{", b"\xff\xfe", b"{'a': 1}", b"[" * 100000,
])
def test_decode_json_refuses_anything_but_a_json_object(body):
    with pytest.raises(ProtocolError):
        P.decode_json(body)


# -- messages (3.1) ---------------------------------------------------------------------------

def full_message(**overrides):
    fields = dict(body=b"\x00body\xff", exchange="ex", routing_key="a.b", message_id="id-1",
                  type="tasks.add", content_type="application/json",
                  headers={"h": 1, "nested": {"x": [1, "two", None]}}, priority=7,
                  not_before=1234.5, expires_at=5678.25,
                  flags=P.MANDATORY | P.IMMEDIATE | P.PERSISTENT)
    fields.update(overrides)
    return P.Message(**fields)


def same_message(a, b):
    return all(getattr(a, name) == getattr(b, name) for name in P.Message.__slots__)


def test_message_layout_follows_section_3_1_byte_for_byte():
    message = full_message(headers={"k": "v"})
    headers = b'{"k":"v"}'
    expected = (bytes([0x07, 7]) + struct.pack("!dd", 1234.5, 5678.25)
                + b"\x04id-1" + b"\x02ex" + b"\x03a.b" + b"\x09tasks.add"
                + b"\x10application/json" + struct.pack("!H", len(headers)) + headers
                + b"\x00body\xff")
    assert P.encode_message(message) == expected


def test_a_message_decodes_to_what_was_encoded():
    message = full_message()
    assert same_message(P.decode_message(P.encode_message(message)), message)


def test_no_priority_travels_as_255_and_comes_back_as_none():
    data = P.encode_message(full_message(priority=None))
    assert data[1] == P.NO_PRIORITY
    assert P.decode_message(data).priority is None


def test_empty_headers_travel_as_zero_length():
    data = P.encode_message(full_message(headers={}, body=b""))
    assert data.endswith(b"\x00\x00")
    assert P.decode_message(data).headers == {}


def test_message_defaults_are_persistent_json_and_no_priority():
    message = P.decode_message(P.encode_message(P.Message()))
    assert message.flags == P.PERSISTENT
    assert message.content_type == "application/json"
    assert message.priority is None
    assert (message.not_before, message.expires_at) == (0.0, 0.0)


@pytest.mark.parametrize("field", ["message_id", "exchange", "routing_key", "type",
                                   "content_type"])
def test_a_name_of_255_bytes_is_accepted_and_256_refused(field):
    fits = full_message(**{field: "é" * 127 + "x"})          # 255 bytes of UTF-8
    assert getattr(P.decode_message(P.encode_message(fits)), field) == "é" * 127 + "x"
    with pytest.raises(ProtocolError, match=field):
        P.encode_message(full_message(**{field: "é" * 128}))   # 256 bytes


def test_headers_over_65535_bytes_are_refused():
    with pytest.raises(ProtocolError):
        P.encode_message(full_message(headers={"big": "x" * 70000}))


def body_start(data):
    """Where the body of an encoded message begins (end of headers)."""
    offset = 18
    for _ in range(5):
        offset += 1 + data[offset]
    return offset + 2 + struct.unpack_from("!H", data, offset)[0]


def test_a_message_truncated_before_its_body_is_a_protocol_error_at_every_offset():
    data = P.encode_message(full_message())
    start = body_start(data)
    for cut in range(start):
        with pytest.raises(ProtocolError):
            P.decode_message(data[:cut])
        with pytest.raises(ProtocolError):
            P.headers_of(data[:cut], P.parse_message(data[:cut]).headers_at)


def test_a_message_cut_inside_its_body_is_a_shorter_body_not_an_error():
    data = P.encode_message(full_message())
    start = body_start(data)
    for cut in range(start, len(data) + 1):
        assert P.decode_message(data[:cut]).body == data[start:cut]


def test_parse_message_refuses_a_message_cut_before_its_headers_length():
    data = P.encode_message(full_message())
    headers_at = 18
    for _ in range(5):                       # the five names
        headers_at += 1 + data[headers_at]
    for cut in range(headers_at + 2):
        with pytest.raises(ProtocolError):
            P.parse_message(data[:cut])
    assert P.parse_message(data[:headers_at + 2]).headers_at == headers_at


@pytest.mark.parametrize("priority", [10, 100, 254])
def test_a_priority_outside_0_to_9_is_refused(priority):
    data = bytearray(P.encode_message(full_message()))
    data[1] = priority
    with pytest.raises(ProtocolError, match="priority"):
        P.decode_message(bytes(data))
    with pytest.raises(ProtocolError, match="priority"):
        P.parse_message(bytes(data))


@pytest.mark.parametrize("field_index", range(5))
def test_invalid_utf8_in_a_name_is_a_protocol_error(field_index):
    data = bytearray(P.encode_message(full_message()))
    offset = 18
    for _ in range(field_index):
        offset += 1 + data[offset]
    data[offset + 1] = 0xFF                   # first byte of that name
    with pytest.raises(ProtocolError):
        P.decode_message(bytes(data))


@pytest.mark.parametrize("headers", [b"[1]", b"{", b"\xff"])
def test_headers_that_are_not_a_json_object_are_a_protocol_error(headers):
    data = P.encode_message(full_message(headers={}, body=b""))
    data = data[:-2] + struct.pack("!H", len(headers)) + headers
    with pytest.raises(ProtocolError):
        P.decode_message(data)
    with pytest.raises(ProtocolError):
        P.headers_of(data, P.parse_message(data).headers_at)


def test_parse_message_and_message_id_of_read_what_decode_message_reads():
    data = P.encode_message(full_message())
    message = P.decode_message(data)
    fields = P.parse_message(data)
    assert fields[:9] == (message.flags, message.priority, message.not_before,
                          message.expires_at, message.message_id, message.exchange,
                          message.routing_key, message.type, message.content_type)
    assert P.headers_of(data, fields.headers_at) == message.headers
    assert P.message_id_of(data) == message.message_id


def test_parse_message_reports_no_priority_as_none():
    assert P.parse_message(P.encode_message(full_message(priority=None))).priority is None


@pytest.mark.parametrize("when", [float("nan"), float("inf"), -1.0, 2e11])
def test_times_that_are_not_epoch_seconds_are_refused(when):
    data = P.encode_message(full_message(not_before=when))
    with pytest.raises(ProtocolError, match="epoch seconds"):
        P.parse_message(data)


# -- DELIVER (3.2) -----------------------------------------------------------------------------

def test_deliver_is_a_whole_frame_with_seq_zero_and_the_message_unchanged(how):
    data = P.encode_message(full_message())
    frames, _ = decode(P.encode_deliver(2 ** 40 + 3, 9, True, 2, data), how)
    [(kind, seq, body)] = frames
    assert (kind, seq) == (P.DELIVER, 0)
    assert P.decode_deliver(body) == (2 ** 40 + 3, 9, True, 2, data)


def test_deliver_layout_is_tag_consumer_flags_deliveries():
    frame = P.encode_deliver(1, 2, False, 3, b"M")
    assert body_of(frame) == struct.pack("!QIBB", 1, 2, 0, 3) + b"M"
    assert body_of(P.encode_deliver(1, 2, True, 3, b""))[12] == P.REDELIVERED


def test_deliveries_over_255_are_capped_at_255():
    body = body_of(P.encode_deliver(1, 1, True, 1000, b""))
    assert P.decode_deliver(body)[3] == 255


def test_a_deliver_body_shorter_than_its_prefix_is_a_protocol_error():
    for size in range(14):
        with pytest.raises(ProtocolError):
            P.decode_deliver(b"\x00" * size)


# -- tag lists (3.3) ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [P.ACK, P.REJECT, P.START])
def test_tag_lists_round_trip_in_a_frame(kind, how):
    frame = P.encode_tags(kind, P.MULTIPLE | P.STARTED, [1, 2 ** 64 - 1, 7], seq=4)
    frames, _ = decode(frame, how)
    [(got_kind, seq, body)] = frames
    assert (got_kind, seq) == (kind, 4)
    assert P.decode_tags(body) == (P.MULTIPLE | P.STARTED, [1, 2 ** 64 - 1, 7])


def test_tag_list_layout_is_flags_count_then_u64_tags():
    assert body_of(P.encode_tags(P.ACK, 1, [5, 6])) == struct.pack("!BIQQ", 1, 2, 5, 6)
    assert P.decode_tags(struct.pack("!BI", 0, 0)) == (0, [])


@pytest.mark.parametrize("body", [
    b"", b"\x00\x00\x00\x00",                                 # shorter than flags + count
    struct.pack("!BI", 0, 2) + struct.pack("!Q", 1),          # says 2, carries 1
    struct.pack("!BI", 0, 1) + struct.pack("!QQ", 1, 2),      # says 1, carries 2
    struct.pack("!BI", 0, 1) + b"\x00" * 7,                   # a torn tag
    struct.pack("!BI", 0, 2 ** 32 - 1),                       # a huge count, no tags
])
def test_a_tag_count_that_disagrees_with_the_length_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        P.decode_tags(body)


# -- results (3.4) -----------------------------------------------------------------------------

@pytest.mark.parametrize("state", P.STATES)
def test_results_round_trip_for_every_state(state, how):
    frame = P.encode_result(P.RESULT, 12, "task-ü", state, P.READY, 99.5, "application/json",
                            b'{"result": 3}')
    frames, _ = decode(frame, how)
    [(kind, seq, body)] = frames
    assert (kind, seq) == (P.RESULT, 12)
    assert P.decode_result(body) == ("task-ü", state, P.READY, 99.5, "application/json",
                                     b'{"result": 3}')


def test_result_layout_is_task_id_state_flags_time_content_type_payload():
    body = body_of(P.encode_result(P.RESULT_SET, 0, "t", "SUCCESS", 1, 2.0, "ct", b"P"))
    assert body == b"\x01t" + struct.pack("!BBd", 4, 1, 2.0) + b"\x02ct" + b"P"
    assert [P.STATE_CODES[name] for name in P.STATES] == list(range(7))
    assert P.STATES[0] == "PENDING" and P.STATES[6] == "REVOKED"


def test_a_result_with_an_unknown_state_code_is_a_protocol_error():
    body = b"\x01t" + struct.pack("!BBd", 7, 0, 0.0) + b"\x00"
    with pytest.raises(ProtocolError, match="7"):
        P.decode_result(body)


def test_a_result_truncated_anywhere_before_its_payload_is_a_protocol_error():
    body = body_of(P.encode_result(P.RESULT, 1, "tid", "FAILURE", 0, 1.0, "ct", b""))
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            P.decode_result(body[:cut])


def test_a_task_id_over_255_bytes_cannot_be_encoded_in_a_result():
    with pytest.raises(ProtocolError):
        P.encode_result(P.RESULT_SET, 0, "t" * 256, "SUCCESS", 1, 0.0, "", b"")


@pytest.mark.parametrize("runtime", [0.25, None])
def test_a_described_result_set_round_trips_with_its_task_name_and_runtime(runtime, how):
    frame = P.encode_result(P.RESULT_SET, 7, "t1", "SUCCESS", P.STORE, 0.0, "application/json",
                            b'{"r": 1}', "tasks.ädd", runtime)
    frames, _ = decode(frame, how)
    [(kind, seq, body)] = frames
    assert (kind, seq) == (P.RESULT_SET, 7)
    assert P.decode_result_set(body) == ("t1", "SUCCESS", P.STORE | P.DESCRIBED, 0.0,
                                         "application/json", b'{"r": 1}', "tasks.ädd", runtime)


def test_a_described_result_set_layout_puts_name_and_runtime_before_the_payload():
    body = body_of(P.encode_result(P.RESULT_SET, 0, "t", "FAILURE", P.STORE, 0.0, "ct", b"P",
                                   "n", 1.5))
    assert body == (b"\x01t" + struct.pack("!BBd", 5, 3, 0.0) + b"\x02ct" + b"\x01n"
                    + struct.pack("!d", 1.5) + b"P")


def test_a_plain_result_set_decodes_with_no_name_or_runtime():
    body = body_of(P.encode_result(P.RESULT_SET, 0, "t", "SUCCESS", P.STORE, 3.0, "ct", b"P"))
    assert P.decode_result_set(body) == ("t", "SUCCESS", P.STORE, 3.0, "ct", b"P", None, None)


@pytest.mark.parametrize("runtime", [float("nan"), -0.5, float("-inf")])
def test_a_runtime_that_is_not_a_duration_reads_as_not_measured(runtime):
    body = body_of(P.encode_result(P.RESULT_SET, 0, "t", "SUCCESS", P.STORE, 0.0, "ct", b"",
                                   "n", runtime))
    assert P.decode_result_set(body)[6:] == ("n", None)


def test_a_described_result_set_cut_short_in_its_description_is_a_protocol_error():
    body = body_of(P.encode_result(P.RESULT_SET, 0, "t", "SUCCESS", P.STORE, 0.0, "ct", b"",
                                   "name", 1.0))
    head = len(body) - 1 - len("name") - 8
    for cut in range(head, len(body)):
        with pytest.raises(ProtocolError):
            P.decode_result_set(body[:cut])


def test_plain_result_strips_the_description_for_a_broker_without_the_feature():
    described = P.encode_result(P.RESULT_SET, 5, "t", "RETRY", P.STORE, 2.0, "ct", b"P", "n",
                                0.1)
    plain = P.encode_result(P.RESULT_SET, 5, "t", "RETRY", P.STORE, 2.0, "ct", b"P")
    assert P.plain_result(described) == plain
    assert P.plain_result(plain) is plain
    ack = P.encode_tags(P.ACK, 0, [1, 2])
    assert P.plain_result(ack) is ack


def test_type_bytes_of_reads_a_messages_type_undecoded():
    data = P.encode_message(P.Message(b"body", "ex", "rk", "id-1", "tasks.ädd"))
    assert P.type_bytes_of(data) == "tasks.ädd".encode("utf-8")
    assert P.type_bytes_of(P.encode_message(P.Message(b"", message_id="x"))) == b""


# -- errors (7) --------------------------------------------------------------------------------

def test_errors_round_trip_with_code_and_text(how):
    frames, _ = decode(P.encode_error(9, 404, "no queue 'ü'"), how)
    [(kind, seq, body)] = frames
    assert (kind, seq) == (P.ERROR, 9)
    assert P.decode_error(body) == (404, "no queue 'ü'")


def test_error_text_is_cut_to_4000_bytes():
    code, text = P.decode_error(body_of(P.encode_error(0, 500, "x" * 10000)))
    assert (code, len(text)) == (500, 4000)


def test_a_malformed_error_frame_reads_as_an_internal_error():
    assert P.decode_error(b"\x01") == (500, "malformed ERROR frame")


ERROR_CLASSES = [
    (312, UnroutableError), (313, NotDeliverableError), (400, ProtocolError),
    (401, AuthenticationError), (404, BrokerError), (405, ProtocolError),
    (406, BrokerError), (408, TimeoutError), (409, BrokerError),
    (413, PublishRefusedError), (503, BrokerConnectionError), (507, BrokerFullError),
    (500, BrokerError),
]


@pytest.mark.parametrize("code, cls", ERROR_CLASSES)
def test_each_error_code_raises_the_class_section_7_names(code, cls):
    exc = P.error_for(code, "text")
    assert type(exc) is cls
    assert str(exc) == "text"
    assert isinstance(exc, MinitaskError)


@pytest.mark.parametrize("code", [404, 406, 409, 500, 599])
def test_broker_errors_keep_their_code(code):
    exc = P.error_for(code, "why")
    assert type(exc) is BrokerError
    assert exc.code == code


@pytest.mark.parametrize("code", [312, 313, 400, 401, 404, 405, 406, 408, 409, 500, 503, 507])
def test_code_for_inverts_error_for_where_the_class_is_unambiguous(code):
    assert P.code_for(P.error_for(code, "x")) == code


def test_code_for_answers_a_subclass_with_its_own_code_and_anything_else_500():
    assert P.code_for(AuthenticationError("x")) == 401       # not 503 from its parent class
    assert P.code_for(BrokerConnectionError("x")) == 503
    assert P.code_for(BrokerError("x", 409)) == 409
    assert P.code_for(ValueError("x")) == 500
    assert P.code_for(MinitaskError("x")) == 500


def test_a_protocol_error_answers_400_unless_it_carries_another_code():
    assert P.code_for(ProtocolError("x")) == P.BAD_FRAME
    assert P.code_for(ProtocolError("x", P.COMMAND_INVALID)) == P.COMMAND_INVALID


# -- the drop rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("task_id, expires_at, now, revoked, reason", [
    ("t", 0.0, 100.0, {}, None),                     # no expiry, not revoked
    ("t", None, 100.0, (), None),
    ("t", 100.5, 100.0, {"other": 1.0}, None),        # not yet
    ("t", 100.0, 100.0, {}, "expired"),               # at its time: expired
    ("t", 50.0, 100.0, set(), "expired"),
    ("t", 0.0, 100.0, {"t": 200.0}, "revoked"),
    ("t", 50.0, 100.0, {"t"}, "revoked"),             # both: revoked names it
])
def test_drop_reason_says_revoked_before_expired_and_none_for_a_message_that_may_go(
        task_id, expires_at, now, revoked, reason):
    assert P.drop_reason(task_id, expires_at, now, revoked) == reason


# -- ATOMIC (3.5) ----------------------------------------------------------------------------

def test_atomic_carries_publishes_settings_and_results_in_order(how):
    inner = [P.encode_result(P.RESULT_SET, 0, "t", "SUCCESS", P.STORE, 0.0, "x", b"r"),
             P.encode_frame(P.PUBLISH, 0, b"m"), P.encode_json(P.KV_SET, 0, {"key": "k"})]
    [(kind, seq, body)], _ = decode(P.encode_atomic(7, inner), how)
    assert (kind, seq) == (P.ATOMIC, 7)
    assert P.decode_atomic(body) == [(frame[4], frame[P.HEADER.size:]) for frame in inner]


def test_every_command_name_is_known_and_unknown_types_print_in_hex():
    assert P.command_name(P.PUBLISH) == "PUBLISH"
    assert P.command_name(0x7F) == "0x7f"
    assert len(set(P.COMMAND_NAMES)) == len(P.COMMAND_NAMES.values())


def test_json_bodies_of_the_decoder_are_what_encode_json_sent(how):
    frames, _ = decode(P.encode_json(P.DECLARE_QUEUE, 1, {"queue": "q", "durable": False}), how)
    [(kind, seq, body)] = frames
    assert (kind, seq, json.loads(body)) == (P.DECLARE_QUEUE, 1, {"queue": "q",
                                                                  "durable": False})
