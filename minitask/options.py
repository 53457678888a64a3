"""Which Celery task options and call options minitask implements, accepts or refuses.

A user coming from Celery writes Celery's options; none of them may be ignored silently.
Every name Celery documents for ``@task(...)``, a `Task` class attribute or ``apply_async(...)``
is in exactly one of three lists here:

- implemented: it does what it does in Celery (the `Task` class and `apply_async` hold them);
- accepted with no effect: it would not change delivery or results here (`*_ACCEPTED`, with
  the reason; some only for the value that is minitask's behaviour anyway);
- refused: a `ConfigurationError` where it is written, naming it and the minitask way
  (`*_REFUSED`).

A name neither Celery nor minitask knows is refused too (a typo must not pass). `None` means
"not given" for every call option, as in Celery, so wrappers that pass ``link=None`` work.

`PUBLISH_OPTIONS` is the one list of call options that say when and where a call goes; both
`apply_async` and `Task.retry` (which passes them through) use it. `WORKFLOW_OPTIONS` (`link`,
`link_error`) are implemented where a call can start a workflow: `apply_async`, `send_task`
and signatures (`minitask.canvas`); elsewhere (a periodic task's entry, `retry()`) they are
refused.
"""

from .exceptions import ConfigurationError

__all__ = ["PUBLISH_OPTIONS", "WORKFLOW_OPTIONS", "TASK_ACCEPTED", "TASK_REFUSED",
           "CALL_ACCEPTED", "CALL_REFUSED", "DECORATOR_OPTIONS", "check_task_attributes",
           "check_decorator_options", "check_call_options", "is_call_option"]

# The call options minitask acts on (besides args and kwargs): when, where, how encoded, and
# how its arguments are shown (Celery's argsrepr and kwargsrepr, which hide secrets).
PUBLISH_OPTIONS = ("countdown", "eta", "expires", "task_id", "queue", "exchange",
                   "routing_key", "priority", "serializer", "mandatory", "immediate",
                   "argsrepr", "kwargsrepr")

# Call options that start a workflow: callbacks on success and errbacks on failure.
WORKFLOW_OPTIONS = ("link", "link_error")
_WORKFLOW_ELSEWHERE = ("callbacks and errbacks are set on apply_async(), send_task() or a "
                       "signature, not on a periodic task's entry or a retry()")

_SET_BY_CANVAS = "set by the canvas itself; build the workflow with chain(), group(), chord()"
_NO_PARENTS = ("minitask does not record a task's parent or root (self.request.parent_id is "
               "None, root_id the task's own id)")

# Options of the decorator itself, not attributes of the task it builds.
DECORATOR_OPTIONS = ("base", "bind", "filter", "shared", "lazy")

_ALWAYS = None                  # any value is accepted

# name -> (values accepted, why it changes nothing here). A value outside the accepted ones
# is refused with the reason, since it asks for something minitask does not do.
TASK_ACCEPTED = {
    "track_started": (_ALWAYS, "always on: every task reports STARTED when a pool process "
                               "begins it"),
    "trail": (_ALWAYS, "minitask results keep no list of the tasks a task sent"),
    "send_events": (_ALWAYS, "minitask has no event stream; the broker's status page and "
                             "/metrics see every task anyway"),
    "store_errors_even_if_ignored": (_ALWAYS, "always on: failures are stored even for "
                                              "ignore_result tasks"),
    "resultrepr_maxsize": (_ALWAYS, "the worker's log shortens every result to 200 "
                                    "characters"),
    "shared": (_ALWAYS, "one registry per process: every task is shared"),
    "lazy": (_ALWAYS, "tasks are registered when they are defined"),
    "acks_on_failure_or_timeout": ((True,), "an acks_late task that fails or runs out of "
                                            "time is always acked (its FAILURE is stored)"),
    "acks_on_failure": ((True,), "an acks_late task that fails is always acked (its FAILURE "
                                 "is stored)"),
    "acks_on_timeout": ((True,), "an acks_late task killed by its time limit is always acked "
                                 "(its FAILURE is stored)"),
    "reject_on_worker_lost": ((True,), "an acks_late task whose pool process dies always "
                                       "goes back to its queue"),
    "delivery_mode": ((2, "persistent"), "task messages are always persistent"),
}

# name -> the minitask way, for task options Celery has and minitask lacks.
TASK_REFUSED = {
    "compression": "minitask does not compress messages; compress large arguments yourself",
    "backend": "results live in the broker; there is no result backend to choose",
    "store_eager_result": "eager results are not stored; keep the EagerResult apply() returns",
    "pydantic": "no pydantic integration; validate arguments inside the task",
    "pydantic_strict": "no pydantic integration; validate arguments inside the task",
    "pydantic_context": "no pydantic integration; validate arguments inside the task",
    "pydantic_dump_kwargs": "no pydantic integration; validate arguments inside the task",
    "Request": "the worker's request class is not pluggable; read self.request",
    "Strategy": "the worker's execution strategy is not pluggable",
    "shadow_name": "logs and results always show the task's registered name",
    "on_replace": "Task.replace() is not supported: a running task cannot change its own "
                  "place in a workflow",
    "autoregister": "every non-abstract task registers itself; use abstract = True to keep "
                    "a base class out",
}

# Call options (apply_async, send_task, a signature's options): accepted, no effect.
CALL_ACCEPTED = {
    "add_to_parent": (_ALWAYS, "minitask results keep no list of the tasks a task sent"),
    "retry": ((True,), "a lost connection is always tried again for up to 5 s "
                       "(minitask.transport.RECONNECT_SECONDS)"),
    "delivery_mode": ((2, "persistent"), "task messages are always persistent"),
}

# Call options Celery has and minitask lacks -> the minitask way.
CALL_REFUSED = {
    "chain": _SET_BY_CANVAS,
    "chord": _SET_BY_CANVAS,
    "group_id": _SET_BY_CANVAS,
    "group_index": _SET_BY_CANVAS,
    "parent_id": _NO_PARENTS,
    "root_id": _NO_PARENTS,
    "replaced_task_nesting": "Task.replace() is not supported",
    "stamped_headers": "minitask has no stamping; pass what a task needs as arguments",
    "shadow": "logs and results always show the task's registered name",
    "compression": "minitask does not compress messages; compress large arguments yourself",
    "connection": "each thread sends through its own connection; use group() to send many "
                  "calls in one batch",
    "producer": "each thread sends through its own connection; use group() to send many "
                "calls in one batch",
    "publisher": "each thread sends through its own connection; use group() to send many "
                 "calls in one batch",
    "retry_policy": "a lost connection is always tried again for up to 5 s "
                    "(minitask.transport.RECONNECT_SECONDS)",
    "headers": "task messages carry no custom headers; pass what the task needs as kwargs",
    "content_type": "use serializer=",
    "content_encoding": "use serializer=",
    "reply_to": "results go to the broker's result store; use AsyncResult",
    "correlation_id": "the task id is the message id; use task_id=",
    "declare": "declare exchanges and queues in the QUEUES setting",
    "exchange_type": "declare the exchange and its type in the QUEUES setting",
    "expiration": "use expires= (the task is REVOKED if it has not started by then)",
    "timeout": "a publish waits for the broker's confirm up to the connection's timeout (10 s)",
    "confirm_timeout": "a publish waits for the broker's confirm up to the connection's "
                       "timeout (10 s)",
    "task_type": "send_task() needs only the task's name",
    "result_cls": "results are always minitask.AsyncResult",
    "router": "routes come from the TASK_ROUTES setting (Celery's task_routes)",
    "route_name": "routes come from the TASK_ROUTES setting (Celery's task_routes)",
    "ignore_result": "set ignore_result on the task; a single call cannot change it",
    "time_limit": "set time_limit on the task (or the TASK_TIME_LIMIT setting); a single call "
                  "cannot change it",
    "soft_time_limit": "set soft_time_limit on the task (or TASK_SOFT_TIME_LIMIT); a single "
                       "call cannot change it",
}

# Call options that match the task's own value are harmless: a call that says again what the
# task says (ignore_result=True on an ignore_result task) is accepted.
_SAME_AS_TASK = ("ignore_result", "time_limit", "soft_time_limit")


def _refusal(where, name, reason):
    return ConfigurationError("%s: %s is not supported: %s" % (where, name, reason))


def check_task_attributes(task_name, attributes):
    """Refuse, at definition, a Celery task attribute minitask lacks (or a value of an
    accepted one that asks for what minitask does not do). Other names are the class's own."""
    for name in sorted(attributes):
        if name in TASK_REFUSED:
            raise _refusal("task %s" % task_name, name, TASK_REFUSED[name])
        if name in TASK_ACCEPTED:
            _check_accepted("task %s: " % task_name, name, attributes[name], TASK_ACCEPTED)


def check_decorator_options(task_name, options, base):
    """Refuse an ``@task(...)`` option that neither Celery nor minitask knows; a name the base
    class defines (a custom base's own attribute) is an option too."""
    for name in sorted(options):
        if (name not in DECORATOR_OPTIONS and name not in TASK_ACCEPTED
                and name not in TASK_REFUSED and not hasattr(base, name)):
            raise ConfigurationError("task %s: unknown option %s (the task options are listed "
                                     "in the README's \"Task options\")" % (task_name, name))


def is_call_option(name):
    """Whether `name` is a call option: one minitask acts on, or one of Celery's it accepts
    with no effect or refuses (`check_call_options` says which)."""
    return (name in PUBLISH_OPTIONS or name in CALL_ACCEPTED or name in CALL_REFUSED
            or name in _SAME_AS_TASK or name in WORKFLOW_OPTIONS)


def check_call_options(task, options, known=PUBLISH_OPTIONS):
    """Refuse call options minitask does not act on; return the ones it does (None dropped).

    `task` is the task object, or None for `send_task` (a task not known here); `known` are the
    names the caller handles itself.
    """
    kept = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in known:
            kept[name] = value
        elif name in _SAME_AS_TASK and value == _task_value(task, name):
            continue
        elif name in CALL_ACCEPTED:
            _check_accepted("", name, value, CALL_ACCEPTED)
        elif name in CALL_REFUSED:
            raise _refusal(_call_name(task), name, CALL_REFUSED[name])
        elif name in WORKFLOW_OPTIONS:
            raise ConfigurationError("%s: %s is not supported here: %s"
                                     % (_call_name(task), name, _WORKFLOW_ELSEWHERE))
        else:
            raise ConfigurationError("%s: unknown option %s (the call options are %s)"
                                     % (_call_name(task), name, ", ".join(PUBLISH_OPTIONS)))
    return kept


def _task_value(task, name):
    if task is None:
        return False if name == "ignore_result" else None
    if name in ("time_limit", "soft_time_limit"):
        return task.effective(name)
    return getattr(task, name, None)


def _call_name(task):
    return "apply_async() of %s" % task.name if task is not None else "send_task()"


def _check_accepted(prefix, name, value, table):
    values, reason = table[name]
    if values is not _ALWAYS and value not in values:
        raise ConfigurationError("%s%s=%r is not supported: %s" % (prefix, name, value, reason))
