"""minitask.message: what a task and its result carry on the wire.

A task message round-trips through `encode`/`decode` (and through the protocol's bytes); the
accept list is checked before a byte of the body is decoded; malformed bodies are
SerializationError; arguments that cannot travel are refused in the caller; messages carry
the task's name, never its code. Result metas round-trip, exceptions included, and a result
the serializer cannot carry becomes a FAILURE saying so.
"""
import datetime
import decimal
import json
import pickletools
import threading

import pytest

from minitask import protocol, serialization, task
from minitask.exceptions import (
    ContentDisallowed, MaxRetriesExceededError, NotRegistered, ProtocolError,
    SerializationError,
)
from minitask.message import (
    BODY_VERSION, ResultMeta, TaskMessage, decode_result_meta, encode_result_meta,
    from_epoch, new_task_id, to_epoch,
)

UTC = datetime.timezone.utc
PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))
MINUS_0530 = datetime.timezone(-datetime.timedelta(hours=5, minutes=30))
JSON_TYPE = "application/json"
PICKLE_TYPE = "application/x-python-serialize"

UNPICKLED = []


def record_unpickling(tag):
    UNPICKLED.append(tag)
    return tag


class Tripwire:
    """Unpickling this records it: proof that a body was (or was not) decoded."""

    def __reduce__(self):
        return (record_unpickling, ("tripwire",))


class Unsendable:
    """No serializer carries this."""


class ProbeError(Exception):
    """Defined in a module the decoder's process has imported: comes back as itself."""


@task(name="tests.message.add")
def add(x, y):
    return x + y


def full_message(serializer="json"):
    return TaskMessage(
        "tests.message.add", (1, "two", [3.0, None], (4, b"five")),
        {"when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=PLUS_2),
         "naive": datetime.datetime(2024, 5, 1, 12, 30),
         "price": decimal.Decimal("12.3400"), "flag": True},
        id="task-1", retries=2, eta=1900000000.5, expires=1900000600.25, exchange="media",
        routing_key="video.compress", priority=0, mandatory=True, immediate=True,
        serializer=serializer)


def fields(message):
    return (message.id, message.task, message.args, message.kwargs, message.retries,
            message.eta, message.expires, message.exchange, message.routing_key,
            message.priority, message.mandatory, message.immediate, message.serializer)


# -- task messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_encode_then_decode_gives_the_same_call(serializer):
    message = full_message(serializer)
    decoded = TaskMessage.decode(message.encode())
    assert fields(decoded) == fields(message)
    assert type(decoded.kwargs["price"]) is decimal.Decimal
    assert str(decoded.kwargs["price"]) == "12.3400"
    assert decoded.kwargs["when"].utcoffset() == datetime.timedelta(hours=2)
    assert decoded.kwargs["naive"].tzinfo is None


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_the_protocols_bytes_decode_to_the_same_call(serializer):
    message = full_message(serializer)
    data = protocol.encode_message(message.encode())
    assert fields(TaskMessage.from_bytes(data)) == fields(message)
    assert fields(TaskMessage.from_bytes(data, accept=[serializer])) == fields(message)


def test_the_broker_message_carries_routing_and_timing_as_properties():
    encoded = full_message().encode()
    assert encoded.message_id == "task-1"
    assert encoded.type == "tests.message.add"
    assert encoded.content_type == JSON_TYPE
    assert (encoded.exchange, encoded.routing_key, encoded.priority) == (
        "media", "video.compress", 0)
    assert (encoded.not_before, encoded.expires_at) == (1900000000.5, 1900000600.25)
    assert encoded.flags & protocol.PERSISTENT
    assert encoded.flags & protocol.MANDATORY and encoded.flags & protocol.IMMEDIATE


def test_the_body_is_version_1_and_repeats_id_and_task():
    body = json.loads(full_message().encode().body)
    assert set(body) == {"v", "id", "task", "args", "kwargs", "retries", "eta", "expires"}
    assert (body["v"], body["id"], body["task"], body["retries"]) == (
        BODY_VERSION, "task-1", "tests.message.add", 2)
    assert body["eta"].startswith("2030-03-17T") and body["eta"].endswith("+00:00")


def test_a_message_without_eta_or_expires_says_none():
    message = TaskMessage("tests.message.add", (1, 2))
    body = json.loads(message.encode().body)
    assert body["eta"] is None and body["expires"] is None
    assert (message.eta, message.expires) == (0.0, 0.0)


def test_a_new_message_gets_a_fresh_uuid():
    first, second = TaskMessage("t"), TaskMessage("t")
    assert first.id != second.id and len(first.id) == 36
    assert new_task_id() != new_task_id()


def test_a_message_carries_the_task_name_and_no_code():
    body = json.loads(TaskMessage(add.name, (1, 2)).encode().body)
    assert body["task"] == "tests.message.add"
    assert body["args"] == [1, 2]          # a JSON array, as the body format says


def test_a_task_passed_as_a_pickled_argument_travels_by_name():
    data = TaskMessage("t", (add,), serializer="pickle").encode().body
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    assert "tests.message.add" in strings
    assert "_task_by_name" in strings
    assert "add" not in strings                   # not the function, by qualified name


def test_a_task_cannot_be_a_json_argument():
    with pytest.raises(SerializationError):
        TaskMessage("t", (add,)).encode()


@pytest.mark.parametrize("serializer, type_name", [
    ("json", "Unsendable"), ("json", "lock"), ("pickle", "lock"),
])
def test_an_argument_the_serializer_cannot_carry_is_refused_at_encode_naming_its_type(
        serializer, type_name):
    value = Unsendable() if type_name == "Unsendable" else threading.Lock()
    with pytest.raises(SerializationError, match=repr(type_name)):
        TaskMessage("t", ([1, {"deep": value}],), serializer=serializer).encode()
    with pytest.raises(SerializationError, match=repr(type_name)):
        TaskMessage("t", (), {"deep": (value,)}, serializer=serializer).encode()


def test_a_content_type_outside_accept_is_refused_before_decoding():
    del UNPICKLED[:]
    message = TaskMessage("t", (Tripwire(),), serializer="pickle").encode()
    with pytest.raises(ContentDisallowed):
        TaskMessage.decode(message, accept=["json"])
    with pytest.raises(ContentDisallowed):
        TaskMessage.from_bytes(protocol.encode_message(message), accept=[JSON_TYPE])
    assert UNPICKLED == []
    assert TaskMessage.decode(message, accept=["json", "pickle"]).args == ("tripwire",)
    assert UNPICKLED == ["tripwire"]


def test_an_unknown_content_type_is_refused():
    message = TaskMessage("t").encode()
    message.content_type = "application/x-unheard-of"
    with pytest.raises((ContentDisallowed, SerializationError)):
        TaskMessage.decode(message, accept=["json"])


def raw(body, content_type=JSON_TYPE):
    return protocol.Message(body=body, message_id="raw-id", type="t",
                            content_type=content_type)


def valid_body(**changes):
    body = {"v": 1, "id": "raw-id", "task": "t", "args": [], "kwargs": {}, "retries": 0,
            "eta": None, "expires": None}
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize("body", [
    b"", b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null",
    valid_body(args="abc"), valid_body(args={"a": 1}), valid_body(kwargs=[1]),
    valid_body(kwargs={"__mt__": "dict", "v": [[1, 2]]}),
    valid_body(retries=-1), valid_body(retries="3"), valid_body(retries=1.5),
    b'{"args": {"__mt__": "no-such-tag", "v": 1}}',
], ids=lambda body: body[:40].decode("utf-8", "replace"))
def test_a_malformed_body_is_a_serialization_error(body):
    with pytest.raises(SerializationError):
        TaskMessage.decode(raw(body))


def test_a_body_without_optional_keys_decodes_with_defaults():
    decoded = TaskMessage.decode(raw(b'{"v": 1, "later": "ignored"}'))
    assert (decoded.id, decoded.task, decoded.args, decoded.kwargs, decoded.retries) == (
        "raw-id", "t", (), {}, 0)


def test_malformed_protocol_bytes_are_a_protocol_error():
    with pytest.raises(ProtocolError):
        TaskMessage.from_bytes(b"\x00\x01")


# -- to_epoch / from_epoch ---------------------------------------------------------------------

def test_a_naive_datetime_is_taken_as_utc():
    naive = datetime.datetime(2024, 1, 1, 0, 0, 0)
    assert to_epoch(naive) == 1704067200.0


@pytest.mark.parametrize("tz, hours", [(UTC, 0), (PLUS_2, 2), (MINUS_0530, -5.5)])
def test_an_aware_datetime_is_honoured(tz, hours):
    aware = datetime.datetime(2024, 1, 1, 0, 0, 0, tzinfo=tz)
    assert to_epoch(aware) == 1704067200.0 - hours * 3600


def test_numbers_are_epoch_seconds_and_none_is_zero():
    assert to_epoch(1700000000) == 1700000000.0
    assert isinstance(to_epoch(5), float)
    assert to_epoch(12.5) == 12.5
    assert to_epoch(None) == 0.0


def test_from_epoch_gives_an_aware_utc_datetime_and_none_for_zero():
    assert from_epoch(1704067200.0) == datetime.datetime(2024, 1, 1, tzinfo=UTC)
    assert from_epoch(1704067200.0).tzinfo is not None
    assert from_epoch(0) is None and from_epoch(0.0) is None


def test_a_datetime_eta_on_a_message_is_kept_as_epoch_seconds():
    eta = datetime.datetime(2030, 1, 1, 14, 0, tzinfo=PLUS_2)
    message = TaskMessage("t", eta=eta, expires=datetime.datetime(2030, 1, 1, 13, 0))
    assert message.eta == datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert message.expires == datetime.datetime(2030, 1, 1, 13, 0, tzinfo=UTC).timestamp()


# -- result metas ------------------------------------------------------------------------------

def roundtrip(meta, serializer="json", accept=None):
    content_type, payload = encode_result_meta(meta, serializer)
    return decode_result_meta(meta.task_id, meta.status, content_type, payload, accept)


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_success_meta_round_trips(serializer):
    value = {"total": 5, "items": (1, 2), "when": datetime.datetime(2024, 5, 1, 9, 0)}
    meta = ResultMeta("id-1", "SUCCESS", value, None, "tests.message.add", 2, 1700000000.5)
    decoded = roundtrip(meta, serializer)
    assert (decoded.task_id, decoded.status, decoded.result, decoded.traceback, decoded.task,
            decoded.retries, decoded.date_done) == (
        "id-1", "SUCCESS", value, None, "tests.message.add", 2, 1700000000.5)


@pytest.mark.parametrize("serializer", ["json", "pickle"])
@pytest.mark.parametrize("exc", [
    ValueError("bad value"), KeyError("missing"), ProbeError("probe", 42),
    MaxRetriesExceededError("gave up"), NotRegistered("task 'x' is not registered"),
], ids=lambda exc: type(exc).__name__)
def test_a_failure_meta_round_trips_its_exception_and_traceback(serializer, exc):
    tb = "Traceback (most recent call last):\n  ...\n%s: %s\n" % (type(exc).__name__, exc)
    decoded = roundtrip(ResultMeta("id-2", "FAILURE", exc, tb, "t"), serializer)
    assert decoded.status == "FAILURE"
    assert type(decoded.result) is type(exc)
    assert decoded.result.args == exc.args
    assert decoded.traceback == tb


def test_a_meta_without_payload_is_just_its_state():
    meta = decode_result_meta("id-3", "PENDING", "", b"")
    assert (meta.task_id, meta.status, meta.result, meta.traceback) == (
        "id-3", "PENDING", None, None)


def test_the_children_of_a_result_travel_with_it_and_only_when_it_has_some():
    _type, payload = encode_result_meta(ResultMeta("id-8", "SUCCESS", 1, children=["a", "b"]))
    assert decode_result_meta("id-8", "SUCCESS", JSON_TYPE, payload).children == ("a", "b")
    _type, payload = encode_result_meta(ResultMeta("id-8", "SUCCESS", 1))
    assert b"children" not in payload
    assert decode_result_meta("id-8", "SUCCESS", JSON_TYPE, payload).children == ()
    for odd in (b'"a"', b'[1]', b'{"x": 1}'):                   # not ours: no children
        payload = b'{"status": "SUCCESS", "result": 1, "children": %s}' % odd
        assert decode_result_meta("id-8", "SUCCESS", JSON_TYPE, payload).children == ()


def test_fields_of_a_result_of_the_wrong_type_read_as_none():
    payload = (b'{"status": "FAILURE", "result": 1, "traceback": 5, "task": [1],'
               b' "retries": "x", "date_done": "soon"}')
    meta = decode_result_meta("id-9", "FAILURE", JSON_TYPE, payload)
    assert (meta.traceback, meta.task, meta.retries, meta.date_done) == (None, "", 0, 0.0)


def test_a_result_the_serializer_cannot_carry_becomes_a_failure_saying_so():
    meta = ResultMeta("id-4", "SUCCESS", Unsendable(), None, "t")
    content_type, payload = encode_result_meta(meta, "json")
    stored = serialization.loads(payload, content_type)
    assert stored["status"] == "FAILURE"
    assert isinstance(stored["result"], SerializationError)
    assert "Unsendable" in str(stored["result"])


def test_an_unpicklable_result_becomes_a_json_failure_saying_so():
    meta = ResultMeta("id-5", "SUCCESS", threading.Lock(), None, "t")
    content_type, payload = encode_result_meta(meta, "pickle")
    assert content_type == JSON_TYPE
    stored = serialization.loads(payload, content_type, ["json"])
    assert stored["status"] == "FAILURE" and "lock" in str(stored["result"])


def test_a_result_of_a_refused_content_type_is_not_decoded():
    del UNPICKLED[:]
    content_type, payload = encode_result_meta(
        ResultMeta("id-6", "SUCCESS", Tripwire()), "pickle")
    assert content_type == PICKLE_TYPE
    with pytest.raises(ContentDisallowed):
        decode_result_meta("id-6", "SUCCESS", content_type, payload, ["json"])
    assert UNPICKLED == []


def test_a_result_payload_that_does_not_decode_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="id-7"):
        decode_result_meta("id-7", "SUCCESS", JSON_TYPE, b"{broken")
    with pytest.raises(ProtocolError, match="id-7"):
        decode_result_meta("id-7", "SUCCESS", JSON_TYPE, b"[1, 2]")



def test_eta_and_expires_take_iso_8601_strings_as_celery_does_and_name_bad_ones():
    """Celery passes an ISO 8601 `expires` or `eta` through; a bad one was a bare
    ValueError from float()."""
    from minitask.exceptions import ConfigurationError
    from minitask.message import to_epoch
    assert to_epoch("2030-01-01T00:00:00Z") == to_epoch("2030-01-01T05:30:00+05:30") \
        == to_epoch("2030-01-01 00:00:00") == 1893456000.0
    for bad in ("soon", "", object()):
        with pytest.raises(ConfigurationError, match="expires=.*expected a datetime"):
            to_epoch(bad, "expires")
