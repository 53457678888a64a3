"""Remote control messages: how a client or the broker talks to every worker at once.

Every worker binds an exclusive, auto-deleted queue to the fanout exchange
``minitask.control``; a command published there reaches all of them. Replies, when asked for,
go through the default exchange to the queue named in ``reply_to``. Bodies are JSON::

    command: {"method": str, "arguments": {...}, "destination": [hostname, ...] or null,
              "reply_to": queue name or null, "ticket": str}
    reply:   {"ticket": str, "hostname": str, "reply": any}

Methods the worker answers: ``ping``, ``revoke`` (``task_ids``, ``terminate``, ``signal``),
``rate_limit`` (``task_name``, ``rate_limit``), ``shutdown``, ``add_consumer`` / ``cancel_consumer``
(``queue``), and the inspections ``active``, ``scheduled``, ``reserved``, ``revoked``,
``registered``, ``stats``.
"""

import json
import uuid

from . import protocol

__all__ = ["CONTROL_EXCHANGE", "CONTROL_TYPE", "REPLY_TYPE", "command_message",
           "reply_message", "decode_body"]

CONTROL_EXCHANGE = "minitask.control"
CONTROL_TYPE = "minitask.control"
REPLY_TYPE = "minitask.control.reply"


def command_message(method, arguments=None, destination=None, reply_to=None, ticket=None):
    """A broker message carrying one control command to every worker."""
    body = {"method": method, "arguments": arguments or {}, "destination": destination,
            "reply_to": reply_to, "ticket": ticket or uuid.uuid4().hex}
    return protocol.Message(
        body=json.dumps(body, separators=(",", ":")).encode("utf-8"),
        exchange=CONTROL_EXCHANGE, routing_key="", message_id=body["ticket"],
        type=CONTROL_TYPE, content_type="application/json", flags=0)


def reply_message(reply_to, ticket, hostname, reply):
    """A broker message carrying one worker's answer back to the asker's queue."""
    body = {"ticket": ticket, "hostname": hostname, "reply": reply}
    return protocol.Message(
        body=json.dumps(body, separators=(",", ":"), default=repr).encode("utf-8"),
        exchange="", routing_key=reply_to, message_id=ticket, type=REPLY_TYPE,
        content_type="application/json", flags=0)


def decode_body(body):
    """The JSON object of a control message or reply; ProtocolError when it is not one."""
    return protocol.decode_json(body, "control message")
