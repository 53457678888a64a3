"""The built-in tasks, always registered: ping, delete_expired_task_meta, execute_remote,
map_async, map and starmap (Celery's celery.map and celery.starmap, behind ``task.map(it)`` and
``task.starmap(it)``) and http_dispatch (early Celery's ``rest`` tasks, on `urllib`).

``execute_remote`` is the only one that unpickles anything, and only where ``pickle`` is in
``ACCEPT_CONTENT``; everywhere else it fails with ContentDisallowed before touching the bytes.
"""

import json
import pickle
import urllib.error
import urllib.parse
import urllib.request

from .canvas import signature
from .decorators import task
from .exceptions import ContentDisallowed, ProtocolError, RemoteTaskError
from .transport import with_connection
from .config import get_settings
from .serialization import content_type_for, normalize_accept
from .registry import tasks
from .task import DEFAULT_KWARG_NAMES

__all__ = ["ping", "delete_expired_task_meta", "execute_remote", "map_async", "xmap",
           "xstarmap", "http_dispatch", "send_callable"]

HTTP_TIMEOUT = 30.0


@task(name="minitask.ping")
def ping():
    """Answers "pong": proof that a worker is there and running tasks."""
    return "pong"


@task(name="minitask.delete_expired_task_meta")
def delete_expired_task_meta():
    """Remove expired results now (the broker also does this on its own as they expire)."""
    return with_connection(lambda conn: conn.forget([], expired=True))


@task(name="minitask.execute_remote")
def execute_remote(ser_callable, fargs=(), fkwargs=None):
    """Run a pickled callable with these arguments. Needs "pickle" in ACCEPT_CONTENT."""
    accepted = normalize_accept(get_settings().ACCEPT_CONTENT)
    if content_type_for("pickle") not in accepted:
        raise ContentDisallowed("minitask.execute_remote runs pickled code; refused because "
                                "pickle is not in ACCEPT_CONTENT")
    if not isinstance(ser_callable, bytes):
        raise TypeError("ser_callable must be the bytes of a pickled callable")
    function = pickle.loads(ser_callable)
    return function(*fargs, **(fkwargs or {}))


def send_callable(function, *args, **kwargs):
    """Send `function` (pickled) to a worker that accepts pickle; returns the AsyncResult."""
    return execute_remote.delay(pickle.dumps(function), args, kwargs)


@task(name="minitask.map_async")
def map_async(name, args_list):
    """Run the task called `name` here, once per argument tuple; return the results.

    (Not ``task_name``: that is a default keyword argument the worker would fill in.)
    """
    function = tasks[name]
    return [function(*_as_tuple(args)) for args in args_list]


def _as_tuple(args):
    return tuple(args) if isinstance(args, (list, tuple)) else (args,)


@task(name="minitask.map")
def xmap(task, it):
    """Call the task of signature `task` on each item of `it`, here, in order; return the
    results. (The names are Celery's, which ``task.map(it)`` sends.)"""
    function = signature(task).type
    return [function(item) for item in it]


@task(name="minitask.starmap")
def xstarmap(task, it):
    """As minitask.map, each item of `it` being the argument tuple of one call."""
    function = signature(task).type
    return [function(*_as_tuple(args)) for args in it]


@task(name="minitask.http_dispatch")
def http_dispatch(url, method="GET", timeout=HTTP_TIMEOUT, **kwargs):
    """Call `url` with the task's other kwargs (query string for GET, form body for POST).

    The answer must be JSON: ``{"status": "success", "retval": ...}`` gives the result,
    ``{"status": "failure", "reason": ...}`` a failure.
    """
    params = {key: value for key, value in kwargs.items() if key not in DEFAULT_KWARG_NAMES}
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError("http_dispatch url %r: expected an http:// or https:// URL" % (url,))
    method = method.upper()
    if method not in ("GET", "POST"):
        raise ValueError("http_dispatch method %r: expected GET or POST" % (method,))
    query = urllib.parse.urlencode(params, doseq=True)
    if method == "GET":
        request = urllib.request.Request(url + ("&" if "?" in url else "?") + query
                                         if query else url, method="GET")
    else:
        request = urllib.request.Request(url, data=query.encode("utf-8"), method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    request.add_header("Accept", "application/json")
    request.add_header("User-Agent", "minitask-http-dispatch")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise RemoteTaskError("HTTPError", "%s answered %d %s" % (url, exc.code, exc.reason)) \
            from None
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("%s did not answer with JSON: %s" % (url, exc)) from None
    status = answer.get("status") if isinstance(answer, dict) else None
    if status == "success":
        return answer.get("retval")
    if status == "failure":
        raise RemoteTaskError("HTTPDispatchFailure", str(answer.get("reason", "")))
    raise ProtocolError("%s answered status %r: expected success or failure" % (url, status))
