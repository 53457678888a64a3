"""Celery's "First steps with Django" as a Django user writes it, for test_djangoidioms.py.

The files of a real project made with ``django-admin startproject proj`` and ``startapp``:
the guide's ``proj/proj/celery.py`` and ``proj/proj/__init__.py`` (what the README says
stands for them: no app object, the settings in ``settings.py``, ``-A proj``), its
``CELERY_``-namespaced settings, and the example project's ``demoapp/tasks.py``
(``@shared_task``, tasks that use the ORM) with the ``send_email`` task of the guide's
"Trigger tasks at the end of the database transaction". A second app, listed by its
AppConfig path, has a ``tasks.py`` too: both are found without being listed anywhere.

Only the imports differ from the guide (``minitask`` for ``celery``).
"""

import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid

from cluster import _Process, project_env

# proj/proj/celery.py. Celery's has `app = Celery('proj')`,
# `app.config_from_object('django.conf:settings', namespace='CELERY')` and
# `app.autodiscover_tasks()`: the README ("Django", "Migrating from Celery") says minitask
# reads the settings (CELERY_ names too) from settings.py itself, imports every installed
# app's `tasks` module itself, and has no app object, `minitask.app.current_app` standing
# for it where Celery code is handed one; `@shared_task` stands for `@app.task`.
CELERY_PY = """\
import os

from minitask import shared_task
from minitask.app import current_app as app

# Set the default Django settings module for the 'celery' program.
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')


@shared_task(bind=True, ignore_result=True)
def debug_task(self):
    print(f'Request: {self.request!r}')
"""

# proj/proj/__init__.py, word for word.
INIT_PY = """\
# This will make sure the app is always imported when
# Django starts so that shared_task will use this app.
from .celery import app as celery_app

__all__ = ('celery_app',)
"""

# Added to the settings.py startproject wrote. The broker's address comes from the
# environment (each test has its own broker), as a deployed project's settings often do.
SETTINGS = """
import os

INSTALLED_APPS += ["demoapp", "app2.apps.App2Config"]

ALLOWED_HOSTS = ["testserver", "localhost"]
DATABASES["default"]["ATOMIC_REQUESTS"] = True     # each view runs in a transaction

CELERY_BROKER_URL = os.environ.get("PROJ_BROKER_URL", "minitask://127.0.0.1:5679")

# Celery Configuration Options
CELERY_TIMEZONE = "Australia/Tasmania"
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
"""

# The guide's django-celery-results and django-celery-beat settings (the packages are not
# installed, so not in INSTALLED_APPS): a settings module of their own, for one test.
SETTINGS_RESULTS = """\
from .settings import *  # noqa

CELERY_RESULT_BACKEND = 'django-cache'
# pick which cache from the CACHES setting.
CELERY_CACHE_BACKEND = 'default'
CELERY_BEAT_SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler'
"""

MODELS = """\
from django.db import models


class Widget(models.Model):
    name = models.CharField(max_length=140)
"""

# examples/django/demoapp/tasks.py (its retry demos left out), and the guide's send_email.
DEMOAPP_TASKS = """\
# Create your tasks here
import time

from django.contrib.auth.models import User

from demoapp.models import Widget

from minitask import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def mul(x, y):
    return x * y


@shared_task
def xsum(numbers):
    return sum(numbers)


@shared_task
def count_widgets():
    return Widget.objects.count()


@shared_task
def rename_widget(widget_id, name):
    w = Widget.objects.get(id=widget_id)
    w.name = name
    w.save()


@shared_task
def send_email(user_pk):
    user = User.objects.get(pk=user_pk)
    # send email ...
    Widget.objects.create(name='mailed ' + user.username)
    return user.username


@shared_task(bind=True)
def what_the_task_sees(self):
    from minitask.app import current_app
    return {"timelimit": list(self.request.timelimit),
            "timezone": current_app.conf.TIMEZONE,
            "broker": current_app.conf.BROKER_URL}


@shared_task
def wait_for_rename(widget_id, name, seconds=20):
    # runs until the row is renamed (the test's go signal), polling the database
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if Widget.objects.get(id=widget_id).name == name:
            return name
        time.sleep(0.02)
    raise RuntimeError('never renamed')
"""

# The guide's view (its pitfall's, with delay_on_commit), and one that fails after it.
VIEWS = """\
from django.contrib.auth.models import User
from django.http import HttpResponse

from demoapp.tasks import send_email


def create_user(request):
    # Note: simplified example, use a form to validate input
    user = User.objects.create(username=request.POST['username'])
    send_email.delay_on_commit(user.pk)
    return HttpResponse('User created')


def create_user_then_fail(request):
    user = User.objects.create(username=request.POST['username'])
    send_email.delay_on_commit(user.pk)
    raise ValueError('the request fails: its transaction is rolled back')
"""

URLS = """
from demoapp.views import create_user, create_user_then_fail
urlpatterns += [path('users/', create_user), path('users-fail/', create_user_then_fail)]
"""

APP2_TASKS = """\
from minitask import shared_task


@shared_task
def shout(text):
    return text.upper() + '!'
"""


def run(command, cwd, env, timeout=120, check=True):
    done = subprocess.run(command, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(command), done.returncode,
                                                        done.stdout, done.stderr))
    return done


class GuideProject:
    """The guide's ``proj``: startproject, demoapp and app2, migrated once."""

    def __init__(self, folder):
        self.folder = folder
        self.home = folder / "proj"
        self.home.mkdir()
        # The guide's celery.py sets DJANGO_SETTINGS_MODULE itself: none in the environment.
        self.env = project_env(self.home)
        admin = os.path.join(os.path.dirname(sys.executable), "django-admin")
        startproject = [admin] if os.path.exists(admin) else [sys.executable, "-m", "django"]
        run(startproject + ["startproject", "proj", str(self.home)], folder, self.env)
        package = self.home / "proj"
        (package / "celery.py").write_text(CELERY_PY)
        (package / "__init__.py").write_text(INIT_PY)
        with open(str(package / "settings.py"), "a") as settings:
            settings.write(SETTINGS)
        (package / "settings_results.py").write_text(SETTINGS_RESULTS)
        for app in ("demoapp", "app2"):
            run(startproject + ["startapp", app], self.home, self.env)
        (self.home / "demoapp" / "models.py").write_text(MODELS)
        (self.home / "demoapp" / "tasks.py").write_text(DEMOAPP_TASKS)
        (self.home / "app2" / "tasks.py").write_text(APP2_TASKS)
        (self.home / "demoapp" / "views.py").write_text(VIEWS)
        with open(str(package / "urls.py"), "a") as urls:
            urls.write(URLS)
        self.manage("makemigrations", "demoapp")
        self.manage("migrate")

    def manage(self, *args, env=None, check=True):
        return run([sys.executable, "manage.py"] + list(args), self.home,
                   dict(self.env, **(env or {})), check=check)

    def shell(self, code, broker_url, check=True):
        """``manage.py shell -c code`` with the settings naming `broker_url`: the
        CompletedProcess (stdout: what `code` printed)."""
        done = self.manage("shell", "-c", "print('--8<--')\n" + textwrap.dedent(code),
                           env={"PROJ_BROKER_URL": broker_url}, check=check)
        done.stdout = done.stdout.split("--8<--\n", 1)[-1]     # not what the shell says
        return done

    def worker(self, name, broker_url, settings=None):
        """``celery -A proj worker -l INFO``, as ``python -m minitask -A proj worker -l INFO``
        (with a name, and one pool process: the machine is small); its log is its stderr."""
        env = dict(self.env, PROJ_BROKER_URL=broker_url)
        if settings:
            env["DJANGO_SETTINGS_MODULE"] = settings
        command = [sys.executable, "-m", "minitask", "-A", "proj", "worker", "-l", "INFO",
                   "-n", name, "-c", "1"]
        log = self.folder / ("worker-%s-%s.log" % (name, uuid.uuid4().hex[:8]))  # its own
        return _Process(command, str(log), env, str(self.home))

    def rows(self, sql, *params):
        """Rows of the project's sqlite database, read directly (no Django)."""
        with sqlite3.connect(str(self.home / "db.sqlite3"), timeout=10) as db:
            return db.execute(sql, params).fetchall()

    def execute(self, sql, *params):
        db = sqlite3.connect(str(self.home / "db.sqlite3"), timeout=10)
        try:
            with db:
                db.execute(sql, params)
        finally:
            db.close()
