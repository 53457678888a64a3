"""The handshake (protocol section 6): HELLO, and when a secret is set CHALLENGE and AUTH.

Both sides prove they know the secret without sending it: each proof is an HMAC over both
fresh nonces and the prover's role, so a recorded handshake is useless on another connection,
and a client cannot reflect the broker's own proof back at it. Wrong secret and unknown
client get the same one-line refusal.
"""

import hashlib
import hmac
import os

from .. import protocol as P
from ..exceptions import ProtocolError
from .session import AUTH_STAGE, HELLO_STAGE, OPEN

__all__ = ["Handshake", "auth_proof"]


class Handshake:
    """BrokerState's handling of frames that arrive before a session is open."""

    def _handshake(self, session, kind, seq, body):
        if session.stage == HELLO_STAGE and kind == P.HELLO:
            try:
                hello = P.decode_json(body, "HELLO")
            except ProtocolError as exc:
                self._error(session, seq, P.BAD_FRAME, str(exc), close=True)
                return
            if hello.get("protocol") != P.PROTOCOL_VERSION:
                self._error(session, seq, P.COMMAND_INVALID,
                            "protocol version %r is not supported; this broker speaks %d"
                            % (hello.get("protocol"), P.PROTOCOL_VERSION), close=True)
                return
            session.client = str(hello.get("client", ""))[:200]
            info = hello.get("worker")
            session.info = info if isinstance(info, dict) else {}
            heartbeat = hello.get("heartbeat", 0)
            session.heartbeat = float(heartbeat) if isinstance(heartbeat, (int, float)) \
                and 0 <= heartbeat <= 3600 else 0.0
            session.client_nonce = str(hello.get("nonce", ""))[:128]
            if self.options.secret:
                session.stage = AUTH_STAGE
                session.nonce = os.urandom(32).hex()
                session.send(P.encode_json(P.CHALLENGE, seq, {"nonce": session.nonce}))
            else:
                self._welcome(session, seq, None)
        elif session.stage == AUTH_STAGE and kind == P.AUTH:
            try:
                proof = str(P.decode_json(body, "AUTH").get("proof", ""))
            except ProtocolError:
                proof = ""
            expected = auth_proof(self.options.secret, "client", session.client_nonce,
                                  session.nonce)
            if not hmac.compare_digest(proof.encode("utf-8", "replace"),
                                       expected.encode("utf-8")):
                self._error(session, seq, P.AUTH_FAILED, "authentication failed", close=True)
                session.refusal = "authentication failed"
                return
            self._welcome(session, seq, auth_proof(self.options.secret, "broker", session.nonce,
                                                   session.client_nonce))
        else:
            self._error(session, seq, P.COMMAND_INVALID,
                        "%s before the handshake finished" % P.command_name(kind), close=True)

    def _welcome(self, session, seq, proof):
        session.stage = OPEN
        welcome = {"protocol": P.PROTOCOL_VERSION, "broker": self.options.version,
                   "max_frame_bytes": self.options.max_frame_bytes,
                   "heartbeat": session.heartbeat, "session": session.id,
                   "features": list(P.FEATURES)}
        if proof:
            welcome["proof"] = proof
        session.send(P.encode_json(P.WELCOME, seq, welcome))


def auth_proof(secret, role, first_nonce, second_nonce):
    """HMAC-SHA256 proof of knowing the secret, bound to both nonces and the prover's role."""
    text = ("%s:%s:%s" % (role, first_nonce, second_nonce)).encode("utf-8")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()

