"""Celery's "First steps with Django", idiom by idiom, on a real project and real workers.

One project (``django-admin startproject proj``, the apps ``demoapp`` and ``app2``, sqlite,
``migrate``) for the module, laid out as the guide says (djangoidioms.py has its files);
each test starts at most one worker, ``celery -A proj worker -l INFO`` written as
``python -m minitask -A proj worker -l INFO``, on the built-in broker and on Redis.
What test_django.py checks already (an ORM task under each start method, a view, the
LOGGING, ``-A proj`` reading a bare ``celery.py``) is not repeated.

Skipped, saying why, when Django is not installed (tests/run.py installs it).
"""

import sys

import pytest

from both import broker, server  # noqa: F401  (fixtures)
from cluster import wait_for
from djangoidioms import GuideProject, run
from minitask import send_task

django = pytest.importorskip("django", reason="Django is not installed (tests/run.py "
                                              "installs it into its virtual environment)")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return GuideProject(tmp_path_factory.mktemp("djangoidioms"))


@pytest.fixture
def worker(project, broker):
    """start(name, settings=None) -> the worker process; stopped afterwards."""
    started = []

    def start(name, settings=None):
        process = project.worker(name, broker.url, settings)
        started.append(process)
        return process
    try:
        yield start
    finally:
        for process in started:
            process.close()


def get(result, process, timeout=30):
    """result.get(), saying what the worker logged if it does not come."""
    try:
        return result.get(timeout=timeout)
    except Exception:
        print(process.output())
        raise


def test_dash_a_proj_worker_finds_every_apps_shared_tasks_with_the_celery_settings(
        project, broker, worker):
    """The guide's layout: celery.py sets DJANGO_SETTINGS_MODULE, __init__.py imports it,
    settings.py holds CELERY_BROKER_URL, CELERY_TIMEZONE, CELERY_TASK_TRACK_STARTED and
    CELERY_TASK_TIME_LIMIT = 30 * 60; `-A proj worker -l INFO` with nothing in the
    environment finds the @shared_task tasks of both apps (one listed by its AppConfig),
    and the project's own debug_task."""
    process = worker("guide@%h")
    assert get(send_task("demoapp.tasks.add", (2, 3)), process) == 5
    assert send_task("demoapp.tasks.mul", (4, 5)).get(timeout=30) == 20
    assert send_task("demoapp.tasks.xsum", ([1, 2, 3],)).get(timeout=30) == 6
    assert send_task("app2.tasks.shout", ("hi",)).get(timeout=30) == "HI!"
    seen = send_task("demoapp.tasks.what_the_task_sees").get(timeout=30)
    # CELERY_TASK_TIME_LIMIT = 30 * 60 is every task's hard limit; CELERY_TIMEZONE is read
    assert seen["timelimit"] == [1800, None]
    assert seen["timezone"] == "Australia/Tasmania"
    assert seen["broker"] == broker.url

    # CELERY_TASK_TRACK_STARTED: a running task shows STARTED. Its info is None, where
    # Celery's is {"pid", "hostname"}: the README ("Task options", track_started) says so.
    widget = project.rows("SELECT max(id) FROM demoapp_widget")[0][0]
    if widget is None:
        project.execute("INSERT INTO demoapp_widget (name) VALUES ('tracked')")
        widget = project.rows("SELECT max(id) FROM demoapp_widget")[0][0]
    running = send_task("demoapp.tasks.wait_for_rename", (widget, "go-%s" % id(broker)))
    wait_for(lambda: running.state == "STARTED", 30, what="the task to be STARTED")
    assert running.info is None and not running.ready()
    project.execute("UPDATE demoapp_widget SET name = ? WHERE id = ?", "go-%s" % id(broker),
                    widget)
    assert running.get(timeout=30) == "go-%s" % id(broker)

    # debug_task (bind=True, ignore_result=True) prints its request on the worker's stdout
    send_task("proj.celery.debug_task")
    line = wait_for(lambda: next((l for l in process.lines if l.startswith("Request: ")),
                                 None) or (not process.alive() and "exited"),
                    30, what="debug_task's print")
    assert line != "exited", process.output()
    print("\n-- debug_task printed: %s" % line)
    assert "proj.celery.debug_task[" in line, line
    log = process.output()
    assert "Traceback" not in log, log
    # The guide's CELERY_ settings are all minitask's: no warning names one of them.
    for name in ("CELERY_TIMEZONE", "CELERY_TASK_TRACK_STARTED", "CELERY_TASK_TIME_LIMIT",
                 "CELERY_BROKER_URL"):
        assert name not in log, log


def test_on_commit_lambda_from_manage_py_shell_sends_once_the_row_is_committed(
        project, broker, worker):
    """The guide's fix for its pitfall: `transaction.on_commit(lambda: send_email.delay(
    user.pk))` in a transaction; nothing is sent before the commit, and the task finds the
    row. Sent, and waited for, from `manage.py shell`."""
    process = worker("oncommit@%h")
    done = project.shell("""
        from django.contrib.auth.models import User
        from django.db import transaction
        from demoapp.tasks import send_email, count_widgets
        sent = []
        with transaction.atomic():
            user = User.objects.create(username='ann-%s')
            transaction.on_commit(lambda: sent.append(send_email.delay(user.pk)))
            print('inside', len(sent))
        print('after', len(sent))
        print('result', sent[0].get(timeout=30))
        print('widgets', count_widgets.delay().get(timeout=30))
        """ % id(broker), broker.url, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + process.output()
    lines = done.stdout.splitlines()
    assert lines[:3] == ["inside 0", "after 1", "result ann-%s" % id(broker)], lines
    assert int(lines[3].split()[1]) >= 1
    assert project.rows("SELECT count(*) FROM demoapp_widget WHERE name = ?",
                        "mailed ann-%s" % id(broker)) == [(1,)]


def ready(broker):
    """Messages waiting in the default queue (no worker runs yet)."""
    return broker.queue("minitask")["ready"]


def test_delay_on_commit_and_apply_async_on_commit_send_after_the_commit(project, broker,
                                                                         worker):
    """Celery 5.4+: `send_email.delay_on_commit(user.pk)` and `apply_async_on_commit` wrap
    the call in on_commit and return None: nothing is sent before the commit, nothing after
    a rollback. (README, "Django": "at once outside a transaction, never after a
    rollback".) The calls wait in the broker until the worker starts."""
    tag = "bob-%s" % id(broker)
    done = project.shell("""
        from django.contrib.auth.models import User
        from django.db import transaction
        from demoapp.tasks import send_email, rename_widget
        from demoapp.models import Widget
        with transaction.atomic():
            user = User.objects.create(username=%r)
            widget = Widget.objects.create(name='before')
            print(send_email.delay_on_commit(user.pk))
            print(rename_widget.apply_async_on_commit((widget.pk, %r), countdown=0))
            print(Widget.objects.filter(name='mailed ' + %r).count())
        try:
            with transaction.atomic():
                ghost = User.objects.create(username='ghost-' + %r)
                send_email.delay_on_commit(ghost.pk)
                raise ValueError('rolled back')
        except ValueError:
            pass
        print(widget.pk)
        """ % (tag, tag, tag, tag), broker.url, check=False)
    assert done.returncode == 0, done.stderr
    first, second, mailed, pk = done.stdout.split()
    assert (first, second, mailed) == ("None", "None", "0")
    assert ready(broker) == 2                # the rolled-back call was never sent
    process = worker("oncommit2@%h")
    wait_for(lambda: project.rows("SELECT name FROM demoapp_widget WHERE id = ?",
                                  int(pk)) == [(tag,)] or not process.alive(),
             30, what="rename_widget to run")
    wait_for(lambda: project.rows("SELECT count(*) FROM demoapp_widget WHERE name = ?",
                                  "mailed " + tag) == [(1,)] or not process.alive(),
             30, what="send_email to run")
    assert process.alive(), process.output()
    assert project.rows("SELECT count(*) FROM auth_user WHERE username = ?",
                        "ghost-" + tag) == [(0,)]
    assert "Traceback" not in process.output()


def test_the_guides_view_with_atomic_requests_sends_on_commit_only(project, broker, worker):
    """The guide's `create_user` view (`send_email.delay_on_commit(user.pk)`) under
    ATOMIC_REQUESTS, called through Django's test client in `manage.py shell`: the request
    that commits sends its task, the one that fails after the call sends nothing."""
    tag = "cy-%s" % id(broker)
    done = project.shell("""
        from django.test import Client
        client = Client(raise_request_exception=False)
        print(client.post('/users/', {'username': %r}).content.decode())
        print(client.post('/users-fail/', {'username': 'x' + %r}).status_code)
        """ % (tag, tag), broker.url, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["User created", "500"], done.stdout
    assert ready(broker) == 1
    process = worker("view@%h")
    wait_for(lambda: project.rows("SELECT count(*) FROM demoapp_widget WHERE name = ?",
                                  "mailed " + tag) == [(1,)] or not process.alive(),
             30, what="send_email to run")
    assert process.alive(), process.output()
    assert project.rows("SELECT count(*) FROM auth_user WHERE username = ?",
                        "x" + tag) == [(0,)]


def test_django_celery_results_and_beat_settings_are_answered_and_results_stay_in_broker(
        project, broker, worker):
    """The guide's extensions: CELERY_RESULT_BACKEND = 'django-cache', CELERY_CACHE_BACKEND
    = 'default', CELERY_BEAT_SCHEDULER = DatabaseScheduler. minitask's documented answer
    (README, "Configuration": a Celery setting with no counterpart "gets one warning at
    start naming it and the minitask way"; "Results live in the broker; there is no
    separate result backend"): one warning each, and results come back from the broker."""
    process = worker("results@%h", settings="proj.settings_results")
    assert get(send_task("demoapp.tasks.add", (20, 22)), process) == 42
    log = process.output()
    for name, way in (("CELERY_RESULT_BACKEND", "results live in the broker"),
                      ("CELERY_CACHE_BACKEND", "results live in the broker"),
                      ("CELERY_BEAT_SCHEDULER", "--beat")):
        lines = [l for l in log.splitlines() if name in l]
        assert len(lines) == 1 and way in lines[0], (name, log)
    assert "Traceback" not in log


def test_celerys_beat_and_scheduler_command_lines_are_answered_in_one_line(project):
    """`celery -A proj beat -l INFO --scheduler django_celery_beat.schedulers:
    DatabaseScheduler` (django-celery-beat's), and the same option on a worker with -B: the
    README ("Celery's command lines") refuses both, with the minitask way (--beat)."""
    scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    for words in (["beat", "-l", "INFO", "--scheduler", scheduler],
                  ["worker", "-B", "-l", "INFO", "--scheduler", scheduler],
                  ["worker", "-B", "-l", "INFO", "-S", scheduler]):
        done = run([sys.executable, "-m", "minitask", "-A", "proj"] + words, project.home,
                   project.env, check=False, timeout=30)
        assert done.returncode == 2, (words, done.stdout, done.stderr)
        reason = done.stderr.strip()
        assert len(reason.splitlines()) == 1 and "Traceback" not in reason, reason
        assert "--beat" in reason, reason
