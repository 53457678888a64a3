"""Test helpers for RESP: reply encoding (the server's side, which minitask never writes),
values to compare decoded replies by, and a scripted fake Redis behind a fake socket.

A reply is described as a tagged tree, ``(tag, payload)``: `encode_reply` turns it into the
bytes a server sends, `expected` into what `resp.Decoder` should give back for them.
"""
import os
import socket

from minitask.exceptions import ReplyError
from minitask.transport import resp

# -- tagged replies ------------------------------------------------------------------------------


def _bulk(prefix, data):
    return b"%s%d\r\n%s\r\n" % (prefix, len(data), data)


def _double(value):
    if value != value:
        return b"nan"
    return repr(value).encode("ascii")


def encode_reply(node):
    """The RESP bytes of a tagged reply tree."""
    tag, value = node
    if tag == "simple":
        return b"+" + value.encode("utf-8") + b"\r\n"
    if tag == "error":
        return b"-" + value.encode("utf-8") + b"\r\n"
    if tag == "int":
        return b":%d\r\n" % value
    if tag == "bulk":
        return b"$-1\r\n" if value is None else _bulk(b"$", value)
    if tag == "array":
        if value is None:
            return b"*-1\r\n"
        return b"*%d\r\n" % len(value) + b"".join(map(encode_reply, value))
    if tag == "null":
        return b"_\r\n"
    if tag == "bool":
        return b"#t\r\n" if value else b"#f\r\n"
    if tag == "double":
        return b"," + _double(value) + b"\r\n"
    if tag == "bignum":
        return b"(%d\r\n" % value
    if tag == "bulk_error":
        return _bulk(b"!", value.encode("utf-8"))
    if tag == "verbatim":
        fmt, data = value
        return _bulk(b"=", fmt + b":" + data)
    if tag in ("set", "push"):
        mark = b"~" if tag == "set" else b">"
        return mark + b"%d\r\n" % len(value) + b"".join(map(encode_reply, value))
    if tag == "map":
        return b"%%%d\r\n" % len(value) + b"".join(
            encode_reply(k) + encode_reply(v) for k, v in value)
    if tag == "attribute":
        pairs, inner = value
        return b"|%d\r\n" % len(pairs) + b"".join(
            encode_reply(k) + encode_reply(v) for k, v in pairs) + encode_reply(inner)
    raise ValueError("unknown tag %r" % tag)


class Err:
    """What a decoded ReplyError is compared as: its class, message and prefix."""

    def __init__(self, message):
        self.message = message

    def __eq__(self, other):
        return (isinstance(other, ReplyError) and str(other) == self.message
                and other.prefix == self.message.split(" ", 1)[0])

    def __repr__(self):
        return "Err(%r)" % self.message


class NaN:
    def __eq__(self, other):
        return isinstance(other, float) and other != other

    def __repr__(self):
        return "NaN"


def expected(node):
    """What the decoder should return for a tagged reply (None for a top-level push, which
    goes to `pushes`, and is compared with `expected_push`)."""
    tag, value = node
    if tag in ("simple", "int", "bignum", "bool"):
        return value
    if tag in ("bulk",):
        return value
    if tag in ("error", "bulk_error"):
        return Err(value)
    if tag == "null":
        return None
    if tag == "double":
        return NaN() if value != value else value
    if tag == "verbatim":
        return value[1]
    if tag in ("array", "set"):
        return None if value is None else [expected(item) for item in value]
    if tag == "push":
        return resp.Push(expected(item) for item in value)
    if tag == "map":
        return {expected(k): expected(v) for k, v in value}
    if tag == "attribute":
        return expected(value[1])
    raise ValueError("unknown tag %r" % tag)


def is_push(node):
    """A push at the top level, possibly behind attributes, goes to `pushes`."""
    while node[0] == "attribute":
        node = node[1][1]
    return node[0] == "push"


# -- feeding a decoder ---------------------------------------------------------------------------

# The first bytes of a reply that has not finished arriving.
NEXT_REPLY_START = b"*2\r\n$3\r\nab"
FEEDS = ("whole", "bytewise", "then_next_start")


def chunks_for(data, how):
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    return [data + NEXT_REPLY_START]


def decode_all(data, how="whole", **limits):
    """Feed `data` the way `how` says; returns (replies, decoder)."""
    decoder = resp.Decoder(**limits)
    replies = []
    for chunk in chunks_for(data, how):
        decoder.feed(chunk)
        replies.extend(decoder.replies())
    return replies, decoder


# -- a scripted fake Redis -------------------------------------------------------------------------

def hello_reply(version="7.0.15", server="redis", role="master", proto=2):
    fields = [b"server", server.encode(), b"version", version.encode(), b"proto", proto,
              b"id", 7, b"mode", b"standalone", b"role", role.encode(), b"modules", []]
    if proto == 3:
        return encode_reply(("map", [(_node(k), _node(v)) for k, v in
                                     zip(fields[0::2], fields[1::2])]))
    return encode_reply(("array", [_node(field) for field in fields]))


def _node(value):
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, list):
        return ("array", [_node(item) for item in value])
    return ("bulk", value)


HANG_UP = object()      # a handler's answer: close the connection instead of replying
SILENCE = object()      # a handler's answer: say nothing at all


class FakeSocket:
    """A socket whose peer is a `FakeRedis`, answering each command as it arrives.

    `fileno()` is the read end of a pipe that holds one byte exactly while something is
    there to read, so `select.poll` sees this socket as it would a real one.
    """

    def __init__(self, server, address):
        self.server = server
        self.address = address
        self.timeout = None
        self.sent = []              # every command received, as lists of bytes
        self.closed = False
        self._decoder = resp.Decoder()
        self._out = bytearray()
        self._hung_up = False
        self._readable_r, self._readable_w = os.pipe()
        self._signalled = False

    def fileno(self):
        return self._readable_r

    def setsockopt(self, *args):
        pass

    def settimeout(self, timeout):
        self.timeout = timeout

    def _signal(self):
        want = bool(self._out) or self._hung_up
        if want and not self._signalled:
            os.write(self._readable_w, b"x")
        elif not want and self._signalled:
            os.read(self._readable_r, 1)
        self._signalled = want

    def sendall(self, data):
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if self._hung_up:
            raise BrokenPipeError(32, "Broken pipe")
        self._decoder.feed(data)
        for command in self._decoder.replies():
            self.sent.append(command)
            self.server.log.append((self.address, command))
            reply = self.server.answer(self, command)
            if reply is HANG_UP:
                self.hang_up()
                break
            if reply is not SILENCE:
                self._out += reply
        self._signal()

    def push(self, data):
        """The server sends `data` on its own."""
        self._out += data
        self._signal()

    def hang_up(self):
        self._hung_up = True
        self._signal()

    def recv_into(self, buffer):
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if self._out:
            count = min(len(buffer), len(self._out))
            buffer[:count] = self._out[:count]
            del self._out[:count]
            self._signal()
            return count
        if self._hung_up:
            return 0
        if self.timeout == 0:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        # Nothing more will ever come: a real socket would wait out its timeout.
        if self.timeout is None:
            raise AssertionError("a read with no timeout would hang forever here")
        raise socket.timeout("timed out")

    def close(self):
        if not self.closed:
            self.closed = True
            os.close(self._readable_r)
            os.close(self._readable_w)


class FakeRedis:
    """Fake servers at any number of addresses. `handlers[address](sock, command)` answers
    with reply bytes, HANG_UP or SILENCE; when it returns None, a healthy Redis 7.0 primary
    answers HELLO, SELECT, ROLE, AUTH and PING.

    An address without a handler, or in `down`, refuses connections.
    """

    def __init__(self, handler=None, address=("localhost", 6379)):
        self.handlers = {}
        self.down = set()
        self.sockets = []
        self.log = []               # (address, command) in the order received
        if handler is not None:
            self.handlers[address] = handler

    def connector(self, address, timeout):
        address = tuple(address)
        if address not in self.handlers or address in self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        sock = FakeSocket(self, address)
        self.sockets.append(sock)
        return sock

    def answer(self, sock, command):
        reply = self.handlers[sock.address](sock, command)
        if reply is not None:
            return reply
        name = command[0].upper()
        if name == b"HELLO":
            return hello_reply(proto=int(command[1]))
        if name == b"ROLE":
            return encode_reply(("array", [("bulk", b"master"), ("int", 0), ("array", [])]))
        if name in (b"SELECT", b"AUTH"):
            return b"+OK\r\n"
        if name == b"PING":
            return b"+PONG\r\n"
        return b"-ERR the fake does not know %s\r\n" % name

    def commands(self, address=None):
        """The names of the commands received (at `address`), in order."""
        return [command[0].decode() for where, command in self.log
                if address is None or where == tuple(address)]


class FakeClock:
    """time.monotonic and time.sleep for code that waits: sleeping advances the clock."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
