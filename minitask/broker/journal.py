"""The broker's append-only journal: what makes confirmed messages survive ``kill -9``.

Data flow::

    BrokerState --records--> Journal.write() --one os.write per loop turn--> head segment
                                 |  fsync: "always" before confirms go out (group commit),
                                 |         "everysec" in a thread of its own (fsync.py),
                                 |         "no" never
    restart:  Journal.replay() --> records, in order --> BrokerState.recover()
    background: compact_step() copies the live records of the oldest segment to the head,
                a bounded batch per loop turn, then retires (deletes) that segment

Files, headers and reading records back: segments.py. The records: records.py.

The journal knows its own shape (format 2). Data records are numbered, one after another
across segments. A segment opens with an OPEN record (its number, the number of its first
data record, and where the segment before it ended, in bytes) and, once sealed, ends with a
ROTATE record (the next segment, and how many data records this one holds). Compaction writes
a RETIRED record naming each segment before deleting it. So replay tells apart:

- a torn tail, only ever at the end of the newest segment (a crash mid-write): cut off with
  one warning; it was never confirmed;
- a write that failed and could not be cut back (ftruncate failed too): the next segment says
  where the previous one really ended, so what lies after that is cut off and never replayed,
  not even whole records of the refused batch;
- a missing segment: a gap in the numbers, before the oldest, or after a ROTATE, that no
  RETIRED record accounts for;
- a segment cut short or damaged: its records end before where the next segment says, or
  fewer of them check out than the numbers around them say.

Each fault is logged as an ERROR naming the segment and the records lost (exact when the
numbers allow it) and counted in `records_lost` (``status`` and ``/metrics`` show it). The
broker then writes everything live into a fresh segment and moves faulty files aside (or,
for a missing segment alone, records it as retired), so the next start is clean.

Format 1 segments (written before format 2) have no OPEN, ROTATE or RETIRED records; they are
replayed as before, and never appended to: the next write starts a format 2 segment.

Invariants:

- A record is written before the reply it makes true goes out (the server orders that).
- Replay applies records in order; PUBLISH is idempotent by id, ACK of an unknown id is a
  no-op, so a record copied forward by compaction may appear twice.
- Compaction only ever deletes the *oldest* segment: an ACK in a later segment may refer to a
  PUBLISH in an earlier one, never the other way round, so deleting oldest-first can never
  bring an acked message back. The copies and the RETIRED record are made durable before the
  old file is unlinked.
- A new segment, OPEN record included, exists before the ROTATE record naming it is appended
  to the old one: a ROTATE that names a segment that is not there means a lost segment.
"""

import errno
import logging
import os
import time

from ..exceptions import MinitaskError
from ..log import Throttle, folded
from . import records as rc
from .fsync import MAX_LAG, Syncer
from .records import live_size, seal
from .segments import (
    HEADER_BYTES, VERSION, VERSIONS, Scan, Segment, count_records, file_header,
    is_rotate_record, new_seed, survey_file,
)

__all__ = ["Journal", "NullJournal", "JournalWriteError", "FSYNC_POLICIES"]

logger = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "everysec", "no")
SEGMENT_BYTES = 64 * 1024 * 1024


class JournalWriteError(MinitaskError):
    """Raised (inside the broker) when the journal cannot be written: disk full, read-only..."""


class Journal:
    """Segments on disk under `directory`; see the module docstring for the format."""

    enabled = True

    def __init__(self, directory, fsync="everysec", segment_bytes=SEGMENT_BYTES,
                 clock=time.monotonic):
        if fsync not in FSYNC_POLICIES:
            raise ValueError("fsync policy %r: expected one of %s"
                             % (fsync, ", ".join(FSYNC_POLICIES)))
        self.directory = os.path.join(directory, "journal")
        self.fsync_policy = fsync
        self.segment_bytes = segment_bytes
        self.clock = clock
        self.throttle = Throttle(clock=clock)
        self.segments = []            # oldest first; the last one is the head
        self.head = None
        self._fd = None
        self._syncer = None           # the everysec fsync thread
        # Called (from the fsync thread) when an everysec fsync completes: held confirms.
        self.notify = None
        self._rotate_next = False
        self._cut_failed = False      # a failed write could not be cut back off the head
        self.next_number = 1          # the number the next data record gets
        self._highest = 0             # the highest segment number seen, present or not
        self.damaged = []             # (segment, offset) of damaged records found by replay
        self.faults = []              # one line per fault found by replay
        self.records_lost = 0         # data records those faults lost, where known
        self._faulty = set()          # numbers of segments to move aside (cut short, damaged)
        self._rewrite_at = 0.0        # when a failed rewrite may be tried again (clock)
        self._rewrite_wait = 1.0      # ... doubling up to a minute while the disk refuses it
        self._retired = {}            # segment number -> end, from RETIRED records
        self._unrecorded = []         # (number, end) of segments found missing, to retire
        self._replayed = []           # (Segment, its OPEN, its ROTATE) as replay found them
        self.compacting = None        # the segment being copied forward
        self._todo = []
        self._retiring = None         # compaction: the segment whose RETIRED record is written
        self._waiting_for = None      # compaction: the write an fsync must cover first
        # The newest snapshot (see `compact_step`): (the segment it went to, its bytes).
        self._snapshot = None
        self.bytes_written = 0

    # -- opening and replay -----------------------------------------------------------------

    def replay(self):
        """Yield ``(segment, type, payload)`` of every data record, oldest first; then open
        the journal for appending.

        Creates the directory on first start. Torn tails are cut off here, and every fault is
        logged and counted; `rewrite_faulty` (recovery calls it) then makes the journal whole.
        Raises JournalWriteError for a segment of a format this broker does not know.
        """
        os.makedirs(self.directory, exist_ok=True)
        files = self._survey()
        for index, info in enumerate(files):
            following = files[index + 1] if index + 1 < len(files) else None
            for item in self._replay_file(info, following):
                yield item
        self._check_missing()
        if self.segments and self.segments[-1].first is not None:
            self.next_number = self.segments[-1].end
        else:
            self.next_number = 1 + sum(segment.records for segment in self.segments)
        self._open_head()

    def _survey(self):
        """Read every segment's header (and OPEN record) before touching any file."""
        numbers = sorted(int(name[:-4]) for name in os.listdir(self.directory)
                         if name.endswith(".seg") and name[:-4].isdigit())
        infos = [survey_file(number, self._path(number)) for number in numbers]
        for info in infos:
            if info.problem == "version":
                raise JournalWriteError(
                    "journal segment %s is format version %d; this broker reads versions %s"
                    % (info.path, info.version, " and ".join(str(v) for v in VERSIONS)))
        files = []
        for index, info in enumerate(infos):
            newest = index == len(infos) - 1
            if info.problem == "unfinished" and newest:
                os.unlink(info.path)            # a crash while it was made: nothing in it
                logger.info("journal %s was never finished (a crash while it was made); "
                            "removed", info.path)
                continue
            self._highest = info.number
            if info.problem == "no header" or info.problem == "unfinished" \
                    and info.size < HEADER_BYTES:
                logger.error("journal segment %s has no valid header; moved aside", info.path)
                os.replace(info.path, info.path + ".damaged")
                self._unrecorded.append((info.number, 0))
            else:
                files.append(info)
        return files

    def _replay_file(self, info, following):
        segment = Segment(info.number, info.path, info.size, info.seed, info.version)
        with open(info.path, "rb") as handle:
            data = handle.read()
        segment.size = len(data)
        end = None
        if following is not None and following.opening is not None \
                and following.opening[2] == info.number:
            end = following.opening[4]          # where the next segment says this one ends
            segment.first = following.opening[3] or None
        if info.opening is not None:
            segment.first = info.opening[1]
        scan = Scan(data, info.seed, end)
        rotate = None
        for _offset, kind, payload in scan:
            if kind == rc.ROTATE:
                rotate = rc.decode_rotate(payload)
            elif kind == rc.RETIRED:
                self._retired.update(rc.decode_retired(payload))
            elif kind != rc.OPEN:
                segment.records += 1
                yield segment, kind, payload
        if end is not None:
            self._check_sealed(segment, data, scan, end, following.opening[1])
        elif following is None or info.version == 1:
            self._check_tail(segment, data, scan)
        else:
            self._check_unsealed(segment, scan, rotate, following.number)
        self.segments.append(segment)
        self._replayed.append((segment, info.opening, rotate))

    def _check_sealed(self, segment, data, scan, end, next_first):
        """A segment the next one describes: its records must run exactly to `end`."""
        good_end = scan.torn_at if scan.torn_at is not None else scan.end
        problems = []
        if scan.damaged_at:
            problems.append("damaged at offset %s" % ", ".join(str(o) for o in scan.damaged_at))
        if len(data) < end:
            problems.append("cut short: its records end at offset %d, the next segment "
                            "says they ran to offset %d" % (good_end, end))
        elif good_end < end:
            problems.append("damaged from offset %d to its last record's end (offset %d)"
                            % (good_end, end))
        if problems:
            lost = None if segment.first is None else next_first - segment.first - segment.records
            self._fault(segment, "; ".join(problems), lost, scan.damaged_at)
            return
        tail = data[end:]
        if tail and not is_rotate_record(tail, segment.seed):
            logger.warning("journal %s: %d bytes after its last record (offset %d) are the rest "
                           "of a write that failed, or a damaged rotation record; cut off, "
                           "nothing confirmed was in them", segment.path, len(tail), end)
            self._truncate(segment.path, end)
            segment.size = end

    def _check_tail(self, segment, data, scan):
        """The newest segment (or a format 1 one): a torn tail is a crash mid-write."""
        if scan.torn_at is not None:
            logger.warning("journal %s: torn record at offset %d (a crash mid-write) dropped; "
                           "it was never confirmed", segment.path, scan.torn_at)
            self._truncate(segment.path, scan.torn_at)
            segment.size = scan.torn_at
        if scan.damaged_at:
            counts = [count_records(data, start, stop)
                      for start, stop in zip(scan.damaged_at, scan.resumed_at)]
            lost = None if None in counts else sum(counts)
            self._fault(segment, "damaged at offset %s (records after it that check out are "
                        "kept)" % ", ".join(str(o) for o in scan.damaged_at), lost,
                        scan.damaged_at)

    def _check_unsealed(self, segment, scan, rotate, following):
        """A format 2 segment that is not the newest, and that no next segment describes:
        one is missing after it, or the next one's OPEN record is damaged."""
        if scan.damaged_at:
            lost = None if rotate is None else rotate[2] - segment.records
            self._fault(segment, "damaged at offset %s" % ", ".join(
                str(o) for o in scan.damaged_at), lost, scan.damaged_at)
        if scan.torn_at is not None and rotate is None:
            if following == segment.number + 1:
                self._fault(segment, "cut short at offset %d (and the next segment's OPEN "
                            "record is damaged)" % scan.torn_at, None)
            else:                   # counted with the segments missing after it
                self._faulty.add(segment.number)

    def _check_missing(self):
        """Segments that should be there and are not: before the oldest, between two, or
        named by the ROTATE record that ends the newest."""
        replayed, retired = self._replayed, self._retired
        if not replayed:
            return
        oldest, opening, _rotate = replayed[0]
        if opening is not None and opening[2]:
            below = [n for n in retired if n < oldest.number]
            low = max(below) + 1 if below else 1
            ends = [retired[n] for n in below if retired[n]]
            base = max(ends) if ends else (None if below else 1)
            lost = None if base is None or oldest.first is None else oldest.first - base
            self._missing(range(low, oldest.number), lost, "before the oldest one")
        for (older, _o, rotate), (newer, _opening, _r) in zip(replayed, replayed[1:]):
            if newer.number == older.number + 1:
                continue
            end = older.end if rotate is None or older.first is None \
                else older.first + rotate[2]
            lost = None if end is None or newer.first is None else newer.first - end
            what = "after segment %d" % older.number
            if rotate is None and older.version >= 2:
                what += ", whose own end is missing too (no rotation record)"
            self._missing(range(older.number + 1, newer.number), lost, what)
        newest, _opening, rotate = replayed[-1]
        if rotate is not None and rotate[0] > newest.number:
            self._highest = max(self._highest, rotate[0])
            self._missing([rotate[0]], None, "named by the rotation record that ends "
                          "segment %d" % newest.number)

    def _missing(self, numbers, lost, where):
        missing = [n for n in numbers if n not in self._retired]
        if not missing:
            return
        names = ", ".join(self._path(n) for n in missing)
        text = "journal segment%s %s %s missing (%s): %s lost" % (
            "s" if len(missing) > 1 else "", names, "are" if len(missing) > 1 else "is",
            where, _records_text(lost))
        self._count(text, lost, "the broker serves the rest and records the segment as gone")
        self._unrecorded.extend((n, 0) for n in missing)

    def _fault(self, segment, what, lost, damaged_at=()):
        text = "journal segment %s is %s: %s lost" % (segment.path, what, _records_text(lost))
        self._count(text, lost, "the broker rewrites what it recovered into a fresh segment")
        self._faulty.add(segment.number)
        self.damaged.extend((segment, offset) for offset in damaged_at)

    def _count(self, text, lost, then):
        logger.error("%s; %s", text, then)
        self.faults.append(text)
        self.records_lost += lost or 0

    def _open_head(self):
        last = self.segments[-1] if self.segments else None
        sealed = bool(self._replayed) and self._replayed[-1][2] is not None
        if last is not None and last.version == VERSION and last.first is not None \
                and last.number not in self._faulty and last.size < self.segment_bytes \
                and not sealed:
            self.head = last
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        else:
            self.head = last or Segment(0, None, 0, first=self.next_number)
            try:
                self._new_segment()
            except OSError as exc:
                self._rotate_next = True
                logger.error("cannot start a new journal segment in %s: %s; publishes are "
                             "refused until the disk takes writes again", self.directory,
                             exc.strerror or exc)
        if self.fsync_policy == "everysec":
            self._syncer = Syncer(lambda fd: os.fsync(fd), self._fsync_directory,
                                  throttle=self.throttle)
            self._syncer.notify = self._synced
            self._syncer.use(self._fd)

    def _path(self, number):
        return os.path.join(self.directory, "%010d.seg" % number)

    def _truncate(self, path, size):
        with open(path, "r+b") as handle:
            handle.truncate(size)

    def _new_segment(self):
        """Start the next segment (OPEN record first), then seal the old head (ROTATE)."""
        old = self.head if self.head is not None and self.head.path else None
        number = max([self._highest] + [s.number for s in self.segments]) + 1
        seed = new_seed()
        opening = rc.open_record(number, self.next_number, old.number if old else 0,
                                 (old.first or 0) if old else 0, old.size if old else 0)
        data = file_header(seed) + seal([opening], seed)
        segment = Segment(number, self._path(number), len(data), seed, first=self.next_number)
        fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if os.write(fd, data) != len(data):          # a full disk
                raise OSError(errno.ENOSPC, "short write of a new segment's opening")
            if self.fsync_policy == "always":
                os.fsync(fd)
        except OSError:
            os.close(fd)
            try:
                os.unlink(segment.path)
            except OSError as exc:      # it is empty or short; replay removes it
                logger.debug("cannot remove %s: %s", segment.path, exc)
            raise
        self._highest = number
        self._directory_changed()
        old_fd, self._fd = self._fd, fd
        if self._syncer is not None:       # first: it never picks up the old one again
            self._syncer.use(fd)
        if old is not None and old_fd is not None:
            self._seal(old, old_fd, number)
        self.segments.append(segment)
        self.head = segment
        self._rotate_next = False
        self._cut_failed = False

    def _seal(self, old, fd, next_number):
        """End the old head with a ROTATE record naming the next segment, and let its file go.

        Not after a failed cut (its end holds the rest of a failed write; the next segment's
        OPEN says where its records end) nor in a format 1 or faulty file."""
        if old.version == VERSION and old.first is not None and not self._cut_failed \
                and old.number not in self._faulty:
            data = seal([rc.rotate_record(next_number, old.first, old.records)], old.seed)
            try:
                self._write_all(fd, data)
                old.size += len(data)
            except OSError as exc:      # the next segment's OPEN says where this one ends
                logger.debug("no rotation record at the end of %s: %s", old.path, exc)
                try:
                    os.ftruncate(fd, old.size)
                except OSError:
                    pass                # what is after old.size is never replayed
        if self._syncer is not None:
            self._syncer.seal(fd)
        else:                           # "always": fsynced as written; "no": never
            os.close(fd)

    def _directory_changed(self):
        if self._syncer is not None:
            self._syncer.directory_changed()
        else:
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

    # -- accounting -------------------------------------------------------------------------

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

    # -- writing ----------------------------------------------------------------------------

    def write(self, records):
        """Append data records with one write; fsync too under "always". Raises
        JournalWriteError.

        On failure the file is cut back to where it was, so a half-written batch never sits
        in front of later records; if even that fails the next write starts a new segment,
        whose OPEN record says where this one ends. A file-size limit (EFBIG) starts a new
        segment and tries once more there; a batch too big even for a fresh one is refused.
        """
        self._write(records, len(records))

    def _write(self, records, counted):
        if self._rotate_next:
            self._rotate_or_fail()
        if self._unrecorded:            # segments found missing at start: retire them
            records = [rc.retired_record(self._unrecorded)] + list(records)
        try:
            self._append(records, counted)
        except OSError as exc:
            if exc.errno != errno.EFBIG or not self.head.records:
                raise JournalWriteError("journal write failed: %s"
                                        % (exc.strerror or exc,)) from exc
            self._rotate_or_fail()
            try:
                self._append(records, counted)
            except OSError as again:
                raise JournalWriteError("journal write failed: %s (even in a new segment)"
                                        % (again.strerror or again,)) from again
        self._unrecorded = []

    def _append(self, records, counted):
        head = self.head
        data = seal(records, head.seed)
        fd = self._fd
        try:
            self._write_all(fd, data)
            if self.fsync_policy == "always":
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, head.size)
            except OSError as exc:
                if self.throttle.allow("cut back failed") is not None:
                    logger.error("cannot cut journal %s back after a failed write: %s; the "
                                 "next write starts a new segment", head.path, exc)
                self._rotate_next = self._cut_failed = True
            raise
        head.size += len(data)
        head.records += counted
        self.next_number += counted
        self.bytes_written += len(data)
        if self._syncer is not None:
            self._syncer.wrote()
        if head.size >= self.segment_bytes:
            self._rotate_next = True

    def _write_all(self, fd, data):
        if fd is None:
            raise OSError(errno.EBADF, "no journal segment is open")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _rotate_or_fail(self):
        try:
            self._new_segment()
        except OSError as exc:
            raise JournalWriteError("cannot start a new journal segment: %s"
                                    % (exc.strerror or exc,)) from exc

    # -- fsync ------------------------------------------------------------------------------

    def _synced(self):
        notify = self.notify
        if notify is not None:
            notify()

    @property
    def generation(self):
        """A number for the writes made so far; `is_synced` tells when an fsync covers it."""
        return self._syncer.written if self._syncer is not None else 0

    def is_synced(self, generation):
        return self._syncer is None or self._syncer.synced >= generation

    def lagging(self):
        """True while confirms must wait for an fsync (everysec: the disk is behind)."""
        return self._syncer is not None and self._syncer.lag() >= MAX_LAG

    def sync(self):
        """fsync the head now, in this thread (start-up, shutdown)."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            logger.error("fsync of journal %s failed: %s", self.head.path, exc)

    def close(self):
        sealed = self._syncer.stop() if self._syncer is not None else []
        self._syncer = None
        for fd in sealed:
            try:
                os.fsync(fd)
            except OSError as exc:
                logger.error("fsync of a sealed journal segment failed: %s", exc)
            os.close(fd)
        if self._fd is not None:
            if self.fsync_policy != "no":
                self.sync()
            os.close(self._fd)
            self._fd = None

    # -- compaction -------------------------------------------------------------------------

    def total_bytes(self):
        return sum(segment.size for segment in self.segments)

    def live_bytes(self):
        return sum(self._live(segment) for segment in self.segments)

    def _live(self, segment):
        """A segment's live bytes, the newest snapshot counted in the one that holds it."""
        if self._snapshot is not None and self._snapshot[0] is segment:
            return segment.live_bytes + self._snapshot[1]
        return segment.live_bytes

    def has_work(self):
        """True when compact_step can make progress right now (not waiting for an fsync)."""
        return self.compacting is not None and (
            self._waiting_for is None or self.is_synced(self._waiting_for))

    def wants_compaction(self):
        """True when the oldest sealed segment is worth copying forward (or simply deleting),
        or faults found at start still wait for their rewrite."""
        if self._faulty:
            return self.clock() >= self._rewrite_at
        if self.compacting is not None:
            return True
        if len(self.segments) < 2:
            return False
        oldest = self.segments[0]
        oldest_live = self._live(oldest)
        if not oldest_live:
            return True
        sealed = self.segments[:-1]
        sealed_size = sum(segment.size for segment in sealed)
        sealed_live = sum(self._live(segment) for segment in sealed)
        return (oldest_live * 2 < oldest.size
                or sealed_size > 2 * sealed_live + self.segment_bytes)

    def compact_step(self, state, budget_bytes=1 << 20):
        """Copy up to `budget_bytes` of the oldest segment's live records to the head.

        `state.snapshot_records()` gives the records that summarise small state (topology,
        revoked ids, settings, handovers); a pass writes them first, unless a newer segment
        already holds a snapshot (that one, and the records after it, say all the oldest
        segment's small records said). `state.record_for(obj)` gives the record of one live
        message or result. Returns True while there is more to do. A write failure stops the
        pass without losing anything: the old segment stays until every copy is on disk.
        A rewrite still owed after faults found at start (see `rewrite_faulty`) comes first.
        """
        if self._faulty:
            if self.clock() >= self._rewrite_at:
                self.rewrite_faulty(state)
            return False
        if self.compacting is None:
            if not self.wants_compaction():
                return False
            self.compacting = self.segments[0]
            self._todo = list(self.compacting.members)
            if self._snapshot is None or self._snapshot[0] is self.compacting:
                try:
                    self._write_snapshot(state.snapshot_records())
                except JournalWriteError as exc:
                    self._pause(exc)
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
                self._pause(exc)
                self._todo.extend(batch)
                return False
            for obj in batch:
                if obj.segment is segment:
                    self.untrack(obj)
                    self.track(obj)
        if self._todo:
            return True
        return self._finish_compaction(segment)

    def _write_snapshot(self, records):
        self.write(records)
        self._snapshot = (self.head, sum(len(record) for record in records))

    def _pause(self, exc):
        counts = self.throttle.allow("compaction paused")
        if counts is not None:
            logger.warning("compaction paused: %s%s", exc, folded(counts))

    def _finish_compaction(self, segment):
        if segment.members:                    # something was added back meanwhile
            self._todo = list(segment.members)
            return True
        if segment is self.head:               # never delete the segment being appended to
            self.compacting = None
            return False
        if self._retiring is not segment:
            try:
                self._write([rc.retired_record([(segment.number, segment.end or 0)])], 0)
            except JournalWriteError as exc:
                self._pause(exc)
                return False
            self._retiring = segment
        if not self._durable():
            return False
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        self.segments.remove(segment)
        self._directory_changed()
        logger.debug("compacted journal segment %d", segment.number)
        self.compacting = self._retiring = None
        return self.wants_compaction()

    def _durable(self):
        """True once the copies and the RETIRED record are on disk; False to come back later
        (everysec: the fsync thread was asked to hurry; `has_work` says when it is done)."""
        if self.fsync_policy == "always":
            return True
        if self._syncer is not None:
            if self._waiting_for is None:
                self._waiting_for = self._syncer.written
            if self._syncer.synced >= self._waiting_for:
                self._waiting_for = None
                return True
            self._syncer.hurry()
            return False
        try:                            # "no": compaction still never deletes before an fsync
            os.fsync(self._fd)
        except OSError as exc:
            self._pause(JournalWriteError("fsync failed: %s" % exc))
            return False
        return True

    # -- faults found at start --------------------------------------------------------------

    def rewrite_faulty(self, state):
        """After replay found a segment cut short or damaged: write everything live into a
        fresh segment, then retire every older segment (faulty ones moved aside as
        ``.damaged``, for people to look at).

        Every record that checked out was replayed into `state`. Returns True when done or
        nothing is owed; on a disk error, False: the broker serves what it recovered, and
        `compact_step` tries again.
        """
        if not self._faulty:
            if self._unrecorded:        # segments found missing: retire them right away
                try:
                    self._write([], 0)
                except JournalWriteError as exc:    # the next write that succeeds does it
                    logger.debug("missing segments not recorded as retired yet: %s", exc)
            return True
        try:
            if self.head.records or self.head.number in self._faulty or self._rotate_next:
                self._new_segment()
            fresh = self.head
            old = [segment for segment in self.segments if segment is not fresh]
            records = list(state.snapshot_records())
            snapshot = sum(len(record) for record in records)
            for obj in state.live_objects():
                record = state.record_for(obj)
                if record is not None:
                    self.untrack(obj)
                    records.append(record)
                    self.track(obj)
            retired = [(s.number, s.end or 0) for s in old]
            self._write([rc.retired_record(retired)] + records, len(records))
            self._snapshot = (self.head, snapshot)
            self.sync()
        except (OSError, JournalWriteError) as exc:
            # Each try writes everything live: not every second while the disk is full.
            self._rewrite_at = self.clock() + self._rewrite_wait
            self._rewrite_wait = min(60.0, self._rewrite_wait * 2)
            counts = self.throttle.allow("rewrite failed")
            if counts is not None:
                logger.error("cannot rewrite the journal after the faults found at start: %s; "
                             "will try again%s", getattr(exc, "strerror", None) or exc,
                             folded(counts))
            return False
        for segment in old:
            try:
                if segment.number in self._faulty:
                    os.replace(segment.path, segment.path + ".damaged")
                    logger.error("moved faulty journal segment aside: %s.damaged",
                                 segment.path)
                else:
                    os.unlink(segment.path)
            except OSError as exc:      # retired all the same: its records are copied
                logger.error("cannot remove journal segment %s: %s", segment.path, exc)
            self.segments.remove(segment)
        self._directory_changed()
        self._faulty = set()
        self.damaged = []
        return True


def _records_text(lost):
    if lost is None:
        return "an unknown number of records"
    return "%d record%s" % (lost, "" if lost == 1 else "s")


class NullJournal:
    """``--no-persist``: the same surface, nothing on disk, nothing survives a restart."""

    enabled = False
    head = None
    compacting = None
    fsync_policy = "no"
    damaged = ()
    faults = ()
    records_lost = 0
    bytes_written = 0
    generation = 0
    notify = None

    def replay(self):
        return iter(())

    def track(self, obj, segment=None):
        pass

    def untrack(self, obj):
        pass

    def write(self, records):
        pass

    def is_synced(self, generation):
        return True

    def lagging(self):
        return False

    def sync(self):
        pass

    def close(self):
        pass

    def has_work(self):
        return False

    def wants_compaction(self):
        return False

    def compact_step(self, state, budget_bytes=0):
        return False

    def rewrite_faulty(self, state):
        return True

    def total_bytes(self):
        return 0

    def live_bytes(self):
        return 0
