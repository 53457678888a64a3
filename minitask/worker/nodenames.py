"""A worker's name (``-n``) and its log file's (``-f``), with Celery's variables expanded.

``-n worker1@%h`` names the worker after this machine, as Celery's ``--hostname`` does:
``%h`` is the host name (with its domain, when the system's has one), ``%n`` the host name
alone, ``%d`` the domain alone, ``%%`` a percent sign. A log file may also use ``%p`` (the
worker's whole name), and ``%n`` there is the part of that name before ``@`` (Celery's
"variables in file paths"); ``%i`` is ``0`` and ``%I`` empty: the worker writes one log file,
its pool processes' lines included.
"""

import os
import re
import socket

__all__ = ["default_node_name", "node_name", "log_file_name"]

_VARIABLE = re.compile(r"%(.)")


def _expand(template, values):
    """`template` with each ``%x`` of `values` replaced; any other ``%x`` is left as it is."""
    return _VARIABLE.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def _host_values(host):
    name, _dot, domain = host.partition(".")
    return {"h": host, "n": name, "d": domain, "%": "%"}


def default_node_name():
    """``pid@host``: unique on a machine, and says where to look."""
    return "%s@%s" % (os.getpid(), socket.gethostname())


def node_name(template, host=None):
    """The worker's name from ``-n``, its ``%h``, ``%n`` and ``%d`` expanded."""
    return _expand(template, _host_values(host or socket.gethostname()))


def log_file_name(template, node):
    """The log file's path from ``-f``, for the worker named `node`."""
    name, _at, host = node.rpartition("@")
    values = _host_values(host or socket.gethostname())
    values.update(p=node, n=name or node, i="0", I="")
    return _expand(template, values)
