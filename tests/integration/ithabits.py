"""Tasks written the way Celery 5 users write them (imported by the habits tests and their
workers with ``-I ittasks,ithabits``)."""

import os
import time

from minitask import shared_task
from minitask.exceptions import Ignore
from ittasks import _trace, add, read_trace


@shared_task(bind=True, name="it.bound")
def bound(self, x):
    request = self.request
    return {"self": self.name, "x": x, "id": request.id, "task": request.task,
            "retries": request.retries, "hostname": request.hostname,
            "is_eager": request.is_eager, "called_directly": request.called_directly,
            "delivery_info": request.delivery_info}


@shared_task(autoretry_for=(KeyError,), retry_backoff=True, retry_jitter=False,
             max_retries=2, name="it.backoff")
def backoff(tag, failures):
    runs = read_trace(os.environ.get("ITTASKS_DIR", "/tmp"), tag)
    _trace(tag, "%.6f" % time.time())
    if len(runs) < failures:
        raise KeyError("not yet (%d)" % len(runs))
    return "ok after %d" % len(runs)


@shared_task(queue="hipri", name="it.hipri")
def hipri(x):
    return "hipri:%s" % x


@shared_task(bind=True, name="it.stamp")
def stamp(self, tag):
    _trace(tag, "%.6f" % time.time())
    _trace(tag + "-ids", self.request.id)       # which send ran (the beat tests' `beatlog`)
    return tag


@shared_task(name="it.waits")
def waits(x, allowed=False):
    """Waits inside a task for another task's result: Celery refuses unless told."""
    sub = add.delay(x, x)
    if allowed:
        return sub.get(timeout=10, disable_sync_subtasks=False)
    return sub.get(timeout=10)


@shared_task(bind=True, name="it.retry_to")
def retry_to(self, queue, countdown=0.1):
    """Retried once with Celery's `queue=` (None: where it came from); says how it came."""
    _trace("retry_to-%s" % self.request.id, "%.6f" % time.time())
    if self.request.retries == 0:
        raise self.retry(countdown=countdown, queue=queue)
    return {"retries": self.request.retries,
            "routing_key": self.request.delivery_info["routing_key"],
            "expires": self.request.expires}


@shared_task(bind=True, name="it.ignores")
def ignores(self, tag):
    """Records a state of its own, then asks that nothing more be recorded (Celery's Ignore)."""
    self.update_state(state="HANDLED", meta={"tag": tag})
    raise Ignore()
