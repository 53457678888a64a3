"""The broker's socket loop: bytes in, frames to the state, journal writes, bytes out.

Everything about *what* happens lives in `BrokerState`; this module only moves bytes and
decides *when*. One loop turn::

    select(timeout = next timer)                 ─ timers: delays, expiry, fsync, heartbeats
      ├─ accept new connections
      ├─ recv() once per readable socket ─> Decoder ─> state.handle() per frame
    Loop.turn(): tick, write, confirm (or refuse), compact, dispatch   ─ see loop.py
    send() every session's frames in one call each; keep the rest for EVENT_WRITE

Each connection's failures stay its own: a frame over the limit, a stalled handshake or
partial frame, a reader too slow to keep its output under the cap — each costs only that
connection a one-line ERROR and a close. `BrokerState.close_session` then requeues whatever it
had not acked. What many connections cost together is capped too (`admission`): connections
still in their handshake get a share of the slots, and unfinished frames a share of memory.
"""

import errno
import logging
import selectors
import signal
import socket
import ssl
import struct
import time

from .. import protocol as P
from ..exceptions import ProtocolError
from ..log import Throttle, folded
from .admission import REFUSE, Admission, PartialFrames
from .loop import Loop
from .session import CLOSED, OPEN

__all__ = ["BrokerServer", "Limits"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
# Refused sockets closed gently at once, at most; past this they are simply closed.
_MAX_LINGERING = 256
# Past this much unsent output for one client, the broker stops reading from it.
_PAUSE_READING_BYTES = 1024 * 1024


class Limits:
    """How much any one client, and all of them together, may cost the broker."""

    def __init__(self, max_connections=1024, handshake_timeout=10.0, stall_timeout=30.0,
                 max_output_bytes=64 * 1024 * 1024, max_frame_bytes=P.MAX_FRAME_BYTES,
                 max_unconfirmed=10000, max_unauthenticated=None,
                 max_unauthenticated_per_peer=None, max_partial_bytes=256 * 1024 * 1024):
        self.max_connections = max_connections
        # Slots for connections still in their handshake: a quarter of them, and a quarter
        # of that for one peer (see `admission`), so that clients always find one.
        self.max_unauthenticated = max_unauthenticated or max(1, max_connections // 4)
        self.max_unauthenticated_per_peer = (max_unauthenticated_per_peer
                                             or max(1, self.max_unauthenticated // 4))
        # Bytes of frames begun and not finished, summed over every connection.
        self.max_partial_bytes = max_partial_bytes
        # A handshake (TLS included) not finished this long after connecting is cut off.
        self.handshake_timeout = handshake_timeout
        # Frames (so publishes awaiting their confirm) taken from one client per loop turn.
        self.max_unconfirmed = max_unconfirmed
        # A frame begun and not finished for this long is a stalled (or slowloris) client.
        self.stall_timeout = stall_timeout
        # A consumer that stops reading is cut off once this much waits for it.
        self.max_output_bytes = max_output_bytes
        self.max_frame_bytes = max_frame_bytes


class _Connection:
    __slots__ = ("sock", "session", "decoder", "wbuf", "events", "partial_since", "peer",
                 "peer_key", "handshaking", "partial_bytes", "tls", "tls_pending",
                 "heartbeat_sent",
                 "sent_at")

    def __init__(self, sock, session, peer, max_handshake_bytes, peer_key=None):
        self.sock = sock
        self.session = session
        self.decoder = P.Decoder(max_handshake_bytes)
        self.wbuf = bytearray()
        self.events = selectors.EVENT_READ
        self.partial_since = None
        self.peer = peer
        self.peer_key = peer if peer_key is None else peer_key     # whose share it uses
        self.handshaking = True         # not WELCOMEd yet: counted by Admission
        self.partial_bytes = 0          # of unfinished frames, as counted by PartialFrames
        self.tls = self.tls_pending = isinstance(sock, ssl.SSLSocket)
        self.heartbeat_sent = 0.0
        self.sent_at = time.monotonic()     # the last time the client took some output


class BrokerServer:
    """Listens, and runs the loop until `stop()` or SIGTERM/SIGINT."""

    def __init__(self, state, host="127.0.0.1", port=P.DEFAULT_PORT, ssl_context=None,
                 limits=None, clock=time.time, monotonic=time.monotonic):
        self.state = state
        self.journal = state.journal
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.limits = limits or Limits(max_frame_bytes=state.options.max_frame_bytes)
        self.monotonic = monotonic
        self.selector = selectors.DefaultSelector()
        self.connections = {}
        self._listener = None
        self._local_listener = None
        self._next_id = 1
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._calls = []            # functions other threads want run in the loop
        self._backlog = set()       # connections with frames left over from their turn
        self._lingering = {}        # refused sockets being closed gently -> deadline
        self._scratch = bytearray(_RECV_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._last_housekeeping = 0.0
        self._refusals = Throttle(clock=monotonic)     # a log line per kind of refusal
        self.loop = Loop(state, clock, monotonic)
        self.journal.notify = self.wake     # an fsync finished: held confirms may go
        limits = self.limits
        self.admission = Admission(limits.max_connections, limits.max_unauthenticated,
                                   limits.max_unauthenticated_per_peer)
        self.partial = PartialFrames(limits.max_partial_bytes)
        self.address = None

    # -- lifecycle -----------------------------------------------------------------------------

    def bind(self):
        """Open the listening socket; returns the (host, port) bound (port 0 picks one)."""
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _name, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        # Room for a burst of connects (the kernel caps it at net.core.somaxconn): when the
        # accept queue is full, a connect's SYN is dropped and the client waits a second.
        listener.listen(4096)
        listener.setblocking(False)
        self._listener = listener
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.address = listener.getsockname()[:2]
        if self.ssl_context is None:
            self._bind_local(self.address[1])
        return self.address

    def _bind_local(self, port):
        """Also listen on a Linux abstract UNIX socket named after the port, where clients on
        this machine connect first (`protocol.local_socket_name`): a round trip through it
        costs a fraction of one through loopback TCP. Same access as loopback TCP (same
        network namespace, the same handshake); it vanishes with the process, so it never
        goes stale. Not with TLS: TLS clients want the certificate checked."""
        name = P.local_socket_name(port)
        if name is None:
            return
        local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            local.bind(name)
            local.listen(512)
        except OSError as exc:
            # Another process holds the name: maybe another user's, waiting for clients.
            # Clients check who listens there before they send a byte, so TCP alone is safe;
            # a squatter must not be able to keep the broker from starting.
            logger.warning("cannot listen on the local socket for port %d (%s): serving TCP "
                           "only; clients on this machine will not use the socket that holds "
                           "the name unless it belongs to their user, root or BROKER_UID",
                           port, exc.strerror or exc)
            local.close()
            return
        local.setblocking(False)
        self._local_listener = local
        self.selector.register(local, selectors.EVENT_READ, "listen")

    def install_signal_handlers(self):
        """SIGTERM and SIGINT stop the loop cleanly (main thread only)."""
        def _stop(signum, frame):
            self._stopping = True
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        if hasattr(signal, "SIGXFSZ"):       # file size limit: let write() fail, not the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w.fileno())

    def stop(self):
        """Ask the loop to stop (safe from any thread)."""
        self._stopping = True
        self.wake()

    def wake(self):
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                    # already has a wake-up byte queued, or closing

    def call_in_loop(self, function):
        """Run `function()` in the loop thread at the next turn (status page, tests)."""
        self._calls.append(function)
        self.wake()

    def serve_forever(self):
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self._shutdown()

    def _shutdown(self):
        self.loop.close()
        self._flush_all()
        for conn in list(self.connections.values()):
            self._close(conn, "broker shutting down", requeue_log=False)
        for sock in list(self._lingering):
            self._end_linger(sock)
        self.journal.close()
        for listener in (self._listener, self._local_listener):
            if listener is not None:
                self.selector.unregister(listener)
                listener.close()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        logger.info("broker stopped")

    # -- one turn ------------------------------------------------------------------------------

    def run_once(self):
        for key, mask in self.selector.select(self._timeout()):
            data = key.data
            if data == "listen":
                self._accept(key.fileobj)
            elif data == "wake":
                self._drain_wake()
            elif data == "linger":
                self._linger(key.fileobj)
            else:
                if mask & selectors.EVENT_READ:
                    self._read(data)
                if mask & selectors.EVENT_WRITE and data.session.id in self.connections:
                    self._flush(data)
        if self._backlog:
            backlog, self._backlog = self._backlog, set()
            for conn in backlog:
                if conn.session.id in self.connections:
                    self._process(conn)
        if self.partial.over:
            self._shed_partial_frames()
        self.loop.turn()
        while self._calls:                  # after the turn's writes: they see settled state
            function = self._calls.pop(0)
            try:
                function()
            except Exception:           # another thread's request must not stop the broker
                logger.exception("a call run in the broker loop for another thread failed")
        self._flush_all()
        mono = self.monotonic()
        if mono - self._last_housekeeping >= 0.5:
            self._last_housekeeping = mono
            self._housekeeping(mono)

    def _timeout(self):
        """Seconds select() may wait: until the next thing due, at most half a second (for
        housekeeping: heartbeats, stalls)."""
        timeout = self.loop.timeout(0.5)
        return 0 if self._calls or self._backlog or self.loop.busy() else timeout

    # -- connections ---------------------------------------------------------------------------

    def _accept(self, listener):
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:      # EMFILE and friends: log, keep serving the others
                self._log_refusal("accept failed", str(exc), "")
                return
            if listener is self._listener:
                peer_text, peer_key = _peer_text(peer), _peer_key(peer)
            else:
                peer_text, peer_key = _local_peer(sock)
            victim = self.admission.admit(peer_key, len(self.connections))
            if victim is REFUSE:
                self._refuse_socket(sock, P.UNAVAILABLE, "too many connections (limit %d)"
                                    % self.limits.max_connections, peer_text)
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass                    # not TCP (tests over socketpairs)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                        do_handshake_on_connect=False)
                except (OSError, ssl.SSLError) as exc:
                    self._log_refusal("TLS setup failed", str(exc), peer_text)
                    sock.close()
                    continue
            if victim is not None:
                self._evict(victim)
            # Read at once: a client sends its HELLO right after connecting, and one whose
            # HELLO is in is no longer the first to make room for newcomers (`admission`).
            self._read(self.adopt(sock, peer_text, peer_key))

    def adopt(self, sock, peer_text="", peer_key=None):
        """Serve an already-connected socket (accept() and tests use it)."""
        session_id = self._next_id
        self._next_id += 1
        session = self.state.open_session(session_id, peer_text)
        conn = _Connection(sock, session, peer_text, P.MAX_HANDSHAKE_BYTES, peer_key)
        session.peer_key = conn.peer_key
        conn.partial_since = self.monotonic()        # the handshake must finish in time
        self.connections[session_id] = conn
        self.admission.add(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        logger.debug("client %s connected (session %d)", peer_text, session_id)
        return conn

    def _refuse_socket(self, sock, code, text, peer):
        """Say why in one ERROR frame, then close gently: closing at once while the client's
        HELLO sits unread makes the kernel send a reset, which can destroy the ERROR before
        the client reads it. So: FIN after the frame, drain its input, close on its EOF (or
        after a second)."""
        self._log_refusal("refused", text, peer)
        self._say_and_linger(sock, P.encode_error(0, code, text))

    def _say_and_linger(self, sock, frame):
        try:
            sock.setblocking(False)
            sock.send(frame)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()                # it is gone already
            return
        if len(self._lingering) >= _MAX_LINGERING:
            sock.close()
            return
        self._lingering[sock] = self.monotonic() + 1.0
        self.selector.register(sock, selectors.EVENT_READ, "linger")

    def _linger(self, sock):
        try:
            done = not sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            done = False
        except OSError:
            done = True
        if done:
            self._end_linger(sock)

    def _end_linger(self, sock):
        self._lingering.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass                        # not registered
        sock.close()

    def _read(self, conn):
        if conn in self._backlog:           # still has frames from the last read to handle
            return
        if conn.session.stage == CLOSED:    # cut off earlier in this turn
            return
        if conn.tls_pending and not self._tls_handshake(conn):
            return
        try:
            # Into one reused buffer: a fresh 256 KiB bytes object per recv() costs an
            # mmap/munmap pair, more than the rest of a publish.
            count = conn.sock.recv_into(self._scratch)
            data = self._scratch_view[:count]
            if conn.tls and count:
                data = bytes(data)
                while conn.sock.pending():      # decrypted bytes select() cannot see
                    data += conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError) as exc:
            self._close(conn, "read failed: %s" % _os_reason(exc))
            return
        if not data:
            self._close(conn, "closed the connection")
            return
        conn.session.last_seen = self.monotonic()
        conn.decoder.feed(data)
        self._process(conn, data)

    def _process(self, conn, data=b""):
        """Hand the connection's whole frames to the state, at most `max_unconfirmed` per
        turn: the rest wait in its decoder (and it is not read from) until the next turn,
        so no client can make one turn's journal batch, or its unconfirmed publishes, huge."""
        session, decoder = conn.session, conn.decoder
        handle = self.state.handle
        budget = self.limits.max_unconfirmed
        frames = 0
        try:
            while frames < budget:
                frame = decoder.next_frame()
                if frame is None:
                    break
                frames += 1
                handle(session, *frame)
                if session.want_close:
                    break
                if conn.handshaking and session.stage == OPEN:
                    conn.handshaking = False
                    decoder.max_frame_bytes = self.limits.max_frame_bytes
                    self.admission.remove(conn)
            else:
                self._backlog.add(conn)
        except ProtocolError as exc:
            session.send(P.encode_error(0, P.code_for(exc), str(exc)))
            session.close_after_flush()
            self._log_refusal("bad frame", str(exc), conn.peer)
            if not session.is_open and _looks_like_http(data):
                session.out[-1:] = [_HTTP_REPLY]
        except Exception:
            # A bug met while handling this client's command. Only this connection goes:
            # its unacked messages are requeued by close_session, every other client and
            # everything already confirmed carry on, as they would after a dropped client.
            logger.exception("internal error handling a command from %s; closing that "
                             "connection", conn.peer)
            session.send(P.encode_error(0, P.INTERNAL, "internal error; connection closed"))
            session.close_after_flush()
        if session.is_open:
            # The stall clock runs from the start of the frame still incomplete, if any.
            if frames:
                conn.partial_since = session.last_seen if decoder.pending_bytes else None
            elif decoder.pending_bytes and conn.partial_since is None:
                conn.partial_since = session.last_seen
        if decoder.pending_bytes != conn.partial_bytes:
            conn.partial_bytes = decoder.pending_bytes
            self.partial.hold(conn, conn.partial_bytes)

    def _tls_handshake(self, conn):
        try:
            conn.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (OSError, ssl.SSLError) as exc:
            self._log_refusal("TLS handshake failed", _os_reason(exc), conn.peer)
            self._close(conn, "TLS handshake failed", requeue_log=False)
            return False
        conn.tls_pending = False
        return True

    def _flush_all(self):
        """Move every session's new frames to its socket (one send() each, if it takes them)."""
        state = self.state
        if not state.outgoing:
            return
        outgoing = list(state.outgoing)     # every Session holds this very set: clear it
        state.outgoing.clear()
        for session in outgoing:
            conn = self.connections.get(session.id)
            if conn is None:
                session.out.clear()
                continue
            if session.out:
                if not conn.wbuf:               # the write-stall clock starts now
                    conn.sent_at = self.monotonic()
                conn.wbuf += b"".join(session.out)
                session.out.clear()
                if len(conn.wbuf) > self.limits.max_output_bytes:
                    self._log_refusal("does not read", "output over %d bytes"
                                      % self.limits.max_output_bytes, conn.peer)
                    self._close(conn, "stopped reading (output over the cap)")
                    continue
            if conn.wbuf and not conn.events & selectors.EVENT_WRITE:
                self._flush(conn)
            else:
                self._watch(conn)

    def _flush(self, conn):
        try:
            while conn.wbuf:
                sent = conn.sock.send(conn.wbuf)
                del conn.wbuf[:sent]
                conn.sent_at = self.monotonic()
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except (OSError, ssl.SSLError) as exc:
            self._close(conn, "write failed: %s" % _os_reason(exc))
            return
        self._watch(conn)

    def _watch(self, conn):
        """Select on what the connection needs now; close it if it is done.

        Backpressure: a client that does not read what we send (confirms, deliveries) is not
        read from either until it catches up, and gets no more deliveries, so it cannot make
        the broker buffer without bound.
        """
        session = conn.session
        unsent = len(conn.wbuf)
        if session.unsent != unsent:
            was_held = session.unsent >= session.MAX_UNSENT
            session.unsent = unsent
            if was_held and unsent < session.MAX_UNSENT:
                self.state.output_drained(session)
        events = (selectors.EVENT_READ if unsent < _PAUSE_READING_BYTES else 0) \
            | (selectors.EVENT_WRITE if unsent else 0)
        if events != conn.events:
            conn.events = events
            self.selector.modify(conn.sock, events, conn)
        if not unsent and session.want_close:
            self._close(conn, "closed by the broker")

    def _close(self, conn, reason, requeue_log=True, last_words=None):
        """Forget `conn` and close its socket; with `last_words` (an ERROR frame), say them
        and close gently instead (see `_refuse_socket`), dropping whatever else it was owed."""
        if self.connections.pop(conn.session.id, None) is None:
            return
        if conn.session.refusal:
            self._log_refusal(conn.session.refusal, "", conn.peer)
        self.admission.remove(conn)
        if conn.partial_bytes:
            conn.partial_bytes = 0
            self.partial.hold(conn, 0)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass                        # never registered (refused early)
        if last_words is not None and not conn.tls_pending:
            conn.decoder = P.Decoder(0)                 # its unfinished frame goes now
            self._say_and_linger(conn.sock, last_words)
        else:
            try:
                conn.sock.close()
            except OSError:
                pass                    # closing anyway
        self.state.close_session(conn.session, reason if requeue_log else "")
        logger.debug("client %s: %s", conn.peer, reason)

    def _evict(self, conn):
        """Make room for a newcomer of the same peer (or of a peer holding fewer): `conn`
        has been in its handshake the longest (see `admission`)."""
        limits = self.limits
        text = ("too many connections in their handshake (%d from one address or user, %d "
                "in all): the oldest is dropped" % (limits.max_unauthenticated_per_peer,
                                                   limits.max_unauthenticated))
        self._log_refusal("evicted", text, conn.peer)
        self._close(conn, "evicted before finishing its handshake", requeue_log=False,
                    last_words=P.encode_error(0, P.UNAVAILABLE, text))

    def _shed_partial_frames(self):
        """Unfinished frames hold more than the cap allows: cut off the largest holders."""
        partial, cap = self.partial, self.limits.max_partial_bytes
        total = partial.total
        victims = partial.largest()
        self._log_refusal("too much held in unfinished frames",
                          "%d bytes, over the %d-byte cap (--max-partial-bytes); cut off the "
                          "%d largest holder(s)" % (total, cap, len(victims)),
                          victims[0].peer, level=logging.ERROR)
        for conn in victims:
            text = ("the broker held too much in unfinished frames (%d bytes, %d allowed); "
                    "this connection held %d of them, among the most, and is cut off"
                    % (total, cap, conn.partial_bytes))
            self._close(conn, "cut off: unfinished frames over the broker's cap",
                        last_words=P.encode_error(0, P.UNAVAILABLE, text))

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- timers --------------------------------------------------------------------------------

    def _housekeeping(self, mono):
        limits = self.limits
        for sock, deadline in list(self._lingering.items()):
            if mono >= deadline:
                self._end_linger(sock)
        for conn in list(self.connections.values()):
            session = conn.session
            if conn.wbuf and mono - conn.sent_at > limits.stall_timeout:
                self._log_refusal("does not read", "nothing taken for over %gs"
                                  % limits.stall_timeout, conn.peer)
                self._close(conn, "stopped reading for over %gs" % limits.stall_timeout)
                continue
            if conn.partial_since is not None and conn.events & selectors.EVENT_READ:
                limit = limits.stall_timeout if session.is_open else limits.handshake_timeout
                if mono - conn.partial_since > limit:
                    what = "a partial frame" if session.is_open else "the handshake"
                    self._log_refusal("stalled", "in %s for over %gs" % (what, limit),
                                      conn.peer)
                    conn.partial_since = None           # once: it is being closed
                    if conn.tls_pending:        # no TLS yet to say why in: just close
                        self._close(conn, "stalled in the TLS handshake", requeue_log=False)
                        continue
                    session.send(P.encode_error(0, P.BAD_FRAME, "timed out waiting for %s"
                                                % what))
                    session.close_after_flush()
                    continue
            if session.heartbeat:
                if mono - session.last_seen > 2 * session.heartbeat + 1:
                    self._close(conn, "missed heartbeats")
                    continue
                if mono - conn.heartbeat_sent >= session.heartbeat / 2:
                    conn.heartbeat_sent = mono
                    session.send(P.HEADER.pack(0, P.HEARTBEAT, 0))
        self._flush_all()

    def _log_refusal(self, reason, detail, peer, level=logging.WARNING):
        """One log line per kind of refusal per 10 s, however many clients earn it."""
        counts = self._refusals.allow(reason)
        if counts is not None:
            logger.log(level, "refused client %s: %s%s%s", peer or "?", reason,
                       ": " + detail if detail else "", folded(counts))


_HTTP_REPLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
               b"This is a minitask broker port, not HTTP. Use the status page (--http).\r\n")


def _looks_like_http(data):
    return data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE")


def _local_peer(sock):
    """``("local pid N uid U", "uid U")`` for a client of the local socket (the kernel vouches
    for both): its text for the log, and the peer whose share of the slots it uses."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return "local", "local"
    return "local pid %d uid %d" % (pid, uid), "uid %d" % uid


def _peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        return "%s:%s" % (peer[0], peer[1])
    return str(peer)


def _peer_key(peer):
    """A TCP client's peer for the handshake shares: its address, whatever its port."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _os_reason(exc):
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    return str(exc)
