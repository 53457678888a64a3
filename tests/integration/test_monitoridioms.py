"""Celery's "Monitoring and Management Guide" (docs/userguide/monitoring.rst, Celery 5), its
command lines run as a Celery user runs them (``celery -A proj CMD`` is ``python -m minitask
-b URL CMD``) and their Python forms (``app.control`` is ``minitask.control``), on real workers
on both transports: the built-in broker and Redis (the `broker` fixture of both.py; Redis
skips, saying why, where redis-server is not installed). The tasks are in monitoridioms.py.

The guide's RabbitMQ and Redis sections (``rabbitmqctl list_queues name messages
messages_ready messages_unacknowledged``, ``... name consumers``, ``redis-cli llen
QUEUE_NAME``) are ``minitask status`` here, and its Flower / Prometheus / Munin sections the
status page and ``/metrics`` (README, "The status page"; on Redis ``minitask status --http``).
Where the README names a difference (a refused command), the test checks minitask's documented
behaviour and cites the README.

Already checked elsewhere, and not again here: ``control revoke --terminate``, ``control
ping`` and the ``app.control`` calls without a destination (test_workeridioms.py), ``purge``
of the built-in broker's default queue alone, ``result --json``, and ``events`` and ``flower``
refused with no broker named (test_cli.py), the status page's
own endpoints on the built-in broker (test_status_page.py).
"""

import json
import os
import re
import sys
import urllib.request
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server  # noqa: E402,F401  (fixtures)
from cluster import (  # noqa: E402
    ROOT, _env, _Process, run_commands, settings_modules, wait_for, workers_of,
)
from monitoridioms import add, div, hold  # noqa: E402
from rediskit import free_port  # noqa: E402

from minitask import control  # noqa: E402

MODULES = "monitoridioms"
NAME = "w1@e.com"                       # the guide's ``-d w1@e.com,w2@e.com``
OTHER = "w2@e.com"                      # a node that is not there
T = 10                                  # seconds a result may take (never waited out)


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES)


@pytest.fixture
def settings_module(broker, tmp_path, monkeypatch):
    """settings_module(text) -> the env a command needs to read it (see cluster.py)."""
    for write in settings_modules(broker, tmp_path, monkeypatch):
        yield lambda text: write("monitorconfig_%s" % uuid.uuid4().hex[:8], text)


def celery(broker, *commands, env=None):
    """Each of `commands` (a list of words) as ``python -m minitask -b URL WORDS``, all at
    once: their (exit code, stdout, stderr), in order."""
    return run_commands(broker, commands, env)


def ok_json(outcome):
    code, out, err = outcome
    assert code == 0, (out, err)
    return json.loads(out)


def queue_row(report, name):
    return next((q for q in report["queues"] if q["name"] == name), None)


# -- Workers: status, inspect, and the queue lengths of "Inspecting queues" ---------------------

def test_status_inspect_and_queue_lengths_of_a_busy_worker(broker, start_worker, tmp_path):
    """``celery -A proj worker -n w1@e.com`` with one process reserving one task at a time;
    ``hold`` runs, one ``add`` is reserved behind it, two wait in the queue, one has a
    countdown. Then, all at once: ``status`` ("List active nodes"), ``inspect active``,
    ``inspect -d w1@e.com,w2@e.com reserved`` (one of the two is not there: the
    ``--timeout`` ends the wait), ``inspect scheduled``, ``inspect registered``, ``inspect
    stats``; their Python forms ``control.inspect([...]).active()``, ``.reserved()``,
    ``.stats()``; and the queue lengths of ``rabbitmqctl list_queues name messages
    messages_ready messages_unacknowledged`` / ``name consumers`` and ``redis-cli llen
    QUEUE_NAME``, which are ``minitask status`` (README, "Scaling out": on Redis "the same
    report from Redis's keys"). Last, ``app.control.revoke`` of the countdown and
    ``inspect revoked``."""
    start_worker(name=NAME, args=["-c", "1", "--prefetch-multiplier", "1"])
    release = tmp_path / "release"
    running = hold.delay(str(release))
    reserved = add.delay(1, 1)
    wait_for(lambda: running.state == "STARTED" and reserved.state == "RECEIVED", T,
             what="hold to start and add to be reserved behind it")
    waiting = [add.delay(2, 2), add.delay(3, 3)]
    later = add.apply_async((4, 4), countdown=60)

    (status, status_json, active, reserved_d, scheduled, registered, stats) = celery(
        broker, ["status"], ["status", "--json"],
        ["inspect", "active", "--timeout", "0.3"],
        ["inspect", "-d", "%s,%s" % (NAME, OTHER), "reserved", "-t", "0.3", "-j"],
        ["inspect", "scheduled", "-j", "--timeout", "0.3"],
        ["inspect", "registered", "-d", NAME, "-j"],
        ["inspect", "stats", "--destination", NAME, "-j"])

    code, out, err = status
    assert code == 0 and err == "", (out, err)
    node_line = next(line for line in out.splitlines() if line.startswith(NAME))
    assert node_line.split()[-1] == "ok"
    # queue    ready  unacked  delayed  dead  consumers
    queue_line = next(line for line in out.splitlines() if line.startswith("minitask "))
    assert queue_line.split()[1:3] == ["2", "1"] and queue_line.split()[-1] == "1", out
    row = queue_row(ok_json(status_json), "minitask")
    assert (row["ready"], row["unacked"], row["delayed"], row["consumers"]) == (2, 1, 1, 1), \
        row

    code, out, err = active
    assert code == 0, (out, err)
    assert out.startswith("%s:\n" % NAME) and "tasks.hold[%s]" % running.id in out, out
    assert [t["id"] for t in ok_json(reserved_d)[NAME]] == [reserved.id]
    assert OTHER not in ok_json(reserved_d)
    # README, "Command line": `scheduled` "also lists the countdowns the broker holds (a worker
    # gets a countdown only half a second before it is due) under `broker`".
    held = ok_json(scheduled)
    assert held[NAME] == [] and [t["id"] for t in held["broker"]] == [later.id]
    assert {"tasks.add", "tasks.div", "tasks.hold"} <= set(ok_json(registered)[NAME])
    worker_stats = ok_json(stats)[NAME]
    # Celery's keys of stats that scripts read: tasks taken per name, the prefetch, rusage.
    assert worker_stats["total"]["tasks.hold"] == 1 and worker_stats["prefetch_count"] == 1
    assert worker_stats["rusage"]["maxrss"] > 0 and worker_stats["rusage"]["utime"] >= 0

    i = control.inspect([NAME])         # the wait ends once that node answered
    (task,) = i.active()[NAME]
    assert (task["id"], task["name"], task["args"]) == (running.id, "tasks.hold",
                                                        repr((str(release),)))
    assert [t["id"] for t in i.reserved()[NAME]] == [reserved.id]
    python_stats = control.inspect(destination=[NAME], timeout=0.5).stats()
    assert list(python_stats) == [NAME]
    assert python_stats[NAME]["pid"] == worker_stats["pid"] > 0
    assert python_stats[NAME]["uptime"] > 0

    # ``celery inspect query_task e9f6c8f0-... f8a2...``, and from Python, ids one by one or
    # as a list: which of them the worker holds, and how (Celery's {id: [state, info]}).
    query, query_text = celery(broker, ["inspect", "query_task", running.id, reserved.id,
                                        "not-here", "-d", NAME, "-j"],
                               ["inspect", "query_task", running.id, "-d", NAME])
    found = ok_json(query)[NAME]
    assert {task_id: found[task_id][0] for task_id in found} == {running.id: "active",
                                                                 reserved.id: "reserved"}
    assert found[reserved.id][1]["name"] == "tasks.add"
    assert query_text[0] == 0 and "active: tasks.hold[%s]" % running.id in query_text[1]
    by_python = i.query_task(running.id, reserved.id)[NAME]
    assert {task_id: by_python[task_id][0] for task_id in by_python} == \
        {task_id: found[task_id][0] for task_id in found}
    assert list(i.query_task([reserved.id])[NAME]) == [reserved.id]

    control.revoke(later.id)
    assert ok_json(celery(broker, ["inspect", "revoked", "-j", "-d", NAME])[0]) == \
        {NAME: [later.id]}
    release.write_text("")
    assert running.get(timeout=T) is True
    assert [r.get(timeout=T) for r in [reserved] + waiting] == [2, 4, 6]
    assert later.state == "REVOKED"


# -- result, and what Flower, Prometheus and Munin watch: the status page and /metrics ----------

def metrics_of(text):
    """{(name, frozenset of label pairs): value} of a Prometheus text page."""
    values = {}
    for line in text.splitlines():
        match = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            values[(match.group(1), labels)] = float(match.group(3))
    return values


def event_count(metrics, task, event):
    return metrics.get(("minitask_task_events_total",
                        frozenset({("task", task), ("event", event)})), 0)


def supervised_env():
    """The environment of a command as a supervisor starts it: stdout is a pipe or a file,
    and nothing asks Python to flush it at every line (this machine's shells set
    PYTHONUNBUFFERED, which would hide a line a command forgets to flush)."""
    env = _env()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def start_page(broker, tmp_path):
    """``minitask -b URL status --http 127.0.0.1:PORT`` (a free PORT): the process and a
    get(path) -> (HTTP status, text) of its page, once the page answers."""
    port = free_port()
    page = _Process([sys.executable, "-m", "minitask", "-b", broker.url, "status", "--http",
                     "127.0.0.1:%d" % port], str(tmp_path / "page.log"), supervised_env(),
                    ROOT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path):
        with opener.open("http://127.0.0.1:%d/%s" % (port, path), timeout=T) as response:
            return response.status, response.read().decode("utf-8")

    def answers():
        if not page.alive():
            raise AssertionError("status --http exited:\n%s" % page.output())
        try:
            return get("api/status.json")[0] == 200
        except OSError:
            return False
    try:
        wait_for(answers, T, interval=0.05, what="the status page to answer")
    except BaseException:
        page.close()
        raise
    return page, port, get


def test_result_with_and_without_the_task_name_and_the_traceback_and_metrics(
        broker, start_worker, tmp_path):
    """``celery -A proj result -t tasks.add <id>`` ("you can omit the name of the task as
    long as the task doesn't use a custom result backend"), and ``--traceback`` of a task
    that failed. Then the guide's monitors: Flower's page and its Prometheus metrics, the
    Munin plug-ins ``celery_tasks`` ("the number of times each task type has been
    executed") and ``celery_tasks_states`` ("the number of tasks in each state"). README,
    "The status page": ``minitask status --http HOST:PORT`` "serves the same page and
    /metrics from any process, for whatever broker BROKER_URL names" (on Redis the only
    way: "Scaling out")."""
    start_worker(name=NAME, args=["-c", "1"])
    page, _port, get = start_page(broker, tmp_path)
    try:
        ok = add.delay(2, 2)
        failed = div.delay(1, 0)
        assert ok.get(timeout=T) == 4
        assert isinstance(failed.get(timeout=T, propagate=False), ZeroDivisionError)

        named, bare, traceback, traceback_named = celery(
            broker, ["-A", MODULES, "result", "-t", "tasks.add", ok.id], ["result", ok.id],
            ["result", "--traceback", failed.id],
            ["result", "-t", "tasks.div", "--traceback", failed.id, "--json"])
        assert named == bare == (0, "SUCCESS: 4\n", "")
        code, out, err = traceback
        assert code == 0 and err == "", (out, err)
        first, rest = out.split("\n", 1)
        assert first == "FAILURE: ZeroDivisionError('division by zero')"
        assert rest.startswith("Traceback (most recent call last):")
        assert rest.rstrip().endswith("ZeroDivisionError: division by zero")
        assert "return x / y" in rest
        shown = ok_json(traceback_named)
        assert shown["state"] == "FAILURE" and shown["traceback"] == failed.traceback

        # On Redis the per-task counts reach Redis "about once a second" (README): polled.
        def counted():
            status, text = get("metrics")
            metrics = metrics_of(text)
            if event_count(metrics, "tasks.div", "failed") >= 1 and \
                    event_count(metrics, "tasks.add", "succeeded") >= 1:
                return metrics
        metrics = wait_for(counted, T, interval=0.1, what="the tasks counted in /metrics")
        assert event_count(metrics, "tasks.add", "succeeded") == 1
        assert event_count(metrics, "tasks.add", "failed") == 0
        assert event_count(metrics, "tasks.div", "failed") == 1
        assert metrics[("minitask_queue_consumers", frozenset({("queue", "minitask")}))] == 1
        assert metrics[("minitask_workers", frozenset())] == 1
        assert metrics[("minitask_queue_messages",
                        frozenset({("queue", "minitask"), ("state", "ready")}))] == 0
        status, text = get("api/status.json")
        assert status == 200
        assert [w["hostname"] for w in json.loads(text)["workers"]] == [NAME]
        status, text = get("")
        assert status == 200 and text.lstrip().lower().startswith("<!doctype html")
    finally:
        page.close()


# -- purge, and the queue lengths it changes ----------------------------------------------------

CELERYCONFIG = """\
task_default_queue = 'celery'
task_queues = {
    'foo': {'exchange': 'foo', 'binding_key': 'foo'},
    'bar': {'exchange': 'bar', 'binding_key': 'bar'},
}
"""


def test_purge_all_configured_queues_or_those_of_q_less_those_of_x(broker, settings_module):
    """``celery -A proj purge`` "will remove all messages from queues configured in the
    CELERY_QUEUES setting" (and asks first: "There's no undo"), ``purge -Q celery,foo,bar``,
    ``purge -X celery``, and ``app.control.purge()``; the queue lengths are ``minitask status``
    (``redis-cli llen QUEUE_NAME``: "The default queue is named celery"). A queue the
    settings do not name (``baz``, made by ``queue='baz'``) is not purged."""
    env = settings_module(CELERYCONFIG)
    add.delay(1, 1), add.delay(2, 2)
    add.apply_async((3, 3), queue='foo'), add.apply_async((4, 4), queue='bar')
    add.apply_async((5, 5), queue='baz')

    def lengths(report=None):
        report = report or broker.status()
        return {name: queue_row(report, name)["ready"]
                for name in ("celery", "foo", "bar", "baz")}
    report = ok_json(celery(broker, ["status", "--json"], env=env)[0])
    assert lengths(report) == {"celery": 2, "foo": 1, "bar": 1, "baz": 1}

    # stdin is not a terminal: nothing is asked, nothing purged (README: "asks unless -f").
    unconfirmed, excluded = celery(broker, ["purge"], ["purge", "-X", "celery", "-f"], env=env)
    code, out, err = unconfirmed
    assert code == 1 and out == "" and err.count("\n") == 1 and "-f" in err, (out, err)
    assert excluded[:2] == (0, "purged 1 messages from foo\npurged 1 messages from bar\n"), \
        excluded
    assert lengths() == {"celery": 2, "foo": 0, "bar": 0, "baz": 1}

    add.apply_async((6, 6), queue='foo')
    assert celery(broker, ["purge", "-Q", "celery,foo,bar", "-f"], env=env)[0][:2] == \
        (0, "purged 2 messages from celery\npurged 1 messages from foo\n"
            "purged 0 messages from bar\n")
    add.delay(7, 7), add.apply_async((8, 8), queue='bar')
    assert control.purge() == 2
    assert lengths() == {"celery": 0, "foo": 0, "bar": 0, "baz": 1}
    assert celery(broker, ["purge", "-f"], env=env)[0][0] == 0
    assert lengths()["baz"] == 1


# -- What minitask refuses, in one line naming the minitask way ---------------------------------

REFUSED = [
    # README, "Celery's command lines": `control ... enable_events|disable_events` "refused,
    # each with what to use instead"; the guide's -d and --timeout do not change that.
    (["control", "-d", "w1@e.com,w2@e.com", "enable_events"],
     "minitask control: error: enable_events: ", "minitask status --http"),
    (["control", "disable_events", "--timeout", "0.5"],
     "minitask control: error: disable_events: ", "/metrics"),
    # `celery shell` refused "with what to use instead".
    (["shell"], "minitask shell: error: ", "python3"),
    # `celery events` refused: "the page, `minitask status`, `minitask inspect active`".
    (["events", "--dump"], "minitask events: error: ", "minitask status"),
    (["events", "-c", "myapp.DumpCam", "--frequency=2.0"], "minitask events: error: ",
     "minitask inspect active"),
]


def test_refused_commands_answer_in_one_line_and_inspect_honours_its_timeout(broker):
    """The guide's commands that the README refuses, with its ``-d``/``--destination`` and
    ``--timeout`` options, each answered in one line (exit code 2) naming the minitask way;
    and ``--timeout`` itself, with no worker there: ``inspect active --timeout 0.3`` says it
    waited that long (README: "none answering is a failure"), and the Python form
    ``app.control.inspect(timeout=0.3).active()`` is None, as Celery's."""
    outcomes = celery(broker, *([words for words, _, _ in REFUSED]
                                + [["inspect", "active", "--timeout", "0.3"]]))
    for (words, prefix, says), (code, out, err) in zip(REFUSED, outcomes):
        assert (code, out) == (2, ""), (words, out, err)
        assert err.startswith(prefix) and err.count("\n") == 1, (words, err)
        assert says in err and "Traceback" not in err, (words, err)
    assert outcomes[-1] == (1, "", "minitask inspect: no workers answered within 0.3s\n")
    assert control.inspect(timeout=0.3).active() is None


def test_migrate_is_refused_naming_the_minitask_way(broker):
    """``celery -A proj migrate redis://localhost amqp://localhost``: "migrate all the tasks
    on one broker to another". README, "Celery's command lines": ``migrate`` is "refused,
    each with what to use instead"; "A mixed system" says what that is: "point the producers
    at Redis, start workers on Redis, and keep the old workers until `minitask status` on
    the old URL shows their queues empty". The answer says "minitask has no migrate: its
    broker is the only one", which the Redis transport makes untrue, and names no way."""
    ((code, out, err),) = celery(broker, ["migrate", "redis://localhost",
                                          "amqp://localhost"])
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert err.startswith("minitask migrate: error: ")
    assert "only one" not in err and "minitask status" in err, err


def test_scheduled_from_python_lists_a_countdown_as_the_command_does(broker, start_worker):
    """``inspect scheduled``: "tasks reserved by the worker when they have an eta or
    countdown argument set", and its Python form ``app.control.inspect().scheduled()``.
    README, "Command line": a worker "gets a countdown only half a second before it is due",
    so ``inspect scheduled`` "also lists the countdowns the broker holds ... under
    `broker`". The Python form asks the workers only: a countdown of a minute is in neither
    of its lists, so a script watching scheduled tasks never sees it."""
    start_worker(name=NAME, args=["-c", "1"])
    later = add.apply_async((2, 2), countdown=60)
    ((code, out, err),) = celery(broker, ["inspect", "scheduled", "-j", "-d", NAME])
    listed = json.loads(out)
    assert code == 0 and [item["id"] for item in listed["broker"]] == [later.id], (out, err)
    scheduled = control.inspect([NAME]).scheduled()
    assert later.id in [item["request"]["id"] for items in scheduled.values()
                        for item in items], scheduled


def test_status_http_says_where_its_page_is_as_it_starts(broker, tmp_path):
    """Flower's ``celery -A proj flower`` says where it serves; its counterpart here,
    ``minitask status --http HOST:PORT`` (README, "The status page"), prints "minitask status
    page on http://HOST:PORT/ (broker URL)" as its page starts. The broker flushes its own
    ready line ("prints `minitask broker listening on ...` when ready"); this one is left in
    the stdout buffer, so under a supervisor, or ``> page.log``, it is not there until the
    command exits (this machine's PYTHONUNBUFFERED=1 hides it)."""
    page, port, _get = start_page(broker, tmp_path)
    try:
        line = "minitask status page on http://127.0.0.1:%d/ " % port
        wait_for(lambda: any(l.startswith(line) for l in page.lines), 1.0,
                 what="the page's line, a second after the page answers")
    finally:
        page.close()
