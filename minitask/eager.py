"""Running a workflow here and now: what `apply()`, and `apply_async()` under ALWAYS_EAGER, do.

`run(sig)` takes a settled signature (its workflow options already given to its tasks, see
`minitask.canvas`) and runs every task of it in this thread, in order, with each task's own
`Task.apply` (retries inline). It returns the result a sent workflow would have, made of
EagerResults linked the same way (`parent`, `children`; a group's is a GroupResult), and keeps
the rules a broker and its workers keep for a sent one::

    chain   a -> b -> c         b gets a's result first; when a link fails or is revoked,
                                its errbacks run and every later task fails with its error
    group   a, b, c             each runs, whatever the others do
    chord   (a, b) -> body      body gets [a's, b's]; when a header task failed, the body
                                fails with ChordError instead and its errbacks run

Errbacks get the failed task's id first; callbacks (`link`) get the result. An errback that
fails is logged; it changes nothing about the task it was called for.
"""

import logging

from .canvas import (
    as_list, chain, chord, entries, group, maybe_signature, public_options, root_result,
)
from .exceptions import ChordError, ConfigurationError
from .message import new_task_id
from .result import FAILURE, REVOKED, EagerResult, GroupResult
from .states import IGNORED, REJECTED

__all__ = ["run", "fail", "call_callbacks", "call_errbacks", "chord_error"]

logger = logging.getLogger(__name__)

_FAILED = (FAILURE, REVOKED)


def run(sig):
    """Run settled signature `sig` here; returns its result."""
    if isinstance(sig, chain):
        return _run_chain(sig.tasks)
    if isinstance(sig, group):
        return GroupResult(sig.id or new_task_id(), [run(member) for member in sig.tasks])
    if isinstance(sig, chord):
        return _run_chord(sig)
    return sig.type.apply(sig.args, sig.kwargs, **public_options(sig.options))


def _run_chain(steps):
    if not steps:
        raise ConfigurationError("chain(): an empty chain has nothing to run")
    result = None
    for index, step in enumerate(steps):
        step_result = run(step if index == 0 else step.clone((_value(result),)))
        root_result(step_result).parent = result
        result = step_result
        if getattr(result, "state", None) in (IGNORED, REJECTED):
            break                       # it raised Ignore or Reject: nothing after it is sent
        failed = _failure_in(result)
        if failed is not None:
            for later in steps[index + 1:]:
                later_result = fail(later, failed.result, failed.traceback, errbacks=False)
                root_result(later_result).parent = result
                result = later_result
            break
    return result


def _run_chord(sig):
    header_result = run(sig.tasks)
    failed = _failure_in(header_result)
    if failed is None:
        result = run(sig.body.clone((_value(header_result),)))
    else:
        origin = _origin(failed)
        sig.body.freeze()                       # its ids, for the error to name
        error = chord_error(sig.body, origin.task_name, origin.id, origin.state,
                            origin.result)
        result = fail(sig.body, error)
    root_result(result).parent = header_result
    return result


def fail(sig, error, traceback=None, errbacks=True):
    """The result settled `sig` has when it cannot run because of `error` (a chain stopped
    before it; a chord's header failed): FAILURE for each of its tasks. With `errbacks`, the
    errbacks of the tasks that would have started it are called."""
    if isinstance(sig, chain):
        result = None
        for index, step in enumerate(sig.tasks):
            step_result = fail(step, error, traceback, errbacks and index == 0)
            root_result(step_result).parent = result
            result = step_result
        return result
    if isinstance(sig, group):
        return GroupResult(sig.id or new_task_id(),
                           [fail(member, error, traceback, errbacks) for member in sig.tasks])
    if isinstance(sig, chord):
        header_result = fail(sig.tasks, error, traceback, errbacks=False)
        result = fail(sig.body, error, traceback, errbacks)
        root_result(result).parent = header_result
        return result
    task_id = sig.id or new_task_id()
    result = EagerResult(task_id, error, FAILURE, traceback, task_name=sig.task)
    if errbacks:
        call_errbacks(sig.options.get("link_error"), task_id)
    return result


def call_callbacks(callbacks, value):
    """Run `link` callbacks here with `value`; returns their results (the `children`)."""
    return [maybe_signature(callback).apply((value,)) for callback in as_list(callbacks)]


def call_errbacks(errbacks, task_id):
    """Run `link_error` errbacks here with the failed task's id."""
    for errback in as_list(errbacks):
        errback = maybe_signature(errback)
        failed = _failure_in(errback.apply((task_id,)))
        if failed is not None:
            logger.error("errback %r of task %s failed: %r", errback, task_id, failed.result)


def chord_error(body, task_name, task_id, state, error):
    """The ChordError a chord's body gets when header task `task_id` ended in `state`."""
    what = "was revoked" if state == REVOKED else "failed: %r" % (error,)
    names = ", ".join("%s[%s]" % (entry.task, entry.id) for entry in entries(body))
    chord_failed = ChordError("chord body %s did not run: header task %s[%s] %s"
                              % (names, task_name or "?", task_id, what))
    if isinstance(error, BaseException):
        chord_failed.__cause__ = error
    return chord_failed


def _failure_in(result):
    """The first EagerResult that failed or was revoked in `result` (a GroupResult's members
    in order), or None."""
    if isinstance(result, GroupResult):
        for member in result.results:
            failed = _failure_in(member)
            if failed is not None:
                return failed
        return None
    return result if result.state in _FAILED else None


def _origin(result):
    """The earliest failed result up a chain of parents: the task that failed first."""
    while isinstance(result.parent, EagerResult) and result.parent.state in _FAILED:
        result = result.parent
    return result


def _value(result):
    if isinstance(result, GroupResult):
        return [_value(member) for member in result.results]
    return result.result
