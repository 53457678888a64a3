"""The default kwargs rule of SPEC "Default keyword arguments", over generated signatures:
a function that takes ``**kwargs`` gets all five (logfile, loglevel, task_id, task_name,
task_retries); any other gets exactly those it names as (keyword-passable) parameters, and
none that it does not. Checked on `default_kwargs_for` directly, on signatures given through
``__signature__``, and on real functions (built with ``exec``) run by `run_task`."""
import inspect

from hypothesis import given
from hypothesis import strategies as st

from minitask.message import TaskMessage
from minitask.task import DEFAULT_KWARG_NAMES, Task, TaskType, default_kwargs_for
from minitask.worker.execution import run_task

P = inspect.Parameter
OTHER_NAMES = ("x", "y", "data", "name", "task", "retries", "log", "kwargs", "args", "opts")
DEFAULTS = {"logfile": "/var/log/w.log", "loglevel": "INFO", "task_id": "id-42",
            "task_name": "tests.property.probe", "task_retries": 3}

# Positional-only and *args parameters cannot take a keyword argument, so they are drawn
# from the other names only: "names it as a parameter" is then unambiguous.
KEYWORD_KINDS = (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)


@st.composite
def signatures(draw):
    """An ordered, valid parameter list: (name, kind) pairs with unique names."""
    names = draw(st.lists(st.sampled_from(DEFAULT_KWARG_NAMES + OTHER_NAMES), unique=True,
                          max_size=9))
    default_names = [n for n in names if n in DEFAULT_KWARG_NAMES]
    other_names = [n for n in names if n not in DEFAULT_KWARG_NAMES]
    params = [(n, draw(st.sampled_from(KEYWORD_KINDS))) for n in default_names]
    for name in other_names:
        params.append((name, draw(st.sampled_from(
            (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY, P.VAR_POSITIONAL,
             P.VAR_KEYWORD)))))
    # At most one *args and one **kwargs, and keyword-only parameters need a * before them
    # only in source code; inspect.Signature just wants the kinds in order.
    seen_var = set()
    unique = []
    for name, kind in params:
        if kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if kind in seen_var:
                kind = P.POSITIONAL_OR_KEYWORD
            seen_var.add(kind)
        unique.append((name, kind))
    order = draw(st.permutations(unique))
    return sorted(order, key=lambda item: item[1])


def expected(params):
    if any(kind == P.VAR_KEYWORD for _, kind in params):
        return dict(DEFAULTS)
    named = {name for name, kind in params if kind in KEYWORD_KINDS}
    return {name: value for name, value in DEFAULTS.items() if name in named}


def source_of(params):
    """``def probe(...): return locals()`` for these parameters, every one with a default."""
    parts, star_done = [], False
    positional_only = sum(1 for _, kind in params if kind == P.POSITIONAL_ONLY)
    for index, (name, kind) in enumerate(params):
        if kind == P.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if kind == P.VAR_POSITIONAL:
            parts.append("*" + name)
            star_done = True
        elif kind == P.VAR_KEYWORD:
            parts.append("**" + name)
        else:
            parts.append(name + "=None")
        if index + 1 == positional_only:     # params are sorted by kind: these come first
            parts.append("/")
    return "def probe(%s):\n    return dict(locals())\n" % ", ".join(parts)


def build(params):
    namespace = {}
    exec(source_of(params), namespace)
    return namespace["probe"]


def received_defaults(params, local_values):
    """The default kwargs a call actually received, read back from its locals()."""
    got = {}
    for name, kind in params:
        if kind == P.VAR_KEYWORD:
            got.update({k: v for k, v in local_values[name].items() if k in DEFAULTS})
        elif kind != P.VAR_POSITIONAL and name in DEFAULTS and local_values[name] is not None:
            got[name] = local_values[name]
    return got


@given(signatures())
def test_default_kwargs_follow_the_rule_for_a_signature_given_by_dunder_signature(params):
    def probe(*args, **kwargs):
        return None

    probe.__signature__ = inspect.Signature([P(name, kind) for name, kind in params])
    assert default_kwargs_for(probe, DEFAULTS) == expected(params)


@given(signatures())
def test_default_kwargs_follow_the_rule_for_real_functions(params):
    probe = build(params)
    offered = default_kwargs_for(probe, DEFAULTS)
    assert offered == expected(params)
    received = received_defaults(params, probe(**offered))   # never a TypeError
    assert received == offered


@given(signatures())
def test_run_task_passes_exactly_the_default_kwargs_the_rule_gives(params):
    probe_cls = TaskType("Probe", (Task,), {"abstract": True, "name": DEFAULTS["task_name"],
                                            "run": staticmethod(build(params))})
    message = TaskMessage(DEFAULTS["task_name"], (), {}, id=DEFAULTS["task_id"],
                          retries=DEFAULTS["task_retries"])
    outcome = run_task(probe_cls(), message, logfile=DEFAULTS["logfile"],
                       loglevel=DEFAULTS["loglevel"])
    assert outcome.state == "SUCCESS", outcome.traceback
    assert received_defaults(params, outcome.result) == expected(params)
