"""A tasks module that a worker imports but its pool processes cannot (test_pool_startup.py):
as a module whose dependency is missing where the pool processes run would."""

from startfaults import in_pool_process

from minitask import task

if in_pool_process():
    import reportlab_missing_here  # noqa: F401


@task(name="broken.add")
def add(x, y):
    return x + y
