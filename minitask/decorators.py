"""`@task()` and `@periodic_task()`: thin wrappers that build Task classes around functions.

``@task()``, bare ``@task`` and ``task(**options)(fn)`` all return the registered task object;
calling it calls the function. Options are the Task class attributes (SPEC section 2).
"""

import functools

from .task import PeriodicTask, Task, TaskType

__all__ = ["task", "periodic_task"]


def task(*args, **options):
    """Make a task of a function. Use as ``@task``, ``@task()`` or ``@task(name=..., ...)``."""
    if len(args) == 1 and callable(args[0]) and not options:
        return _build(args[0], Task, {})
    if args:
        raise TypeError("task() takes options as keyword arguments only")
    return lambda fun: _build(fun, options.pop("base", Task), options)


def periodic_task(*args, **options):
    """Make a periodic task of a function: ``@periodic_task(run_every=timedelta(minutes=5))``."""
    if args:
        raise TypeError("periodic_task() takes options as keyword arguments only")
    return lambda fun: _build(fun, options.pop("base", PeriodicTask), options)


def _build(fun, base, options):
    if not callable(fun):
        raise TypeError("@task needs a function, got %r" % (fun,))
    attrs = dict(options)
    attrs["run"] = staticmethod(fun)
    attrs["__module__"] = fun.__module__
    attrs["__doc__"] = fun.__doc__
    if not attrs.get("name"):
        attrs["name"] = "%s.%s" % (fun.__module__, fun.__name__)
    cls = TaskType(fun.__name__, (base,), attrs)
    instance = cls._instance()
    functools.update_wrapper(instance, fun, updated=())
    return instance
