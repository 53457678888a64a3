"""Canvas: signatures, and the workflows made of them (Celery 5's chain, group and chord).

A signature is one call of one task, not sent yet. It is a dict in Celery's form, so it is
JSON as it stands and can be sent, stored and rebuilt in another process with `signature()`::

    {"task": "tasks.add", "args": [2, 2], "kwargs": {}, "options": {"countdown": 10},
     "subtask_type": None, "immutable": False}

Workflows are signatures whose parts sit in their kwargs, each part a signature again:

==========================  ===================  ==========================================
built with                  "subtask_type"       "kwargs"
==========================  ===================  ==========================================
``chain(a, b)``, ``a | b``  "chain"              ``{"tasks": [a, b]}``
``group(a, b)``             "group"              ``{"tasks": [a, b]}``
``chord(header, body)``     "chord"              ``{"header": group, "body": body}``
``task.map(it)``            "xmap"               ``{"task": task.s(), "it": [...]}``
``task.starmap(it)``        "xstarmap"           ``{"task": task.s(), "it": [...]}``
``task.chunks(it, n)``      "chunks"             ``{"task": task.s(), "it": [...], "n": n}``
==========================  ===================  ==========================================

`|` combines them as Celery does: ``sig | sig`` is a chain; a chain absorbs a chain; a group
followed by anything is a chord with that as its body (``group(...) | sig``); whatever
follows a chord joins its body. So in a chain only the last link is ever a group or a chord.

Options on a workflow reach its tasks as in Celery: on a chain, `task_id` and `link` go to the
last task, `link_error` to every task and the others to the first; on a group, to every
member (its `task_id` is the group's own id); on a chord, `task_id`, `link` and `link_error`
to the body and the others to the header and the body. Partial arguments go to a chain's
first task, a group's members, and a chord's header.

Running. `apply()` runs a workflow here and now; `apply_async()` sends it (or, under
ALWAYS_EAGER, applies it). Both work on a copy, so one signature can be sent many times.
Sending first assigns every task id of the workflow (`freeze()`: the results exist from the
start, and revoking one revokes the ones not started), then builds the messages with
`minitask.sending.compose_signature`. What happens, applied or sent alike:

- A chain's link is called with the previous result first (unless it is immutable). A link
  that ends in FAILURE (or REVOKED) stops the chain: its `link_error` errbacks are called, and
  every later task ends with the same error, so `chain(...).get()` raises it instead of
  waiting forever (as Celery 5 does).
- An errback is a task called with the failed task's id first, then its own args (Celery's
  ``errback(task_id)`` form; an immutable errback gets its own args only); it reads the error
  with ``AsyncResult(task_id)``. Celery's in-worker ``(request, exc, traceback)`` form is
  refused when the errback is linked, since minitask builds errback messages when the task is
  sent (see `minitask.message`).
- `link` callbacks are called with the result after a success; their results are the
  `links` of the task's result, and its `children` once it has succeeded (as Celery's).
- A chord runs its header (every task, even after one failed), then its body with the list of
  the header's results in the header's order. If a header task failed (or was revoked), the
  body does not run: it ends in FAILURE with `ChordError` naming that task, and the body's
  errbacks are called with the body's id. A task whose result the body needs may not have
  `ignore_result` (refused when the chord is built).
"""

import datetime

from . import registry
from .config import get_settings
from .exceptions import ConfigurationError
from .message import new_task_id
from .result import AsyncResult, GroupResult

__all__ = ["Signature", "signature", "maybe_signature", "subtask", "chain", "group", "chord",
           "xmap", "xstarmap", "chunks", "send"]

# Call options that only the canvas sets on a task of a workflow it builds: which chord
# bodies wait for the task's result. They never reach `apply_async`'s checks.
_INTERNAL_OPTIONS = ("chord",)


def _item(key, doc):
    return property(lambda self: self[key], lambda self, value: self.__setitem__(key, value),
                    doc=doc)


class Signature(dict):
    """One call of one task, not sent yet: ``add.s(2, 2)``, ``add.signature((2, 2),
    countdown=10)``, ``signature("tasks.add", args=(2, 2))``.

    `task` is the task's name; `type` the task itself (looked up by name when needed, so a
    signature of a task this process does not have can still be sent, by name).
    """

    TYPES = {}              # subtask_type -> class, for signature(dict)

    task = _item("task", "The task's name.")
    args = _item("args", "Positional arguments (a tuple).")
    kwargs = _item("kwargs", "Keyword arguments.")
    options = _item("options", "Call options, as apply_async takes them.")
    subtask_type = _item("subtask_type", "None for a task; chain, group, chord...")
    immutable = _item("immutable", "True: partial arguments (a chain's result) are not added.")

    def __init__(self, task=None, args=None, kwargs=None, options=None, subtask_type=None,
                 immutable=False, **ex):
        self._type = getattr(task, "_type", None)
        if isinstance(task, dict):
            super().__init__(_checked_dict(task))
            return
        if isinstance(task, type) and hasattr(task, "_instance"):
            task = task._instance()             # a Task class: its registered instance
        name = getattr(task, "name", task)
        if name is not task:
            self._type = task
        if not isinstance(name, str) or not name:
            raise ConfigurationError("signature task %r: expected a task or a task name"
                                     % (task,))
        if args is not None and not isinstance(args, (list, tuple)):
            raise ConfigurationError("signature of %s: args %r: expected a list or tuple"
                                     % (name, args))
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigurationError("signature of %s: kwargs %r: expected a dict"
                                     % (name, kwargs))
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options=dict(options or {}, **ex), subtask_type=subtask_type,
                         immutable=bool(immutable))

    @classmethod
    def from_dict(cls, d):
        """The signature (of the right kind: chain, group...) that dict `d` describes."""
        kind = d.get("subtask_type")
        if not kind:
            return Signature(d)
        if kind not in Signature.TYPES:
            raise ConfigurationError("signature subtask_type %r: expected one of %s"
                                     % (kind, ", ".join(sorted(Signature.TYPES))))
        return Signature.TYPES[kind].from_dict(d)

    # -- what it is ---------------------------------------------------------------------------

    name = task

    @property
    def id(self):
        """The task id, once assigned (`freeze()`, or ``set(task_id=...)``)."""
        return self.options.get("task_id")

    @property
    def type(self):
        """The task object; NotRegistered when this process does not have it."""
        if self._type is None:
            self._type = registry.tasks[self.task]
        return self._type

    def _local_type(self):
        return self._type if self._type is not None else registry.tasks.get(self.task)

    def to_dict(self):
        """Celery's dict form with plain containers (args a list, nested signatures plain
        dicts): what `json.dumps` takes and `signature()` rebuilds."""
        return {"task": self.task, "args": [_plain(arg) for arg in self.args],
                "kwargs": _plain(self.kwargs), "options": _plain(self.options),
                "subtask_type": self.subtask_type, "immutable": self.immutable}

    def __reduce__(self):
        return signature, (self.to_dict(),)

    def __repr__(self):
        arguments = [repr(arg) for arg in self.args]
        arguments += ["%s=%r" % item for item in sorted(self.kwargs.items())]
        return "%s(%s)" % (self.task, ", ".join(arguments))

    # -- building -----------------------------------------------------------------------------

    def clone(self, args=None, kwargs=None, **options):
        """A copy (nested signatures and option lists copied too), with partial `args`
        prepended, `kwargs` merged and `options` set; an immutable one takes options only."""
        copy = type(self).from_dict({
            "task": self.task, "args": self.args, "kwargs": _copied(self.kwargs),
            "options": _copied(self.options), "subtask_type": self.subtask_type,
            "immutable": self.immutable})
        copy._type = self._type
        return copy._partial(args, kwargs, options)

    partial = clone

    def _partial(self, args, kwargs, options):
        """Apply partial arguments and options to this copy; containers override it."""
        if not self.immutable:
            if args:
                self.args = tuple(args) + self.args
            if kwargs:
                self.kwargs = dict(self.kwargs, **kwargs)
        if options:
            self.options.update(options)
        return self

    def set(self, immutable=None, **options):
        """Set call options (``add.s(2, 2).set(countdown=10)``); returns the signature."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable):
        self.immutable = bool(immutable)

    def link(self, callback):
        """Call `callback` with this task's result when it succeeds; returns `callback`."""
        return _append_option(self, "link", maybe_signature(callback))

    def link_error(self, errback):
        """Call `errback` with this task's id when it fails; returns `errback`."""
        errback = maybe_signature(errback)
        check_errback(errback)
        return _append_option(self, "link_error", errback)

    def on_error(self, errback):
        """`link_error` that returns this signature, for chaining calls."""
        self.link_error(errback)
        return self

    def __or__(self, other):
        other = _operand(other)
        if other is None:
            return NotImplemented
        return chain(self, other)

    __ior__ = __or__

    def __ror__(self, other):
        # Only reached for `plain_dict | signature` (dict's own | would merge the two).
        other = _operand(other)
        return NotImplemented if other is None else other | self

    # -- running ------------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        """Call the task's function here, as a plain call (nothing sent, no result)."""
        merged = self.clone(args, kwargs)
        return self.type(*merged.args, **merged.kwargs)

    def delay(self, *args, **kwargs):
        return self.apply_async(args, kwargs)

    def __invert__(self):
        """``~sig``: send it and wait for its value, as Celery's shortcut does."""
        return self.apply_async().get()

    def apply_async(self, args=None, kwargs=None, **options):
        """Send the call (partial args prepended, options merged); returns its AsyncResult.
        Under ALWAYS_EAGER it runs here instead (`apply`)."""
        options = {name: value for name, value in options.items() if value is not None}
        if self.subtask_type:
            if get_settings().ALWAYS_EAGER:
                return self.apply(args, kwargs, **options)
            return send(self, args, kwargs, options)
        call = self.clone(args, kwargs, **options)
        call_options = public_options(call.options)
        task = call._local_type()
        if task is None:                    # a task known here by name only
            from .sending import send_task  # sending imports this module
            return send_task(call.task, call.args, call.kwargs, **call_options)
        return task.apply_async(call.args, call.kwargs, **call_options)

    def apply(self, args=None, kwargs=None, **options):
        """Run it here and now (`minitask.eager`); returns its EagerResult (a GroupResult
        for a group)."""
        from .eager import run  # eager imports this module
        options = {name: value for name, value in options.items() if value is not None}
        return run(self.clone(args, kwargs, **options)._settled())

    def freeze(self, _id=None):
        """Assign this call's task id (and its callbacks' and errbacks') if it has none yet;
        returns the AsyncResult it will have."""
        options = self.options
        task_id = options.get("task_id") or _id or new_task_id()
        options["task_id"] = task_id
        result = AsyncResult(task_id, task_name=self.task)
        if options.get("link"):
            options["link"] = [maybe_signature(sig) for sig in as_list(options["link"])]
            result.links = [sig.freeze() for sig in options["link"]]
        if options.get("link_error"):
            options["link_error"] = [maybe_signature(sig)
                                     for sig in as_list(options["link_error"])]
            for errback in options["link_error"]:
                errback.freeze()
        return result

    def _settled(self):
        """A copy whose workflow options have reached its tasks (see the module docstring)."""
        copy = self.clone()
        for errback in as_list(copy.options.get("link_error")):
            check_errback(maybe_signature(errback))
        return copy


def _register(kind):
    def register(cls):
        Signature.TYPES[kind] = cls
        return cls
    return register


@_register("chain")
class chain(Signature):
    """Tasks run one after another, each given the previous one's result:
    ``chain(add.s(2, 2), mul.s(8))`` or ``add.s(2, 2) | mul.s(8)``; ``chain(generator)``
    too. Its result is the last task's, with `parent` back to the first."""

    def __init__(self, *tasks, **options):
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])
        steps = []
        for task in tasks:
            steps = _chained(steps, task)
        Signature.__init__(self, "minitask.chain", (), {"tasks": steps}, options,
                           subtask_type="chain")

    @classmethod
    def from_dict(cls, d):
        d = _checked_dict(d)
        return cls(_signatures(d["kwargs"], "tasks"), **d["options"])

    @property
    def tasks(self):
        return self.kwargs["tasks"]

    def _partial(self, args, kwargs, options):
        if (args or kwargs) and self.tasks:
            self.tasks[0] = self.tasks[0].clone(args, kwargs)
        self.options.update(options)
        return self

    def _distributed(self):
        """Copies of the steps with this chain's options given to them."""
        steps = [step.clone() for step in self.tasks]
        options = dict(self.options)
        if not steps:
            return steps
        task_id = options.pop("task_id", None)
        links = as_list(options.pop("link", None))
        errbacks = as_list(options.pop("link_error", None))
        if task_id:
            steps[-1].set(task_id=task_id)
        for callback in links:
            steps[-1].link(callback)
        for errback in errbacks:
            for step in steps:
                step.link_error(maybe_signature(errback).clone())
        steps[0].set(**options)
        return steps

    def _settled(self):
        return chain(*[step._settled() for step in self._distributed()])

    def __or__(self, other):
        other = _operand(other)
        if other is None:
            return NotImplemented
        return chain(*_chained(self._distributed(), other))

    __ior__ = __or__

    def __call__(self, *args, **kwargs):
        return self.apply_async(args, kwargs)

    def freeze(self, _id=None):
        result = None
        for index, step in enumerate(self.tasks):
            last = index == len(self.tasks) - 1
            step_result = step.freeze((_id or self.options.get("task_id")) if last else None)
            root_result(step_result).parent = result
            result = step_result
        if result is not None:      # as in Celery: the chain's id is its last task's
            self.options["task_id"] = result.id
        return result

    def __repr__(self):
        return " | ".join(repr(step) for step in self.tasks) or "chain()"


@_register("group")
class group(Signature):
    """Calls run independently (in parallel on a worker pool): ``group(sig, sig, ...)``,
    ``group([sigs])`` or ``group(generator)``. Its result is a `GroupResult` in the same
    order. A group inside a group is flattened into it."""

    def __init__(self, *tasks, **options):
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])
        members = []
        for task in tasks:
            task = _as_step(task, unroll=False)
            if isinstance(task, group):
                members.extend(_flattened(task))
            else:
                members.append(task)
        Signature.__init__(self, "minitask.group", (), {"tasks": members}, options,
                           subtask_type="group")

    @classmethod
    def from_dict(cls, d):
        d = _checked_dict(d)
        return cls(_signatures(d["kwargs"], "tasks"), **d["options"])

    @property
    def tasks(self):
        return self.kwargs["tasks"]

    def __len__(self):
        return len(self.tasks)

    def _partial(self, args, kwargs, options):
        if args or kwargs:
            self.kwargs["tasks"] = [member.clone(args, kwargs) for member in self.tasks]
        self.options.update(options)
        return self

    def _settled(self):
        options = dict(self.options)
        group_id = options.pop("task_id", None)
        if options.get("link"):
            raise ConfigurationError(_GROUP_LINK)
        errbacks = as_list(options.pop("link_error", None))
        members = []
        for member in self.tasks:
            member = member.clone()
            for errback in errbacks:
                member.link_error(maybe_signature(errback).clone())
            members.append(member.set(**options)._settled())
        settled = group(members)
        if group_id:
            settled.options["task_id"] = group_id
        return settled

    def __or__(self, other):
        other = _operand(other)
        if other is None:
            return NotImplemented
        return chord(self, other)

    __ior__ = __or__

    def __call__(self, *args, **options):
        return self.apply_async(args, **options)

    def link(self, callback):
        raise ConfigurationError(_GROUP_LINK)

    def link_error(self, errback):
        """Give every member the errback (each calls it when it fails); returns `errback`."""
        errback = maybe_signature(errback)
        check_errback(errback)
        for member in self.tasks:
            member.link_error(errback.clone())
        return errback

    def set_immutable(self, immutable):
        for member in self.tasks:
            member.set_immutable(immutable)

    def skew(self, start=1.0, stop=None, step=1.0):
        """Spread the members out, as Celery's: countdowns `start`, `start + step`, ...; once
        past `stop` (when given, and not 0), the rest keep the last one under it. Returns
        the group."""
        countdown = float(start)
        for member in self.tasks:
            if not stop or countdown <= stop:
                member.set(countdown=countdown)
                countdown += step
            else:
                member.set(countdown=countdown - step)
        return self

    def apply_async(self, args=None, kwargs=None, **options):
        if options.get("link") is not None:
            raise ConfigurationError(_GROUP_LINK)
        if options.get("link_error") is not None:
            raise ConfigurationError("group(...).apply_async(link_error=...): set link_error "
                                     "on the group (group.link_error(errback)) or its tasks")
        return Signature.apply_async(self, args, kwargs, **options)

    def freeze(self, _id=None):
        group_id = self.options.get("task_id") or _id or new_task_id()
        self.options["task_id"] = group_id
        return GroupResult(group_id, [member.freeze() for member in self.tasks])

    def __repr__(self):
        return "group(%s)" % ", ".join(repr(member) for member in self.tasks)


_GROUP_LINK = ("a group has no single result to call a callback with: use a chord, "
               "group(...) | callback, whose body gets the list of results")


@_register("chord")
class chord(Signature):
    """A group whose results, once all are in, go to a body as one list:
    ``chord(header)(body)``, ``chord(header, body)`` or ``group(...) | body``. Its result
    is the body's, with `parent` the header's GroupResult."""

    def __init__(self, header, body=None, **options):
        header = header if isinstance(header, group) else group(header)
        body = None if body is None else _as_step(maybe_signature(body), unroll=False)
        check_results_kept(header)
        Signature.__init__(self, "minitask.chord", (), {"header": header, "body": body},
                           options, subtask_type="chord")

    @classmethod
    def from_dict(cls, d):
        d = _checked_dict(d)
        kwargs = d["kwargs"]
        header = kwargs.get("header")
        if isinstance(header, dict):        # a group, or one signature
            header = maybe_signature(header)
        else:
            header = _signatures(kwargs, "header")
        sig = cls(header, kwargs.get("body"), **d["options"])
        if kwargs.get("kwargs"):            # Celery's partial kwargs for the header
            sig.kwargs["header"] = sig.tasks.clone(kwargs=kwargs["kwargs"])
        return sig

    @property
    def tasks(self):
        """The header (a group)."""
        return self.kwargs["header"]

    header = tasks

    @property
    def body(self):
        return self.kwargs["body"]

    def _partial(self, args, kwargs, options):
        if args or kwargs:
            self.kwargs["header"] = self.tasks.clone(args, kwargs)
        self.options.update(options)
        return self

    def _with_body(self, body):
        if body is None and self.body is None:
            raise ConfigurationError("chord(header) needs a body: chord(header)(body) or "
                                     "chord(header, body)")
        if body is None:
            return self
        sig = self.clone()
        sig.kwargs["body"] = _as_step(maybe_signature(body), unroll=False)
        return sig

    def _settled(self):
        sig = self._with_body(None)
        options = dict(sig.options)
        body = sig.body.clone()
        task_id = options.pop("task_id", None)
        if task_id:
            body.set(task_id=task_id)
        for callback in as_list(options.pop("link", None)):
            body.link(maybe_signature(callback).clone())
        for errback in as_list(options.pop("link_error", None)):
            body.link_error(maybe_signature(errback).clone())
        header = sig.tasks.clone(**options)._settled()
        return chord(header, body.set(**options)._settled())

    def __or__(self, other):
        other = _operand(other)
        if other is None:
            return NotImplemented
        body = other if self.body is None else self.body | other
        return chord(self.tasks, body, **self.options)

    __ior__ = __or__

    def __call__(self, body=None, **options):
        return self._with_body(body).apply_async(**options)

    def link(self, callback):
        """Call `callback` with the body's result; returns `callback`."""
        return self.body.link(callback)

    def link_error(self, errback):
        """The body's errback: called when the body fails, or cannot run because a header
        task failed (Celery's default, task_allow_error_cb_on_chord_header=False)."""
        return self.body.link_error(errback)

    def set_immutable(self, immutable):
        self.tasks.set_immutable(immutable)

    def apply_async(self, args=None, kwargs=None, body=None, **options):
        return Signature.apply_async(self._with_body(body), args, kwargs, **options)

    def freeze(self, _id=None):
        sig = self._with_body(None)
        header_result = sig.tasks.freeze()
        body_result = sig.body.freeze(_id)
        root_result(body_result).parent = header_result
        waiting = [entry.id for entry in entries(sig.body)]
        for final in finals(sig.tasks):
            final.options["chord"] = waiting
        return body_result

    def apply(self, args=None, kwargs=None, body=None, **options):
        return Signature.apply(self._with_body(body), args, kwargs, **options)

    def __repr__(self):
        return "chord(%r, %r)" % (self.tasks, self.body)


class _basemap(Signature):
    """A call of a built-in task that runs another task once per item, in one message."""

    _task_name = None

    def __init__(self, task, it, **options):
        Signature.__init__(self, self._task_name, (),
                           {"task": maybe_signature(task), "it": list(it)}, options,
                           subtask_type=self._kind, immutable=True)

    @classmethod
    def from_dict(cls, d):
        d = _checked_dict(d)
        return cls(d["kwargs"].get("task"), d["kwargs"].get("it") or (), **d["options"])


@_register("xmap")
class xmap(_basemap):
    """``task.map(it)``: one message; the built-in task minitask.map calls the task on each
    item in turn and returns the list (sequential, unlike a group)."""

    _task_name, _kind = "minitask.map", "xmap"

    def __repr__(self):
        return "[%s(x) for x in %s]" % (self.kwargs["task"].task, _short(self.kwargs["it"]))


@_register("xstarmap")
class xstarmap(_basemap):
    """``task.starmap(it)``: as `xmap`, each item being an argument tuple."""

    _task_name, _kind = "minitask.starmap", "xstarmap"

    def __repr__(self):
        return "[%s(*x) for x in %s]" % (self.kwargs["task"].task, _short(self.kwargs["it"]))


@_register("chunks")
class chunks(Signature):
    """``task.chunks(it, n)``: the argument tuples of `it` in parts of `n`, each part one
    `xstarmap` message; it runs as ``.group()``, a group of those."""

    def __init__(self, task, it, n, **options):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigurationError("chunks(): n=%r: expected a whole number >= 1" % (n,))
        Signature.__init__(self, "minitask.chunks", (),
                           {"task": maybe_signature(task), "it": list(it), "n": n}, options,
                           subtask_type="chunks", immutable=True)

    @classmethod
    def from_dict(cls, d):
        d = _checked_dict(d)
        kwargs = d["kwargs"]
        return cls(kwargs.get("task"), kwargs.get("it") or (), kwargs.get("n"),
                   **d["options"])

    def group(self):
        """The group this runs as: one `xstarmap` per part."""
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        return group([xstarmap(task, items[start:start + n])
                      for start in range(0, len(items), n)], **self.options)

    def __call__(self, **options):
        return self.apply_async(**options)

    def freeze(self, _id=None):
        return self.group().freeze(_id)

    def _settled(self):
        return self.group()._settled()

    def __repr__(self):
        return "%s.chunks(%s, %d)" % (self.kwargs["task"].task, _short(self.kwargs["it"]),
                                      self.kwargs["n"])


def signature(varies, *args, **kwargs):
    """A signature: of a task or a task name (``signature("tasks.add", args=(2, 2),
    countdown=10)``), or rebuilt from its dict form (a copy when given a signature)."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        return Signature.from_dict(varies)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d):
    """`d` as a signature: itself if it is one, rebuilt if it is its dict form; None stays
    None. Anything else is a ConfigurationError."""
    if d is None or isinstance(d, Signature):
        return d
    if isinstance(d, dict):
        return Signature.from_dict(d)
    raise ConfigurationError("%r: expected a signature (task.s(...)) or its dict form" % (d,))


def send(sig, args=None, kwargs=None, options=None):
    """Send workflow `sig` (any signature) with partial arguments and call options: assign
    every task id, build the messages, publish them; returns the result of the workflow."""
    from .sending import send_workflow  # sending imports this module
    workflow = sig.clone(args, kwargs, **(options or {}))._settled()
    result = workflow.freeze()
    send_workflow(workflow)
    return result


# -- the tasks of a workflow, as the sending side needs them ---------------------------------

def entries(sig):
    """The signatures whose messages start `sig`: a chain's first task, a group's members, a
    chord's header (its body waits, and starts when the header is done; at once when the
    header is empty)."""
    if isinstance(sig, chain):
        return entries(sig.tasks[0]) if sig.tasks else []
    if isinstance(sig, group):
        return [entry for member in sig.tasks for entry in entries(member)]
    if isinstance(sig, chord):          # with an empty header, the body starts at once
        return entries(sig.tasks) or entries(sig.body)
    if isinstance(sig, chunks):
        return entries(sig.group())
    return [sig]


def finals(sig):
    """The signatures whose results are `sig`'s result: a chain's last task, a group's
    members, a chord's body."""
    if isinstance(sig, chain):
        return finals(sig.tasks[-1]) if sig.tasks else []
    if isinstance(sig, group):
        return [final for member in sig.tasks for final in finals(member)]
    if isinstance(sig, chord):
        return finals(sig.body)
    if isinstance(sig, chunks):
        return finals(sig.group())
    return [sig]


def result_ids(sig):
    """The id of `sig`'s result, or for a group the list of its members' (nested alike)."""
    if isinstance(sig, chain):
        return result_ids(sig.tasks[-1])
    if isinstance(sig, group):
        return [result_ids(member) for member in sig.tasks]
    if isinstance(sig, chord):
        return result_ids(sig.body)
    if isinstance(sig, chunks):
        return result_ids(sig.group())
    return sig.id


def task_ids(sig):
    """Every task id `sig` would run, its callbacks' included (not its errbacks')."""
    if isinstance(sig, (chain, group)):
        return [task_id for part in sig.tasks for task_id in task_ids(part)]
    if isinstance(sig, chord):
        return task_ids(sig.tasks) + task_ids(sig.body)
    if isinstance(sig, chunks):
        return task_ids(sig.group())
    return [sig.id] + [task_id for callback in as_list(sig.options.get("link"))
                       for task_id in task_ids(maybe_signature(callback))]


def holds_chord(sig):
    """Whether a chord is anywhere in `sig`: its parts, callbacks or errbacks."""
    if isinstance(sig, chord):
        return True
    if isinstance(sig, (chain, group)):
        parts = sig.tasks
    else:
        parts = []
    parts = list(parts) + [maybe_signature(callback) for name in ("link", "link_error")
                           for callback in as_list(sig.options.get(name))]
    return any(holds_chord(part) for part in parts)


# -- checks made when a workflow is built ----------------------------------------------------

def check_results_kept(header):
    """Refuse a chord whose body would wait for a result that is never stored."""
    for final in finals(header):
        task = final._local_type()
        if task is not None and task.ignore_result:
            raise ConfigurationError(
                "chord: header task %s has ignore_result=True, so the body would never get "
                "its result; set ignore_result=False on it, or use a group" % final.task)


def check_errback(errback):
    """Refuse an errback minitask could not call as a Celery user means it.

    Its message is built when the task it belongs to is sent (so the broker can publish it
    without decoding anything), hence: it is called with the failed task's id first, not
    Celery 5's in-worker ``(request, exc, traceback)`` (the error is
    ``AsyncResult(task_id).result``); and a relative countdown or expiry would count from that
    send, not from the failure, so it takes an eta or a datetime instead.
    """
    for entry in entries(errback):
        _check_prebuilt(entry)
    if errback.subtask_type:
        return
    task = errback._local_type()
    if task is None:
        return
    from .task import check_arguments  # task imports this module
    args = errback.args if errback.immutable else ("<failed task id>",) + errback.args
    try:
        check_arguments(task, args, errback.kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            "link_error %r: %s; an errback is called with the failed task's id first "
            "(errback(task_id, ...)), not Celery's (request, exc, traceback): read the error "
            "with AsyncResult(task_id)" % (errback, exc)) from None


def _check_prebuilt(errback):
    relative = ["countdown"] if errback.options.get("countdown") is not None else []
    expires = errback.options.get("expires", getattr(errback._local_type(), "expires", None))
    if expires is not None and not isinstance(expires, datetime.datetime):
        relative.append("expires")
    if relative:
        raise ConfigurationError(
            "link_error %r: %s would count from when the failing task is sent, not from its "
            "failure (errback messages are built then); give an eta or a datetime instead"
            % (errback, " and ".join(relative)))


# -- helpers ---------------------------------------------------------------------------------

def root_result(result):
    """The first result of a linked workflow result (whose parent is still unset)."""
    while result.parent is not None:
        result = result.parent
    return result


def _chained(steps, other):
    """`steps` (a chain's) followed by `other`, under Celery's ``|`` rules: a new list."""
    other = _as_step(other)
    if isinstance(other, chain):
        for step in other._distributed():
            steps = _chained(steps, step)
        return steps
    if steps and isinstance(steps[-1], group):
        return steps[:-1] + [chord(steps[-1], other)]
    if steps and isinstance(steps[-1], chord):
        last = steps[-1]
        body = other if last.body is None else last.body | other
        return steps[:-1] + [chord(last.tasks, body, **last.options)]
    return steps + [other]


def _as_step(sig, unroll=True):
    """`sig` as a part of a workflow: a group of one is its member (in a chain), chunks are
    their group."""
    sig = maybe_signature(sig)
    if isinstance(sig, chunks):
        sig = sig.group()
    if unroll and isinstance(sig, group) and len(sig.tasks) == 1:
        member = sig.tasks[0].clone()
        return member.set(**{k: v for k, v in sig.options.items() if k != "task_id"})
    return sig


def _flattened(nested):
    """The members of a group inside a group, with that group's options given to them."""
    options = {k: v for k, v in nested.options.items() if k != "task_id"}
    members = []
    for member in nested.tasks:
        member = member.clone()
        for errback in as_list(options.get("link_error")):
            member.link_error(maybe_signature(errback).clone())
        members.append(member.set(**{k: v for k, v in options.items() if k != "link_error"}))
    return members


def _operand(other):
    if isinstance(other, Signature):
        return other
    if isinstance(other, dict) and "task" in other:
        return Signature.from_dict(other)
    return None


def _append_option(sig, name, value):
    items = as_list(sig.options.get(name))
    if value not in items:
        items.append(value)
    sig.options[name] = items
    return value


def as_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def public_options(options):
    """Call options without the ones the canvas keeps for itself."""
    return {name: value for name, value in options.items() if name not in _INTERNAL_OPTIONS}


def _checked_dict(d):
    """A copy of signature dict `d` with its fields checked and normalised (args a tuple)."""
    task = d.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError("signature %s: task %r: expected a task name"
                                 % (_short(d), task))
    args, kwargs, options = d.get("args") or (), d.get("kwargs") or {}, d.get("options") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) \
            or not isinstance(options, dict):
        raise ConfigurationError("signature of %s: expected args a list, kwargs and options "
                                 "dicts" % task)
    options = dict(options)
    for name in ("link", "link_error"):         # callbacks come back as signatures too
        if options.get(name) is not None:
            options[name] = [maybe_signature(sig) for sig in as_list(options[name])]
    return {"task": task, "args": tuple(args), "kwargs": dict(kwargs), "options": options,
            "subtask_type": d.get("subtask_type"),
            "immutable": bool(d.get("immutable", False))}


def _signatures(kwargs, key):
    parts = kwargs.get(key)
    if parts is None or isinstance(parts, (str, dict)) or not hasattr(parts, "__iter__"):
        raise ConfigurationError("signature kwargs[%r] %s: expected a list of signatures"
                                 % (key, _short(parts)))
    return [maybe_signature(part) for part in parts]


def _copied(value):
    """`value` with every signature, dict and list in it copied (other values shared)."""
    if isinstance(value, Signature):
        return value.clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


def _plain(value):
    """`value` with every signature in it as a plain dict (containers kept as they are)."""
    if isinstance(value, Signature):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def _short(value, limit=100):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."

