"""4. Logging: a task writes to the worker's log file with get_logger(**kwargs).

The guide's `add`: it takes the default keyword arguments and hands them to
``add.get_logger(**kwargs)``, which gives a logger writing to the worker's log file (``-f``)
at the worker's level (``-l``), each line naming the task and its id. Lines below that level
are not written. This example's worker runs with ``-l INFO -f <scratch>/worker.log``.

Run it:  python examples/04_logging.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

from minitask import task


@task()
def add(x, y, **kwargs):
    logger = add.get_logger(**kwargs)
    logger.info("Adding %s + %s" % (x, y))
    logger.debug("Only written by a worker started with -l DEBUG")
    return x + y


def main(cluster):
    result = add.delay(4, 4)
    print("add.delay(4, 4).get() = %r" % result.get(timeout=10))

    def task_lines():
        with open(cluster.logfile) as log:
            return [line for line in log if "%s[%s]: " % (add.name, result.id) in line]
    lines = _run.wait_for(task_lines, what="the task's line in the worker's log")
    print("the worker's log file has %d line(s) from the task:" % len(lines))
    for line in lines:
        # "[2024-01-01 12:00:00,000: INFO/minitask-pool-1] 04_logging.add[<id>]: Adding 4 + 4"
        stamp, _, text = line.rstrip("\n").partition("] ")
        level = stamp.rpartition(": ")[2].partition("/")[0]
        print("  %s %s" % (level, text.replace(result.id, "<task id>")))


if __name__ == "__main__":
    _run.example(__file__)
