"""14. The Django loader: a worker imports the tasks module of every installed app.

When DJANGO_SETTINGS_MODULE is set, minitask picks `minitask.loaders.DjangoLoader`. Besides
the IMPORTS setting, it imports ``<app>.tasks`` for each app in that settings module's
INSTALLED_APPS that has one. When Django is installed the worker first calls
``django.setup()`` (so a tasks module may import its models); without Django, it reads
INSTALLED_APPS from the module and imports no app that has no tasks. The settings module is
also where the worker reads minitask's settings from.

The "project" is ``examples/djangoish/``: a settings module and the apps ``blog`` and
``shop`` (with tasks) and ``pages`` (without), which need no database. It runs with or
without Django installed. The worker gets ``DJANGO_SETTINGS_MODULE=djangoish.settings`` and
no ``-I``. This process imports the apps' tasks modules to send to them, as a Django view
would.

Run it:  python examples/14_django_loader.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

from minitask.transport import connection

from djangoish.blog.tasks import spam_filter
from djangoish.shop.tasks import charge_order


def registered_on_workers(cluster):
    """{worker: its task names}: what ``python -m minitask inspect registered`` shows.

    A worker hears such questions once it has bound its control queue: a moment after it
    connects, and before it takes any task. So ask after it has run one."""
    return connection().broadcast("registered", timeout=10, limit=1)


def main(cluster):
    cluster.start_worker(["-c", "1"], modules="",
                         env={"DJANGO_SETTINGS_MODULE": "djangoish.settings"})
    print("spam_filter.delay(1, 'Nice post!').get() = %r"
          % spam_filter.delay(1, "Nice post!").get(timeout=10))
    print("spam_filter.delay(2, 'Win the LOTTERY').get() = %r"
          % spam_filter.delay(2, "Win the LOTTERY").get(timeout=10))
    print("charge_order.delay(17, 9.5).get() = %r"
          % charge_order.delay(17, 9.5).get(timeout=10))
    print("the worker registered, besides minitask's own tasks:")
    for name in registered_on_workers(cluster)["worker"]:
        if not name.startswith("minitask."):
            print("  " + name)


if __name__ == "__main__":
    _run.example(__file__, worker=False)
