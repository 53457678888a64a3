"""The handshake (protocol section 6): HELLO, and when a secret is set CHALLENGE and AUTH.

Both sides prove they know the secret without sending it: each proof is an HMAC over both
fresh nonces and the prover's role, so a recorded handshake is useless on another connection,
and a client cannot reflect the broker's own proof back at it. Wrong secret and unknown
client get the same one-line refusal.

Guessing is slowed down per peer (`AuthThrottle`): once a peer has failed a few times, the
answers to its later AUTHs, right or wrong, wait on a timer of the state (`tick`), never in
a sleep, so the loop and every other peer carry on at full speed. Right answers wait too:
otherwise a quick WELCOME would tell the guesser which answers were wrong without waiting.
"""

import collections
import heapq
import hmac
import itertools
import os

from .. import protocol as P
from ..exceptions import ProtocolError
from .session import AUTH_STAGE, CLOSED, HELD_STAGE, HELLO_STAGE, OPEN

__all__ = ["Handshake", "AuthThrottle"]


class AuthThrottle:
    """How long to hold the answer to a peer's AUTH, and the answers being held.

    A peer's first `free_failures` failures cost nothing (a mistyped secret, a worker started
    with the old one); after that each answer waits `first_delay`, doubled with each further
    failure, up to `max_delay`. A peer's failures are forgotten `forget_after` seconds after
    its last one. Failures count when the AUTH arrives, not when it is answered, so many
    guesses in parallel reach the cap as fast as many in a row; the number a peer has in
    flight is itself capped by its share of the handshake slots (see `admission`).
    """

    def __init__(self, free_failures=5, first_delay=0.1, max_delay=2.0, forget_after=60.0,
                 max_peers=10000):
        self.free_failures = free_failures
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_peers = max_peers              # records kept; the stalest go first
        self._failures = collections.OrderedDict()  # peer -> [count, last], stalest first
        self._held = []                         # heap of (due, n, session, seq, proof)
        self._order = itertools.count()

    def delay(self, peer, now):
        """Seconds to hold the answer to an AUTH from `peer` arriving now."""
        entry = self._failures.get(peer)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last > self.forget_after:
            del self._failures[peer]
            return 0.0
        extra = count - self.free_failures
        if extra < 0:
            return 0.0
        return min(self.max_delay, self.first_delay * 2 ** min(extra, 32))

    def failed(self, peer, now):
        entry = self._failures.pop(peer, None)
        if entry is None or now - entry[1] > self.forget_after:
            entry = [0, now]
        entry[0] += 1
        entry[1] = now
        self._failures[peer] = entry            # now the most recent
        while len(self._failures) > self.max_peers:
            self._failures.popitem(last=False)

    def hold(self, due, session, seq, proof):
        """Answer `session`'s AUTH numbered `seq` at `due`: WELCOME with `proof`, or
        refused when `proof` is None."""
        heapq.heappush(self._held, (due, next(self._order), session, seq, proof))

    def due(self, now):
        """``[(session, seq, proof)]`` whose time has come."""
        held, answers = self._held, []
        while held and held[0][0] <= now:
            _due, _n, session, seq, proof = heapq.heappop(held)
            answers.append((session, seq, proof))
        return answers

    def next_due(self):
        return self._held[0][0] if self._held else None


class Handshake:
    """The part of `BrokerState` that answers frames before a session is open."""

    def __init__(self, clock, options, throttle=None):
        self.clock = clock
        self.secret = options.secret
        self.version = options.version
        self.max_frame_bytes = options.max_frame_bytes
        self.throttle = throttle or AuthThrottle()

    def handle(self, session, kind, seq, body):
        if session.stage == HELLO_STAGE and kind == P.HELLO:
            self._hello(session, seq, body)
        elif session.stage == AUTH_STAGE and kind == P.AUTH:
            self._auth(session, seq, body)
        else:
            session.error(seq, P.COMMAND_INVALID, "%s before the handshake finished"
                          % P.command_name(kind), close=True)

    def _hello(self, session, seq, body):
        try:
            hello = P.decode_json(body, "HELLO")
        except ProtocolError as exc:
            session.error(seq, P.BAD_FRAME, str(exc), close=True)
            return
        if hello.get("protocol") != P.PROTOCOL_VERSION:
            session.error(seq, P.COMMAND_INVALID, "protocol version %r is not supported; this "
                          "broker speaks %d" % (hello.get("protocol"), P.PROTOCOL_VERSION),
                          close=True)
            return
        session.client = str(hello.get("client", ""))[:200]
        info = hello.get("worker")
        session.info = info if isinstance(info, dict) else {}
        heartbeat = hello.get("heartbeat", 0)
        session.heartbeat = float(heartbeat) if isinstance(heartbeat, (int, float)) \
            and 0 <= heartbeat <= 3600 else 0.0
        session.client_nonce = str(hello.get("nonce", ""))[:128]
        if self.secret:
            session.stage = AUTH_STAGE
            session.nonce = os.urandom(32).hex()
            session.send(P.encode_json(P.CHALLENGE, seq, {"nonce": session.nonce}))
        else:
            self._welcome(session, seq, None)

    def _auth(self, session, seq, body):
        try:
            proof = str(P.decode_json(body, "AUTH").get("proof", ""))
        except ProtocolError:
            proof = ""
        expected = P.auth_proof(self.secret, "client", session.client_nonce, session.nonce)
        right = hmac.compare_digest(proof.encode("utf-8", "replace"), expected.encode("utf-8"))
        answer = P.auth_proof(self.secret, "broker", session.nonce, session.client_nonce) \
            if right else None
        now = self.clock()
        delay = self.throttle.delay(session.peer_key, now)
        if not right:
            self.throttle.failed(session.peer_key, now)
        if delay:
            session.stage = HELD_STAGE              # anything more from it now is a 405
            self.throttle.hold(now + delay, session, seq, answer)
        else:
            self._answer_auth(session, seq, answer)

    def _answer_auth(self, session, seq, proof):
        if session.stage == CLOSED or session.want_close:    # it went while its answer waited
            return
        if proof is None:
            session.error(seq, P.AUTH_FAILED, "authentication failed", close=True)
            session.refusal = "authentication failed"
            return
        self._welcome(session, seq, proof)

    def tick(self, now):
        """Send the answers `AuthThrottle` held whose time has come."""
        for session, seq, proof in self.throttle.due(now):
            self._answer_auth(session, seq, proof)

    def next_deadline(self):
        return self.throttle.next_due()

    def _welcome(self, session, seq, proof):
        session.stage = OPEN
        welcome = {"protocol": P.PROTOCOL_VERSION, "broker": self.version,
                   "max_frame_bytes": self.max_frame_bytes, "heartbeat": session.heartbeat,
                   "session": session.id, "features": list(P.FEATURES)}
        if proof:
            welcome["proof"] = proof
        session.send(P.encode_json(P.WELCOME, seq, welcome))
