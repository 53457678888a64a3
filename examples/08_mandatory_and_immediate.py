"""8. mandatory and immediate: ask the broker to refuse what it cannot route or deliver.

By default a message that matches no queue is dropped quietly (as AMQP does), and a message
waits in its queue until some worker takes it. Two options change that, per task or per call:

- ``mandatory=True``: a message no queue would take raises `UnroutableError` in the sender.
- ``immediate=True``: a message that no consumer can take right now raises
  `NotDeliverableError` in the sender, instead of waiting for a worker.

Both come back from the broker's confirmation of the publish, so `apply_async` raises them.
This example starts its worker halfway, to show `immediate` before and after.

Run it:  python examples/08_mandatory_and_immediate.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

from minitask import task
from minitask.exceptions import NotDeliverableError, UnroutableError


@task()
def add(x, y):
    return x + y


@task(mandatory=True, routing_key="reports")        # no queue is bound with "reports"
def monthly_report():
    return "report"


def main(cluster):
    dropped = add.apply_async((2, 2), routing_key="nowhere")
    print("without mandatory, routing key 'nowhere': sent, dropped, state %s" % dropped.state)
    try:
        add.apply_async((2, 2), routing_key="nowhere", mandatory=True)
    except UnroutableError as exc:
        print("with mandatory=True: UnroutableError")
        print("  %s" % exc)
    try:
        monthly_report.delay()
    except UnroutableError:
        print("monthly_report (mandatory=True as a task option): UnroutableError")

    try:
        add.apply_async((2, 2), immediate=True)
    except NotDeliverableError as exc:
        print("no worker yet, immediate=True: NotDeliverableError")
        print("  %s" % exc)
    queued = add.delay(1, 1)
    print("no worker yet, without immediate: it waits in the queue (%d message)"
          % cluster.waiting("minitask")["minitask"])
    cluster.start_worker()
    print("the worker starts and runs it: add(1, 1) = %r" % queued.get(timeout=10))
    result = add.apply_async((2, 2), immediate=True)
    print("with a worker running, immediate=True: add(2, 2) = %r" % result.get(timeout=10))


if __name__ == "__main__":
    _run.example(__file__, worker=False)
