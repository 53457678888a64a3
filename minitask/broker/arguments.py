"""Reading command arguments, the same way for every command: one-line errors that say what.

A malformed argument raises `ProtocolError` (ERROR 400 to that client); a well-formed command
the broker refuses raises `BrokerError` with its code (`refuse`).
"""

import math

from ..exceptions import BrokerError, ProtocolError

__all__ = ["refuse", "name_arg", "names_arg", "seconds_arg", "check_queue_args", "utf8_length"]


def refuse(code, text):
    """The exception for a refusal with this protocol error code (404, 406, 409...)."""
    return BrokerError(text, code)


def utf8_length(value, key):
    """Bytes of `value` in UTF-8; ProtocolError for text UTF-8 cannot hold (lone surrogates,
    which JSON's \\u escapes can carry)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError("%r is not valid Unicode text" % key) from None


def name_arg(args, key):
    value = args.get(key)
    if not isinstance(value, str):
        raise ProtocolError("%r must be a string" % key)
    if utf8_length(value, key) > 255:
        raise ProtocolError("%r is longer than 255 bytes" % key)
    return value


def names_arg(args, key):
    values = args.get(key)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ProtocolError("%r must be a list of strings" % key)
    if any(utf8_length(v, key) > 255 for v in values):
        raise ProtocolError("%r holds a string longer than 255 bytes" % key)
    return values


def seconds_arg(args, key, maximum=None):
    """An optional finite, non-negative number of seconds (None when absent)."""
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0 or (maximum and value > maximum):
        raise ProtocolError("%r must be a number of seconds%s" % (
            key, " up to %g" % maximum if maximum else ""))
    return value


def check_queue_args(args):
    for key in ("max_length", "max_redeliveries"):
        value = args.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ProtocolError("%s must be a non-negative integer or null" % key)
    if args.get("dead_letter_queue") is not None:
        name_arg(args, "dead_letter_queue")
