"""Rate limits: parse Celery's ``"100/m"`` spelling, and a token bucket to enforce it.

A task's ``rate_limit`` option (or the ``DEFAULT_RATE_LIMIT`` setting) is text like ``"10/s"``,
``"100/m"`` or ``"5/h"``, or a plain number meaning tasks per second. `parse_rate` turns it into
tasks per second, or None when the limit is off. The worker keeps one `TokenBucket` per task type
and asks it, before starting a task, whether a token is free and, if not, how long to wait.

Left to others: the worker decides what to do while it waits (schedule the message for later);
this module never sleeps and never reads the real clock except through the `clock` it is given.

Invariants kept by `TokenBucket`: over any stretch of time T the bucket hands out at most
``rate * (T + CLOCK_SLACK) + capacity`` tokens; `consume` succeeds exactly when `wait_time`
says 0; and after waiting `wait_time()` seconds, `consume` succeeds.
"""

import math
import time

from minitask.exceptions import ConfigurationError

__all__ = ["parse_rate", "TokenBucket", "CLOCK_SLACK"]

_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}

# A caller that waits exactly wait_time() must then get its tokens, but `now - last` is rounded
# to the clock's float resolution (about 1e-10 s when time.monotonic() is near 1e6). So a
# deficit that this much more time would make up counts as paid: the bucket may grant up to a
# microsecond early, never a whole token more.
CLOCK_SLACK = 1e-6


def parse_rate(value, name="rate_limit"):
    """Return a rate in tasks per second, or None when `value` turns the limit off.

    None, 0, "0" and "" mean off, as in Celery. `name` only labels the error message, so a
    setting can report itself (``DEFAULT_RATE_LIMIT '10/x': ...``).
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str):
        rate = _parse_rate_text(value.strip())
    else:
        rate = None
    if rate is None or not math.isfinite(rate) or rate < 0:
        raise ConfigurationError(
            f"{name} {value!r}: expected N/s, N/m or N/h, or a number per second")
    return rate or None


def _parse_rate_text(text):
    """Return tasks per second for "N/u" or "N", 0.0 for "", None when it does not parse."""
    if not text:
        return 0.0
    count, slash, unit = text.partition("/")
    if slash and unit.strip() not in _SECONDS_PER_UNIT:
        return None
    try:
        number = float(count)
    except ValueError:
        return None
    return number / _SECONDS_PER_UNIT[unit.strip()] if slash else number


class TokenBucket:
    """Hand out up to `rate_per_s` tokens a second, with bursts of up to `capacity`.

    The bucket starts full, so the first `capacity` requests go through at once. A rate of
    None means no limit: every `consume` succeeds. Only `clock()` tells the time, so tests
    drive it with a fake clock and the worker with `time.monotonic`.
    """

    def __init__(self, rate_per_s, capacity=1, clock=time.monotonic):
        if capacity < 1:
            raise ValueError(f"capacity {capacity!r}: expected at least 1 token")
        self._check_rate(rate_per_s)
        self.rate = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = float(capacity)
        self._last = clock()

    def consume(self, n=1):
        """Take `n` tokens and return True if they are there now; else take none, return False."""
        self._check_size(n)
        self._refill()
        if not self._has(n):
            return False
        self._tokens -= n
        return True

    def wait_time(self, n=1):
        """Return the seconds until `n` tokens are available; 0.0 when they are available now."""
        self._check_size(n)
        self._refill()
        if self._has(n):
            return 0.0
        return (n - self._tokens) / self.rate

    def set_rate(self, rate_per_s):
        """Change the rate from now on; tokens earned so far at the old rate are kept."""
        self._check_rate(rate_per_s)
        self._refill()
        self.rate = rate_per_s

    def _refill(self):
        now = self._clock()
        # A clock that steps back (it should not, being monotonic) earns nothing rather
        # than taking tokens away.
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self.rate is None:
            self._tokens = float(self.capacity)   # unlimited: always full
        else:
            self._tokens = min(float(self.capacity), self._tokens + elapsed * self.rate)

    def _has(self, n):
        return self.rate is None or self._tokens + self.rate * CLOCK_SLACK >= n

    def _check_size(self, n):
        # More tokens than the bucket holds could never be granted: a caller's bug, not a wait.
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of capacity {self.capacity}")

    @staticmethod
    def _check_rate(rate_per_s):
        if rate_per_s is not None and not rate_per_s > 0:
            raise ValueError(f"rate {rate_per_s!r}: expected a number per second above 0, "
                             "or None")

    def __repr__(self):
        return f"<TokenBucket rate={self.rate!r}/s capacity={self.capacity}>"
