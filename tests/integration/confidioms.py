"""Tasks, routers and settings modules for test_confidioms.py: Celery's "Configuration and
defaults" reference (docs/userguide/configuration.rst, Celery 5) as a Celery user writes it.

`PRODUCTION` is a ``celeryconfig.py`` with the lower-case Celery 4/5 names and `DJANGO` the
same kind of project's settings in Django's ``CELERY_`` upper-case namespace; the tests write
them into a temporary folder (cluster.settings_modules) for this process and the worker.
``from celery.schedules import crontab, solar`` reads ``from minitask.schedules import ...``
(README, "What differs": import from minitask).

Every run traces one line to ITTASKS_DIR/trace-<name>.log (ittasks._trace), so that the test,
in another process, sees what each run saw.
"""

import os
import time

from minitask import shared_task
from minitask.exceptions import SoftTimeLimitExceeded

from ittasks import _trace, read_trace


def _where(task):
    info = task.request.delivery_info or {}
    return {"exchange": info.get("exchange"), "routing_key": info.get("routing_key"),
            "pid": os.getpid()}


# -- routed by the settings' task_routes ------------------------------------------------------

@shared_task(bind=True, name="feeds.tasks.fetch")
def fetch_feed(self, url):
    return _where(self)


@shared_task(bind=True, name="video.tasks.encode")
def encode_video(self, path):
    return _where(self)


@shared_task(bind=True, name="reports.tasks.build")
def build_report(self, month):
    return _where(self)


@shared_task(bind=True, name="billing.tasks.charge")
def charge(self, amount):
    return _where(self)


@shared_task(bind=True, name="cf.plain")
def plain(self):
    return _where(self)


def route_billing(name, args, kwargs, options, task=None, **kw):
    """A router function named by its dotted path in task_routes (the reference's
    ``task_routes = ('myapp.tasks.route_task', {...})``)."""
    if name.startswith("billing."):
        return {"queue": "billing"}
    return None


# -- time limits: task_soft_time_limit / task_time_limit from the settings ----------------------

@shared_task(name="cf.soft")
def soft(tag):
    """The reference's ``mytask``: catches SoftTimeLimitExceeded to clean up in a hurry."""
    _trace(tag, "start")
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        _trace(tag, "cleaned up")
        return "cleaned up"
    return "not limited"


@shared_task(name="cf.stuck")
def stuck(tag):
    """Ignores the soft limit and goes on: the hard limit kills its process."""
    _trace(tag, "start")
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        _trace(tag, "soft")
        time.sleep(10)
    return "not killed"


@shared_task(name="cf.fails")
def fails(tag):
    _trace(tag, "run")
    raise ValueError("bad input")


# -- acks_late from the settings: a pool process that dies -----------------------------------

@shared_task(bind=True, name="cf.dies_once")
def dies_once(self, tag):
    """Its pool process exits on the first run (as one the OOM killer takes)."""
    first = not read_trace(os.environ["ITTASKS_DIR"], tag)
    _trace(tag, "run %d" % os.getpid())
    if first:
        os._exit(1)
    return bool((self.request.delivery_info or {}).get("redelivered"))


# -- rate limits and max tasks per child -----------------------------------------------------

@shared_task(name="cf.stamp")
def stamp(tag):
    """No rate_limit of its own: task_default_rate_limit applies."""
    _trace(tag, "%.6f %d" % (time.time(), os.getpid()))
    return os.getpid()


@shared_task(name="cf.fast", rate_limit="1000/s")
def fast(tag):
    """A rate limit of its own, which the default does not replace."""
    _trace(tag, "%.6f %d" % (time.time(), os.getpid()))
    return os.getpid()


@shared_task(bind=True, name="cf.tick")
def tick(self, x, y, tag=None):
    """A beat_schedule entry's task."""
    info = self.request.delivery_info or {}
    _trace(tag, "%s|%s|%d" % (x + y, info.get("routing_key"), os.getpid()))
    return x + y


@shared_task(name="cf.add")
def add(x, y):
    return x + y


@shared_task(name="cf.divide")
def divide(x, y):
    return x / y


# -- prefetch: a task that runs until the test says go ----------------------------------------

@shared_task(name="cf.gate", rate_limit="1000/s")
def gate(tag):
    """Runs until the test writes "go" into its trace."""
    _trace(tag, "start")
    deadline = time.monotonic() + 20
    while "go" not in read_trace(os.environ["ITTASKS_DIR"], tag):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never said go")
        time.sleep(0.01)
    return "went"

# -- the settings modules ----------------------------------------------------------------------

# A production celeryconfig.py. The names minitask cannot use are marked "# warned": README,
# Configuration, "Every other setting-like name ... gets one warning at start naming it and
# the minitask way". The rest take effect, or are "accepted without a word" where their value
# is what minitask does anyway.
PRODUCTION = """\
import re
from datetime import timedelta

from minitask.schedules import crontab, solar

# -- broker ---------------------------------------------------------------------------------
broker_url = 'redis://localhost:6379/0'
broker_connection_retry_on_startup = True
broker_pool_limit = 10
broker_transport_options = {'visibility_timeout': 3600}            # warned

# -- modules --------------------------------------------------------------------------------
imports = ('confidioms',)
include = ['routingidioms']

# -- serialization, time --------------------------------------------------------------------
task_serializer = 'json'
result_serializer = 'json'
accept_content = ['json']
result_accept_content = ['json']
timezone = 'Europe/Berlin'
enable_utc = True

# -- results --------------------------------------------------------------------------------
result_backend = 'redis://localhost:6379/1'                         # warned
result_expires = timedelta(hours=12)
result_extended = True                                              # warned
result_persistent = True
task_ignore_result = False
task_store_errors_even_if_ignored = True
task_track_started = True

# -- routing --------------------------------------------------------------------------------
task_default_queue = 'default'
task_default_exchange = 'tasks'
task_default_exchange_type = 'direct'
task_default_routing_key = 'task.default'
task_queues = {
    'default': {'exchange': 'tasks', 'routing_key': 'task.default'},
    'feeds': {'exchange': 'tasks', 'routing_key': 'feeds'},
    'media': {'exchange': 'media', 'exchange_type': 'topic', 'routing_key': 'media.#',
              'queue_arguments': {'x-max-priority': 10}},
    'reports': {'exchange': 'tasks', 'routing_key': 'reports'},
    'billing': {'exchange': 'tasks', 'routing_key': 'billing'},
}
task_create_missing_queues = True


def route_task(name, args, kwargs, options, task=None, **kw):
    if name.startswith('reports.'):
        return 'reports'                    # a string is a queue name


task_routes = (
    route_task,
    'confidioms.route_billing',
    {
        'feeds.tasks.*': {'queue': 'feeds'},
        re.compile(r'(image|video)\\.tasks\\..*'): {'exchange': 'media',
                                                     'routing_key': 'media.video'},
    },
)

# -- tasks ----------------------------------------------------------------------------------
task_annotations = {'tasks.add': {'rate_limit': '10/s'},            # warned
                    '*': {'time_limit': 30}}
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
task_soft_time_limit = 0.4
task_time_limit = 0.8
task_compression = 'gzip'                                           # warned
task_publish_retry = True
task_publish_retry_policy = {'max_retries': 3, 'interval_start': 0}  # warned
task_send_sent_event = True                                         # warned

# -- worker ---------------------------------------------------------------------------------
worker_concurrency = 3
worker_prefetch_multiplier = 2
worker_max_tasks_per_child = 1000
worker_max_memory_per_child = 200000                                # warned
worker_disable_rate_limits = False
worker_send_task_events = True                                      # warned
worker_hijack_root_logger = True
worker_pool = 'prefork'

# -- beat -----------------------------------------------------------------------------------
beat_schedule = {
    'nightly-report': {'task': 'reports.tasks.build', 'schedule': crontab(hour=3, minute=0),
                       'args': ('last',)},
    'every-hour': {'task': 'cf.plain', 'schedule': timedelta(hours=1)},
    'at-sunrise': {'task': 'cf.plain', 'schedule': solar('sunrise', 52.52, 13.40)},
}
"""

# The warnings PRODUCTION must give, once each, and nothing more.
PRODUCTION_WARNED = (
    "ignoring broker_transport_options: minitask has no such setting",
    "ignoring result_backend: minitask has no such setting",
    "result_extended=True has no effect in minitask",
    "ignoring task_annotations: minitask has no such setting",
    "ignoring task_compression: minitask has no such setting",
    "ignoring task_publish_retry_policy: minitask has no such setting",
    "task_send_sent_event=True has no effect in minitask",
    "ignoring worker_max_memory_per_child: minitask has no such setting",
    "worker_send_task_events=True has no effect in minitask",
)

# A Django project's settings.py with the CELERY_ namespace
# (app.config_from_object('django.conf:settings', namespace='CELERY')), Django's own settings
# beside them.
DJANGO = """\
from datetime import timedelta

from minitask.schedules import crontab, solar

DEBUG = False
SECRET_KEY = 'not-a-secret'
INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth']
DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'db.sqlite3'}}
TIME_ZONE = 'Europe/Berlin'
USE_TZ = True

CELERY_BROKER_URL = 'redis://localhost:6379/0'
CELERY_RESULT_BACKEND = 'django-db'                                 # warned
CELERY_IMPORTS = ['confidioms']
CELERY_ACCEPT_CONTENT = ['application/json']
CELERY_TASK_SERIALIZER = 'json'
CELERY_TIMEZONE = 'Europe/Berlin'
CELERY_ENABLE_UTC = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_DEFAULT_RATE_LIMIT = '4/s'
CELERY_TASK_ANNOTATIONS = {'cf.fast': {'rate_limit': '1/m'}}        # warned
CELERY_TASK_QUEUES = {'celery': {}, 'beats': {}}
CELERY_TASK_DEFAULT_QUEUE = 'celery'
CELERY_WORKER_CONCURRENCY = 1
CELERY_WORKER_MAX_TASKS_PER_CHILD = 2
CELERY_WORKER_MAX_MEMORY_PER_CHILD = 12000                          # warned
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    'tick': {'task': 'cf.tick', 'schedule': timedelta(seconds=0.3), 'args': (16, 16),
             'kwargs': {'tag': 'TAG'}, 'options': {'queue': 'beats'}},
    'nightly': {'task': 'cf.plain', 'schedule': crontab(minute=0, hour=4)},
    'sunset': {'task': 'cf.plain', 'schedule': solar('sunset', 52.52, 13.40)},
}
"""

DJANGO_WARNED = (
    "ignoring CELERY_RESULT_BACKEND: minitask has no such setting",
    "ignoring CELERY_TASK_ANNOTATIONS: minitask has no such setting",
    "ignoring CELERY_WORKER_MAX_MEMORY_PER_CHILD: minitask has no such setting",
)
