"""Drive a BrokerState the way the server does, without sockets: frames in, frames out.

    kit = Broker()                       # a BrokerState on a fake clock, no journal
    client = kit.connect()               # HELLO -> WELCOME done
    client.ok(P.DECLARE_QUEUE, {"queue": "q"})
    client.publish(routing_key="q", message_id="t1")
    kit.turn()                           # confirm_turn() then dispatch(), as one loop turn
    client.frames()                      # decoded (type, seq, body) sent to the client

Time moves only through `kit.advance(seconds)`, which also runs `tick()`.
"""

import collections

from minitask import protocol as P
from minitask.broker.state import BrokerOptions, BrokerState

Delivery = collections.namedtuple(
    "Delivery", "tag consumer_tag redelivered deliveries message data")


class FakeClock:
    """Stands in for time.time; time moves only through advance()."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def time(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class FakeJournal:
    """Just enough of Journal for BrokerState to emit records: tracking marks objects."""

    enabled = True
    fsync_policy = "no"

    def __init__(self):
        self.tracked = []

    def track(self, obj, segment=None):
        obj.segment = segment or "head"
        self.tracked.append(obj)

    def untrack(self, obj):
        obj.segment = None

    def total_bytes(self):
        return 0

    def live_bytes(self):
        return 0


def body_of(frame):
    """The body of one whole encoded frame."""
    return frame[P.HEADER.size:]


def record_types(records):
    """The type byte of each journal record (length u32, crc u32, type u8, payload)."""
    return [record[8] for record in records]


class Broker:
    def __init__(self, options=None, journal=None, now=1_000_000.0):
        self.clock = FakeClock(now)
        self.state = BrokerState(clock=self.clock.time, journal=journal, options=options)
        self._next_session = 1

    def open(self):
        """A session that has not said HELLO yet."""
        session = self.state.open_session(self._next_session, "test:%d" % self._next_session)
        self._next_session += 1
        return Client(self, session)

    def connect(self, **hello):
        """A session past the handshake (no secret configured)."""
        client = self.open()
        frames = client.send_json(P.HELLO, dict({"protocol": 1}, **hello))
        kinds = [kind for kind, _seq, _body in frames]
        if kinds != [P.WELCOME]:
            raise AssertionError("handshake answered %r" % (frames,))
        return client

    def turn(self):
        """The end of one server loop turn: confirms go out, then deliveries are made."""
        self.state.confirm_turn()
        self.state.dispatch()

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.state.tick(self.clock.now)
        self.state.dispatch()

    def close(self, client):
        self.state.close_session(client.session, "test")

    def queue(self, name):
        return self.state.queues[name]


class Client:
    def __init__(self, broker, session):
        self.broker = broker
        self.state = broker.state
        self.session = session
        self.seq = 0
        self._decoder = P.Decoder()
        self._held = []             # frames that came with a reply but answer something else

    # -- sending --

    def next_seq(self):
        self.seq += 1
        return self.seq

    def send(self, kind, body=b"", seq=None):
        """Hand one command to the state; returns the frames it produced right away."""
        seq = self.next_seq() if seq is None else seq
        self.state.handle(self.session, kind, seq, body)
        return self.frames()

    def send_json(self, kind, obj, seq=None):
        return self.send(kind, P.encode_json(kind, 0, obj)[P.HEADER.size:], seq)

    def ok(self, kind, obj=None):
        """Send a JSON command and return the body of its OK reply."""
        seq = self.next_seq()
        frames = self.send_json(kind, obj or {}, seq)
        replies = self._split(frames, seq)
        if [f[0] for f in replies] != [P.OK]:
            raise AssertionError("%s answered %r" % (P.command_name(kind), describe(frames)))
        return P.decode_json(replies[0][2])

    def error(self, kind, body, seq=None):
        """Send a command that must fail; returns its ERROR (code, text)."""
        seq = self.next_seq() if seq is None else seq
        frames = (self.send_json(kind, body, seq) if isinstance(body, dict)
                  else self.send(kind, body, seq))
        replies = self._split(frames, seq)
        if [(f[0], f[1]) for f in replies] != [(P.ERROR, seq)]:
            raise AssertionError("%s answered %r" % (P.command_name(kind), describe(frames)))
        return P.decode_error(replies[0][2])

    def publish(self, seq=None, **fields):
        """Publish a Message built from `fields`; returns the seq used."""
        fields.setdefault("body", b"payload")
        data = P.encode_message(P.Message(**fields))
        seq = self.next_seq() if seq is None else seq
        self.state.handle(self.session, P.PUBLISH, seq, data)
        return seq

    def consume(self, queue, **args):
        return self.ok(P.CONSUME, dict(args, queue=queue))["consumer_tag"]

    def qos(self, prefetch_count):
        self.ok(P.QOS, {"prefetch_count": prefetch_count})

    def ack(self, tags, flags=0):
        self.state.handle(self.session, P.ACK, 0, body_of(P.encode_tags(P.ACK, flags, tags)))

    def reject(self, tags, requeue=False):
        flags = P.REQUEUE if requeue else 0
        self.state.handle(self.session, P.REJECT, 0,
                          body_of(P.encode_tags(P.REJECT, flags, tags)))

    def set_result(self, task_id, state, payload=b"", ttl=0.0, store=True, seq=0,
                   content_type="application/json"):
        frame = P.encode_result(P.RESULT_SET, seq, task_id, state, P.STORE if store else 0,
                                ttl, content_type, payload)
        self.state.handle(self.session, P.RESULT_SET, seq, body_of(frame))

    def get_result(self, task_id):
        """RESULT_GET: ``(task_id, state, flags, time, content_type, payload)``."""
        seq = self.next_seq()
        frames = self.send_json(P.RESULT_GET, {"task_id": task_id}, seq)
        replies = self._split(frames, seq)
        if [f[0] for f in replies] != [P.RESULT]:
            raise AssertionError("RESULT_GET answered %r" % (describe(frames),))
        return P.decode_result(replies[0][2])

    # -- receiving --

    def frames(self):
        """Every frame sent to this client since the last call, decoded."""
        data = b"".join(self.session.out)
        del self.session.out[:]
        self._decoder.feed(data)
        held, self._held = self._held, []
        return held + list(self._decoder.frames())

    def _split(self, frames, seq):
        """The frames answering `seq`; the rest are kept for the next `frames()` call.

        A reply seq of 0 answers nothing, so deliveries and confirms are always kept.
        """
        mine = [f for f in frames if f[1] == seq and f[0] not in (P.CONFIRM, P.DELIVER)]
        self._held.extend(f for f in frames if f not in mine)
        return mine

    def deliveries(self, frames=None):
        """The DELIVER frames among `frames` (default: new frames), decoded."""
        frames = self.frames() if frames is None else frames
        out = []
        for kind, seq, body in frames:
            if kind == P.DELIVER:
                if seq != 0:
                    raise AssertionError("DELIVER with seq %d" % seq)
                tag, consumer_tag, redelivered, count, data = P.decode_deliver(body)
                out.append(Delivery(tag, consumer_tag, redelivered, count,
                                    P.decode_message(data), data))
        return out


def describe(frames):
    out = []
    for kind, seq, body in frames:
        if kind == P.ERROR:
            out.append(("ERROR", seq) + P.decode_error(body))
        else:
            out.append((P.command_name(kind), seq, body[:80]))
    return out


__all__ = ["Broker", "BrokerOptions", "Client", "Delivery", "FakeClock", "FakeJournal",
           "body_of", "record_types", "describe"]
