"""minitask.ratelimit: parsing "100/m" and the token bucket, with time moved by a fake clock."""
import pytest

from minitask.exceptions import ConfigurationError
from minitask.ratelimit import TokenBucket, parse_rate


class FakeClock:
    """Stands in for time.monotonic; time moves only through advance()."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# -- parse_rate ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("10/s", 10.0), ("100/m", 100 / 60), ("5/h", 5 / 3600), ("1.5/s", 1.5), (" 30 / m ", 0.5),
    (10, 10.0), (0.5, 0.5), ("2.5", 2.5), ("7", 7.0),
    (None, None), (0, None), (0.0, None), ("0", None), ("", None), ("  ", None), ("0/m", None),
])
def test_rates_that_parse_to_tasks_per_second(value, expected):
    rate = parse_rate(value)
    assert rate == pytest.approx(expected) if expected is not None else rate is None
    assert rate is None or type(rate) is float


@pytest.mark.parametrize("value", [
    "10/x", "10/sec", "10/", "/s", "ten/s", "10/s/s", "s", "-1", -1, -0.5, "-5/s",
    float("nan"), float("inf"), "inf", "nan/s", True, [10], b"10/s",
])
def test_rates_that_do_not_parse_name_the_value_and_the_forms(value):
    with pytest.raises(ConfigurationError) as info:
        parse_rate(value)
    assert str(info.value) == (f"rate_limit {value!r}: expected N/s, N/m or N/h, "
                               "or a number per second")


def test_the_error_names_what_the_caller_says_the_rate_is():
    with pytest.raises(ConfigurationError, match=r"^add.rate_limit '10/x': expected N/s"):
        parse_rate("10/x", name="add.rate_limit")


# -- TokenBucket -----------------------------------------------------------------------------

def test_a_new_bucket_is_full_so_a_burst_of_capacity_goes_through():
    bucket = TokenBucket(1.0, capacity=3, clock=FakeClock())
    assert [bucket.consume() for _ in range(4)] == [True, True, True, False]


def test_tokens_come_back_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock=clock)
    assert bucket.consume()
    assert not bucket.consume()
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.wait_time() == pytest.approx(0.25)
    assert not bucket.consume()
    clock.advance(0.25)
    assert bucket.wait_time() == 0.0
    assert bucket.consume()


def test_a_long_idle_spell_fills_the_bucket_only_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(10.0, capacity=2, clock=clock)
    bucket.consume(2)
    clock.advance(3600)
    assert [bucket.consume() for _ in range(3)] == [True, True, False]


def test_consume_of_several_tokens_takes_all_or_none():
    clock = FakeClock()
    bucket = TokenBucket(1.0, capacity=3, clock=clock)
    assert bucket.consume(2)
    assert not bucket.consume(2)     # one left: not enough, and that one is kept
    assert bucket.wait_time(2) == pytest.approx(1.0)
    assert bucket.consume(1)


def test_asking_for_more_than_the_capacity_is_a_bug_not_a_wait():
    bucket = TokenBucket(1.0, capacity=2, clock=FakeClock())
    with pytest.raises(ValueError, match="capacity 2"):
        bucket.consume(3)
    with pytest.raises(ValueError):
        bucket.wait_time(3)


def test_set_rate_keeps_the_tokens_earned_at_the_old_rate():
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock)
    bucket.consume()
    clock.advance(0.5)                 # half a token earned at 1/s
    bucket.set_rate(10.0)
    assert bucket.wait_time() == pytest.approx(0.05)
    clock.advance(0.05)
    assert bucket.consume()


def test_set_rate_does_not_give_tokens_for_time_before_the_change():
    clock = FakeClock()
    bucket = TokenBucket(0.1, clock=clock)
    bucket.consume()
    clock.advance(1.0)                 # 0.1 token at the old rate
    bucket.set_rate(100.0)             # not 100 tokens for the past second
    assert bucket.wait_time() == pytest.approx(0.009)


def test_a_rate_of_none_is_no_limit_and_can_be_switched_at_run_time():
    clock = FakeClock()
    bucket = TokenBucket(None, capacity=2, clock=clock)
    assert all(bucket.consume() for _ in range(100))
    assert bucket.wait_time() == 0.0
    bucket.set_rate(1.0)               # limited again: starts full
    assert [bucket.consume() for _ in range(3)] == [True, True, False]
    bucket.set_rate(None)
    assert bucket.consume()


def test_a_clock_stepping_back_takes_no_tokens_away():
    clock = FakeClock()
    bucket = TokenBucket(1.0, capacity=2, clock=clock)
    bucket.consume()
    clock.advance(-10)
    assert bucket.consume()
    assert not bucket.consume()
    clock.advance(1.0)
    assert bucket.consume()


@pytest.mark.parametrize("rate, capacity", [(0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
def test_a_bucket_refuses_a_rate_or_capacity_it_could_never_honour(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity=capacity, clock=FakeClock())


def test_the_bucket_reads_only_the_clock_it_is_given():
    reads = []

    def clock():
        reads.append(len(reads))
        return 5.0

    bucket = TokenBucket(1.0, clock=clock)
    bucket.consume()
    bucket.wait_time()
    assert len(reads) == 3
