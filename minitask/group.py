"""Signatures and groups: several calls sent together and waited on as one `ResultSet`.

``group(add.s(2, 2), add.s(4, 4)).apply_async()`` publishes every call in one pipelined
batch (one round of confirms instead of one per call) and returns a `ResultSet` whose
`join()` gives the values in order.
"""

from .options import workflows_refused
from .result import ResultSet

__all__ = ["Signature", "group", "subtask", "chain", "chord"]


class Signature:
    """A task and the arguments of one call, not sent yet."""

    def __init__(self, task, args=(), kwargs=None, options=None):
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})

    def apply_async(self, **options):
        return self.task.apply_async(self.args, self.kwargs, **dict(self.options, **options))

    def delay(self, *args, **kwargs):
        return self.task.apply_async(self.args + args, dict(self.kwargs, **kwargs),
                                     **self.options)

    def apply(self, **options):
        return self.task.apply(self.args, self.kwargs, **options)

    def set(self, **options):
        self.options.update(options)
        return self

    # Workflows come later; until then each of their entry points says so where it is used.
    def __or__(self, other):
        raise workflows_refused("sig | sig (a chain)")

    __ror__ = __or__

    def link(self, callback):
        raise workflows_refused("link()")

    def link_error(self, errback):
        raise workflows_refused("link_error()")

    on_error = link_error

    def __repr__(self):
        arguments = [repr(arg) for arg in self.args]
        arguments += ["%s=%r" % item for item in sorted(self.kwargs.items())]
        return "%s(%s)" % (self.task.name, ", ".join(arguments))


subtask = Signature


class group:
    """Calls sent together: ``group(sig, sig, ...)`` or ``group([sig, sig, ...])``."""

    def __init__(self, *signatures):
        if len(signatures) == 1 and not isinstance(signatures[0], Signature):
            signatures = tuple(signatures[0])
        self.signatures = list(signatures)

    def __iter__(self):
        return iter(self.signatures)

    def __len__(self):
        return len(self.signatures)

    def apply_async(self, **options):
        from .config import get_settings
        from .result import AsyncResult
        settings = get_settings()
        if settings.ALWAYS_EAGER:
            return self.apply()
        from .client import with_connection
        from .options import check_call_options
        from .sending import compose_message
        messages, declare = [], set()
        for sig in self:
            call = dict(sig.options, **options)
            retries = call.pop("retries", 0) or 0
            message, queue = compose_message(sig.task.name, sig.args, sig.kwargs, sig.task,
                                             settings, retries=retries,
                                             **check_call_options(sig.task, call))
            messages.append(message)
            if queue is not None:
                declare.add(queue)
        encoded = [message.encode() for message in messages]

        def send(conn):
            for queue in sorted(declare):
                conn.ensure_queue(queue)
            conn.publish_many(encoded)
        with_connection(send)
        return ResultSet(AsyncResult(message.id, task_name=message.task) for message in messages)

    def __or__(self, other):
        raise workflows_refused("group | sig (a chord)")

    __ror__ = __or__

    def apply(self):
        return ResultSet(sig.apply() for sig in self)

    def __repr__(self):
        return "group(%s)" % ", ".join(repr(sig) for sig in self)


def chain(*tasks, **options):
    """Celery's chain: refused until workflows exist."""
    raise workflows_refused("chain()")


def chord(header, body=None, **options):
    """Celery's chord: refused until workflows exist."""
    raise workflows_refused("chord()")
