"""The client's side of the minitask protocol, without I/O: bytes in, bytes out.

`Conversation` knows everything a client must keep between frames: the handshake and its
proof, command numbers and their wrap-around, which commands are still waiting for a confirm,
replies filed by number, deliveries in arrival order, errors of commands that asked for no
reply. It never touches a socket. Its owner (the blocking client, or the worker's non-blocking
consumer) moves the bytes::

    conversation.hello()                      queue HELLO
    sock.sendall(conversation.take_outgoing())
    conversation.receive(sock.recv(...))      file away frames; may queue AUTH
    conversation.is_open                      after WELCOME (and the broker's proof)

    seq = conversation.publish(data)          queue PUBLISH numbered seq
    ... receive() until conversation.confirmed(seq) -> True, or it raises the command's error

The wire format and the rules it follows are in `minitask.protocol`'s docstring (sections 2,
5 and 6); this class is that text as a state machine, so it can be tested byte by byte.
"""

import collections
import hmac
import os

from .. import protocol as P
from ..exceptions import AuthenticationError, ProtocolError, PublishRefusedError
from .base import Delivery

__all__ = ["Conversation", "HELLO_SENT", "AUTH_SENT", "OPEN"]

NEW, HELLO_SENT, AUTH_SENT, OPEN = "new", "hello sent", "auth sent", "open"

_SEQ_MODULUS = 0x100000000
_HALF = 0x80000000
_CONFIRM_FRAME = P.HEADER.size          # a CONFIRM is a bare header


class Conversation:
    """One connection's protocol state, from HELLO to close. See the module docstring."""

    def __init__(self, secret=None, client="minitask", heartbeat=0.0, worker_info=None,
                 peer="the broker"):
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.client = client
        self.heartbeat = heartbeat
        self.worker_info = worker_info
        self.peer = peer                    # named in errors: the URL, usually
        self.state = NEW
        self.welcome = {}
        self.decoder = P.Decoder(P.MAX_HANDSHAKE_BYTES)
        self.max_body = P.MAX_FRAME_BYTES    # the broker's frame limit, once WELCOME says it
        self.outgoing = bytearray()
        self.deliveries = collections.deque()
        self.errors = collections.deque(maxlen=100)   # of commands sent with seq 0, in order
        self.closing_error = None           # the last of those: why the broker may close next
        self.turned_away = False            # the handshake was refused for want of room
        self._seq = 0
        self._unconfirmed = collections.deque()   # seqs waiting for a CONFIRM, in order
        self._failed = {}                   # seq -> the exception its ERROR frame carried
        self._replies = {}                  # seq -> (kind, body)
        self._waiting = set()               # seqs whose replies are wanted
        self._nonce = None
        self._broker_nonce = None
        self._hello_seq = self._auth_seq = None

    @property
    def is_open(self):
        return self.state == OPEN

    # -- bytes out ---------------------------------------------------------------------------

    def take_outgoing(self):
        """The bytes queued since the last call, for the owner to write."""
        data = bytes(self.outgoing)
        self.outgoing.clear()
        return data

    def next_seq(self):
        """The next command number: 1, 2, ... 2**32-1, then 1 again (0 means "no reply")."""
        self._seq = self._seq + 1 if self._seq < 0xFFFFFFFF else 1
        return self._seq

    def hello(self):
        """Queue HELLO: the first frame of every connection."""
        if self.state != NEW:
            raise ProtocolError("HELLO is sent once, at the start")
        self._nonce = os.urandom(32).hex()
        hello = {"protocol": P.PROTOCOL_VERSION, "client": self.client, "nonce": self._nonce,
                 "heartbeat": self.heartbeat}
        if self.worker_info:
            hello["worker"] = self.worker_info
        self._hello_seq = self.next_seq()
        self.outgoing += P.encode_json(P.HELLO, self._hello_seq, hello)
        self.state = HELLO_SENT

    def command(self, kind, args=None):
        """Queue a JSON command whose reply (OK, RESULT...) is wanted; returns its number."""
        seq = self.next_seq()
        frame = P.encode_json(kind, seq, args or {})
        self.check_size(kind, memoryview(frame)[P.HEADER.size:])   # refused: seq goes unused
        self._waiting.add(seq)
        self.outgoing += frame
        return seq

    def publish(self, data, confirm=True):
        """Queue a PUBLISH of an encoded message; returns its number (0 when not confirmed).
        PublishRefusedError, with nothing queued, for one over the broker's frame limit (the
        broker would drop the connection at its header)."""
        self.check_size(P.PUBLISH, data)
        if not confirm:
            self.outgoing += P.encode_frame(P.PUBLISH, 0, data)
            return 0
        seq = self.next_seq()
        self._unconfirmed.append(seq)
        self.outgoing += P.HEADER.pack(len(data), P.PUBLISH, seq)
        self.outgoing += data
        return seq

    def numbered(self):
        """A number for a frame its owner writes itself (a worker's ATOMIC result), to be
        answered by a CONFIRM or an ERROR like any confirmable command (`confirmed`)."""
        seq = self.next_seq()
        self._unconfirmed.append(seq)
        return seq

    def confirmable(self, kind, body):
        """Queue any command answered by a CONFIRM (RESULT_SET, KV_SET...); returns its number."""
        self.check_size(kind, body)
        seq = self.next_seq()
        self._unconfirmed.append(seq)
        self.outgoing += P.encode_frame(kind, seq, body)
        return seq

    def check_size(self, kind, body):
        """PublishRefusedError when a command's body is over the broker's frame limit (the
        broker would drop the connection at its header); nothing is queued by it."""
        if len(body) > self.max_body:
            raise PublishRefusedError("%s of %d bytes is over the %d-byte frame limit of %s: "
                                      "send less (where the data is kept, say)"
                                      % (P.command_name(kind), len(body), self.max_body,
                                         self.peer))

    def send_frames(self, data):
        """Queue already-encoded frames that want no answer (acks, rejects, results)."""
        self.outgoing += data

    # -- bytes in ----------------------------------------------------------------------------

    def receive(self, data):
        """File away every whole frame in `data` (and whatever was buffered before it).

        Raises ProtocolError for a malformed stream and AuthenticationError when the broker
        fails the handshake; after either the connection is to be dropped.
        """
        if len(data) == _CONFIRM_FRAME and not self.decoder.pending_bytes and self.state == OPEN:
            # The usual answer to a publish, alone in its read: no need for the decoder.
            length, kind, seq = P.HEADER.unpack_from(data)
            if kind == P.CONFIRM and not length:
                self._confirmed(seq)
                return
        self.decoder.feed(data)
        for kind, seq, body in self.decoder.frames():
            if self.state != OPEN:
                self._handshake(kind, seq, body)
            else:
                self._file(kind, seq, body)

    def _file(self, kind, seq, body):
        if kind == P.DELIVER:
            self.deliveries.append(Delivery(*P.decode_deliver(body)))
        elif kind == P.CONFIRM:
            self._confirmed(seq)
        elif kind == P.ERROR:
            self._error(seq, body)
        elif kind == P.HEARTBEAT:
            pass
        elif seq in self._waiting:
            self._replies[seq] = (kind, body)
            self._waiting.discard(seq)

    def _error(self, seq, body):
        exc = P.error_for(*P.decode_error(body))
        if seq and (seq in self._waiting or seq in self._unconfirmed):
            self._failed[seq] = exc
            self._waiting.discard(seq)
            try:
                self._unconfirmed.remove(seq)
            except ValueError:
                pass            # it was waiting for a reply, not for a confirm
        else:
            self.closing_error = exc
            self.errors.append(exc)

    def _confirmed(self, seq):
        """Every command numbered up to `seq` is confirmed. Numbers wrap, so "up to" is
        serial-number order (RFC 1982): within half the number space behind `seq`."""
        unconfirmed = self._unconfirmed
        while unconfirmed and (seq - unconfirmed[0]) % _SEQ_MODULUS < _HALF:
            unconfirmed.popleft()

    # -- the handshake (protocol section 6) --------------------------------------------------

    def _handshake(self, kind, seq, body):
        if kind == P.ERROR:             # the broker closes next
            code, text = P.decode_error(body)
            self.turned_away = code == P.UNAVAILABLE    # no room now: worth asking again
            self.closing_error = P.error_for(code, text)
            raise self.closing_error
        if kind == P.HEARTBEAT:
            return
        if self.state == HELLO_SENT and kind == P.CHALLENGE and seq == self._hello_seq:
            if not self.secret:
                raise AuthenticationError("%s requires a secret (BROKER_SECRET)" % self.peer)
            self._broker_nonce = str(P.decode_json(body, "CHALLENGE").get("nonce", ""))
            proof = P.auth_proof(self.secret, "client", self._nonce, self._broker_nonce)
            self._auth_seq = self.next_seq()
            self.outgoing += P.encode_json(P.AUTH, self._auth_seq, {"proof": proof})
            self.state = AUTH_SENT
        elif self.state == HELLO_SENT and kind == P.WELCOME and seq == self._hello_seq:
            if self.secret:
                # Anything can listen where we connect; only the broker knows the secret.
                raise AuthenticationError("%s did not ask for the secret, so it cannot prove it "
                                          "knows it; refusing it" % self.peer)
            self._open(P.decode_json(body, "WELCOME"))
        elif self.state == AUTH_SENT and kind == P.WELCOME and seq == self._auth_seq:
            welcome = P.decode_json(body, "WELCOME")
            expected = P.auth_proof(self.secret, "broker", self._broker_nonce, self._nonce)
            if not hmac.compare_digest(str(welcome.get("proof", "")).encode("utf-8", "replace"),
                                       expected.encode("ascii")):
                raise AuthenticationError("%s could not prove it knows the secret" % self.peer)
            self._open(welcome)
        else:
            raise ProtocolError("unexpected %s during the handshake with %s"
                                % (P.command_name(kind), self.peer))

    def _open(self, welcome):
        self.welcome = welcome
        self.state = OPEN
        announced = welcome.get("max_frame_bytes", 0)
        announced = announced if isinstance(announced, int) else 0
        self.decoder.max_frame_bytes = max(announced, P.MAX_FRAME_BYTES) + 64
        if announced > 0:
            self.max_body = announced

    # -- outcomes ----------------------------------------------------------------------------

    def confirmed(self, seq):
        """True once `seq` is confirmed; raises its ERROR if the broker refused it."""
        failed = self._failed.pop(seq, None) if self._failed else None
        if failed is not None:
            raise failed
        return not self._unconfirmed or seq not in self._unconfirmed

    def all_confirmed(self, seqs):
        """True once every seq is confirmed; raises the first refused one's ERROR (in order)."""
        if self._failed:
            first = next((seq for seq in seqs if seq in self._failed), None)
            if first is not None:
                error = self._failed[first]
                for seq in seqs:
                    self._failed.pop(seq, None)
                raise error
        unconfirmed = self._unconfirmed
        return not unconfirmed or not any(seq in unconfirmed for seq in seqs)

    def outcomes(self, seqs):
        """``{seq: None when confirmed, else its ERROR}`` for those of the numbered `seqs`
        answered by now (one pass, however many wait)."""
        waiting = set(self._unconfirmed)
        failed = self._failed
        return {seq: failed.pop(seq, None) for seq in seqs
                if seq in failed or seq not in waiting}

    def reply(self, seq):
        """``(kind, body)`` of `seq`'s reply once it came, else None; raises its ERROR."""
        failed = self._failed.pop(seq, None) if self._failed else None
        if failed is not None:
            raise failed
        return self._replies.pop(seq, None)

    def abandon(self, seq):
        """Forget a command whose answer is no longer wanted (its caller timed out)."""
        self._waiting.discard(seq)
        self._replies.pop(seq, None)
        self._failed.pop(seq, None)
