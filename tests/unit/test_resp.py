"""minitask.transport.resp: commands encoded, every reply type decoded, limits enforced.

Every decoder test is fed three ways (STYLE 7): the bytes whole, one byte at a time, and
followed by the start of another reply.
"""
import os
import pickle
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from respkit import FEEDS, NEXT_REPLY_START, decode_all  # noqa: E402

from minitask.exceptions import BrokerError, ProtocolError, ReplyError  # noqa: E402
from minitask.transport import resp  # noqa: E402


@pytest.fixture(params=FEEDS)
def how(request):
    return request.param


def decode(data, how, **limits):
    replies, decoder = decode_all(data, how, **limits)
    if how == "then_next_start":
        assert decoder.partial
    else:
        assert not decoder.partial
    return replies, decoder


# -- commands -----------------------------------------------------------------------------------

def test_a_command_is_an_array_of_bulk_strings():
    assert resp.encode_command("SET", "k", "v") == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")


def test_arguments_may_be_bytes_str_int_or_float():
    data = resp.encode_command(b"\x00\r\n", "é", 42, -7, 2.5, 1e100, float("inf"))
    decoded = decode_all(data)[0][0]
    assert decoded == [b"\x00\r\n", "é".encode("utf-8"), b"42", b"-7", b"2.5", b"1e+100",
                       b"inf"]


def test_a_float_argument_reads_back_exactly():
    for value in (0.1, 1 / 3, 123456789.123456789, -0.0, 5e-324):
        sent = decode_all(resp.encode_command("ZADD", value))[0][0][1]
        assert float(sent) == value


@pytest.mark.parametrize("bad", [True, None, object(), [1], {"a": 1}])
def test_other_argument_types_are_refused_by_name(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        resp.encode_command("SET", "k", bad)


def test_an_empty_command_is_refused():
    with pytest.raises(TypeError):
        resp.encode_command()
    with pytest.raises(TypeError):
        resp.encode_commands([("PING",), ()])


def test_a_pipeline_of_bare_strings_is_refused_not_spelled_out():
    with pytest.raises(TypeError, match="sequence of arguments, got 'PING'"):
        resp.encode_commands([("PING")])


def test_a_pipeline_is_the_commands_one_after_another():
    commands = [("PING",), ("SET", "a", 1), ("GET", "a")]
    assert resp.encode_commands(commands) == b"".join(
        resp.encode_command(*command) for command in commands)


def test_strings_sent_again_and_again_encode_the_same_in_bounded_memory():
    """Short strings keep their encoding (key names recur in every call of a script), but
    a process that sends ever new ones (task ids) does not grow for it."""
    long_one = "k" * (resp._KEPT_LENGTH + 1)
    big = b"\x01" * (resp._SMALL_BYTES + 1)
    for round in range(2):
        assert decode_all(resp.encode_command("SET", "key:é", long_one, big))[0] == [
            [b"SET", "key:é".encode("utf-8"), long_one.encode("ascii"), big]]
    for n in range(resp._KEPT_STRINGS * 2):
        resp.encode_command("GET", "task-%d" % n)
    assert len(resp._kept) <= resp._KEPT_STRINGS and long_one not in resp._kept
    assert decode_all(resp.encode_command("GET", "task-1"))[0] == [[b"GET", b"task-1"]]


def test_subclasses_of_str_and_int_go_as_their_plain_value():
    import enum

    class Level(enum.IntEnum):
        HIGH = 0

    class Name(str):
        pass

    assert decode_all(resp.encode_command(Name("x"), Level.HIGH))[0] == [[b"x", b"0"]]


# -- RESP2 replies ------------------------------------------------------------------------------

RESP2_CASES = [
    (b"+OK\r\n", "OK"),
    (b"+\r\n", ""),
    (b":0\r\n", 0),
    (b":-9223372036854775808\r\n", -9223372036854775808),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"$-1\r\n", None),
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*3\r\n:1\r\n$-1\r\n*1\r\n+x\r\n", [1, None, ["x"]]),
]


@pytest.mark.parametrize("data,value", RESP2_CASES)
def test_resp2_replies(data, value, how):
    replies, _ = decode(data, how)
    assert replies == [value]


def test_simple_strings_are_text_and_bulk_strings_are_bytes(how):
    replies, _ = decode(b"+caf\xc3\xa9\r\n$5\r\ncaf\xc3\xa9\r\n+\xff\r\n", how)
    assert replies == ["café", "café".encode("utf-8"), "\ufffd"]


def test_an_error_reply_is_a_value_carrying_its_first_word(how):
    replies, _ = decode(b"-NOSCRIPT No matching script. Please use EVAL.\r\n-ERR\r\n", how)
    error, bare = replies
    assert isinstance(error, ReplyError) and isinstance(error, BrokerError)
    assert error.prefix == "NOSCRIPT"
    assert str(error) == "NOSCRIPT No matching script. Please use EVAL."
    assert bare.prefix == "ERR"


@pytest.mark.parametrize("prefix", ["MOVED", "ASK", "LOADING", "READONLY", "NOSCRIPT",
                                    "BUSYGROUP", "NOGROUP", "WRONGTYPE", "NOAUTH",
                                    "UNBLOCKED", "WRONGPASS", "EXECABORT"])
def test_each_conventional_error_prefix_is_found(prefix):
    replies = decode_all(b"-%s some words here\r\n" % prefix.encode())[0]
    assert replies[0].prefix == prefix


def test_an_error_inside_an_array_stays_in_its_place(how):
    # EXEC's reply: one command of the transaction failed, the others ran.
    replies, _ = decode(b"*3\r\n+OK\r\n-WRONGTYPE Operation against a key\r\n:2\r\n", how)
    ok, error, count = replies[0]
    assert (ok, count) == ("OK", 2)
    assert error.prefix == "WRONGTYPE"


def test_a_reply_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ReplyError("LOADING Redis is loading")))
    assert (type(error), str(error), error.prefix) == (
        ReplyError, "LOADING Redis is loading", "LOADING")


def test_many_replies_in_one_read_come_out_in_order(how):
    data = b"".join(RESP2 for RESP2, _ in RESP2_CASES)
    replies, _ = decode(data, how)
    assert replies == [value for _, value in RESP2_CASES]


def test_a_big_bulk_string_split_over_many_reads():
    payload = os.urandom(3 * 1024 * 1024 + 17)
    data = b"$%d\r\n%s\r\n" % (len(payload), payload)
    decoder = resp.Decoder()
    for start in range(0, len(data), 65536):
        assert decoder.next_reply() is resp.NEED_DATA
        decoder.feed(data[start:start + 65536])
    assert decoder.next_reply() == payload
    assert decoder.next_reply() is resp.NEED_DATA


def test_a_long_array_arriving_in_pieces_is_parsed_once():
    count = 20000
    data = b"*%d\r\n" % count + b":7\r\n" * count
    decoder = resp.Decoder()
    for start in range(0, len(data), 1000):
        decoder.feed(data[start:start + 1000])
        reply = decoder.next_reply()
        # What was parsed is kept, not the bytes: the buffer never holds more than a read.
        assert len(decoder._buffer) - decoder._offset <= 1000
    assert reply == [7] * count


def test_need_data_until_the_last_byte_then_the_reply():
    data = b"*2\r\n$3\r\nabc\r\n:5\r\n"
    for cut in range(len(data)):
        decoder = resp.Decoder()
        decoder.feed(data[:cut])
        assert decoder.next_reply() is resp.NEED_DATA
        decoder.feed(data[cut:])
        assert decoder.next_reply() == [b"abc", 5]
        assert decoder.next_reply() is resp.NEED_DATA


# -- RESP3 replies ------------------------------------------------------------------------------

RESP3_CASES = [
    (b"_\r\n", None),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b",3.14\r\n", 3.14),
    (b",-1.5e-10\r\n", -1.5e-10),
    (b",10\r\n", 10.0),
    (b",inf\r\n", float("inf")),
    (b",-inf\r\n", float("-inf")),
    (b"(3492890328409238509324850943850943825024385\r\n",
     3492890328409238509324850943850943825024385),
    (b"=15\r\ntxt:Some string\r\n", b"Some string"),
    (b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#t\r\n", {"first": 1, b"second": True}),
    (b"%0\r\n", {}),
    (b"~3\r\n+a\r\n:1\r\n_\r\n", ["a", 1, None]),
    (b"*2\r\n%1\r\n+k\r\n~1\r\n,0.5\r\n_\r\n", [{"k": [0.5]}, None]),
]


@pytest.mark.parametrize("data,value", RESP3_CASES)
def test_resp3_replies(data, value, how):
    replies, _ = decode(data, how)
    assert replies == [value]
    assert type(replies[0]) is type(value)


def test_a_double_may_be_nan(how):
    replies, _ = decode(b",nan\r\n", how)
    assert replies[0] != replies[0]


def test_a_bulk_error_is_a_reply_error(how):
    replies, _ = decode(b"!21\r\nSYNTAX invalid syntax\r\n", how)
    assert replies[0].prefix == "SYNTAX" and str(replies[0]) == "SYNTAX invalid syntax"


def test_an_attribute_is_dropped_and_the_reply_after_it_returned(how):
    data = (b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.54\r\n"
            b"*2\r\n:2039123\r\n:9543892\r\n")
    replies, _ = decode(data, how)
    assert replies == [[2039123, 9543892]]


def test_an_attribute_inside_an_array_is_not_an_element(how):
    replies, _ = decode(b"*2\r\n:1\r\n|1\r\n+ttl\r\n:5\r\n:2\r\n|0\r\n+after\r\n", how)
    assert replies == [[1, 2], "after"]


def test_push_messages_are_kept_apart_from_replies(how):
    data = (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
            b"+PONG\r\n>2\r\n+invalidate\r\n*1\r\n$3\r\nkey\r\n:1\r\n")
    replies, decoder = decode(data, how)
    assert replies == ["PONG", 1]
    assert list(decoder.pushes) == [[b"message", b"ch", b"hi"], ["invalidate", [b"key"]]]
    assert all(type(push) is resp.Push for push in decoder.pushes)


def test_a_reply_with_every_type_nested(how):
    data = (b"*3\r\n%2\r\n+a\r\n*2\r\n#t\r\n_\r\n+b\r\n~1\r\n(12\r\n"
            b"*1\r\n*1\r\n*1\r\n=7\r\nmkd:x y\r\n!3\r\nERR\r\n")
    replies, _ = decode(data, how)
    mapping, deep, error = replies[0]
    assert mapping == {"a": [True, None], "b": [12]}
    assert deep == [[[b"x y"]]]
    assert error.prefix == "ERR"


# -- limits and garbage -------------------------------------------------------------------------

def test_a_bulk_string_over_the_limit_is_refused_before_its_bytes_arrive():
    decoder = resp.Decoder(max_bulk_bytes=10)
    decoder.feed(b"$11\r\n")
    with pytest.raises(ProtocolError, match="11 is over the limit of 10"):
        decoder.next_reply()
    decoder = resp.Decoder(max_bulk_bytes=10)
    decoder.feed(b"$10\r\n0123456789\r\n")
    assert decoder.next_reply() == b"0123456789"


def test_the_default_bulk_limit_is_redis_own():
    decoder = resp.Decoder()
    decoder.feed(b"$%d\r\n" % (512 * 1024 * 1024 + 1))
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.next_reply()


def test_nesting_past_the_limit_is_refused():
    decoder = resp.Decoder(max_depth=3)
    decoder.feed(b"*1\r\n*1\r\n*1\r\n:1\r\n")
    assert decoder.next_reply() == [[[1]]]
    decoder.feed(b"*1\r\n*1\r\n*1\r\n*1\r\n")
    with pytest.raises(ProtocolError, match="nested over 3 deep"):
        decoder.next_reply()


def test_an_endless_deep_nesting_is_refused_not_recursed():
    decoder = resp.Decoder()
    decoder.feed(b"*1\r\n" * 100000)
    with pytest.raises(ProtocolError, match="nested"):
        decoder.next_reply()


def test_an_aggregate_over_the_length_limit_is_refused():
    decoder = resp.Decoder(max_aggregate_length=4)
    decoder.feed(b"%3\r\n")              # a map of 3 pairs is 6 elements, but 3 entries
    assert decoder.next_reply() is resp.NEED_DATA
    decoder = resp.Decoder(max_aggregate_length=4)
    decoder.feed(b"*5\r\n")
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.next_reply()


def test_a_line_without_crlf_is_refused_once_over_the_limit():
    decoder = resp.Decoder(max_line_bytes=100)
    decoder.feed(b"+" + b"x" * 99 + b"\r")          # a line of 100 bytes, its LF to come
    assert decoder.next_reply() is resp.NEED_DATA
    decoder.feed(b"\n")
    assert decoder.next_reply() == "x" * 99
    decoder.feed(b"+" + b"x" * 100)
    assert decoder.next_reply() is resp.NEED_DATA
    decoder.feed(b"x")
    with pytest.raises(ProtocolError, match="without CRLF"):
        decoder.next_reply()


def test_a_huge_number_is_refused_rather_than_parsed():
    decoder = resp.Decoder()
    decoder.feed(b"(" + b"9" * 5000 + b"\r\n")
    with pytest.raises(ProtocolError, match="too long"):
        decoder.next_reply()


@pytest.mark.parametrize("data,message", [
    (b"?\r\n", "not a RESP reply"),
    (b"\r\n", "empty reply line"),
    (b":12a\r\n", "expected a number"),
    (b"$abc\r\n", "expected a number"),
    (b"$-2\r\n", "negative"),
    (b"%-1\r\n", "negative"),
    (b"$3\r\nabcd\r\n", "not followed by CRLF"),
    (b"#x\r\n", "not a RESP reply"),
    (b"_x\r\n", "not a RESP reply"),
    (b",one\r\n", "bad double"),
    (b"=3\r\ntxt\r\n", "verbatim"),
    (b"$?\r\n", "streamed"),
    (b"*?\r\n", "streamed"),
    (b"%1\r\n*0\r\n:1\r\n", "not hashable"),
])
def test_bytes_that_are_not_resp_raise_protocol_error(data, message, how):
    with pytest.raises(ProtocolError, match=message):
        decode_all(data, how)


def test_a_decoder_fed_nothing_needs_data():
    decoder = resp.Decoder()
    assert decoder.next_reply() is resp.NEED_DATA
    assert not decoder.partial
    decoder.feed(NEXT_REPLY_START)
    assert decoder.next_reply() is resp.NEED_DATA
    assert decoder.partial


def test_requests_decode_as_arrays_of_bulk_strings():
    # What a fake server relies on to read the commands it is sent.
    replies = decode_all(resp.encode_commands([("PING",), ("SET", "k", 1)]))[0]
    assert replies == [[b"PING"], [b"SET", b"k", b"1"]]
