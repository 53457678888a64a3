"""The broker's socket loop: bytes in, frames to the state, journal writes, bytes out.

Everything about *what* happens lives in `BrokerState`; this module only moves bytes and
decides *when*. One loop turn::

    select(timeout = next timer)                 ─ timers: delays, expiry, fsync, heartbeats
      ├─ accept new connections
      ├─ recv() once per readable socket ─> Decoder ─> state.handle() per frame
    state.tick(now)
    journal.write(records of the turn)          ─ one write; + fsync under --fsync always
      └─ failed? state.refuse_turn()            ─ those publishes get ERROR 507, nothing lost
    state.confirm_turn()                         ─ CONFIRM frames, only now; held instead
                                                   while an everysec fsync is over 2 s late
    journal.compact_step()                       ─ bounded; only when there is work
    state.dispatch() ; journal.write(DELIVERED)
    send() every session's frames in one call each; keep the rest for EVENT_WRITE

Each connection's failures stay its own: a frame over the limit, a stalled handshake or
partial frame, a reader too slow to keep its output under the cap — each costs only that
connection a one-line ERROR and a close. `BrokerState.close_session` then requeues whatever it
had not acked.
"""

import collections
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
from .fsync import MAX_LAG
from .journal import JournalWriteError
from .session import OPEN

__all__ = ["BrokerServer", "Limits"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
# Refused sockets closed gently at once, at most; past this they are simply closed.
_MAX_LINGERING = 256
# Past this much unsent output for one client, the broker stops reading from it.
_PAUSE_READING_BYTES = 1024 * 1024


class Limits:
    """How much any one client may cost the broker."""

    def __init__(self, max_connections=1024, handshake_timeout=10.0, stall_timeout=30.0,
                 max_output_bytes=64 * 1024 * 1024, max_frame_bytes=P.MAX_FRAME_BYTES,
                 max_unconfirmed=10000):
        self.max_connections = max_connections
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
                 "tls", "tls_pending", "heartbeat_sent", "sent_at")

    def __init__(self, sock, session, peer, max_handshake_bytes):
        self.sock = sock
        self.session = session
        self.decoder = P.Decoder(max_handshake_bytes)
        self.wbuf = bytearray()
        self.events = selectors.EVENT_READ
        self.partial_since = None
        self.peer = peer
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
        self.clock = clock
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
        self._deadline = None       # when the state next has something due (see _timeout)
        self._scratch = bytearray(_RECV_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._last_housekeeping = 0.0
        self._compaction_checked = 0.0
        self._refusals = {}         # reason -> (last log time, suppressed count)
        # (journal generation, [(session, seq)]): confirms waiting for an fsync, oldest first
        self._held = collections.deque()
        self.journal.notify = self.wake     # an fsync finished: held confirms may go
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
        listener.listen(512)
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
        except OSError as exc:          # taken by another process: TCP alone still works
            logger.info("no local socket for port %d: %s", port, exc)
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
        records = self.state.take_records()
        if records:
            try:
                self.journal.write(records)
            except JournalWriteError as exc:
                logger.error("final journal write failed: %s", exc)
        self.journal.sync()
        while self._held:
            self.state.send_confirms(self._held.popleft()[1])
        self.state.confirm_turn()
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
        state = self.state
        mono = self.monotonic()
        if self._deadline is not None and self.clock() >= self._deadline:
            state.tick(self.clock())
        records = state.take_records()
        if records:
            try:
                self.journal.write(records)
            except JournalWriteError as exc:
                state.refuse_turn(str(exc), records)
        self._confirm_turn()
        if self.journal.has_work() or mono - self._compaction_checked >= 1.0:
            self._maybe_compact(mono)
        if state.dirty:
            state.dispatch()
            records = state.take_records()
            if records:
                try:
                    self.journal.write(records)
                except JournalWriteError:
                    state.retain(records)
        while self._calls:                  # after the turn's writes: they see settled state
            function = self._calls.pop(0)
            try:
                function()
            except Exception:           # another thread's request must not stop the broker
                logger.exception("a call run in the broker loop for another thread failed")
        self._flush_all()
        if mono - self._last_housekeeping >= 0.5:
            self._last_housekeeping = mono
            self._housekeeping(mono)

    def _timeout(self):
        """Seconds select() may wait: until the next thing due, at most half a second."""
        self._deadline = deadline = self.state.next_deadline()
        if self._calls or self._backlog or self.state.dirty or self.journal.has_work():
            return 0
        timeout = 0.5                       # housekeeping: heartbeats, stalls
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - self.clock()))
        return timeout

    def _confirm_turn(self):
        """Send the turn's confirms, or hold them while the disk is behind.

        Under ``everysec`` an fsync runs in its own thread; once the oldest write no fsync
        covers is over two seconds old (`Journal.lagging`), confirms wait, in order, until
        an fsync covers their write, so a power cut can never take more than about two
        seconds of confirmed publishes however slow the disk. The loop keeps serving
        everything else meanwhile.
        """
        state, journal, held = self.state, self.journal, self._held
        while held and journal.is_synced(held[0][0]):
            state.send_confirms(held.popleft()[1])
        if held or journal.lagging():
            confirms = state.take_confirms()
            if confirms:
                if not held and journal.throttle.allow("confirms held") is not None:
                    logger.warning("journal fsync is over %gs behind (a slow disk): confirms "
                                   "wait for it", MAX_LAG)
                held.append((journal.generation, confirms))
        else:
            state.confirm_turn()

    def _maybe_compact(self, mono):
        journal = self.journal
        if journal.compacting is None:
            self._compaction_checked = mono
            if not journal.wants_compaction():
                return
        started = self.monotonic()
        journal.compact_step(self.state)
        pause = self.monotonic() - started
        if pause > 0.05:
            logger.info("compaction step took %.1f ms", pause * 1000)

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
            peer_text = _peer_text(peer) if listener is self._listener else _local_peer(sock)
            if len(self.connections) >= self.limits.max_connections:
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
            self.adopt(sock, peer_text)

    def adopt(self, sock, peer_text=""):
        """Serve an already-connected socket (accept() and tests use it)."""
        session_id = self._next_id
        self._next_id += 1
        session = self.state.open_session(session_id, peer_text)
        conn = _Connection(sock, session, peer_text, P.MAX_HANDSHAKE_BYTES)
        conn.partial_since = self.monotonic()        # the handshake must finish in time
        self.connections[session_id] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)
        logger.debug("client %s connected (session %d)", peer_text, session_id)
        return conn

    def _refuse_socket(self, sock, code, text, peer):
        """Say why in one ERROR frame, then close gently: closing at once while the client's
        HELLO sits unread makes the kernel send a reset, which can destroy the ERROR before
        the client reads it. So: FIN after the frame, drain its input, close on its EOF (or
        after a second)."""
        self._log_refusal("refused", text, peer)
        try:
            sock.setblocking(False)
            sock.send(P.encode_error(0, code, text))
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
                if session.stage == OPEN and decoder.max_frame_bytes != self.limits.max_frame_bytes:
                    decoder.max_frame_bytes = self.limits.max_frame_bytes
            else:
                self._backlog.add(conn)
        except ProtocolError as exc:
            session.send(P.encode_error(0, P.TOO_LARGE if "limit" in str(exc) else P.BAD_FRAME,
                                        str(exc)))
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

    def _close(self, conn, reason, requeue_log=True):
        if self.connections.pop(conn.session.id, None) is None:
            return
        if conn.session.refusal:
            self._log_refusal(conn.session.refusal, "", conn.peer)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass                        # never registered (refused early)
        try:
            conn.sock.close()
        except OSError:
            pass                        # closing anyway
        self.state.close_session(conn.session, reason if requeue_log else "")
        logger.debug("client %s: %s", conn.peer, reason)

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

    def _log_refusal(self, reason, detail, peer):
        """One log line per kind of refusal per 10 s, however many clients earn it."""
        mono = self.monotonic()
        last, suppressed = self._refusals.get(reason, (-1e9, 0))
        if mono - last >= 10.0:
            more = " (and %d more like it)" % suppressed if suppressed else ""
            logger.warning("refused client %s: %s%s%s", peer or "?", reason,
                           ": " + detail if detail else "", more)
            self._refusals[reason] = (mono, 0)
        else:
            self._refusals[reason] = (last, suppressed + 1)


_HTTP_REPLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
               b"This is a minitask broker port, not HTTP. Use the status page (--http).\r\n")


def _looks_like_http(data):
    return data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE")


def _local_peer(sock):
    """"local pid N uid U" for a client of the local socket (the kernel vouches for both)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return "local"
    return "local pid %d uid %d" % (pid, uid)


def _peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        return "%s:%s" % (peer[0], peer[1])
    return str(peer)


def _os_reason(exc):
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    return str(exc)
