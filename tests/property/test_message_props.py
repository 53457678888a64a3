"""Task messages and result metas on the wire: decode(encode(m)) is m, for any arguments of
the types the serializers carry, any ids, retries, eta/expires, priority and routing; a
content type outside accept is refused before decoding; epoch conversion honours offsets."""
import datetime
import decimal
import math

from hypothesis import given
from hypothesis import strategies as st

from minitask import protocol
from minitask.exceptions import ContentDisallowed
from minitask.message import (
    ResultMeta, TaskMessage, decode_result_meta, encode_result_meta, to_epoch,
)

UTC = datetime.timezone.utc

OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)))
DATETIMES = st.datetimes(min_value=datetime.datetime(1900, 1, 1),
                         max_value=datetime.datetime(2200, 1, 1),
                         timezones=st.none() | st.just(UTC) | OFFSETS)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text() | st.binary() | st.decimals(allow_nan=False) | DATETIMES)
VALUES = st.recursive(
    SCALARS,
    lambda children: (st.lists(children, max_size=4)
                      | st.lists(children, max_size=4).map(tuple)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)
# Properties travel as at most 255 bytes of UTF-8: 60 characters are at most 240 bytes.
SHORT_TEXT = st.text(max_size=60)
EPOCHS = st.just(0.0) | st.floats(min_value=1.0, max_value=7e9)


def same(a, b):
    """a == b with the same types all the way down (and Decimal's exact digits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, datetime.datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    return a == b


@st.composite
def messages(draw, serializer=st.sampled_from(["json", "pickle"])):
    return TaskMessage(
        draw(SHORT_TEXT.filter(bool)),
        draw(st.lists(VALUES, max_size=4)),
        draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=4)),
        id=draw(SHORT_TEXT.filter(bool)),
        retries=draw(st.integers(min_value=0, max_value=2 ** 31)),
        eta=draw(EPOCHS | DATETIMES.filter(lambda d: d.year >= 1971)),
        expires=draw(EPOCHS | DATETIMES.filter(lambda d: d.year >= 1971)),
        exchange=draw(SHORT_TEXT), routing_key=draw(SHORT_TEXT),
        priority=draw(st.none() | st.integers(min_value=0, max_value=9)),
        mandatory=draw(st.booleans()), immediate=draw(st.booleans()),
        serializer=draw(serializer))


def check_same_call(decoded, message):
    assert decoded.id == message.id and decoded.task == message.task
    assert same(decoded.args, message.args)
    assert same(decoded.kwargs, message.kwargs)
    assert (decoded.retries, decoded.eta, decoded.expires, decoded.exchange,
            decoded.routing_key, decoded.priority, decoded.mandatory, decoded.immediate,
            decoded.serializer) == (
        message.retries, message.eta, message.expires, message.exchange,
        message.routing_key, message.priority, message.mandatory, message.immediate,
        message.serializer)


@given(messages())
def test_decode_of_encode_is_the_same_call(message):
    check_same_call(TaskMessage.decode(message.encode()), message)


@given(messages())
def test_the_same_call_survives_the_protocols_bytes(message):
    data = protocol.encode_message(message.encode())
    check_same_call(TaskMessage.from_bytes(data, accept=[message.serializer]), message)


@given(messages(serializer=st.just("pickle")))
def test_pickle_is_refused_unless_accepted(message):
    encoded = message.encode()
    try:
        TaskMessage.decode(encoded, accept=["json"])
    except ContentDisallowed:
        pass
    else:
        raise AssertionError("a pickled message was decoded with accept=['json']")


@given(DATETIMES)
def test_to_epoch_takes_naive_as_utc_and_honours_offsets(value):
    if value.tzinfo is None:
        assert to_epoch(value) == value.replace(tzinfo=UTC).timestamp()
    else:
        assert to_epoch(value) == to_epoch(value.astimezone(UTC).replace(tzinfo=None))


@given(st.sampled_from(["SUCCESS", "FAILURE", "RETRY"]), VALUES,
       st.none() | st.text(max_size=200), st.integers(min_value=0, max_value=100),
       st.floats(min_value=0, max_value=7e9), st.sampled_from(["json", "pickle"]))
def test_a_result_meta_round_trips(status, value, traceback, retries, date_done, serializer):
    meta = ResultMeta("id-1", status, value, traceback, "tests.t", retries, date_done)
    content_type, payload = encode_result_meta(meta, serializer)
    decoded = decode_result_meta("id-1", status, content_type, payload)
    assert same(decoded.result, value)
    assert (decoded.status, decoded.traceback, decoded.task, decoded.retries,
            decoded.date_done) == (status, traceback, "tests.t", retries, date_done)


@given(st.sampled_from([ValueError, KeyError, TypeError, RuntimeError, ZeroDivisionError]),
       st.lists(st.text(max_size=20) | st.integers(), max_size=3),
       st.sampled_from(["json", "pickle"]))
def test_a_builtin_exception_result_comes_back_as_its_own_class(cls, args, serializer):
    meta = ResultMeta("id-2", "FAILURE", cls(*args), "Traceback ...", "tests.t")
    content_type, payload = encode_result_meta(meta, serializer)
    decoded = decode_result_meta("id-2", "FAILURE", content_type, payload)
    assert type(decoded.result) is cls and list(decoded.result.args) == args
