"""2. task()(fn): make a task of a function defined elsewhere, and keep the function.

Early Celery's guide also wraps an existing function without the decorator syntax:
``create_user_task = task()(create_user)``. The function stays a plain function; the task is
registered under the function's own name, ``"<module>.create_user"``, whatever variable holds
it. A task pickles as a reference to that name (never as code), so it pickles without the
old advice of setting ``__name__`` by hand, and setting it stays harmless.

Run it:  python examples/02_task_of_a_function.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import pickle

from minitask import registry, task


def create_user(username, password):
    """A function some other part of the program already calls directly."""
    return "created user %s" % username


create_user_task = task()(create_user)


def rename_user(old, new):
    return "renamed %s to %s" % (old, new)


rename_user_task = task()(rename_user)
rename_user_task.__name__ = "rename_user_task"      # the old advice: harmless


def main(cluster):
    print("create_user('ann', 'pw') = %r   (still a plain function)"
          % create_user("ann", "pw"))
    print("create_user_task.name = %r" % create_user_task.name)
    print("registered: %s" % (registry.tasks[create_user_task.name] is create_user_task))
    print("pickles by name: %s"
          % (pickle.loads(pickle.dumps(create_user_task)) is create_user_task))
    print("create_user_task.delay('bob', 'pw').get() = %r"
          % create_user_task.delay("bob", "pw").get(timeout=10))
    print("rename_user_task.name = %r" % rename_user_task.name)
    print("rename_user_task.delay('bob', 'rob').get() = %r"
          % rename_user_task.delay("bob", "rob").get(timeout=10))


if __name__ == "__main__":
    _run.example(__file__)
