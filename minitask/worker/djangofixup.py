"""Django in a worker: set up before any tasks module, and database connections kept sane.

It applies when DJANGO_SETTINGS_MODULE is set and Django can be imported (`active()`);
otherwise nothing here imports Django or does anything. Django is never a requirement of
minitask: without it the DjangoLoader still imports the apps' ``tasks`` modules, which then
must not need the app registry.

    worker's main process   setup()                      before the loader imports any tasks
                                                         module, so they may import models
    pool process (spawn,    setup()                      again, before it imports them again
      forkserver)
    pool process (fork)     forget_inherited_connections()   the parent's connection objects
                                                         are never used, nor closed, here
    around every task       before_task(), after_task()  as Django's request cycle does:
                                                         close_old_connections() (and
                                                         reset_queries() before)

Why forget and not close: a forked child shares its parent's database sockets. Closing a
connection object sends the server a goodbye on that socket (and a driver's finaliser does
the same when the object is collected), which would end the parent's session. So the child
points each inherited socket at /dev/null, keeps the object alive where nothing will ever
finalise it, and hands Django a clean slate: it connects afresh when a task first asks.
"""

import logging
import os
from ..exceptions import ConfigurationError

__all__ = ["active", "setup", "forget_inherited_connections", "before_task", "after_task"]

logger = logging.getLogger(__name__)

# Driver connection objects inherited from the parent: kept so that no finaliser runs on them.
_inherited = []


def _django():
    """The django package when this applies, else None (and nothing imported)."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    try:
        import django
        import django.db
    except ImportError:
        return None
    return django


def active():
    """Whether this process sets Django up: DJANGO_SETTINGS_MODULE is set and Django is there."""
    return _django() is not None


def setup():
    """Call ``django.setup()`` if Django applies here; any failure is one ConfigurationError.

    Called before the loader imports the tasks modules, so that they may import models at
    the top. Returns whether Django was set up.
    """
    django = _django()
    if django is None:
        return False
    try:
        django.setup()
    except Exception as exc:        # the project's settings or apps: a configuration problem
        raise ConfigurationError("django.setup() with DJANGO_SETTINGS_MODULE=%s failed: %s: %s"
                                 % (os.environ["DJANGO_SETTINGS_MODULE"], type(exc).__name__,
                                    " ".join(str(exc).split()))) from exc
    logger.debug("Django %s set up with %s", django.get_version(),
                 os.environ["DJANGO_SETTINGS_MODULE"])
    return True


def forget_inherited_connections(connections=None):
    """In a forked child: drop every database connection the parent had open, without a byte
    to the database. Returns how many were dropped.

    `connections` is Django's connection handler (``django.db.connections``) by default.
    """
    if connections is None:
        django = _django()
        if django is None:
            return 0
        connections = django.db.connections
    dropped = 0
    for wrapper in _all(connections):
        inherited = getattr(wrapper, "connection", None)
        if inherited is None:
            continue
        _inherited.append(inherited)
        fd = _socket_fd(inherited)
        if fd is not None:
            _blank(fd)
        wrapper.connection = None       # Django connects afresh on the next query
        dropped += 1
    if dropped:
        logger.debug("dropped %d database connection(s) inherited from the worker", dropped)
    return dropped


def before_task():
    """What Django does as a request starts: forget old queries, close stale connections."""
    django = _django()
    if django is not None:
        _guarded(django.db.reset_queries)
        _guarded(django.db.close_old_connections)


def after_task():
    """What Django does as a request ends: close connections that are unusable or too old."""
    django = _django()
    if django is not None:
        _guarded(django.db.close_old_connections)


def _all(connections):
    try:
        return connections.all(initialized_only=True)
    except TypeError:                   # Django before 4.1 has no initialized_only
        return connections.all()


def _guarded(hook):
    try:
        hook()
    except Exception as exc:            # a database that went away must not stop the process
        logger.warning("Django %s failed: %s: %s", hook.__name__, type(exc).__name__, exc)


def _socket_fd(connection):
    """The file descriptor of a driver connection's socket, or None (sqlite has none)."""
    fileno = getattr(connection, "fileno", None)
    if not callable(fileno):
        return None
    try:
        fd = fileno()
    except Exception:                   # a driver that cannot tell: leave its socket alone
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _blank(fd):
    """Point `fd` at /dev/null: the child lets go of the parent's socket, and anything the
    old object might still write goes nowhere. The number stays taken, so no new socket of
    this process can be mistaken for it."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
