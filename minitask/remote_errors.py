"""Exceptions as data: how a task's exception travels, and when it comes back as itself.

An exception becomes data with `exception_to_dict` (the "exc" tag of tagged JSON without its
"__mt__" key):
"type" is "<module>.<qualname>", or the bare name for builtins; "args" are the exception's args
as tagged JSON, each replaced by its repr() when it cannot be encoded. `exception_from_dict`
rebuilds the exception's own class, as `cls(*args)`, only when that class is a builtin, is in
`minitask.exceptions`, or lives in a module that is already in `sys.modules`; the lookup reads
module and class dictionaries only, so it imports nothing and runs no module `__getattr__`.
Anything else, or a constructor that refuses the args, comes back as `RemoteTaskError` with the
type name, message and remote traceback. Rebuilt exceptions carry the remote traceback text as
`remote_traceback`. A `RemoteTaskError` is sent on under its original type name, so an error
relayed twice does not nest. Pickle carries exceptions natively.

The "exc" tag of tagged JSON (`minitask.serialization`) carries exactly this data.
"""

import builtins
import sys

from .exceptions import RemoteTaskError, SerializationError

__all__ = ["exception_to_dict", "exception_from_dict", "exception_from_decoded"]


def exception_to_dict(exc, traceback_text=None, encode=repr):
    """Describe an exception as JSON-able data: type, message, args and traceback text.

    A `RemoteTaskError` keeps the type name, message and traceback it arrived with, and an
    exception rebuilt by `exception_from_dict` keeps its `remote_traceback` when no traceback
    is given, so relaying an error does not nest it or lose where it happened.
    """
    if isinstance(exc, RemoteTaskError):
        message = str(exc.message or "")
        remote_traceback = exc.traceback_text
        return {"type": str(exc.type_name), "message": message,
                "args": [message] if message else [],
                "traceback": remote_traceback if remote_traceback is not None else traceback_text}
    cls = type(exc)
    if cls.__module__ == "builtins":
        type_name = cls.__qualname__
    else:
        type_name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the exception it belongs to
        message = f"<{type_name} whose str() failed>"
    args = exc.args
    if isinstance(exc, OSError) and len(args) == 2 and exc.filename is not None:
        # OSError keeps file names outside args; without them "[Errno 2] ...: 'x'" loses 'x'.
        # Its constructor takes (errno, strerror, filename, winerror, filename2).
        args += (exc.filename,) if exc.filename2 is None else (exc.filename, None, exc.filename2)
    if traceback_text is None:
        traceback_text = getattr(exc, "remote_traceback", None)
    return {"type": type_name, "message": message, "args": [_arg(arg, encode) for arg in args],
            "traceback": traceback_text if isinstance(traceback_text, str) else None}


def exception_from_dict(d, decode):
    """Rebuild an exception from `exception_to_dict` data; see the module docstring.

    Never imports a module and never calls anything but the constructor of an exception class
    that passed the rules. Raises `SerializationError` only when `d` does not have the shape of
    such data at all.
    """
    type_name, message, args, traceback_text = _exception_fields(d)
    try:
        args = decode(args)
    except SerializationError:  # args we cannot read still leave type, message and traceback
        args = None
    return _rebuild_exception(type_name, message, args, traceback_text)


def exception_from_decoded(d):
    """As `exception_from_dict`, for data whose args are already decoded from tagged JSON."""
    return _rebuild_exception(*_exception_fields(d))


def _arg(arg, encode):
    try:
        return encode(arg)
    except Exception:  # an argument json cannot carry (a socket, a lock): its repr says what it was
        try:
            return repr(arg)
        except Exception:  # a broken __repr__ as well: the type name is all that is left
            return f"<{type(arg).__name__} whose repr() failed>"


def _exception_fields(d):
    if not isinstance(d, dict):
        raise SerializationError(
            f"malformed exception data: expected an object, got {type(d).__name__!r}")
    type_name = d.get("type")
    message = d.get("message", "")
    args = d.get("args", [])
    traceback_text = d.get("traceback")
    if (type(type_name) is not str or type(message) is not str or type(args) is not list
            or not (traceback_text is None or type(traceback_text) is str)):
        raise SerializationError(
            "malformed exception data: expected type (str), message (str), args (list) "
            "and traceback (str or null)")
    return type_name, message, args, traceback_text


def _rebuild_exception(type_name, message, args, traceback_text):
    exc = None
    cls = _find_exception_class(type_name)
    if cls is not None and args is not None and not issubclass(cls, RemoteTaskError):
        try:
            exc = cls(*args)
        except Exception:  # the class wants other arguments than its args: fall back below
            exc = None
        if not isinstance(exc, cls):
            exc = None
    if exc is None:
        exc = RemoteTaskError(type_name, message, traceback_text)
    try:
        exc.remote_traceback = traceback_text
    except Exception:  # a class with a read-only attribute of that name; the rest still stands
        pass
    return exc


def _find_exception_class(type_name):
    """Find an exception class by name without importing anything; None when not allowed."""
    if "." not in type_name:
        found = vars(builtins).get(type_name)
    else:
        found = None
        parts = type_name.split(".")
        # The longest imported module prefix wins: "a.b.C" is class C of module a.b before it is
        # attribute b.C of module a.
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is not None:
                found = _lookup_attributes(module, parts[cut:])
                break
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _lookup_attributes(module, names):
    # Reads __dict__s only: getattr() could run a module __getattr__ (which may import) or a
    # descriptor. Past the module, only classes may be walked through (nested classes).
    found = vars(module).get(names[0])
    for name in names[1:]:
        if not isinstance(found, type):
            return None
        found = vars(found).get(name)
    return found
