"""Everything the broker knows, changed only by commands and the passing of time.

No sockets, no clock of its own: the server feeds it frames with `handle()` and the time with
`tick()`; what it answers lands in each `Session.out`, what must survive a crash in its
`Sink`. `BrokerState` is the sum of parts, each with its own data and the references it
needs handed in, none reaching into another's attributes::

    handle(frame) ─┬─ before WELCOME ──> Handshake        HELLO, AUTH
                   ├─ names ───────────> Topology         exchanges, queues, bindings
                   ├─ messages ────────> Messages ──> Topology, ResultCommands
                   ├─ tasks ───────────> ResultCommands   results, revokes, handovers, settings
                   └─ its own: ATOMIC, REVOKE, STATUS, HEARTBEAT, CLOSE (several parts)
    every part ──> Sink: journal records, confirms, units a failed write refuses

One loop turn (`loop.Loop` drives it)::

    handle() x N --> take_records() --> journal.write() --+--> take_confirms() --> dispatch()
                                                           +--> refuse_turn() on a failed write

Invariant: a publish is confirmed, and a wait on a result stored in an ATOMIC is answered,
only after the journal write that holds it; deliveries come after that write too.
"""

import logging

from .. import control, protocol as P
from ..exceptions import MinitaskError, ProtocolError
from ..log import Throttle, folded
from . import records as rc
from .chords import PARKING, Chords
from .handshake import Handshake
from .journal import NullJournal
from .messages import Messages
from .queue import DEAD, StoredMessage
from .recovery import recover
from .result_commands import SUCCEEDED_ALREADY, ResultCommands
from .results import HANDED, HANDING
from .session import CLOSED, OPEN, Session
from .sink import Sink
from .status import scheduled_report, status_report
from .taskstats import TaskStats
from .topology import Topology

__all__ = ["BrokerState", "BrokerOptions"]

logger = logging.getLogger(__name__)

# STATUS lists at most this many of the broker's countdowns (its delayed messages).
MAX_SCHEDULED_LISTED = 10000


class BrokerOptions:
    """Knobs of the broker's behaviour (the command line fills them in)."""

    def __init__(self, result_expires=86400.0, default_exchange="minitask",
                 default_exchange_type="direct", default_queue="minitask",
                 default_routing_key="minitask", max_frame_bytes=P.MAX_FRAME_BYTES,
                 secret=None, handover_grace=10.0, release_ahead=0.5, version="minitask"):
        self.result_expires = result_expires
        self.default_exchange = default_exchange
        self.default_exchange_type = default_exchange_type
        self.default_queue = default_queue
        self.default_routing_key = default_routing_key
        self.max_frame_bytes = max_frame_bytes
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        # A worker that lost its connection gets this long to come back and claim its tasks.
        self.handover_grace = handover_grace
        # Delayed messages reach the worker this early; its own scheduler starts them on time.
        self.release_ahead = release_ahead
        self.version = version


class BrokerState:
    """Queues, exchanges, sessions, results: the broker without its sockets."""

    def __init__(self, clock, journal=None, options=None):
        self.clock = clock
        self.journal = journal if journal is not None else NullJournal()
        self.options = options or BrokerOptions()
        self.started_at = clock()
        self.sessions = {}
        self.outgoing = set()           # sessions with frames to send (see Session.send)
        self.task_stats = TaskStats()   # per task name, for /metrics
        self.sink = Sink(self.journal)
        self._throttle = Throttle(clock=clock)
        self.handshake = Handshake(clock, self.options)
        self.topology = Topology(self.options, self.sink)
        self.result_commands = ResultCommands(clock, self.options, self.sink, self.task_stats)
        self.messages = Messages(clock, self.options, self.sink, self.topology,
                                 self.result_commands, self.sessions, self.outgoing,
                                 self.task_stats)
        self.chords = Chords(clock, self.options, self.sink, self.messages,
                             self.result_commands)
        # What the parts keep, under the names status reports and tests read it by.
        self.exchanges, self.queues = self.topology.exchanges, self.topology.queues
        tasks = self.result_commands
        self.results, self.revoked, self.handovers, self.kv = (
            tasks.store, tasks.revoked, tasks.handovers, tasks.kv)
        topology, messages = self.topology, self.messages
        self._handlers = {
            P.DECLARE_EXCHANGE: topology.declare_exchange,
            P.DELETE_EXCHANGE: topology.delete_exchange,
            P.DECLARE_QUEUE: topology.declare_queue, P.BIND: topology.bind,
            P.UNBIND: topology.unbind, P.PURGE: messages.purge,
            P.DELETE_QUEUE: messages.delete_queue, P.PUBLISH: messages.publish,
            P.CONSUME: messages.consume, P.CANCEL: messages.cancel, P.QOS: messages.qos,
            P.ACK: messages.ack, P.REJECT: messages.reject, P.START: messages.start,
            P.RESULT_SET: tasks.result_set, P.RESULT_GET: tasks.result_get,
            P.RESULT_WAIT: tasks.result_wait, P.RESULT_FORGET: tasks.result_forget,
            P.CLAIM: tasks.claim, P.LEASE: tasks.lease, P.KV_SET: tasks.kv_set,
            P.KV_GET: tasks.kv_get, P.REVOKED: tasks.revoked_list,
            P.REVOKE: self._revoke, P.STATUS: self._status, P.HEARTBEAT: self._heartbeat,
            P.CLOSE: self._close, P.ATOMIC: self._atomic,
        }

    # -- sessions ------------------------------------------------------------------------------

    def open_session(self, session_id, peer=""):
        session = Session(session_id, peer, self.clock(), self.outgoing)
        self.sessions[session_id] = session
        return session

    def handle(self, session, kind, seq, body):
        """Apply one command frame from `session`. Never raises for the client's mistakes:
        they become ERROR frames (and `session.want_close` when the stream is not to be
        trusted any more)."""
        if session.stage != OPEN:
            self.handshake.handle(session, kind, seq, body)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            session.error(seq, P.COMMAND_INVALID, "unknown command %s" % P.command_name(kind),
                          close=True)
            return
        try:
            handler(session, seq, body)
        except MinitaskError as exc:
            text = str(exc) if not isinstance(exc, ProtocolError) \
                else "%s: %s" % (P.command_name(kind), exc)
            session.error(seq, P.code_for(exc), text)

    def close_session(self, session, reason=""):
        """The connection is gone: requeue its unacked messages, orphan its handed-over tasks."""
        if session.stage == CLOSED:
            return
        session.stage = CLOSED
        self.sessions.pop(session.id, None)
        requeued = self.messages.session_closed(session)
        self.result_commands.session_closed(session, self.clock())
        if requeued:
            logger.warning("client %s %s: %d unacked messages requeued", session.peer,
                           reason or "closed", requeued)

    def output_drained(self, session):
        """The client read its backlog: it may be given messages again."""
        self.messages.output_drained(session)

    # -- commands that take several parts ------------------------------------------------------

    def _atomic(self, session, seq, body):
        """ATOMIC (protocol 3.5): its commands as one unit, all of it or none of it."""
        frames = P.decode_atomic(body)
        self.sink.begin()
        try:
            for index, (kind, frame_body) in enumerate(frames):
                done = self._handlers[kind](session, 0, frame_body)
                if index == 0 and done is SUCCEEDED_ALREADY:
                    break               # a copy of a task that succeeded unlocks nothing
        except Exception:
            # A client's mistake (answered with its error), or a bug (its connection is
            # closed): either way none of the unit happens, and no unit is left open.
            self._undo(*self.sink.abort())
            raise
        self.sink.end(session, seq)

    def _undo(self, messages, undo):
        self.messages.take_back(messages)
        for action in reversed(undo):
            action()

    def _revoke(self, session, seq, body):
        arguments = self.result_commands.revoke(body)
        self.messages.publish_internal(control.command_message("revoke", arguments))
        session.reply(seq, {})

    def _heartbeat(self, session, seq, body):
        if body and session.info:
            # A worker telling how it is now (its HELLO object, updated): status shows it.
            if len(body) > P.MAX_HANDSHAKE_BYTES:
                raise ProtocolError("HEARTBEAT body over %d bytes" % P.MAX_HANDSHAKE_BYTES)
            worker = P.decode_json(body, "HEARTBEAT").get("worker")
            if isinstance(worker, dict):
                session.info = worker

    def _close(self, session, seq, body):
        session.close_after_flush()

    def _status(self, session, seq, body):
        scheduled = P.decode_json(body, "STATUS").get("scheduled")
        if scheduled is not None and (not isinstance(scheduled, int) or isinstance(scheduled, bool)
                                      or not 0 <= scheduled <= MAX_SCHEDULED_LISTED):
            raise ProtocolError("'scheduled' must be a whole number from 0 to %d"
                                  % MAX_SCHEDULED_LISTED)
        report = status_report(self)
        if scheduled is not None:
            report["scheduled"] = scheduled_report(self.messages.delayed_messages(scheduled))
        session.reply(seq, report)

    # -- the turn ------------------------------------------------------------------------------

    def take_records(self):
        return self.sink.take_records()

    def retain(self, records):
        """A write of records that refuse nothing (deliveries) failed: try them again later."""
        self.sink.retain(records)

    def take_confirms(self):
        """The turn's write succeeded: its timers start, what waited for it runs; returns the
        ``(session, seq)`` to confirm, for a server that may hold them until an fsync
        covers the write (`send_confirms` sends them)."""
        self.messages.start_timers()
        return self.sink.written()

    def send_confirms(self, confirms):
        for session, seq in confirms:
            if self.sessions.get(session.id) is session:
                session.send(P.HEADER.pack(0, P.CONFIRM, seq))

    def confirm_turn(self):
        """Send the CONFIRMs of this turn; the journal write that they promise has happened."""
        self.send_confirms(self.take_confirms())

    def refuse_turn(self, reason, records):
        """The journal write of `records` failed: refuse the turn's units, keep the rest.

        A unit's messages are taken back out of their queues (they were not delivered:
        dispatch comes after the write) and the rest of it undone, and its command gets
        ERROR 507. Every other record (acks, results, declarations) is written again next
        turn. Returns how many messages were refused.
        """
        refused = 0
        for session, seq, messages, _records, undo, _after in self.sink.refuse(records):
            self._undo(messages, undo)
            refused += len(messages)
            if seq:
                session.error(seq, P.REFUSED, "publish refused: %s" % reason)
                if session.confirm_seq == seq:      # nothing after it to confirm
                    session.confirm_seq = 0
        self.messages.start_timers()
        counts = self._throttle.allow(reason, refused)
        if counts is not None:
            logger.error("journal write failed (%s): %d publishes refused; acks and results "
                         "will be written again%s", reason, refused,
                         folded(counts, "publishes refused"))
        return refused

    @property
    def wants_dispatch(self):
        return bool(self.messages.dirty)

    def dispatch(self):
        """Deliver what can be delivered (after the turn's write; see the module docstring)."""
        self.messages.dispatch()

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now):
        """Do what is due: release delayed messages, expire things, time out waits."""
        self.messages.tick(now)
        self.result_commands.tick(now)
        self.handshake.tick(now)

    def next_deadline(self):
        """The earliest time tick() has something to do, or None."""
        times = [when for when in (self.messages.next_deadline(),
                                   self.result_commands.next_deadline(),
                                   self.handshake.next_deadline()) if when is not None]
        return min(times) if times else None

    # -- the journal ---------------------------------------------------------------------------

    def record_for(self, obj):
        """The record that recreates one live message or result (compaction)."""
        if isinstance(obj, StoredMessage):
            if obj.queue is PARKING:
                return self.chords.record_for(obj)
            if obj.queue is HANDING:
                if self.handovers.messages.get(P.message_id_of(obj.data)) is not obj:
                    return None
                return rc.publish_record(obj.id, 0, HANDED, obj.data)
            if obj.where == DEAD or self.queues.get(obj.queue.name) is not obj.queue:
                return None
            return rc.publish_record(obj.id, obj.deliveries, obj.queue.name, obj.data)
        if self.results.get(obj.task_id) is obj:
            record = rc.result_record(obj)
            if obj.task_id in self.handovers.owner and obj.state not in P.READY_STATES:
                # Handed over again since this result (a retry's run): a copy written after
                # the snapshot must not end that handover on replay.
                return rc.compound_record([record, rc.names_record(rc.STARTED,
                                                                  [obj.task_id])])
            return record
        return None

    def live_objects(self):
        """Every message and result a journal record keeps alive."""
        yield from self.messages.live()
        yield from self.chords.live_objects()
        yield from self.handovers.messages.values()
        yield from self.results.entries.values()

    def snapshot_records(self):
        """One SNAPSHOT record of the small durable state (see records.py)."""
        revoked = {}
        for task_id, expires_at in self.revoked.ids.items():
            revoked.setdefault(repr(expires_at), []).append(task_id)
        snapshot = dict(self.topology.snapshot(),
                        revoked=[[float(when), ids] for when, ids in revoked.items()],
                        kv=self.kv, started=sorted(self.handovers.owner))
        return [rc.json_record(rc.SNAPSHOT, snapshot)]

    def recover(self):
        """Rebuild everything from the journal (see recovery.py); returns what was found."""
        return recover(self)
