"""The journal's records: their layout, how they are made and read back. Pure functions.

Every record is::

    +------------+------------------+---------+---------+
    | length u32 | crc32 u32        | type u8 | payload |
    +------------+------------------+---------+---------+

``length`` counts type and payload; the CRC-32 (zlib) covers them too. On disk the CRC is
stored XORed with its segment's seed (`seal`; see journal.py). Integers big-endian, ``str8`` a
u8 length and UTF-8 bytes, ``ids`` a u32 count and that many u64, ``names`` a u32 count and
that many str8. Record types:

==  ==========  ===========================================================================
1   PUBLISH     id u64, deliveries u8, queue str8, the message (protocol section 3.1). A
                PUBLISH of an id already known is a copy (compaction, or a message given
                back unstarted): its deliveries is the message's count from then on
2   ACK         ids: these messages are gone (acked, expired, purged, dead-lettered)
3   DELIVERED   ids: these messages were handed to a consumer (they come back redelivered)
4   RESULT      task_id str8, state u8, date_done f64, expires_at f64, content_type str8,
                payload
5   FORGET      names: results removed
6   REVOKE      expires_at f64, names: revoked task ids
7   TOPOLOGY    JSON: one declare / delete / bind / unbind of a durable exchange or queue
8   KV          JSON {"key", "value"}: a durable setting (periodic tasks' last send times)
9   STARTED     names: tasks handed over to a worker when they started (not acked late)
10  FINISHED    names: handed-over tasks that finished without storing a result
11  SNAPSHOT    JSON: the whole durable topology, revoked ids, settings and handovers at
                the start of a compaction pass; replayed like the records it summarises
12  OPEN        segment u64, first u64, prev u64, prev_first u64, prev_end u64: the first
                record of a segment (format 2). ``first`` numbers this segment's first data
                record; ``prev`` is the segment before it (0: none), ``prev_first`` the number
                of that one's first data record (0: unknown), ``prev_end`` the byte offset
                where its records end (a ROTATE record may follow there, nothing else)
13  ROTATE      next u64, first u64, records u64: the last record of a sealed segment: the
                segment that follows, and this one's first data record number and count
14  RETIRED     u32 count, then count x (segment u64, end u64): segments deleted on purpose
                (compaction, a rewrite), each with the number just past its last data
                record (0: unknown)
15  COMPOUND    sub-records, each ``length u32, type u8, payload`` (length counts type and
                payload), one after the other: replayed in order, all or nothing, as the one
                CRC covers them all. Holds data records only (types 1-11)
==  ==========  ===========================================================================

Types 1-11 and 15 are *data* records: they change the broker's state, and the journal numbers
them (a COMPOUND is one number). Types 12-14 describe the journal's own shape (see journal.py)
and are never handed to recovery.
"""

import json
import struct
import zlib

from ..protocol import STATE_CODES, STATES

__all__ = [
    "PUBLISH", "ACK", "DELIVERED", "RESULT", "FORGET", "REVOKE", "TOPOLOGY", "KV", "STARTED",
    "FINISHED", "SNAPSHOT", "OPEN", "ROTATE", "RETIRED", "COMPOUND", "RECORD_TYPES",
    "SHAPE_TYPES", "seal", "publish_record", "ids_record", "names_record", "revoke_record",
    "result_record", "json_record", "compound_record", "open_record", "rotate_record",
    "retired_record", "live_size", "decode_publish", "decode_ids", "decode_names",
    "decode_revoke", "decode_result", "decode_json", "decode_compound", "decode_open",
    "decode_rotate", "decode_retired",
]

PUBLISH, ACK, DELIVERED, RESULT, FORGET, REVOKE = 1, 2, 3, 4, 5, 6
TOPOLOGY, KV, STARTED, FINISHED, SNAPSHOT = 7, 8, 9, 10, 11
OPEN, ROTATE, RETIRED, COMPOUND = 12, 13, 14, 15
RECORD_TYPES = range(1, 16)
SHAPE_TYPES = frozenset((OPEN, ROTATE, RETIRED))

_HEAD = struct.Struct("!IIB")          # length, crc, type
_SUB_HEAD = struct.Struct("!IB")       # a COMPOUND's sub-record: length, type
_SEED = struct.Struct("!I")
_PUBLISH = struct.Struct("!QB")
_COUNT = struct.Struct("!I")
_RESULT = struct.Struct("!Bdd")
_F64 = struct.Struct("!d")
_OPEN = struct.Struct("!QQQQQ")
_ROTATE = struct.Struct("!QQQ")
_RETIREE = struct.Struct("!QQ")
_crc32 = zlib.crc32


def seal(records, seed):
    """The bytes to append for `records` (as the encoders make them) in a segment of `seed`."""
    if not seed:
        return b"".join(records)
    parts = []
    for record in records:
        parts.append(record[:4])
        parts.append(_SEED.pack(_SEED.unpack_from(record, 4)[0] ^ seed))
        parts.append(memoryview(record)[8:])
    return b"".join(parts)


# --- making records ---------------------------------------------------------------------------

def _record(kind, payload):
    typed = bytes((kind,)) + payload
    return _COUNT.pack(len(typed)) + _COUNT.pack(_crc32(typed)) + typed


def publish_record(message_id, deliveries, queue, data):
    name = queue.encode("utf-8")
    typed = b"".join((b"\x01", _PUBLISH.pack(message_id, min(deliveries, 255)),
                      bytes((len(name),)), name, data))
    return _COUNT.pack(len(typed)) + _COUNT.pack(_crc32(typed)) + typed


def ids_record(kind, ids):
    return _record(kind, _COUNT.pack(len(ids)) + struct.pack("!%dQ" % len(ids), *ids))


def names_record(kind, names, prefix=b""):
    parts = [prefix, _COUNT.pack(len(names))]
    for name in names:
        data = name.encode("utf-8")
        parts.append(bytes((len(data),)))
        parts.append(data)
    return _record(kind, b"".join(parts))


def revoke_record(expires_at, task_ids):
    return names_record(REVOKE, task_ids, _F64.pack(expires_at))


def result_record(entry):
    task_id = entry.task_id.encode("utf-8")
    content_type = entry.content_type.encode("utf-8")
    return _record(RESULT, b"".join((
        bytes((len(task_id),)), task_id,
        _RESULT.pack(STATE_CODES[entry.state], entry.date_done or 0.0, entry.expires_at),
        bytes((len(content_type),)), content_type, entry.payload)))


def json_record(kind, obj):
    return _record(kind, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def compound_record(records):
    """One record holding `records` (as the encoders make them): replayed all or nothing."""
    parts = []
    for record in records:
        if record[8] not in RECORD_TYPES or record[8] in SHAPE_TYPES or record[8] == COMPOUND:
            raise ValueError("a COMPOUND record holds data records only, not type %d"
                             % record[8])
        parts.append(record[:4])                    # the same length: type and payload
        parts.append(memoryview(record)[8:])
    return _record(COMPOUND, b"".join(parts))


def open_record(segment, first, prev, prev_first, prev_end):
    return _record(OPEN, _OPEN.pack(segment, first, prev, prev_first, prev_end))


def rotate_record(next_segment, first, records):
    return _record(ROTATE, _ROTATE.pack(next_segment, first, records))


def retired_record(segments):
    """`segments`: ``(number, end)`` pairs; end 0 when the number past its last is unknown."""
    return _record(RETIRED, _COUNT.pack(len(segments))
                   + b"".join(_RETIREE.pack(number, end) for number, end in segments))


def live_size(obj):
    """About how many bytes the record of a live message or result takes (for accounting)."""
    data = getattr(obj, "data", None)
    if data is not None:
        return 19 + len(obj.queue.name) + len(data)
    return 30 + len(obj.task_id) + len(obj.content_type) + len(obj.payload)


# --- reading records back ---------------------------------------------------------------------

def decode_publish(payload):
    message_id, deliveries = _PUBLISH.unpack_from(payload, 0)
    length = payload[9]
    queue = payload[10:10 + length].decode("utf-8")
    return message_id, deliveries, queue, payload[10 + length:]


def decode_ids(payload):
    (count,) = _COUNT.unpack_from(payload, 0)
    return struct.unpack_from("!%dQ" % count, payload, 4)


def decode_names(payload, offset=0):
    (count,) = _COUNT.unpack_from(payload, offset)
    offset += 4
    names = []
    for _ in range(count):
        length = payload[offset]
        names.append(payload[offset + 1:offset + 1 + length].decode("utf-8"))
        offset += 1 + length
    return names


def decode_revoke(payload):
    (expires_at,) = _F64.unpack_from(payload, 0)
    return expires_at, decode_names(payload, 8)


def decode_result(payload):
    length = payload[0]
    task_id = payload[1:1 + length].decode("utf-8")
    offset = 1 + length
    code, date_done, expires_at = _RESULT.unpack_from(payload, offset)
    offset += _RESULT.size
    length = payload[offset]
    content_type = payload[offset + 1:offset + 1 + length].decode("utf-8")
    return task_id, STATES[code], date_done, expires_at, content_type, payload[offset + 1 + length:]


def decode_json(payload):
    return json.loads(payload.decode("utf-8"))


def decode_compound(payload):
    """``[(type, payload)]`` of a COMPOUND's sub-records; ValueError if they do not add up."""
    out, offset, end = [], 0, len(payload)
    while offset < end:
        if offset + _SUB_HEAD.size > end:
            raise ValueError("COMPOUND record cut inside a sub-record header")
        length, kind = _SUB_HEAD.unpack_from(payload, offset)
        stop = offset + 4 + length
        if length < 1 or stop > end or kind in SHAPE_TYPES or kind == COMPOUND \
                or kind not in RECORD_TYPES:
            raise ValueError("COMPOUND record holds a bad sub-record at byte %d" % offset)
        out.append((kind, payload[offset + 5:stop]))
        offset = stop
    return out


def decode_open(payload):
    """``(segment, first, prev, prev_first, prev_end)``."""
    return _OPEN.unpack_from(payload, 0)


def decode_rotate(payload):
    """``(next, first, records)``."""
    return _ROTATE.unpack_from(payload, 0)


def decode_retired(payload):
    (count,) = _COUNT.unpack_from(payload, 0)
    return [_RETIREE.unpack_from(payload, 4 + i * _RETIREE.size) for i in range(count)]
