"""`@task()`, `@shared_task` and `@periodic_task()`: thin wrappers that build Task classes.

``@task()``, bare ``@task`` and ``task(**options)(fn)`` all return the registered task object;
calling it calls the function. Options are the Task class attributes plus
the decorator's own: ``base`` (the Task class to build on), ``bind`` (the function takes the
task itself first, as ``self``), ``filter`` (a function applied to the task object, whose
result is returned), and Celery's ``shared`` and ``lazy``, which change nothing here.
`shared_task` is `task`: a process has one registry, so every task is shared.

An option neither Celery nor minitask knows is refused when the function is decorated; the
Celery options minitask lacks are refused by `minitask.options`, naming the minitask way.
"""

import functools

from .options import DECORATOR_OPTIONS, check_decorator_options
from .task import PeriodicTask, Task, TaskType

__all__ = ["task", "shared_task", "periodic_task"]


def task(*args, **options):
    """Make a task of a function. Use as ``@task``, ``@task()`` or ``@task(name=..., ...)``."""
    if len(args) == 1 and callable(args[0]) and not options:
        return _build(args[0], Task, {})
    if args:
        raise TypeError("task() takes options as keyword arguments only")
    return lambda fun: _build(fun, options.pop("base", Task), options)


shared_task = task


def periodic_task(*args, **options):
    """Make a periodic task of a function: ``@periodic_task(run_every=timedelta(minutes=5))``
    or ``run_every=crontab(minute=0, hour="*/3")``."""
    if args:
        raise TypeError("periodic_task() takes options as keyword arguments only")
    return lambda fun: _build(fun, options.pop("base", PeriodicTask), options)


def _build(fun, base, options):
    if not callable(fun):
        raise TypeError("@task needs a function, got %r" % (fun,))
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise TypeError("@task base=%r: expected a Task subclass" % (base,))
    name = options.get("name") or "%s.%s" % (fun.__module__, fun.__name__)
    check_decorator_options(name, options, base)
    attrs = {key: value for key, value in options.items()
             if key not in DECORATOR_OPTIONS or key == "bind"}
    # Bound, the function is the method itself (self is the task); else it takes no self.
    attrs["run"] = fun if options.get("bind") else staticmethod(fun)
    attrs["__module__"] = fun.__module__
    attrs["__doc__"] = fun.__doc__
    attrs["name"] = name
    cls = TaskType(fun.__name__, (base,), attrs)
    instance = cls._instance()
    functools.update_wrapper(instance, fun, updated=())
    keep = options.get("filter")
    return keep(instance) if keep is not None else instance
