"""The minitask wire protocol: frames, commands, replies. Pure functions; no sockets.

This docstring is the specification. It is enough to write a client in another language.

1. Transport
------------
A TCP stream (or TLS, for ``minitasks://`` URLs), by default on port 5679. On Linux a broker
without TLS also listens on the abstract UNIX socket ``"\0minitask-<port>"``; a client of a
loopback address may use it instead (the same frames, handshake and rules), and falls back
to TCP when it is not there. Any local user can bind that name first, so before sending a
byte over it a client asks the kernel who listens there (``SO_PEERCRED``) and uses it only
when that is its own user, root or the user it was told the broker runs as; otherwise it
closes it unused and takes TCP. A broker that finds the name taken serves TCP alone.
Every integer is big-endian. Strings are UTF-8. Times are
seconds since the Unix epoch as IEEE-754 doubles.

2. Frames
---------
Both directions carry the same frames::

    +------------+---------+-----------+----------------------+
    | length u32 | type u8 | seq u32   | body (length bytes)  |
    +------------+---------+-----------+----------------------+

``length`` counts the body only. ``seq`` ties a reply to its command: the client numbers the
commands it wants answered 1, 2, 3, ... (wrapping after 2**32-1, skipping 0) and the broker
answers with the same number. A command sent with ``seq = 0`` gets no reply on success (acks,
heartbeats, fire-and-forget results); if it fails, the ERROR frame carries seq 0. Frames from
the broker that answer nothing (DELIVER, HEARTBEAT) carry seq 0.

Several frames may travel in one TCP segment and one frame may be split across many: a reader
buffers bytes and cuts frames as they complete (see `Decoder`). Before the handshake completes
a frame body may be at most 4 KiB (`MAX_HANDSHAKE_BYTES`); after it, at most the broker's
``max_frame_bytes`` (announced in WELCOME; default 16 MiB). A longer length prefix is a
protocol error: the broker answers ERROR 413 and closes the connection. A frame begun must be
finished: one left incomplete for the broker's stall timeout (30 s) is ERROR 400 and a close,
and when the unfinished frames of all connections together hold more than the broker's cap
(256 MiB), the connections holding the most get ERROR 503 and are closed.

3. Bodies
---------
JSON bodies are a UTF-8 JSON object. Binary bodies are laid out below; ``str8`` is a u8 length
followed by that many bytes of UTF-8, ``str16`` likewise with a u16 length.

3.1 The message (PUBLISH body; stored and delivered unchanged)::

    flags        u8    bit 0 mandatory, bit 1 immediate, bit 2 persistent
    priority     u8    0..9, 0 is the highest; 255 = none given (the broker uses 4)
    not_before   f64   deliver no earlier than this (0 = now); a delayed message
    expires_at   f64   drop it (and mark its task REVOKED) after this (0 = never)
    message_id   str8  for task messages, the task id
    exchange     str8  "" is the default exchange
    routing_key  str8
    type         str8  for task messages, the task name
    content_type str8  e.g. "application/json"
    headers      str16 a JSON object, or empty; matched by headers exchanges
    body         the rest of the frame, opaque to the broker

3.2 DELIVER body: ``delivery_tag u64, consumer_tag u32, flags u8 (bit 0 redelivered),
deliveries u8`` followed by the message exactly as published (3.1).

3.3 ACK and REJECT bodies: ``flags u8, count u32, count x tag u64``. ACK flags: bit 0
multiple (also every unacked tag below the largest one given), bit 1 started (the message is
a task that has just started and stays the connection's until its result arrives; see 5).
REJECT flags: bit 0 requeue (else the message is dropped, or dead-lettered if its queue has
a dead-letter queue), bit 1 released, with bit 0: the message never started (a worker's warm
shutdown gives back what it prefetched), so this delivery does not count toward its queue's
``max_redeliveries`` (a broker older than the bit requeues it as any reject). START has the same layout (flags 0): the tasks started but are not acked
yet (``acks_late``).

3.4 RESULT_SET body, and the RESULT reply::

    task_id      str8
    state        u8    see STATES (0 PENDING .. 6 REVOKED)
    flags        u8    RESULT_SET: bit 0 store (0 = the task finished but nothing is stored:
                       ignore_result), bit 1 described (the two fields below are present);
                       RESULT: bit 0 ready (a final state)
    time         f64   RESULT_SET: time to live (0 = the broker's RESULT_EXPIRES);
                       RESULT: when the state was set (0 = unknown)
    content_type str8
    task_name    str8  only when described: the task's name, for the broker's counts
    runtime      f64   only when described: seconds the task ran (negative = it did not run)
    payload      the rest: the serialized result meta (see minitask.result)

A RESULT_SET of state STARTED (with the ``"task_states"`` feature, 4) is a running task's own
state (``update_state``): stored unless the task has a final result, it leaves the task
running (its handover and in-flight state stay) and counts no run; the state the task gave
is the payload's ``status``, which is what clients read from a STARTED result that has one.

3.5 ATOMIC body: whole frames (section 2), one after the other, each a PUBLISH (3.1), a
KV_SET (JSON) or a RESULT_SET (3.4), with seq 0; at least 1 and at most 10000 of them (and
no more than one frame holds: enough for a chord of a thousand tasks and its body). The
broker applies them in order as one unit: one journal record holds everything they write, so
a crash keeps all of it or none of it (a periodic task's send and the record of when it was
sent; a task's result and the tasks it unlocks). One reply for the unit: CONFIRM of the
ATOMIC's seq once that record is written, or one ERROR (with the code the failing command
would have had, or 507 for a failed journal write), in which case nothing of the unit took
effect. Waits on a result the unit stores are answered once that record is written. A frame
of another type, a seq other than 0, or bodies that do not add up to whole frames are ERROR
400. RESULT_SET inside ATOMIC needs the ``"atomic_results"`` feature (4): a broker without
it answers such a unit with ERROR 400 and applies none of it.

4. Commands (client -> broker) and their replies
-----------------------------------------------
``type``  name              body    reply
0x01      HELLO             JSON    WELCOME, or CHALLENGE when a secret is required
0x03      AUTH              JSON    WELCOME, or ERROR 401 and close
0x05      HEARTBEAT         empty*  none (either side may send it at any time)
0x06      CLOSE             empty   none; the broker closes after flushing its replies
0x10      DECLARE_EXCHANGE  JSON    OK {}
0x11      DELETE_EXCHANGE   JSON    OK {}
0x12      DECLARE_QUEUE     JSON    OK {"queue", "messages", "consumers"}
0x13      BIND              JSON    OK {}
0x14      UNBIND            JSON    OK {}
0x15      PURGE             JSON    OK {"messages": purged}
0x16      DELETE_QUEUE      JSON    OK {"messages": dropped}
0x20      PUBLISH           3.1     CONFIRM, or ERROR 312 / 313 / 507 / 413
0x21      CONSUME           JSON    OK {"consumer_tag"}
0x22      CANCEL            JSON    OK {}
0x23      QOS               JSON    OK {}
0x24      ACK               3.3     none
0x25      REJECT            3.3     none
0x26      START             3.3     none
0x27      ATOMIC            3.5     CONFIRM, or ERROR (the unit's first failure)
0x30      RESULT_SET        3.4     CONFIRM (when seq != 0)
0x31      RESULT_GET        JSON    RESULT
0x32      RESULT_WAIT       JSON    RESULT once the state is final, or at the timeout
0x33      RESULT_FORGET     JSON    OK {}
0x34      REVOKE            JSON    OK {}
0x35      CLAIM             JSON    OK {"claimed": n}
0x40      STATUS            JSON    OK {...}
0x41      LEASE             JSON    OK {"granted", "holder", "expires_in"}
0x42      KV_SET            JSON    OK {}
0x43      KV_GET            JSON    OK {"value"}
0x44      REVOKED           JSON    OK {"task_ids": [...]}

Broker -> client: 0x02 WELCOME (JSON), 0x04 CHALLENGE (JSON), 0x05 HEARTBEAT, 0x60 CONFIRM
(empty: every command numbered up to and including ``seq`` that has no reply of its own and
no ERROR has succeeded; publishes are in the journal), 0x61 ERROR (``code u16`` + UTF-8 text),
0x62 DELIVER (3.2), 0x63 RESULT (3.4), 0x64 OK (JSON).

JSON arguments (``?`` = optional, with its default):

- HELLO ``{"protocol": 1, "client": str?, "nonce": hex str?, "heartbeat": s? (0 = off),
  "worker": {hostname, pid, concurrency, queues, ...}?}``; WELCOME ``{"protocol": 1,
  "broker": str, "max_frame_bytes": int, "heartbeat": s, "proof": hex?, "features": [str]?}``.
  ``features`` names what this broker understands beyond protocol 1 as first shipped:
  ``"atomic"`` (the ATOMIC command with PUBLISH and KV_SET, 3.5), ``"atomic_results"``
  (RESULT_SET inside ATOMIC too), ``"described_results"`` (RESULT_SET's bit 1, 3.4) and
  ``"task_states"`` (a STARTED RESULT_SET, 3.4). A client uses such a thing only when the
  broker names it: an older broker, which
  sends no ``features``, answers an unknown command with ERROR 405 and closes the
  connection, and would read a described result's two extra fields as payload. A broker
  ignores HELLO keys it does not know and a client ignores WELCOME keys it does not know,
  so an older client simply never uses the newer commands.
  CHALLENGE ``{"nonce": hex}``; AUTH ``{"proof": hex}`` (see 6).
- DECLARE_EXCHANGE ``{"exchange", "type": "direct"|"topic"|"fanout"|"headers",
  "durable": true?, "auto_delete": false?, "passive": false?}``; DELETE_EXCHANGE
  ``{"exchange"}``.
- DECLARE_QUEUE ``{"queue", "durable": true?, "exclusive": false?, "auto_delete": false?,
  "passive": false?, "max_length": int?, "max_redeliveries": 10?,
  "dead_letter_queue": str?}``. ``queue`` "" asks the broker to name a new exclusive queue
  (``mt.gen-`` and 16 hex digits).
  Declaring an existing queue with other arguments is ERROR 406.
- BIND / UNBIND ``{"queue", "exchange", "binding_key": ""?, "arguments": {}?}``; for headers
  exchanges ``arguments`` holds the header values to match and ``"x-match": "all"|"any"``.
- PURGE / DELETE_QUEUE ``{"queue"}``.
- CONSUME ``{"queue", "no_ack": false?, "consumer_tag": int?}`` (a tag of the client's own
  choosing, or the broker picks one); CANCEL ``{"consumer_tag"}``;
  QOS ``{"prefetch_count": int}`` (0 = unlimited; counts the connection's unacked messages
  over all its consumers).
- RESULT_GET ``{"task_id"}``; RESULT_WAIT ``{"task_id", "timeout": s?}`` (no timeout = wait as
  long as the connection lives); RESULT_FORGET ``{"task_ids": [...]}``.
- REVOKE ``{"task_ids": [...], "terminate": false?, "signal": "SIGTERM"?}``: the broker keeps
  the ids until the results expire, drops queued messages of those tasks, marks them REVOKED
  and tells every worker through the control exchange.
- CLAIM ``{"task_ids": [...]}``: a worker that reconnects names the tasks it is still running.
- HEARTBEAT (*) from a worker may carry ``{"worker": {...}}``: its HELLO ``worker`` object
  as it is now (say ``"state": "degraded"``), which STATUS shows from then on. A broker
  before this one ignores the body. At most 4 KiB.
- STATUS ``{"scheduled": n?}``: queues, exchanges, workers and counts; with ``scheduled``,
  also the first n (at most 10000) messages the broker holds until their ``not_before``,
  soonest first, as ``"scheduled": [{"id", "name", "eta", "queue", "priority"}]``. LEASE ``{"name", "holder", "ttl": s}``. KV_SET ``{"key", "value"}``,
  KV_GET ``{"key"}``. REVOKED ``{}``.

5. Delivery rules
-----------------
Messages leave a queue in priority order (0 first), FIFO within a priority. A consumer's
connection gets messages while its unacked count is below its prefetch (QOS). A delivered
message stays the connection's until ACK or REJECT. When the connection closes or misses its
heartbeats, its unacked messages return to their queues ahead of newer ones, flagged
redelivered; a message delivered more than its queue's ``max_redeliveries`` times goes to the
dead-letter queue (``<queue>.dead`` unless named) instead. ACK with the started flag hands a
task over to the connection: if the connection is lost and no CLAIM for it arrives within the
broker's grace period (a few seconds), the broker stores FAILURE / WorkerLostError for it.

6. Handshake and lifecycle
--------------------------
::

    client                                      broker
      | HELLO {protocol, nonce_c} ------------------> |
      | <------------------------------- WELCOME {...} |   no secret configured
      |                                               |
      | <---------------------- CHALLENGE {nonce_b}    |   a secret is configured
      | AUTH {proof_c} -----------------------------> |   proof_c = HMAC-SHA256(secret,
      | <---------------------- WELCOME {proof_b}      |       "client:" nonce_c ":" nonce_b)
      |                                               |   proof_b = HMAC-SHA256(secret,
      | commands, replies, deliveries ...    <------> |       "broker:" nonce_b ":" nonce_c)
      | CLOSE ------------------------------------->  |
      |                                       (close) |

Nonces are 32 random bytes written as lowercase hex; the HMAC input is the UTF-8 text
``role:first_nonce:second_nonce`` and a proof is the HMAC digest in lowercase hex. Anything
but HELLO first, or AUTH when no CHALLENGE was sent, or any command before WELCOME (also
while an AUTH waits for its answer), is ERROR 405 and a closed connection.

A client that holds a secret accepts only the WELCOME that answers its AUTH and carries
``proof_b``: a WELCOME in answer to HELLO means the other end does not hold the secret (it is
not the broker, or a broker started without it), and the client refuses it.

What the broker allows a connection before WELCOME:

- The handshake, TLS included, must be done within the handshake timeout (10 s) of
  connecting; then ERROR 400 and a close (just a close while TLS has not started).
- Connections before WELCOME share a quarter of the broker's connection slots, and one peer
  (an IP address over TCP, a user on the local socket) a quarter of that. A newcomer over a
  share takes the slot of the oldest connection still in its handshake of its own peer (over
  the overall share: of the peer holding the most), one that has not sent its whole HELLO
  first; that connection gets ERROR 503 and is closed. A WELCOMEd connection is never closed
  to make room; when every slot is one, a newcomer gets ERROR 503.
- After a peer has failed AUTH five times, the broker holds its answers to that peer's later
  AUTHs, right or wrong: 0.1 s, doubling with each further failure, up to 2 s; a peer's
  failures are forgotten a minute after its last one. A client waits for the answer.

7. Errors
---------
ERROR codes (the client raises the class named):
312 UnroutableError, 313 NotDeliverableError, 400 ProtocolError (malformed body; the
connection is closed when the stream can no longer be trusted), 401 AuthenticationError,
404 BrokerError (no such queue or exchange), 405 ProtocolError (unknown command or wrong
state), 406 BrokerError (precondition: redeclared differently, default exchange bound),
408 TimeoutError, 409 BrokerError (exclusive queue in use), 413 PublishRefusedError
(message too big), 503 BrokerConnectionError (shutting down, too many connections, a
handshake dropped to make room, too much held in unfinished frames),
507 BrokerFullError, a PublishRefusedError (queue full, journal write failed: the same
may succeed later), 500 BrokerError.
"""

import collections
import hashlib
import hmac
import json
import struct
import sys

from .exceptions import (
    AuthenticationError, BrokerConnectionError, BrokerError, BrokerFullError,
    NotDeliverableError, ProtocolError, PublishRefusedError, TimeoutError, UnroutableError,
)

__all__ = [
    "PROTOCOL_VERSION", "HEADER", "Decoder", "encode_frame", "encode_json", "decode_json",
    "Message", "MessageFields", "encode_message", "decode_message", "parse_message",
    "message_id_of", "has_headers", "headers_of",
    "encode_deliver", "decode_deliver", "encode_tags", "decode_tags",
    "encode_result", "decode_result", "decode_result_set", "plain_result", "type_bytes_of",
    "encode_error", "decode_error", "error_for", "encode_atomic", "decode_atomic",
    "STATES", "STATE_CODES", "READY_STATES", "auth_proof", "drop_reason",
]

PROTOCOL_VERSION = 1
DEFAULT_PORT = 5679
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_HANDSHAKE_BYTES = 4096

HEADER = struct.Struct("!IBI")

# Frame types, client -> broker
HELLO, AUTH, HEARTBEAT, CLOSE = 0x01, 0x03, 0x05, 0x06
DECLARE_EXCHANGE, DELETE_EXCHANGE, DECLARE_QUEUE = 0x10, 0x11, 0x12
BIND, UNBIND, PURGE, DELETE_QUEUE = 0x13, 0x14, 0x15, 0x16
PUBLISH, CONSUME, CANCEL, QOS, ACK, REJECT, START = 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26
ATOMIC = 0x27
RESULT_SET, RESULT_GET, RESULT_WAIT, RESULT_FORGET = 0x30, 0x31, 0x32, 0x33
REVOKE, CLAIM = 0x34, 0x35
STATUS, LEASE, KV_SET, KV_GET, REVOKED = 0x40, 0x41, 0x42, 0x43, 0x44
# Frame types, broker -> client
WELCOME, CHALLENGE = 0x02, 0x04
CONFIRM, ERROR, DELIVER, RESULT, OK = 0x60, 0x61, 0x62, 0x63, 0x64

COMMAND_NAMES = {
    HELLO: "HELLO", AUTH: "AUTH", HEARTBEAT: "HEARTBEAT", CLOSE: "CLOSE",
    DECLARE_EXCHANGE: "DECLARE_EXCHANGE", DELETE_EXCHANGE: "DELETE_EXCHANGE",
    DECLARE_QUEUE: "DECLARE_QUEUE", BIND: "BIND", UNBIND: "UNBIND", PURGE: "PURGE",
    DELETE_QUEUE: "DELETE_QUEUE", PUBLISH: "PUBLISH", CONSUME: "CONSUME", CANCEL: "CANCEL",
    QOS: "QOS", ACK: "ACK", REJECT: "REJECT", START: "START", ATOMIC: "ATOMIC",
    RESULT_SET: "RESULT_SET",
    RESULT_GET: "RESULT_GET", RESULT_WAIT: "RESULT_WAIT", RESULT_FORGET: "RESULT_FORGET",
    REVOKE: "REVOKE", CLAIM: "CLAIM", STATUS: "STATUS", LEASE: "LEASE", KV_SET: "KV_SET",
    KV_GET: "KV_GET", REVOKED: "REVOKED", WELCOME: "WELCOME", CHALLENGE: "CHALLENGE",
    CONFIRM: "CONFIRM", ERROR: "ERROR", DELIVER: "DELIVER", RESULT: "RESULT", OK: "OK",
}

# Error codes (section 7)
UNROUTABLE, NOT_DELIVERABLE = 312, 313
BAD_FRAME, AUTH_FAILED, NOT_FOUND, COMMAND_INVALID = 400, 401, 404, 405
PRECONDITION_FAILED, TIMED_OUT, RESOURCE_LOCKED, TOO_LARGE = 406, 408, 409, 413
INTERNAL, UNAVAILABLE, REFUSED = 500, 503, 507

_ERROR_CLASSES = {
    UNROUTABLE: UnroutableError, NOT_DELIVERABLE: NotDeliverableError,
    BAD_FRAME: ProtocolError, AUTH_FAILED: AuthenticationError, NOT_FOUND: BrokerError,
    COMMAND_INVALID: ProtocolError, PRECONDITION_FAILED: BrokerError, TIMED_OUT: TimeoutError,
    RESOURCE_LOCKED: BrokerError, TOO_LARGE: PublishRefusedError, INTERNAL: BrokerError,
    UNAVAILABLE: BrokerConnectionError, REFUSED: BrokerFullError,
}

# Task states, in the order a task moves through them; the index is the wire code.
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED")
STATE_CODES = {name: code for code, name in enumerate(STATES)}
READY_STATES = frozenset(("SUCCESS", "FAILURE", "REVOKED"))

# Message flags (3.1), delivery flags (3.2), ack flags (3.3), result flags (3.4)
MANDATORY, IMMEDIATE, PERSISTENT = 0x01, 0x02, 0x04
REDELIVERED = 0x01
MULTIPLE, STARTED = 0x01, 0x02
REQUEUE, RELEASE = 0x01, 0x02
STORE, READY = 0x01, 0x01
DESCRIBED = 0x02
# WELCOME's features (4): what this broker understands beyond protocol 1 as first published.
FEATURES = ("atomic", "atomic_results", "described_results", "task_states")
# Queues the broker names itself (DECLARE_QUEUE with queue ""): replies, workers' control.
GENERATED_QUEUE_PREFIX = "mt.gen-"
NO_PRIORITY = 255
DEFAULT_PRIORITY = 4
# Times past this (the year 5138) are refused: NaN and infinities would break every timer.
_FAR_FUTURE = 1e11


class Decoder:
    """Cut a byte stream into frames; a frame split across reads is the normal case.

    The buffer holds at most one incomplete frame plus whatever one `feed` brought, so a
    peer cannot make it grow past its frame limit: a length prefix over the limit raises
    `ProtocolError` before any of that body is buffered.
    """

    def __init__(self, max_frame_bytes=MAX_FRAME_BYTES):
        self._buffer = bytearray()
        self._offset = 0
        self.max_frame_bytes = max_frame_bytes

    def feed(self, data):
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def next_frame(self):
        """Return the next whole frame as ``(type, seq, body)``, or None until more bytes come."""
        buffer, start = self._buffer, self._offset
        if len(buffer) - start < 9:
            return None
        length, kind, seq = HEADER.unpack_from(buffer, start)
        if length > self.max_frame_bytes:
            raise ProtocolError("frame of %d bytes is over the %d-byte limit"
                                % (length, self.max_frame_bytes), TOO_LARGE)
        end = start + 9 + length
        if len(buffer) < end:
            return None
        self._offset = end
        return kind, seq, bytes(buffer[start + 9:end])

    def frames(self):
        """Yield every whole frame buffered so far."""
        frame = self.next_frame()
        while frame is not None:
            yield frame
            frame = self.next_frame()

    @property
    def pending_bytes(self):
        """Bytes of an incomplete frame still waiting for the rest (used for stall timeouts)."""
        return len(self._buffer) - self._offset


def local_socket_name(port):
    """The abstract UNIX socket a broker on `port` also listens on (Linux), or None.

    Clients of a loopback URL try it first and fall back to TCP (see `minitask.transport.builtin`).
    """
    if not sys.platform.startswith("linux"):
        return None
    return "\0minitask-%d" % port


def auth_proof(secret, role, first_nonce, second_nonce):
    """The handshake's proof of knowing `secret` (section 6): HMAC-SHA256 over the prover's
    role and both nonces, in lowercase hex. Bound to both nonces, so a recorded proof is
    useless on another connection; bound to the role, so one side's proof cannot be
    reflected back as the other's."""
    text = ("%s:%s:%s" % (role, first_nonce, second_nonce)).encode("utf-8")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def drop_reason(task_id, expires_at, now, revoked=()):
    """Why a task's message must not be handed on at `now`: "revoked" when `task_id` is in
    `revoked`, "expired" when its `expires_at` (0 or None: never) has passed; None when it
    may go on. The one rule, asked by the broker before a message goes to a queue or a
    consumer and when its expiry comes, and by the worker before it starts the task."""
    if revoked and task_id in revoked:
        return "revoked"
    if expires_at and expires_at <= now:
        return "expired"
    return None


def encode_frame(kind, seq, body=b""):
    return HEADER.pack(len(body), kind, seq) + body


def encode_json(kind, seq, obj):
    return encode_frame(kind, seq, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def decode_json(body, what="command"):
    """Parse a JSON object body; anything else is a ProtocolError naming what was wrong."""
    try:
        obj = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("%s body is not valid JSON: %s" % (what, exc)) from None
    if not isinstance(obj, dict):
        raise ProtocolError("%s body must be a JSON object, got %s" % (what, type(obj).__name__))
    return obj


# --- messages (3.1) -----------------------------------------------------------------------

_MESSAGE_FIXED = struct.Struct("!BBdd")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")


class Message:
    """A decoded message: everything in 3.1. The broker decodes only what it routes on."""

    __slots__ = ("flags", "priority", "not_before", "expires_at", "message_id", "exchange",
                 "routing_key", "type", "content_type", "headers", "body")

    def __init__(self, body=b"", exchange="", routing_key="", message_id="", type="",
                 content_type="application/json", headers=None, priority=None,
                 not_before=0.0, expires_at=0.0, flags=PERSISTENT):
        self.flags = flags
        self.priority = priority
        self.not_before = not_before
        self.expires_at = expires_at
        self.message_id = message_id
        self.exchange = exchange
        self.routing_key = routing_key
        self.type = type
        self.content_type = content_type
        self.headers = headers or {}
        self.body = body

    def __repr__(self):
        return "<Message %s %r -> %r/%r>" % (self.message_id, self.type, self.exchange,
                                             self.routing_key)


def _str8(value, what):
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ProtocolError("%s is %d bytes long; the limit is 255" % (what, len(data)))
    return _U8.pack(len(data)) + data


_str8_cache = {}


def _cached_str8(value, what):
    """`_str8` for the few names every message repeats (exchange, key, type, content type)."""
    encoded = _str8_cache.get(value)
    if encoded is None:
        encoded = _str8(value, what)
        if len(_str8_cache) < 4096:
            _str8_cache[value] = encoded
    return encoded


def encode_message(message):
    """Encode a Message as a PUBLISH body (3.1)."""
    priority = NO_PRIORITY if message.priority is None else message.priority
    headers = (json.dumps(message.headers, separators=(",", ":")).encode("utf-8")
               if message.headers else b"")
    if len(headers) > 0xFFFF:
        raise ProtocolError("message headers are %d bytes; the limit is 65535" % len(headers))
    return b"".join((
        _MESSAGE_FIXED.pack(message.flags, priority, message.not_before or 0.0,
                            message.expires_at or 0.0),
        _str8(message.message_id, "message_id"), _cached_str8(message.exchange, "exchange"),
        _cached_str8(message.routing_key, "routing_key"), _cached_str8(message.type, "type"),
        _cached_str8(message.content_type, "content_type"),
        _U16.pack(len(headers)), headers, message.body))


# The five str8 fields follow the fixed part in this order; message_id's length byte is at
# `_ID_AT`, which lets `message_id_of` read it without walking the rest.
_MESSAGE_FIXED_UNPACK = _MESSAGE_FIXED.unpack_from
_ID_AT = _MESSAGE_FIXED.size

MessageFields = collections.namedtuple(
    "MessageFields", "flags priority not_before expires_at message_id exchange routing_key "
                     "type content_type headers_at")
MessageFields.__doc__ = """An encoded message's fields but its headers and body (3.1).

`priority` is None when none was given; `headers_at` is where the headers' u16 length is,
for `headers_of`."""


def _str8_at(data, offset):
    end = offset + 1 + data[offset]
    if end > len(data):
        raise ProtocolError("a field runs past the end of the frame")
    return data[offset + 1:end].decode("utf-8"), end


def parse_message(data):
    """The fields of an encoded message (3.1), checked: the one parser of the layout.

    The broker routes on these, the worker schedules on them; neither needs the headers
    (`headers_of`) or the body. Raises ProtocolError on anything malformed.
    """
    # Every publish passes here, so the five fields are read inline. A slice past the end
    # is only shorter: the one length check after them covers every field.
    try:
        flags, priority, not_before, expires_at = _MESSAGE_FIXED_UNPACK(data, 0)
        start = _ID_AT + 1
        end = start + data[_ID_AT]
        message_id = data[start:end].decode("utf-8")
        start = end + 1
        end = start + data[end]
        exchange = data[start:end].decode("utf-8")
        start = end + 1
        end = start + data[end]
        routing_key = data[start:end].decode("utf-8")
        start = end + 1
        end = start + data[end]
        kind = data[start:end].decode("utf-8")
        start = end + 1
        end = start + data[end]
        content_type = data[start:end].decode("utf-8")
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError("malformed message: %s" % (exc,)) from None
    offset = end
    if offset + 2 > len(data):
        raise ProtocolError("malformed message: cut short before its headers")
    if priority == NO_PRIORITY:
        priority = None
    elif priority > 9:
        raise ProtocolError("message priority %d is outside 0..9" % priority)
    if not (0.0 <= not_before < _FAR_FUTURE and 0.0 <= expires_at < _FAR_FUTURE):
        raise ProtocolError("message not_before/expires_at must be epoch seconds (or 0)")
    return MessageFields(flags, priority, not_before, expires_at, message_id, exchange,
                         routing_key, kind, content_type, offset)


def message_id_of(data):
    """The message_id of an encoded message that was parsed once already (the broker's hot
    path: a delivery or an ack needs the task id and nothing else)."""
    return data[_ID_AT + 1:_ID_AT + 1 + data[_ID_AT]].decode("utf-8")


def type_bytes_of(data):
    """The type (for tasks, the name) of an encoded message that was parsed once already, as
    undecoded bytes (the broker's hot path: counted per delivery, decoded when reported)."""
    offset = _ID_AT
    for _ in range(3):                      # past message_id, exchange and routing_key
        offset += 1 + data[offset]
    return data[offset + 1:offset + 1 + data[offset]]


def has_headers(data, headers_at):
    """Whether an encoded message carries headers (workflow fields), given `parse_message`'s
    ``headers_at``, without decoding them."""
    return _U16.unpack_from(data, headers_at)[0] > 0


def headers_of(data, headers_at):
    """The headers object of an encoded message, given `parse_message`'s ``headers_at``."""
    (length,) = _U16.unpack_from(data, headers_at)
    if not length:
        return {}
    raw = data[headers_at + 2:headers_at + 2 + length]
    if len(raw) != length:
        raise ProtocolError("message headers run past the end of the frame")
    return decode_json(bytes(raw), "message headers")


def decode_message(data):
    """Decode an encoded message (3.1) whole into a Message; ProtocolError when malformed."""
    fields = parse_message(data)
    headers = headers_of(data, fields.headers_at)
    body_at = fields.headers_at + 2 + _U16.unpack_from(data, fields.headers_at)[0]
    return Message(bytes(data[body_at:]), fields.exchange, fields.routing_key,
                   fields.message_id, fields.type, fields.content_type, headers,
                   fields.priority, fields.not_before, fields.expires_at, fields.flags)


# --- deliveries (3.2) ---------------------------------------------------------------------

_DELIVER = struct.Struct("!IBIQIBB")     # frame header + delivery prefix, packed at once


def encode_deliver(delivery_tag, consumer_tag, redelivered, deliveries, message_data):
    """A whole DELIVER frame (header included) for an already-encoded message."""
    return _DELIVER.pack(14 + len(message_data), DELIVER, 0, delivery_tag, consumer_tag,
                         REDELIVERED if redelivered else 0, min(deliveries, 255)) + message_data


_DELIVER_PREFIX = struct.Struct("!QIBB")


def decode_deliver(body):
    """``(delivery_tag, consumer_tag, redelivered, deliveries, message_data)``."""
    if len(body) < _DELIVER_PREFIX.size:
        raise ProtocolError("DELIVER body is %d bytes, shorter than its prefix" % len(body))
    tag, consumer_tag, flags, deliveries = _DELIVER_PREFIX.unpack_from(body, 0)
    return tag, consumer_tag, bool(flags & REDELIVERED), deliveries, body[_DELIVER_PREFIX.size:]


# --- acks, rejects, starts (3.3) ----------------------------------------------------------

_TAGS_HEAD = struct.Struct("!BI")


# --- ATOMIC (3.5) --------------------------------------------------------------------------

ATOMIC_COMMANDS = (PUBLISH, KV_SET, RESULT_SET)
MAX_ATOMIC_FRAMES = 10000


def encode_atomic(seq, frames):
    """A whole ATOMIC frame around `frames` (whole encoded frames, each with seq 0)."""
    body = b"".join(frames)
    return HEADER.pack(len(body), ATOMIC, seq) + body


def decode_atomic(body):
    """``[(type, body)]`` of the frames an ATOMIC body holds; ProtocolError if malformed."""
    frames, offset, end = [], 0, len(body)
    while offset < end:
        if end - offset < HEADER.size:
            raise ProtocolError("ATOMIC body ends inside a frame header")
        length, kind, seq = HEADER.unpack_from(body, offset)
        stop = offset + HEADER.size + length
        if stop > end:
            raise ProtocolError("ATOMIC body ends inside a %s frame" % command_name(kind))
        if kind not in ATOMIC_COMMANDS:
            raise ProtocolError("ATOMIC may hold PUBLISH, KV_SET and RESULT_SET frames, "
                                "not %s" % command_name(kind))
        if seq:
            raise ProtocolError("a frame inside ATOMIC must have seq 0, not %d" % seq)
        frames.append((kind, body[offset + HEADER.size:stop]))
        offset = stop
        if len(frames) > MAX_ATOMIC_FRAMES:
            raise ProtocolError("ATOMIC holds more than %d frames" % MAX_ATOMIC_FRAMES)
    if not frames:
        raise ProtocolError("ATOMIC holds no frame")
    return frames


def encode_tags(kind, flags, tags, seq=0):
    """A whole ACK / REJECT / START frame for these delivery tags."""
    body = _TAGS_HEAD.pack(flags, len(tags)) + struct.pack("!%dQ" % len(tags), *tags)
    return HEADER.pack(len(body), kind, seq) + body


def decode_tags(body):
    """``(flags, [tags])``; raises ProtocolError when the count and the length disagree."""
    if len(body) < 5:
        raise ProtocolError("tag list body is %d bytes; at least 5 expected" % len(body))
    flags, count = _TAGS_HEAD.unpack_from(body, 0)
    if len(body) != 5 + 8 * count:
        raise ProtocolError("tag list says %d tags but carries %d bytes" % (count, len(body) - 5))
    return flags, list(struct.unpack_from("!%dQ" % count, body, 5))


# --- results (3.4) ------------------------------------------------------------------------

_RESULT_FIXED = struct.Struct("!BBd")
_F64 = struct.Struct("!d")


def encode_result(kind, seq, task_id, state, flags, time, content_type, payload,
                  task_name=None, runtime=None):
    """A whole RESULT_SET or RESULT frame; a RESULT_SET with `task_name` is described (3.4),
    with `runtime` None for a task that did not run."""
    described = b""
    if task_name is not None:
        flags |= DESCRIBED
        described = _str8(task_name, "task name") + _F64.pack(
            -1.0 if runtime is None else runtime)
    body = b"".join((_str8(task_id, "task_id"),
                     _RESULT_FIXED.pack(STATE_CODES[state], flags, time or 0.0),
                     _str8(content_type, "content_type"), described, payload))
    return HEADER.pack(len(body), kind, seq) + body


def _result_head(body):
    """``(task_id, state, flags, time, content_type, offset of what follows)``."""
    try:
        task_id, offset = _str8_at(body, 0)
        code, flags, time = _RESULT_FIXED.unpack_from(body, offset)
        content_type, offset = _str8_at(body, offset + _RESULT_FIXED.size)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError("malformed result: %s" % (exc,)) from None
    if code >= len(STATES):
        raise ProtocolError("result state code %d is unknown" % code)
    return task_id, STATES[code], flags, time, content_type, offset


def decode_result(body):
    """``(task_id, state, flags, time, content_type, payload)`` of a RESULT reply."""
    task_id, state, flags, time, content_type, offset = _result_head(body)
    return task_id, state, flags, time, content_type, bytes(body[offset:])


def decode_result_set(body):
    """``(task_id, state, flags, ttl, content_type, payload, task_name, runtime)`` of a
    RESULT_SET; the last two are None unless it is described (runtime None: did not run)."""
    task_id, state, flags, ttl, content_type, offset = _result_head(body)
    task_name = runtime = None
    if flags & DESCRIBED:
        try:
            task_name, offset = _str8_at(body, offset)
            (runtime,) = _F64.unpack_from(body, offset)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ProtocolError("malformed result description: %s" % (exc,)) from None
        offset += _F64.size
        if not runtime >= 0.0:              # negative, or NaN
            runtime = None
    return task_id, state, flags, ttl, content_type, bytes(body[offset:]), task_name, runtime


def plain_result(frame):
    """A described RESULT_SET frame without its description, for a broker that lacks the
    feature; any other frame unchanged."""
    if frame[4] != RESULT_SET or not frame[HEADER.size + 1 + frame[HEADER.size] + 1] \
            & DESCRIBED:
        return frame
    task_id, state, flags, ttl, content_type, payload, _name, _runtime = \
        decode_result_set(frame[HEADER.size:])
    (seq,) = struct.unpack_from("!I", frame, 5)
    return encode_result(RESULT_SET, seq, task_id, state, flags & ~DESCRIBED, ttl,
                         content_type, payload)


# --- errors (7) ---------------------------------------------------------------------------

_U16_ERROR = struct.Struct("!H")


def encode_error(seq, code, text):
    body = _U16_ERROR.pack(code) + text.encode("utf-8")[:4000]
    return HEADER.pack(len(body), ERROR, seq) + body


def decode_error(body):
    if len(body) < 2:
        return INTERNAL, "malformed ERROR frame"
    (code,) = _U16_ERROR.unpack_from(body, 0)
    return code, body[2:].decode("utf-8", "replace")


def error_for(code, text):
    """The exception a client raises for an ERROR frame."""
    cls = _ERROR_CLASSES.get(code, BrokerError)
    return cls(text, code) if cls in (BrokerError, ProtocolError) else cls(text)


def code_for(exc):
    """The ERROR code the broker sends for an exception raised while handling a command."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    for candidate, cls in _CODE_ORDER:
        if isinstance(exc, cls):
            return candidate
    return INTERNAL


# Most specific classes first, so a subclass is not answered with its parent's code.
_CODE_ORDER = [(UNROUTABLE, UnroutableError), (NOT_DELIVERABLE, NotDeliverableError),
               (AUTH_FAILED, AuthenticationError), (REFUSED, PublishRefusedError),
               (TIMED_OUT, TimeoutError), (BAD_FRAME, ProtocolError),
               (UNAVAILABLE, BrokerConnectionError)]


def command_name(kind):
    return COMMAND_NAMES.get(kind, "0x%02x" % kind)
