"""A task as the worker's main process holds it, for the signals sent there (task_received,
task_revoked): Celery's worker-side Request, by its attribute names. (Inside a running task,
``self.request`` is `minitask.task.Request`, where ``task`` is the name, as in Celery.)"""

from ..message import TaskMessage, from_epoch

__all__ = ["WorkerRequest"]


class WorkerRequest:
    """`id`/`task_id`, `name`/`task_name`, `task` (the task object, None when not registered
    here), `args`, `kwargs`, `retries`, `eta` and `expires` (aware UTC datetimes or None),
    `hostname` (the worker's), `delivery_info` (exchange, routing_key, priority, redelivered).
    A body this worker cannot read (a serializer it does not accept) gives no arguments."""

    def __init__(self, job, task, hostname, accept):
        self.id = self.task_id = job.task_id
        self.name = self.task_name = job.task_name
        self.task = task
        self.hostname = hostname
        self.args, self.kwargs, self.retries = (), {}, 0
        self.eta = self.expires = None
        self.delivery_info = {"redelivered": job.redelivered}
        try:
            message = TaskMessage.from_bytes(job.data, accept)
        except (Exception, SystemExit):     # the pool process refuses it, saying why; a
            return                          # pickle's sys.exit() must not end this one
        self.args, self.kwargs, self.retries = message.args, message.kwargs, message.retries
        self.eta, self.expires = from_epoch(message.eta), from_epoch(message.expires)
        self.delivery_info.update(exchange=message.exchange, routing_key=message.routing_key,
                                  priority=message.priority)

    def __repr__(self):
        return "<WorkerRequest %s[%s]>" % (self.name, self.id)
