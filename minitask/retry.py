"""The retry policy, in one place: the worker and `Task.apply()` both ask it.

Early Celery's rules (SPEC section 2, "Retry"):

- a retry is allowed while ``retries < max_retries`` (``max_retries=None`` never gives up);
- when it is not, `exc` is raised if one was given, else `MaxRetriesExceededError`;
- the countdown is the one given, else none when an ``eta`` is given, else
  ``default_retry_delay``.

So a task that fails k times, retrying each time, runs ``min(k, max_retries) + 1`` times.
"""

from .exceptions import MaxRetriesExceededError

__all__ = ["can_retry", "next_countdown", "give_up"]


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
