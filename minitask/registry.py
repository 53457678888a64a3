"""The task registry: task name -> task object. Messages carry names; this turns them into code.

`tasks` is the one registry of the process. `Task` subclasses add themselves when their
class is created (see `minitask.task.TaskType`); `@task()` does the same for functions. A
name that is not here is refused with `NotRegistered`, and nothing is ever imported because
a message names it.
"""

from .exceptions import NotRegistered

__all__ = ["TaskRegistry", "tasks", "register", "unregister"]


class TaskRegistry(dict):
    """A dict of name -> task object that raises `NotRegistered` for unknown names."""

    def __missing__(self, name):
        raise NotRegistered("task %r is not registered (is its module in IMPORTS or -I?)"
                            % (name,))

    def register(self, task):
        """Register a task object, or a Task class (its shared instance is registered)."""
        if isinstance(task, type):
            task = task._instance()
        self[task.name] = task
        return task

    def unregister(self, name):
        """Remove a task by name, object or class; NotRegistered if it is not there."""
        if not isinstance(name, str):
            name = name.name
        try:
            del self[name]
        except KeyError:
            raise NotRegistered("task %r is not registered" % (name,)) from None

    def filter_types(self, type):
        """The tasks of one type ("regular" or "periodic"), by name (early Celery's name)."""
        return {name: task for name, task in self.items() if task.type == type}

    def regular(self):
        return self.filter_types("regular")

    def periodic(self):
        return self.filter_types("periodic")

    get_all = dict.copy             # early Celery's name


tasks = TaskRegistry()
register = tasks.register
unregister = tasks.unregister
