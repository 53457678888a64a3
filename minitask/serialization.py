"""Turn task arguments and results into bytes and back: json (default), pickle, yaml, custom.

A body always travels with its content type, and the receiver decides what it accepts::

    dumps(value, "json")  -> to_jsonable(value) -> JSON text -> UTF-8 -> ("application/json", body)
    loads(body, "application/json", accept)
                          -> accept check -> UTF-8 -> JSON parse, each object through the tag
                             decoder (bottom-up) -> value

Callers choose the serializer (task option `serializer`, setting `TASK_SERIALIZER`) and what
they accept (setting `ACCEPT_CONTENT`); this module enforces the choice and keeps the registry
of serializers. Framing, compression and signing are left to others.

Invariants:

- A content type outside `accept` is refused with `ContentDisallowed` before a byte of the body
  is decoded, so a pickle is never unpickled unless pickle was accepted.
- Decoding foreign bytes raises `SerializationError` or `ContentDisallowed` and nothing else.
- `loads(dumps(x)) == x` with the same types, recursively, for every type in the table below.
- Nothing is ever imported because a message names it (see "Exceptions" below).

Content types: json "application/json", pickle "application/x-python-serialize", yaml
"application/x-yaml" (only when PyYAML is importable). Content type parameters such as
"; charset=utf-8" are ignored, and content types compare case-insensitively; serializer names
are exact ("json", not "JSON").

Tagged JSON (the body of "application/json", and what yaml bodies carry too)
----------------------------------------------------------------------------
Plain JSON stands for itself: null, true/false, numbers (Python's json writes NaN, Infinity
and -Infinity for those floats), strings, arrays (lists) and objects with string keys (dicts).
Every other value is an object with the one reserved key "__mt__" naming a tag; values inside a
tag are tagged JSON themselves::

    {"__mt__": "tuple",     "v": [item, ...]}
    {"__mt__": "set",       "v": [item, ...]}          also "frozenset"
    {"__mt__": "dict",      "v": [[key, value], ...]}  a dict with any key that is not a string,
                                                       or with a key "__mt__" of its own (the
                                                       escape: such user data never reads as a tag)
    {"__mt__": "bytes",     "v": "aGVsbG8="}           base64, standard alphabet, padded;
                                                       also "bytearray"
    {"__mt__": "datetime",  "v": "2024-05-01T12:30:00.250000+02:00"}
                                                       ISO 8601 as Python's isoformat(): no offset
                                                       means naive; readers also accept "Z"
    {"__mt__": "date",      "v": "2024-05-01"}
    {"__mt__": "time",      "v": "12:30:00.250000+02:00"}
    {"__mt__": "timedelta", "v": [days, seconds, microseconds]}   integers, normalised as Python
                                                       does: 0 <= seconds < 86400, 0 <= us < 10**6
    {"__mt__": "decimal",   "v": "-12.3400"}           exact; also "NaN", "Infinity", "-Infinity"
    {"__mt__": "uuid",      "v": "12345678-1234-5678-1234-567812345678"}
    {"__mt__": "int",       "v": "-1f3a..."}           hex digits, "-" when negative; only for
                                                       ints over 2000 bits, which many JSON readers
                                                       (Python's own int-string limit included)
                                                       refuse as a plain number
    {"__mt__": "exc", "type": "ValueError", "message": "bad", "args": [...], "traceback": null}

A reader that meets an unknown tag, or a known tag with a payload of the wrong shape, fails with
`SerializationError` instead of guessing. Subclasses travel as their base (an `OrderedDict` as an
object, a namedtuple as a tuple, an `IntEnum` as an int), and an aware datetime or time comes back
with a fixed-offset `datetime.timezone` equal to its original offset.

Exceptions travel as the "exc" tag; how they are described, and the rule for rebuilding them
(never by importing what a message names), live in `minitask.remote_errors`.
"""

import base64
import collections
import datetime
import decimal
import itertools
import json
import pickle
import re
import threading
import uuid

from minitask.exceptions import ConfigurationError, ContentDisallowed, SerializationError
from minitask import remote_errors
from minitask.remote_errors import exception_from_decoded

try:
    import yaml
except ImportError:  # PyYAML is optional: without it there is simply no "yaml" serializer
    yaml = None

__all__ = [
    "JSON", "PICKLE", "YAML", "dumps", "loads", "register", "unregister", "content_type_for",
    "name_for", "check_serializer", "normalize_accept", "exception_to_dict",
    "exception_from_dict", "to_jsonable", "from_jsonable",
]

JSON, PICKLE, YAML = "json", "pickle", "yaml"

# Protocol 4 is the default of every Python we support, so any of them reads what any wrote.
_PICKLE_PROTOCOL = 4

_TAG = "__mt__"
# Below this many bits an int is a plain JSON number: 2000 bits is ~600 decimal digits, under
# the smallest int-string limit Python lets a user set (640 digits), so every reader copes.
_MAX_PLAIN_INT_BITS = 2000
# The UTC offset at the end of an ISO 8601 time, as isoformat() writes it.
_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{6}))?)?$")
# How deep the error path looks into containers for the innermost value pickle refuses.
_MAX_CULPRIT_DEPTH = 20

_Serializer = collections.namedtuple("_Serializer", "name content_type encoder decoder")
_by_name = {}           # name -> _Serializer, in registration order (error messages list them)
_by_content_type = {}   # content type -> name
_registry_lock = threading.Lock()


# --- the registry --------------------------------------------------------------------------

def register(name, encoder, decoder, content_type):
    """Add a serializer, or replace the one of the same name.

    `encoder(value)` returns bytes or str (str is sent as UTF-8); `decoder(body_bytes)` returns
    the value. Whatever they raise becomes `SerializationError`. A content type already owned by
    another name raises `ConfigurationError`, so `name_for` never has two answers.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigurationError(
            f"serializer name {name!r}: expected a non-empty string without '/'")
    if not isinstance(content_type, str) or "/" not in content_type:
        raise ConfigurationError(
            f"content type {content_type!r}: expected type/subtype, e.g. 'application/x-msgpack'")
    if not callable(encoder) or not callable(decoder):
        raise ConfigurationError(f"serializer {name!r}: encoder and decoder must be callable")
    content_type = _normalize_content_type(content_type)
    with _registry_lock:
        owner = _by_content_type.get(content_type)
        if owner is not None and owner != name:
            raise ConfigurationError(
                f"content type {content_type!r} is already registered as {owner!r}; "
                f"unregister {owner!r} first")
        old = _by_name.get(name)
        if old is not None:
            del _by_content_type[old.content_type]
        # Assigning (not popping and re-adding) keeps a replaced name in its place in the order.
        _by_name[name] = _Serializer(name, content_type, encoder, decoder)
        _by_content_type[content_type] = name


def unregister(name):
    """Remove a serializer; `ConfigurationError` when there is none of that name."""
    with _registry_lock:
        check_serializer(name)
        entry = _by_name.pop(name)
        del _by_content_type[entry.content_type]


def check_serializer(name):
    """Return `name` if a serializer of that name is registered, else raise `ConfigurationError`.

    Meant for validating settings and task options early, at definition or start-up time.
    """
    if not isinstance(name, str) or name not in _by_name:
        hint = ""
        if name == YAML and yaml is None:
            hint = " (yaml needs PyYAML, which is not installed)"
        raise ConfigurationError(
            f"unknown serializer {name!r}: expected one of {', '.join(_by_name)}{hint}")
    return name


def content_type_for(name):
    """The content type a serializer writes; `ConfigurationError` for an unknown name."""
    entry = _by_name.get(name) if isinstance(name, str) else None
    if entry is None:
        check_serializer(name)
    return entry.content_type


def name_for(content_type):
    """The serializer name for a content type; `ConfigurationError` for an unknown one."""
    name = None
    if isinstance(content_type, str):
        name = _by_content_type.get(_normalize_content_type(content_type))
    if name is None:
        raise ConfigurationError(
            f"unknown content type {content_type!r}: expected one of {', '.join(_by_content_type)}")
    return name


def normalize_accept(accept):
    """Turn an accept list of names and/or content types into a frozenset of content types.

    None means every registered content type. A lone string is one item, not its letters.
    An item with a "/" is taken as a content type even when nothing is registered for it (that
    body is then refused with `SerializationError` rather than `ContentDisallowed`); an item
    without one must be a registered name, else `ConfigurationError`.
    """
    if accept is None:
        return frozenset(_by_content_type)
    if isinstance(accept, str):
        accept = (accept,)
    content_types = set()
    for item in accept:
        if not isinstance(item, str):
            raise ConfigurationError(
                f"accept item {item!r}: expected a serializer name or a content type")
        content_types.add(_normalize_content_type(item) if "/" in item else content_type_for(item))
    return frozenset(content_types)


def _normalize_content_type(content_type):
    return content_type.split(";", 1)[0].strip().lower()


# --- dumps and loads -----------------------------------------------------------------------

def dumps(value, serializer=JSON):
    """Encode `value`; return `(content_type, body_bytes)`.

    Raises `ConfigurationError` for an unknown serializer and `SerializationError`, naming the
    type of the innermost value it could not encode, when the value cannot be encoded.
    """
    entry = _by_name.get(serializer) if isinstance(serializer, str) else None
    if entry is None:
        check_serializer(serializer)
    try:
        body = entry.encoder(value)
        if isinstance(body, str):
            body = body.encode("utf-8")
    except _UnsupportedType as exc:
        raise SerializationError(
            f"cannot serialize a value of type {exc.type_name!r} with {serializer}") from exc
    except SerializationError:
        raise
    except Exception as exc:  # a user's encoder, __reduce__ or __str__ may raise anything at all
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__!r} with {serializer}: {exc}"
        ) from exc
    if not isinstance(body, bytes):
        if not isinstance(body, (bytearray, memoryview)):
            raise SerializationError(f"serializer {serializer!r} returned "
                                     f"{type(body).__name__!r}: expected bytes or str")
        body = bytes(body)
    return entry.content_type, body


def loads(body, content_type, accept=None):
    """Decode a body of the given content type.

    `accept` is None (everything registered) or names and/or content types. A content type
    outside it raises `ContentDisallowed` before anything is decoded; an accepted content type
    with no serializer registered, or a body that does not decode, raises `SerializationError`.
    """
    if not isinstance(content_type, str):
        raise ContentDisallowed(f"refusing content type {content_type!r}: expected a string")
    content_type = _normalize_content_type(content_type)
    if accept is None:
        allowed = content_type in _by_content_type
    else:
        accepted = normalize_accept(accept)
        allowed = content_type in accepted
    if not allowed:
        what = ", ".join(sorted(_by_content_type if accept is None else accepted)) or "nothing"
        raise ContentDisallowed(f"refusing content type {content_type!r}: accepted are {what}")
    entry = _by_name.get(_by_content_type.get(content_type))
    if entry is None:
        raise SerializationError(f"no serializer is registered for content type {content_type!r}")
    if isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    elif not isinstance(body, (bytes, str)):
        raise SerializationError(
            f"cannot decode a body of type {type(body).__name__!r}: expected bytes")
    try:
        if isinstance(body, str):
            body = body.encode("utf-8")
        return entry.decoder(body)
    except Exception as exc:
        # The body is foreign input. Whatever goes wrong decoding it -- a parse error, a bad
        # tag, pickle's many exception types, RecursionError on deep nesting -- means the same
        # thing to the caller: this body is unusable, and nothing else is affected.
        raise SerializationError(f"cannot decode {content_type} body: {exc}") from exc


# --- the tagged-JSON walk ------------------------------------------------------------------

class _UnsupportedType(SerializationError):
    """Raised by the walk for a value it has no encoding for; `dumps` names the serializer."""

    def __init__(self, value):
        self.type_name = type(value).__name__
        super().__init__(f"cannot serialize a value of type {self.type_name!r} with json")


def exception_to_dict(exc, traceback_text=None):
    """An exception as JSON-able data (`minitask.remote_errors`), its args in tagged JSON."""
    return remote_errors.exception_to_dict(exc, traceback_text, to_jsonable)


def exception_from_dict(d):
    """Undo `exception_to_dict` under the rules of `minitask.remote_errors`."""
    return remote_errors.exception_from_dict(d, from_jsonable)


def to_jsonable(value):
    """Return `value` as plain JSON data (dicts, lists, str, numbers, bool, None) with tags.

    The broker and result code use it to build bodies around values; `json.dumps` of the result
    is exactly what the json serializer sends. Raises `SerializationError` naming the innermost
    type it cannot encode, or when the value is nested too deeply (or contains itself).
    """
    try:
        return _to_jsonable(value)
    except RecursionError as exc:
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__!r} with json: "
            f"nested too deeply, or it contains itself") from exc


def from_jsonable(value):
    """Undo `to_jsonable`: turn parsed JSON data with tags back into Python values."""
    try:
        return _from_jsonable(value)
    except RecursionError as exc:
        raise SerializationError("cannot decode tagged JSON: nested too deeply") from exc


# Values of these exact types are JSON already: the fast path of the walk.
_PLAIN = frozenset({str, float, bool, type(None)})


def _to_jsonable(value):
    cls = type(value)
    if cls in _PLAIN:
        return value
    if cls is int:
        if value.bit_length() <= _MAX_PLAIN_INT_BITS:
            return value
        return {_TAG: "int", "v": format(value, "x")}
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _encoder_for_subclass(value)
    return encoder(value)


def _from_jsonable(value):
    cls = type(value)
    if cls is list:
        return [_from_jsonable(item) for item in value]
    if cls is dict:
        return _decode_object({key: _from_jsonable(item) for key, item in value.items()})
    return value


def _encode_dict(value):
    encoded = {}
    for key, item in value.items():
        if type(key) is not str or key == _TAG:
            pairs = [[_to_jsonable(k), _to_jsonable(v)] for k, v in value.items()]
            return {_TAG: "dict", "v": pairs}
        cls = type(item)
        if cls in _PLAIN or cls is int and item.bit_length() <= _MAX_PLAIN_INT_BITS:
            encoded[key] = item             # the fast path of _to_jsonable, inlined
        else:
            encoded[key] = _to_jsonable(item)
    return encoded


def _encode_list(value):
    return [item if type(item) in _PLAIN
            or type(item) is int and item.bit_length() <= _MAX_PLAIN_INT_BITS
            else _to_jsonable(item) for item in value]


def _tagged_items(tag):
    return lambda value: {_TAG: tag, "v": _encode_list(value)}


def _tagged_text(tag, to_text):
    return lambda value: {_TAG: tag, "v": to_text(value)}


def _encode_timedelta(value):
    return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}


def _encode_exception(value):
    encoded = {_TAG: "exc"}
    encoded.update(exception_to_dict(value))
    return encoded


def _b64(value):
    return base64.b64encode(value).decode("ascii")


_ENCODERS = {
    dict: _encode_dict,
    list: _encode_list,
    tuple: _tagged_items("tuple"),
    set: _tagged_items("set"),
    frozenset: _tagged_items("frozenset"),
    bytes: _tagged_text("bytes", _b64),
    bytearray: _tagged_text("bytearray", _b64),
    datetime.datetime: _tagged_text("datetime", datetime.datetime.isoformat),
    datetime.date: _tagged_text("date", datetime.date.isoformat),
    datetime.time: _tagged_text("time", datetime.time.isoformat),
    datetime.timedelta: _encode_timedelta,
    decimal.Decimal: _tagged_text("decimal", str),
    uuid.UUID: _tagged_text("uuid", str),
}

# Subclasses travel as their base. Order matters: bool before int is moot (bool cannot be
# subclassed), but datetime must come before date, which it subclasses.
_SUBCLASS_ENCODERS = (
    (str, str.__str__),
    (int, lambda value: _to_jsonable(int.__int__(value))),
    (float, float.__float__),
    (datetime.datetime, _ENCODERS[datetime.datetime]),
    *((base, encoder) for base, encoder in _ENCODERS.items() if base is not datetime.datetime),
    (BaseException, _encode_exception),
)


def _encoder_for_subclass(value):
    for base, encoder in _SUBCLASS_ENCODERS:
        if isinstance(value, base):
            return encoder
    raise _UnsupportedType(value)


def _decode_object(obj):
    """Turn one parsed JSON object back into a value; its contents are decoded already.

    Used as json's object_hook, which calls it bottom-up, and by `from_jsonable`.
    """
    if _TAG not in obj:
        return obj
    tag = obj[_TAG]
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        raise SerializationError(f"unknown tag {tag!r:.60}")
    try:
        return decoder(obj)
    except SerializationError:
        raise
    except Exception as exc:  # the right tag with the wrong payload: bad base64, an impossible
        # date, an unhashable set item, a string where a list belongs...
        raise SerializationError(f"malformed {tag!r} tag: {exc}") from exc


def _payload(obj, kind):
    value = obj.get("v")
    if type(value) is not kind:
        raise SerializationError(f"malformed {obj[_TAG]!r} tag: 'v' must be a {kind.__name__}")
    return value


def _decode_pairs(obj):
    decoded = {}
    for pair in _payload(obj, list):
        if type(pair) is not list or len(pair) != 2:
            raise SerializationError("malformed 'dict' tag: expected [key, value] pairs")
        decoded[pair[0]] = pair[1]
    return decoded


def _decode_timedelta(obj):
    parts = _payload(obj, list)
    if len(parts) != 3 or any(type(part) is not int for part in parts):
        raise SerializationError(
            "malformed 'timedelta' tag: expected [days, seconds, microseconds]")
    return datetime.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


def _decode_datetime(obj):
    text, tzinfo = _split_offset(_payload(obj, str))
    return datetime.datetime.fromisoformat(text).replace(tzinfo=tzinfo)


def _decode_time(obj):
    text, tzinfo = _split_offset(_payload(obj, str))
    return datetime.time.fromisoformat(text).replace(tzinfo=tzinfo)


def _split_offset(text):
    """Split "...+HH:MM[:SS[.ffffff]]" or "...Z" into the naive text and a fixed offset.

    The offset is read here, not by fromisoformat: Python before 3.11 does not read "Z", which
    other languages like to write, and every version reads an offset under one second as UTC.
    """
    if text.endswith(("Z", "z")):
        return text[:-1], datetime.timezone.utc
    match = _OFFSET.search(text)
    if match is None:
        return text, None
    sign, hours, minutes, seconds, micros = match.groups()
    offset = datetime.timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds or 0),
                                microseconds=int(micros or 0))
    return text[:match.start()], datetime.timezone(-offset if sign == "-" else offset)


def _decode_exception(obj):
    return exception_from_decoded(obj)          # its args are decoded already (bottom-up)


_DECODERS = {
    "tuple": lambda obj: tuple(_payload(obj, list)),
    "set": lambda obj: set(_payload(obj, list)),
    "frozenset": lambda obj: frozenset(_payload(obj, list)),
    "dict": _decode_pairs,
    "bytes": lambda obj: base64.b64decode(_payload(obj, str), validate=True),
    "bytearray": lambda obj: bytearray(base64.b64decode(_payload(obj, str), validate=True)),
    "datetime": _decode_datetime,
    "date": lambda obj: datetime.date.fromisoformat(_payload(obj, str)),
    "time": _decode_time,
    "timedelta": _decode_timedelta,
    "decimal": lambda obj: decimal.Decimal(_payload(obj, str)),
    "uuid": lambda obj: uuid.UUID(_payload(obj, str)),
    "int": lambda obj: int(_payload(obj, str), 16),
    "exc": _decode_exception,
}


# --- the serializers -----------------------------------------------------------------------

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)
# check_circular is off because the walk hands json a fresh tree: a cycle in the value is
# already a RecursionError in the walk.
_json_ascii_encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_json_decoder = json.JSONDecoder(object_hook=_decode_object)


def _encode_json(value):
    data = _to_jsonable(value)
    try:
        return _json_encoder.encode(data).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a surrogateescape'd file name, say) has no UTF-8 form; \u escapes
        # keep it, and the body is still valid JSON.
        return _json_ascii_encoder.encode(data).encode("ascii")


def _decode_json(body):
    return _json_decoder.decode(body.decode("utf-8"))


def _encode_pickle(value):
    try:
        return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:  # PicklingError, TypeError, AttributeError, or what __reduce__ raises
        culprit = value if isinstance(exc, RecursionError) else _innermost_unpicklable(value)
        raise SerializationError(f"cannot serialize a value of type {type(culprit).__name__!r} "
                                 f"with pickle: {exc}") from exc


def _decode_pickle(body):
    return pickle.loads(body)


def _innermost_unpicklable(value):
    """The deepest value pickle refuses inside containers and instance dicts, for the message."""
    for _ in range(_MAX_CULPRIT_DEPTH):
        for child in _children(value):
            try:
                pickle.dumps(child, protocol=_PICKLE_PROTOCOL)
            except Exception:  # this child is (or holds) the culprit: look inside it
                value = child
                break
        else:
            return value
    return value


def _children(value):
    if isinstance(value, dict):
        return itertools.chain(value.keys(), value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    try:
        state = vars(value)
    except TypeError:  # no __dict__: nothing more to look into
        return ()
    return state.values() if isinstance(state, dict) else ()


def _encode_yaml(value):
    return yaml.dump(_to_jsonable(value), Dumper=_YamlDumper, allow_unicode=True, sort_keys=False)


def _decode_yaml(body):
    # Safe loading builds plain data only; the tags inside are then read like JSON's.
    return _from_jsonable(yaml.load(body, Loader=_YamlLoader))


register(JSON, _encode_json, _decode_json, "application/json")
register(PICKLE, _encode_pickle, _decode_pickle, "application/x-python-serialize")
if yaml is not None:
    _YamlDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    _YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    register(YAML, _encode_yaml, _decode_yaml, "application/x-yaml")
