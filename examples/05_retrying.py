"""5. Retrying a task if something fails: retry(exc=...), default_retry_delay, countdown.

`send_twitter_status` is the guide's: when Twitter fails it calls
``send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)``. That sends the
same task again (same id, ``task_retries + 1``) to run after ``default_retry_delay`` seconds
(one second here; three minutes unless a task sets it), and ends this run. While it waits,
its state is RETRY and its result is `exc`: the "tombstone". After `max_retries` retries
(3 by default) `retry()` raises `exc` instead, and that is how the task ends.

`MyTask` is the guide's other example, in its shape: a default delay of 30 minutes for
every retry, overridden by ``countdown=`` in one call. The guide's one-minute countdown is
one second here, so the example ends quickly.

The fake Twitter is down for a number of posts; each post attempt appends a line to a file
in the worker's folder, since each retry may run in another pool process.

Run it:  python examples/05_retrying.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import os
import time

from minitask import Task, task


class Twitter:
    """A stand-in for a Twitter client that fails while it is "over capacity"."""

    class FailWhaleError(Exception):
        pass

    class LoginError(Exception):
        pass

    def __init__(self, oauth):
        if oauth.get("token") != "valid":
            raise self.LoginError("bad token")
        self.outage = oauth.get("outage", 0)

    def update_status(self, tweet):
        with open("attempts-%s.txt" % tweet, "a+") as attempts:
            attempts.write("attempt\n")
            attempts.seek(0)
            count = len(attempts.readlines())
        if count <= self.outage:
            raise self.FailWhaleError("Twitter is over capacity")
        return "posted %s after %d attempts" % (tweet, count)


@task(default_retry_delay=1)     # seconds; the default is 180
def send_twitter_status(oauth, tweet, **kwargs):
    try:
        twitter = Twitter(oauth)
        return twitter.update_status(tweet)
    except (Twitter.FailWhaleError, Twitter.LoginError) as exc:
        send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)


class MyTask(Task):
    default_retry_delay = 30 * 60          # retry in 30 minutes

    def run(self, x, y, **kwargs):
        with open("mytask-runs.txt", "a") as runs:
            runs.write("%.6f\n" % time.time())
        try:
            if kwargs["task_retries"] == 0:
                raise ConnectionError("the database is not there yet")
            return x + y
        except Exception as exc:
            # override the default and retry in 1 second (the guide: 60, one minute)
            self.retry([x, y], exc=exc, countdown=1, **kwargs)


def main(cluster):
    # All three are sent at once; the worker's two pool processes run them side by side.
    result = send_twitter_status.delay({"token": "valid", "outage": 2}, "hello")
    down = send_twitter_status.delay({"token": "valid", "outage": 99}, "doomed")
    mine = MyTask.delay(2, 3)

    tombstone = _run.wait_for(lambda: result.state == "RETRY" and result.result,
                              what="the RETRY state")
    print("waiting to retry: state RETRY, tombstone %r" % tombstone)
    print("after Twitter comes back: %r" % result.get(timeout=20))

    try:
        down.get(timeout=20)
    except Twitter.FailWhaleError as exc:
        print("after max_retries=%d retries it raises exc: %s: %s"
              % (send_twitter_status.max_retries, type(exc).__name__, exc))
    print("  state %s" % down.state)
    with open(os.path.join(cluster.scratch, "attempts-doomed.txt")) as attempts:
        print("  Twitter saw %d attempts" % len(attempts.readlines()))

    print("MyTask.default_retry_delay = %r seconds" % MyTask.default_retry_delay)
    print("MyTask.delay(2, 3).get() = %r" % mine.get(timeout=20))
    with open(os.path.join(cluster.scratch, "mytask-runs.txt")) as runs:
        first, second = [float(line) for line in runs]
    print("  it ran twice, the retry after countdown=1: %s (not 30 minutes later: %s)"
          % (second - first >= 1.0, second - first < 60))


if __name__ == "__main__":
    _run.example(__file__)
