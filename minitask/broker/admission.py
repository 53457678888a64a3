"""Who gets a connection slot, and how much unfinished input the broker holds for them.

Two budgets the socket loop (`server.BrokerServer`) asks before it takes on more, kept apart
from the sockets so that they read (and test) as plain bookkeeping:

`Admission` gives connections that have not finished their handshake (not yet WELCOMEd)
their own share of the slots, and each peer a share of that (a peer is an IP address over
TCP, a user id on the local socket)::

    max_connections                     1024   everyone
      max_unauthenticated                256   still in their handshake, all peers
        max_unauthenticated_per_peer      64   still in their handshake, one peer

A newcomer over a share does not wait for a slot: it takes the slot of the oldest handshake
of its own peer (or, when all peers together are over, of the peer holding the most),
preferring one that has not even sent its whole HELLO. Refusing the newcomer instead would
let one process that parks sockets half-way through a handshake keep every other client of
its address (127.0.0.1, or its user on the local socket) out for as long as it liked. With
eviction, such a process only ever pushes out its own sockets: a good client sends its HELLO
as it connects (the broker reads it on accept) and is done in a few milliseconds, and to push
it out before then a peer would have to open more connections than its share in that time,
again and again — a flood of connects, which no rule that cannot tell clients apart before
they prove the secret can stop for clients sharing the flooder's address; clients of other
addresses and other users are not touched by it. A client that is WELCOMEd leaves these
shares and is never evicted.

`PartialFrames` sums the bytes held in frames that have begun to arrive and are not
complete yet, over every connection: each is below the frame limit, but a thousand of them
are not below the machine's memory. Over its cap, the connections holding the most are cut
off until the sum is under it again.
"""

import collections

from .session import HELLO_STAGE

__all__ = ["Admission", "PartialFrames", "REFUSE"]

REFUSE = object()           # Admission.admit: no slot, and no handshake to take one from


class Admission:
    """Connections still in their handshake, per peer and in the order they arrived."""

    def __init__(self, max_connections, max_unauthenticated, max_unauthenticated_per_peer):
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_unauthenticated_per_peer = max_unauthenticated_per_peer
        self.waiting = {}           # peer -> OrderedDict of its handshaking connections
        self.count = 0              # handshaking connections, all peers

    def admit(self, peer, connections):
        """What a newcomer from `peer` costs, with `connections` open: None (a free slot),
        a handshaking connection to evict first, or REFUSE (every slot is a client's)."""
        mine = self.waiting.get(peer)
        if mine is not None and len(mine) >= self.max_unauthenticated_per_peer:
            return _oldest(mine)
        if self.count >= self.max_unauthenticated or connections >= self.max_connections:
            if not self.count:
                return REFUSE
            biggest = max(self.waiting.values(), key=len)
            return _oldest(biggest)
        return None

    def add(self, conn):
        self.waiting.setdefault(conn.peer_key, collections.OrderedDict())[conn] = None
        self.count += 1

    def remove(self, conn):
        """`conn` finished its handshake or is gone (either may come twice)."""
        mine = self.waiting.get(conn.peer_key)
        if mine is None or conn not in mine:
            return
        del mine[conn]
        self.count -= 1
        if not mine:
            del self.waiting[conn.peer_key]


def _oldest(connections):
    """The oldest that has not sent its whole HELLO yet, else the oldest."""
    for conn in connections:
        if conn.session.stage == HELLO_STAGE:
            return conn
    return next(iter(connections))


class PartialFrames:
    """Bytes held for frames not yet complete, per connection and in all."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.total = 0
        self.holders = {}           # connection -> bytes it holds (only those holding some)

    def hold(self, conn, nbytes):
        """`conn` now holds `nbytes` (0 when it is gone or its frames are complete)."""
        self.total += nbytes - self.holders.pop(conn, 0)
        if nbytes:
            self.holders[conn] = nbytes

    @property
    def over(self):
        return self.total > self.max_bytes

    def largest(self):
        """The holders to cut off, largest first, until the rest fit under the cap."""
        excess = self.total - self.max_bytes
        chosen = []
        for conn, nbytes in sorted(self.holders.items(), key=lambda item: -item[1]):
            if excess <= 0:
                break
            chosen.append(conn)
            excess -= nbytes
        return chosen
