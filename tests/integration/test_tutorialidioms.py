"""Celery's two getting-started tutorials, "First Steps with Celery" and "Next Steps"
(docs/getting-started/first-steps-with-celery.rst and next-steps.rst, Celery 5), their idioms
pasted as a Celery user writes them and their command lines run as a Celery user types them
(``celery ARGS`` is ``python -m minitask ARGS``), on real workers on both transports: the
built-in broker and Redis (the `broker` fixture of both.py; Redis skips, saying why, where
redis-server is not installed).

The layouts are the tutorials': First Steps' single ``tasks.py`` is tutorialidioms.py, Next
Steps' ``proj`` package is tutorialproj/ (its ``celery.py`` is the project's settings module:
there is no app object, see tutorialproj/__init__.py), and First Steps' ``celeryconfig.py`` is
written per test where the tutorial adds settings to it. Workers run in the folder above the
project, as the tutorial says, and get their broker's URL from MINITASK_BROKER_URL (or ``-b``,
the tutorial's other way), which overrides the settings module's local default.

Where the README names a difference (the default queue's name, results without a backend,
the refused event commands, STARTED always recorded), the test checks minitask's documented
behaviour and cites the README.
"""

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server  # noqa: E402,F401  (fixtures)
from cluster import HERE, Worker, _Process, _env, settings_modules, wait_for  # noqa: E402

from minitask import AsyncResult, chain, chord, config, group  # noqa: E402
from minitask.exceptions import NotRegistered  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

NODE = "celery@example.com"         # the node name of the tutorial's --destination
T = 10                              # a timeout that only a failure waits out


class CommandLineWorker(Worker):
    """``python -m minitask ARGV -n NODE -c 2``: the tutorial's ``celery ARGV`` (``-n`` so
    that ``--destination`` has a name to give, ``-c 2`` to keep the pool small), in the
    folder above the project (HERE), as the tutorial starts it."""

    def __init__(self, broker, tmp_path, argv, env=None, url_in_env=True):
        self.broker = broker
        self.name = NODE
        self.logfile = str(tmp_path / "worker-none.log")         # logs go to stderr
        extra = dict(env or {}, ITTASKS_DIR=str(tmp_path))
        if url_in_env:
            extra["MINITASK_BROKER_URL"] = broker.url
        command = [sys.executable, "-m", "minitask"] + list(argv) + ["-n", NODE, "-c", "2"]
        self.proc = _Process(command, str(tmp_path / "worker.out"), _env(extra), HERE)


@pytest.fixture
def celery(broker, tmp_path):
    """celery(*argv, env=None, url_in_env=True) -> a connected CommandLineWorker; stopped
    afterwards."""
    started = []

    def start(*argv, env=None, url_in_env=True):
        worker = CommandLineWorker(broker, tmp_path, argv, env, url_in_env)
        started.append(worker)
        return worker.wait_ready(30)
    try:
        yield start
    finally:
        for worker in started:
            worker.proc.close()


def commands(broker, *lines, env=None, cwd=HERE):
    """Several ``celery ...`` command lines at once: their (exit code, stdout, stderr)."""
    extra = dict(env or {}, MINITASK_BROKER_URL=broker.url)
    processes = [subprocess.Popen([sys.executable, "-m", "minitask"] + list(argv),
                                  env=_env(extra), cwd=cwd, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for argv in lines]
    return [(p.returncode, out, err) for p in processes
            for out, err in [p.communicate(timeout=60)]]


PROJECT = {"MINITASK_CONFIG_MODULE": "tutorialproj.celery"}
# README, Periodic tasks: a zone name needs Python 3.9's zoneinfo ("on 3.8 such a name is a
# ConfigurationError at start").
OSLO = "'Europe/Oslo'" if sys.version_info >= (3, 9) else "'UTC'"


@pytest.fixture
def project(broker, monkeypatch):
    """This process reads the project's settings (tutorialproj/celery.py), with the test's
    broker on top, as the tutorial's shell does through ``proj.celery``'s app."""
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "tutorialproj.celery")
    config.configure(BROKER_URL=broker.url, ACCEPT_CONTENT=["json", "pickle"])
    reset_connection()
    yield


@pytest.fixture
def settings_module(broker, tmp_path, monkeypatch):
    """settings_module(name, text) -> the env a worker needs to read it: writes the module
    into tmp_path and points this process at it too (the test's broker on top)."""
    yield from settings_modules(broker, tmp_path, monkeypatch)


def ready(broker, *queues):
    """The messages waiting in each queue (0 for a queue that does not exist)."""
    rows = {row["name"]: row for row in broker.status()["queues"]}
    return [rows[name]["ready"] if name in rows else 0 for name in queues]


def held(broker, *queues):
    """The messages each queue holds, ready or waiting for their countdown."""
    rows = {row["name"]: row for row in broker.status()["queues"]}
    return [rows[name]["ready"] + rows[name].get("delayed", 0) if name in rows else 0
            for name in queues]


# -- First Steps with Celery ------------------------------------------------------------------

def test_first_steps_calling_the_task_and_keeping_results(broker, celery):
    """``celery -A tasks worker --loglevel=INFO``; ``add.delay(4, 4)``; ``result.ready()``,
    ``result.get(timeout=1)``, ``get(propagate=False)``, ``result.traceback``; "you must
    eventually call get() or forget() on EVERY AsyncResult"."""
    from tutorialidioms import add
    result = add.delay(4, 4)
    assert result.ready() is False                  # no worker yet: not processed
    assert result.state == 'PENDING' and result.result is None
    worker = celery("-A", "tutorialidioms", "worker", "--loglevel=INFO")
    assert result.get(timeout=T) == 8
    assert result.ready() is True and result.successful() is True
    assert result.result == 8 and result.traceback is None
    assert result.get(timeout=1) == 8               # the stored result, again
    # "You can verify this by looking at the worker's console output."
    wait_for(lambda: "tutorialidioms.add[%s] succeeded" % result.id in worker.output(), 5,
             what="the worker's line for the task")
    assert "Received task: tutorialidioms.add[%s]" % result.id in worker.output()

    # "In case the task raised an exception, get() will re-raise the exception, but you can
    # override this by specifying the propagate argument"; "access the original traceback".
    result = add.delay(4, 'four')
    with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \+"):
        result.get(timeout=1)
    exc = result.get(propagate=False)
    assert isinstance(exc, TypeError) and "'int' and 'str'" in str(exc)
    assert result.successful() is False and isinstance(result.result, TypeError)
    assert "Traceback (most recent call last)" in result.traceback
    assert "return x + y" in result.traceback and "TypeError" in result.traceback
    result.forget()
    assert result.state == 'PENDING'


def test_first_steps_configuration_module_routing_and_rate_limit(broker, celery,
                                                                 settings_module, tmp_path):
    """The tutorial's ``celeryconfig.py`` (``app.config_from_object('celeryconfig')``), checked
    with ``python -m celeryconfig``, then ``task_routes`` sending ``tasks.add`` to its own
    queue, ``task_annotations`` and ``celery -A tasks control rate_limit tasks.add 10/m``."""
    env = settings_module("celeryconfig", """\
        broker_url = 'minitask://127.0.0.1:5679'
        result_backend = 'rpc://'

        task_serializer = 'json'
        result_serializer = 'json'
        accept_content = ['json']
        timezone = 'Europe/Oslo'
        enable_utc = True

        task_routes = {
            'tutorialidioms.add': 'low-priority',
        }

        task_annotations = {
            'tutorialidioms.add': {'rate_limit': '10/m'}
        }
        """.replace("'Europe/Oslo'", OSLO))
    # "To verify that your configuration file works properly ... try to import it"
    checked = subprocess.run([sys.executable, "-m", "celeryconfig"], cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (0, "")

    from tutorialidioms import add
    result = add.delay(2, 2)                        # routed by task_routes
    assert ready(broker, "low-priority", "minitask") == [1, 0]
    # The misbehaving task's "dedicated queue" needs a worker consuming it: -Q, as in Next Steps.
    worker = celery("-A", "tutorialidioms", "worker", "-Q", "low-priority", "--loglevel=INFO",
                    env=env)
    assert result.get(timeout=T) == 4
    output = worker.output()
    # README, Configuration: a Celery setting minitask has no counterpart for gets one
    # warning at start naming it and the minitask way (result_backend: "results live in the
    # broker"); settings whose value is what minitask does anyway are accepted without a word.
    assert output.count("ignoring result_backend") == 1
    assert output.count("ignoring task_annotations") == 1
    assert "set the options on the tasks" in output
    for quiet in ("task_serializer", "result_serializer", "accept_content", "timezone",
                  "enable_utc", "task_routes"):
        assert quiet not in output, quiet

    ((code, out, err),) = commands(broker, ["-A", "tutorialidioms", "control", "rate_limit",
                                            "tutorialidioms.add", "10/m"], env=env)
    assert code == 0, (out, err)
    assert out == "%s: rate limit of tutorialidioms.add set to '10/m'\n" % NODE


# -- Next Steps: the project, calling tasks -------------------------------------------------

def test_next_steps_project_worker_calling_api_and_states(broker, celery, project):
    """``celery -A proj worker -l INFO`` in the folder above ``proj`` (the broker given with
    ``-b``, the tutorial's other way), then the "Calling Tasks" section line by line, and
    Control-c to stop the worker."""
    worker = celery("-A", "tutorialproj", "-b", broker.url, "worker", "-l", "INFO",
                    env=PROJECT, url_in_env=False)
    from tutorialproj.tasks import add

    assert add.delay(2, 2).get(timeout=T) == 4
    # The banner: the broker given with -b (over the settings' broker_url), the concurrency,
    # the queues; and the project's settings read (README, Configuration: result_backend
    # and include are Celery settings it warns about, once).
    output = worker.output()
    assert "connected to %s" % broker.url in output and "2 pool processes" in output
    assert "queues minitask" in output
    assert output.count("ignoring result_backend") == 1
    assert add.apply_async((2, 2)).get(timeout=T) == 4
    assert add(2, 2) == 4                           # in this process: no message sent
    assert ready(broker, "minitask") == [0]

    res = add.delay(2, 2)
    assert res.get(timeout=1) == 4
    assert str(uuid.UUID(res.id)) == res.id         # d6b3aea2-fb9b-4ebc-8da4-848818db9114

    res = add.delay(2, '2')
    with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \+: 'int' "
                                        r"and 'str'"):
        res.get(timeout=1)
    exc = res.get(propagate=False)
    assert repr(exc) == 'TypeError("unsupported operand type(s) for +: \'int\' and \'str\'")'
    assert res.failed() is True
    assert res.successful() is False
    assert res.state == 'FAILURE'

    # ">>> from proj.celery import app; res = app.AsyncResult('this-id-does-not-exist')"
    res = AsyncResult('this-id-does-not-exist')
    assert res.state == 'PENDING'

    # "To stop the worker simply hit Control-c" (SIGINT to the terminal's process group).
    os.killpg(worker.proc.pid, signal.SIGINT)
    worker.proc.process.wait(T)
    assert worker.proc.process.returncode == 0, worker.output()[-2000:]


def test_next_steps_apply_async_to_a_queue_with_a_countdown(broker, celery, project):
    """``add.apply_async((2, 2), queue='lopri', countdown=10)``: "sent to a queue named lopri
    and the task will execute, at the earliest, 10 seconds after the message was sent" (0.5 s
    here), under the project's settings (timezone 'Europe/Oslo', enable_utc: times in
    messages are UTC)."""
    from tutorialproj.tasks import add
    sent = datetime.now(timezone.utc)
    res = add.apply_async((2, 2), queue='lopri', countdown=0.5)
    assert held(broker, "lopri", "minitask") == [1, 0]
    celery("-A", "tutorialproj", "worker", "-l", "INFO", "-Q", "lopri", env=PROJECT)
    assert res.get(timeout=T) == 4
    took = (res.date_done - sent).total_seconds()
    assert 0.5 <= took < 5, took


# -- Next Steps: Canvas ---------------------------------------------------------------------

def test_next_steps_canvas_signatures_partials_groups_chains_and_chords(broker, celery,
                                                                        project):
    """The tutorial's "Canvas: Designing Work-flows" lines, in order."""
    celery("-A", "tutorialproj", "worker", "-l", "INFO", env=PROJECT)
    from tutorialproj.tasks import add, mul, xsum

    assert repr(add.signature((2, 2), countdown=10)) == 'tutorialproj.tasks.add(2, 2)'
    assert repr(add.s(2, 2)) == 'tutorialproj.tasks.add(2, 2)'

    s1 = add.s(2, 2)
    res = s1.delay()
    assert res.get(timeout=T) == 4

    # incomplete partial: add(?, 2)
    s2 = add.s(2)
    # resolves the partial: add(8, 2)
    res = s2.delay(8)
    assert res.get(timeout=T) == 10

    # >>> s3 = add.s(2, 2, debug=True); s3.delay(debug=False)   # debug is now False.
    # The tutorial's add takes no `debug`: Celery 5 (strict_typing, its default) raises
    # TypeError in the caller; minitask's `typing` is off unless set (README, Task options),
    # so the worker's call raises it. Either way the merged keyword reaches the call.
    s3 = add.s(2, 2, debug=True)
    with pytest.raises(TypeError, match="debug"):
        s3.delay(debug=False).get(timeout=T)
    assert s3.kwargs == {'debug': True}

    assert group(add.s(i, i) for i in range(10))().get(timeout=T) == \
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    g = group(add.s(i) for i in range(10))
    assert g(10).get(timeout=T) == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]

    # (4 + 4) * 8
    assert chain(add.s(4, 4) | mul.s(8))().get(timeout=T) == 64
    # (? + 4) * 8
    g = chain(add.s(4) | mul.s(8))
    assert g(4).get(timeout=T) == 64
    assert (add.s(4, 4) | mul.s(8))().get(timeout=T) == 64

    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=T) == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=T) == 90


# -- Next Steps: Routing --------------------------------------------------------------------

def test_next_steps_routing_with_task_routes_and_the_queue_argument(broker, celery,
                                                                    settings_module):
    """``app.conf.update(task_routes={'proj.tasks.add': {'queue': 'hipri'}})``,
    ``add.apply_async((2, 2), queue='hipri')``, ``celery -A proj worker -Q hipri,celery``.
    README, Configuration: the default queue is named ``minitask`` (DEFAULT_QUEUE), where
    Celery's is ``celery``, so the worker's ``-Q`` names that one."""
    env = settings_module("tutorialroutes_%s" % uuid.uuid4().hex[:8], """\
        from tutorialproj.celery import *

        # app.conf.update(...)
        task_routes = {
            'tutorialproj.tasks.add': {'queue': 'hipri'},
        }
        """)
    from tutorialproj.tasks import add, mul
    routed = add.delay(1, 1)
    named = add.apply_async((2, 2), queue='hipri')
    unrouted = mul.delay(3, 3)
    assert ready(broker, "hipri", "minitask") == [2, 1]
    celery("-A", "tutorialproj", "worker", "-Q", "hipri,minitask", env=env)
    assert [r.get(timeout=T) for r in (routed, named, unrouted)] == [2, 4, 9]


# -- Next Steps: Remote Control ---------------------------------------------------------------

def test_next_steps_remote_control_inspect_active_status_and_events(broker, celery, tmp_path):
    """``celery -A proj inspect active`` (and with ``--destination``), ``celery -A proj
    status``, ``inspect --help``, ``control --help``, ``celery worker --help`` and ``celery
    --help``; the events commands and ``celery multi``, which README, "Celery's command
    lines", answers with the minitask way (there are no events; a service manager starts
    workers). The tutorial's ``-A proj`` is the First Steps module here, which has a task
    that is still running when ``inspect active`` looks."""
    celery("-A", "tutorialidioms", "worker", "-l", "INFO")
    from tutorialidioms import hold
    release = tmp_path / "release"
    running = hold.delay(str(release))
    # README, Task options: track_started is always on, so the state is STARTED.
    wait_for(lambda: running.state == 'STARTED', T, what="the task to start")
    (active, destined, status, inspect_help, control_help, enable, events, dump, disable,
     worker_help, celery_help, multi) = commands(
        broker, ["-A", "tutorialidioms", "inspect", "active"],
        ["-A", "tutorialidioms", "inspect", "active", "--destination=%s" % NODE],
        ["-A", "tutorialidioms", "status"],
        ["-A", "tutorialidioms", "inspect", "--help"],
        ["-A", "tutorialidioms", "control", "--help"],
        ["-A", "tutorialidioms", "control", "enable_events"],
        ["-A", "tutorialidioms", "events"],
        ["-A", "tutorialidioms", "events", "--dump"],
        ["-A", "tutorialidioms", "control", "disable_events"],
        ["worker", "--help"], ["--help"],
        ["multi", "start", "w1", "-A", "tutorialidioms", "-l", "INFO"])
    release.write_text("")
    assert running.get(timeout=T) is True
    for code, out, err in (active, destined):
        assert code == 0, (out, err)
        assert out.startswith("%s:\n" % NODE)
        assert "tutorialidioms.hold[%s]" % running.id in out
    code, out, err = status
    assert code == 0, (out, err)
    assert NODE in out and " ok" in out
    assert inspect_help[0] == 0 and "active" in inspect_help[1], inspect_help
    assert control_help[0] == 0 and "rate_limit" in control_help[1], control_help
    for code, out, err in (enable, disable):
        assert code == 2 and "minitask sends no task events" in err, (out, err)
    for code, out, err in (events, dump):
        assert code == 2 and "minitask has no event stream" in err, (out, err)
    # "For a complete listing of the command-line options available, do: celery worker --help"
    assert worker_help[0] == 0 and "-Q QUEUES" in worker_help[1], worker_help
    assert celery_help[0] == 0 and "inspect" in celery_help[1], celery_help
    # README, "Celery's command lines": celery multi is refused with the minitask way.
    assert multi[0] == 2 and "service manager" in multi[2], multi


# -- What the README does not say differs -----------------------------------------------------

def test_the_projects_result_expires_setting_expires_results(broker, celery, settings_module):
    """``app.conf.update(result_expires=3600)``: results expire that long after they are
    stored (0.5 s here). On the built-in broker only the broker process's own RESULT_EXPIRES
    used to count: the project's setting, read by its workers, changed nothing."""
    env = settings_module("tutorialexpires_%s" % uuid.uuid4().hex[:8], """\
        from tutorialproj.celery import *

        # app.conf.update(...)
        result_expires = 0.5
        """)
    celery("-A", "tutorialproj", "worker", "-l", "INFO", env=env)
    from tutorialproj.tasks import add
    res = add.delay(2, 2)
    assert res.get(timeout=T) == 4
    wait_for(lambda: AsyncResult(res.id).state == 'PENDING', 2.5,
             what="the result to expire after result_expires")


def test_the_include_setting_imports_the_projects_tasks(broker, celery, project):
    """``Celery('proj', ..., include=['proj.tasks'])``: "a list of modules to import when the
    worker starts". With ``-A proj.celery`` (the tutorial's "About the --app argument": the
    module form) nothing else names ``proj.tasks``. It was ignored, with a warning."""
    worker = celery("-A", "tutorialproj.celery", "worker", "-l", "INFO", env=PROJECT)
    from tutorialproj.tasks import add
    try:
        assert add.delay(2, 2).get(timeout=T) == 4
    except NotRegistered:
        assert "ignoring include" in worker.output()
        raise
