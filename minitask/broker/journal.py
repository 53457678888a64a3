"""The broker's append-only journal: what makes confirmed messages survive ``kill -9``.

Data flow::

    BrokerState --records--> Journal.write() --one os.write per loop turn--> head segment
                                 |  fsync: "always" before confirms go out (group commit),
                                 |         "everysec" from tick(), "no" never
    restart:  Journal.open() --replay()--> records, in order --> BrokerState.recover()
    background: compact_step() copies the live records of the oldest segment to the head,
                a bounded batch per loop turn, then deletes that segment

Files: ``<data_dir>/journal/<number>.seg``, numbered upwards. Each starts with a 12-byte header:
``b"MTJ1"``, the format version as u32 (``VERSION``), and the segment's CRC seed as u32 (random
for every segment, never 0). Then records::

    +------------+------------------+---------+---------+
    | length u32 | crc32 u32        | type u8 | payload |
    +------------+------------------+---------+---------+

``length`` counts type and payload; the CRC-32 (zlib) covers them too and is stored XORed
with the segment's seed. A publisher chooses its message bodies, and a body could hold bytes
that look like records; without the seed it cannot make them check out, so resynchronising
after a bad record can never take a message body for records. Integers big-endian,
``str8`` a u8 length and UTF-8 bytes, ``ids`` a u32 count and that many u64, ``names`` a u32
count and that many str8. Record types:

==  ==========  ===========================================================================
1   PUBLISH     id u64, deliveries u8, queue str8, the message (protocol section 3.1)
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
==  ==========  ===========================================================================

Invariants:

- A record is written before the reply it makes true goes out (the server orders that).
- Replay applies records in order; PUBLISH is idempotent by id, ACK of an unknown id is a
  no-op, so a record copied forward by compaction may appear twice.
- Compaction only ever deletes the *oldest* segment: an ACK in a later segment may refer to a
  PUBLISH in an earlier one, never the other way round, so deleting oldest-first can never
  bring an acked message back. The copies are fsynced before the old file is unlinked.
- A torn last record (crash mid-write) fails its length or CRC with nothing valid after it:
  it is cut off with one warning. A bad record followed by good ones is damage: reported
  with segment and offset, the good records kept, and the segment moved aside after the
  broker has written everything live into a fresh segment.
"""

import errno
import json
import logging
import os
import struct
import zlib

from ..exceptions import MinitaskError

__all__ = ["Journal", "NullJournal", "JournalWriteError", "FSYNC_POLICIES"]

logger = logging.getLogger(__name__)

VERSION = 1
MAGIC = b"MTJ1"
HEADER_BYTES = 12


def file_header(seed):
    """The 12 bytes that open a segment whose records' CRCs are XORed with `seed`."""
    return MAGIC + struct.pack("!II", VERSION, seed)


# A segment header with seed 0 (stored CRCs are plain CRCs); the journal itself never uses 0.
FILE_HEADER = file_header(0)


def new_seed():
    while True:
        seed = struct.unpack("!I", os.urandom(4))[0]
        if seed:
            return seed


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
FSYNC_POLICIES = ("always", "everysec", "no")
SEGMENT_BYTES = 64 * 1024 * 1024

PUBLISH, ACK, DELIVERED, RESULT, FORGET, REVOKE = 1, 2, 3, 4, 5, 6
TOPOLOGY, KV, STARTED, FINISHED, SNAPSHOT = 7, 8, 9, 10, 11
RECORD_TYPES = range(1, 12)

_HEAD = struct.Struct("!IIB")          # length, crc, type
_SEED = struct.Struct("!I")
_PUBLISH = struct.Struct("!QB")
_COUNT = struct.Struct("!I")
_RESULT = struct.Struct("!Bdd")
_F64 = struct.Struct("!d")
_PACK_HEAD = _HEAD.pack
_crc32 = zlib.crc32


class JournalWriteError(MinitaskError):
    """Raised (inside the broker) when the journal cannot be written: disk full, read-only..."""


# --- records ----------------------------------------------------------------------------------

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
    from ..protocol import STATE_CODES
    return _record(RESULT, b"".join((
        bytes((len(task_id),)), task_id,
        _RESULT.pack(STATE_CODES[entry.state], entry.date_done or 0.0, entry.expires_at),
        bytes((len(content_type),)), content_type, entry.payload)))


def json_record(kind, obj):
    return _record(kind, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def live_size(obj):
    """About how many bytes the record of a live message or result takes (for accounting)."""
    data = getattr(obj, "data", None)
    if data is not None:
        return 19 + len(obj.queue.name) + len(data)
    return 30 + len(obj.task_id) + len(obj.content_type) + len(obj.payload)


# --- decoding, for replay ---------------------------------------------------------------------

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
    from ..protocol import STATES
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


# --- segments ---------------------------------------------------------------------------------

class Segment:
    """One journal file, and the live objects whose newest record is in it."""

    __slots__ = ("number", "path", "size", "live_bytes", "members", "seed")

    def __init__(self, number, path, size=HEADER_BYTES, seed=0):
        self.number = number
        self.path = path
        self.size = size
        self.seed = seed
        self.live_bytes = 0
        self.members = set()

    def __repr__(self):
        return "<Segment %d %d bytes, %d live>" % (self.number, self.size, self.live_bytes)


class _Scan:
    """Iterate a segment's records, noting a torn tail or damage in the middle."""

    def __init__(self, data, name, seed):
        self.data = data
        self.name = name
        self.seed = seed
        self.torn_at = None          # offset of a torn tail, to truncate
        self.damaged_at = []         # offsets of bad records followed by good ones

    def __iter__(self):
        data = self.data
        end = len(data)
        offset = HEADER_BYTES
        seed = self.seed
        while offset < end:
            record = _read_record(data, offset, seed)
            if record is None:
                resume = _find_next_record(data, offset + 1, seed)
                if resume is None:
                    self.torn_at = offset
                    return
                self.damaged_at.append(offset)
                offset = resume
                continue
            kind, payload, offset_next = record
            yield offset, kind, payload
            offset = offset_next


def _read_record(data, offset, seed):
    if offset + 9 > len(data):
        return None
    length, crc, kind = _HEAD.unpack_from(data, offset)
    end = offset + 8 + length
    if length < 1 or end > len(data) or kind not in RECORD_TYPES:
        return None
    typed = data[offset + 8:end]
    if _crc32(typed) ^ seed != crc:
        return None
    return kind, typed[1:], end


def _find_next_record(data, start, seed):
    """The offset of the next sound record after damage, or None (a torn tail)."""
    for offset in range(start, len(data) - 8):
        length, crc, kind = _HEAD.unpack_from(data, offset)
        if kind in RECORD_TYPES and 1 <= length <= len(data) - offset - 8:
            if _crc32(data[offset + 8:offset + 8 + length]) ^ seed == crc:
                return offset
    return None


# --- the journal ------------------------------------------------------------------------------

class Journal:
    """Segments on disk under `directory`; see the module docstring for the format."""

    enabled = True

    def __init__(self, directory, fsync="everysec", segment_bytes=SEGMENT_BYTES):
        if fsync not in FSYNC_POLICIES:
            raise ValueError("fsync policy %r: expected one of %s"
                             % (fsync, ", ".join(FSYNC_POLICIES)))
        self.directory = os.path.join(directory, "journal")
        self.fsync_policy = fsync
        self.segment_bytes = segment_bytes
        self.segments = []            # oldest first; the last one is the head
        self.head = None
        self._fd = None
        self._dirty = False           # written since the last fsync
        self._last_fsync = 0.0
        self._rotate_next = False
        self.damaged = []             # (segment, offset) found by replay
        self.torn = []                # (segment, offset) torn tails cut off by replay
        self.compacting = None        # the segment being copied forward
        self._todo = []
        self.bytes_written = 0

    # -- opening and replay --

    def replay(self):
        """Yield ``(segment, type, payload)`` of every record, oldest first; then open for append.

        Creates the directory on first start. Torn tails are cut off here; damaged segments
        are listed in `damaged` for the broker to rewrite (see `retire_damaged`).
        """
        os.makedirs(self.directory, exist_ok=True)
        numbers = sorted(int(name[:-4]) for name in os.listdir(self.directory)
                         if name.endswith(".seg") and name[:-4].isdigit())
        for index, number in enumerate(numbers):
            segment = Segment(number, self._path(number))
            with open(segment.path, "rb") as handle:
                data = handle.read()
            is_last = index == len(numbers) - 1
            if data[:4] != MAGIC or len(data) < HEADER_BYTES:
                if is_last and len(data) < HEADER_BYTES and FILE_HEADER[:8].startswith(data[:8]):
                    data = b""           # crashed while creating it: nothing in it yet
                else:
                    logger.error("journal segment %s has no valid header; moved aside",
                                 segment.path)
                    self._move_aside(segment)
                    continue
            elif data[4:8] != FILE_HEADER[4:8]:
                raise JournalWriteError("journal segment %s is format version %d; this broker "
                                        "reads version %d" % (segment.path,
                                                              struct.unpack("!I", data[4:8])[0],
                                                              VERSION))
            segment.seed = _SEED.unpack_from(data, 8)[0] if data else new_seed()
            scan = _Scan(data, segment.path, segment.seed)
            for _offset, kind, payload in scan:
                yield segment, kind, payload
            segment.size = len(data) if data else HEADER_BYTES
            if scan.torn_at is not None:
                logger.warning("journal %s: torn record at offset %d (a crash mid-write) "
                               "dropped; it was never confirmed", segment.path, scan.torn_at)
                self.torn.append((segment, scan.torn_at))
                self._truncate(segment.path, scan.torn_at)
                segment.size = scan.torn_at
            for offset in scan.damaged_at:
                logger.error("journal %s: damaged record at offset %d; the records around it "
                             "that check out are kept and the segment will be moved aside",
                             segment.path, offset)
                self.damaged.append((segment, offset))
            if not data:
                self._write_header(segment.path, segment.seed)
            self.segments.append(segment)
        self._open_head()

    def _open_head(self):
        if self.segments and not self._rotate_next and not self._is_damaged(self.segments[-1]) \
                and self.segments[-1].size < self.segment_bytes:
            self.head = self.segments[-1]
            self._fd = os.open(self.head.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment()

    def _is_damaged(self, segment):
        return any(seg is segment for seg, _offset in self.damaged)

    def _path(self, number):
        return os.path.join(self.directory, "%010d.seg" % number)

    def _write_header(self, path, seed):
        with open(path, "wb") as handle:
            handle.write(file_header(seed))

    def _truncate(self, path, size):
        with open(path, "r+b") as handle:
            handle.truncate(size)

    def _new_segment(self):
        number = self.segments[-1].number + 1 if self.segments else 1
        segment = Segment(number, self._path(number), seed=new_seed())
        fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if os.write(fd, file_header(segment.seed)) != HEADER_BYTES:    # a full disk
                raise OSError(errno.ENOSPC, "short write of the segment header")
        except OSError:
            os.close(fd)
            os.unlink(segment.path)
            raise
        if self._fd is not None:
            if self.fsync_policy != "no" and self._dirty:
                os.fsync(self._fd)
            os.close(self._fd)
        self._fd = fd
        self.segments.append(segment)
        self.head = segment
        self._rotate_next = False
        self._fsync_directory()

    def _fsync_directory(self):
        if self.fsync_policy == "no" or not hasattr(os, "O_DIRECTORY"):
            return
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:       # some filesystems refuse it; the data files are synced
            logger.debug("cannot open %s to fsync it: %s", self.directory, exc)
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            logger.debug("fsync of %s failed: %s", self.directory, exc)
        finally:
            os.close(fd)

    def _move_aside(self, segment):
        os.replace(segment.path, segment.path + ".damaged")

    # -- accounting --

    def track(self, obj, segment=None):
        """`obj`'s newest record is in `segment` (by default the head, where it was just put)."""
        segment = segment or self.head
        obj.segment = segment
        segment.members.add(obj)
        segment.live_bytes += live_size(obj)

    def untrack(self, obj):
        segment = obj.segment
        if segment is not None:
            segment.members.discard(obj)
            segment.live_bytes -= live_size(obj)
            obj.segment = None

    # -- writing --

    def write(self, records):
        """Append records with one write; fsync too under "always". Raises JournalWriteError.

        On failure the file is cut back to where it was, so a half-written batch never sits
        in front of later records; if even that fails the next write starts a new segment.
        """
        if self._rotate_next:
            self._rotate_or_fail()
        data = seal(records, self.head.seed)
        fd = self._fd
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync_policy == "always":
                os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, self.head.size)
            except OSError as trunc_exc:
                logger.error("cannot cut journal %s back after a failed write: %s",
                             self.head.path, trunc_exc)
                self._rotate_next = True
            raise JournalWriteError("journal write failed: %s" % (exc.strerror or exc,)) from exc
        self.head.size += len(data)
        self.bytes_written += len(data)
        self._dirty = self.fsync_policy != "always"
        if self.head.size >= self.segment_bytes:
            self._rotate_next = True

    def _rotate_or_fail(self):
        try:
            self._new_segment()
        except OSError as exc:
            raise JournalWriteError("cannot start a new journal segment: %s"
                                    % (exc.strerror or exc,)) from exc

    def tick(self, now):
        """The everysec policy: fsync at most once a second when something was written."""
        if self._dirty and self.fsync_policy == "everysec" and now - self._last_fsync >= 1.0:
            self.sync(now)

    def sync(self, now=0.0):
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            logger.error("fsync of journal %s failed: %s; will try again", self.head.path, exc)
            return
        self._dirty = False
        self._last_fsync = now

    def next_fsync(self):
        """When tick() next has work, or None."""
        if self._dirty and self.fsync_policy == "everysec":
            return self._last_fsync + 1.0
        return None

    def close(self):
        if self._fd is not None:
            if self.fsync_policy != "no":
                self.sync()
            os.close(self._fd)
            self._fd = None

    # -- compaction --

    def total_bytes(self):
        return sum(segment.size for segment in self.segments)

    def live_bytes(self):
        return sum(segment.live_bytes for segment in self.segments)

    def wants_compaction(self):
        """True when the oldest sealed segment is worth copying forward (or simply deleting)."""
        if self.compacting is not None:
            return True
        if len(self.segments) < 2:
            return False
        oldest = self.segments[0]
        if not oldest.members:
            return True
        sealed = self.segments[:-1]
        sealed_size = sum(segment.size for segment in sealed)
        sealed_live = sum(segment.live_bytes for segment in sealed)
        return (oldest.live_bytes * 2 < oldest.size
                or sealed_size > 2 * sealed_live + self.segment_bytes)

    def compact_step(self, state, budget_bytes=1 << 20):
        """Copy up to `budget_bytes` of the oldest segment's live records to the head.

        `state.snapshot_records()` gives the records that summarise small state (topology,
        revoked ids, settings, handovers); `state.record_for(obj)` the record of one live
        message or result. Returns True while there is more to do. A write failure stops the
        pass without losing anything: the old segment stays until every copy is on disk.
        """
        if self.compacting is None:
            if not self.wants_compaction():
                return False
            self.compacting = self.segments[0]
            self._todo = list(self.compacting.members)
            try:
                self.write(state.snapshot_records())
            except JournalWriteError as exc:
                logger.warning("compaction paused: %s", exc)
                self.compacting = None
                return False
        segment = self.compacting
        batch, records, used = [], [], 0
        while self._todo and used < budget_bytes:
            obj = self._todo.pop()
            if obj.segment is not segment:
                continue
            record = state.record_for(obj)
            if record is None:
                continue
            batch.append(obj)
            records.append(record)
            used += len(record)
        if records:
            try:
                self.write(records)
            except JournalWriteError as exc:
                logger.warning("compaction paused: %s", exc)
                self._todo.extend(batch)
                return False
            for obj in batch:
                if obj.segment is segment:
                    self.untrack(obj)
                    self.track(obj)
        if self._todo:
            return True
        return self._finish_compaction(segment)

    def _finish_compaction(self, segment):
        if segment.members:                    # something was added back meanwhile
            self._todo = list(segment.members)
            return True
        if self._dirty or self.fsync_policy == "always":
            try:
                os.fsync(self._fd)
            except OSError as exc:
                logger.warning("compaction paused, fsync failed: %s", exc)
                return False
            self._dirty = False
        if segment is self.head:               # never delete the segment being appended to
            self.compacting = None
            return False
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        self.segments.remove(segment)
        self._fsync_directory()
        logger.debug("compacted journal segment %d", segment.number)
        self.compacting = None
        return self.wants_compaction()

    def retire_damaged(self, state):
        """After replay found damage: write everything live anew, then move damaged files aside.

        Every record that checked out was replayed into `state`; a fresh segment now holds
        all of it, so every older segment can go (damaged ones are kept, renamed, for people).
        """
        if not self.damaged:
            return
        old = list(self.segments)
        self._new_segment()
        records = list(state.snapshot_records())
        for obj in state.live_objects():
            record = state.record_for(obj)
            if record is not None:
                self.untrack(obj)
                records.append(record)
                self.track(obj)
        self.write(records)
        self.sync()
        damaged = set(id(segment) for segment, _offset in self.damaged)
        for segment in old:
            if id(segment) in damaged:
                self._move_aside(segment)
                logger.error("moved damaged journal segment aside: %s.damaged", segment.path)
            else:
                os.unlink(segment.path)
            self.segments.remove(segment)
        self._fsync_directory()
        self.damaged = []


class NullJournal:
    """``--no-persist``: the same surface, nothing on disk, nothing survives a restart."""

    enabled = False
    head = None
    compacting = None
    fsync_policy = "no"
    damaged = ()
    torn = ()
    bytes_written = 0

    def replay(self):
        return iter(())

    def track(self, obj, segment=None):
        pass

    def untrack(self, obj):
        pass

    def write(self, records):
        pass

    def tick(self, now):
        pass

    def sync(self, now=0.0):
        pass

    def next_fsync(self):
        return None

    def close(self):
        pass

    def wants_compaction(self):
        return False

    def compact_step(self, state, budget_bytes=0):
        return False

    def retire_damaged(self, state):
        pass

    def total_bytes(self):
        return 0

    def live_bytes(self):
        return 0
