"""Celery's "Using Redis" guide (docs/getting-started/backends-and-brokers/redis.rst, Celery
5), its settings and caveats pasted as a Celery user writes them (``app.conf.X = ...`` is a
line ``X = ...`` of a settings module, or ``minitask.configure(X=...)``), run by real workers
on both transports: the built-in broker and Redis (the `broker` fixture of both.py). What
only Redis can do (its URL forms, its databases, its eviction policy) skips on the built-in
one. The guide's tasks are in redisidioms.py.

Where the README names a difference (results live in the broker; a Celery setting minitask
has no use for is warned about once), the test checks minitask's documented behaviour and
cites the README.
"""

import os
import re
import select
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import (  # noqa: E402,F401  (celeryconfig: a fixture)
    celeryconfig, new_tag, settings_modules, wait_for, workers_of,
)
from ittasks import read_trace  # noqa: E402
from rediskit import RedisBroker, RedisServer  # noqa: E402
from test_redis_client import certificates  # noqa: E402,F401  (a CA and a server key)
from redisidioms import (  # noqa: E402
    add, collect, long_task, poll_later, record, remind, slow_add,
)

from minitask import chord, config, control, group, transport  # noqa: E402
from minitask.exceptions import (  # noqa: E402
    BrokerConnectionError, BrokerError, ConfigurationError,
)
from minitask.transport import reset_connection  # noqa: E402
from minitask.transport.redis_client import RedisClient  # noqa: E402
from minitask.transport.redis_keys import Keys  # noqa: E402

MODULES = "redisidioms"
T = 20              # the timeout of every get()


@pytest.fixture
def redis_only(request):
    """Skips the built-in broker's run of a test whose idiom only Redis has, before that
    broker is started (list it before `broker`)."""
    if request.node.callspec.params.get("broker") == "builtin":
        pytest.skip("a Redis-only idiom of the guide")


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


class GuideRedis(RedisBroker):
    """A Redis broker reached by the guide's URL as written (no minitask option in it), for
    `workers_of` and `settings_modules`."""

    def __init__(self, server, url):
        self.server = server
        self.url = url
        self.settings = config.Settings({"BROKER_URL": url})


@pytest.fixture
def guide_redis(tmp_path, monkeypatch):
    """guide_redis(url, settings_text, server) -> start_worker: this process and the
    workers started use the settings module `settings_text` with broker_url = `url`."""
    stack = []

    def use(url, text, server=None):
        guide = GuideRedis(server, url)
        settings = settings_modules(guide, tmp_path, monkeypatch)
        write = next(settings)
        workers = workers_of(guide, tmp_path, MODULES)
        start = next(workers)
        stack.extend([settings, workers])
        env = write("guideconf_%s" % new_tag("r").replace("-", "_"),
                    "broker_url = %r\n%s" % (url, text))
        return lambda **kwargs: start(env=env, **kwargs)
    try:
        yield use
    finally:
        for generator in reversed(stack):
            generator.close()
        reset_connection()
        config.reset()


def warned(output, name):
    """How many times the worker's output warned that it ignores setting `name`."""
    return output.count("ignoring %s: minitask has no such setting" % name)


def is_redis(broker):
    return broker.url.startswith("redis")


# -- Configuration: the URL forms ----------------------------------------------------------

def test_the_guides_url_with_a_password_and_a_database_number(redis_only, broker, tmp_path,
                                                              guide_redis):
    """``redis://:password@hostname:port/db_number``: the keys go to that database only.
    Caveats, Key eviction: "Redis may evict keys from the database in some situations. If
    you experience an error like: InconsistencyError: Probably the key
    ('_kombu.binding.celery') has been removed from the Redis database then you may want to
    configure the redis-server to not evict keys by setting ... maxmemory-policy to
    noeviction or allkeys-lru". README (Scaling out): start-up warns once when the policy is
    not noeviction, so allkeys-lru, which Celery allows, is warned about. What an LRU policy
    takes first, the keys a running client reads only when its topology changes (exchanges,
    queues, bindings and their version), going under a running client: a call either runs
    or is refused saying so (as Celery's InconsistencyError), never taken and dropped; a
    client that connects again declares them again, and the worker carries on."""
    folder = tmp_path / "own"
    folder.mkdir()
    own = RedisServer(folder, "--requirepass", "s3cret", "--maxmemory", "256mb",
                      "--maxmemory-policy", "allkeys-lru").start()
    try:
        url = "redis://:s3cret@127.0.0.1:%d/3" % own.port
        start = guide_redis(url, "", own)
        worker = start()
        assert add.delay(2, 2).get(timeout=T) == 4
        db3, db0 = RedisClient(url), RedisClient(url[:-1] + "0")
        try:
            assert db3.execute("DBSIZE") > 0 and db0.execute("DBSIZE") == 0
        finally:
            db3.close()
            db0.close()
        output = worker.output()
        assert output.count("maxmemory-policy is allkeys-lru") == 1, output
        assert "s3cret" not in output
        evict, keys = RedisClient(url), Keys("minitask")     # the vhost of a plain URL
        try:
            for key in (keys.exchanges, keys.queues, keys.bindings, keys.topology):
                assert evict.execute("DEL", key) == 1
        finally:
            evict.close()
        try:
            assert add.delay(3, 3).get(timeout=T) == 6
        except BrokerError as exc:              # an error like Celery's: said, not lost
            assert "exchange" in str(exc), exc
        reset_connection()                      # as a process started again
        assert add.delay(4, 4).get(timeout=T) == 8
    finally:
        own.stop()


def test_a_unix_socket_url_and_its_virtual_host(redis_only, broker, tmp_path, guide_redis):
    """``redis+socket:///path/to/redis.sock``, and ``?virtual_host=db_number`` for another
    database. The README's forms list redis://, rediss:// and redis+sentinel:// and say
    nothing of Unix sockets."""
    folder = tmp_path / "sock"
    folder.mkdir()
    path = str(folder / "r.sock")
    own = RedisServer(folder, "--unixsocket", path, "--unixsocketperm", "700").start()
    try:
        start = guide_redis("redis+socket://" + path + "?virtual_host=3", "", own)
        result = add.delay(2, 2)                            # sent before a worker runs
        start()
        assert result.get(timeout=T) == 4
        admin = RedisClient(own.url("/3"))
        try:
            assert admin.execute("DBSIZE") > 0
        finally:
            admin.close()
    finally:
        own.stop()


def test_a_list_of_sentinels_with_master_name(redis_only, broker, server, tmp_path,
                                              guide_redis):
    """``broker_url = 'sentinel://localhost:26379;sentinel://localhost:26380;...'`` and
    ``broker_transport_options = {'master_name': "cluster1"}``. minitask reads no transport
    options: the URL is refused in one line that writes minitask's form with those
    Sentinels (README, Scaling out), and that form reaches the master through them."""
    folder = tmp_path / "sentinels"
    folder.mkdir()
    conf = "sentinel monitor cluster1 127.0.0.1 %d 1\n" % server.port
    sentinels = [RedisServer(folder, sentinel_conf=conf) for _ in range(2)]
    try:
        for sentinel in sentinels:
            sentinel.start()
        url = ";".join("sentinel://localhost:%d" % s.port for s in sentinels)
        hosts = ",".join("localhost:%d" % s.port for s in sentinels)
        with pytest.raises(ConfigurationError, match=re.escape(
                "Celery's Sentinel form; write redis+sentinel://%s/MASTER_NAME" % hosts)):
            config.configure(broker_url=url)
        config.reset()
        start = guide_redis("redis+sentinel://%s/cluster1" % hosts, "", server)
        result = add.delay(2, 2)
        start()
        assert result.get(timeout=T) == 4
    finally:
        for sentinel in sentinels:
            sentinel.stop()


def test_rediss_with_ssl_cert_reqs(redis_only, broker, tmp_path, certificates, guide_redis):
    """``rediss://`` with ``ssl_cert_reqs`` in the URL (Celery's broker_url / result_backend
    TLS form: required, optional or none, or CERT_REQUIRED ...), and ``ssl_ca_certs``."""
    ca = os.path.join(certificates, "ca.crt")
    folder = tmp_path / "tls"
    folder.mkdir()
    own = RedisServer(folder, "--tls-cert-file", os.path.join(certificates, "server.crt"),
                      "--tls-key-file", os.path.join(certificates, "server.key"),
                      "--tls-ca-cert-file", ca, "--tls-auth-clients", "no", tls=True)
    try:
        own.start()
    except RuntimeError as exc:
        if "TLS" in str(exc):
            pytest.skip("this redis-server was built without TLS: %s" % exc)
        raise
    try:
        base = "rediss://localhost:%d/0" % own.port
        # The worker verifies the server against the CA; this process does not verify.
        start = guide_redis(base + "?ssl_cert_reqs=required&ssl_ca_certs=" + ca, "", own)
        start()
        guide_redis(base + "?ssl_cert_reqs=CERT_NONE", "", own)
        assert add.delay(2, 2).get(timeout=T) == 4
        # Required, with no CA that signed the server's certificate: refused, as in Celery.
        guide_redis(base + "?ssl_cert_reqs=CERT_REQUIRED", "", own)
        with pytest.raises(BrokerConnectionError, match="certificate"):
            add.delay(2, 2)
    finally:
        own.stop()


# -- Caveats: the visibility timeout -----------------------------------------------------------

def short_liveness(broker):
    """On Redis, minitask's counterpart of the visibility timeout is the URL's heartbeat
    (README, Scaling out: "a worker silent for longer counts as dead, and its messages go back
    to their queues"; redis_liveness: the backstop takes an entry nobody renewed for six
    heartbeats): 0.2 s here, so that the caveat's one-second countdowns and tasks outlast
    both. The built-in broker has neither (it sees its workers' connections)."""
    if is_redis(broker):
        broker.url = broker.url.replace("heartbeat=2.0", "heartbeat=0.2")
        assert "heartbeat=0.2" in broker.url
        broker.settings = config.Settings({"BROKER_URL": broker.url})


def test_countdowns_etas_retries_and_long_tasks_past_the_visibility_timeout_run_once(
        broker, celeryconfig, start_worker, tmp_path):
    """Caveats, Visibility timeout: "If a task isn't acknowledged within the visibility
    timeout the task will be redelivered to another worker and executed. This causes problems
    with ETA/countdown/retry tasks where the time to execute exceeds the visibility timeout;
    in fact if that happens it will be executed again, and again in a loop." minitask holds
    countdowns in the broker (README: "never held unacked in a worker's memory") and renews
    what a worker runs: each runs once, the long acks_late task on its first worker only.
    README (Configuration): broker_transport_options has no counterpart, one warning."""
    short_liveness(broker)
    env = celeryconfig("""
        broker_transport_options = {'visibility_timeout': 1}  # 1 second
    """)
    worker = start_worker(args=("-c", "2", "-Q", "minitask,long"), env=env)
    tag = new_tag("vt")
    sent = time.time()
    running = long_task.apply_async((tag + "-long", 1.3), queue="long")
    later = remind.apply_async((tag,), countdown=1.5)
    at_eta = remind.apply_async((tag,), eta=datetime.now(timezone.utc) + timedelta(seconds=1.5))
    retried = poll_later.delay(tag + "-retry")
    wait_for(lambda: read_trace(tmp_path, tag + "-long"), 10, what="the long task to start")
    # While it runs past the timeout, its message stays its worker's: never ready again.
    while not running.ready():
        queue = broker.queue("long")
        assert queue["ready"] == 0, queue
        time.sleep(0.05)            # the interval of a poll
    assert running.get(timeout=T) == 1.3
    assert later.get(timeout=T) >= sent + 1.5 - 0.01
    assert at_eta.get(timeout=T) >= sent + 1.5 - 0.01
    assert retried.get(timeout=T) == 1
    settle(broker)                          # nothing left anywhere that could run again
    [start, end] = read_trace(tmp_path, tag + "-long")
    assert start.startswith("start w1 ") and start.endswith(" False") and end == "end"
    assert [line.split("|")[1] for line in read_trace(tmp_path, tag)] == ["False", "False"]
    assert read_trace(tmp_path, tag + "-retry") == ["run 0", "run 1"]
    assert warned(worker.output(), "broker_transport_options") == 1


def test_the_three_visibility_timeout_settings_the_guide_says_to_set(redis_only, broker,
                                                                     celeryconfig,
                                                                     start_worker):
    """"You can increase this timeout by configuring all of the following options with the
    same name (required to set all of them)": ``app.conf.broker_transport_options``,
    ``app.conf.result_backend_transport_options`` and ``app.conf.visibility_timeout``.
    README (Configuration): ``minitask.configure(**settings)`` is ``app.conf.update(...)``;
    a Celery setting minitask has no counterpart for gets one warning naming it."""
    guide = dict(broker_transport_options={'visibility_timeout': 43200},
                 result_backend_transport_options={'visibility_timeout': 43200},
                 visibility_timeout=43200)
    config.configure(broker_url=broker.url, **guide)
    env = celeryconfig("""
        broker_transport_options = {'visibility_timeout': 43200}
        result_backend_transport_options = {'visibility_timeout': 43200}
        visibility_timeout = 43200
    """)
    worker = start_worker(env=env)
    assert add.delay(2, 2).get(timeout=T) == 4
    output = worker.output()
    assert [warned(output, name) for name in guide] == [1, 1, 1], output


# -- Results, priorities and group result ordering ------------------------------------------

RESULT_SETTINGS = ("result_backend", "redis_socket_timeout", "redis_socket_connect_timeout",
                   "redis_retry_on_timeout", "redis_max_connections",
                   "redis_backend_health_check_interval", "result_backend_transport_options",
                   "broker_transport_options")


def test_results_priorities_and_group_order_under_the_guides_settings(broker, celeryconfig,
                                                                     start_worker, tmp_path):
    """Results: ``result_backend = 'redis://localhost:6379/0'`` with the Redis backend's
    settings and ``result_backend_transport_options`` (master_name, global_keyprefix,
    retry_policy); the priority transport options of Celery's Redis priorities
    (priority_steps, sep, queue_order_strategy); Group result ordering: "group results are
    returned in the same order the tasks were defined" (``result_chord_ordered``).
    README (What differs): "Results live in the broker; there is no separate result
    backend", and every one of these settings is warned about once (Configuration). The
    results come back although nothing listens on localhost:6379. README (Priorities):
    0..9 with 0 first, as Celery's Redis priorities."""
    env = celeryconfig("""
        result_backend = 'redis://localhost:6379/0'
        redis_socket_timeout = 5.0
        redis_socket_connect_timeout = 5.0
        redis_retry_on_timeout = True
        redis_max_connections = 20
        redis_backend_health_check_interval = 25
        result_backend_transport_options = {
            'master_name': "mymaster",
            'global_keyprefix': 'my_prefix_',
            'retry_policy': {
               'timeout': 5.0
            },
            'result_chord_ordered': True,
        }
        broker_transport_options = {
            'priority_steps': list(range(10)),
            'sep': ':',
            'queue_order_strategy': 'priority',
        }
    """)
    tag = new_tag("prio")
    for value, priority in [("p9", 9), ("p0", 0), ("p5", 5), ("p3", 3)]:
        record.apply_async((tag, value), priority=priority)
    # Queued before the worker starts, the slow first member runs last (priority 9).
    grouped = group(slow_add.s(1, 1, 0.2).set(priority=9), add.s(2, 2).set(priority=0),
                    add.s(3, 3).set(priority=0)).apply_async()
    chorded = chord([slow_add.s(1, 1, 0.2).set(priority=9), add.s(2, 2).set(priority=0)],
                    collect.s())()
    worker = start_worker(args=("-c", "1", "--prefetch-multiplier", "1"), env=env)
    assert grouped.get(timeout=T) == [2, 4, 6]
    assert grouped.results[0].date_done > grouped.results[2].date_done
    assert chorded.get(timeout=T) == [2, 4]
    assert chorded.parent.results[0].date_done > chorded.parent.results[1].date_done
    assert read_trace(tmp_path, tag) == ["p0", "p3", "p5", "p9"]
    output = worker.output()
    assert [warned(output, name) for name in RESULT_SETTINGS] == [1] * len(RESULT_SETTINGS), \
        output


# -- Caveats: soft shutdown ------------------------------------------------------------------

def test_a_soft_shutdown_gives_the_running_acks_late_task_back_at_once(broker, celeryconfig,
                                                                       start_worker, tmp_path):
    """Soft Shutdown: "During shutdown, the worker will attempt to re-queue any
    unacknowledged messages with task_acks_late enabled"; ``worker_soft_shutdown_timeout``
    is a time-limited warm shutdown before the cold one. README (Configuration, and
    celery_settings: "SHUTDOWN_TIMEOUT is how long a warm shutdown waits"): the setting is
    warned about once and ``--shutdown-timeout`` is minitask's. On Redis, README (What
    differs): "a worker that exits ... gives them back at once", not after its heartbeat
    (2 s here): so within a second of the exit, both are back."""
    env = celeryconfig("""
        task_acks_late = True
        worker_soft_shutdown_timeout = 0.5
    """)
    worker = start_worker(args=("-c", "1", "--shutdown-timeout", "0.5"), env=env)
    tag = new_tag("soft")
    long_task.delay(tag, 30)
    waiting = record.delay(tag + "-waiting", "ran")
    try:
        wait_for(lambda: read_trace(tmp_path, tag), 10, what="the long task to start")
    except AssertionError as exc:           # seen once in about forty runs: say what the
        raise AssertionError("%s\n%s\n%r" % (exc, worker.output(), broker.status()))
    stopped = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.process.wait(10) == 0
    assert time.monotonic() - stopped < 5           # the soft timeout, not the task's 30 s
    wait_for(lambda: broker.queue()["ready"] == 2, 1.0, what="both tasks back in the queue")
    assert len(read_trace(tmp_path, tag)) == 1 and waiting.state == "PENDING"
    assert warned(worker.output(), "worker_soft_shutdown_timeout") == 1


# -- Caveats: a Redis shared by several applications ---------------------------------------

def test_apps_on_two_databases_of_one_redis_share_neither_tasks_nor_broadcasts(
        redis_only, broker, server, guide_redis):
    """Configuration: ``redis://hostname:port/db_number``, the database being Redis's virtual
    host; Caveats (Celery 4's guide, Fanout prefix): "Broadcast messages will be seen by all
    virtual hosts by default" unless ``fanout_prefix``. Here app A (database 1) neither runs
    on app B's worker (database 2) nor reaches it with a broadcast: not even a shutdown."""
    app_a = "redis://127.0.0.1:%d/1" % server.port
    app_b = "redis://127.0.0.1:%d/2" % server.port
    start = guide_redis(app_b, "broker_transport_options = {'fanout_prefix': True}\n", server)
    worker = start()
    guide_redis(app_a, "broker_transport_options = {'fanout_prefix': True}\n", server)
    waiting = add.delay(1, 1)
    assert control.ping(timeout=0.3) == []
    assert control.inspect(timeout=0.3).active() is None
    control.shutdown()
    guide_redis(app_b, "", server)
    assert control.ping(timeout=T, destination=["w1"]) == [{"w1": "pong"}]
    assert add.delay(2, 2).get(timeout=T) == 4
    assert worker.proc.alive()
    assert GuideRedis(server, app_a).queue()["ready"] == 1 and waiting.state == "PENDING"


# -- Caveats: applications sharing the broker with different settings ----------------------

class OtherApp:
    """Another application's consumer of its own queue on the same Redis vhost, with its own
    settings (`url`), driven in a thread of this process as a worker drives it (a worker
    process more would cost the file's time budget; this is the same consumer)."""

    def __init__(self, url, queue):
        settings = config.Settings({"BROKER_URL": url})
        self.consumer = transport.consumer_for(
            settings, [queue], 1, {"hostname": "appb", "pid": os.getpid(), "concurrency": 1,
                                   "queues": [queue]}, "appb")
        self.taken = []
        self.failed = []
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        consumer = self.consumer
        try:
            consumer.resume()
            self.taken += consumer.connect()
            self.connected.set()
            while not self.stopping.is_set():
                consumer.end_turn()
                consumer.flush()
                if select.select([consumer], [], [], 0.005)[0] or consumer.holds_deliveries:
                    self.taken += [d for d in consumer.read()
                                   if d.consumer_tag != consumer.control_tag]
        except Exception as exc:               # said by the test, not lost in the thread
            self.failed.append(exc)

    def __enter__(self):
        self.thread.start()
        if not self.connected.wait(10):
            raise AssertionError("the other application did not connect: %r" % self.failed)
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.thread.join(10)
        self.consumer.close()


def test_another_app_with_a_shorter_timeout_does_not_run_a_long_task_twice(
        redis_only, broker, start_worker, tmp_path):
    """Caveats, Visibility timeout: "Note: If multiple applications are sharing the same
    Broker, with different settings, the _shortest_ value will be used." minitask's
    counterpart of the timeout is the URL's heartbeat (README, Scaling out: a worker "silent
    for longer counts as dead"): a worker that renews its own is alive, whatever another
    application's heartbeat says, so its long acks_late task runs once (redis_liveness:
    "However long a task runs, its entry stays its worker's, so nothing runs twice for
    running long"). App B here consumes only its own queue, with heartbeat=0.05."""
    other = broker.url.replace("heartbeat=2.0", "heartbeat=0.05")
    assert other != broker.url
    backstop = Keys(broker.url.split("vhost=")[1].split("&")[0]).backstop
    admin = RedisClient(broker.server.url("/0"))
    try:
        with OtherApp(other, "appb") as app_b:
            worker = start_worker(args=("-c", "2", "-Q", "minitask,long"))
            for _ in range(3):                  # three tries, each with the same odds
                hand_over(admin, backstop, app_b.consumer.id)
                tag = new_tag("shared")
                assert long_task.apply_async((tag, 1.0), queue="long").get(timeout=T) == 1.0
                runs = read_trace(tmp_path, tag)    # what ran while the first run ran
                if len(runs) != 2:
                    break
            worker.kill()                       # what it would run again is no concern here
    finally:
        admin.close()
    assert app_b.failed == [] and app_b.taken == []
    assert [line.split()[0] for line in runs] == ["start", "end"], runs


def hand_over(admin, key, holder):
    """Which process of a vhost looks for unrenewed messages is a race (a lock `key` each
    takes for a while in turn); over time each wins it often. The test gives it to `holder`
    now rather than waiting for that: it takes the lock from anyone else, and waits until
    `holder` has it."""
    def held():
        owner = admin.execute("GET", key)
        if owner is not None and owner.decode("utf-8") != holder:
            admin.execute("DEL", key)
        return owner is not None and owner.decode("utf-8") == holder
    wait_for(held, 5, interval=0.005, what="%s to take the backstop's lock" % holder)
