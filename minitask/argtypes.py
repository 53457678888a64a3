"""Argument types for the command line: each turns text into a value or says what was wrong.

Used by every subcommand's parser (cli.py, admin.py, bench.py), so a mistake reads the same
wherever it is made.
"""

import argparse

__all__ = ["positive_int", "seconds", "positive_seconds", "port", "host_port", "comma_list",
           "loglevel", "pool"]


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("%r must be at least 1" % text)
    return value


def seconds(text):
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not value >= 0:                   # also refuses nan
        raise argparse.ArgumentTypeError("%r must not be negative" % text)
    return value


def positive_seconds(text):
    value = seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("%r must be more than 0" % text)
    return value


def port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a port number" % text) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port %r is outside 0..65535" % text)
    return value


def host_port(text):
    host, sep, number = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("%r: expected HOST:PORT" % text)
    return host.strip("[]"), port(number)


def comma_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


# Celery takes its levels in any case, and FATAL and WARN besides.
_LOGLEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "WARN": "WARNING",
              "ERROR": "ERROR", "CRITICAL": "CRITICAL", "FATAL": "CRITICAL"}


def loglevel(text):
    """A log level in any case (``--loglevel=info`` as Celery users type it)."""
    level = _LOGLEVELS.get(text.strip().upper())
    if level is None:
        raise argparse.ArgumentTypeError("%r is not a log level: DEBUG, INFO, WARNING, ERROR "
                                         "or CRITICAL" % text)
    return level


def pool(text):
    """Celery's ``-P``: minitask has one pool, of processes (Celery's prefork)."""
    if text.strip().lower() in ("prefork", "processes"):
        return "prefork"
    raise argparse.ArgumentTypeError("%r: minitask runs tasks in pool processes only "
                                     "(prefork); size the pool with -c N (-c 1 for one)" % text)
