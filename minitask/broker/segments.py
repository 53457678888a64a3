"""Journal segment files: the header, reading records back, and what each file says of itself.

A segment is ``<data_dir>/journal/<number>.seg``. It opens with a 12-byte header: ``b"MTJ1"``,
the format version as u32, and the segment's CRC seed as u32 (random, never 0; see
`records.seal`). Records follow (layout in records.py). Format 2 segments begin with an OPEN
record and, once sealed, end with a ROTATE record; format 1 segments (written before format 2
existed) have neither and are read the same way otherwise.

Pure except for reading files: nothing here writes, moves or deletes one (journal.py does).
"""

import os
import struct
import zlib

from . import records as rc

__all__ = ["MAGIC", "VERSION", "VERSIONS", "HEADER_BYTES", "OPENING_BYTES", "FILE_HEADER", "file_header",
           "new_seed", "Segment", "SegmentFile", "Scan", "survey_file", "count_records",
           "is_rotate_record"]

MAGIC = b"MTJ1"
VERSION = 2
VERSIONS = (1, 2)              # the formats this broker replays
HEADER_BYTES = 12
# The header and OPEN record of a new segment: written by one os.write, read by one read().
OPENING_BYTES = HEADER_BYTES + 8 + 1 + 40

_HEAD = struct.Struct("!IIB")          # length, crc, type
_SEED = struct.Struct("!I")
_crc32 = zlib.crc32


def file_header(seed, version=VERSION):
    """The 12 bytes that open a segment whose records' CRCs are XORed with `seed`."""
    return MAGIC + struct.pack("!II", version, seed)


# A segment header with seed 0 (stored CRCs are plain CRCs); the journal itself never uses 0.
FILE_HEADER = file_header(0)


def new_seed():
    while True:
        seed = struct.unpack("!I", os.urandom(4))[0]
        if seed:
            return seed


class Segment:
    """One journal file, and the live objects whose newest record is in it.

    `first` numbers its first data record (None for format 1, which does not say) and
    `records` counts its data records, so ``first + records`` numbers the next one.
    """

    __slots__ = ("number", "path", "size", "live_bytes", "members", "seed", "version", "first",
                 "records")

    def __init__(self, number, path, size=HEADER_BYTES, seed=0, version=VERSION, first=None):
        self.number = number
        self.path = path
        self.size = size
        self.seed = seed
        self.version = version
        self.first = first
        self.records = 0
        self.live_bytes = 0
        self.members = set()

    @property
    def end(self):
        """The number just past its last data record, or None when unknown."""
        return None if self.first is None else self.first + self.records

    def __repr__(self):
        return "<Segment %d %d bytes, %d live>" % (self.number, self.size, self.live_bytes)


class SegmentFile:
    """What the first bytes of a segment file say: format, seed and (format 2) its OPEN."""

    __slots__ = ("number", "path", "size", "version", "seed", "opening", "problem")

    def __init__(self, number, path):
        self.number = number
        self.path = path
        self.size = 0
        self.version = None
        self.seed = 0
        self.opening = None         # (segment, first, prev, prev_first, prev_end) or None
        self.problem = None         # "unfinished", "no header" or "version"


def survey_file(number, path):
    """Read a segment's header and OPEN record, without reading the whole file."""
    info = SegmentFile(number, path)
    with open(path, "rb") as handle:
        head = handle.read(OPENING_BYTES)
        info.size = os.fstat(handle.fileno()).st_size
    if len(head) < HEADER_BYTES:
        prefix_of = [file_header(0, v)[:min(len(head), 8)] for v in VERSIONS]
        info.problem = "unfinished" if head[:8] in prefix_of else "no header"
        return info
    if head[:4] != MAGIC:
        info.problem = "no header"
        return info
    info.version = struct.unpack_from("!I", head, 4)[0]
    if info.version not in VERSIONS:
        info.problem = "version"
        return info
    info.seed = _SEED.unpack_from(head, 8)[0]
    if info.version >= 2:
        record = read_record(head, HEADER_BYTES, len(head), info.seed)
        if record is not None and record[0] == rc.OPEN:
            opening = rc.decode_open(record[1])
            if opening[0] == number:
                info.opening = opening
        if record is None and info.size <= OPENING_BYTES:
            info.problem = "unfinished"         # a crash while it was being created
    return info


class Scan:
    """Iterate the records of ``data[HEADER_BYTES:end]``, noting a torn tail or damage.

    A record that does not check out, with nothing sound after it before `end`, is a torn
    tail (`torn_at`); one followed by sound records is damage (`damaged_at`, with the
    offset where sound records resume in `resumed_at`).
    """

    def __init__(self, data, seed, end=None):
        self.data = data
        self.seed = seed
        self.end = len(data) if end is None else min(end, len(data))
        self.torn_at = None
        self.damaged_at = []
        self.resumed_at = []

    def __iter__(self):
        data, end, seed = self.data, self.end, self.seed
        offset = HEADER_BYTES
        while offset < end:
            record = read_record(data, offset, end, seed)
            if record is None:
                resume = _find_next_record(data, offset + 1, end, seed)
                if resume is None:
                    self.torn_at = offset
                    return
                self.damaged_at.append(offset)
                self.resumed_at.append(resume)
                offset = resume
                continue
            kind, payload, offset_next = record
            yield offset, kind, payload
            offset = offset_next


def read_record(data, offset, end, seed):
    """``(type, payload, next offset)`` of the sound record at `offset`, or None."""
    if offset + 9 > end:
        return None
    length, crc, kind = _HEAD.unpack_from(data, offset)
    stop = offset + 8 + length
    if length < 1 or stop > end or kind not in rc.RECORD_TYPES:
        return None
    typed = data[offset + 8:stop]
    if _crc32(typed) ^ seed != crc:
        return None
    return kind, typed[1:], stop


def _find_next_record(data, start, end, seed):
    """The offset of the next sound record after damage, or None (a torn tail)."""
    for offset in range(start, end - 8):
        length, crc, kind = _HEAD.unpack_from(data, offset)
        if kind in rc.RECORD_TYPES and 1 <= length <= end - offset - 8:
            if _crc32(data[offset + 8:offset + 8 + length]) ^ seed == crc:
                return offset
    return None


def count_records(data, start, stop):
    """How many records filled ``data[start:stop]``, if their length fields still add up
    to exactly that span (damage that spared them); None when they do not."""
    count, offset = 0, start
    while offset < stop:
        if offset + 9 > stop:
            return None
        (length,) = _SEED.unpack_from(data, offset)
        if length < 1:
            return None
        offset += 8 + length
        count += 1
    return count if offset == stop else None


def is_rotate_record(data, seed):
    """True when `data` is exactly one sound ROTATE record."""
    record = read_record(data, 0, len(data), seed)
    return record is not None and record[0] == rc.ROTATE and record[2] == len(data)
