"""One client connection as the broker's state sees it: no socket, just what it owns.

A `Session` collects the frames to send (`out`), its consumers, its unacked deliveries (by
delivery tag, in delivery order), the tasks handed over to it, and the highest command number
it may be sent a CONFIRM for. The server moves `out` to the socket after each loop turn.
"""

from .. import protocol as P

__all__ = ["Session", "Consumer", "HELLO_STAGE", "AUTH_STAGE", "HELD_STAGE", "OPEN", "CLOSED"]

# HELD_STAGE: its AUTH is in, and the answer waits on a timer (see handshake.AuthThrottle).
HELLO_STAGE, AUTH_STAGE, HELD_STAGE, OPEN, CLOSED = "hello", "auth", "held", "open", "closed"


class Consumer:
    __slots__ = ("tag", "queue", "session", "no_ack")

    def __init__(self, tag, queue, session, no_ack=False):
        self.tag = tag
        self.queue = queue
        self.session = session
        self.no_ack = no_ack


class Session:
    """What one connection owns in the broker."""

    # No more deliveries while this much output waits for a client to read it (the rest
    # stays in the queue, where any other consumer may take it).
    MAX_UNSENT = 1024 * 1024

    def __init__(self, id, peer="", now=0.0, outgoing=None):
        self.id = id
        # The broker's set of sessions with frames to send this turn (the server empties it).
        self.outgoing = outgoing if outgoing is not None else set()
        self.peer = peer
        self.stage = HELLO_STAGE
        self.out = []                   # encoded frames waiting for the socket
        self.prefetch = 0               # 0 = unlimited
        self.unacked = {}               # delivery tag -> StoredMessage, in tag order
        self.next_tag = 1
        self.consumers = {}             # consumer tag -> Consumer
        self.next_consumer_tag = 1
        self.confirm_seq = 0            # highest command number to confirm this turn
        self.started = set()            # task ids handed over to this connection
        self.exclusive_queues = []
        self.heartbeat = 0.0            # seconds; 0 = none
        self.connected_at = now
        self.last_seen = now
        self.info = {}                  # HELLO's "worker" object, for status
        self.client = ""
        self.nonce = None               # our nonce during the handshake
        self.client_nonce = None
        self.peer_key = peer            # whose failed AUTHs slow this one down (the server
                                        # sets it: an IP address, or a uid on the local socket)
        self.want_close = False         # close once `out` is flushed
        self.refusal = ""               # why the broker turned this client away, for the log
        self.unsent = 0                 # bytes waiting for the client to read (set by server)
        self.published = 0
        self.delivered = 0

    def __repr__(self):
        return "<Session %d %s %s>" % (self.id, self.peer, self.stage)

    @property
    def is_open(self):
        return self.stage == OPEN

    def has_credit(self):
        return not self.prefetch or len(self.unacked) < self.prefetch

    def send(self, frame):
        self.out.append(frame)
        self.outgoing.add(self)

    def reply(self, seq, obj):
        """OK with `obj`, when the command asked for an answer (seq != 0)."""
        if seq:
            self.send(P.encode_json(P.OK, seq, obj))

    def error(self, seq, code, text, close=False):
        """ERROR `code` for the command `seq`; with `close`, the connection goes after it."""
        self.send(P.encode_error(seq, code, text))
        if close:
            self.close_after_flush()

    def close_after_flush(self):
        self.want_close = True
        self.outgoing.add(self)
