"""Real broker and worker processes for tests, started and always stopped (`Broker`, `Worker`).

Imported by name (``from cluster import ...``) by the integration, hostile and crash suites;
their conftest.py files only hold fixtures, since a bare ``conftest`` module name means
whichever folder's pytest imported last.

Every process is started in its own session (process group) on a free port (``--port 0``,
the bound address read back from the broker's one ready line) in a temporary folder, and is
killed in the fixture's finalizer whatever the test did. Waits are polls with deadlines on
the broker's own status, never bare sleeps.
"""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from minitask import config  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402
from minitask.transport.builtin import Connection  # noqa: E402


def new_tag(what):
    """A name of its own for one test's traces and go-signals: `what` and a random part."""
    return "%s-%s" % (what, uuid.uuid4().hex[:10])


def wait_for(predicate, timeout=20.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns something true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    env.pop("MINITASK_CONFIG_MODULE", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def project_env(home, **extra):
    """The environment of a command run in a project at `home` (a Django one): this
    process's, less the settings it points at (MINITASK_*, DJANGO_SETTINGS_MODULE), with
    minitask and `home` on the path, plus `extra`."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MINITASK_") and name != "DJANGO_SETTINGS_MODULE"}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, str(home)]), PYTHONDONTWRITEBYTECODE="1",
               **extra)
    return env


def run_commands(broker, commands, env=None):
    """Several ``python -m minitask -b URL WORDS`` command lines at once (`commands`: lists
    of words; each may wait out its reply timeout): their (exit code, stdout, stderr), in
    order."""
    processes = [subprocess.Popen([sys.executable, "-m", "minitask", "-b", broker.url]
                                  + list(words), env=_env(env), cwd=ROOT, text=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
                 for words in commands]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        done.append((process.returncode, out, err))
    return done


class _Process:
    def __init__(self, command, log_path, env, cwd):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log,
                                        stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                        start_new_session=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.poll() is None

    def signal(self, signum):
        if self.alive():
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self):
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            try:
                os.kill(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.signal(signal.SIGKILL)             # leftovers in its group (pool children)
        return self.process.returncode

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def close(self):
        self.stop(5.0)
        self.log.close()


class Broker:
    """A `python -m minitask broker` process; `restart()` keeps its port and data."""

    def __init__(self, tmp_path, args=(), env=None):
        self.tmp_path = tmp_path
        self.data_dir = str(tmp_path / "broker-data")
        self.args = list(args)
        self.env = env or {}
        self.port = 0
        self.url = None
        self.proc = None
        self.starts = 0

    def command(self):
        """The command line that starts this broker (subclasses may run it differently)."""
        command = [sys.executable, "-m", "minitask", "broker", "--port", str(self.port),
                   "-l", "INFO"] + self.args
        if "--no-persist" not in self.args:
            command += ["--data-dir", self.data_dir]
        return command

    def start(self, timeout=20.0):
        """Start it (again: on the same port, which a client of the killed broker may hold
        for a moment: a connect retried to a port nobody listens on can connect the socket
        to itself, TCP's simultaneous open; so a restart tries again for up to 10 s)."""
        deadline = time.monotonic() + 10.0
        while True:
            line = self._start_once(timeout)
            if line != "dead" or not self.port or time.monotonic() > deadline or \
                    "Address already in use" not in self.proc.output():
                break
            time.sleep(0.2)             # the other socket's holder must let go: nothing to poll
        if line == "dead":
            raise AssertionError("broker exited with %s:\n%s" % (self.proc.process.returncode,
                                                                  self.proc.output()))
        self.url = line.rsplit(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def _start_once(self, timeout):
        self.starts += 1
        self.proc = _Process(self.command(), str(self.tmp_path / ("broker-%d.log" % self.starts)),
                             _env(self.env), ROOT)
        return wait_for(lambda: next((l for l in self.proc.lines
                                      if l.startswith("minitask broker listening on")), None)
                        or (not self.proc.alive() and "dead"),
                        timeout, what="the broker to listen")

    def kill(self):
        self.proc.kill()

    def stop(self):
        return self.proc.stop()

    def restart(self):
        if self.proc.alive():
            self.proc.stop()
        return self.start()

    def connect(self, **kwargs):
        return Connection(self.url, **kwargs).connect()

    def status(self):
        with self.connect() as conn:
            return conn.status()

    def queue(self, name="minitask"):
        for queue in self.status()["queues"]:
            if queue["name"] == name:
                return queue
        return None

    def output(self):
        return self.proc.output() if self.proc else ""


class Worker:
    """A `python -m minitask worker` process importing the tests' task module."""

    def __init__(self, broker, tmp_path, name, args=(), env=None, modules="ittasks"):
        self.broker = broker
        self.name = name
        self.logfile = str(tmp_path / ("worker-%s.log" % name))
        command = [sys.executable, "-m", "minitask", "worker", "-I", modules, "-n", name,
                   "-l", "INFO", "-f", self.logfile] + list(args)
        if "-c" not in args:
            command += ["-c", "2"]
        self.proc = _Process(command, str(tmp_path / ("worker-%s.out" % name)),
                             _env(dict(env or {}, MINITASK_BROKER_URL=broker.url,
                                       ITTASKS_DIR=str(tmp_path))), ROOT)

    def wait_ready(self, timeout=30.0):
        def connected():
            if not self.proc.alive():
                raise AssertionError("worker %s exited:\n%s" % (self.name, self.output()))
            return any(w.get("hostname") == self.name
                       for w in self.broker.status()["workers"])
        wait_for(connected, timeout, what="worker %s to connect" % self.name)
        return self

    def output(self):
        text = self.proc.output()
        if os.path.exists(self.logfile):
            with open(self.logfile, "rb") as handle:
                text += handle.read().decode("utf-8", "replace")
        return text

    def stop(self, timeout=15.0):
        return self.proc.stop(timeout)

    def kill(self):
        self.proc.kill()


@contextlib.contextmanager
def client_of(instance, tmp_path):
    """This process's client settings point at broker `instance` (built-in or Redis), and
    task traces go to `tmp_path`, until the block ends."""
    config.configure(BROKER_URL=instance.url, ACCEPT_CONTENT=["json", "pickle"])
    reset_connection()
    os.environ["ITTASKS_DIR"] = str(tmp_path)
    try:
        yield instance
    finally:
        reset_connection()
        config.reset()


def settings_modules(broker, tmp_path, monkeypatch, accept=("json", "pickle"), fresh=False):
    """The generator behind a fixture that writes settings modules: yields
    write(name, text) -> the env a worker needs to read it. The module goes into tmp_path
    (dedented), and this process reads it too, with the test's broker on top (and `accept`
    as ACCEPT_CONTENT, unless None: then the module's own); written modules are forgotten
    afterwards. With `fresh`, each is read as at a new start (its warnings said again)."""
    written = []
    overrides = {"BROKER_URL": broker.url}
    if accept is not None:
        overrides["ACCEPT_CONTENT"] = list(accept)

    def write(name, text):
        (tmp_path / (name + ".py")).write_text(textwrap.dedent(text))
        written.append(name)
        monkeypatch.setenv("MINITASK_CONFIG_MODULE", name)
        if fresh:
            config.reset()
        config.configure(**overrides)
        reset_connection()
        return {"MINITASK_CONFIG_MODULE": name,
                "PYTHONPATH": os.pathsep.join([ROOT, HERE, str(tmp_path)])}

    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield write
    finally:
        for name in written:
            sys.modules.pop(name, None)


@pytest.fixture
def celeryconfig(broker, tmp_path, monkeypatch):
    """celeryconfig(*texts) -> the worker's env: writes `texts` (a guide's settings) as a new
    settings module and points this process at it (with the broker's URL on top); a worker
    started with the returned env reads it too."""
    for write in settings_modules(broker, tmp_path, monkeypatch):
        yield lambda *texts: write("celeryconfig_%s" % uuid.uuid4().hex[:10],
                                   "".join(textwrap.dedent(t) for t in texts))


def workers_of(broker, tmp_path, modules="ittasks", ready_timeout=30.0):
    """The generator behind a `start_worker` fixture, on either transport: it yields
    start(name="w1", args=(...)) -> a connected Worker; all are stopped afterwards."""
    workers = []

    def start(name=None, args=(), env=None, ready=True, modules=modules):
        worker = Worker(broker, tmp_path, name or "w%d" % (len(workers) + 1), args, env,
                        modules)
        workers.append(worker)
        if ready:
            worker.wait_ready(ready_timeout)
        return worker
    try:
        yield start
    finally:
        for worker in workers:
            worker.proc.close()


@pytest.fixture
def broker(tmp_path, request):
    """A running broker with a journal in a temporary folder; the client settings point at it.

    ``@pytest.mark.broker_args("--flag", "value")`` passes extra command-line flags.
    """
    marker = request.node.get_closest_marker("broker_args")
    instance = Broker(tmp_path, args=marker.args if marker else ()).start()
    try:
        with client_of(instance, tmp_path):
            yield instance
    finally:
        instance.proc.close()
        if os.environ.get("MINITASK_SHOW_LOGS"):
            print(instance.output())


@pytest.fixture
def start_worker(broker, tmp_path):
    """start_worker(name="w1", args=(...)) -> a connected Worker; all are stopped afterwards."""
    yield from workers_of(broker, tmp_path)
