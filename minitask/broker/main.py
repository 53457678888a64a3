"""Starting the broker: settings and flags in, a recovered state behind a listening socket out.

Refuses, before anything is opened, to listen beyond loopback without a secret, and to share
a data directory with another running broker (a lock file held for the broker's life).
"""

import gc
import ipaddress
import logging
import os
import socket
import ssl
import sys
import time

from .. import __version__
from ..exceptions import ConfigurationError, MinitaskError
from .journal import Journal, NullJournal
from .server import BrokerServer, Limits
from .state import BrokerOptions, BrokerState

try:
    import fcntl
except ImportError:                     # Windows: no advisory locks; one broker per folder
    fcntl = None

__all__ = ["BrokerConfig", "run_broker", "default_data_dir", "is_loopback"]

logger = logging.getLogger(__name__)


def default_data_dir():
    """Where the journal lives by default: the user's data directory, per platform."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "minitask")


def is_loopback(host):
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


class BrokerConfig:
    """Everything `python -m minitask broker` was told."""

    def __init__(self, host="127.0.0.1", port=5679, data_dir=None, persist=True,
                 fsync="everysec", secret=None, certfile=None, keyfile=None,
                 max_message_bytes=16 * 1024 * 1024, http=None, segment_bytes=None,
                 handover_grace=10.0, stall_timeout=30.0, handshake_timeout=10.0,
                 max_connections=1024, max_partial_bytes=256 * 1024 * 1024):
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.persist = persist
        self.fsync = fsync
        self.secret = secret
        self.certfile = certfile
        self.keyfile = keyfile
        self.max_message_bytes = max_message_bytes
        self.http = http
        self.segment_bytes = segment_bytes
        self.handover_grace = handover_grace
        self.stall_timeout = stall_timeout
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.max_partial_bytes = max_partial_bytes


def build(config, settings):
    """Open the journal, recover the state and bind the socket; returns the server."""
    if not is_loopback(config.host) and not config.secret:
        raise ConfigurationError(
            "refusing to listen on %s without a secret: give --secret-file or BROKER_SECRET, "
            "or listen on 127.0.0.1" % config.host)
    if config.http and not is_loopback(config.http[0]) and not config.secret:
        raise ConfigurationError(
            "refusing to serve the status page on %s without a secret: give --secret-file "
            "or BROKER_SECRET, or use --http 127.0.0.1:PORT" % config.http[0])
    if config.certfile and not config.keyfile or config.keyfile and not config.certfile:
        raise ConfigurationError("--certfile and --keyfile go together")
    options = BrokerOptions(
        result_expires=settings.RESULT_EXPIRES, default_exchange=settings.DEFAULT_EXCHANGE,
        default_exchange_type=settings.DEFAULT_EXCHANGE_TYPE,
        default_queue=settings.DEFAULT_QUEUE, default_routing_key=settings.DEFAULT_ROUTING_KEY,
        max_frame_bytes=config.max_message_bytes + 1024, secret=config.secret,
        handover_grace=config.handover_grace, version="minitask %s" % __version__)
    if config.persist:
        data_dir = config.data_dir or default_data_dir()
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError("cannot create the data directory %s: %s"
                                     % (data_dir, exc.strerror or exc)) from None
        lock = _lock_data_dir(data_dir)
        kwargs = {"segment_bytes": config.segment_bytes} if config.segment_bytes else {}
        journal = Journal(data_dir, config.fsync, **kwargs)
    else:
        data_dir, lock, journal = None, None, NullJournal()
    state = BrokerState(time.time, journal, options)
    try:
        summary = _recover(state)
    except OSError as exc:      # the journal cannot be read at all: one line, not a traceback
        raise MinitaskError("cannot open the journal: %s: %s"
                            % (exc.filename or data_dir, exc.strerror or exc)) from None
    if config.persist:
        logger.info("recovered %d messages (%d delayed, %d redelivered), %d results and %d "
                    "revoked ids from %s in %.3fs", summary["messages"], summary["delayed"],
                    summary["redelivered"], summary["results"], summary["revoked"],
                    journal.directory, summary["seconds"])
    ssl_context = None
    if config.certfile:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ssl_context.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError("cannot load --certfile/--keyfile: %s" % exc) from None
    limits = Limits(max_frame_bytes=options.max_frame_bytes,
                    stall_timeout=config.stall_timeout,
                    handshake_timeout=config.handshake_timeout,
                    max_connections=config.max_connections,
                    max_partial_bytes=config.max_partial_bytes)
    server = BrokerServer(state, config.host, config.port, ssl_context=ssl_context,
                          limits=limits)
    server.data_dir, server.lock, server.recovery = data_dir, lock, summary
    try:
        server.bind()
    except OSError as exc:
        journal.close()
        # Not bad use (the command line was fine) but a failure to do what was asked: exit 1.
        raise MinitaskError("cannot listen on %s:%s: %s"
                            % (config.host, config.port, exc.strerror or exc)) from None
    return server


def url_of(server, tls=False):
    host, port = server.address
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d" % ("minitasks" if tls else "minitask", host, port)


def _recover(state):
    """Replay the journal with the cyclic collector off, then freeze what it loaded.

    Replay makes an object or two per message and no garbage cycles; with the collector on,
    each full collection walks every message loaded so far (restart with 1M messages took
    twice as long). Frozen, the recovered messages are no longer walked by the collections of
    the running broker either; they are still freed as usual once acked.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return state.recover()
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()


def _lock_data_dir(data_dir):
    """Hold an exclusive lock on the data directory for the broker's life."""
    path = os.path.join(data_dir, "broker.lock")
    handle = open(path, "a+")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise MinitaskError("data directory %s is in use by broker %s; give another "
                            "--data-dir" % (data_dir, holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_broker(config, settings, announce=print):
    """Build, announce the listening line, serve until SIGTERM/SIGINT."""
    server = build(config, settings)
    server.install_signal_handlers()
    http = None
    if config.http:
        # The status page is optional: it and http.server load only when it is asked for.
        from .http import StatusHTTPServer  # the status page: only with --http
        http = StatusHTTPServer(server, config.http, secret=config.secret,
                                ssl_context=server.ssl_context)
        http.start()
    announce("minitask broker listening on %s" % url_of(server, bool(config.certfile)))
    if http is not None:
        announce("minitask status page on %s" % http.url)
    try:
        server.serve_forever()
    finally:
        if http is not None:
            http.stop()
    return 0
