"""Properties of minitask.serialization: round trips keep values and types; garbage fails cleanly"""

import datetime
import json
import os
import pickle
import sys
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "unit"))

from samekit import same  # noqa: E402
from minitask.exceptions import ContentDisallowed, SerializationError  # noqa: E402
from minitask.serialization import content_type_for, dumps, loads, normalize_accept  # noqa: E402

try:
    import yaml
except ImportError:
    yaml = None

PICKLE_TYPE = "application/x-python-serialize"
REGISTERED_TYPES = sorted(normalize_accept(None))

# Fixed offsets down to the microsecond, which isoformat() writes as +HH:MM:SS.ffffff.
offsets = st.timedeltas(min_value=-datetime.timedelta(hours=23, minutes=59),
                        max_value=datetime.timedelta(hours=23, minutes=59)).map(datetime.timezone)
zones = st.none() | offsets

hashable_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2 ** 4000), 2 ** 4000)
    | st.floats(allow_nan=False) | st.text() | st.binary()
    | st.datetimes(timezones=zones) | st.dates() | st.times(timezones=zones) | st.timedeltas()
    | st.decimals(allow_nan=False, allow_infinity=False) | st.uuids()
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
scalars = hashable_scalars | st.floats() | st.binary().map(bytearray)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.sampled_from(["__mt__", "v", "type"]) | st.text(), inner, max_size=5)
        | st.dictionaries(hashables, inner, max_size=5)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=5)
    ),
    max_leaves=25,
)

TAGS = ["tuple", "set", "frozenset", "dict", "bytes", "bytearray", "datetime", "date", "time",
        "timedelta", "decimal", "uuid", "int", "exc", "nope"]
TYPE_NAMES = ["ValueError", "KeyError", "OSError", "minitask.exceptions.RetryTaskError",
              "minitask.exceptions.RemoteTaskError", "os.system", "builtins.exit", "no.such.Error"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=3), inner, max_size=4)),
    max_leaves=10,
)
# JSON shaped like tags, with payloads right or wrong: the decoder's hardest garbage.
tagged_garbage = st.recursive(
    json_values,
    lambda inner: (
        st.fixed_dictionaries({"__mt__": st.sampled_from(TAGS) | inner, "v": inner})
        | st.fixed_dictionaries(
            {"__mt__": st.just("exc"), "type": st.sampled_from(TYPE_NAMES) | inner},
            optional={"message": inner, "args": st.lists(inner, max_size=3), "traceback": inner})
        | st.lists(inner, max_size=4)
    ),
    max_leaves=12,
)




def roundtrip(value, serializer):
    content_type, body = dumps(value, serializer)
    assert content_type == content_type_for(serializer)
    return loads(body, content_type)


@settings(deadline=None)
@given(values)
def test_json_round_trip_keeps_values_and_types(value):
    assert same(roundtrip(value, "json"), value)


@settings(deadline=None)
@given(values)
def test_pickle_round_trip_keeps_values_and_types(value):
    assert same(roundtrip(value, "pickle"), value)


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
@settings(deadline=None)
@given(values)
def test_yaml_round_trip_keeps_values_and_types(value):
    assert same(roundtrip(value, "yaml"), value)


@settings(deadline=None)
@given(st.binary(), st.sampled_from(REGISTERED_TYPES + ["text/plain"]))
def test_garbage_raises_only_serialization_error_or_content_disallowed(body, content_type):
    try:
        loads(body, content_type)
    except (SerializationError, ContentDisallowed):  # the two failures allowed
        pass


@settings(deadline=None)
@given(tagged_garbage)
def test_tag_shaped_garbage_raises_only_serialization_error(data):
    body = json.dumps(data).encode("utf-8")
    try:
        loads(body, "application/json", accept=["json"])
    except SerializationError:  # the one failure allowed
        pass


@settings(deadline=None)
@given(st.binary(), st.sampled_from(["json", ["json"], ["application/json"], []]))
def test_pickle_is_refused_unless_accepted(body, accept):
    with mock.patch.object(pickle, "loads", side_effect=AssertionError("pickle.loads reached")):
        with pytest.raises(ContentDisallowed):
            loads(body, PICKLE_TYPE, accept=accept)
