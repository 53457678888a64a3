"""The crash suite's cluster on Redis: redis-server (and, for failovers, a replica and a
Sentinel) in place of the built-in broker, real ``python -m minitask worker`` processes, and
producers in this process, all pointed at it by ``BROKER_URL=redis://...`` (the workers by
``MINITASK_BROKER_URL`` in their environment, as `cluster.Worker` sets it from ``url``).

    cluster = RedisCluster(tmp_path).start(workers=2)     # one redis-server, AOF everysec
    cluster.kill_broker(); cluster.restart_broker()        # kill -9, same port and folder
    cluster.kill_worker(rng)                               # as chaoskit.Cluster does
    cluster.close()                                        # every process, even on failure

    cluster = RedisCluster(tmp_path, replica=True).start()  # a primary, a replica, a Sentinel
    cluster.fail_over()             # kill -9 the primary; Sentinel promotes the replica; the
                                    # old primary comes back as the new one's replica

With a replica the URL is ``redis+sentinel://``: clients ask the Sentinel where the primary
is each time they connect, as users run it. Every redis-server has AOF on
(``appendfsync everysec``), its own temporary folder and a free port. The workers' liveness
settings are short (``heartbeat=2``), so a killed worker's messages come back in seconds.
"""

import time
import uuid

from chaoskit import Cluster, wait_for             # (chaoskit puts tests/integration on the path)
from rediskit import REDIS_SERVER, SKIP_REASON, RedisServer  # noqa: F401  (for the tests)

from minitask import config, transport
from minitask.exceptions import MinitaskError
from minitask.transport.redis_client import RedisClient

SERVICE = "chaosmaster"
HEARTBEAT = 2.0             # a killed worker's messages are back within about 3 s
GRACE = 2.0
# Sentinel calls a primary down after this long without a reply, then fails over (1-2 s).
# Not 1000: with its PING period of a second, Sentinel then calls every primary it has just
# promoted down a second later and fails back (always, after SENTINEL FAILOVER, here).
DOWN_AFTER_MS = 2000
FAILOVER_SECONDS = 30.0     # the deadline for a failover to end (it takes 2-4 s here)
SENTINEL_SEES_SECONDS = 90.0    # Sentinel's view of a replica is refreshed every 10 s
# Every redis-server: AOF on (rediskit turns it on), fsync'd once a second.
REDIS_ARGS = ("--appendfsync", "everysec")


class RedisBroker:
    """What `chaoskit.Cluster` and `cluster.Worker` ask of a broker, on Redis: its ``url``
    and its ``status()``, read through the transport (a ``redis+sentinel://`` URL too)."""

    proc = None             # no broker process of ours (chaoskit.Cluster.close looks)

    def __init__(self, url):
        self.url = url
        self.settings = config.Settings({"BROKER_URL": url})

    def status(self):
        conn = transport.client_for(self.settings, client="chaos-status")
        try:
            return conn.connect().status()
        finally:
            conn.close()

    def queue(self, name="minitask"):
        return next((row for row in self.status()["queues"] if row["name"] == name), None)

    def output(self):
        return ""


def _info(client, section):
    text = client.execute("INFO", section).decode("utf-8", "replace")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisCluster(Cluster):
    """chaoskit's Cluster with redis-server for a broker (see the module docstring).

    `query` adds options to the URL (``publish_confirm="wait:1"``...). ``primary`` and
    ``replica`` name the servers in those roles now: `fail_over` swaps them.
    """

    def __init__(self, tmp_path, worker_args=("-c", "2"), replica=False, **query):
        super().__init__(tmp_path, worker_args=worker_args)
        self.servers = []
        self.primary = self._server("redis-a")
        self.replica = self._server("redis-b", "--replicaof", "127.0.0.1",
                                    str(self.primary.port)) if replica else None
        self.sentinel = None
        options = dict(dict(vhost="chaos-%s" % uuid.uuid4().hex[:10], heartbeat=HEARTBEAT,
                            handover_grace=GRACE), **query)
        tail = "&".join("%s=%s" % item for item in options.items())
        if replica:
            folder = tmp_path / "sentinel"
            folder.mkdir()
            # The replica is named at once, so that Sentinel need not wait for the
            # primary's INFO to find it.
            self.sentinel = RedisServer(folder, sentinel_conf=(
                "sentinel monitor %s 127.0.0.1 %d 1\n"
                "sentinel down-after-milliseconds %s %d\n"
                "sentinel failover-timeout %s 10000\n"
                "sentinel known-replica %s 127.0.0.1 %d\n"
                % (SERVICE, self.primary.port, SERVICE, DOWN_AFTER_MS, SERVICE, SERVICE,
                   self.replica.port)))
            self.servers.append(self.sentinel)
            url = "redis+sentinel://127.0.0.1:%d/%s/0?%s" % (self.sentinel.port, SERVICE, tail)
        else:
            url = "%s?%s" % (self.primary.url("/0"), tail)
        self.broker = RedisBroker(url)
        self.failovers = []         # seconds from each kill to the new primary named

    def _server(self, name, *args):
        folder = self.tmp_path / name
        folder.mkdir()
        server = RedisServer(folder, *(REDIS_ARGS + args))
        self.servers.append(server)
        return server

    def client(self, server):
        """A plain client of one server (for the test's own looks and commands)."""
        return RedisClient("redis://127.0.0.1:%d/0?retry_seconds=0" % server.port)

    def ask(self, *command):
        """A command to the Sentinel."""
        with RedisClient("redis://127.0.0.1:%d?retry_seconds=0" % self.sentinel.port) as c:
            return c.execute(*command)

    # -- starting -----------------------------------------------------------------------------

    def start(self, workers=2):
        self.primary.start()
        if self.replica is not None:
            self.replica.start()
            self._wait_replica_online()
            self.sentinel.start()
            self._wait_sentinel_sees_replica()
        return self.start_workers(workers)

    def _wait_replica_online(self):
        """Until the primary lists the replica online (a replica counts as connected while
        its first sync still runs, and WAIT needs it online)."""
        def online():
            try:
                with self.client(self.primary) as client:
                    return "state=online" in _info(client, "replication").get("slave0", "")
            except MinitaskError:
                return False
        wait_for(online, FAILOVER_SECONDS, 0.05, "the replica %d online" % self.replica.port)

    def _wait_sentinel_sees_replica(self):
        """Until Sentinel lists the replica up and linked to its primary. Sentinel asks a
        replica for its INFO every 10 s, so on a loaded machine this can take a while; the
        failure names what Sentinel last said."""
        port = b"%d" % self.replica.port
        last = []

        def sees():
            try:
                replicas = self.ask("SENTINEL", "REPLICAS", SERVICE)
            except MinitaskError as exc:
                last[:] = [str(exc)]
                return False
            last[:] = [replicas]
            for row in replicas:
                fields = dict(zip(row[0::2], row[1::2]))
                if fields.get(b"port") == port and b"s_down" not in fields.get(b"flags", b""):
                    return fields.get(b"master-link-status") == b"ok"
            return False
        try:
            wait_for(sees, SENTINEL_SEES_SECONDS, 0.05, "Sentinel to see the replica %d"
                     % self.replica.port)
        except AssertionError as exc:
            raise AssertionError("%s; Sentinel's last answer: %r; events: %s"
                                 % (exc, last, "; ".join(self.events))) from None

    def named_primary(self):
        """The port Sentinel names for the primary now."""
        host_port = self.ask("SENTINEL", "get-master-addr-by-name", SERVICE)
        return int(host_port[1])

    # -- killing ------------------------------------------------------------------------------

    def kill_broker(self):
        """kill -9 of the primary redis-server (the page cache, and so its AOF, survives)."""
        self.note("kill redis-server %d (port %d)" % (self.primary.process.pid,
                                                     self.primary.port))
        self.primary.kill()

    def restart_broker(self):
        """Start it again on its port and folder; seconds until it answers (not LOADING)."""
        began = time.monotonic()
        self.primary.start()

        def answers():
            try:
                with self.client(self.primary) as client:
                    return _info(client, "persistence").get("loading", "1").strip() == "0"
            except MinitaskError:
                return False
        wait_for(answers, FAILOVER_SECONDS, 0.02, "redis-server to load its AOF")
        self.note("redis-server %d ready" % self.primary.process.pid)
        return time.monotonic() - began

    def fail_over(self, graceful=False, sentinel_demotes=True):
        """Lose the primary and let Sentinel promote the replica; returns the seconds from
        the kill (or the ``SENTINEL FAILOVER``) until Sentinel names the new primary.

        The primary is killed with kill -9, then started again on its port and folder as the
        new primary's replica (as an operator brings a failed machine back); once it is
        online the roles are swapped, ready for the next failover.

        With `graceful`, the primary is not killed: ``SENTINEL FAILOVER`` promotes the
        replica while the old primary still takes writes (a split brain, as in a partition).
        As soon as Sentinel names the new primary, the old one is demoted: as Sentinel
        demotes it about ten seconds later (REPLICAOF and CLIENT KILL TYPE normal in one
        MULTI: its clients are dropped), or, without `sentinel_demotes`, by a bare REPLICAOF
        as an operator would (its blocked reads are answered UNBLOCKED, the other clients
        stay connected and get READONLY)."""
        old, new = self.primary, self.replica
        began = time.monotonic()
        if graceful:
            self.note("SENTINEL FAILOVER (primary %d)" % old.port)
            assert self.ask("SENTINEL", "FAILOVER", SERVICE) == "OK"
        else:
            self.note("kill primary %d (port %d)" % (old.process.pid, old.port))
            old.kill()
        wait_for(lambda: self.named_primary() == new.port, FAILOVER_SECONDS, 0.02,
                 "Sentinel to name %d the primary" % new.port)
        took = time.monotonic() - began
        self.note("Sentinel names %d the primary after %.2fs" % (new.port, took))
        if graceful:
            follow = ("REPLICAOF", "127.0.0.1", str(new.port))
            with self.client(old) as client:
                if sentinel_demotes:
                    replies = client.pipeline([("MULTI",), follow,
                                               ("CLIENT", "KILL", "TYPE", "normal"), ("EXEC",)])
                    assert isinstance(replies[-1], list), "the demotion failed: %r" % replies
                else:
                    client.execute(*follow)
        else:
            old.args = list(REDIS_ARGS)         # not the --replicaof it may have started with
            old.start("--replicaof", "127.0.0.1", str(new.port))
        self.note("old primary %d follows %d" % (old.port, new.port))
        self.primary, self.replica = new, old
        self._wait_replica_online()
        self._wait_sentinel_sees_replica()
        self.failovers.append(took)
        return took

    def kill_replica(self):
        self.note("kill replica %d (port %d)" % (self.replica.process.pid, self.replica.port))
        self.replica.kill()

    def restart_replica(self):
        """Start the replica again on its port and folder, following the primary; returns
        once it is online and Sentinel sees it."""
        self.replica.args = list(REDIS_ARGS)
        self.replica.start("--replicaof", "127.0.0.1", str(self.primary.port))
        self._wait_replica_online()
        self._wait_sentinel_sees_replica()
        self.note("replica %d online" % self.replica.port)

    # -- looking ------------------------------------------------------------------------------

    def check_no_failover_of_sentinels_own(self):
        """Sentinel's config epoch counts the failovers it made: one for each `fail_over`,
        or it also failed over by itself (flapping), and the test's account of what
        happened when is wrong."""
        row = self.ask("SENTINEL", "MASTER", SERVICE)
        epoch = int(dict(zip(row[0::2], row[1::2]))[b"config-epoch"])
        assert epoch == len(self.failovers), (
            "Sentinel made %d failovers, the test %d: it failed over by itself (events: %s)"
            % (epoch, len(self.failovers), "; ".join(self.events)))

    def blocked_readers(self):
        """Clients blocked in a read on the primary now (a worker's reader is one)."""
        try:
            with self.client(self.primary) as client:
                return int(_info(client, "clients").get("blocked_clients", "0"))
        except MinitaskError:
            return 0

    def describe(self, missing):
        """What a failing test reports: the tasks missing, the queue and workers Redis
        lists, who blocks on which server, the events and each worker's last log lines."""
        lines = ["missing: %s" % missing[:20], "events: %s" % "; ".join(self.events)]
        try:
            status = self.broker.status()
            lines.append("queue: %s" % self.broker.queue())
            lines.append("workers listed: %s" % [w.get("hostname") for w in status["workers"]])
        except MinitaskError as exc:
            lines.append("status: %s" % exc)
        for server in (self.primary, self.replica):
            if server is not None:
                try:
                    with self.client(server) as client:
                        lines.append("%d: role %s, blocked %s" % (
                            server.port, _info(client, "replication").get("role", "?").strip(),
                            _info(client, "clients").get("blocked_clients", "?").strip()))
                except MinitaskError as exc:
                    lines.append("%d: %s" % (server.port, exc))
        for worker in self.workers:
            tail = [line for line in worker.output().splitlines()
                    if "Received task" not in line and "succeeded in" not in line][-12:]
            lines.append("%s (alive %s):\n  %s" % (worker.name, worker.proc.alive(),
                                                   "\n  ".join(tail)))
        return "\n".join(lines)

    def worker_logs(self):
        return "\n".join(worker.output() for worker in self.workers)

    def close(self):
        try:
            super().close()
        finally:
            for server in reversed(self.servers):
                server.kill()       # a replica asked to stop waits for its primary

