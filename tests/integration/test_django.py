"""A real Django project (``django-admin startproject``, sqlite, ``migrate``) on a real worker.

The project's app ``notes`` has ``models.py`` and a ``tasks.py`` that imports its models at
the top, as Django projects do, and whose tasks read and write rows. Its ``settings.py`` is
all the configuration there is: the worker finds it through DJANGO_SETTINGS_MODULE, as do
``manage.py shell`` and a view sending tasks. Each start method gets its own worker.

``tasks.py`` also touches the database as it is imported, so a forked pool process inherits
the worker's open connection object: `connection_report` shows which connection a task
used. sqlite cannot show a shared socket, so the test asserts on the objects themselves.

Skipped, saying why, when Django is not installed (tests/run.py installs it).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import seedguide
from cluster import Broker, _Process, project_env, wait_for
from minitask import config, registry
from minitask.transport import reset_connection
from minitask.decorators import task

django = pytest.importorskip("django", reason="Django is not installed (tests/run.py "
                                              "installs it into its virtual environment)")

MODELS = """\
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    bumps = models.IntegerField(default=0)
"""

TASKS = """\
import os

from django.db import connection

from minitask.decorators import task
from notes.models import Note

# As a project's start-up code might: the worker touches the database while it imports
# this module. A forked pool process inherits this connection object.
Note.objects.exists()
OPENED = {"pid": os.getpid(), "connection": connection.connection}


@task()
def add_note(text):
    note = Note.objects.create(text=text)
    return {"id": note.pk, "notes": Note.objects.count()}


@task()
def bump(note_id):
    note = Note.objects.get(pk=note_id)
    note.bumps += 1
    note.save()
    return Note.objects.get(pk=note_id).bumps


@task()
def connection_report():
    connected_at_start = connection.connection is not None
    Note.objects.exists()
    opened = OPENED["connection"]
    try:
        opened.total_changes            # a closed sqlite3 connection refuses this
        opened_still_open = True
    except Exception:
        opened_still_open = False
    return {"pid": os.getpid(), "opened_in_pid": OPENED["pid"],
            "connected_at_start": connected_at_start,
            "uses_opened": connection.connection is opened,
            "opened_still_open": opened_still_open}
"""

VIEWS = """\
from django.http import JsonResponse

from notes.tasks import add_note


def send(request):
    return JsonResponse(add_note.delay(request.GET["text"]).get(timeout=20))
"""


def run(command, cwd, env, timeout=120):
    done = subprocess.run(command, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(command), done.returncode,
                                                        done.stdout, done.stderr))
    return done.stdout


class DjangoProject:
    """``proj`` with the app ``notes``, migrated, its settings naming `broker`."""

    def __init__(self, folder, broker):
        self.folder = folder
        self.home = folder / "proj"
        self.home.mkdir()
        self.env = project_env(self.home, DJANGO_SETTINGS_MODULE="proj.settings")
        admin = os.path.join(os.path.dirname(sys.executable), "django-admin")
        startproject = [admin] if os.path.exists(admin) else [sys.executable, "-m", "django"]
        run(startproject + ["startproject", "proj", str(self.home)], folder, self.env)
        self.manage("startapp", "notes")
        app = self.home / "notes"
        (app / "models.py").write_text(MODELS)
        with open(str(self.home / "proj" / "settings.py"), "a") as settings:
            settings.write(textwrap.dedent("""
                INSTALLED_APPS += ["notes"]
                ALLOWED_HOSTS = ["testserver", "localhost"]
                # minitask's settings live here too
                BROKER_URL = %r
                # A common LOGGING: it silences every logger that exists when it is applied
                # (the worker's, before it sets its own up) and logs to the console from root.
                LOGGING = {"version": 1, "disable_existing_loggers": True,
                           "handlers": {"console": {"class": "logging.StreamHandler"}},
                           "root": {"handlers": ["console"], "level": "WARNING"}}
                """ % broker.url))
        self.manage("makemigrations", "notes")
        self.manage("migrate")
        # The guide's first decorator example, word for word, with Django's real User.
        guide = next(s for s in seedguide.snippets() if s.module == "seed_02_task_decorator")
        (app / "tasks.py").write_text(TASKS + "\n\n" + guide.original.replace(
            "from celery.decorators import task", "from minitask.decorators import task").replace(
            "from django.contrib.auth import User", "from django.contrib.auth.models import User"))
        (app / "views.py").write_text(VIEWS)
        with open(str(self.home / "proj" / "urls.py"), "a") as urls:
            urls.write("\nfrom notes.views import send\n"
                       "urlpatterns += [path('send/', send)]\n")

    def manage(self, *args):
        return run([sys.executable, "manage.py"] + list(args), self.home, self.env)

    def shell(self, code):
        """What `code` printed in ``manage.py shell -c`` (not what the shell says itself)."""
        out = self.manage("shell", "-c", "print('--8<--')\n" + code)
        return out.split("--8<--\n", 1)[1]

    def start_worker(self, name, start_method, before=(), env=None):
        """`before`: arguments before the command (``-A proj``); `env`: instead of the
        project's environment."""
        logfile = str(self.folder / ("worker-%s.log" % name))
        command = [sys.executable, "-m", "minitask"] + list(before) + [
            "worker", "-n", name, "-c", "2", "--start-method", start_method, "-l", "INFO",
            "-f", logfile]
        worker = _Process(command, str(self.folder / ("worker-%s.out" % name)),
                          env or self.env, str(self.home))
        worker.logfile = logfile
        return worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("django")
    broker = Broker(folder).start()
    saved = dict(registry.tasks)
    try:
        config.configure(BROKER_URL=broker.url)
        reset_connection()
        yield DjangoProject(folder, broker), broker
    finally:
        reset_connection()
        config.reset()
        broker.proc.close()
        registry.tasks.clear()
        registry.tasks.update(saved)


def remote(name):
    """This process's stand-in for a task only the project defines: messages carry names."""
    return task(name=name)(lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def tasks(project):
    return {name: remote("notes.tasks." + name)
            for name in ("add_note", "bump", "connection_report", "create_user")}


def wait_worker(broker, worker, name):
    def connected():
        if not worker.alive():
            raise AssertionError("worker %s exited:\n%s" % (name, worker.output()))
        return any(w.get("hostname") == name and w.get("state") == "ok"
                   for w in broker.status()["workers"])
    wait_for(connected, 60, what="worker %s" % name)


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_an_orm_task_reads_and_writes_rows_under_every_start_method(project, tasks,
                                                                    start_method):
    project, broker = project
    name = "django-" + start_method
    worker = project.start_worker(name, start_method)
    try:
        wait_worker(broker, worker, name)
        added = tasks["add_note"].delay("written under " + start_method).get(timeout=30)
        assert added["notes"] >= 1
        assert [tasks["bump"].delay(added["id"]).get(timeout=30) for _ in range(3)] == [1, 2, 3]
        reports = [tasks["connection_report"].delay().get(timeout=30) for _ in range(4)]
        worker_pid = worker.pid
    finally:
        worker.stop()
        log = open(worker.logfile).read()
        worker.close()
    assert "Traceback" not in log and "AppRegistryNotReady" not in log
    # The project's LOGGING neither silences the worker's log nor doubles it.
    assert log.count("Received task: notes.tasks.add_note") == 1, log
    assert log.count("] Task notes.tasks.add_note[") == 1, log
    # Django closes a connection after each task (CONN_MAX_AGE = 0), as after a request.
    assert not any(report["connected_at_start"] for report in reports)
    for report in reports:
        assert not report["uses_opened"]
        if start_method == "fork":
            # the worker's own connection object: inherited, never used, never closed here
            assert report["opened_in_pid"] == worker_pid != report["pid"]
            assert report["opened_still_open"]
        else:
            # the pool process imported tasks.py itself; Django closed that connection
            assert report["opened_in_pid"] == report["pid"] != worker_pid
            assert not report["opened_still_open"]
    rows = json.loads(project.shell(
        "import json; from notes.models import Note; "
        "print(json.dumps(list(Note.objects.filter(pk=%d).values_list('text', 'bumps'))))"
        % added["id"]))
    assert rows == [["written under " + start_method, 3]]
    print("\n-- %s: add_note -> %r; bump x3 -> 1, 2, 3; row %r" % (start_method, added, rows))
    for report in reports[:2]:
        print("   connection_report -> %r" % (report,))


def test_manage_py_shell_and_a_view_send_tasks_with_the_settings_in_settings_py(project):
    project, broker = project
    worker = project.start_worker("django-shell", "fork")
    try:
        wait_worker(broker, worker, "django-shell")
        from_shell = project.shell(
            "from notes.tasks import add_note, create_user\n"
            "print(add_note.delay('from manage.py shell').get(timeout=30))\n"
            "print(create_user.delay('george', 'secret').get(timeout=30))\n"
            "from django.contrib.auth.models import User\n"
            "print(User.objects.filter(username='george').count())")
        from_view = project.shell(
            "from django.test import Client\n"
            "print(Client().get('/send/', {'text': 'from a view'}).content.decode())")
    finally:
        worker.stop()
        worker.close()
    added, created, users = from_shell.strip().splitlines()
    assert eval(added)["notes"] >= 1 and created == "None" and users == "1"
    assert json.loads(from_view)["notes"] >= 2
    print("\n-- manage.py shell: add_note -> %s; create_user -> %s; users named george: %s"
          % (added, created, users))
    print("-- view /send/?text=from+a+view -> %s" % from_view.strip())


def test_celerys_django_layout_names_the_settings_through_dash_a_proj(project, tasks):
    """Celery's "First steps with Django": ``proj/celery.py`` sets DJANGO_SETTINGS_MODULE,
    ``proj/__init__.py`` imports it, and the worker starts as ``-A proj`` with nothing in the
    environment. The package is imported before any setting is read, so the worker uses the
    broker settings.py names (it used the default address, another broker or none)."""
    project, broker = project
    (project.home / "proj" / "celery.py").write_text(
        "import os\n\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')\n")
    (project.home / "proj" / "__init__.py").write_text("from . import celery  # noqa\n")
    env = {name: value for name, value in project.env.items()
           if name != "DJANGO_SETTINGS_MODULE"}
    worker = project.start_worker("django-dash-a", "fork", before=["-A", "proj"], env=env)
    try:
        wait_worker(broker, worker, "django-dash-a")
        added = tasks["add_note"].delay("sent to -A proj").get(timeout=30)
    finally:
        worker.stop()
        log = open(worker.logfile).read()
        worker.close()
    assert added["notes"] >= 1
    assert "connected to %s" % broker.url in log
