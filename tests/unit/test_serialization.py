"""Tests for minitask.serialization: round trips, the accept gate, errors, exceptions as data."""

import collections
import datetime
import decimal
import enum
import json
import pickle
import sys
import threading
import uuid
from unittest import mock

import pytest
from samekit import same

from minitask.exceptions import (
    ConfigurationError, ContentDisallowed, NotRegistered, RemoteTaskError, RetryTaskError,
    SerializationError,
)
from minitask.serialization import (
    JSON, PICKLE, YAML, check_serializer, content_type_for, dumps, exception_from_dict,
    exception_to_dict, from_jsonable, loads, name_for, normalize_accept, register, to_jsonable,
    unregister,
)

try:
    import yaml
except ImportError:
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
without_yaml = pytest.mark.skipif(yaml is not None, reason="PyYAML is installed")

JSON_TYPE = "application/json"
PICKLE_TYPE = "application/x-python-serialize"
YAML_TYPE = "application/x-yaml"
SERIALIZERS = [JSON, PICKLE] + ([YAML] if yaml is not None else [])

UTC = datetime.timezone.utc
PLUS_0530 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
ODD_OFFSET = datetime.timezone(-datetime.timedelta(hours=3, seconds=7, microseconds=11))


class ProbeError(Exception):
    """An exception class in a module the caller has imported: it must come back as itself."""


class Unencodable:
    """A type no tagged-JSON encoding exists for."""




def roundtrip(value, serializer=JSON):
    content_type, body = dumps(value, serializer)
    assert isinstance(body, bytes)
    return loads(body, content_type)


ROUND_TRIP_VALUES = [
    None, True, False, 0, -1, 2 ** 64, -(2 ** 80), 10 ** 700, -(2 ** 5000), 1.5, -0.0,
    float("inf"), float("-inf"), float("nan"), "", "héllo ☃", "\ud800 lone surrogate",
    [], [1, "a", None], {}, {"a": 1, "b": [1, 2]},
    (), (1,), (1, (2, (3, [4, (5,)]))), [(1, 2), (3, 4)],
    {1: "a", 2: "b"}, {(1, 2): "tuple key", None: 0, True: 1, 2.5: 2, "s": 3},
    {(1, (2, "x")): {(3,): (4,)}}, {"outer": {5: {"inner": (6,)}}},
    b"", b"\x00\xffbytes", bytearray(b"\x01\x02"),
    datetime.datetime(2024, 5, 1, 12, 30, 0, 250000),
    datetime.datetime(2024, 5, 1, 12, 30, 0, 1, tzinfo=UTC),
    datetime.datetime(1, 1, 1, tzinfo=PLUS_0530), datetime.datetime.max,
    datetime.datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=ODD_OFFSET),
    datetime.date(2024, 2, 29), datetime.date.min,
    datetime.time(0, 0), datetime.time(23, 59, 59, 999999),
    datetime.time(12, 0, 1, 5, tzinfo=PLUS_0530),
    datetime.timedelta(0), datetime.timedelta(days=-1, seconds=5, microseconds=3),
    datetime.timedelta.max,
    decimal.Decimal("1.2300"), decimal.Decimal("-0"), decimal.Decimal("1E+999999"),
    decimal.Decimal("Infinity"), decimal.Decimal("-Infinity"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    set(), {1, 2, 3}, frozenset({"a", (1, 2)}), {frozenset({1}), (2, b"x")},
    {"__mt__": "tuple", "v": [1, 2]}, {"__mt__": 1}, [{"__mt__": {"__mt__": "bytes"}}],
]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=lambda value: type(value).__name__)
def test_values_round_trip_with_their_types(value, serializer):
    if serializer == YAML and isinstance(value, str) and "\ud800" in value:
        pytest.skip("YAML cannot carry a lone surrogate")
    assert same(roundtrip(value, serializer), value)


def test_decimal_nan_round_trips_as_nan():
    result = roundtrip(decimal.Decimal("NaN"))
    assert isinstance(result, decimal.Decimal) and result.is_nan()


def test_aware_datetime_comes_back_with_a_fixed_offset():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        zone = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data on this machine")
    value = datetime.datetime(2024, 7, 1, 12, 0, tzinfo=zone)
    result = roundtrip(value)
    assert result == value
    assert result.utcoffset() == datetime.timedelta(hours=2)


def test_subclasses_travel_as_their_base():
    ordered = collections.OrderedDict([("b", 1), ("a", (2,))])
    point = collections.namedtuple("Point", "x y")(1, 2)
    assert same(roundtrip(ordered), {"b": 1, "a": (2,)})
    assert same(roundtrip(point), (1, 2))
    assert same(roundtrip(enum.IntEnum("Number", "ONE").ONE), 1)


def test_message_body_is_compact_utf8_json():
    content_type, body = dumps({"task": "x.y", "args": ["é"], "kwargs": {}})
    assert content_type == JSON_TYPE
    assert body == '{"task":"x.y","args":["é"],"kwargs":{}}'.encode("utf-8")


def test_tag_format_is_as_documented():
    value = (b"hi", datetime.date(2024, 5, 1), {1: decimal.Decimal("1.50")})
    assert json.loads(dumps(value)[1]) == {"__mt__": "tuple", "v": [
        {"__mt__": "bytes", "v": "aGk="},
        {"__mt__": "date", "v": "2024-05-01"},
        {"__mt__": "dict", "v": [[1, {"__mt__": "decimal", "v": "1.50"}]]},
    ]}


def test_user_dict_with_the_reserved_key_is_escaped():
    value = {"__mt__": "bytes", "v": "aGk="}
    assert json.loads(dumps(value)[1])["__mt__"] == "dict"
    assert roundtrip(value) == value


def test_other_languages_may_write_utc_as_z():
    body = b'{"__mt__":"datetime","v":"2024-05-01T12:00:00Z"}'
    assert loads(body, JSON_TYPE) == datetime.datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_to_jsonable_and_from_jsonable_build_and_read_bodies():
    data = to_jsonable({"result": (1, b"x")})
    assert data == {"result": {"__mt__": "tuple", "v": [1, {"__mt__": "bytes", "v": "eA=="}]}}
    assert from_jsonable(json.loads(json.dumps(data))) == {"result": (1, b"x")}


# --- the accept gate -----------------------------------------------------------------------

UNPICKLED = []


def _record_unpickling(marker):
    UNPICKLED.append(marker)
    return marker


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_unpickling, ("ran",))


def test_pickle_is_refused_when_only_json_is_accepted_and_never_unpickled():
    del UNPICKLED[:]
    body = pickle.dumps(_RunsCodeWhenUnpickled())
    with mock.patch.object(pickle, "loads", side_effect=AssertionError("pickle.loads reached")), \
            mock.patch.object(pickle, "Unpickler", side_effect=AssertionError("Unpickler reached")):
        with pytest.raises(ContentDisallowed, match=PICKLE_TYPE + ".*accepted are " + JSON_TYPE):
            loads(body, PICKLE_TYPE, accept=["json"])
    assert UNPICKLED == []
    assert loads(body, PICKLE_TYPE, accept=["pickle"]) == "ran"   # the body was real after all
    assert UNPICKLED == ["ran"]


def test_accept_takes_names_and_content_types():
    assert normalize_accept(["json", PICKLE_TYPE]) == frozenset({JSON_TYPE, PICKLE_TYPE})
    assert normalize_accept("json") == frozenset({JSON_TYPE})
    assert normalize_accept(None) >= frozenset({JSON_TYPE, PICKLE_TYPE})
    assert normalize_accept(["Application/JSON; charset=utf-8"]) == frozenset({JSON_TYPE})
    assert loads(b"[1]", JSON_TYPE, accept=[JSON_TYPE]) == [1]
    assert loads(b"[1]", "application/json; charset=utf-8", accept="json") == [1]


def test_unknown_name_in_accept_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown serializer 'jsn'"):
        normalize_accept(["jsn"])
    with pytest.raises(ConfigurationError):
        loads(b"[1]", JSON_TYPE, accept=["jsn"])


def test_content_type_not_accepted_is_content_disallowed():
    # Accepting everything registered still refuses a content type nobody registered.
    with pytest.raises(ContentDisallowed, match="text/plain"):
        loads(b"hello", "text/plain")
    with pytest.raises(ContentDisallowed):
        loads(b"hello", None)
    with pytest.raises(ContentDisallowed, match="accepted are nothing"):
        loads(b"[1]", JSON_TYPE, accept=[])


def test_accepted_but_unregistered_content_type_is_a_serialization_error():
    with pytest.raises(SerializationError, match="no serializer is registered for .*'text/plain'"):
        loads(b"hello", "text/plain", accept=["text/plain"])


@pytest.mark.parametrize("body", [
    b"", b"{", b"[1,2", b"\xff\xfe", b"[" * 100000 + b"]" * 100000,
    b'{"__mt__":"nope"}', b'{"__mt__":["x"]}', b'{"__mt__":"tuple","v":3}',
    b'{"__mt__":"set","v":[[1]]}', b'{"__mt__":"bytes","v":"!!"}',
    b'{"__mt__":"date","v":"2024-13-01"}', b'{"__mt__":"dict","v":[[1]]}',
    b'{"__mt__":"timedelta","v":[1e9,0,0]}', b'{"__mt__":"exc","type":3}',
    b'{"__mt__":"datetime","v":"2024-01-01T00:00+24:00"}',
])
def test_bad_json_bodies_raise_serialization_error(body):
    with pytest.raises(SerializationError, match="cannot decode application/json body"):
        loads(body, JSON_TYPE)


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x80\x04\x95", b"cnosuchmodule\nthing\n."])
def test_bad_pickle_bodies_raise_serialization_error(body):
    with pytest.raises(SerializationError, match="cannot decode " + PICKLE_TYPE + " body"):
        loads(body, PICKLE_TYPE)


def test_body_of_the_wrong_type_is_a_serialization_error():
    with pytest.raises(SerializationError, match="expected bytes"):
        loads(12, JSON_TYPE)
    assert loads(bytearray(b"[1]"), JSON_TYPE) == [1]
    assert loads(memoryview(b"[1]"), JSON_TYPE) == [1]


# --- encoding errors -----------------------------------------------------------------------

def test_json_error_names_the_innermost_offending_type():
    nested = {"a": [1, {"b": (Unencodable(),)}]}
    with pytest.raises(SerializationError, match="a value of type 'Unencodable' with json"):
        dumps(nested)
    with pytest.raises(SerializationError, match="type 'lock'"):
        dumps([threading.Lock()])


def test_circular_value_is_a_serialization_error():
    loop = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="type 'list' with json"):
        dumps(loop)


def test_pickle_error_names_the_innermost_offending_type():
    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    with pytest.raises(SerializationError, match="a value of type 'lock' with pickle"):
        dumps({"a": [1, (Holder(),)]}, PICKLE)
    with pytest.raises(SerializationError, match="type 'function' with pickle"):
        dumps([lambda: None], PICKLE)


@needs_yaml
def test_yaml_error_names_yaml():
    with pytest.raises(SerializationError, match="type 'Unencodable' with yaml"):
        dumps([Unencodable()], YAML)


def test_unknown_serializer_is_a_configuration_error():
    expected = "unknown serializer 'x': expected one of json, pickle"
    with pytest.raises(ConfigurationError, match=expected):
        dumps(1, "x")


# --- the registry --------------------------------------------------------------------------

def test_names_and_content_types():
    assert content_type_for(JSON) == JSON_TYPE
    assert content_type_for(PICKLE) == PICKLE_TYPE
    assert name_for(JSON_TYPE) == JSON
    assert name_for("application/x-python-serialize; x=1") == PICKLE
    assert check_serializer(JSON) == JSON
    with pytest.raises(ConfigurationError, match="unknown serializer"):
        content_type_for("msgpack")
    with pytest.raises(ConfigurationError, match="unknown content type 'text/plain'"):
        name_for("text/plain")


@needs_yaml
def test_yaml_is_registered_when_pyyaml_is_importable():
    assert content_type_for(YAML) == YAML_TYPE
    assert name_for(YAML_TYPE) == YAML
    assert check_serializer(YAML) == YAML


@without_yaml
def test_yaml_is_unknown_without_pyyaml():
    with pytest.raises(ConfigurationError, match="yaml needs PyYAML"):
        check_serializer(YAML)
    with pytest.raises(SerializationError, match="no serializer is registered"):
        loads(b"[1]", YAML_TYPE, accept=[YAML_TYPE])


@pytest.fixture
def reversed_text():
    register("reversed", lambda value: value[::-1], lambda body: body.decode("utf-8")[::-1],
             "text/x-reversed")
    try:
        yield "reversed"
    finally:
        unregister("reversed")


def test_custom_serializer_round_trips(reversed_text):
    content_type, body = dumps("hello", reversed_text)
    assert (content_type, body) == ("text/x-reversed", b"olleh")
    assert loads(body, content_type, accept=[reversed_text]) == "hello"
    assert name_for("text/x-reversed") == reversed_text
    with pytest.raises(ConfigurationError, match="expected one of json, pickle.*reversed"):
        check_serializer("nope")


def test_custom_serializer_errors_become_serialization_errors(reversed_text):
    with pytest.raises(SerializationError, match="type 'int' with reversed"):
        dumps(5, reversed_text)
    with pytest.raises(SerializationError, match="cannot decode text/x-reversed body"):
        loads(b"\xff", "text/x-reversed")


def test_content_type_cannot_belong_to_two_names(reversed_text):
    with pytest.raises(ConfigurationError, match="already registered as 'reversed'"):
        register("other", str, bytes, "text/x-reversed")


def test_unregistered_serializer_is_gone(reversed_text):
    unregister(reversed_text)
    try:
        with pytest.raises(ConfigurationError):
            dumps("x", reversed_text)
        with pytest.raises(ContentDisallowed):
            loads(b"x", "text/x-reversed")
    finally:
        register("reversed", str, bytes, "text/x-reversed")   # for the fixture's unregister


@pytest.mark.parametrize("name, content_type", [
    ("", "a/b"), ("a/b", "a/b"), (3, "a/b"), ("x", "nope"), ("x", None),
])
def test_register_refuses_malformed_names_and_content_types(name, content_type):
    with pytest.raises(ConfigurationError):
        register(name, str, bytes, content_type)


# --- exceptions as data --------------------------------------------------------------------

def test_exception_to_dict_shape():
    d = exception_to_dict(ValueError("bad", 3), "Traceback ...")
    assert d == {"type": "ValueError", "message": "('bad', 3)", "args": ["bad", 3],
                 "traceback": "Traceback ..."}
    assert exception_to_dict(ProbeError("x"))["type"] == f"{__name__}.ProbeError"


def test_unencodable_exception_args_become_their_repr():
    thing = Unencodable()
    assert exception_to_dict(ValueError(thing))["args"] == [repr(thing)]


def test_builtin_exception_comes_back_as_itself():
    exc = exception_from_dict(exception_to_dict(KeyError("k"), "tb text"))
    assert type(exc) is KeyError and exc.args == ("k",) and exc.remote_traceback == "tb text"


def test_os_error_keeps_its_file_name():
    original = FileNotFoundError(2, "No such file or directory", "/nowhere")
    exc = exception_from_dict(exception_to_dict(original))
    assert type(exc) is FileNotFoundError and str(exc) == str(original)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_exceptions_inside_values_round_trip(serializer):
    result = roundtrip({"error": ValueError("bad", (1, b"x")), "n": 1}, serializer)
    assert type(result["error"]) is ValueError
    assert result["error"].args == ("bad", (1, b"x"))


def test_minitask_exception_comes_back_as_itself():
    exc = roundtrip(NotRegistered("tasks.nope"))
    assert type(exc) is NotRegistered and str(exc) == "tasks.nope"


def test_retry_tombstone_comes_back_as_retry_task_error_with_the_same_message():
    original = RetryTaskError(exc=ValueError("boom"), countdown=5)
    exc = roundtrip(original)
    assert type(exc) is RetryTaskError and str(exc) == str(original)


def test_remote_task_error_keeps_its_type_name_and_does_not_nest():
    original = RemoteTaskError("faraway.errors.QuotaError", "over quota", "remote tb")
    d = exception_to_dict(original, "local tb")
    assert d["type"] == "faraway.errors.QuotaError" and d["traceback"] == "remote tb"
    exc = exception_from_dict(d)
    assert type(exc) is RemoteTaskError
    assert exc.type_name == "faraway.errors.QuotaError"
    assert (exc.message, exc.traceback_text) == ("over quota", "remote tb")
    assert str(exc) == str(original)
    assert str(roundtrip(exc)) == str(original)


def test_class_in_an_imported_module_comes_back_as_itself():
    assert sys.modules[ProbeError.__module__] is not None
    exc = roundtrip(ProbeError("quota", 7))
    assert type(exc) is ProbeError and exc.args == ("quota", 7)


def test_class_in_a_module_not_imported_is_not_imported(tmp_path, monkeypatch):
    module_name = "mt_never_imported_" + uuid.uuid4().hex
    marker = tmp_path / "imported"
    (tmp_path / (module_name + ".py")).write_text(
        "open(%r, 'w').close()\nclass QuotaError(Exception):\n    pass\n" % str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))   # importable, so only the rule keeps it out
    type_name = module_name + ".QuotaError"
    d = {"type": type_name, "message": "over", "args": ["over"], "traceback": "tb"}
    exc = exception_from_dict(d)
    assert type(exc) is RemoteTaskError
    assert (exc.type_name, exc.message, exc.traceback_text) == (type_name, "over", "tb")
    assert module_name not in sys.modules
    assert not marker.exists()


def test_name_of_a_function_falls_back_and_calls_nothing(monkeypatch):
    import os
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    body = json.dumps({"__mt__": "exc", "type": "os.system", "message": "rm -rf /",
                       "args": ["rm -rf /"], "traceback": None}).encode()
    exc = loads(body, JSON_TYPE)
    assert type(exc) is RemoteTaskError and exc.type_name == "os.system"
    assert calls == []


@pytest.mark.parametrize("type_name", ["collections.OrderedDict", "builtins.print", "exit",
                                       "minitask.serialization.dumps", "NoSuchError", "os.path.sep",
                                       f"{__name__}.ProbeError.__init__", "", "."])
def test_names_that_are_not_exception_classes_fall_back(type_name):
    exc = exception_from_dict({"type": type_name, "message": "m", "args": ["m"], "traceback": None})
    assert type(exc) is RemoteTaskError and exc.type_name == type_name


class PickyError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


class NotAnInstanceError(Exception):
    def __new__(cls, *args):
        return 42


@pytest.mark.parametrize("cls", [PickyError, NotAnInstanceError])
def test_constructor_that_refuses_the_args_falls_back(cls):
    d = {"type": f"{__name__}.{cls.__qualname__}", "message": "m", "args": ["m"], "traceback": "tb"}
    exc = exception_from_dict(d)
    assert type(exc) is RemoteTaskError
    assert exc.type_name == d["type"] and exc.remote_traceback == "tb"


class Outer:
    class InnerError(Exception):
        pass


def test_nested_exception_class_is_found_through_its_qualname():
    d = exception_to_dict(Outer.InnerError("x"))
    assert d["type"] == f"{__name__}.Outer.InnerError"
    assert type(exception_from_dict(d)) is Outer.InnerError


def test_class_defined_in_a_function_falls_back():
    class LocalError(Exception):
        pass

    exc = roundtrip(LocalError("x"))
    assert type(exc) is RemoteTaskError and "<locals>" in exc.type_name and exc.message == "x"


@pytest.mark.parametrize("d", [None, [], {"message": "no type"}, {"type": "X", "args": "notalist"},
                               {"type": "X", "traceback": 3}])
def test_malformed_exception_data_is_a_serialization_error(d):
    with pytest.raises(SerializationError, match="malformed exception data"):
        exception_from_dict(d)


def test_exception_data_with_unreadable_args_falls_back():
    exc = exception_from_dict({"type": "ValueError", "message": "m", "args": [{"__mt__": "nope"}]})
    assert type(exc) is RemoteTaskError and exc.type_name == "ValueError"


def test_exception_pickles_natively():
    exc = roundtrip(ProbeError("x"), PICKLE)
    assert type(exc) is ProbeError and exc.args == ("x",)
