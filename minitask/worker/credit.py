"""How many messages a worker reserves beyond its prefetch while its tasks are short.

A worker reserves `prefetch` messages: its pool processes times PREFETCH_MULTIPLIER, as in
Celery. Every message it runs costs it a share of a round trip to the broker (its ack, the
fetch of the next one). For a task shorter than that round trip the prefetch, not the pool,
sets the pace: at the default multiplier a worker of two processes draining no-op tasks from
Redis keeps each process idle about three quarters of the time. Celery's advice for many
short tasks is a bigger multiplier; the worker takes that advice by itself, but only while
it costs nothing:

- it has earned it: the last `prefetch` tasks to finish each ran under `FAST_SECONDS`;
- it is at work: an idle worker asks for its prefetch only, so that a burst of tasks of any
  kind never finds more credit than that waiting for it;
- and it still holds only tasks it knows to run that fast (the caller checks, `allowed`).

Then it reserves up to `FACTOR` times its prefetch. The first slower task, or one of a name
it has not seen run, ends the boost at once, so what it holds that another worker could
have run is at most a few milliseconds of work. A multiplier of 1, Celery's setting for long
tasks (reserve no more than you run), is always kept exactly.
"""

from .pool import FAST_SECONDS

__all__ = ["FastCredit", "FACTOR"]

# The most a worker of short tasks reserves, as a multiple of its prefetch: 16 messages per
# process at the default multiplier, where a drain of no-op tasks on Redis stops gaining.
FACTOR = 4


class FastCredit:
    """The extra credit a worker earns by running short tasks (see the module docstring)."""

    def __init__(self, prefetch, multiplier):
        self.extra = prefetch * (FACTOR - 1) if multiplier > 1 else 0
        self.needed = prefetch          # fast tasks in a row that earn it
        self.streak = 0

    def finished(self, runtime):
        """A task finished after `runtime` seconds (None: it did not run)."""
        if runtime is not None and runtime < FAST_SECONDS:
            self.streak += 1
        else:
            self.streak = 0

    def forget(self):
        """Start over (a new connection: what was reserved went back)."""
        self.streak = 0

    def earned(self):
        return bool(self.extra) and self.streak >= self.needed

    def extra_now(self, allowed):
        """The extra credit to ask for now; `allowed()` says whether everything held is
        known to be fast, and is only asked once the boost is earned."""
        if self.earned() and allowed():
            return self.extra
        return 0
