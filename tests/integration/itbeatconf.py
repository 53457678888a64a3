"""A beat worker's settings module: Celery's beat_schedule, Django-namespace spelling."""

from minitask import crontab

CELERY_BEAT_SCHEDULE = {
    "every-half-second": {"task": "it.stamp", "schedule": 0.5, "args": ("entry",)},
    "new-year": {"task": "it.stamp", "args": ("new-year",),
                 "schedule": crontab(minute=0, hour=0, day_of_month=1, month_of_year=1)},
    "every-minute": {"task": "it.stamp", "args": ("minutely",), "schedule": crontab()},
}
