"""A blocking connection to Redis or Valkey, built on the `resp` codec: the Redis transport's wire.

One socket, no threads; use one client per thread (a forked child makes its own). It connects
on first use and again whenever the connection is lost, asking Sentinel anew each time.

Connecting
----------
``HELLO <protocol> [AUTH user password] [SETNAME name]`` logs in, picks the RESP version and
names the server and its version in one round trip, pipelined with ``SELECT db`` and, under
Sentinel, ``ROLE``. The version is 2 unless the URL says 3: in RESP3 some replies change
shape (XREADGROUP answers a map, HGETALL too), and callers would need to read both. A server older than Redis 6.2 is refused (ConfigurationError naming the version it
reported): minitask needs XAUTOCLAIM, XPENDING IDLE and ZMSCORE. Under Sentinel, the client
asks each Sentinel in turn ``SENTINEL get-master-addr-by-name SERVICE``, checks that the
address it got really is a primary (``ROLE``), and does both again on every reconnect.

What is retried
---------------
A reply that proves the server ran nothing is waited out and the commands sent again, with
backoff, for up to `retry_seconds`: ``LOADING`` (the server is reading its data after a
restart), and the failover replies ``READONLY`` (a write reached a replica), ``UNBLOCKED``
(a blocked read's primary became a replica) and ``MASTERDOWN``. A failover reply also drops
the connection, so the next attempt asks Sentinel where the primary is now. In a pipeline,
this happens only when every reply is one of those; otherwise the replies come back with the
errors in place. A connection that closed while idle (a restart, an idle timeout) is noticed
before sending, so it too is made again and the commands sent. But when a connection is lost
after the commands left, they may or may not have run: `BrokerConnectionError` is raised
unless the caller said running them twice does no harm (``idempotent=True``). A server never
reached since the client was made is reported at once, not retried: that is usually a wrong
URL. Nothing here speaks pub/sub, MONITOR or Cluster redirections (MOVED and ASK come back
as ReplyErrors).
"""

import hashlib
import logging
import os
import random
import re
import select
import socket
import ssl
import time

from ..exceptions import (
    AuthenticationError, BrokerConnectionError, ConfigurationError, ProtocolError, ReplyError,
)
from . import resp
from .redis_url import CERT_REQS, RETRY_SECONDS, RedisURL, hostport, parse_redis_url

__all__ = ["RedisClient", "Script", "Backoff", "MIN_VERSION", "RETRY_SECONDS"]

logger = logging.getLogger(__name__)

MIN_VERSION = (6, 2)
_RECV_BYTES = 256 * 1024

_RETRY_PREFIXES = frozenset(("LOADING", "READONLY", "UNBLOCKED", "MASTERDOWN"))
# WAIT and WAITAOF on a replica answer ERR, not READONLY: with publish_confirm a demoted
# primary refuses the writes (READONLY) and then their wait this way.
_WAIT_ON_A_REPLICA = "cannot be used with replica instances"
_AUTH_PREFIXES = frozenset(("NOAUTH", "WRONGPASS", "NOPERM"))


def _ran_nothing(reply):
    """Whether `reply` says the server ran nothing because of a failover or a restart."""
    if not isinstance(reply, ReplyError):
        return False
    return reply.prefix in _RETRY_PREFIXES or (
        reply.prefix == "ERR" and _WAIT_ON_A_REPLICA in str(reply))


# -- scripts and backoff ------------------------------------------------------------------------

class Script:
    """A Lua script, sent by its SHA1 (EVALSHA) and by its source only when the server lacks
    it: a restart, a failover or SCRIPT FLUSH empties the server's script cache."""

    __slots__ = ("source", "sha1")

    def __init__(self, source):
        self.source = source
        self.sha1 = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def command(self, keys=(), args=()):
        """The EVALSHA command for a pipeline, where a NOSCRIPT reply is the caller's to
        handle (`RedisClient.run_script` handles it for a single call)."""
        return ("EVALSHA", self.sha1, len(keys)) + tuple(keys) + tuple(args)

    def __repr__(self):
        return "<Script %s>" % self.sha1[:12]


class Backoff:
    """The pauses between attempts: doubling from `first` up to `cap`, each shortened by a
    random part of itself so that clients which lost the same server do not all come back in
    the same instant; None once the next pause would end after `total` seconds."""

    def __init__(self, total, first=0.05, cap=1.0, clock=time.monotonic, rand=random.random):
        self._deadline = clock() + total
        self._pause = first
        self._cap = cap
        self._clock = clock
        self._rand = rand

    def next_pause(self):
        pause = self._pause * (0.5 + 0.5 * self._rand())
        self._pause = min(self._pause * 2, self._cap)
        if self._clock() + pause > self._deadline:
            return None
        return pause


# -- one socket ---------------------------------------------------------------------------------

_UNSET = object()


class _Link:
    """One socket and its decoder: sends commands and reads their replies. Any failure closes
    it and raises BrokerConnectionError (ProtocolError for bytes that are not RESP)."""

    def __init__(self, sock, where, address):
        self.sock = sock
        self.where = where
        self.address = address
        self.pid = os.getpid()
        self.decoder = resp.Decoder()
        self._timeout = _UNSET
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._scratch = bytearray(_RECV_BYTES)
        self._view = memoryview(self._scratch)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass                # closing it anyway; nothing more to learn from it
            self.sock = None

    def _lost(self, why):
        self.close()
        return BrokerConnectionError("connection to %s lost: %s" % (self.where, why))

    def _set_timeout(self, timeout):
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, data, timeout):
        self._set_timeout(timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc.strerror or exc) from None

    def recv(self, timeout):
        """Receive once into the decoder; 0 when `timeout` is 0 and nothing is there."""
        self._set_timeout(timeout)
        try:
            count = self.sock.recv_into(self._scratch)
        except (BlockingIOError, ssl.SSLWantReadError):
            return 0                # timeout 0: nothing to read now
        except socket.timeout:
            self.close()
            raise BrokerConnectionError("no reply from %s within %.1fs; connection dropped"
                                        % (self.where, timeout)) from None
        except OSError as exc:
            raise self._lost(exc.strerror or exc) from None
        if not count:
            self.close()
            raise BrokerConnectionError("%s closed the connection" % self.where)
        self.decoder.feed(self._view[:count])
        return count

    def read(self, count, timeout):
        """Read `count` replies, waiting at most `timeout` (None: forever) for each read."""
        decoder = self.decoder
        replies = []
        try:
            while len(replies) < count:
                reply = decoder.next_reply()
                if reply is resp.NEED_DATA:
                    self.recv(timeout)
                else:
                    replies.append(reply)
        except ProtocolError as exc:
            self.close()
            raise ProtocolError("%s sent bytes that are not RESP: %s" % (self.where, exc)) \
                from None
        return replies

    def roundtrip(self, commands, timeout):
        self.send(resp.encode_commands(commands), timeout)
        return self.read(len(commands), timeout)

    def idle_input(self):
        """Read what arrived while no command was waiting: pushes, or the end of the
        connection (a restart, CLIENT KILL, an idle timeout), which raises. Knowing that
        before sending is what makes reconnecting then safe for any command."""
        while self._poller.poll(0) and self.recv(0.0):
            try:
                reply = self.decoder.next_reply()
            except ProtocolError as exc:
                reply = exc
            if reply is not resp.NEED_DATA:
                self.close()
                raise BrokerConnectionError("%s sent %.80r unasked" % (self.where, reply))


# -- the client ---------------------------------------------------------------------------------

class RedisClient:
    """A connection to the primary named by a Redis URL, made on first use and again when lost.

    `execute` sends one command and raises its error reply; `pipeline` sends many and returns
    every reply, errors in place; `run_script` runs a `Script`. Each waits out what the
    module docstring says is safe to retry, and otherwise raises BrokerConnectionError.
    Commands that block on the server pass ``block``: the seconds they may block there, added
    to the reply timeout (None: they may block forever, and so does the read).
    """

    def __init__(self, url, ca_file=None, retry_seconds=None, on_push=None,
                 connector=socket.create_connection, sleep=time.sleep, clock=time.monotonic):
        self.url = url if isinstance(url, RedisURL) else parse_redis_url(url)
        self.ca_file = ca_file
        # The URL's retry_seconds unless given (RETRY_SECONDS unless the URL says).
        self.retry_seconds = self.url.retry_seconds if retry_seconds is None else retry_seconds
        self.on_push = on_push              # callback(Push); without one pushes are dropped
        self.server_name = None             # from HELLO: "redis" or "valkey"
        self.server_version = None          # from HELLO, e.g. (7, 0, 15)
        self._connector = connector         # (address, timeout) -> socket; tests pass fakes
        self._sleep = sleep
        self._clock = clock
        self._sentinels = list(self.url.hosts) if self.url.sentinel else []
        self._link = None
        self._reached = False
        self._tls_context = None

    def __repr__(self):
        return "<RedisClient %s>" % self.url.display

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    @property
    def connected(self):
        return self._link is not None and self._link.sock is not None

    @property
    def address(self):
        """(host, port) of the server connected to, or None."""
        return self._link.address if self.connected else None

    def connect(self):
        """Connect now, if not connected, rather than on the first command."""
        self._ensure_link()
        return self

    def close(self):
        if self._link is not None:
            self._link.close()
            self._link = None

    def detach(self):
        """Connect if needed, then hand the connection over: ``(socket, decoder)``, for a
        caller that drives it itself (a consumer's non-blocking reads). This client forgets
        it and makes a new one if used again."""
        link = self._ensure_link()
        self._link = None
        return link.sock, link.decoder

    # -- commands --------------------------------------------------------------------------

    def execute(self, *args, block=0.0, idempotent=False):
        """Run one command and return its reply; an error reply is raised (ReplyError)."""
        reply = self._call([args], block, idempotent)[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline(self, commands, block=0.0, idempotent=False):
        """Send every command, then read every reply: a list in the same order, with a
        ReplyError in place of each command that failed (the others have run)."""
        commands = list(commands)
        return self._call(commands, block, idempotent) if commands else []

    def run_script(self, script, keys=(), args=(), idempotent=False):
        """Run `script` by its SHA1; if the server lacks it, load it and run it again."""
        command = script.command(keys, args)
        reply = self._call([command], 0.0, idempotent)[0]
        if isinstance(reply, ReplyError) and reply.prefix == "NOSCRIPT":
            # SCRIPT LOAD rather than EVAL: from Redis 7.4 the server may evict scripts that
            # EVAL cached, never those it was asked to load.
            logger.info("%s: loading script %s", self.url.display, script.sha1[:12])
            loaded, reply = self._call([("SCRIPT", "LOAD", script.source), command], 0.0,
                                       idempotent)
            if isinstance(loaded, ReplyError):
                raise loaded
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _call(self, commands, block, idempotent):
        data = resp.encode_commands(commands)
        timeout = None if block is None else self.url.socket_timeout + block
        backoff = None
        while True:
            sent = False
            replies = None
            try:
                link = self._ensure_link()
                sent = True
                link.send(data, self.url.socket_timeout)
                replies = link.read(len(commands), timeout)
                reason = self._retry_reason(replies)
                self._hand_over_pushes(link)
                if reason is None:
                    return replies
            except BrokerConnectionError as exc:
                self._drop()
                if (isinstance(exc, AuthenticationError) or not self._reached
                        or (sent and not idempotent)):
                    raise
                reason = exc
            backoff = backoff or Backoff(self.retry_seconds, clock=self._clock)
            pause = backoff.next_pause()
            if pause is None:
                if replies is None:
                    raise reason
                return replies
            logger.warning("%s: %s; trying again in %.2fs", self.url.display, reason, pause)
            self._sleep(pause)

    def _retry_reason(self, replies):
        """The error to wait out when every reply says the server ran nothing, else None. A
        failover reply also drops the connection, so the next command finds the primary."""
        retryable = [reply for reply in replies if _ran_nothing(reply)]
        if any(reply.prefix != "LOADING" for reply in retryable) and self._link is not None:
            logger.warning("%s: %s: %s is no longer the primary; reconnecting",
                           self.url.display, retryable[0].prefix, hostport(*self._link.address))
            self._drop()
        return retryable[0] if len(retryable) == len(replies) else None

    def _hand_over_pushes(self, link):
        pushes = link.decoder.pushes
        while pushes:
            push = pushes.popleft()
            if self.on_push is not None:
                self.on_push(push)
            else:
                logger.debug("%s: dropped a push message %.80r", self.url.display, push)

    # -- connecting ------------------------------------------------------------------------

    def _drop(self):
        if self._link is not None:
            self._link.close()
        self._link = None

    def _ensure_link(self):
        link = self._link
        if link is not None and link.sock is not None:
            if link.pid != os.getpid():      # forked: the parent owns this connection
                link.close()
            else:
                try:
                    link.idle_input()
                    self._hand_over_pushes(link)
                except BrokerConnectionError as exc:
                    logger.info("%s; reconnecting", exc)
                    link = None
        if link is None or link.sock is None:
            self._link = None
            self._link = link = self._connect()
        return link

    def _connect(self):
        url = self.url
        if url.path is not None:
            host, port = url.path, None
            sock = self._open_unix(url.path)
        else:
            host, port = self._resolve() if url.sentinel else url.hosts[0]
            sock = self._open(host, port)
        where = ("%s (primary at %s)" % (url.display, hostport(host, port)) if url.sentinel
                 else url.display)
        link = _Link(sock, where, (host, port))
        try:
            self._handshake(link)
        except BaseException:
            link.close()
            raise
        self._reached = True
        logger.info("connected to %s at %s (%s %s)", url.display, hostport(host, port),
                    self.server_name, ".".join(map(str, self.server_version)))
        return link

    def _open(self, host, port, what="Redis"):
        url = self.url
        try:
            sock = self._connector((host, port), url.socket_connect_timeout)
        except OSError as exc:
            raise BrokerConnectionError("cannot connect to %s at %s: %s" % (
                what, hostport(host, port), exc.strerror or exc)) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A primary that vanishes (power loss, a partition) never sends a FIN; keepalive
            # eventually tells a read that blocks with no timeout (BLOCK 0).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if url.tls:
                sock = self._tls().wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            sock.close()
            raise BrokerConnectionError("%s with %s at %s failed: %s" % (
                "TLS handshake" if url.tls else "setting up the connection", what,
                hostport(host, port), exc)) from None
        return sock

    def _open_unix(self, path):
        if not hasattr(socket, "AF_UNIX"):
            raise ConfigurationError("%s: this system has no Unix sockets" % self.url.display)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.url.socket_connect_timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise BrokerConnectionError("cannot connect to Redis at %s: %s" % (
                path, exc.strerror or exc)) from None
        return sock

    def _tls(self):
        if self._tls_context is None:
            url = self.url
            try:
                context = ssl.create_default_context(cafile=url.ssl_ca_certs or self.ca_file)
                if url.ssl_certfile:
                    context.load_cert_chain(url.ssl_certfile, url.ssl_keyfile)
            except (OSError, ValueError) as exc:
                raise ConfigurationError("%s: cannot load the TLS files: %s"
                                         % (url.display, exc)) from None
            if url.ssl_cert_reqs not in ("required", "cert_required"):
                logger.warning("%s: the server's certificate is not verified "
                               "(ssl_cert_reqs=%s)", url.display, url.ssl_cert_reqs)
                context.check_hostname = False
                context.verify_mode = CERT_REQS[url.ssl_cert_reqs]
            self._tls_context = context
        return self._tls_context

    def _handshake(self, link):
        url = self.url
        hello = ["HELLO", url.protocol]
        if url.password is not None:
            hello += ["AUTH", url.username or "default", url.password]
        if url.client_name:
            hello += ["SETNAME", url.client_name]
        commands = [hello]
        if url.sentinel:
            commands.append(("ROLE",))
        if url.db:
            commands.append(("SELECT", url.db))
        replies = link.roundtrip(commands, url.socket_timeout)
        self._check_hello(link, replies[0])
        for command, reply in zip(commands[1:], replies[1:]):
            if isinstance(reply, ReplyError):
                raise ConfigurationError("%s: %s failed: %s" % (url.display, command[0], reply))
            if command[0] == "ROLE" and (not reply or reply[0] != b"master"):
                raise BrokerConnectionError(
                    "Sentinel named %s as the primary of %r, but it is a %s (failover under "
                    "way?)" % (hostport(*link.address), url.service,
                               _text(reply[0]) if reply else "server"))

    def _check_hello(self, link, reply):
        url = self.url
        if isinstance(reply, ReplyError):
            if reply.prefix in _AUTH_PREFIXES:
                raise AuthenticationError("%s refused the login: %s" % (url.display, reply))
            if "unknown command" in str(reply).lower():         # HELLO came in Redis 6.0
                raise self._too_old(self._version_from_info(link) or "a Redis before 6.0")
            raise BrokerConnectionError("%s: HELLO failed: %s" % (url.display, reply))
        info = _as_dict(reply)
        self.server_name = _text(info.get(b"server", b"redis")).lower()
        text = _text(info.get(b"version", b""))
        self.server_version = tuple(int(part) for part in re.findall(r"\d+", text)[:3])
        if self.server_version < MIN_VERSION:
            raise self._too_old("%s %s" % (self.server_name.capitalize(), text or "?"))

    def _version_from_info(self, link):
        """The version an old server reports in INFO (it has no HELLO to tell it)."""
        commands = [("AUTH", self.url.password)] if self.url.password is not None else []
        info = link.roundtrip(commands + [("INFO", "server")], self.url.socket_timeout)[-1]
        match = re.search(rb"(redis|valkey)_version:([0-9.]+)", info or b"") \
            if isinstance(info, bytes) else None
        return match and "%s %s" % (_text(match.group(1)).capitalize(), _text(match.group(2)))

    def _too_old(self, found):
        return ConfigurationError("%s runs %s; minitask needs Redis or Valkey %d.%d or later"
                                  % (self.url.display, found, *MIN_VERSION))

    def _resolve(self):
        """Ask each Sentinel in turn where the service's primary is now."""
        url = self.url
        errors = []
        for index, (host, port) in enumerate(self._sentinels):
            try:
                address = self._ask_sentinel(host, port)
            except (BrokerConnectionError, ProtocolError) as exc:   # down or confused: next
                errors.append(str(exc))
                continue
            if address is None:
                errors.append("%s knows no service %r" % (hostport(host, port), url.service))
                continue
            # Ask the one that answered first next time, not one that may be down again.
            self._sentinels.insert(0, self._sentinels.pop(index))
            logger.debug("Sentinel %s: the primary of %r is at %s", hostport(host, port),
                         url.service, hostport(*address))
            return address
        raise BrokerConnectionError("no Sentinel named the primary of %r: %s"
                                    % (url.service, "; ".join(errors)))

    def _ask_sentinel(self, host, port):
        url = self.url
        link = _Link(self._open(host, port, "Sentinel"), "Sentinel %s" % hostport(host, port),
                     (host, port))
        try:
            commands = [("SENTINEL", "get-master-addr-by-name", url.service)]
            if url.sentinel_password is not None:
                auth = ("AUTH",) + ((url.sentinel_username,) if url.sentinel_username else ())
                commands.insert(0, auth + (url.sentinel_password,))
            replies = link.roundtrip(commands, url.socket_timeout)
        finally:
            link.close()
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise BrokerConnectionError("%s: %s" % (link.where, reply))
        reply = replies[-1]
        if not reply:
            return None
        if len(reply) != 2 or not _text(reply[1]).isdigit():
            raise ProtocolError("%s: expected [host, port], got %.80r" % (link.where, reply))
        return _text(reply[0]), int(reply[1])


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _as_dict(reply):
    """HELLO's reply: a map in RESP3, a flat [key, value, ...] array in RESP2."""
    if isinstance(reply, dict):
        return reply
    if isinstance(reply, list):
        return dict(zip(reply[0::2], reply[1::2]))
    raise ProtocolError("HELLO replied %.80r; expected a map" % (reply,))
