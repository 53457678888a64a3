"""Tasks the crash suite sends to real workers (imported by them with ``-I chaostasks``).

Every run appends one short line to a trace file in the test's temporary folder (the
``ITTASKS_DIR`` the integration harness gives every worker): ``index [fields...]``. The file
is opened with ``O_APPEND`` and each line goes out in one ``write`` of a few dozen bytes, so
lines from many pool processes never interleave, and a process killed by SIGKILL leaves
either its whole line or none. Reading the trace back counts runs and duplicates across
every worker, pool process and restart of the test.

A task writes its line when its body is done (after its bit of `work`), so a line means
"this run completed", which is what at-least-once promises.
"""

import os
import time

from minitask import Task, task

_files = {}                 # (pid, path) -> fd: one open per process and trace


def trace_path(directory, name):
    return os.path.join(str(directory), "trace-%s.log" % name)


def trace(name, *fields):
    """Append one line ``fields...`` to the trace `name` (one atomic write)."""
    path = trace_path(os.environ.get("ITTASKS_DIR", "/tmp"), name)
    key = (os.getpid(), path)
    fd = _files.get(key)
    if fd is None:
        fd = _files[key] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (" ".join(str(field) for field in fields) + "\n").encode("ascii"))


def read_trace(directory, name):
    """Every whole line of the trace `name`, split into fields (strings)."""
    try:
        with open(trace_path(directory, name), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.decode("ascii").split("\n")
    return [line.split() for line in lines[:-1] if line]     # the last piece is "" or torn


@task(name="chaos.late", acks_late=True, ignore_result=True)
def late(index, work=0.0):
    """At-least-once: acked after it finishes; runs again if anything dies meanwhile."""
    if work:
        time.sleep(work)
    trace("late", index, os.getpid())


@task(name="chaos.early")
def early(index, work=0.0):
    """The default: acked when it starts; ends SUCCESS, or FAILURE with WorkerLostError."""
    began = time.time()
    if work:
        time.sleep(work)
    trace("early", index, os.getpid(), "%.4f" % began)
    return index


@task(name="chaos.due_late", acks_late=True, ignore_result=True)
def due_late(index, eta):
    """A countdown task (acks_late): records when it ran beside the ETA it was sent with."""
    trace("due", index, "%.6f" % time.time(), "%.6f" % eta)


@task(name="chaos.due")
def due(index, eta):
    """A countdown task (acked when it starts)."""
    trace("due", index, "%.6f" % time.time(), "%.6f" % eta)
    return index


class Retrying(Task):
    """Fails `failures` times, retrying each time after `countdown` seconds, then succeeds.

    Each run records ``index task_retries time``: a retry must not run before the run that
    sent it plus its countdown.
    """

    name = "chaos.retrying"
    max_retries = 5

    def run(self, index, failures, countdown, task_retries=0):
        trace("retry", index, task_retries, "%.6f" % time.time())
        if task_retries < failures:
            self.retry(args=[index, failures, countdown], countdown=countdown,
                       exc=RuntimeError("planned failure %d" % task_retries))
        return index


retrying = Retrying
