"""RESP, the protocol of Redis and Valkey: commands encoded, replies decoded. Pure; no sockets.

The connection (`redis_client`) moves bytes; this module only turns them into values, so the
client, fake servers and tests all drive it the same way: ``feed()`` whatever arrived, then
take whole replies with ``next_reply()`` until it says `NEED_DATA`.

Commands
--------
A command is an array of bulk strings: ``*<n>\\r\\n`` then ``$<len>\\r\\n<bytes>\\r\\n`` per
argument, binary safe. Arguments may be bytes, str (sent as UTF-8), int or float (sent in
decimal; ``repr()`` of a float reads back exactly); anything else, bool included (is it
``1`` or ``True``?), raises TypeError.

Replies
-------
Every reply starts with one type byte and a line ended by CRLF. What each decodes to::

    +OK              simple string     str (UTF-8; undecodable bytes replaced)
    -ERR why         error             ReplyError, a value (see below)
    :42              integer           int
    $5 hello         bulk string       bytes; ``$-1`` is None
    *2 ...           array             list; ``*-1`` is None
    RESP3 only (after ``HELLO 3``):
    _                null              None
    #t / #f          boolean           True / False
    ,3.14            double            float (``inf``, ``-inf``, ``nan`` too)
    (123...          big number        int
    !5 oops!         bulk error        ReplyError
    =9 txt:hello     verbatim string   bytes, without its ``txt:`` format prefix
    %1 k v           map               dict
    ~2 a b           set               list, as RESP2 sends sets, so callers read both alike
    |1 k v           attribute         dropped; the reply that follows it is returned
    >2 ...           push              Push (a list), kept apart in `Decoder.pushes`

Error replies are values, not raised here: in a pipeline every command has run and each gets
its reply in place, so one failure must not hide the others. `ReplyError.prefix` is the
error's first word (``LOADING``, ``READONLY``, ``NOSCRIPT``, ``MOVED``...), what callers act
on. Push messages are data the server sent on its own (RESP3 only); they never take the place
of a reply. Streamed strings and aggregates (``$?``, ``*?``) are not supported: no Redis or
Valkey command sends them.

Limits
------
The decoder never allocates ahead of the bytes it has received, and these bound what a broken
or hostile server can make it hold: a bulk string of at most `MAX_BULK_BYTES` (512 MiB, Redis's
own ``proto-max-bulk-len``, so any value Redis stores can be read back), a line (simple string,
error, number) of at most `MAX_LINE_BYTES`, an aggregate of at most `MAX_AGGREGATE_LENGTH`
elements, nested at most `MAX_DEPTH` deep. Past any of them, or on bytes that are not RESP,
it raises `ProtocolError`, after which the decoder is unusable and the connection must go.
"""

import collections

from ..exceptions import ProtocolError, ReplyError

__all__ = ["encode_command", "encode_commands", "Decoder", "Push", "NEED_DATA",
           "MAX_BULK_BYTES", "MAX_LINE_BYTES", "MAX_AGGREGATE_LENGTH", "MAX_DEPTH"]

MAX_BULK_BYTES = 512 * 1024 * 1024
# Status texts and error messages are single lines of text, rarely over a few hundred bytes.
MAX_LINE_BYTES = 64 * 1024
# XRANGE or LRANGE without COUNT can legitimately return millions of elements.
MAX_AGGREGATE_LENGTH = 1 << 28
# XREADGROUP's reply (streams, entries, fields) nests 5 deep; a script can return deeper
# tables, but not this deep.
MAX_DEPTH = 64
# CPython 3.11+ refuses longer decimal strings (int_max_str_digits), and older versions take
# quadratic time on them: a hostile big number must not stall the client.
_MAX_DIGITS = 4300


class _Marker:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


NEED_DATA = _Marker("NEED_DATA")     # next_reply(): no whole reply yet; feed more bytes
_OPENED = _Marker("OPENED")          # an aggregate's header was read; its elements follow
_SKIP = _Marker("SKIP")              # an attribute ended: nothing to hand back


class Push(list):
    """A RESP3 push message: data the server sent on its own, not the reply to a command."""

    __slots__ = ()

    def __repr__(self):
        return "Push(%s)" % list.__repr__(self)


# -- commands -----------------------------------------------------------------------------------

def _argument(arg):
    """One command argument as bytes (see the module docstring for what is accepted)."""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(float(arg)).encode("ascii")
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise TypeError("cannot send %r to Redis: expected bytes, str, int or float, got %s"
                    % (arg, type(arg).__name__))


# Key names and script digests come back in every call of a script (a worker's FETCH names
# some thirty keys each turn): the encoding of a short string is kept, for up to this many
# strings, which are then all forgotten at once (task ids come and go through it too).
_KEPT_STRINGS = 4096
_KEPT_LENGTH = 200
_kept = {}
# Larger arguments go as three parts rather than be copied into one.
_SMALL_BYTES = 4096


def _encode_into(parts, args):
    parts.append(b"*%d\r\n" % len(args))
    append = parts.append
    kept = _kept
    for arg in args:
        kind = type(arg)                # the common types first, without a call
        if kind is str:
            bulk = kept.get(arg)
            if bulk is None:
                data = arg.encode("utf-8")
                bulk = b"$%d\r\n%b\r\n" % (len(data), data)
                if len(arg) <= _KEPT_LENGTH:
                    if len(kept) >= _KEPT_STRINGS:
                        kept.clear()
                    kept[arg] = bulk
            append(bulk)
            continue
        if kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg
        else:
            data = _argument(arg)
        if len(data) <= _SMALL_BYTES:
            append(b"$%d\r\n%b\r\n" % (len(data), data))
        else:
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")


def encode_command(*args):
    """One command, e.g. ``encode_command("XADD", key, "*", "body", data)``."""
    if not args:
        raise TypeError("a Redis command needs at least its name")
    parts = []
    _encode_into(parts, args)
    return b"".join(parts)


def encode_commands(commands):
    """Several commands (sequences of arguments) as one buffer: a pipeline."""
    parts = []
    for args in commands:
        if not args or isinstance(args, (str, bytes)):
            # ("PING") is a str, not a command of one word: it would go as P, I, N, G.
            raise TypeError("a Redis command is a non-empty sequence of arguments, got %r"
                            % (args,))
        _encode_into(parts, args)
    return b"".join(parts)


# -- replies ------------------------------------------------------------------------------------

_BULK, _BULK_ERROR, _VERBATIM = ord("$"), ord("!"), ord("=")
_SIMPLE, _ERROR, _INTEGER, _BIG_NUMBER = ord("+"), ord("-"), ord(":"), ord("(")
_ARRAY, _MAP, _SET, _PUSH, _ATTRIBUTE = ord("*"), ord("%"), ord("~"), ord(">"), ord("|")
_NULL, _BOOLEAN, _DOUBLE = ord("_"), ord("#"), ord(",")
_AGGREGATES = frozenset((_ARRAY, _MAP, _SET, _PUSH, _ATTRIBUTE))
_NULLABLE = frozenset((_BULK, _ARRAY))         # RESP2's ``$-1`` and ``*-1``


class Decoder:
    """Cut a byte stream into replies; a reply split across reads is the normal case.

    Parsing resumes where it stopped: the elements of an unfinished aggregate are kept, so a
    reply of many elements arriving over many reads is parsed once, not again on each read.
    Requests are arrays of bulk strings, so a fake server can read commands with it too.
    """

    def __init__(self, max_bulk_bytes=MAX_BULK_BYTES, max_line_bytes=MAX_LINE_BYTES,
                 max_aggregate_length=MAX_AGGREGATE_LENGTH, max_depth=MAX_DEPTH):
        self.max_bulk_bytes = max_bulk_bytes
        self.max_line_bytes = max_line_bytes
        self.max_aggregate_length = max_aggregate_length
        self.max_depth = max_depth
        self.pushes = collections.deque()
        self._buffer = bytearray()
        self._offset = 0
        self._open = []         # aggregates being filled, innermost last: [type, items, to come]

    def feed(self, data):
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def next_reply(self):
        """Return the next whole reply, or `NEED_DATA` until more bytes arrive.

        Push messages met on the way are appended to `pushes`. Raises ProtocolError on bytes
        that are not RESP or break a limit.
        """
        open_ = self._open
        while True:
            value = self._next_value()
            if value is NEED_DATA:
                return NEED_DATA
            if value is _OPENED:
                continue
            while open_:
                top = open_[-1]
                if value is _SKIP:          # an attribute inside an aggregate: not an element
                    break
                top[1].append(value)
                top[2] -= 1
                if top[2]:
                    break
                open_.pop()
                value = _aggregate(top[0], top[1])
            else:
                if value is _SKIP:
                    continue
                if type(value) is Push:
                    self.pushes.append(value)
                    continue
                return value

    def replies(self):
        """Yield every whole reply buffered so far."""
        reply = self.next_reply()
        while reply is not NEED_DATA:
            yield reply
            reply = self.next_reply()

    @property
    def partial(self):
        """True when part of a reply has arrived but not all of it."""
        return len(self._buffer) > self._offset or bool(self._open)

    def _next_value(self):
        """Parse one value at the offset: a scalar, `_OPENED` for an aggregate's header (its
        elements come next), `_SKIP` for an empty attribute, or NEED_DATA."""
        buffer, start = self._buffer, self._offset
        end = buffer.find(b"\r\n", start)
        if end < 0:
            if len(buffer) - start > self.max_line_bytes + 1:     # + 1: its CR may be here
                raise ProtocolError("reply line over %d bytes without CRLF" % self.max_line_bytes)
            return NEED_DATA
        if end - start > self.max_line_bytes:
            raise ProtocolError("reply line of %d bytes is over the %d-byte limit"
                                % (end - start, self.max_line_bytes))
        if end == start:
            raise ProtocolError("empty reply line: expected a type byte")
        kind = buffer[start]
        line = buffer[start + 1:end]
        if kind == _BULK or kind == _BULK_ERROR or kind == _VERBATIM:
            length = self._length(kind, line, self.max_bulk_bytes)
            if length < 0:
                self._offset = end + 2
                return None
            data_end = end + 2 + length
            if len(buffer) < data_end + 2:
                return NEED_DATA
            if buffer[data_end:data_end + 2] != b"\r\n":
                raise ProtocolError("bulk string of %d bytes is not followed by CRLF" % length)
            data = bytes(buffer[end + 2:data_end])
            self._offset = data_end + 2
            if kind == _BULK:
                return data
            if kind == _BULK_ERROR:
                return ReplyError(data.decode("utf-8", "replace"))
            if data[3:4] != b":":
                raise ProtocolError("verbatim string without its 3-letter format and ':'")
            return data[4:]
        self._offset = end + 2
        if kind == _SIMPLE:
            return line.decode("utf-8", "replace")
        if kind == _INTEGER or kind == _BIG_NUMBER:
            return _integer(line, kind)
        if kind == _ERROR:
            return ReplyError(line.decode("utf-8", "replace"))
        if kind in _AGGREGATES:
            count = self._length(kind, line, self.max_aggregate_length)
            if count <= 0:
                return None if count < 0 else _aggregate(kind, [])
            if len(self._open) >= self.max_depth:
                raise ProtocolError("reply nested over %d deep" % self.max_depth)
            pairs = kind == _MAP or kind == _ATTRIBUTE
            self._open.append([kind, [], 2 * count if pairs else count])
            return _OPENED
        if kind == _NULL and not line:
            return None
        if kind == _BOOLEAN and line in (b"t", b"f"):
            return line == b"t"
        if kind == _DOUBLE:
            try:
                return float(line)
            except ValueError:
                raise ProtocolError("bad double %r" % bytes(line[:40])) from None
        raise ProtocolError("not a RESP reply: %r" % bytes(buffer[start:min(end, start + 40)]))

    def _length(self, kind, line, limit):
        if line == b"?":
            raise ProtocolError("streamed RESP3 %r replies are not supported" % chr(kind))
        length = _integer(line, kind)
        if length > limit:
            raise ProtocolError("%r length %d is over the limit of %d" % (chr(kind), length, limit))
        if length < 0 and not (length == -1 and kind in _NULLABLE):
            raise ProtocolError("%r length %d is negative" % (chr(kind), length))
        return length


def _integer(line, kind):
    if len(line) > _MAX_DIGITS:
        raise ProtocolError("%r number of %d digits is too long" % (chr(kind), len(line)))
    try:
        return int(line)
    except ValueError:
        raise ProtocolError("expected a number after %r, got %r"
                            % (chr(kind), bytes(line[:40]))) from None


def _aggregate(kind, items):
    """The value of a finished aggregate."""
    if kind == _ARRAY or kind == _SET:
        return items
    if kind == _PUSH:
        return Push(items)
    if kind == _ATTRIBUTE:
        return _SKIP
    try:
        return dict(zip(items[0::2], items[1::2]))
    except TypeError:               # a list or map as a key: no server sends one
        raise ProtocolError("map with a key that is not hashable") from None
