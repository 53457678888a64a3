"""A worker's settings module written with Celery 5's names (MINITASK_CONFIG_MODULE)."""

task_time_limit = 1.5                         # every task that sets no time_limit of its own
worker_prefetch_multiplier = 1
result_backend = "redis://localhost:6379/0"   # no counterpart: one warning at start
task_track_started = True                     # what minitask does anyway: silent
