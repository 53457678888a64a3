"""The Redis consumer's reader: one connection whose socket a worker's selector waits on.

It carries an XREAD that blocks in Redis (see `redis_consumer`), and optionally a FETCH
sent behind it, which Redis runs the moment the XREAD is answered: a bell's answer brings
the messages with it. It is driven without blocking: `send` writes as far as the socket
takes (the rest goes with the next call), `replies` takes whatever has arrived, each with
the kind of command it answers. An error reply to an XREAD (UNBLOCKED in a failover, above
all) ends the connection; one to a FETCH is the consumer's to read.
"""

import collections
import ssl

from ..exceptions import BrokerConnectionError, ProtocolError, ReplyError
from . import resp
from .redis_client import RedisClient

__all__ = ["Reader"]

_RECV_BYTES = 256 * 1024


class Reader:
    """The reader connection: one blocking XREAD at a time (and maybe a FETCH behind it),
    driven without blocking."""

    def __init__(self, options, ca_file):
        redis = RedisClient(options, ca_file=ca_file)
        self.url = options.display
        self.sock, self.decoder = redis.detach()
        self.sock.setblocking(False)
        self.pending = collections.deque()     # the kinds of the commands not answered yet
        self.with_bells = False         # the XREAD waits on the bells too
        self.out = bytearray()
        self.scratch = bytearray(_RECV_BYTES)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass                        # closing anyway

    @property
    def waiting(self):
        """Something sent is not answered yet (the XREAD, or the FETCH behind it)."""
        return bool(self.pending)

    def send(self, commands, kinds):
        """Send `commands` (one pipeline) whose replies are of `kinds` ("xread", "fetch")."""
        self.out += resp.encode_commands(commands)
        self.pending.extend(kinds)
        self.flush()

    def flush(self):
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                return                  # the rest goes with the next read()
            except OSError as exc:
                raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) \
                    from None
            del self.out[:sent]

    def replies(self):
        """Every whole reply that has arrived, as ``(kind, reply)``; BrokerConnectionError
        when the connection ended or an XREAD got an error (UNBLOCKED in a failover, for
        one)."""
        while True:
            try:
                count = self.sock.recv_into(self.scratch)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                raise BrokerConnectionError("connection to %s lost: %s" % (self.url, exc)) \
                    from None
            if not count:
                raise BrokerConnectionError("%s closed the connection" % self.url)
            self.decoder.feed(memoryview(self.scratch)[:count])
            pending = getattr(self.sock, "pending", None)
            if not (pending and pending()) and count < len(self.scratch):
                break
        out = []
        try:
            for reply in self.decoder.replies():
                if not self.pending:
                    raise BrokerConnectionError("%s answered what was not asked" % self.url)
                kind = self.pending.popleft()
                if kind == "xread" and isinstance(reply, ReplyError):
                    raise BrokerConnectionError("%s: %s" % (self.url, reply))
                out.append((kind, reply))
        except ProtocolError as exc:
            raise BrokerConnectionError("%s sent bytes that are not RESP: %s"
                                        % (self.url, exc)) from None
        self.flush()
        return out
