"""Running one task: default kwargs, the request context, retry, the outcome and its result.

Used in two places, so the rules live once: a pool child runs every delivered task through
`execute_delivery`, and `Task.apply()` runs a task eagerly through `run_eagerly` (retries
inline). Neither talks to the broker except through `Task.retry()`: in a worker the retry
it sends is held (`sending.held_for_result`) and published with the RETRY result, in one
atomic step: the retry cannot run before that RETRY is stored, and if the step never
happens (the worker or its connection lost first) neither does the retry; the task then
runs again (acks_late) or ends in WorkerLostError, as any task lost with its worker.

Outcomes: SUCCESS with the return value; RETRY with the tombstone (the ``exc`` given to
``retry()``, else the RetryTaskError itself); FAILURE with the exception and its traceback;
REVOKED when the task expired before it could start.
"""

import collections
import logging
import time
import traceback

from .. import protocol, retry as retry_policy, signals
from ..exceptions import (
    ChordError, ConfigurationError, ContentDisallowed, Ignore, NotRegistered, ProtocolError,
    Reject, RetryTaskError, SerializationError, TaskRevokedError,
)
from ..message import ResultMeta, TaskMessage, encode_result_meta
from ..states import IGNORED, REJECTED
from ..result import AsyncResult
from ..task import Request, Task, default_kwargs_for, pop_request, push_request, registry
from ..loaders import current_loader
from ..sending import chord_values, failure_unlocks, success_unlocks

__all__ = ["Outcome", "run_task", "run_eagerly", "execute_delivery", "unlocked_by_failure",
           "REJECTED", "REQUEUED"]

# A run that raised Ignore or Reject records nothing. Reject's message is rejected by the
# worker: back to its queue (REQUEUED, a state of the report to the worker only) or
# dead-lettered or dropped (REJECTED).
REQUEUED = "REQUEUED"
_NOTHING_RECORDED = (IGNORED, REJECTED)

logger = logging.getLogger(__name__)


class Outcome:
    """How one run of a task ended."""

    __slots__ = ("state", "result", "traceback", "runtime", "retry", "request")

    def __init__(self, state, result=None, traceback=None, runtime=0.0, retry=None):
        self.state = state
        self.result = result
        self.traceback = traceback
        self.runtime = runtime
        self.retry = retry
        self.request = None             # the run's Request (run_task sets it)

    def __repr__(self):
        return "<Outcome %s %r>" % (self.state, self.result)


def run_task(task, message, logfile=None, loglevel=None, is_eager=False, signal_outcome=True,
             hold=False):
    """Run `task` for `message` in this process and say how it ended. Never raises for the
    task's own exceptions (or its hooks'); they are the outcome. The outcome's signals
    (task_success, task_failure, task_retry, task_postrun) go before it returns, unless not
    `signal_outcome`: then the caller sends them (`signal_outcome_of`) once the outcome is
    final, as a worker's is only once its result is encoded. With `hold`, what `retry()`
    sends is kept, encoded, in the request's `held`, for the caller to publish with the
    result."""
    defaults = {"logfile": logfile, "loglevel": loglevel, "task_id": message.id,
                "task_name": task.name, "task_retries": message.retries}
    injected = default_kwargs_for(task.run, defaults)
    kwargs = dict(injected)
    kwargs.update(message.kwargs)                   # the caller's own values win
    request = Request(
        message.id, task.name, message.args, kwargs, message.retries, is_eager, logfile,
        loglevel, message.exchange, message.routing_key, message.priority, injected,
        message.eta, message.expires, task_object=task)
    request.serializer = message.serializer
    request.redelivered = message.redelivered
    request.argsrepr, request.kwargsrepr = message.argsrepr, message.kwargsrepr
    if hold:
        request.held = []
    if message.chain or message.callbacks or message.headers:
        request.workflow = message      # a retry sends the same workflow fields on
    push_request(request)
    hooks = _hooks_of(task)
    if signals.task_prerun.receivers:
        signals.task_prerun.send(task, task_id=message.id, task=task, args=message.args,
                                 kwargs=message.kwargs)
    started = time.perf_counter()
    try:
        try:
            if "before_start" in hooks:
                task.before_start(message.id, message.args, message.kwargs)
            value = task(*message.args, **kwargs)
            outcome = Outcome("SUCCESS", value, None, time.perf_counter() - started)
        except RetryTaskError as exc:
            outcome = _retried(exc, started)
        except Ignore:
            outcome = Outcome(IGNORED, None, None, time.perf_counter() - started)
        except Reject as exc:
            outcome = Outcome(REJECTED, exc, None, time.perf_counter() - started)
        except (Exception, SystemExit) as exc:     # the task's failure is its result
            outcome = _failed(task, exc, started)
        if hooks:
            _call_hooks(task, message, outcome)
        outcome.request = request
        if signal_outcome:
            _send_outcome(task, message, outcome)
        return outcome
    finally:
        pop_request()


def signal_outcome_of(task, message, outcome):
    """Send the outcome's signals for a `run_task(signal_outcome=False)`, with the run's
    request current again (receivers read ``sender.request`` as in Celery)."""
    if not (signals.task_success.receivers or signals.task_failure.receivers
            or signals.task_retry.receivers or signals.task_postrun.receivers):
        return
    push_request(outcome.request)
    try:
        _send_outcome(task, message, outcome)
    finally:
        pop_request()


def _send_outcome(task, message, outcome):
    """task_success, task_failure or task_retry as the outcome says, then task_postrun (as
    Celery's, after the task's own hooks). Their `kwargs` are the caller's, without the
    default keyword arguments the task was given; a retry's `reason` and `retval` are the
    RetryTaskError (Celery's Retry: its `exc`, `when`, and "Retry in 5s: ..." as text)."""
    state = outcome.state
    retval = outcome.retry if state == "RETRY" else outcome.result
    if state == "SUCCESS":
        if signals.task_success.receivers:
            signals.task_success.send(task, result=outcome.result, runtime=outcome.runtime)
    elif state == "RETRY":
        if signals.task_retry.receivers:
            signals.task_retry.send(task, request=outcome.request, reason=outcome.retry,
                                    einfo=ExceptionInfo(outcome.retry, outcome.traceback))
    elif state == "FAILURE":
        if signals.task_failure.receivers:
            exc = outcome.result
            signals.task_failure.send(
                task, task_id=message.id, exception=exc, args=message.args,
                kwargs=message.kwargs, traceback=getattr(exc, "__traceback__", None),
                einfo=ExceptionInfo(exc, outcome.traceback))
    if signals.task_postrun.receivers:
        signals.task_postrun.send(task, task_id=message.id, task=task, args=message.args,
                                  kwargs=message.kwargs, retval=retval, state=state)


_HOOKS = ("before_start", "on_success", "on_retry", "on_failure", "after_return")
_hooked = {}                            # Task subclass -> the hooks it overrides


def _hooks_of(task):
    """The hooks `task`'s class overrides (most override none: then none is called)."""
    cls = type(task)
    hooks = _hooked.get(cls)
    if hooks is None:
        hooks = _hooked[cls] = frozenset(
            name for name in _HOOKS if getattr(cls, name) is not getattr(Task, name))
    return hooks


def _retried(exc, started):
    tombstone = exc.exc if exc.exc is not None else exc
    return Outcome("RETRY", tombstone, _traceback_of(exc), time.perf_counter() - started,
                   retry=exc)


def _failed(task, exc, started):
    """FAILURE, unless `exc` is one of the task's `autoretry_for`: then the retry it asks for
    (or the FAILURE retry() raises when no retry is left)."""
    if task.autoretry_for and isinstance(exc, task.autoretry_for) \
            and not isinstance(exc, task.dont_autoretry_for):
        try:
            _autoretry(task, exc)
        except RetryTaskError as retry:
            return _retried(retry, started)
        except (Exception, SystemExit) as final:
            return Outcome("FAILURE", final, traceback.format_exc(),
                           time.perf_counter() - started)
    return Outcome("FAILURE", exc, traceback.format_exc(), time.perf_counter() - started)


def _autoretry(task, exc):
    """What Celery's autoretry_for does: ``retry(exc=exc, **retry_kwargs)``, the countdown an
    exponential backoff when `retry_backoff` asks for one. Always raises."""
    options = dict(task.retry_kwargs or {})
    if task.retry_backoff:
        options["countdown"] = retry_policy.backoff_countdown(
            task.retry_backoff, task.request.retries, task.retry_backoff_max,
            task.retry_jitter)
    task.retry(exc=exc, **options)
    raise exc                           # retry() always raises; this is never reached


class ExceptionInfo:
    """What a failure hook gets as `einfo` (Celery's name): the exception and its text."""

    __slots__ = ("exception", "type", "traceback", "tb")

    def __init__(self, exception, traceback_text):
        self.exception = exception
        self.type = type(exception)
        self.traceback = traceback_text or ""
        self.tb = getattr(exception, "__traceback__", None)     # the traceback object

    def __str__(self):
        return self.traceback


def _call_hooks(task, message, outcome):
    """The task's on_success / on_retry / on_failure, then after_return. A hook's own error is
    logged and changes nothing: the outcome is decided already. A run that raised Ignore
    calls none (as Celery's)."""
    if outcome.state in _NOTHING_RECORDED:
        return
    task_id, args, kwargs = message.id, message.args, message.kwargs
    einfo = None if outcome.state == "SUCCESS" else ExceptionInfo(outcome.result,
                                                                  outcome.traceback)
    if outcome.state == "SUCCESS":
        calls = [("on_success", (outcome.result, task_id, args, kwargs))]
    elif outcome.state == "RETRY":
        calls = [("on_retry", (outcome.result, task_id, args, kwargs, einfo))]
    else:
        calls = [("on_failure", (outcome.result, task_id, args, kwargs, einfo))]
    # after_return's value of a retry is the Retry (RetryTaskError), as Celery's; on_retry
    # has the exception given to retry().
    retval = outcome.retry if outcome.state == "RETRY" else outcome.result
    calls.append(("after_return", (outcome.state, retval, task_id, args, kwargs, einfo)))
    for hook, arguments in calls:
        try:
            getattr(task, hook)(*arguments)
        except Exception:               # the user's hook; the task's outcome stands
            logger.exception("Task %s[%s] %s() raised", task.name, task_id, hook)


def _traceback_of(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def run_eagerly(task, args=None, kwargs=None, task_id=None, retries=0,
                honour_countdown=False, logfile=None, loglevel=None):
    """Run a task here with its retries inline; returns ``(final outcome, last message)``."""
    message = TaskMessage(task.name, args or (), kwargs or {}, id=task_id, retries=retries)
    while True:
        outcome = run_task(task, message, logfile, loglevel, is_eager=True)
        if outcome.state != "RETRY":
            return outcome, message
        retry = outcome.retry
        if honour_countdown and retry.countdown:
            time.sleep(retry.countdown)
        message = TaskMessage(task.name, retry.retry_args, retry.retry_kwargs,
                              id=getattr(retry, "retry_task_id", None) or message.id,
                              retries=getattr(retry, "retry_retries", message.retries + 1))


# What a pool child reports for one delivery, sent back to the worker's main process:
# the result to store (`store` False for ignore_result: nothing but the state is kept),
# `summary`, one line for the log and `inspect`, and what the outcome unlocks in a workflow:
# `publish`, encoded messages to publish with the result in one atomic step (the next link of
# a chain and the callbacks on SUCCESS, the errbacks on FAILURE or REVOKED), and `chained`,
# the ids of the rest of a chain that stopped here, stored with the same outcome.
Executed = collections.namedtuple(
    "Executed", "state content_type payload store runtime task_id task_name summary publish "
    "chained", defaults=((), ()))


def execute_delivery(data, accept=None, logfile=None, loglevel=None, now=None,
                     on_failure=None, redelivered=False):
    """Decode, check and run one delivered task message; build its RESULT_SET frame.
    (`redelivered`: the broker delivered it before; the task reads it in its
    ``request.delivery_info``.)

    Every problem of the message itself — refused content type, a body that does not
    decode, an unregistered name, an expiry already past — becomes a stored FAILURE or
    REVOKED for that task id; the child carries on with the next one.
    """
    try:
        task_id = protocol.message_id_of(data)
    except (IndexError, UnicodeDecodeError):
        task_id = ""
    name = ""
    try:
        message = TaskMessage.from_bytes(data, accept)
        message.redelivered = redelivered
        name = message.task
        task = registry.tasks[name]
    except (ContentDisallowed, SerializationError, ProtocolError, NotRegistered) as exc:
        logger.error("Task %s[%s] refused: %s", name or "?", task_id, exc)
        return failed(data, task_id, name, "FAILURE", exc, None, 0.0, "json",
                      "refused: %s" % exc)
    serializer = message.serializer if message.serializer in ("json", "pickle", "yaml") \
        else "json"
    if message.expires and message.expires <= (now or time.time()):
        exc = TaskRevokedError("task %s expired before it could start" % task_id)
        logger.info("Task %s[%s] expired before it started", name, task_id)
        return failed(data, task_id, name, "REVOKED", exc, None, 0.0, "json", "expired")
    if message.chord is not None:
        try:
            values = chord_values(message.chord["results"], _header_result)
        except ChordError as exc:
            logger.error("Task %s[%s] (a chord's body) cannot run: %s", name, task_id, exc)
            return failed(data, task_id, name, "FAILURE", exc, None, 0.0, serializer,
                          "chord failed: %s" % exc)
        if not message.chord.get("immutable"):
            message.args = (values,) + tuple(message.args)
        message.chord = None            # its values are in the args now (a retry keeps them)
    current_loader().on_task_init(task_id, task)
    outcome = run_task(task, message, logfile, loglevel, signal_outcome=False, hold=True)
    report, final = _report(task, message, data, outcome, serializer, on_failure)
    if report.state != final.state and final.state not in _NOTHING_RECORDED:
        # Stored as FAILURE after all: the result itself could not be encoded.
        final = Outcome(report.state, SerializationError(report.summary), None,
                        outcome.runtime)
    final.request = outcome.request
    signal_outcome_of(task, message, final)
    return report


def _report(task, message, data, outcome, serializer, on_failure):
    """``(the Executed report of a run, its outcome)``: the outcome is a FAILURE instead
    when what the result unlocks cannot be sent."""
    task_id, name = message.id, message.task
    # What the run sent: its retry, published with the RETRY (or with whatever outcome, if
    # the task swallowed the RetryTaskError: it was sent all the same, as in Celery).
    held = outcome.request.held or []
    if outcome.state == IGNORED:
        # The broker hears that the run ended (a task handed over must be finished), as an
        # ignore_result success would say it; nothing is stored and nothing is unlocked.
        summary = "ignored (raised Ignore)"
        logger.info("Task %s[%s] %s", name, task_id, summary)
        return Executed("SUCCESS", "", b"", False, outcome.runtime, task_id, name,
                        summary, held), outcome
    if outcome.state == REJECTED:
        # The worker rejects the message (`Worker._finished`); nothing is stored.
        summary = "rejected: %s" % outcome.result
        logger.info("Task %s[%s] %s", name, task_id, summary)
        state = REQUEUED if outcome.result.requeue else REJECTED
        return Executed(state, "", b"", False, outcome.runtime, task_id, name, summary,
                        held), outcome
    publish = held
    if outcome.state == "SUCCESS":
        try:
            publish = held + success_unlocks(message, outcome.result)
        except (ConfigurationError, SerializationError, ProtocolError) as exc:
            # The task ran, but what follows it cannot be sent: its workflow stops here.
            exc = ConfigurationError("task %s[%s] succeeded, but what its result unlocks "
                                     "could not be sent: %s" % (name, task_id, exc))
            outcome = Outcome("FAILURE", exc, None, outcome.runtime)
    if outcome.state == "SUCCESS":
        summary = "succeeded in %.6fs: %s" % (outcome.runtime, _short(repr_safe(outcome.result)))
        logger.info("Task %s[%s] %s", name, task_id, summary)
        if task.ignore_result:
            return Executed("SUCCESS", "", b"", False, outcome.runtime, task_id, name, summary,
                            publish), outcome
    elif outcome.state == "RETRY":
        summary = "retry: %s" % outcome.retry
        logger.info("Task %s[%s] %s", name, task_id, summary)
    elif task.throws and isinstance(outcome.result, task.throws):
        # An expected error (the task's `throws`): a FAILURE all the same, but no alarm.
        summary = "raised expected %s: %s" % (type(outcome.result).__name__, outcome.result)
        logger.info("Task %s[%s] %s", name, task_id, summary)
    else:
        summary = "raised %s: %s" % (type(outcome.result).__name__, outcome.result)
        logger.error("Task %s[%s] %s\n%s", name, task_id, summary, outcome.traceback)
        if on_failure is not None:
            on_failure(task, message, outcome)
    if outcome.state in ("FAILURE", "REVOKED"):
        return failed(data, task_id, name, outcome.state, outcome.result, outcome.traceback,
                      outcome.runtime, serializer, summary, message.retries, held), outcome
    return executed(task_id, name, outcome.state, outcome.result, outcome.traceback,
                    outcome.runtime, serializer, summary, message.retries, publish), outcome


def executed(task_id, name, state, result, tb, runtime, serializer, summary, retries=0,
             publish=(), chained=()):
    """The `Executed` report of a run that ended in `state` with `result` (a value or an
    exception), its result meta serialized with `serializer`."""
    children = [child for child in map(protocol.message_id_of, publish)
                if child != task_id] if state == "SUCCESS" else ()     # not its own retry
    meta = ResultMeta(task_id, state, result, tb, name, retries, time.time(), children)
    content_type, payload = encode_result_meta(meta, serializer)
    if meta.status != state:            # the result itself could not be carried
        state, summary = meta.status, "result not serializable: %s" % meta.result
        logger.error("Task %s[%s] %s", name, task_id, summary)
    return Executed(state, content_type, payload, True, runtime, task_id, name, summary,
                    publish, chained)


def failed(data, task_id, name, state, result, tb, runtime, serializer, summary, retries=0,
           held=()):
    """`executed` for a FAILURE or REVOKED of the task of encoded message `data`, with what
    that unlocks in its workflow (`unlocked_by_failure`) and what the run sent (`held`)."""
    publish, chained = unlocked_by_failure(data, task_id)
    return executed(task_id, name, state, result, tb, runtime, serializer, summary, retries,
                    list(held) + publish, chained)


def unlocked_by_failure(data, task_id=""):
    """``(errback messages, ids of the rest of the chain)`` for a FAILURE or REVOKED of the
    task of encoded message `data`; nothing (logged) when its headers are unreadable."""
    try:
        fields = protocol.parse_message(data)
        return failure_unlocks(protocol.headers_of(data, fields.headers_at))
    except (ProtocolError, SerializationError) as exc:
        logger.error("Task %s: its workflow headers are unreadable, so no errback runs: %s",
                     task_id or "?", exc)
        return [], []


def _header_result(task_id):
    """``(state, value)`` of a chord header's result, as the broker has it now."""
    result = AsyncResult(task_id)
    return result.state, result.result


def repr_safe(value):
    try:
        return repr(value)
    except Exception as exc:            # a broken __repr__ must not fail the task
        return "<unrepresentable %s: %s>" % (type(value).__name__, exc)


def _short(text, limit=200):
    return text if len(text) <= limit else text[:limit - 3] + "..."
