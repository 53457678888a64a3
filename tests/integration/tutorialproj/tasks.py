"""``proj/tasks.py`` of Celery's "Next Steps" tutorial: ``@app.task`` is ``@shared_task``
(README, "Migrating from Celery": "there is no app object"), the tasks are the tutorial's."""

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
