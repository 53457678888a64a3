"""Where a call goes: the exchange and routing key of its message, and a queue to declare.

Celery's precedence, highest first::

    apply_async(queue=, exchange=, routing_key=, priority=)    the call's own options
    TASK_ROUTES (Celery's task_routes)                         the first router that answers
    the task's options (queue, exchange, routing_key, priority)
    DEFAULT_EXCHANGE and DEFAULT_ROUTING_KEY                   (they reach DEFAULT_QUEUE)

A queue is a whole destination: the message goes straight to that queue through the default
exchange ``""`` (the direct exchange every queue is bound to by its own name), wherever the
queue's own bindings are. A queue that is not in ``QUEUES`` is declared by the client before
it publishes (once per connection), as Celery's ``task_create_missing_queues`` does, so a
call sent before any worker consumes that queue waits in it. A queue given together with an
exchange or routing key at the same level must be in ``QUEUES`` (its exchange and binding key
fill in what is not given). Exchange and routing key otherwise complete each other across the
levels, down to the first level that names a queue. Priority is taken from the highest level
that gives one.

``TASK_ROUTES`` takes Celery's forms: a dict of task name or glob (``"feed.tasks.*"``) or
compiled regex -> route; a list of such dicts, of ``(pattern, route)`` pairs, of router
functions ``(name, args, kwargs, options, task=None, **kw)`` or of their dotted names. A
route is a queue name or a dict of ``queue``, ``exchange``, ``routing_key``, ``priority``.
Routers are asked in order; the first that answers (not None) decides.
"""

import fnmatch
import importlib
import re

from .exceptions import ConfigurationError

__all__ = ["check_routes", "Router", "router_for", "destination", "ROUTE_KEYS"]

ROUTE_KEYS = ("queue", "exchange", "routing_key", "priority")
_Pattern = type(re.compile(""))


# -- the setting -----------------------------------------------------------------------------

def check_routes(label, value):
    """Check TASK_ROUTES's shape when the settings load; returns a list of routers (dicts of
    pattern -> route, pair lists, callables, dotted names)."""
    if value is None:
        return []
    if isinstance(value, (dict, str)) or _is_router(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _bad(label, value, "expected a dict, a router function or a list of them")
    if value and all(_is_pair(item) for item in value):
        value = [list(value)]               # [(pattern, route), ...] written without the list
    routers = []
    for index, router in enumerate(value):
        where = "%s[%d]" % (label, index)
        if isinstance(router, dict):
            routers.append(_map_route(where, list(router.items())))
        elif isinstance(router, (list, tuple)):
            if not all(_is_pair(item) for item in router):
                raise _bad(where, router, "expected (pattern, route) pairs")
            routers.append(_map_route(where, [tuple(item) for item in router]))
        elif isinstance(router, str):
            if "." not in router.replace(":", "."):
                raise _bad(where, router, "expected the dotted name of a router function")
            routers.append(router)
        elif _is_router(router):
            routers.append(router)
        else:
            raise _bad(where, router, "expected a dict, (pattern, route) pairs, a router "
                                      "function or its dotted name")
    return routers


def _is_router(value):
    """A router function, or a pre-4.0 router object (``route_for_task``)."""
    return callable(value) or hasattr(value, "route_for_task")


def _is_pair(item):
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(
        item[0], (str, _Pattern)) and isinstance(item[1], (str, dict))


def _map_route(label, items):
    for pattern, route in items:
        if not isinstance(pattern, (str, _Pattern)) or not pattern:
            raise _bad(label, pattern, "expected a task name, a glob or a compiled regex")
        check_route("%s[%r]" % (label, getattr(pattern, "pattern", pattern)), route)
    return [(pattern, route) for pattern, route in items]


def check_route(label, route):
    """A route is a queue name or a dict of ROUTE_KEYS; returns it as a dict."""
    if isinstance(route, str) and route:
        return {"queue": route}
    if not isinstance(route, dict):
        raise _bad(label, route, "expected a queue name or a dict of " + ", ".join(ROUTE_KEYS))
    unknown = sorted(set(route) - set(ROUTE_KEYS), key=str)
    if unknown:
        hint = (" (declare exchanges and their types in QUEUES)"
                if "exchange_type" in unknown else "")
        raise _bad(label, route, "%s is not a route key; expected %s%s"
                   % (unknown[0], ", ".join(ROUTE_KEYS), hint))
    for key in ("queue", "exchange", "routing_key"):
        if route.get(key) is not None and not isinstance(route[key], str):
            raise _bad("%s[%r]" % (label, key), route[key], "expected a string")
    if route.get("queue") == "":
        raise _bad("%s['queue']" % label, "", "expected a queue name")
    return dict(route)


def _bad(label, value, expected):
    return ConfigurationError("%s=%s: %s" % (label, _short_repr(value), expected))


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


# -- asking the routers ----------------------------------------------------------------------

class Router:
    """The routers of one TASK_ROUTES value, asked in order for each call."""

    def __init__(self, routers):
        self.routers = [_compile(router) for router in routers]
        self._static = all(isinstance(router, _Compiled) for router in self.routers)
        self._cache = {}

    def __bool__(self):
        return bool(self.routers)

    def route(self, name, args=(), kwargs=None, options=None, task=None):
        """The route dict for a call of task `name`, or None when no router answers."""
        if self._static:            # maps depend on the name alone: remember each answer
            try:
                return self._cache[name]
            except KeyError:
                pass
        answer = None
        for router in self.routers:
            answer = router(name, args, kwargs or {}, options or {}, task=task)
            if answer is not None:
                answer = check_route("TASK_ROUTES answer for %s" % name, answer)
                break
        if self._static and len(self._cache) < 10000:
            self._cache[name] = answer
        return answer


class _Compiled:
    """One dict (or pair list) of TASK_ROUTES: exact names first, then patterns in order."""

    def __init__(self, items):
        self.names = {}
        self.patterns = []
        for pattern, route in items:
            if isinstance(pattern, _Pattern):
                self.patterns.append((pattern, route))
            elif "*" in pattern or "?" in pattern or "[" in pattern:
                self.patterns.append((re.compile(fnmatch.translate(pattern)), route))
            else:
                self.names.setdefault(pattern, route)

    def __call__(self, name, args, kwargs, options, task=None, **extra):
        if name in self.names:
            return self.names[name]
        for regex, route in self.patterns:
            if regex.match(name):
                return route
        return None


def _compile(router):
    if isinstance(router, list):
        return _Compiled(router)
    if isinstance(router, str):
        return _Lazy(router)
    if hasattr(router, "route_for_task"):
        return _OldStyle(router)
    return router


class _Lazy:
    """A router named by its dotted path, imported when first asked (settings must load
    without importing the user's modules)."""

    def __init__(self, path):
        self.path = path
        self.router = None

    def __call__(self, *args, **kwargs):
        if self.router is None:
            module_name, _sep, attribute = self.path.replace(":", ".").rpartition(".")
            try:
                found = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as exc:
                raise ConfigurationError("TASK_ROUTES router %r cannot be imported: %s"
                                         % (self.path, exc)) from None
            if isinstance(found, type):         # a pre-4.0 router class
                found = found()
            self.router = _compile(found)
        return self.router(*args, **kwargs)


class _OldStyle:
    """A pre-4.0 Celery router object: ``route_for_task(task, args, kwargs)``."""

    def __init__(self, router):
        self.router = router

    def __call__(self, name, args, kwargs, options, task=None, **extra):
        return self.router.route_for_task(name, args, kwargs)


_routers = (None, None)         # (settings, Router made for them)


def router_for(settings):
    """The Router of these settings' TASK_ROUTES, made once per Settings object."""
    global _routers
    cached_settings, router = _routers
    if cached_settings is not settings:
        router = Router(settings.TASK_ROUTES)
        _routers = (settings, router)
    return router


# -- deciding the destination ----------------------------------------------------------------

def destination(levels, settings):
    """``(exchange, routing_key, priority, queue to declare or None)`` from option dicts,
    highest precedence first (see the module docstring)."""
    exchange = routing_key = priority = None
    declare = None
    decided = False
    for level in levels:
        if not level:
            continue
        if priority is None:
            priority = level.get("priority")
        if decided:
            continue
        queue = level.get("queue")
        if queue is not None:
            if not isinstance(queue, str) or not queue:
                raise ConfigurationError("queue %r: expected a queue name" % (queue,))
            given = level.get("exchange") is not None or level.get("routing_key")
            if exchange is None and not routing_key and not given:
                exchange, routing_key = "", queue
                declare = None if queue in settings.QUEUES else queue
            elif given:
                exchange, routing_key = _from_declared_queue(queue, level, exchange,
                                                             routing_key, settings)
            decided = True
            continue
        if exchange is None:
            exchange = level.get("exchange")
        if not routing_key:
            routing_key = level.get("routing_key")
    if exchange is None:
        exchange = settings.DEFAULT_EXCHANGE
    return exchange, routing_key or settings.DEFAULT_ROUTING_KEY, priority, declare


def _from_declared_queue(queue, level, exchange, routing_key, settings):
    spec = settings.QUEUES.get(queue)
    if spec is None:
        raise ConfigurationError(
            "queue %r with an exchange or routing key: that queue must be in QUEUES (its "
            "exchange and binding key say how it is reached); or give the queue alone"
            % (queue,))
    if exchange is None:
        exchange = level.get("exchange")
    if exchange is None:
        exchange = spec["exchange"]
    return exchange, routing_key or level.get("routing_key") or spec["binding_key"]
