"""The retry policy, in one place: the worker and `Task.apply()` both ask it.

Early Celery's rules:

- a retry is allowed while ``retries < max_retries`` (``max_retries=None`` never gives up);
- when it is not, `exc` is raised if one was given, else `MaxRetriesExceededError`;
- the countdown is the one given, else none when an ``eta`` is given, else
  ``default_retry_delay``.

So a task that fails k times, retrying each time, runs ``min(k, max_retries) + 1`` times.

Celery's automatic retries (``autoretry_for``) may back off exponentially: `backoff_countdown`.
"""

import random

from .exceptions import MaxRetriesExceededError

__all__ = ["can_retry", "next_countdown", "give_up", "backoff_countdown"]


def can_retry(retries, max_retries):
    """True if a task already retried `retries` times may retry once more."""
    return max_retries is None or retries < max_retries


def next_countdown(countdown, eta, default_retry_delay):
    """Seconds to wait before the retry runs (None when an eta decides instead)."""
    if countdown is not None:
        return countdown
    if eta is not None:
        return None
    return default_retry_delay


def give_up(task_name, task_id, retries, max_retries, exc=None):
    """The exception to raise when no retry is left: `exc`, or MaxRetriesExceededError."""
    if exc is not None:
        return exc
    return MaxRetriesExceededError("task %s[%s] cannot retry: it already retried %d of "
                                   "max_retries=%s times" % (task_name, task_id, retries,
                                                             max_retries))


def backoff_countdown(factor, retries, maximum, jitter, rng=random):
    """Celery's exponential backoff: ``factor * 2**retries`` seconds, at most `maximum`, and
    with `jitter` a whole number of seconds drawn evenly from 0 up to that ("full jitter").

    `factor` True is 1; like Celery, a factor is a whole number of seconds, at least 1.
    """
    factor = int(max(1.0, float(factor)))
    maximum = int(maximum)
    # Past 2**64 the cap has long won; not building huge integers keeps it cheap.
    countdown = maximum if retries >= 64 else min(maximum, factor * 2 ** retries)
    if jitter:
        countdown = rng.randrange(countdown + 1)
    return max(0, countdown)
