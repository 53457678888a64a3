"""Hypothesis strategies for hostile frames: what a broken or malicious client might send.

- `FRAMES`: ``(type, seq, body)`` with mostly known command types and bodies shaped for
  each (JSON arguments of that command with awkward values, PUBLISH bodies with hostile
  fields, tag lists whose count lies, result bodies), sometimes plain random bytes.
- `streams()`: ``(bytes, frames in it)`` for one connection: random bytes, frames before
  the handshake, or frames after a valid HELLO; length prefixes that lie, cut short.
- `hello_frame()`: a valid HELLO (no secret), to get past the handshake.
"""

import json
import math
import struct

from hypothesis import strategies as st

from minitask import protocol as P

__all__ = ["FRAMES", "streams", "hello_frame", "json_body"]

CLIENT_KINDS = sorted(kind for kind in P.COMMAND_NAMES if kind < 0x60)
# Mostly commands the broker knows (an unknown one closes the connection at once).
KINDS = st.one_of(*([st.sampled_from(CLIENT_KINDS)] * 5 + [st.integers(0, 255)]))
SEQS = st.one_of(st.just(0), st.integers(1, 20), st.integers(0, 2 ** 32 - 1))
# Names the broker knows, names it does not, and the awkward ones: empty, reserved, too long,
# a lone surrogate (valid JSON, not encodable as UTF-8). Never the good client's queues.
NAMES = st.one_of(
    st.sampled_from(["minitask", "", "fuzz.q", "fuzz.x", "fuzz.q.dead", "amq.direct",
                     "minitask.control", "\ud800", "x" * 300, "t1"]),
    st.text(max_size=10))
FLOATS = st.one_of(st.just(0.0), st.floats(), st.floats(0, 4e9),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1.0]))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 65, 2 ** 65), FLOATS,
                         NAMES)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                          st.dictionaries(NAMES, inner, max_size=3)),
    max_leaves=5)
# The arguments each command takes (protocol section 4), so that most fuzzed bodies reach
# past the JSON parser into the command itself; then any argument may go to any command.
KIND_ARGS = {
    P.HELLO: ["protocol", "client", "nonce", "heartbeat", "worker"],
    P.AUTH: ["proof"],
    P.DECLARE_EXCHANGE: ["exchange", "type", "durable", "auto_delete", "passive"],
    P.DELETE_EXCHANGE: ["exchange"],
    P.DECLARE_QUEUE: ["queue", "durable", "exclusive", "auto_delete", "passive", "max_length",
                      "max_redeliveries", "dead_letter_queue"],
    P.BIND: ["queue", "exchange", "binding_key", "routing_key", "arguments"],
    P.UNBIND: ["queue", "exchange", "binding_key", "arguments"],
    P.PURGE: ["queue"], P.DELETE_QUEUE: ["queue"],
    P.CONSUME: ["queue", "no_ack", "consumer_tag"], P.CANCEL: ["consumer_tag"],
    P.QOS: ["prefetch_count"],
    P.RESULT_GET: ["task_id"], P.RESULT_WAIT: ["task_id", "timeout"],
    P.RESULT_FORGET: ["task_ids", "expired"],
    P.REVOKE: ["task_ids", "terminate", "signal"], P.CLAIM: ["task_ids"],
    P.LEASE: ["name", "holder", "ttl"], P.KV_SET: ["key", "value"], P.KV_GET: ["key"],
}
ARG_NAMES = sorted({name for names in KIND_ARGS.values() for name in names})
# Values every argument should survive: wrong types, unhashable ones, lone surrogates, NaN...
AWKWARD = [[], {}, [[]], {"a": [1]}, "\ud800", ["\ud800"], math.nan, math.inf, -math.inf,
           -1, 0, 1, 7, 2 ** 64, 1.5, True, False, None, "", "minitask", "fuzz.q", "x" * 300,
           ["t1", "t2"], {"x-match": "any"}]
# Half of the time one of the awkward values, else anything.
ARG_VALUES = st.one_of(*([st.sampled_from(AWKWARD)] * 5 + [
    NAMES, FLOATS, st.integers(-3, 20), st.lists(NAMES, max_size=3), JSON_VALUES]))


@st.composite
def _args(draw, names):
    """Each argument present or not with even odds (hypothesis would leave most out)."""
    return {name: draw(ARG_VALUES) for name in names if draw(st.integers(0, 1))}


def args_for(kind):
    names = KIND_ARGS.get(kind, ARG_NAMES)
    return st.one_of(_args(names), st.dictionaries(st.sampled_from(ARG_NAMES), ARG_VALUES,
                                                   max_size=4))


def json_body(obj):
    return json.dumps(obj).encode("utf-8")     # NaN and Infinity included, as Python sends




def json_bodies(kind):
    return st.one_of(args_for(kind).map(json_body), args_for(kind).map(json_body),
                     JSON_VALUES.map(json_body), st.binary(max_size=40))


STR8 = st.one_of(NAMES.map(lambda name: name.encode("utf-8", "surrogatepass")[:255]),
                 st.binary(max_size=20))


def _str8(data):
    return bytes((len(data),)) + data


@st.composite
def publish_bodies(draw):
    """PUBLISH bodies (protocol 3.1): mostly well formed, with hostile values in every field."""
    parts = [struct.pack("!BBdd", draw(st.integers(0, 255)),
                         draw(st.one_of(st.sampled_from([0, 4, 9, 10, 255]),
                                        st.integers(0, 255))),
                         draw(FLOATS), draw(FLOATS))]
    parts.extend(_str8(draw(STR8)) for _ in range(5))  # message_id exchange key type ctype
    headers = draw(st.one_of(st.just(b""), st.dictionaries(NAMES, ARG_VALUES, max_size=3)
                             .map(json_body), st.binary(max_size=12)))
    length = draw(st.one_of(st.just(len(headers)), st.integers(0, 0xFFFF)))
    parts.append(struct.pack("!H", length) + headers + draw(st.binary(max_size=40)))
    data = b"".join(parts)
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@st.composite
def tag_bodies(draw):
    """ACK / REJECT / START bodies (3.3); the count sometimes lies."""
    tags = draw(st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2 ** 64 - 1)),
                         max_size=5))
    count = draw(st.one_of(st.just(len(tags)), st.integers(0, 2 ** 32 - 1)))
    return struct.pack("!BI", draw(st.integers(0, 255)), count) + \
        struct.pack("!%dQ" % len(tags), *tags)


@st.composite
def result_bodies(draw):
    """RESULT_SET bodies (3.4)."""
    return b"".join((_str8(draw(STR8)),
                     struct.pack("!BBd", draw(st.integers(0, 9)), draw(st.integers(0, 255)),
                                 draw(FLOATS)),
                     _str8(draw(STR8)), draw(st.binary(max_size=30))))


def bodies_for(kind):
    if kind == P.PUBLISH:
        return st.one_of(publish_bodies(), st.binary(max_size=60))
    if kind in (P.ACK, P.REJECT, P.START):
        return st.one_of(tag_bodies(), st.binary(max_size=30))
    if kind == P.RESULT_SET:
        return st.one_of(result_bodies(), st.binary(max_size=30))
    return json_bodies(kind)


# One strategy object per type, made once: hypothesis validates each new strategy it meets.
_FRAME_OF_KIND = {kind: st.tuples(st.just(kind), SEQS, bodies_for(kind)) for kind in range(256)}
FRAMES = KINDS.flatmap(_FRAME_OF_KIND.__getitem__)


@st.composite
def encoded_frames(draw):
    """One frame on the wire; one in ten has a length prefix that lies."""
    kind, seq, body = draw(FRAMES)
    length = len(body)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.one_of(st.integers(0, 2 ** 32 - 1), st.integers(0, 5000)))
    return P.HEADER.pack(length, kind, seq) + body


def hello_frame():
    return P.encode_json(P.HELLO, 1, {"protocol": 1, "client": "fuzz", "nonce": "00" * 32})


@st.composite
def streams(draw):
    """``(bytes, frames in it)``: random bytes, frames before the handshake, or frames after a
    valid HELLO; sometimes cut short in the middle of a frame."""
    shape = draw(st.sampled_from(["bytes", "before", "after", "after", "after"]))
    if shape == "bytes":
        return draw(st.binary(min_size=1, max_size=300)), 0
    frames = draw(st.lists(encoded_frames(), min_size=1, max_size=8))
    prefix = hello_frame() if shape == "after" else b""
    data = prefix + b"".join(frames)
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(len(prefix), len(data)))]
    return data, len(frames)
