"""6. Task options: every one, as class attributes or as keyword arguments of @task().

The guide's table of options, each set on one task type (through an abstract base class, which
is not registered itself but shares its options with its subclasses), next to the defaults a
plain task has. The per-call options of `apply_async` (routing_key, exchange, priority,
countdown, ...) override them for one call.

``exchange="media"`` and ``routing_key="image.resize"`` need a queue bound to that exchange;
the QUEUES setting declares one (see 07_routing.py), for this process and for the worker.

Run it:  python examples/06_task_options.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

from minitask import Task, registry, task

QUEUES = {"images": {"exchange": "media", "exchange_type": "topic", "binding_key": "image.#"}}

OPTIONS = ("name", "abstract", "max_retries", "default_retry_delay", "rate_limit",
           "ignore_result", "disable_error_emails", "serializer", "routing_key", "exchange",
           "mandatory", "immediate", "priority", "acks_late", "time_limit", "soft_time_limit")


class MediaTask(Task):
    abstract = True                  # not registered; its subclasses are
    exchange = "media"
    mandatory = True                 # refuse to send a message no queue would take
    acks_late = True                 # run again if the worker dies while it runs


class ResizeImageTask(MediaTask):
    name = "images.resize"
    max_retries = 5
    default_retry_delay = 10
    rate_limit = "10/s"
    ignore_result = False
    disable_error_emails = True
    serializer = "json"
    routing_key = "image.resize"
    immediate = False
    priority = 2
    time_limit = 30
    soft_time_limit = 20

    def run(self, path, width, **kwargs):
        return "%s resized to %dpx (routing key %s, priority %s)" % (
            path, width, self.request.routing_key, self.request.priority)


@task(name="images.thumbnail", exchange="media", routing_key="image.thumbnail",
      rate_limit="100/m", priority=1, time_limit=10)
def thumbnail(path):
    return "thumbnail of %s" % path


@task()
def plain():
    return "defaults"


def main(cluster):
    print("%-22s %-16s %s" % ("option", "plain task", "ResizeImageTask"))
    for option in OPTIONS:
        default = "(generated)" if option == "name" else repr(getattr(plain, option))
        print("%-22s %-16s %r" % (option, default, getattr(ResizeImageTask, option)))
    print("(None: the setting decides: DEFAULT_RATE_LIMIT (off), TASK_SERIALIZER ('json'),")
    print(" DEFAULT_ROUTING_KEY and DEFAULT_EXCHANGE ('minitask'), TASK_ACKS_LATE (False),")
    print(" TASK_TIME_LIMIT and TASK_SOFT_TIME_LIMIT (none); priority None is 4)")
    print("MediaTask is registered: %s; ResizeImageTask is: %s"
          % (MediaTask.name in registry.tasks, "images.resize" in registry.tasks))
    print("thumbnail: name %r, rate_limit %r, priority %r, time_limit %r"
          % (thumbnail.name, thumbnail.rate_limit, thumbnail.priority, thumbnail.time_limit))
    print(ResizeImageTask.delay("cat.png", 200).get(timeout=10))
    print(ResizeImageTask.apply_async(("dog.png", 100), routing_key="image.small",
                                      priority=0).get(timeout=10))
    print(thumbnail.delay("cat.png").get(timeout=10))


if __name__ == "__main__":
    _run.example(__file__, settings={"QUEUES": QUEUES})
