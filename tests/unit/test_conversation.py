"""minitask.transport.conversation: the client's protocol state, tested without sockets.

Two kinds of peer: a scripted one (bytes we write by hand, for what a real broker never
sends: a WELCOME without a CHALLENGE, a forged proof, frames split anywhere), and a real
`BrokerState` driven through `brokerkit`'s fake clock, so the two halves of the protocol are
checked against each other byte for byte.
"""

import socket
import threading

import pytest

from brokerkit import Broker
from minitask import protocol as P
from minitask.broker.state import BrokerOptions
from minitask.exceptions import (
    AuthenticationError, BrokerConnectionError, ProtocolError, PublishRefusedError,
    UnroutableError,
)
from minitask.transport.builtin import Connection
from minitask.transport.conversation import AUTH_SENT, HELLO_SENT, OPEN, Conversation

SECRET = b"s3cret"
FEEDS = ("whole", "bytewise", "then_next_start")
NEXT_FRAME_START = P.encode_frame(P.HEARTBEAT, 0, b"")[:5]


def feed(conversation, data, how):
    """Give `data` to the conversation whole, byte by byte, or followed by a partial frame."""
    if how == "whole":
        conversation.receive(data)
    elif how == "bytewise":
        for index in range(len(data)):
            conversation.receive(data[index:index + 1])
    else:
        conversation.receive(data + NEXT_FRAME_START)


@pytest.fixture(params=FEEDS)
def how(request):
    return request.param


def sent_frames(conversation):
    decoder = P.Decoder()
    decoder.feed(conversation.take_outgoing())
    return list(decoder.frames())


def opened(secret=None):
    conversation = Conversation(secret=secret, peer="minitask://test")
    conversation.hello()
    [(kind, seq, body)] = sent_frames(conversation)
    assert kind == P.HELLO
    return conversation, seq, P.decode_json(body)


# -- the handshake, scripted -----------------------------------------------------------------

def test_hello_carries_protocol_version_nonce_and_heartbeat():
    conversation = Conversation(client="tester", heartbeat=5.0, worker_info={"hostname": "w"})
    conversation.hello()
    [(kind, seq, body)] = sent_frames(conversation)
    hello = P.decode_json(body)
    assert (kind, seq) == (P.HELLO, 1)
    assert hello["protocol"] == P.PROTOCOL_VERSION and hello["client"] == "tester"
    assert len(bytes.fromhex(hello["nonce"])) == 32
    assert hello["heartbeat"] == 5.0 and hello["worker"] == {"hostname": "w"}
    assert conversation.state == HELLO_SENT


def test_a_welcome_without_a_secret_opens_the_conversation(how):
    conversation, seq, _hello = opened()
    feed(conversation, P.encode_json(P.WELCOME, seq, {"max_frame_bytes": 1 << 20}), how)
    assert conversation.is_open
    assert conversation.decoder.max_frame_bytes >= P.MAX_FRAME_BYTES


def test_a_client_with_a_secret_refuses_a_welcome_that_never_asked_for_it(how):
    conversation, seq, _hello = opened(SECRET)
    with pytest.raises(AuthenticationError, match="did not ask for the secret"):
        feed(conversation, P.encode_json(P.WELCOME, seq, {}), how)
    assert not conversation.is_open


def test_a_challenge_is_answered_with_the_clients_proof(how):
    conversation, seq, hello = opened(SECRET)
    feed(conversation, P.encode_json(P.CHALLENGE, seq, {"nonce": "b" * 64}), how)
    assert conversation.state == AUTH_SENT
    [(kind, auth_seq, body)] = sent_frames(conversation)
    assert kind == P.AUTH and auth_seq == seq + 1
    assert P.decode_json(body)["proof"] == P.auth_proof(SECRET, "client", hello["nonce"],
                                                        "b" * 64)


def test_the_brokers_proof_is_checked_before_the_conversation_opens(how):
    conversation, seq, hello = opened(SECRET)
    conversation.receive(P.encode_json(P.CHALLENGE, seq, {"nonce": "b" * 64}))
    [(_kind, auth_seq, _body)] = sent_frames(conversation)
    forged = P.auth_proof(b"another secret", "broker", "b" * 64, hello["nonce"])
    with pytest.raises(AuthenticationError, match="could not prove"):
        feed(conversation, P.encode_json(P.WELCOME, auth_seq, {"proof": forged}), how)
    assert not conversation.is_open


def test_the_clients_own_proof_reflected_back_is_refused():
    conversation, seq, hello = opened(SECRET)
    conversation.receive(P.encode_json(P.CHALLENGE, seq, {"nonce": "b" * 64}))
    [(_kind, auth_seq, body)] = sent_frames(conversation)
    reflected = P.decode_json(body)["proof"]
    with pytest.raises(AuthenticationError):
        conversation.receive(P.encode_json(P.WELCOME, auth_seq, {"proof": reflected}))


def test_a_challenge_to_a_client_without_a_secret_names_the_setting():
    conversation, seq, _hello = opened()
    with pytest.raises(AuthenticationError, match="BROKER_SECRET"):
        conversation.receive(P.encode_json(P.CHALLENGE, seq, {"nonce": "b" * 64}))


def test_an_error_during_the_handshake_is_raised_as_its_class():
    conversation, seq, _hello = opened(SECRET)
    with pytest.raises(BrokerConnectionError, match="too many connections") as raised:
        conversation.receive(P.encode_error(0, P.UNAVAILABLE, "too many connections"))
    assert conversation.closing_error is raised.value
    assert conversation.turned_away                         # no room: worth asking again


def test_a_failed_authentication_is_not_worth_asking_again():
    conversation, seq, _hello = opened(SECRET)
    with pytest.raises(AuthenticationError):
        conversation.receive(P.encode_error(0, P.AUTH_FAILED, "authentication failed"))
    assert not conversation.turned_away


def test_a_client_turned_away_in_its_handshake_asks_again_until_it_gets_in():
    """A broker short of handshake slots drops the oldest; the client connects again."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    attempts = []

    def serve():
        for answer in ("evict", "evict", "welcome"):
            sock, _peer = listener.accept()
            with sock:
                decoder = P.Decoder()
                while not list(decoder.frames()) and decoder.feed(sock.recv(4096)) is None:
                    pass
                attempts.append(answer)
                if answer == "evict":
                    sock.sendall(P.encode_error(0, P.UNAVAILABLE, "too many in their handshake"))
                else:
                    sock.sendall(P.encode_json(P.WELCOME, 1, {}))
                    sock.recv(4096)         # until the client closes
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        url = "minitask://127.0.0.1:%d" % listener.getsockname()[1]
        with Connection(url, timeout=10.0, local=False) as conn:
            assert conn.conversation.is_open
        assert attempts == ["evict", "evict", "welcome"]
    finally:
        listener.close()
        server.join(10.0)


@pytest.mark.parametrize("kind", [P.DELIVER, P.OK, P.CONFIRM, P.RESULT])
def test_anything_else_before_welcome_is_a_protocol_error(kind):
    conversation, seq, _hello = opened()
    with pytest.raises(ProtocolError, match="during the handshake"):
        conversation.receive(P.encode_frame(kind, seq, b""))


def test_hello_twice_is_refused():
    conversation, _seq, _hello = opened()
    with pytest.raises(ProtocolError):
        conversation.hello()


# -- numbering and confirms, scripted --------------------------------------------------------

def open_conversation():
    conversation, seq, _hello = opened()
    conversation.receive(P.encode_json(P.WELCOME, seq, {}))
    return conversation


def test_command_numbers_wrap_after_two_to_the_32_minus_one_and_skip_zero():
    conversation = open_conversation()
    conversation._seq = 0xFFFFFFFE
    assert [conversation.next_seq() for _ in range(3)] == [0xFFFFFFFF, 1, 2]


def test_one_confirm_settles_every_publish_numbered_up_to_it(how):
    conversation = open_conversation()
    seqs = [conversation.publish(b"m%d" % n) for n in range(3)]
    conversation.take_outgoing()
    assert not any(conversation.confirmed(seq) for seq in seqs)
    feed(conversation, P.HEADER.pack(0, P.CONFIRM, seqs[1]), how)
    assert [conversation.confirmed(seq) for seq in seqs] == [True, True, False]


def test_confirms_are_serial_number_ordered_across_the_wrap():
    conversation = open_conversation()
    conversation._seq = 0xFFFFFFFD
    seqs = [conversation.publish(b"m") for _ in range(4)]
    assert seqs == [0xFFFFFFFE, 0xFFFFFFFF, 1, 2]
    conversation.receive(P.HEADER.pack(0, P.CONFIRM, 1))
    assert [conversation.confirmed(seq) for seq in seqs] == [True, True, True, False]


def test_an_error_for_one_publish_is_raised_for_that_one_only(how):
    conversation = open_conversation()
    first, second, third = (conversation.publish(b"m") for _ in range(3))
    feed(conversation, P.encode_error(second, P.REFUSED, "disk full")
         + P.HEADER.pack(0, P.CONFIRM, third), how)
    assert conversation.confirmed(first)
    with pytest.raises(PublishRefusedError, match="disk full"):
        conversation.confirmed(second)
    assert conversation.confirmed(third)
    assert conversation.confirmed(second)           # raised once, then forgotten


def test_all_confirmed_raises_the_first_refused_publish_in_order():
    conversation = open_conversation()
    seqs = [conversation.publish(b"m") for _ in range(3)]
    conversation.receive(P.encode_error(seqs[2], P.REFUSED, "third")
                         + P.encode_error(seqs[1], P.UNROUTABLE, "second")
                         + P.HEADER.pack(0, P.CONFIRM, seqs[2]))
    with pytest.raises(UnroutableError, match="second"):
        conversation.all_confirmed(seqs)
    assert conversation.all_confirmed(seqs)


def test_numbered_frames_are_answered_by_outcome_once_each(how):
    # A worker numbers the ATOMIC results it writes itself, to hear which the broker refused.
    conversation = open_conversation()
    seqs = [conversation.numbered() for _ in range(4)]
    assert conversation.outcomes(seqs) == {}            # nothing answered yet
    feed(conversation, P.encode_error(seqs[1], P.UNROUTABLE, "matched no queue")
         + P.HEADER.pack(0, P.CONFIRM, seqs[2]), how)
    outcomes = conversation.outcomes(seqs)
    assert sorted(outcomes) == seqs[:3] and outcomes[seqs[0]] is None
    assert isinstance(outcomes[seqs[1]], UnroutableError) and outcomes[seqs[2]] is None
    assert conversation.outcomes([seqs[1], seqs[3]]) == {seqs[1]: None}   # told once


def test_a_reply_is_filed_by_number_and_taken_once(how):
    conversation = open_conversation()
    seq = conversation.command(P.STATUS, {})
    other = conversation.command(P.STATUS, {})
    assert conversation.reply(seq) is None
    feed(conversation, P.encode_json(P.OK, other, {"n": 2}) + P.encode_json(P.OK, seq, {"n": 1}),
         how)
    kind, body = conversation.reply(seq)
    assert kind == P.OK and P.decode_json(body) == {"n": 1}
    assert conversation.reply(seq) is None
    assert P.decode_json(conversation.reply(other)[1]) == {"n": 2}


def test_replies_nobody_asked_for_are_dropped():
    conversation = open_conversation()
    conversation.receive(P.encode_json(P.OK, 99, {}))
    assert conversation.reply(99) is None


def test_an_abandoned_command_keeps_nothing_when_its_answer_comes_late():
    conversation = open_conversation()
    seq = conversation.command(P.STATUS, {})
    conversation.abandon(seq)
    conversation.receive(P.encode_json(P.OK, seq, {}))
    assert conversation.reply(seq) is None and not conversation._replies


def test_errors_of_unnumbered_commands_are_kept_in_order():
    conversation = open_conversation()
    conversation.receive(P.encode_error(0, P.NOT_FOUND, "no queue 'a'")
                         + P.encode_error(0, P.BAD_FRAME, "bad ack"))
    assert [str(exc) for exc in conversation.errors] == ["no queue 'a'", "bad ack"]
    assert str(conversation.closing_error) == "bad ack"


def test_deliveries_are_queued_in_arrival_order(how):
    conversation = open_conversation()
    data = P.encode_message(P.Message(b"body", routing_key="q", message_id="t1"))
    frames = P.encode_deliver(7, 1, False, 1, data) + P.encode_deliver(8, 1, True, 2, data)
    feed(conversation, frames, how)
    first, second = conversation.deliveries
    assert (first.delivery_tag, first.redelivered, second.delivery_tag, second.deliveries) \
        == (7, False, 8, 2)
    assert first.message.message_id == "t1" and first.data == data


def test_a_frame_over_the_announced_limit_is_a_protocol_error():
    conversation = open_conversation()
    limit = conversation.decoder.max_frame_bytes
    with pytest.raises(ProtocolError, match="limit"):
        conversation.receive(P.HEADER.pack(limit + 1, P.DELIVER, 0))



@pytest.mark.parametrize("announced", [None, 4096])
def test_a_command_over_the_brokers_frame_limit_is_refused_before_it_is_queued(announced):
    """The broker drops a connection at the header of a frame over its limit, so a 20 MiB
    delay() came back as a lost connection ("Broken pipe"). The conversation refuses it
    first, with the SPEC's PublishRefusedError, and queues nothing: the connection goes on."""
    conversation, seq, _hello = opened()
    welcome = {} if announced is None else {"max_frame_bytes": announced}
    conversation.receive(P.encode_json(P.WELCOME, seq, welcome))
    limit = announced or P.MAX_FRAME_BYTES
    with pytest.raises(PublishRefusedError, match="PUBLISH of %d bytes is over the %d-byte "
                                                  "frame limit" % (limit + 1, limit)):
        conversation.publish(b"x" * (limit + 1))
    with pytest.raises(PublishRefusedError, match="over the %d-byte frame limit" % limit):
        conversation.confirmable(P.ATOMIC, b"x" * (limit + 1))
    assert conversation.take_outgoing() == b""
    seq = conversation.publish(b"x" * limit)
    assert seq and len(conversation.take_outgoing()) == P.HEADER.size + limit

def test_before_welcome_frames_are_limited_to_the_handshake_size():
    conversation, _seq, _hello = opened()
    with pytest.raises(ProtocolError, match="limit"):
        conversation.receive(P.HEADER.pack(P.MAX_HANDSHAKE_BYTES + 1, P.WELCOME, 1))


# -- against the real broker state -----------------------------------------------------------

class Pair:
    """A Conversation and a BrokerState session joined by plain byte strings."""

    def __init__(self, secret=None, broker_secret=None):
        self.kit = Broker(BrokerOptions(secret=broker_secret))
        self.session = self.kit.state.open_session(1, "test")
        self.conversation = Conversation(secret=secret, peer="minitask://pair")

    def pump(self):
        """Move bytes both ways until neither side has anything more to say."""
        state = self.kit.state
        while True:
            data = self.conversation.take_outgoing()
            if data:
                decoder = P.Decoder(P.MAX_FRAME_BYTES + 64)
                decoder.feed(data)
                for frame in decoder.frames():
                    state.handle(self.session, *frame)
            self.kit.turn()
            out = b"".join(self.session.out)
            self.session.out.clear()
            if out:
                self.conversation.receive(out)
            if not data and not out:
                return


@pytest.mark.parametrize("secret", [None, SECRET])
def test_the_handshake_opens_against_a_real_broker(secret):
    pair = Pair(secret, secret)
    pair.conversation.hello()
    pair.pump()
    assert pair.conversation.state == OPEN and pair.session.is_open
    if secret:
        assert "proof" in pair.conversation.welcome


def test_a_wrong_secret_is_refused_by_the_real_broker():
    pair = Pair(b"wrong", SECRET)
    pair.conversation.hello()
    with pytest.raises(AuthenticationError):
        pair.pump()


def test_publish_consume_ack_round_trip_through_the_real_broker():
    pair = Pair()
    conversation = pair.conversation
    conversation.hello()
    pair.pump()
    declared = conversation.command(P.DECLARE_QUEUE, {"queue": "q"})
    consuming = conversation.command(P.CONSUME, {"queue": "q"})
    pair.pump()
    assert P.decode_json(conversation.reply(declared)[1])["queue"] == "q"
    tag = P.decode_json(conversation.reply(consuming)[1])["consumer_tag"]
    data = P.encode_message(P.Message(b"hello", routing_key="q", message_id="t1"))
    seq = conversation.publish(data)
    unroutable = conversation.publish(P.encode_message(P.Message(
        b"x", exchange="minitask", routing_key="nowhere", flags=P.MANDATORY | P.PERSISTENT)))
    pair.pump()
    assert conversation.confirmed(seq)
    with pytest.raises(UnroutableError):
        conversation.confirmed(unroutable)
    [delivery] = conversation.deliveries
    assert delivery.consumer_tag == tag and delivery.data == data
    conversation.send_frames(P.encode_tags(P.ACK, 0, [delivery.delivery_tag]))
    pair.pump()
    assert not pair.session.unacked


def test_a_json_command_over_the_brokers_frame_limit_is_refused_before_it_is_queued():
    conversation, seq, _hello = opened()
    conversation.receive(P.encode_json(P.WELCOME, seq, {"max_frame_bytes": 4096}))
    with pytest.raises(PublishRefusedError, match="REVOKE of \\d+ bytes is over the 4096"):
        conversation.command(P.REVOKE, {"task_ids": ["t%04d" % n for n in range(1000)]})
    assert conversation.take_outgoing() == b""
    assert conversation.command(P.REVOKE, {"task_ids": ["t1"]})
