"""What every example shares: a broker and a worker of its own, started and always stopped.

Each example file is two things at once. It is a task module, which its worker imports by
name (``-I 01_task_class_and_decorator``; `importlib` does not mind the leading digits that an
``import`` statement would refuse). And it is a script, ending with::

    if __name__ == "__main__":
        _run.example(__file__)

`example()` then:

1. starts ``python -m minitask broker --port 0 --data-dir <scratch>`` and reads back the
   address from its one ready line (``minitask broker listening on minitask://HOST:PORT``);
2. starts ``python -m minitask worker -I <the example's module> -f <scratch>/worker.log``
   with this folder on its PYTHONPATH (unless the example starts its own worker later);
3. points this process at the broker: ``minitask.configure(BROKER_URL=...)``;
4. imports the example again *under its module name*, exactly as the worker did, and calls
   that module's ``main(cluster)``. Run as a script, the file is ``__main__`` and its tasks
   are named ``__main__.add``; the worker knows them as ``01_task_class_and_decorator.add``.
   Messages carry names, so client and worker must agree on them;
5. stops the worker and the broker, whatever happened, and removes the scratch folder.

Importing this module first also makes the checkout's `minitask` importable when it is not
installed, which is why every example starts with ``import _run``.
"""

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import minitask  # noqa: F401  (installed, or already on the path)
except ImportError:
    sys.path.insert(0, ROOT)

START_TIMEOUT = 20.0     # seconds a broker or a worker may take to come up on a slow machine

__all__ = ["example", "Cluster", "wait_for"]


def wait_for(predicate, timeout=10.0, what="a condition"):
    """Poll `predicate` until it returns something true, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(0.02)


class Cluster:
    """One broker and the workers of one example, in a scratch folder."""

    def __init__(self, module_name, scratch):
        self.module_name = module_name
        self.scratch = scratch              # the workers' working directory, too
        self.url = None
        self.logfile = os.path.join(scratch, "worker.log")
        self._processes = []                # (name, Popen), stopped in reverse order
        self._workers = 0

    def _env(self, extra):
        env = dict(os.environ)
        env.pop("MINITASK_CONFIG_MODULE", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, ROOT, env.get("PYTHONPATH"))
                                            if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra or {})
        return env

    def _spawn(self, name, command, env, read_stdout=False):
        output = open(os.path.join(self.scratch, name + ".out"), "wb")
        process = subprocess.Popen(command, cwd=self.scratch, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE if read_stdout else output,
                                   stderr=output,
                                   start_new_session=True)    # its pool children stop with it
        output.close()
        self._processes.append((name, process))
        return process

    def start_broker(self):
        command = [sys.executable, "-m", "minitask", "broker", "--port", "0",
                   "--data-dir", os.path.join(self.scratch, "broker-data"), "-l", "INFO"]
        process = self._spawn("broker", command, self._env({}), read_stdout=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        line = lines[0].decode("utf-8", "replace").strip() if lines else ""
        if not line.startswith("minitask broker listening on "):
            raise RuntimeError("the broker did not start:\n" + self.output("broker"))
        self.url = line.rsplit(" ", 1)[1]
        return self.url

    def start_worker(self, args=("-c", "2"), modules=None, env=None, settings=None,
                     ready=True):
        """Start ``python -m minitask worker``; `modules` defaults to this example's module
        (pass "" for none), `settings` become MINITASK_<NAME> variables. With `ready`, return
        once the worker has connected to the broker."""
        self._workers += 1
        name = "worker" if self._workers == 1 else "worker%d" % self._workers
        modules = self.module_name if modules is None else modules
        command = [sys.executable, "-m", "minitask", "worker", "-n", name, "-l", "INFO",
                   "-f", os.path.join(self.scratch, name + ".log")]
        command += ["-I", modules] if modules else []
        command += list(args)
        extra = {"MINITASK_BROKER_URL": self.url}
        extra.update(_as_environment(settings or {}))
        extra.update(env or {})
        process = self._spawn(name, command, self._env(extra))
        if ready:
            wait_for(lambda: self._connected(name, process), START_TIMEOUT,
                     "worker %s to connect" % name)
        return process

    def _connected(self, name, process):
        if process.poll() is not None:
            raise RuntimeError("worker %s exited:\n%s" % (name, self.output(name)))
        return any(worker.get("hostname") == name for worker in self.status()["workers"])

    def status(self):
        """What ``python -m minitask status --json`` shows: queues, depths, workers."""
        from minitask.transport import connection
        return connection().status()

    def waiting(self, *queues):
        """{queue: messages ready in it} for the queues named."""
        ready = {queue["name"]: queue["ready"] for queue in self.status()["queues"]}
        return {name: ready.get(name, 0) for name in queues}

    def output(self, name):
        text = ""
        for suffix in (".out", ".log"):
            path = os.path.join(self.scratch, name + suffix)
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    text += handle.read().decode("utf-8", "replace")
        return text

    def stop(self):
        """SIGTERM every process (workers first, the broker last); SIGKILL what lingers."""
        for _name, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)      # and anything left in its group
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _as_environment(settings):
    """MINITASK_<NAME> variables for settings: text as is, flags as 1/0, the rest as JSON."""
    env = {}
    for name, value in settings.items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value)
        env["MINITASK_" + name] = text
    return env


def example(path, worker=True, worker_args=("-c", "2"), env=None, settings=None):
    """Run the example in file `path`: its broker, its worker, its ``main(cluster)``.

    `settings` apply to both sides (``minitask.configure`` here, MINITASK_<NAME> for the
    worker); `env` only to the worker. With ``worker=False`` the example starts its own.
    """
    from minitask import configure
    from minitask.transport import reset_connection
    # SIGTERM (a test runner's timeout, say) ends the example through `finally` below, so
    # its broker and worker never outlive it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    module_name = os.path.splitext(os.path.basename(path))[0]
    scratch = tempfile.mkdtemp(prefix="minitask-example-")
    cluster = Cluster(module_name, scratch)
    failed = True
    try:
        configure(BROKER_URL=cluster.start_broker(), **(settings or {}))
        reset_connection()
        if worker:
            cluster.start_worker(worker_args, env=env, settings=settings)
        module = importlib.import_module(module_name)
        module.main(cluster)
        failed = False
    finally:
        reset_connection()
        cluster.stop()
        if failed:                          # show the learner what the processes said
            for name, _process in cluster._processes:
                sys.stderr.write("--- %s ---\n%s" % (name, cluster.output(name)))
        shutil.rmtree(scratch, ignore_errors=True)
