"""The Redis consumer's credit as the worker changes its extra credit every turn (no Redis:
a consumer whose reader is a stand-in)."""

from minitask import config
from minitask.transport.redis_consumer import Consumer


class Reader:
    def __init__(self, with_bells):
        self.waiting = True
        self.with_bells = with_bells


def consumer(with_bells, reserved):
    made = Consumer(config.Settings({"BROKER_URL": "redis://127.0.0.1:1/0"}), ["q"], 8, {}, "w")
    made.reader = Reader(with_bells)
    made.paused = False                 # taking tasks
    made._reserved = reserved           # what the FETCH behind the reader's XREAD asked for
    return made


def test_more_credit_wakes_a_reader_that_waits_without_the_bells():
    waiting = consumer(with_bells=False, reserved=0)
    waiting.held = dict.fromkeys(range(8))          # out of credit when it was armed
    waiting.set_extra_credit(24)
    assert waiting._unblock


def test_more_credit_leaves_a_reader_that_waits_on_the_bells_alone():
    """Its FETCH holds the credit it had; waking it would cost a round trip per change,
    and a worker of short tasks changes it on every round trip (idle, then busy)."""
    armed = consumer(with_bells=True, reserved=8)
    armed.set_extra_credit(24)
    armed.set_extra_credit(0)
    armed.set_extra_credit(24)
    assert not armed._unblock


def test_less_credit_than_the_waiting_fetch_asks_for_wakes_the_reader_to_ask_again():
    """An idle worker gives its extra credit back: the FETCH armed with it must not fill it."""
    armed = consumer(with_bells=True, reserved=32)
    armed.extra_credit = 24
    armed.set_extra_credit(0)
    assert armed._unblock
