"""The task guide's code (early Celery's "Tasks" and "Executing Tasks" pages), for test_guide.py.

Workers import this module with ``-I guidetasks``. Each example is written as the guide writes
it, with the imports changed from celery to minitask, plus these changes only:

- what the guide imports from elsewhere is faked here: Django's ``User`` and a ``Twitter``
  client. They append a line to a trace file in the test's folder (``ITTASKS_DIR``, which the
  harness sets for the test and its workers), so a test can count runs across processes;
- where two examples define the same name in the guide, the later one is renamed
  (``create_user_json``, ``AbstractTask``);
- ``send_twitter_status`` retries after `RETRY_DELAY` seconds rather than the default three
  minutes, which no test can wait for; `MyTask` keeps the guide's 30 minutes and 60 seconds,
  and its body divides (the guide's is ``...``), with the comma after ``countdown=60`` that
  the guide lost to its comment.

Tasks below the guide's (marked) exist for the tests' own checks. test_seed_guide.py runs
the guide's code blocks themselves, taken from its text.
"""

import os

from minitask.decorators import task
from minitask.task import Task

RETRY_DELAY = 0.2


def trace(name, line):
    path = os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "guide-%s.log" % name)
    with open(path, "a") as handle:
        handle.write("%s\n" % (line,))


def read_trace(directory, name):
    path = os.path.join(str(directory), "guide-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]


class _Manager:
    def create(self, username, password):
        trace("users", "%s:%s" % (username, password))


class User:
    """Stands in for ``django.contrib.auth.models.User``."""

    objects = _Manager()


class Twitter:
    """Stands in for a Twitter client. ``oauth`` says how many posts fail, and how."""

    class FailWhaleError(Exception):
        pass

    class LoginError(Exception):
        pass

    def __init__(self, oauth):
        self.oauth = oauth

    def update_status(self, tweet):
        attempts = len(read_trace(os.environ.get("ITTASKS_DIR", "/tmp"), tweet))
        trace(tweet, "attempt")
        if attempts < self.oauth.get("failures", 0):
            error = self.LoginError if self.oauth.get("login_fails") else self.FailWhaleError
            raise error("attempt %d failed" % attempts)
        return "tweeted %s" % tweet


# -- Tasks: basics ---------------------------------------------------------------------------

class CreateUserTask(Task):
    def run(self, username, password):
        create_user(username, password)


@task()
def create_user(username, password):
    User.objects.create(username=username, password=password)


@task(serializer="json")
def create_user_json(username, password):
    User.objects.create(username=username, password=password)


# -- Tasks: logging --------------------------------------------------------------------------

@task()
def add(x, y, **kwargs):
    logger = add.get_logger(**kwargs)
    logger.info("Adding %s + %s" % (x, y))
    return x + y


# -- Tasks: retrying a task if something fails -----------------------------------------------

@task(default_retry_delay=RETRY_DELAY)
def send_twitter_status(oauth, tweet, **kwargs):
    try:
        twitter = Twitter(oauth)
        twitter.update_status(tweet)
    except (Twitter.FailWhaleError, Twitter.LoginError) as exc:
        send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)


class MyTask(Task):
    default_retry_delay = 30 * 60  # retry in 30 minutes

    def run(self, x, y, **kwargs):
        try:
            return x / y
        except Exception as exc:
            self.retry([x, y], exc=exc,
                       countdown=60,  # override the default and
                                      # retry in 1 minute
                       **kwargs)


# -- Tasks: how it works ---------------------------------------------------------------------

class AbstractTask(Task):
    abstract = True


class ConcreteTask(AbstractTask):
    def run(self):
        return "concrete"


# -- Tasks: tips (ignore results you don't want) ---------------------------------------------

@task(ignore_result=True)
def mytask(tag):
    trace(tag, "ran")
    return "something nobody reads"


# -- Executing tasks: routing options --------------------------------------------------------

class RoutedTask(Task):
    abstract = True
    exchange = "tasks"

    def run(self, *args):
        return [self.name.rpartition(".")[2]] + list(args)


class CompressVideoTask(RoutedTask):
    pass


class ImageRotateTask(RoutedTask):
    pass


class ImageCropTask(RoutedTask):
    pass


class UpdateReccomendationsTask(RoutedTask):
    pass


# -- Not the guide's: tasks for the tests' own checks ----------------------------------------

@task()
def kwargs_all(**kwargs):
    return sorted(kwargs)


@task()
def kwargs_listed(x, task_id=None, task_name=None):
    return {"x": x, "task_id": task_id, "task_name": task_name}


@task()
def kwargs_none(x):
    return x


@task(default_retry_delay=60)
def retry_without_exc(tag, **kwargs):
    """The guide's retry without `exc`: RetryTaskError is the tombstone while it waits."""
    trace(tag, kwargs["task_retries"])
    retry_without_exc.retry(args=[tag], kwargs=kwargs)


@task(max_retries=2, default_retry_delay=RETRY_DELAY)
def always_retry_without_exc(tag, **kwargs):
    trace(tag, kwargs["task_retries"])
    always_retry_without_exc.retry(args=[tag], kwargs=kwargs)


@task(acks_late=True)
def record(tag, value):
    trace(tag, value)
    return value


@task(rate_limit="10/s")
def limited(tag):
    import time
    trace(tag, "%.6f" % time.time())
    return tag


@task()
def fails(message):
    raise KeyError(message)


@task(disable_error_emails=True)
def fails_quietly(message):
    raise KeyError(message)
