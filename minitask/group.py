"""Signatures and groups: several calls sent together and waited on as one `ResultSet`.

``group(add.s(2, 2), add.s(4, 4)).apply_async()`` publishes every call in one pipelined
batch (one round of confirms instead of one per call) and returns a `ResultSet` whose
`join()` gives the values in order.
"""

from .result import ResultSet

__all__ = ["Signature", "group", "subtask"]


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
        messages = [sig.task.build_message(sig.args, sig.kwargs,
                                           **dict(sig.options, **options)) for sig in self]
        from .client import with_connection
        encoded = [message.encode() for message in messages]
        with_connection(lambda conn: conn.publish_many(encoded))
        return ResultSet(AsyncResult(message.id, task_name=message.task) for message in messages)

    def apply(self):
        return ResultSet(sig.apply() for sig in self)

    def __repr__(self):
        return "group(%s)" % ", ".join(repr(sig) for sig in self)
