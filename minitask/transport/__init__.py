"""Transports: how the task API, results, the CLI and the worker reach a broker.

`BROKER_URL`'s scheme picks one (`SCHEMES`); each gives a `Client` and a `Consumer` that keep
the contract of `minitask.transport.base`. Above this package nothing knows which broker it
talks to.

`connection()` gives each thread (of each process, forks included) its own client made from
the settings; it declares the exchanges, queues and bindings of ``QUEUES`` once per
connection, so tasks sent before any worker starts wait in their queue. `with_connection()`
runs a call on it, reconnecting with backoff when a connection that worked is lost.
"""

import importlib
import logging
import os
import threading
import time

from ..exceptions import AuthenticationError, BrokerConnectionError, ConfigurationError
from ..config import get_settings, safe_url

__all__ = ["SCHEMES", "transport_for", "client_for", "consumer_for", "connection",
           "with_connection", "reset_connection", "declare_topology", "declare_worker_queues"]

logger = logging.getLogger(__name__)

# URL scheme -> the module implementing it (imported when first used).
SCHEMES = {"minitask": "builtin", "minitasks": "builtin", "memory": "memory",
           "redis": "redis", "rediss": "redis", "redis+sentinel": "redis",
           "rediss+sentinel": "redis", "redis+socket": "redis", "unix": "redis"}

# A lost connection is tried again for this long (a broker restart takes about a second);
# a broker that was never reached is reported at once.
RECONNECT_SECONDS = 5.0


def transport_for(url):
    """The module of the transport `url` names: it has `Client`-like and `Consumer` classes."""
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
    name = SCHEMES.get(scheme)
    if name is None:
        raise ConfigurationError("BROKER_URL %r: no transport for scheme %r (known: %s)"
                                 % (safe_url(url), scheme, ", ".join(sorted(SCHEMES))))
    return importlib.import_module("%s.%s" % (__name__, name))


def client_for(settings, client="minitask-client", on_connect=None, timeout=10.0):
    """A new, unconnected client of the broker `settings` name."""
    return transport_for(settings.BROKER_URL).client(settings, client=client,
                                                     on_connect=on_connect, timeout=timeout)


def consumer_for(settings, queues, prefetch, worker_info, hostname):
    """A worker's consumer of the broker `settings` name."""
    return transport_for(settings.BROKER_URL).Consumer(settings, queues, prefetch,
                                                       worker_info, hostname)


# -- each thread's own connection ----------------------------------------------------------

_local = threading.local()
_generation = [0]           # bumped by reset_connection() and fork: every thread makes anew


def _forget_after_fork():
    """A forked child must not share its parent's sockets: it starts with no connection."""
    global _local
    _local = threading.local()
    _generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def connection(settings=None):
    """This thread's connection to the configured broker, made on demand, and made again
    after a fork, a lost connection or `reset_connection()`.

    One per thread, so a thread blocked in `AsyncResult.get()` never holds up another
    thread's `delay()`.
    """
    conn = getattr(_local, "connection", None)
    if conn is not None and _local.generation != _generation[0]:
        _close_quietly(conn)
        conn = None
    if conn is None:
        if settings is None:
            settings = get_settings()
        conn = client_for(settings, on_connect=lambda c: declare_topology(c, settings))
        _local.connection, _local.generation = conn, _generation[0]
        _local.reached = False
    if not conn.connected:
        conn.connect()
    _local.reached = True
    return conn


def with_connection(function):
    """``function(connection)``, tried again with backoff (for up to RECONNECT_SECONDS) when a
    connection that worked is lost. A message may then be published twice, never not at all
    (at-least-once, as every broker client that retries)."""
    deadline = None
    pause = 0.05
    while True:
        reached = getattr(_local, "reached", False)
        try:
            return function(connection())
        except AuthenticationError:
            raise
        except BrokerConnectionError:
            if not reached:
                raise
            deadline = deadline or time.monotonic() + RECONNECT_SECONDS
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("lost the connection to the broker; trying again in %.2fs", pause)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _close_quietly(conn):
    try:
        conn.close()
    except BrokerConnectionError:
        pass                        # it was already broken; we are dropping it anyway


def reset_connection():
    """Forget every thread's connection (tests, or after the settings changed)."""
    conn = getattr(_local, "connection", None)
    if conn is not None:
        _close_quietly(conn)
    _local.connection = None
    _local.reached = False
    _generation[0] += 1


def declare_topology(conn, settings):
    """Declare the default exchange, the default queue bound to it under the default routing
    key, and every exchange, queue and binding of ``QUEUES``. The default queue is declared
    here too, not only by the broker at its start, so that clients and workers whose
    DEFAULT_QUEUE is not the broker's meet in theirs (Celery's "changing the name of the
    default queue" sets it for the app alone)."""
    conn.declare_exchange(settings.DEFAULT_EXCHANGE, settings.DEFAULT_EXCHANGE_TYPE)
    conn.declare_queue(settings.DEFAULT_QUEUE)
    conn.bind(settings.DEFAULT_QUEUE, settings.DEFAULT_EXCHANGE, settings.DEFAULT_ROUTING_KEY)
    for name, spec in settings.QUEUES.items():
        conn.declare_exchange(spec["exchange"], spec["exchange_type"])
        conn.declare_queue(name, durable=spec.get("durable", True))
        conn.bind(name, spec["exchange"], spec["binding_key"], spec.get("arguments") or {})


def declare_worker_queues(conn, settings, queues):
    """Declare the queues a worker consumes that ``QUEUES`` does not describe, each bound to
    the default exchange under its own name; the default queue is bound already, under
    DEFAULT_ROUTING_KEY (`declare_topology`)."""
    for name in queues:
        if name in settings.QUEUES:
            continue                    # declare_topology did it
        conn.declare_queue(name)
        if name != settings.DEFAULT_QUEUE:
            conn.bind(name, settings.DEFAULT_EXCHANGE, name)
