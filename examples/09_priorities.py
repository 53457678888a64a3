"""9. Priorities: 0 to 9, and 0 is the highest.

``priority`` is a task option and an `apply_async` argument. Within a queue the broker
delivers higher priorities first (0 before 9), and messages of equal priority in the order
they were sent; a message with no priority counts as 4.

Here five messages are sent before any worker runs, so they wait in the queue together.
The worker then runs them one at a time (``-c 1 --prefetch-multiplier 1``: a worker that
reserves several messages at once runs them in the order it reserved them). Each run appends
its name to a file in the worker's folder, so we can read the order back.

Run it:  python examples/09_priorities.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import os

from minitask import task


@task()
def job(name):
    with open("ran.txt", "a") as ran:
        ran.write(name + "\n")
    return name


@task(priority=0)
def urgent(name):
    return job(name)


def main(cluster):
    sent = [job.apply_async(("low (9)",), priority=9),
            job.apply_async(("normal (none = 4)",)),
            job.apply_async(("high (1)",), priority=1),
            urgent.delay("urgent (0, a task option)"),
            job.apply_async(("normal (5)",), priority=5)]
    print("sent, in this order: low (9), normal (none = 4), high (1), urgent (0), normal (5)")
    cluster.start_worker(["-c", "1", "--prefetch-multiplier", "1"])
    for result in sent:
        result.get(timeout=10)
    with open(os.path.join(cluster.scratch, "ran.txt")) as ran:
        print("ran, in this order:")
        for line in ran:
            print("  " + line.strip())


if __name__ == "__main__":
    _run.example(__file__, worker=False)
