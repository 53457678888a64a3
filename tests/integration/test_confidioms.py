"""Celery's "Configuration and defaults" reference (docs/userguide/configuration.rst, Celery 5)
against minitask's promise (README, Configuration): a settings module written as a Celery user
writes ``celeryconfig.py`` (the lower-case Celery 4/5 names, or a Django project's ``CELERY_``
upper-case namespace) runs as it is, and every setting either takes effect or "gets one
warning at start naming it and the minitask way; none is ignored silently".

Each test writes a settings module (confidioms.PRODUCTION, confidioms.DJANGO, ...) into its
temporary folder, reads it in this process (the client) and starts one real worker on it, on
both transports (the `broker` fixture of both.py: the built-in broker, then Redis). The
effects are observed where Celery's reference says they show: the queue a message waits in,
the exchange and routing key it reached the worker by, the limit that stops a task, the rate
that holds it, the pool the worker runs, the warnings in the client's and the worker's logs.

What existing suites already check the same way is left out: Celery's routing forms
(test_routingidioms.py), per-task time limits and --max-tasks-per-child (test_workeridioms.py),
result_expires (test_tutorialidioms.py), beat_schedule's crontab, solar and timezone
(test_periodicidioms.py).
"""

import collections
import logging
import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import new_tag, settings_modules, wait_for, workers_of  # noqa: E402
from ittasks import _trace, read_trace  # noqa: E402

import routingidioms  # noqa: E402
from confidioms import (  # noqa: E402
    DJANGO, DJANGO_WARNED, PRODUCTION, PRODUCTION_WARNED, add, build_report, charge, dies_once,
    divide, encode_video, fails, fast, fetch_feed, gate, plain, soft, stamp, stuck,
)

from minitask import AsyncResult, EagerResult, config, control, send_task  # noqa: E402
from minitask.exceptions import TimeLimitExceeded  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

TIMEOUT = 20
# What marks a warning about a setting (minitask/celery_settings.py, `warning`).
SETTING_WARNING = ("has no such setting", "has no effect in minitask", "there is no such setting")


class _SettingsDecide(tuple):
    """Worker arguments that leave the pool's size to the settings module: cluster.Worker
    adds ``-c 2`` unless "-c" is among its arguments, and -c would override
    worker_concurrency."""

    def __contains__(self, item):
        return item == "-c" or tuple.__contains__(self, item)


@pytest.fixture
def start_worker(broker, tmp_path):
    # Only ittasks on the command line: confidioms and routingidioms come from the settings'
    # imports / include.
    yield from workers_of(broker, tmp_path, "ittasks", ready_timeout=60)


@pytest.fixture
def settings(broker, tmp_path, monkeypatch, caplog):
    """settings(text) -> (the worker's env, the setting warnings this process logged): writes
    `text` as a new settings module, read as at a new start, with only the broker's URL on
    top (not ACCEPT_CONTENT, which would make result_accept_content=['json'] differ)."""
    for write_module in settings_modules(broker, tmp_path, monkeypatch, accept=None,
                                         fresh=True):
        def write(text):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                env = write_module("celeryconfig_%s" % uuid.uuid4().hex[:10], text)
            return env, [r.getMessage() for r in caplog.records
                         if is_setting_warning(r.getMessage())]
        yield write


def is_setting_warning(line):
    return any(mark in line for mark in SETTING_WARNING)


def assert_warned_once_each(lines, expected, where):
    """Each of `expected` in exactly one of `lines`, and no other setting warning."""
    warned = [line for line in lines if is_setting_warning(line)]
    for text in expected:
        assert sum(text in line for line in warned) == 1, (where, text, warned)
    others = [line for line in warned if not any(text in line for text in expected)]
    assert others == [], (where, others)


def ready(broker, *queues):
    """The messages waiting in each queue (0 for a queue that does not exist)."""
    rows = {row["name"]: row for row in broker.status()["queues"]}
    return [rows[name]["ready"] if name in rows else 0 for name in queues]


def stats_of(name):
    replies = control.inspect(destination=[name]).stats()
    assert replies and name in replies, replies
    return replies[name]


# -- a production celeryconfig.py, lower-case names --------------------------------------------

def test_a_production_celeryconfig_routes_limits_and_sizes_as_it_says_and_warns_once_per_name(
        broker, settings, start_worker, tmp_path):
    """confidioms.PRODUCTION, ~45 settings. Routing (sent before any worker, so the queue each
    message waits in is the broker's to show): task_default_queue / _exchange /
    _routing_key with task_queues, task_routes as a tuple of a router function of the
    settings module answering a queue name, a router's dotted path, and a dict of a glob and
    a regex; send_task routed too; a call's queue= wins. Then one worker started without -Q
    or -c: it consumes task_queues, imports `imports` and `include` (only ittasks is on its
    command line), runs worker_concurrency processes with worker_prefetch_multiplier per
    process, applies task_soft_time_limit and task_time_limit to tasks that set none, and
    (task_acks_late with acks on failure or timeout) runs a failed or timed-out task once."""
    env, client_warned = settings(PRODUCTION)
    assert_warned_once_each(client_warned, PRODUCTION_WARNED, "client")

    sent = {
        "plain": plain.delay(),                                   # no route: the defaults
        "glob": fetch_feed.delay("http://example.com/rss"),       # 'feeds.tasks.*'
        "send_task": send_task("feeds.tasks.fetch", args=["x"]),  # routed by name too
        "regex": encode_video.delay("a.mp4"),                     # (image|video)\.tasks\..*
        "function": build_report.delay("may"),                    # route_task -> 'reports'
        "dotted": charge.delay(10),                               # 'confidioms.route_billing'
        "call": plain.apply_async(queue="feeds"),                 # the call's option wins
        "include": routingidioms.add.delay(2, 3),                 # a task of `include`
    }
    assert ready(broker, "default", "feeds", "media", "reports", "billing") == [2, 3, 1, 1, 1]

    worker = start_worker(name="prod", env=env, args=_SettingsDecide())
    got = {key: result.get(timeout=TIMEOUT) for key, result in sent.items()}
    routes = {key: (value["exchange"], value["routing_key"])
              for key, value in got.items() if key != "include"}
    assert routes == {
        "plain": ("tasks", "task.default"),
        "glob": ("", "feeds"), "send_task": ("", "feeds"),       # README, Routing: a queue
        "function": ("", "reports"), "dotted": ("", "billing"),  # is reached through "" by
        "call": ("", "feeds"),                                   # its own name
        "regex": ("media", "media.video"),
    }
    assert got["include"] == 5

    stats = stats_of("prod")
    assert stats["concurrency"] == 3 and len(stats["pool"]) == 3
    assert stats["prefetch_count"] == 3 * 2
    assert sorted(stats["queues"]) == ["billing", "default", "feeds", "media", "reports"]

    tag = new_tag("limits")
    cleaned, killed, failed = soft.delay(tag + "-soft"), stuck.delay(tag + "-stuck"), \
        fails.delay(tag + "-fails")
    assert cleaned.get(timeout=TIMEOUT) == "cleaned up"            # task_soft_time_limit
    with pytest.raises(TimeLimitExceeded):                          # task_time_limit
        killed.get(timeout=TIMEOUT)
    with pytest.raises(ValueError):
        failed.get(timeout=TIMEOUT)
    settle(broker)
    assert read_trace(tmp_path, tag + "-stuck") == ["start", "soft"]     # once: acked
    assert read_trace(tmp_path, tag + "-fails") == ["run"]               # once: acked
    assert killed.state == "FAILURE"

    assert_warned_once_each(worker.output().splitlines(), PRODUCTION_WARNED, "worker")


# -- the same kind of project as Django settings, CELERY_ namespace ----------------------------

def test_django_celery_namespace_settings_rate_limit_recycle_requeue_and_beat(
        broker, settings, start_worker, tmp_path):
    """confidioms.DJANGO: Django's own settings beside CELERY_ ones. One worker with -B:
    CELERY_WORKER_CONCURRENCY 1 and CELERY_WORKER_PREFETCH_MULTIPLIER 1 (inspect stats),
    CELERY_ACCEPT_CONTENT in its MIME form, CELERY_TASK_DEFAULT_RATE_LIMIT '4/s' holding a
    task with no rate limit of its own and not one with its own,
    CELERY_WORKER_MAX_TASKS_PER_CHILD 2 (no pool process runs a third task),
    CELERY_TASK_ACKS_LATE with a pool process that dies, and CELERY_BEAT_SCHEDULE's interval
    entry with its args, kwargs and queue. The names it cannot use are warned about once,
    in upper case as written; Django's own names are not settings."""
    tag = new_tag("dj")
    env, client_warned = settings(DJANGO.replace("TAG", tag + "-tick"))
    assert_warned_once_each(client_warned, DJANGO_WARNED, "client")

    worker = start_worker(name="dj", env=env, args=_SettingsDecide(("-B",)))
    stats = stats_of("dj")
    assert (stats["concurrency"], stats["prefetch_count"]) == (1, 1)
    assert sorted(stats["queues"]) == ["beats", "celery"]

    # CELERY_WORKER_PREFETCH_MULTIPLIER 1: "To limit the broker to only deliver one message
    # per process at a time, set worker_prefetch_multiplier to 1"; with late acks the one
    # running is that message: the others wait in the broker, for any worker.
    held = gate.delay(tag + "-gate")
    waiting = [fast.delay(tag + "-fast") for _ in range(3)]
    wait_for(lambda: read_trace(tmp_path, tag + "-gate"), TIMEOUT, what="the gate task to start")
    row = broker.queue("celery")
    assert (row["ready"], row["unacked"]) == (3, 1), row
    _trace(tag + "-gate", "go")
    assert held.get(timeout=TIMEOUT) == "went"

    # task_acks_late and a pool process that exits. Celery's reference: "Even if
    # task_acks_late is enabled, the worker will acknowledge tasks when the worker process
    # executing them abruptly exits" unless task_reject_on_worker_lost. README, Task options:
    # reject_on_worker_lost is accepted "only with the value that is minitask's behaviour
    # anyway ... (an acks_late task ... whose process dies goes back to its queue)": it runs
    # again, redelivered.
    assert dies_once.delay(tag + "-dies").get(timeout=TIMEOUT) is True
    first, second = read_trace(tmp_path, tag + "-dies")
    assert first != second

    stamps = [stamp.delay(tag + "-stamp") for _ in range(3)]
    fasts = [fast.delay(tag + "-fast2") for _ in range(3)]
    for result in waiting + stamps + fasts:
        result.get(timeout=TIMEOUT)
    stamp_times = sorted(float(line.split()[0]) for line in read_trace(tmp_path, tag + "-stamp"))
    fast_times = sorted(float(line.split()[0])
                        for line in read_trace(tmp_path, tag + "-fast2"))
    # 4/s: a token every 0.25 s (some slack for the clock of two processes)
    assert all(b - a >= 0.2 for a, b in zip(stamp_times, stamp_times[1:])), stamp_times
    # its own "1000/s" (and the warned CELERY_TASK_ANNOTATIONS '1/m' has no effect)
    assert fast_times[-1] - fast_times[0] < 0.4, fast_times

    ticks = wait_for(lambda: read_trace(tmp_path, tag + "-tick"), TIMEOUT,
                     what="the beat entry to run")
    total, routing_key, _ = ticks[0].split("|")
    assert (total, routing_key) == ("32", "beats")

    # max tasks per child, over every task the single pool process ran
    pids = [line.split()[1] for name in ("-stamp", "-fast", "-fast2")
            for line in read_trace(tmp_path, tag + name)]
    pids += [line.split("|")[2] for line in read_trace(tmp_path, tag + "-tick")]
    pids += [line.split()[1] for line in read_trace(tmp_path, tag + "-dies")]
    assert max(collections.Counter(pids).values()) <= 2, collections.Counter(pids)

    assert_warned_once_each(worker.output().splitlines(), DJANGO_WARNED, "worker")


# -- a test configuration: task_always_eager ---------------------------------------------------

EAGER = """\
broker_url = 'redis://localhost:6379/0'
task_always_eager = True
task_eager_propagates = True
task_store_eager_result = False
"""


def test_a_test_configuration_runs_calls_eagerly_and_says_eager_propagates_does_not(
        broker, settings):
    """The usual test settings. task_always_eager: "apply_async() and Task.delay() will return
    an EagerResult", nothing reaches the broker. task_eager_propagates: "eagerly executed
    tasks ... will propagate exceptions. It's the same as always running apply() with
    throw=True"; minitask
    warns once that it has no effect (README, Configuration: only task_eager_propagates=False
    is accepted without a word): the call returns an EagerResult whose get() raises.
    task_store_eager_result=False is Celery's default and minitask's behaviour: no word
    (README, Configuration)."""
    _, warned = settings(EAGER)
    assert_warned_once_each(warned, ["task_eager_propagates=True has no effect in minitask"],
                            "client")
    result = add.delay(2, 2)
    assert isinstance(result, EagerResult) and result.get() == 4
    failed = divide.delay(1, 0)                     # Celery: raises ZeroDivisionError here
    assert failed.state == "FAILURE"
    with pytest.raises(ZeroDivisionError):
        failed.get()
    assert sum(row.get("published", 0) for row in broker.status()["queues"]) == 0


# -- bugs --------------------------------------------------------------------------------------

SILENT = """\
broker_channel_error_retry = True
gcs_ttl = 86400
gcs_threadpool_maxsize = 10
firestore_project = 'test-project2'
"""


def test_every_setting_of_the_reference_is_used_or_warned_about(broker, settings,
                                                                 start_worker):
    """Four names of Celery's reference that minitask's list (minitask/celery_settings.py)
    lacks: lower-case names count "only when they are Celery's", and these are, so each
    should get its one warning, in the client and in the worker (both say nothing)."""
    env, warned = settings(SILENT)
    names = ["broker_channel_error_retry", "gcs_ttl", "gcs_threadpool_maxsize",
             "firestore_project"]
    assert_warned_once_each(warned, names, "client")
    worker = start_worker(name="silent", env=env)
    assert_warned_once_each(worker.output().splitlines(), names, "worker")


def test_accept_content_as_a_set(broker, settings, start_worker):
    """The reference: accept_content "Default: {'json'} (set, list, or tuple)"."""
    env, _ = settings("imports = ['confidioms']\naccept_content = {'json'}\n")
    start_worker(name="set", env=env)
    assert add.delay(1, 2).get(timeout=TIMEOUT) == 3


def test_result_expires_none_means_never(broker, settings, start_worker):
    """The reference: "A value of None or 0 means results will never expire"."""
    env, _ = settings("imports = ['confidioms']\nresult_expires = None\n")
    start_worker(name="forever", env=env)
    assert add.delay(1, 2).get(timeout=TIMEOUT) == 3


def test_prefetch_multiplier_zero_means_no_limit(broker, settings, start_worker):
    """The reference: "Changing that setting to 0 will allow the worker to keep consuming as
    many messages as it wants"."""
    env, _ = settings("imports = ['confidioms']\nworker_prefetch_multiplier = 0\n")
    start_worker(name="greedy", env=env)
    assert add.delay(1, 2).get(timeout=TIMEOUT) == 3
    assert stats_of("greedy")["prefetch_count"] == 10000     # README: up to 10,000


def test_result_extended_points_to_a_name_and_retries_that_can_be_read(broker, settings,
                                                                       start_worker):
    """The reference: result_extended "Enables extended task result attributes (name, args,
    kwargs, worker, retries, queue)". minitask warns that result_extended=True has no effect
    because "results carry the task's name, retries and date_done, nothing more": so a result
    looked up by id should give them, under Celery's attribute names."""
    env, warned = settings("imports = ['confidioms']\nresult_extended = True\n")
    assert_warned_once_each(warned, ["result_extended=True has no effect in minitask: results "
                                     "carry the task's name, retries and date_done"], "client")
    start_worker(name="ext", env=env)
    task_id = add.delay(2, 3).id
    result = AsyncResult(task_id)
    assert result.get(timeout=TIMEOUT) == 5 and result.date_done is not None
    assert (result.name, result.retries) == ("cf.add", 0)


# Celery settings whose warning names the minitask way. Two name each transport's way (on
# Redis: BROKER_URL's options, README "Scaling out"); the other four name the built-in
# broker's alone, which Redis does not have: its heartbeat= and socket_connect_timeout= URL
# options, handover_grace=, and `minitask status --http` for the status page.
BROKER_ONLY = """\
imports = ['confidioms']
broker_transport_options = {'visibility_timeout': 3600, 'global_keyprefix': 'app1:'}
broker_use_ssl = {'ssl_cert_reqs': 'required'}
broker_heartbeat = 30
broker_connection_timeout = 4
worker_lost_wait = 10
worker_send_task_events = True
"""
NEUTRAL_WARNED = ("ignoring broker_transport_options", "ignoring broker_use_ssl")
BUILT_IN_WAYS = {"ignoring broker_heartbeat": "heartbeats are fixed",
                 "ignoring broker_connection_timeout": "connecting gives up after 10 s",
                 "ignoring worker_lost_wait": "--worker-lost-grace",
                 "worker_send_task_events=True has no effect": "python -m minitask broker --http"}


def test_the_minitask_way_each_warning_names_is_the_transports_own(broker, settings,
                                                                   start_worker):
    """Each of these Celery settings is warned about once, on either transport, naming the
    minitask way. On the built-in broker that is the broker's (its flags, its status page);
    on Redis those do not exist, and the warning should name Redis's way, as those of
    broker_transport_options and broker_use_ssl do."""
    env, _ = settings(BROKER_ONLY)
    worker = start_worker(name="ways", env=env)
    assert add.delay(1, 1).get(timeout=TIMEOUT) == 2
    lines = [line for line in worker.output().splitlines() if is_setting_warning(line)]
    assert_warned_once_each(lines, NEUTRAL_WARNED + tuple(BUILT_IN_WAYS), "worker")
    for name in NEUTRAL_WARNED:
        assert any(name in line and "on Redis" in line for line in lines), (name, lines)
    if not broker.url.startswith("redis"):
        for name, way in BUILT_IN_WAYS.items():
            assert any(name in line and way in line for line in lines), (name, lines)
        return
    assert [line for line in lines if any(way in line for way in BUILT_IN_WAYS.values())] == []
