"""Wrong secrets slowed down (minitask.broker.handshake.AuthThrottle), on a fake clock: after
a few failures a peer's answers wait on the state's timers, never in a sleep, and no other
peer waits with it."""

from brokerkit import Broker
from minitask import protocol as P
from minitask.broker.handshake import AuthThrottle
from minitask.broker.session import HELD_STAGE
from minitask.broker.state import BrokerOptions
from minitask.protocol import auth_proof

PEER = "10.0.0.5"


def guess(kit, peer=PEER, secret=b"wrong"):
    """A client of `peer` through HELLO and CHALLENGE that sends an AUTH; returns the client
    and the frames that came back at once."""
    client = kit.open()
    client.session.peer_key = peer
    nonce = "ab" * 32
    frames = client.send_json(P.HELLO, {"protocol": 1, "nonce": nonce})
    broker_nonce = P.decode_json(frames[0][2])["nonce"]
    proof = auth_proof(secret, "client", nonce, broker_nonce)
    return client, client.send_json(P.AUTH, {"proof": proof})


def kinds(frames):
    return [kind for kind, _seq, _body in frames]


def test_delays_start_after_the_free_failures_double_and_stop_at_the_cap():
    throttle = AuthThrottle(free_failures=3, first_delay=0.1, max_delay=1.0)
    delays = []
    for _ in range(9):
        delays.append(throttle.delay(PEER, 0.0))
        throttle.failed(PEER, 0.0)
    assert delays == [0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert throttle.delay("10.0.0.6", 0.0) == 0.0


def test_a_peers_failures_are_forgotten_a_while_after_its_last_one():
    throttle = AuthThrottle(free_failures=2, forget_after=60.0)
    throttle.failed(PEER, 0.0)
    throttle.failed(PEER, 30.0)
    assert throttle.delay(PEER, 89.0) > 0
    assert throttle.delay(PEER, 91.0) == 0.0
    throttle.failed(PEER, 91.0)                          # counts from one again
    assert throttle.delay(PEER, 92.0) == 0.0


def test_the_failure_records_are_bounded_the_stalest_going_first():
    throttle = AuthThrottle(free_failures=0, max_peers=3)
    for number in range(5):
        throttle.failed("10.0.0.%d" % number, float(number))
    assert throttle.delay("10.0.0.0", 5.0) == 0.0        # dropped
    assert throttle.delay("10.0.0.4", 5.0) > 0


def test_after_five_failures_the_answer_waits_for_the_timer():
    kit = Broker(options=BrokerOptions(secret="s"))
    for _ in range(5):
        _client, frames = guess(kit)
        assert kinds(frames) == [P.ERROR]                # answered at once
    client, frames = guess(kit)
    assert frames == [] and client.session.stage == HELD_STAGE
    assert kit.state.next_deadline() == kit.clock.now + 0.1
    kit.advance(0.05)
    assert client.frames() == []
    kit.advance(0.06)
    frames = client.frames()
    assert [(kind, seq) for kind, seq, _body in frames] == [(P.ERROR, 2)]
    assert P.decode_error(frames[0][2])[0] == P.AUTH_FAILED
    assert client.session.want_close


def test_the_right_secret_waits_as_long_so_the_wait_tells_a_guesser_nothing():
    kit = Broker(options=BrokerOptions(secret="s"))
    for _ in range(6):
        guess(kit)
    client, frames = guess(kit, secret=b"s")
    assert frames == []
    kit.advance(0.19)
    assert client.frames() == []
    kit.advance(0.02)
    assert kinds(client.frames()) == [P.WELCOME]
    assert client.session.is_open


def test_other_peers_are_answered_at_once_meanwhile():
    kit = Broker(options=BrokerOptions(secret="s"))
    for _ in range(8):
        guess(kit)
    _client, frames = guess(kit, peer="10.0.0.6")
    assert kinds(frames) == [P.ERROR]
    _client, frames = guess(kit, peer="10.0.0.6", secret=b"s")
    assert kinds(frames) == [P.WELCOME]


def test_a_client_that_speaks_while_its_answer_waits_is_closed_and_never_answered():
    kit = Broker(options=BrokerOptions(secret="s"))
    for _ in range(5):
        guess(kit)
    client, _frames = guess(kit, secret=b"s")
    code, _text = client.error(P.STATUS, {})
    assert code == P.COMMAND_INVALID and client.session.want_close
    kit.advance(5.0)
    assert client.frames() == []
    assert not client.session.is_open


def test_a_client_gone_before_its_answer_is_simply_forgotten():
    kit = Broker(options=BrokerOptions(secret="s"))
    for _ in range(5):
        guess(kit)
    client, _frames = guess(kit, secret=b"s")
    kit.close(client)
    kit.advance(5.0)
    assert client.frames() == []
    assert kit.state.next_deadline() is None
