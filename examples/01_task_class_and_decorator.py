"""1. A task is a class with a run() method; @task() makes one of a function.

The guide's first two examples. A subclass of `Task` registers itself when the class is
created, under ``"<module>.<ClassName>"``; `@task()` builds such a class around a function and
returns the registered task object, which you can still call like the function. Calling
methods (`delay`, `apply_async`) work on the class itself, as in early Celery:
``CreateUserTask.delay("george", "secret")``.

Run it:  python examples/01_task_class_and_decorator.py
(it starts its own broker and worker, and stops them; see examples/_run.py)
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

from minitask import Task, task


def create_user(username, password):
    """Stands in for the guide's ``User.objects.create(username=..., password=...)``."""
    return "created user %s" % username


class CreateUserTask(Task):
    def run(self, username, password):
        return create_user(username, password)


@task()
def add(x, y):
    return x + y


@task                          # bare @task works too
def multiply(x, y):
    return x * y


@task(serializer="json")       # options go in as keyword arguments
def greet(name):
    return "hello, %s" % name


def main(cluster):
    print("CreateUserTask.name = %r" % CreateUserTask.name)
    result = CreateUserTask.delay("george", "secret")
    print("CreateUserTask.delay('george', 'secret').get() = %r" % result.get(timeout=10))
    print("add.name = %r" % add.name)
    print("add(2, 2) = %r   (called here, like the function)" % add(2, 2))
    print("add.delay(2, 2).get() = %r   (run by the worker)" % add.delay(2, 2).get(timeout=10))
    print("multiply.delay(3, 4).get() = %r" % multiply.delay(3, 4).get(timeout=10))
    print("greet.serializer = %r; greet.delay('world').get() = %r"
          % (greet.serializer, greet.delay("world").get(timeout=10)))


if __name__ == "__main__":
    _run.example(__file__)
