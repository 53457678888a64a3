"""A beat worker's settings module whose first entry is too big for a small broker limit."""

CELERY_BEAT_SCHEDULE = {
    "a-too-big": {"task": "it.stamp", "schedule": 0.5, "args": ("x" * 100000,)},
    "b-small": {"task": "it.stamp", "schedule": 0.5, "args": ("small",)},
}
