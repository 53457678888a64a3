"""`python -m minitask demo`: a broker, a worker and a few tasks, on the built-in defaults.

Starts both as child processes in a scratch folder on a free port, sends a sum, a task that
fails twice and retries, and a countdown, prints what comes back, and stops everything.
The tasks below are what the worker runs (it imports this module with ``-I minitask.demo``).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .decorators import task
from .processes import READY_PREFIX, read_line
from .config import configure
from .transport import reset_connection

__all__ = ["run_demo", "add", "flaky", "hello"]

_attempts = {}


@task(name="demo.add")
def add(x, y):
    return x + y


@task(name="demo.flaky", default_retry_delay=0.5, max_retries=3)
def flaky(fail_times, task_retries=0):
    """Fails `fail_times` times, retrying half a second later each time, then succeeds."""
    if task_retries < fail_times:
        flaky.retry(args=[fail_times], exc=RuntimeError("failure %d" % (task_retries + 1)))
    return "succeeded after %d retries" % task_retries


@task(name="demo.hello")
def hello(name):
    return "hello, %s" % name


def _start(command, env, cwd):
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def _stop(process, timeout=10.0):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_demo(out=print):
    """Run the demo; returns 0 when every task gave the expected answer."""
    scratch = tempfile.mkdtemp(prefix="minitask-demo-")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MINITASK_CONFIG_MODULE", None)
    broker = worker = None
    try:
        out("minitask demo: starting a broker and a worker in %s" % scratch)
        broker = _start([sys.executable, "-m", "minitask", "broker", "--port", "0",
                         "--data-dir", os.path.join(scratch, "data"), "-l", "WARNING"],
                        env, scratch)
        line = read_line(broker, READY_PREFIX, 20.0)
        if line is None:
            out("the broker did not start; its output:\n%s" % _drain(broker))
            return 1
        url = line.rsplit(" ", 1)[1]
        out(line)
        env["MINITASK_BROKER_URL"] = url
        worker = _start([sys.executable, "-m", "minitask", "worker", "-I", "minitask.demo",
                         "-c", "2", "-l", "WARNING"], env, scratch)
        configure(BROKER_URL=url)
        reset_connection()
        started = time.monotonic()
        total = add.delay(2, 2)
        retried = flaky.delay(2)
        later = hello.apply_async(("world",), countdown=1.5)
        ok = True
        for label, result, expected in (
                ("add(2, 2)", total, 4),
                ("flaky(2)   (fails twice, retries)", retried, "succeeded after 2 retries"),
                ("hello('world') with countdown=1.5", later, "hello, world")):
            value = result.get(timeout=30)
            out("%-36s -> %r   [%s after %.2fs]" % (label, value, result.state,
                                                   time.monotonic() - started))
            ok = ok and value == expected
        out("all tasks done; stopping the worker and the broker")
        return 0 if ok else 1
    finally:
        reset_connection()
        for process in (worker, broker):
            if process is not None:
                _stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


def _drain(process):
    _stop(process, 2.0)
    return process.stdout.read() if process.stdout else ""
