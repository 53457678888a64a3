"""The receivers and tasks of Celery's "Signals" user guide (docs/userguide/signals.rst,
Celery 5), written as the guide and Celery users write them (``celery.signals`` is
``minitask.signals``, ``@app.task`` is ``@shared_task``), for test_signalidioms.py.

The guide's receivers print; each one here also records what it was given, as one JSON list
(the process id first) a line in ITTASKS_DIR/trace-si-<what>.log (see ittasks._trace), so
that the test, in another process, can read it. The test process imports this module too:
the publish signals are sent where a task is sent.

With $SI_SETUP_LOGGING set, a `setup_logging` receiver takes the worker's logging over (it
would keep the after_setup_* receivers below from being called, as in Celery).
"""

import json
import logging
import os
import traceback as traceback_module
import types

from minitask import shared_task
from minitask.log import get_task_logger
from minitask.signals import (
    after_setup_logger, after_setup_task_logger, after_task_publish, before_task_publish,
    setup_logging, task_failure, task_postrun, task_prerun, task_received, task_retry,
    task_success, worker_init, worker_process_init, worker_process_shutdown, worker_ready,
    worker_shutdown, worker_shutting_down,
)

from ittasks import _trace

logger = get_task_logger(__name__)


def record(what, *values):
    _trace("si-" + what, json.dumps([os.getpid()] + list(values), default=repr))


def log_path(name):
    return os.path.join(os.environ["ITTASKS_DIR"], name)


# -- the tasks: the guide's "proj.tasks.add", and a few more to tell senders apart ----------

@shared_task(name="proj.tasks.add")
def add(x, y):
    return x + y


@shared_task(name="proj.tasks.mul")
def mul(x, y, z=1):
    logger.info("Multiplying %s by %s", x, y)
    return x * y * z


@shared_task(name="proj.tasks.fail")
def fail(message, code=None):
    raise KeyError(message)


@shared_task(name="proj.tasks.query")
def query():
    """What the worker_process_init receiver below set up in this pool process."""
    return [os.getpid(), db_connection]


@shared_task(bind=True, name="proj.tasks.flaky", max_retries=1)
def flaky(self, value):
    if not self.request.retries:
        raise self.retry(exc=IOError("service down"), countdown=0.1)
    return value


# -- Basics: after_task_publish, for every task and for one task name -----------------------

@after_task_publish.connect
def task_sent_handler(sender=None, headers=None, body=None, **kwargs):
    # information about task are located in headers for task messages
    # using the task protocol version 2.
    info = headers if 'task' in headers else body
    print('after_task_publish for task id {info[id]}'.format(
        info=info,
    ))
    record("after_task_publish", sender, info["id"], kwargs.get("exchange"),
           kwargs.get("routing_key"), sorted(kwargs))


@after_task_publish.connect(sender='proj.tasks.add')
def add_sent_handler(sender=None, headers=None, body=None, **kwargs):
    # information about task are located in headers for task messages
    # using the task protocol version 2.
    info = headers if 'task' in headers else body
    print('after_task_publish for task id {info[id]}'.format(
        info=info,
    ))
    record("add_published", sender, info["id"])


@before_task_publish.connect
def before_publish(sender=None, body=None, exchange=None, routing_key=None, headers=None,
                   properties=None, declare=None, retry_policy=None, **kwargs):
    record("before_task_publish", sender, headers["id"], headers["task"], headers["retries"],
           headers["eta"] is not None, headers["expires"] is not None, body["id"],
           body["args"], body["kwargs"], exchange, routing_key,
           isinstance(properties, dict), isinstance(declare, list), retry_policy)


# -- Task signals ---------------------------------------------------------------------------

@task_prerun.connect
def task_prerun_handler(sender=None, task_id=None, task=None, args=None, kwargs=None,
                        **extra):
    record("task_prerun", sender.name, task_id, task.name, list(args), kwargs,
           sender is task)


@task_postrun.connect
def task_postrun_handler(sender=None, task_id=None, task=None, args=None, kwargs=None,
                         retval=None, state=None, **extra):
    record("task_postrun", sender.name, task_id, list(args), kwargs,
           retval if state == "SUCCESS" else type(retval).__name__, state)


@task_success.connect
def task_success_handler(sender=None, result=None, runtime=None, **kwargs):
    # task_success gives no task id: the sender (the task) has its request.
    record("task_success", sender.name, sender.request.id, result,
           isinstance(runtime, float) and runtime >= 0)


@task_success.connect(sender=add)
def add_succeeded(sender=None, result=None, **kwargs):
    record("add_succeeded", sender.name, result)


@task_failure.connect
def task_failure_handler(sender=None, task_id=None, exception=None, args=None, kwargs=None,
                         traceback=None, einfo=None, **extra):
    record("task_failure", sender.name, task_id, type(exception).__name__, str(exception),
           list(args), kwargs, isinstance(traceback, types.TracebackType),
           "raise KeyError(message)" in "".join(traceback_module.format_tb(traceback)),
           einfo.type.__name__, einfo.exception is exception,
           "KeyError" in str(einfo) and "raise KeyError(message)" in einfo.traceback)


@task_retry.connect
def task_retry_handler(sender=None, request=None, reason=None, einfo=None, **kwargs):
    record("task_retry", sender.name, request.id, request.retries, str(reason),
           einfo is not None and type(einfo.exception).__name__)


@task_received.connect
def task_received_handler(sender=None, request=None, **kwargs):
    record("task_received", request.id, request.name, list(request.args), request.kwargs,
           request.retries, request.eta and request.eta.isoformat(),
           request.expires and request.expires.isoformat(), request.hostname,
           request.delivery_info.get("routing_key"))


# connect() as a plain call, with a sender given positionally (Celery's connect(fun, sender)).
def mul_ran(sender=None, task_id=None, **kwargs):
    record("mul_ran", sender.name, task_id)


task_postrun.connect(mul_ran, mul)


# A receiver that fails: Celery logs it and calls the next receivers; the task's outcome stands.
@task_success.connect(sender=mul)
def broken_receiver(sender=None, **kwargs):
    raise RuntimeError("a bug in a receiver")


# dispatch_uid: a receiver connected twice (a module imported twice) is called once, and
# another under the same uid is not connected at all.
def count_success(sender=None, **kwargs):
    record("uid_first", sender.name)


def count_success_again(sender=None, **kwargs):
    record("uid_second", sender.name)


task_success.connect(count_success, dispatch_uid="proj.count_success")
task_success.connect(count_success, dispatch_uid="proj.count_success")
task_success.connect(count_success_again, dispatch_uid="proj.count_success")


# disconnect(): by receiver, by receiver and sender, by dispatch_uid.
def never(sender=None, **kwargs):
    record("never", sender.name)


task_prerun.connect(never)
task_prerun.disconnect(never)
task_postrun.connect(never, sender=mul)
task_postrun.disconnect(never, sender=mul)
task_success.connect(never, dispatch_uid="proj.never")
task_success.disconnect(dispatch_uid="proj.never")


# @connect() with empty parentheses.
@task_failure.connect()
def failure_noted(sender=None, task_id=None, **kwargs):
    record("failure_noted", sender.name, task_id)


# -- Worker signals -------------------------------------------------------------------------

@worker_init.connect
def on_worker_init(sender=None, **kwargs):
    record("worker_init", sender.hostname, sender.app.conf is not None)


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    record("worker_ready", sender.hostname)


db_connection = None


@worker_process_init.connect
def init_worker_process(**kwargs):
    # The usual use: a connection of its own in every pool process.
    global db_connection
    db_connection = "connection of %d" % os.getpid()
    record("worker_process_init")


@worker_process_shutdown.connect
def on_worker_process_shutdown(pid=None, exitcode=None, **kwargs):
    record("worker_process_shutdown", pid, exitcode)


@worker_shutting_down.connect
def on_worker_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kwargs):
    record("worker_shutting_down", sender, sig, how, exitcode)


@worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs):
    record("worker_shutdown", sender.hostname)


# -- Logging signals: augmenting the worker's set-up ----------------------------------------

@after_setup_logger.connect
def setup_loggers(logger, *args, **kwargs):
    formatter = logging.Formatter('%(asctime)s - %(name)s - %(levelname)s - %(message)s')
    # add a file handler
    fh = logging.FileHandler(log_path('logs.log'))
    fh.setFormatter(formatter)
    logger.addHandler(fh)
    record("after_setup_logger", logger.name, kwargs.get("loglevel"), kwargs.get("logfile"),
           kwargs.get("format"), kwargs.get("colorize"))


@after_setup_task_logger.connect
def setup_task_loggers(logger, *args, **kwargs):
    fh = logging.FileHandler(log_path('tasks.log'))
    fh.setFormatter(logging.Formatter('TASK %(levelname)s %(name)s: %(message)s'))
    logger.addHandler(fh)
    record("after_setup_task_logger", logger.name, kwargs.get("loglevel"),
           kwargs.get("logfile"), kwargs.get("format"), kwargs.get("colorize"))


# -- Logging signals: replacing it ----------------------------------------------------------

def config_loggers(loglevel=None, logfile=None, format=None, colorize=None, **kwargs):
    handler = logging.FileHandler(log_path('project.log'))
    handler.setFormatter(logging.Formatter('PROJECT ' + format))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(loglevel)
    record("setup_logging", loglevel, logfile, format, colorize)


if os.environ.get("SI_SETUP_LOGGING"):
    setup_logging.connect(config_loggers)
