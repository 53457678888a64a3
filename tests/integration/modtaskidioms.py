"""The tasks of Celery 5's "Tasks" user guide (docs/userguide/tasks.rst), the parts beyond
retrying, written as the guide writes them (``@app.task`` is ``@shared_task``, ``celery.*``
is ``minitask.*``), for test_modtaskidioms.py.

Where the guide's task prints what it saw, it also traces it to ITTASKS_DIR/trace-<name>.log
(see ittasks._trace), so that the test, in another process, can read it. Where the guide's
task stands for real work (an upload, a render, a web page), that work is a stand-in; where
the test must see the task mid-run, the stand-in waits until the test writes a go line
(`_wait_for_go`: a poll of the test's trace, as ittasks.progress does).
"""

import errno
import functools
import os
import signal
import time

import minitask
from minitask import Task, shared_task, states
from minitask.exceptions import Ignore
from minitask.log import get_task_logger

from ittasks import _trace, read_trace

logger = get_task_logger(__name__)


def _wait_for_go(name, timeout=20.0):
    """Wait (in the task) until the test has written a line to trace `name`."""
    deadline = time.monotonic() + timeout
    while not read_trace(os.environ["ITTASKS_DIR"], name):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never wrote %s" % name)
        time.sleep(0.01)


# -- Basics: bound tasks and the Task Request --------------------------------------------------

REQUEST_FIELDS = ("id", "args", "kwargs", "retries", "is_eager", "eta", "expires", "hostname",
                  "delivery_info", "called_directly", "root_id", "parent_id", "correlation_id",
                  "reply_to")


@shared_task(bind=True)
def dump_context(self, x, y):
    print('Executing task id {0.id}, args: {0.args!r} kwargs: {0.kwargs!r}'.format(
            self.request))
    logger.info(self.request.id)            # "Bound tasks": logger.info(self.request.id)
    return {name: getattr(self.request, name) for name in REQUEST_FIELDS}


# -- Hiding sensitive information in arguments -----------------------------------------------

@shared_task
def charge(account, card=None):
    return "%s charged to the card ending %s" % (account, card[-4:])


# -- Task inheritance --------------------------------------------------------------------------

class MyTask(minitask.Task):                # the guide: import celery; class MyTask(celery.Task)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        print('{0!r} failed: {1!r}'.format(task_id, exc))
        _trace("MyTask.on_failure", '{0!r} failed: {1!r}'.format(task_id, exc))


@shared_task(base=MyTask)
def add_raising(x, y):                      # the guide's `add` with base=MyTask
    raise KeyError()


# -- Names -------------------------------------------------------------------------------------

@shared_task(name='sum-of-two-numbers')
def add(x, y):
    return x + y


sum_of_two_numbers = add


@shared_task(name='tasks.add')
def add(x, y):                              # noqa: F811  (the guide defines add three times)
    return x + y


tasks_add = add


@shared_task
def add(x, y):                              # noqa: F811  automatic name: 'modtaskidioms.add'
    return x + y


# -- Multiple decorators: the task decorator is applied last -----------------------------------

def decorator1(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) * 10
    return wrapper


def decorator2(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) + 1
    return wrapper


@shared_task
@decorator2
@decorator1
def add_decorated(x, y):
    return x + y


# -- Argument checking -------------------------------------------------------------------------

@shared_task(typing=True)
def add_typed(x, y):
    return x + y


@shared_task(typing=False)
def add_untyped(x, y):
    return x + y


# -- Custom states -----------------------------------------------------------------------------

def upload(file):
    """The upload the guide's loop stands for: done when the test says so."""
    _wait_for_go("uploaded-%s" % file)


@shared_task(bind=True)
def upload_files(self, filenames):
    for i, file in enumerate(filenames):
        if not self.request.called_directly:
            self.update_state(state='PROGRESS',
                meta={'current': i, 'total': len(filenames)})
        upload(file)


@shared_task(bind=True)
def twitter_down(self, tag):
    """STARTED until the test says go, then RETRY (the exception that caused it) for a
    minute: the built-in states a task goes through, for the test to look at."""
    _wait_for_go("go-%s" % tag)
    raise self.retry(exc=ConnectionError('the fail whale'), countdown=60)


@shared_task
def divide(x, y):
    return x / y


# -- Handlers ----------------------------------------------------------------------------------

def _hook(task_id, *fields):
    _trace("hooks-%s" % task_id, "|".join(str(field) for field in fields))


class HandlersTask(Task):
    """Every handler of the guide's "Handlers" list, each tracing what it was given."""

    def before_start(self, task_id, args, kwargs):
        _hook(task_id, "before_start", list(args), kwargs)

    def on_success(self, retval, task_id, args, kwargs):
        _hook(task_id, "on_success", retval, list(args), kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _hook(task_id, "on_failure", repr(exc), list(args), kwargs,
              "raise KeyError('no such user')" in einfo.traceback)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        _hook(task_id, "on_retry", repr(exc), list(args), kwargs)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        _hook(task_id, "after_return", status, repr(retval), list(args), kwargs)


@shared_task(base=HandlersTask, bind=True)
def handled(self, outcome, user=None):
    if outcome == "fail":
        raise KeyError('no such user')
    if outcome == "retry" and self.request.retries == 0:
        raise self.retry(exc=ConnectionError('try again'), countdown=0)
    return outcome.upper()


# -- List of options: throws -------------------------------------------------------------------

class HttpNotFound(Exception):
    pass


def something(what):
    if what == "missing":
        raise HttpNotFound(what)
    if what == "key":
        raise KeyError(what)
    raise ValueError(what)


@shared_task(throws=(KeyError, HttpNotFound))
def get_foo(what):                          # the guide's get_foo(), with something to fail on
    something(what)


# -- Semipredicates: Ignore --------------------------------------------------------------------

@shared_task(bind=True)
def some_task(self):
    # The guide keeps revoked ids in a Redis set: redis.ismember('tasks.revoked', id).
    if self.request.id in read_trace(os.environ["ITTASKS_DIR"], 'tasks.revoked'):
        raise Ignore()
    _trace("some_task", self.request.id)
    return "done"


class twitter:                              # noqa: N801  the guide's twitter client
    @staticmethod
    def get_timeline(user):
        return ["%s: tweet %d" % (user, i) for i in range(2)]


@shared_task(bind=True)
def get_tweets(self, user):
    timeline = twitter.get_timeline(user)
    if not self.request.called_directly:
        self.update_state(state=states.SUCCESS, meta=timeline)
    raise Ignore()


# -- Semipredicates: Reject --------------------------------------------------------------------

class renderer:                             # noqa: N801  the guide's renderer
    @staticmethod
    def render_scene(file):
        if file["size"] > 10:
            raise MemoryError("the scene does not fit")
        return "rendered %s" % file["path"]


def get_file(path):
    return {"path": path, "size": 100 if "huge" in path else 1}


@shared_task(bind=True, acks_late=True)
def render_scene(self, path):
    # The guide imports Reject at the top of the module (from celery.exceptions import
    # Reject); here it is imported where it is used, so that this module still imports
    # where minitask has no Reject (see test_modtaskidioms.test_reject_...).
    from minitask.exceptions import Reject
    _trace("render_scene", path)
    file = get_file(path)
    try:
        renderer.render_scene(file)

    # if the file is too big to fit in memory
    # we reject it so that it's redelivered to the dead letter exchange
    # and we can manually inspect the situation.
    except MemoryError as exc:
        raise Reject(exc, requeue=False)
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise Reject(exc, requeue=False)

    # For any other error we retry after 10 seconds.
    except Exception as exc:
        raise self.retry(exc, countdown=10)


@shared_task(bind=True, acks_late=True)
def requeues(self):
    from minitask.exceptions import Reject     # the guide's, at the top of the module
    _trace("requeues", "run")
    if not self.request.delivery_info['redelivered']:
        raise Reject('no reason', requeue=True)
    print('received two times')
    _trace("requeues", "received two times")


# -- acks_late and task_reject_on_worker_lost --------------------------------------------------

@shared_task(acks_late=True)
def late(tag):
    """Acknowledged after it returns: it waits for the test meanwhile."""
    _wait_for_go("go-%s" % tag)
    return tag


@shared_task
def early(tag):
    """Acknowledged just before it runs (the default)."""
    _wait_for_go("go-%s" % tag)
    return tag


@shared_task(acks_late=True, reject_on_worker_lost=True)
def killed_once(tag):
    """Its pool process is killed (by signal) on the first run."""
    _trace(tag, "run")
    if len(read_trace(os.environ["ITTASKS_DIR"], tag)) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


# -- Custom task classes: instantiation --------------------------------------------------------

class NaiveAuthenticateServer(Task):

    def __init__(self):
        self.users = {'george': 'password'}

    def run(self, username, password):
        try:
            return self.users[username] == password
        except KeyError:
            return False


class Database:
    """The guide's Database: `connect()` counts its connections in this process."""
    connections = 0

    def __init__(self):
        self.table = self
        self.pid = os.getpid()

    @classmethod
    def connect(cls):
        cls.connections += 1
        return cls()

    def all(self):
        return ["row1", "row2"]


processed = []


def process_row(row):
    processed.append(row)


class DatabaseTask(Task):
    _db = None

    @property
    def db(self):
        if self._db is None:
            self._db = Database.connect()
        return self._db


@shared_task(base=DatabaseTask)
def process_rows():
    for row in process_rows.db.table.all():
        process_row(row)
    return [process_rows.db.pid, id(process_rows.db), Database.connections, len(processed)]


# -- Tips: avoid launching synchronous subtasks (the good way) ---------------------------------

def update_page_info(url):
    # fetch_page -> parse_page -> store_page
    chain = fetch_page.s(url) | parse_page.s() | store_page_info.s(url)
    chain()


@shared_task()
def fetch_page(url):
    return "<title>%s</title>" % url        # myhttplib.get(url)


@shared_task()
def parse_page(page):
    return {"title": page[len("<title>"):-len("</title>")]}    # myparser.parse_document(page)


@shared_task(ignore_result=True)
def store_page_info(info, url):
    _trace("PageInfo", "%s|%s" % (url, info["title"]))      # PageInfo.objects.create(...)
