"""Task results as the caller sees them: `AsyncResult`, `EagerResult`, `ResultSet` and
`GroupResult`.

States, in the order a task moves through them: PENDING (nothing known yet), RECEIVED (a
worker has it), STARTED, RETRY (waiting to run again; the result is the "tombstone": the
exception that caused the retry), then one of the final states SUCCESS, FAILURE, REVOKED.

Waiting is push-based: `get()` sends one RESULT_WAIT and the broker answers the moment the
result arrives. A FAILURE comes back as its own exception class only when that class is a
builtin, in `minitask.exceptions`, or in a module already imported here; otherwise as
`RemoteTaskError` (see `minitask.serialization`).

Results of a workflow (`minitask.canvas`) are linked as Celery links them: a chain's result is
its last task's, whose `parent` is the task before it, and so on back to the first; a chord's
result is its body's, whose `parent` is the header's `GroupResult`; `links` are the results
of a task's `link` callbacks, its `children` once it has succeeded (it sends them then). Every
id is assigned when the workflow is sent, so `revoke()` on
any of them reaches every task of the workflow it can see through those links, including the
ones that have not been sent yet.
"""

import collections
import contextlib
import datetime
import time
import uuid

from .exceptions import ChordError, TaskRevokedError, TimeoutError
from .message import decode_result_meta
from .protocol import READY_STATES, STATES
from .transport import with_connection
from .config import get_settings
from .message import ResultMeta
from .states import IGNORED

__all__ = ["ResultBase", "AsyncResult", "EagerResult", "ResultSet", "GroupResult",
           "ResultGraph", "STATES", "READY_STATES", "allow_join_result", "task_join_will_block",
           "PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]

PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = STATES

# Set in a worker's pool processes: there, waiting for another task's result can wait for
# ever (the task waited for may be queued behind this one, for this very process).
_join = {"will_block": False}

# How often `get(on_message=...)` looks for a state before the final one (which comes at once).
PROGRESS_POLL = 0.1

WOULD_BLOCK = ("never call result.get() within a task: it may wait for a task queued "
               "behind this one; chain the tasks, or give a link callback (or pass "
               "disable_sync_subtasks=False, or use allow_join_result(), if you must)")


def task_join_will_block():
    """True in a worker's pool process, where `get()` refuses to wait (Celery's)."""
    return _join["will_block"]


def set_task_join_will_block(value):
    """Said by a worker's pool process as it starts."""
    _join["will_block"] = bool(value)


@contextlib.contextmanager
def allow_join_result():
    """Let `get()` wait inside a task, as Celery's `allow_join_result`: you answer for the
    task waited for having a worker free to run it."""
    was = _join["will_block"]
    _join["will_block"] = False
    try:
        yield
    finally:
        _join["will_block"] = was


def _assert_will_not_block(disable_sync_subtasks):
    if disable_sync_subtasks and _join["will_block"]:
        raise RuntimeError(WOULD_BLOCK)


class ResultBase:
    """What AsyncResult and EagerResult share: the states' questions and `get()`'s raising,
    and the links of a workflow: `parent` (the result before this one) and `children` (the
    results of this task's `link` callbacks)."""

    parent = None
    children = ()

    def ready(self):
        return self.state in READY_STATES

    def successful(self):
        return self.state == SUCCESS

    def failed(self):
        return self.state == FAILURE

    @property
    def status(self):
        return self.state

    def get(self, timeout=None, propagate=True, interval=None, no_ack=True,
            follow_parents=True, callback=None, on_message=None, on_interval=None,
            disable_sync_subtasks=True):
        """Wait for the final state; return the value or raise the task's exception.

        Raises `minitask.exceptions.TimeoutError` when `timeout` seconds pass first.
        `callback(task_id, value)` is called with the value, as Celery's. `on_message(meta)`
        is called with each state the task is seen in (Celery's raw result: a dict of
        ``task_id``, ``status``, ``result``, ``traceback``, ``children``, ``date_done``),
        progress reported with `update_state` included: states before the final one are
        looked at every `PROGRESS_POLL` seconds, the final one comes at once.
        `on_interval()` is called between those looks. `interval`, `no_ack` and
        `follow_parents` are accepted for Celery compatibility with no effect: nothing polls
        otherwise, results are kept until they expire, and a failure in a chain is the
        result of every task after it already. Inside a task, raises RuntimeError rather
        than wait, unless `disable_sync_subtasks` is False (Celery's rule); a result already
        known is returned.
        """
        if on_message is not None or on_interval is not None:
            timeout = self._watch(timeout, on_message, on_interval, disable_sync_subtasks)
        value = self._wait(timeout, propagate, disable_sync_subtasks)
        if callback is not None:
            callback(self.task_id, value)
        return value

    wait = get

    def collect(self, intermediate=False, **kwargs):
        """Celery's: ``(result, value)`` for this result, then, breadth first, for the tasks
        it sent on (`children`: its callbacks, its chain's next link), each waited for with
        ``get(**kwargs)``. `intermediate` is accepted: every result is waited for."""
        for _parent, node in _dependencies(self):
            yield node, node.get(**kwargs)

    @property
    def graph(self):
        """Celery's `graph`: this result and those it led to (`children`), as a
        `ResultGraph`; a task not finished yet has no children in it."""
        return ResultGraph(self)

    def _watch(self, timeout, on_message, on_interval, disable_sync_subtasks):
        """An eager result is final already: on_message hears it once."""
        if on_message is not None:
            on_message(_message(self.task_id, self._fetch()))
        return timeout

    def maybe_throw(self, propagate=True, callback=None):
        """Celery's: raise the task's exception if it failed, else return its value (None
        while not ready), without waiting."""
        meta = self._fetch()
        value = self._outcome(meta, propagate) if meta.status in READY_STATES else meta.result
        if callback is not None:
            callback(self.task_id, value)
        return value

    def _outcome(self, meta, propagate):
        if meta.status in (SUCCESS, IGNORED) or not propagate:
            return meta.result
        error = meta.result
        if not isinstance(error, BaseException):
            error = TaskRevokedError("task %s was revoked" % self.task_id) \
                if meta.status == REVOKED else RuntimeError(repr(error))
        if meta.traceback and not getattr(error, "remote_traceback", None):
            try:
                error.remote_traceback = meta.traceback
            except AttributeError:
                pass                    # exceptions with __slots__: the message still says it
        raise error

    def __repr__(self):
        return "<%s: %s>" % (type(self).__name__, self.task_id)

    def __str__(self):
        return self.task_id

    def __eq__(self, other):
        if isinstance(other, ResultBase):
            return self.task_id == other.task_id
        return self.task_id == other

    def __hash__(self):
        return hash(self.task_id)


class AsyncResult(ResultBase):
    """The result of a task sent to the broker, fetched from the broker's result store."""

    def __init__(self, task_id, task_name=None, connection=None, parent=None):
        if isinstance(task_id, uuid.UUID):
            task_id = str(task_id)
        if not isinstance(task_id, str):
            raise ValueError("AsyncResult needs a task id (a string), not %s"
                             % ("None" if task_id is None else type(task_id).__name__))
        self.task_id = self.id = task_id
        self.task_name = task_name
        self.parent = parent
        self.links = ()                 # the results of its `link` callbacks, sent or not
        self._connection = connection
        self._meta = None               # cached once final

    @property
    def children(self):
        """The results of the tasks it sent on (its `link` callbacks, its chain's next link)
        once it has succeeded, as Celery's: this handle's own `links` when it sent them, else
        the ids stored with the result. ``[]`` before, and after any other outcome."""
        if self.state != SUCCESS:
            return []
        if self.links:
            return list(self.links)
        return [AsyncResult(task_id, connection=self._connection)
                for task_id in self._fetch().children]

    def _call(self, function):
        """``function(connection)`` on the connection given, or this thread's (reconnecting)."""
        if self._connection is not None:
            return function(self._connection.connect())
        return with_connection(function)

    def _accept(self):
        return get_settings().ACCEPT_CONTENT

    def _decode(self, state, content_type, payload):
        return decode_result_meta(self.task_id, state, content_type, payload, self._accept())

    def _fetch(self):
        if self._meta is not None:
            return self._meta
        state, ready, _date, content_type, payload = self._call(
            lambda conn: conn.get_result(self.task_id))
        meta = self._decode(state, content_type, payload)
        if ready:
            self._meta = meta
        return meta

    @property
    def state(self):
        return self._fetch().status

    @property
    def result(self):
        """The return value, the exception of a failure, the tombstone of a retry, or None."""
        return self._fetch().result

    info = result

    @property
    def traceback(self):
        """The task's traceback text; for a chord body failed by its header (ChordError,
        which has none of its own), that header task's, as Celery's guide says, when this
        handle knows its header (`parent`, as the chord's call returned it)."""
        meta = self._fetch()
        if meta.traceback is None and isinstance(meta.result, ChordError):
            for header in getattr(self.parent, "results", ()):
                if header.id in str(meta.result):
                    return header.traceback
        return meta.traceback

    # Celery's extended result fields (result_extended) that minitask does not store.
    args = kwargs = worker = queue = None

    @property
    def name(self):
        """The task's name, as its result was stored with it (Celery's with result_extended),
        else as this handle was made; None when neither says."""
        return self._fetch().task or self.task_name or None

    @property
    def retries(self):
        """How many times it was retried, once its result says (None before: PENDING)."""
        meta = self._fetch()
        return meta.retries if meta.task else None

    @property
    def date_done(self):
        """When the task ended, as an aware UTC datetime (Celery's); None until it has."""
        meta = self._fetch()
        if meta.status not in READY_STATES or not meta.date_done:
            return None
        return _utc(meta.date_done)

    def _wait(self, timeout, propagate, disable_sync_subtasks):
        meta = self._meta
        if meta is None:
            _assert_will_not_block(disable_sync_subtasks)
            started = time.monotonic()

            def wait(conn):             # after a reconnect, only what is left of the timeout
                left = None if timeout is None else max(0.0, timeout - (time.monotonic()
                                                                        - started))
                return conn.wait_result(self.task_id, left)
            state, ready, _date, content_type, payload = self._call(wait)
            if not ready:
                waited = time.monotonic() - started
                raise TimeoutError("task %s did not finish within %.3gs (state %s)"
                                   % (self.task_id, max(waited, timeout or 0),
                                      self._decode(state, content_type, payload).status))
            meta = self._meta = self._decode(state, content_type, payload)
        return self._outcome(meta, propagate)

    def _watch(self, timeout, on_message, on_interval, disable_sync_subtasks):
        """`get()`'s on_message and on_interval: wait in slices of PROGRESS_POLL seconds
        until the final state (kept for `_wait`), or until `timeout` has passed, calling
        them as the state changes and between slices. Returns what is left of `timeout`."""
        if self._meta is not None:
            if on_message is not None:
                on_message(_message(self.task_id, self._meta))
            return timeout
        _assert_will_not_block(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        seen = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait = PROGRESS_POLL if left is None else min(PROGRESS_POLL, left)
            state, ready, date_done, content_type, payload = self._call(
                lambda conn: conn.wait_result(self.task_id, wait))
            if (state, bytes(payload or b"")) != seen:
                seen = (state, bytes(payload or b""))
                meta = self._decode(state, content_type, payload)
                if ready:
                    self._meta = meta
                if on_message is not None:
                    on_message(_message(self.task_id, meta, date_done if ready else None))
            if ready or left == 0.0:
                return left
            if on_interval is not None:
                on_interval()

    def revoke(self, terminate=False, signal="SIGTERM", wait=False, timeout=None):
        """Make sure the task never runs (and stop it if running, with `terminate`).

        The result of a workflow revokes the whole workflow it is linked to (its parents,
        their callbacks, a chord's header), in one request: what has not started never does.
        Returns once the broker holds the revocation, which every worker, present or to
        come, obeys: Celery's `wait` and `timeout` (for workers' replies) change nothing.
        """
        ids = workflow_ids(self)
        self._call(lambda conn: conn.revoke(ids, terminate=terminate, signal=signal))

    def forget(self):
        """Remove the result from the broker's store."""
        self._call(lambda conn: conn.forget([self.task_id]))
        self._meta = None


class EagerResult(ResultBase):
    """The result of `Task.apply()`: the task already ran, here."""

    def __init__(self, task_id, result, state, traceback=None, task_name=None, parent=None):
        self.task_id = self.id = task_id
        self.task_name = task_name
        self.parent = parent
        self._result = result
        self._state = state
        self._traceback = traceback
        self._done_at = time.time()     # it ran here, just now

    @property
    def state(self):
        return self._state

    @property
    def date_done(self):
        """When the task ended (as a result from a worker says); None for a RETRY."""
        return _utc(self._done_at) if self._state in READY_STATES else None

    @property
    def result(self):
        return self._result

    info = result

    @property
    def traceback(self):
        return self._traceback

    def _fetch(self):
        return ResultMeta(self.task_id, self._state, self._result, self._traceback)

    def _wait(self, timeout, propagate, disable_sync_subtasks):
        return self._outcome(self._fetch(), propagate)

    def revoke(self, terminate=False, signal="SIGTERM", wait=False, timeout=None):
        pass                           # it already ran

    def forget(self):
        pass


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def _dependencies(root):
    """``(parent, result)`` for `root` and, breadth first, every result it led to."""
    queue = collections.deque([(None, root)])
    while queue:
        parent, node = queue.popleft()
        yield parent, node
        queue.extend((node, child) for child in getattr(node, "children", None) or ())


class ResultGraph:
    """What Celery's `AsyncResult.graph` gives, without its dot output: the results a
    result led to (`nodes`, breadth first) and each one's `edges` (the results it sent
    on). Its repr lists each result's id with how many it sent on, those indented below."""

    def __init__(self, root):
        self.root = root
        self.nodes, self.edges = [], {}
        for parent, node in _dependencies(root):
            self.nodes.append(node)
            self.edges.setdefault(node.id, [])
            if parent is not None:
                self.edges[parent.id].append(node)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    def __contains__(self, result):
        return any(node.id == getattr(result, "id", result) for node in self.nodes)

    def __getitem__(self, result):
        return list(self.edges[getattr(result, "id", result)])

    def __repr__(self):
        lines = []
        for node in self.nodes:
            lines.append("%s(%d)" % (node.id, len(self.edges[node.id])))
            lines.extend("     %s(%d)" % (child.id, len(self.edges.get(child.id, ())))
                         for child in self.edges[node.id])
        return "\n".join(lines)


def _message(task_id, meta, date_done=None):
    """What Celery's `get(on_message=...)` passes: the result as its backend stores it."""
    return {"task_id": task_id, "status": meta.status, "result": meta.result,
            "traceback": meta.traceback, "children": [],
            "date_done": _utc(date_done).isoformat() if date_done else None}


class ResultSet:
    """Several results waited on together (`map_async`, and the base of `GroupResult`)."""

    parent = None

    def __init__(self, results):
        self.results = list(results)

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)

    def __getitem__(self, index):
        return self.results[index]

    def ready(self):
        return all(result.ready() for result in self.results)

    def successful(self):
        return all(result.successful() for result in self.results)

    def failed(self):
        return any(result.failed() for result in self.results)

    def waiting(self):
        return not self.ready()

    def completed_count(self):
        """How many have finished successfully."""
        return sum(1 for result in self.results if result.successful())

    def add(self, result):
        """Add a result to the set, unless it is in it already (Celery's)."""
        if result not in self.results:
            self.results.append(result)

    def update(self, results):
        for result in results:
            self.add(result)

    def remove(self, result):
        """Take a result (or a task id) out of the set; KeyError when it is not in it."""
        if result not in self.results:
            raise KeyError(result)
        self.results.remove(result)

    def discard(self, result):
        """`remove`, for a result that may not be in the set."""
        if result in self.results:
            self.results.remove(result)

    def clear(self):
        del self.results[:]

    def join(self, timeout=None, propagate=True, interval=None, callback=None, no_ack=True,
             on_message=None, on_interval=None, disable_sync_subtasks=True):
        """The list of values, in order; the first failure is raised when `propagate`.
        With `callback`, `callback(task_id, value)` is called for each, in order, and the
        list is empty, as Celery's. `on_message` and `on_interval` as `AsyncResult.get`'s,
        for each result in turn. `interval` and `no_ack` are accepted, with no effect
        (see `AsyncResult.get`). Inside a task, RuntimeError as `AsyncResult.get` (before
        any waiting)."""
        if any(isinstance(result, AsyncResult) and result._meta is None
               for result in self.results):
            _assert_will_not_block(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            value = result.get(timeout=remaining, propagate=propagate,
                               on_message=on_message, on_interval=on_interval,
                               disable_sync_subtasks=disable_sync_subtasks)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    get = join_native = join

    def maybe_throw(self, propagate=True, callback=None):
        """Raise the first failure among those that ended, without waiting."""
        for result in self.results:
            result.maybe_throw(propagate=propagate, callback=callback)

    def revoke(self, terminate=False, signal="SIGTERM", wait=False, timeout=None):
        """Revoke every task of the set (and of the workflows they belong to) in one request
        (`wait` and `timeout` as `AsyncResult.revoke`'s)."""
        ids = workflow_ids(self)
        if ids:
            with_connection(lambda conn: conn.revoke(ids, terminate=terminate, signal=signal))

    def __repr__(self):
        return "<ResultSet: %d results>" % len(self.results)


class GroupResult(ResultSet):
    """The results of a group, in the group's order; `id` is the group's own id.

    Celery's GroupResult without its result-backend half: a group's id is not stored, so there
    is no `save()` or `restore()`; keep the GroupResult (or its task ids) instead.
    """

    def __init__(self, id=None, results=(), parent=None):
        super().__init__(results)
        self.id = id
        self.parent = parent

    @property
    def children(self):
        return self.results

    def save(self, backend=None):
        raise NotImplementedError("minitask keeps no group results: keep the GroupResult "
                                  "itself, or its id and its results' ids")

    @classmethod
    def restore(cls, id, backend=None):
        raise NotImplementedError("minitask keeps no group results: make it again with "
                                  "GroupResult(id, [AsyncResult(task_id) for each task id])")

    def __eq__(self, other):
        if isinstance(other, GroupResult):
            return self.id == other.id and self.results == other.results
        return NotImplemented

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return "<GroupResult: %s [%s]>" % (self.id, ", ".join(str(getattr(r, "id", r))
                                                               for r in self.results))


def workflow_ids(result):
    """The ids of the tasks `result` reaches through the links of its workflow (parents,
    `link` callbacks, sent or not, a group's members), itself included, each once;
    EagerResults (which already ran) are left out."""
    ids, seen, stack = [], set(), [result]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ResultSet):
            stack.extend(reversed(node.results))
        elif isinstance(node, AsyncResult):
            if node.id not in ids:
                ids.append(node.id)
            stack.extend(reversed(node.links))
        stack.append(node.parent)
    return ids
