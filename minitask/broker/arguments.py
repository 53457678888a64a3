"""Reading command arguments, the same way for every command: one-line errors that say what.

A malformed argument raises `ProtocolError` (ERROR 400 to that client); a well-formed command
the broker refuses raises `BrokerError` with its code (`refuse`).
"""

from ..exceptions import BrokerError, ProtocolError

__all__ = ["refuse", "name_arg", "names_arg", "check_queue_args"]


def refuse(code, text):
    """The exception for a refusal with this protocol error code (404, 406, 409...)."""
    return BrokerError(text, code)


def name_arg(args, key):
    value = args.get(key)
    if not isinstance(value, str):
        raise ProtocolError("%r must be a string" % key)
    if len(value.encode("utf-8")) > 255:
        raise ProtocolError("%r is longer than 255 bytes" % key)
    return value



def names_arg(args, key):
    values = args.get(key)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ProtocolError("%r must be a list of strings" % key)
    if any(len(v.encode("utf-8")) > 255 for v in values):
        raise ProtocolError("%r holds a string longer than 255 bytes" % key)
    return values



def check_queue_args(args):
    for key in ("max_length", "max_redeliveries"):
        value = args.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ProtocolError("%s must be a non-negative integer or null" % key)
    dlq = args.get("dead_letter_queue")
    if dlq is not None and not isinstance(dlq, str):
        raise ProtocolError("dead_letter_queue must be a queue name")

