"""A tasks module logging as Celery's guide shows today: a module logger from
`get_task_logger(__name__)` (Celery's `celery.utils.log`; here `minitask.log`)."""

from minitask import task
from minitask.log import get_task_logger

logger = get_task_logger(__name__)


@task(name="tl.add")
def add(x, y):
    logger.info("Adding %s + %s", x, y)
    return x + y
