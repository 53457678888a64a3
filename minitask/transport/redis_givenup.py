"""The workflow of messages Redis gives up on by itself: errbacks and the rest of a chain.

A message that a script drops or dead-letters without a worker (expired in its queue or
already when published, delivered too often, rejected), or a task that LOSE fails because its
worker was lost (its message kept at the handover), gets its result there (REVOKED or
FAILURE), but its errbacks must be routed, and only the Python side routes. So the script
also writes such a message, when it has headers, to the ``givenup`` stream (`redis_keys`),
and `send_given_up` does the rest as a worker that drops a message does: it publishes the
errbacks and gives the rest of the chain the same outcome, then deletes the entries.

It runs right after what may give up (a publish of an expired message, a reject, an expiry
or LOSE run) and at every sweep of every worker, so entries left by a process killed on the way
are sent by another within a sweep. One process at a time takes the stream (a lock with a
TTL); one killed between sending and deleting leaves its entries to be sent again:
errbacks, like tasks, are at-least-once.
"""

import logging
import time
import uuid

from .. import protocol as P
from ..exceptions import MinitaskError, ProtocolError, ReplyError
from ..joins import headers_of, unlocked_by
from . import redis_scripts as S
from .redis_replies import STALE, refused, transport_meta

__all__ = ["send_given_up", "may_give_up"]

logger = logging.getLogger(__name__)

BATCH = 100                 # entries a round trip
ROUNDS = 10                 # batches a call at most (the next sweep takes the rest)
LOCK_MS = 30000             # how long a process killed while sending keeps the others out
STALE_ATTEMPTS = 3


def may_give_up(fields, now=None):
    """Whether a publish of this parsed message may leave an entry: it expires within a
    second of `now` (Redis's clock may be ahead of ours). Headers are checked by Redis."""
    return 0 < fields.expires_at <= (time.time() if now is None else now) + 1.0


def send_given_up(client):
    """Send what the given-up stream holds (see the module docstring); returns how many
    entries were taken. Does nothing while another process holds the stream."""
    keys, redis = client.keys, client.redis
    token = uuid.uuid4().hex
    taken = 0
    for _ in range(ROUNDS):
        locked, entries = redis.pipeline([
            ("SET", keys.given_up_lock, token, "NX", "PX", LOCK_MS),
            ("XRANGE", keys.given_up, "-", "+", "COUNT", BATCH)])
        if locked is None:
            return taken                # another process is at it
        if isinstance(locked, ReplyError) or isinstance(entries, ReplyError):
            logger.error("%s: could not read the given-up messages: %s",
                         client.options.display, locked if isinstance(locked, ReplyError)
                         else entries)
            return taken
        if entries:
            _send(client, _units(entries))
        # Deleted once sent; the lock goes too, unless it expired and is another's now.
        client.run(([("XDEL", keys.given_up) + tuple(entry[0] for entry in entries)]
                    if entries else [])
                   + [(S.UNLOCK, [keys.given_up_lock], [token])])
        taken += len(entries)
        if len(entries) < BATCH:
            return taken
    return taken


def _units(entries):
    """What the entries unlock, as ``(task id, errbacks, result)`` units, each one PUBLISH
    call: an entry's errbacks, and one result for each task of the rest of its chain."""
    units = []
    for _entry_id, fields in entries:
        found = dict(zip(fields[0::2], fields[1::2]))
        data = found.get(b"m", b"")
        try:
            task_id = P.parse_message(data).message_id
            errbacks, chained = unlocked_by(headers_of(data))
        except ProtocolError as exc:
            logger.error("a given-up message is malformed and its workflow is dropped: %s", exc)
            continue
        if errbacks:
            units.append((task_id, errbacks, None))
        if chained:
            state = found.get(b"s", b"REVOKED").decode("ascii", "replace")
            content_type, payload = transport_meta(
                task_id, state, found.get(b"w", b"").decode("utf-8", "replace"), time.time(),
                found.get(b"k", b"").decode("ascii", "replace"))
            units += [(task_id, (), (other, state, content_type, payload, True))
                      for other in chained]
    return units


def _send(client, units):
    """Run the units' PUBLISH calls, routed again when the topology changed meanwhile. A unit
    whose errbacks cannot be routed (an exchange deleted since) is logged and left out."""
    for _ in range(STALE_ATTEMPTS):
        calls, built = [], []
        for unit in units:
            task_id, errbacks, result = unit
            try:
                calls.append(client.publish_call(client.publications(errbacks), result=result))
            except MinitaskError as exc:
                logger.error("task %s: its errbacks are not sent: %s", task_id, exc)
                continue
            built.append(unit)
        stale = []
        for unit, reply in zip(built, client.run(calls) if calls else ()):
            if isinstance(reply, ReplyError):
                error = refused(reply)
                if error is STALE:
                    stale.append(unit)
                else:
                    logger.error("task %s: its workflow is not sent: %s", unit[0], error)
        if not stale:
            return
        client.reload()
        units = stale
    logger.error("the workflow of given-up tasks is not sent: the topology kept changing")
