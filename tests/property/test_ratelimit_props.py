"""Invariants of minitask.ratelimit.TokenBucket, for any rate, capacity and schedule."""
from hypothesis import given
from hypothesis import strategies as st

from minitask.ratelimit import CLOCK_SLACK, TokenBucket


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


rates = st.floats(min_value=0.001, max_value=1000.0)
capacities = st.integers(min_value=1, max_value=5)
# (seconds to advance, tokens to ask for): bursts with no time between them included.
schedules = st.lists(st.tuples(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=10.0)),
                               st.integers(min_value=1, max_value=5)), max_size=60)


@given(rates, capacities, schedules, st.floats(min_value=0.0, max_value=1e6))
def test_tokens_granted_in_any_window_are_at_most_rate_times_length_plus_capacity(
        rate, capacity, schedule, start):
    clock = FakeClock(start)
    bucket = TokenBucket(rate, capacity=capacity, clock=clock)
    steps = []   # (time the step started, tokens granted)
    for seconds, wanted in schedule:
        clock.advance(seconds)
        wanted = min(wanted, capacity)
        steps.append((clock.now, wanted if bucket.consume(wanted) else 0))
    for first, (window_start, _) in enumerate(steps):
        granted = 0
        for window_end, tokens in steps[first:]:
            granted += tokens
            # CLOCK_SLACK: the bucket may grant a microsecond early to absorb clock rounding.
            allowed = rate * (window_end - window_start + CLOCK_SLACK) + capacity
            assert granted <= allowed + 1e-9 * allowed


@given(rates, capacities, schedules, st.floats(min_value=0.0, max_value=1e7))
def test_consume_succeeds_exactly_when_wait_time_was_zero(rate, capacity, schedule, start):
    clock = FakeClock(start)
    bucket = TokenBucket(rate, capacity=capacity, clock=clock)
    for seconds, wanted in schedule:
        clock.advance(seconds)
        wanted = min(wanted, capacity)
        wait = bucket.wait_time(wanted)
        assert wait >= 0.0
        assert bucket.consume(wanted) is (wait == 0.0)


@given(rates, capacities, schedules, st.floats(min_value=0.0, max_value=1e7))
def test_after_waiting_wait_time_consume_succeeds(rate, capacity, schedule, start):
    clock = FakeClock(start)
    bucket = TokenBucket(rate, capacity=capacity, clock=clock)
    for seconds, wanted in schedule:
        clock.advance(seconds)
        wanted = min(wanted, capacity)
        clock.advance(bucket.wait_time(wanted))
        assert bucket.consume(wanted)
