"""Real redis-server processes for tests: a free port, a temporary folder, AOF on, and always
stopped. Tests skip, saying why, where redis-server is not installed."""
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

from cluster import wait_for  # noqa: F401  (for the Redis tests)

from minitask import config, transport

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = ("redis-server not found on PATH: the Redis tests skip "
               "(install it with `apt-get install redis-server`)")
START_SECONDS = 15.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _PortTaken(Exception):
    """redis-server could not bind its port: another process has it."""


def _listens(pid, port):
    """Whether process `pid` has a socket listening on TCP `port` (Linux's /proc); where
    /proc cannot say, whether anything takes connections there."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue                # closed meanwhile
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return True
        except OSError:
            return False
    return any(row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port
               and row[9] in inodes for row in rows)


class RedisServer:
    """One redis-server (or Sentinel, with ``sentinel_conf``) in `folder`, on a free port.

    ``start()`` again after ``kill()`` restarts it on the same port and folder, so it loads
    what it persisted.
    """

    def __init__(self, folder, *args, port=None, tls=False, sentinel_conf=None, env=None):
        self.folder = str(folder)
        self.env = env                  # the server's environment (None: this process's)
        self.port = port or free_port()
        self.args = list(args)
        self.tls = tls
        self.sentinel_conf = sentinel_conf
        self.process = None
        self.started = False            # once: a restart keeps its port, whatever happens
        self.log_path = os.path.join(self.folder, "redis-%d.log" % self.port)

    def command(self, *extra):
        if self.sentinel_conf is not None:
            conf = os.path.join(self.folder, "sentinel-%d.conf" % self.port)
            with open(conf, "w") as handle:
                handle.write("port %d\ndir %s\n%s" % (self.port, self.folder,
                                                       self.sentinel_conf))
            return [REDIS_SERVER, conf, "--sentinel"] + self.args + list(extra)
        ports = (["--port", "0", "--tls-port", str(self.port)] if self.tls
                 else ["--port", str(self.port)])
        # No 5-second pause before a replica's first sync: tests fail over at once.
        return ([REDIS_SERVER] + ports + ["--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "yes", "--dir", self.folder,
                                          "--repl-diskless-sync-delay", "0"]
                + self.args + list(extra))

    def start(self, *extra):
        """Start (again) and wait until it listens; it may still be loading. A first start
        whose port another process took meanwhile (the other test shard: `free_port` only
        finds a port free a moment ago) tries again on another port; until then, a port
        that takes connections may be that other process's, so what counts is this
        server's own listening socket (where /proc shows it)."""
        for attempt in range(3):
            try:
                return self._start(extra)
            except _PortTaken:
                if self.started or attempt == 2:
                    raise RuntimeError("port %d is taken: %s" % (self.port, self.log_tail()))
                self.port = free_port()
                self.log_path = os.path.join(self.folder, "redis-%d.log" % self.port)

    def _start(self, extra):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(*extra), cwd=self.folder, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                if "Address already in use" in self.log_tail():
                    raise _PortTaken()
                raise RuntimeError("redis-server exited with %s: %s"
                                   % (self.process.returncode, self.log_tail()))
            if _listens(self.process.pid, self.port):
                self.started = True
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not listen on %d within %.0fs: %s"
                                   % (self.port, START_SECONDS, self.log_tail()))
            time.sleep(0.02)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def kill(self):
        """SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def url(self, path="", **query):
        scheme = "rediss" if self.tls else "redis"
        host = "localhost" if self.tls else "127.0.0.1"
        tail = "&".join("%s=%s" % item for item in query.items())
        return "%s://%s:%d%s%s" % (scheme, host, self.port, path, "?" + tail if tail else "")


class RedisBroker:
    """What `cluster.Worker` and the guide's tests ask of a broker, for a fresh virtual host
    of `server`: its URL (with the `query` options), a connection, its status and a queue's
    row of it (as `cluster.Broker`'s)."""

    def __init__(self, server, prefix="w", **query):
        self.server = server
        self.url = server.url("/0", vhost="%s-%s" % (prefix, uuid.uuid4().hex[:12]), **query)
        self.settings = config.Settings({"BROKER_URL": self.url})

    def connect(self):
        """A connected client of this vhost (a context manager that closes it)."""
        return transport.client_for(self.settings, client="test").connect()

    def status(self):
        with self.connect() as conn:
            return conn.status()

    def queue(self, name="minitask"):
        return next((row for row in self.status()["queues"] if row["name"] == name), None)
