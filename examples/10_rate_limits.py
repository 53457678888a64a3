"""10. Rate limits: at most so many runs of a task type per second, minute or hour.

``rate_limit="5/s"`` (or ``"100/m"``, ``"5/h"``, or a number meaning per second) caps how
often each worker starts that task type. The worker holds back the surplus and starts it as
the limit allows; other task types are not held up behind it. The DEFAULT_RATE_LIMIT
setting gives a limit to every task that sets none (off by default).

Here eight rate-limited calls and four unlimited ones are sent together.

Run it:  python examples/10_rate_limits.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import time

from minitask import task


@task(rate_limit="5/s")
def fetch_page(n):
    return time.time()


@task()
def count_words(n):
    return time.time()


def main(cluster):
    print("fetch_page.rate_limit = %r, count_words.rate_limit = %r"
          % (fetch_page.rate_limit, count_words.rate_limit))
    started = time.time()
    limited = [fetch_page.delay(n) for n in range(8)]
    unlimited = [count_words.delay(n) for n in range(4)]
    limited_done = max(result.get(timeout=20) for result in limited)
    unlimited_done = max(result.get(timeout=20) for result in unlimited)
    elapsed = time.time() - started
    # The first call may start at once; each of the other seven waits 1/5 s for its turn.
    print("8 calls of fetch_page took at least 7 x 0.2 s = 1.4 s: %s" % (elapsed >= 1.39))
    print("the 4 calls of count_words, sent after them, finished first: %s"
          % (unlimited_done < limited_done))


if __name__ == "__main__":
    _run.example(__file__)
