"""A tasks module as a Celery project writes one to keep the worker off its logging: a
`setup_logging` receiver with a dictConfig (the worker's own lines, and the tasks', go where
it says), and a task logging through `get_logger`. Lines go to $ITTASKS_DIR/app.log. With
$NO_SETUP_LOGGING set, no receiver is connected."""

import logging
import logging.config
import os

from minitask import task
from minitask.signals import setup_logging


def config_loggers(*args, **kwargs):
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": {"format": "APP %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "app",
                              "filename": os.path.join(os.environ["ITTASKS_DIR"],
                                                       "app.log")}},
        "root": {"handlers": ["file"], "level": "INFO"},
    })


if not os.environ.get("NO_SETUP_LOGGING"):
    setup_logging.connect(config_loggers)


@task(name="ls.hello")
def hello(name, **kwargs):
    logger = hello.get_logger(**kwargs)
    logger.info("hello %s", name)
    logging.getLogger("myapp.views").warning("%s said hello", name)
    return "hello " + name
