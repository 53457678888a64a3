"""The default kwargs rule of SPEC "Default keyword arguments", over generated signatures:
a function that takes ``**kwargs`` gets all five (logfile, loglevel, task_id, task_name,
task_retries); any other gets exactly those it names as (keyword-passable) parameters, and
none that it does not. Checked on `default_kwargs_for` directly, on signatures given through
``__signature__``, and on real functions (built with ``exec``) run by `run_task`.

And the other way: a task hands them back to `retry()` as early Celery's guide does, spread
as keywords (``retry(args, exc=exc, **kwargs)``), inside ``kwargs=``, both or neither; the
retry takes its id and count from them and sends none of them on."""
import inspect

from hypothesis import given
from hypothesis import strategies as st

from minitask.exceptions import ConfigurationError
from minitask.message import TaskMessage
from minitask.options import is_call_option
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


# -- retry(): wherever the default kwargs arrive, they decide the id and count, never the kwargs

PLACES = ("keywords", "kwargs", "both", "absent")
USER_KWARGS = st.dictionaries(st.sampled_from(("x", "y", "data", "name", "colour")),
                              st.integers() | st.text(max_size=5), max_size=3)


class _Recorder:
    def __init__(self):
        self.published = []

    def publish(self, data):
        self.published.append(TaskMessage.decode(data))


class _RetryProbe(Task):
    """Retries as `plan` says: default kwargs spread as keywords, inside kwargs=, or not."""

    name = "tests.property.retry_probe"
    plan = None

    def run(self, **received):
        plan = _RetryProbe.plan
        keywords = {n: received[n] for n in DEFAULT_KWARG_NAMES
                    if plan["places"][n] in ("keywords", "both")}
        keywords.update({n: v for n, v in plan["told"].items() if n in keywords})
        inside = None
        if plan["pass_kwargs"]:
            inside = dict(plan["user"])
            inside.update({n: plan["told"].get(n, received[n]) for n in DEFAULT_KWARG_NAMES
                           if plan["places"][n] in ("kwargs", "both")})
        self.retry(kwargs=inside, **dict(keywords, **plan["publish"]))


@given(places=st.fixed_dictionaries({n: st.sampled_from(PLACES) for n in DEFAULT_KWARG_NAMES}),
       told=st.fixed_dictionaries({}, optional={"task_id": st.sampled_from(("told-1", "told-2")),
                                                "task_retries": st.integers(0, 2)}),
       pass_kwargs=st.booleans(), user=USER_KWARGS, sent=USER_KWARGS,
       publish=st.fixed_dictionaries({}, optional={"priority": st.integers(0, 9),
                                                   "routing_key": st.sampled_from(("a", "b"))}))
def test_retry_takes_the_default_kwargs_out_wherever_they_arrive(places, told, pass_kwargs,
                                                                 user, sent, publish):
    from minitask import transport
    _RetryProbe.plan = {"places": places, "told": told, "pass_kwargs": pass_kwargs,
                        "user": user, "publish": publish}
    recorder = _Recorder()
    saved = transport.connection
    transport.connection = lambda *a, **k: recorder
    try:
        message = TaskMessage(_RetryProbe.name, (), sent, id="from-request", retries=1)
        outcome = run_task(_RetryProbe._instance(), message, logfile="w.log", loglevel="INFO")
    finally:
        transport.connection = saved
    assert outcome.state == "RETRY", outcome.traceback
    [resent] = recorder.published
    def given(name):    # what retry() was told, if it was told anything but the truth
        arrives = places[name] in ("keywords", "both") or (
            pass_kwargs and places[name] == "kwargs")
        return told.get(name) if arrives else None

    given_id, given_count = given("task_id"), given("task_retries")
    assert resent.id == (given_id or "from-request")
    assert resent.retries == (1 if given_count is None else given_count) + 1
    assert resent.kwargs == (user if pass_kwargs else sent)
    assert not set(resent.kwargs) & set(DEFAULT_KWARG_NAMES)
    assert (resent.priority, resent.routing_key) == (
        publish.get("priority"), publish.get("routing_key", "minitask"))


@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda n: n not in DEFAULT_KWARG_NAMES + ("args", "kwargs", "exc", "countdown", "eta",
                                              "max_retries") and not is_call_option(n)))
def test_retry_refuses_any_other_keyword_naming_it(name):
    probe = TaskType("Refusing", (Task,), {"abstract": True, "name": "tests.property.refusing",
                                          "run": lambda self, **kw: self.retry(**{name: 1})})
    outcome = run_task(probe(), TaskMessage("tests.property.refusing", id="r"))
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, ConfigurationError)
    assert repr(name) in str(outcome.result)
