"""What Redis answers the Redis transport, read back: refusals, results, live consumers. Pure.

The scripts (`redis_scripts`) refuse with error replies ``MT<code> <text>`` and ``STALE``;
`refused` turns one into the exception a transport raises (`protocol.error_for`), or into
`STALE` for the caller to reload its topology and try again. Results are stream entries with
the fields ``s`` (state), ``t`` (ms), ``c`` (content type), ``p`` (payload), and ``w`` for a
state the transport stored itself (why: expired, revoked, the worker was lost), whose result
meta is built here when it is read.
"""

from .. import control, protocol as P
from ..exceptions import (
    BrokerFullError, ChordError, DeadLetteredError, ProtocolError, TaskRevokedError,
    WorkerLostError,
)
from ..message import ResultMeta, encode_result_meta
from . import base

__all__ = ["STALE", "refused", "redis_ms", "live_consumers", "count_of", "read_result",
           "transport_meta", "control_body"]


class _Marker:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


STALE = _Marker("STALE")     # refused(): the topology changed; reload and decide again


def refused(reply):
    """The exception a script's error reply stands for (MT<code> text), `STALE`, or the
    ReplyError itself for any other."""
    if reply.prefix == "STALE":
        return STALE
    text = str(reply)
    if reply.prefix.startswith("MT") and reply.prefix[2:].isdigit():
        # A refusal raised inside a helper gets the script's name appended: not for users.
        text = text[len(reply.prefix) + 1:].split(" script: ", 1)[0]
        return P.error_for(int(reply.prefix[2:]), text)
    if reply.prefix == "OOM":           # maxmemory reached under noeviction: nothing written
        return BrokerFullError("Redis is out of memory (maxmemory): %s"
                                   % text.split(" script: ", 1)[0])
    return reply


def redis_ms(time_reply):
    """Milliseconds of a TIME reply."""
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


def live_consumers(flat, now_ms):
    """Consumer ids of a qconsumers hash (HGETALL reply) still alive at `now_ms` (none from
    an error reply: the key holds something else)."""
    live = []
    if not isinstance(flat, list):
        return live
    for consumer, value in zip(flat[0::2], flat[1::2]):
        _credit, _, live_until = value.partition(b" ")
        if count_of(live_until) > now_ms:
            live.append(consumer.decode("utf-8", "replace"))
    return live


def count_of(value):
    """A counter's value as Redis returns it (bytes, int or None); 0 for anything else, which
    another program wrote: a figure is not worth a failed call."""
    if isinstance(value, int):
        return value
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def read_result(task_id, latest, inflight, handover):
    """``(Result, entry id)`` from a result stream's last entry and the task's inflight and
    handover values, as `Client.get_result` reads them."""
    if latest:
        entry_id, flat = latest[0]
        fields = dict(zip(flat[0::2], flat[1::2]))
        try:
            state = fields[b"s"].decode("ascii")
            date_done = int(fields[b"t"]) / 1000.0
            content_type, payload = fields.get(b"c", b"").decode("utf-8"), fields.get(b"p", b"")
            why, kind = fields.get(b"w"), fields.get(b"k", b"").decode("utf-8")
            if why is not None:
                why = why.decode("utf-8")
        except (KeyError, ValueError) as exc:   # another program's entry (UnicodeError too)
            raise ProtocolError("result of %s cannot be decoded: its entry %s is not one "
                                "minitask wrote (%s: %s)" % (task_id, entry_id.decode("ascii"),
                                                             type(exc).__name__, exc)) from None
        if why is not None:
            content_type, payload = transport_meta(task_id, state, why, date_done, kind)
        return (base.Result(state, state in P.READY_STATES, date_done, content_type,
                            payload), entry_id.decode("ascii"))
    state = "PENDING"
    if handover is not None:
        state = "STARTED"
    elif inflight is not None:
        state = inflight.split(b"\t", 1)[0].decode("ascii")
    return base.Result(state, False, 0.0, "", b""), "0-0"


def transport_meta(task_id, state, why, date_done, kind=""):
    """The result meta of a state the transport stored itself: REVOKED (expired, revoked),
    or FAILURE of a `kind`: "chord" (a header task failed), "dead" (dead-lettered or
    dropped), none (the worker running it was lost)."""
    if state == "REVOKED":
        exc = TaskRevokedError("task %s %s" % (task_id, why))
    elif kind == "chord":
        exc = ChordError(why)
    elif kind == "dead":
        exc = DeadLetteredError("task %s %s" % (task_id, why))
    else:
        exc = WorkerLostError(why)
    return encode_result_meta(ResultMeta(task_id, state, exc, None, "", 0, date_done), "json")


def control_body(data):
    """The JSON body of an encoded control message, or None when it is not one."""
    try:
        return control.decode_body(P.decode_message(data).body)
    except (ProtocolError, TypeError):
        return None
