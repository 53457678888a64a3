"""minitask.canvas without a broker: signatures, `|`, chains, groups, chords, map, starmap,
chunks, link and link_error, run eagerly (apply() and ALWAYS_EAGER alike), their dict form,
and the messages a workflow is sent as (`minitask.sending.compose_signature`), decoded."""

import json
import pickle

import pytest

import minitask
from minitask import (
    AsyncResult, EagerResult, GroupResult, Signature, chain, chord, chunks, config, group,
    protocol, signature, subtask, task, transport, xmap, xstarmap,
)
from minitask.exceptions import ChordError, ConfigurationError, NotRegistered, \
    SerializationError
from minitask.message import TaskMessage
from minitask.result import workflow_ids
from minitask.sending import compose_signature, compose_unlocked, errbacks_of
from minitask.transport import builtin, memory

from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")

ran = []                                # (task, args) of every call of the tasks below


@pytest.fixture(autouse=True)
def clear_ran():
    ran.clear()


@pytest.fixture(params=["apply", "always_eager"])
def run(request, no_broker):
    """Run a workflow eagerly both ways: ``.apply()``, and ``.apply_async()`` under
    ALWAYS_EAGER."""
    if request.param == "apply":
        return lambda sig, *args: sig.apply(args)
    config.configure(ALWAYS_EAGER=True)
    return lambda sig, *args: sig.apply_async(args)


@task(name="tests.canvas.add")
def add(x, y):
    ran.append(("add", (x, y)))
    return x + y


@task(name="tests.canvas.mul")
def mul(x, y):
    ran.append(("mul", (x, y)))
    return x * y


@task(name="tests.canvas.tsum")
def tsum(numbers):
    ran.append(("tsum", (numbers,)))
    return sum(numbers)


class Boom(Exception):
    pass


@task(name="tests.canvas.fail")
def fail(*args):
    ran.append(("fail", args))
    raise Boom("boom %r" % (args,))


@task(name="tests.canvas.log_error")
def log_error(task_id, tag=None):
    """Celery's documented errback: it takes the failed task's id."""
    ran.append(("log_error", (task_id, tag)))
    return task_id


@task(name="tests.canvas.quiet", ignore_result=True)
def quiet(x):
    return x


# -- signatures ---------------------------------------------------------------------------------

def test_a_signature_is_celerys_dict_and_json_as_it_stands():
    sig = add.signature((2, 2), {"z": 1}, countdown=10)
    assert isinstance(sig, dict) and isinstance(sig, Signature)
    assert dict(sig) == {"task": "tests.canvas.add", "args": (2, 2), "kwargs": {"z": 1},
                         "options": {"countdown": 10}, "subtask_type": None,
                         "immutable": False}
    assert json.loads(json.dumps(sig))["args"] == [2, 2]
    assert (sig.name, sig.type, sig.id) == ("tests.canvas.add", add, None)


def test_s_si_signature_and_subtask_make_the_same_kind_of_thing():
    assert add.s(1, y=2) == Signature(add, (1,), {"y": 2})
    assert add.si(1, 2).immutable and not add.s(1, 2).immutable
    assert add.signature((1, 2), immutable=True) == add.si(1, 2)
    assert signature("tests.canvas.add", args=(1, 2), countdown=5).options == {"countdown": 5}
    assert subtask is signature and add.subtask((1, 2)) == add.s(1, 2)
    assert repr(add.s(2, y=3)) == "tests.canvas.add(2, y=3)"


def test_partial_arguments_are_prepended_kwargs_merged_and_an_immutable_one_keeps_its_own():
    partial = add.s(2)
    assert partial.clone((4,)).args == (4, 2)
    assert add.s(1, z=1).clone(kwargs={"z": 2, "w": 3}).kwargs == {"z": 2, "w": 3}
    frozen = add.si(1, 2).clone((9,), {"z": 1}, countdown=3)
    assert (frozen.args, frozen.kwargs, frozen.options) == ((1, 2), {}, {"countdown": 3})


def test_clone_copies_options_so_the_original_is_untouched():
    sig = add.s(1, 1)
    sig.link(mul.s(2))
    copy = sig.clone()
    copy.link(mul.s(3))
    copy.set(countdown=1)
    assert len(sig.options["link"]) == 1 and "countdown" not in sig.options
    assert copy is not sig and signature(sig) == sig and signature(sig) is not sig


def test_set_link_link_error_and_on_error_return_what_celery_returns():
    sig = add.s(1, 1)
    assert sig.set(countdown=5) is sig and sig.options["countdown"] == 5
    callback, errback = mul.s(2), log_error.s()
    assert sig.link(callback) is callback and sig.link_error(errback) is errback
    assert sig.on_error(log_error.s("x")) is sig
    assert sig.options["link"] == [callback] and len(sig.options["link_error"]) == 2


def test_calling_a_signature_calls_the_function_here_and_delay_adds_arguments(run):
    assert add.s(2)(3) == 5 and add.si(2, 3)(9) == 5
    assert ran == [("add", (3, 2)), ("add", (2, 3))]
    result = run(add.s(2), 3)
    assert isinstance(result, EagerResult) and result.get() == 5


def test_delay_of_a_signature_under_always_eager_runs_it_here(no_broker):
    config.configure(ALWAYS_EAGER=True)
    assert add.s(1).delay(2).get() == 3 and add.si(1, 1).delay(5).get() == 2


def test_a_signature_of_a_task_not_registered_here_is_by_name_and_cannot_run_here():
    sig = signature("elsewhere.task", args=(1,))
    with pytest.raises(NotRegistered):
        sig.apply()


@pytest.mark.parametrize("bad, message", [
    (lambda: signature(5), "signature task 5: expected a task or a task name"),
    (lambda: signature({"task": ""}), "task '': expected a task name"),
    (lambda: signature({"task": "x", "args": "ab"}), "expected args a list"),
    (lambda: signature({"task": "x", "subtask_type": "weird"}),
     "subtask_type 'weird': expected one of chain, chord, chunks, group, xmap, xstarmap"),
    (lambda: signature({"task": "minitask.chain", "subtask_type": "chain", "kwargs": {}}),
     "kwargs\\['tasks'\\] None: expected a list of signatures"),
    (lambda: add.s(1, 1) | 5, "unsupported operand"),
    (lambda: add.chunks([(1, 1)], 0), "n=0: expected a whole number >= 1"),
    (lambda: group(add.s(1, 1), "not a signature"), "'not a signature': expected a signature"),
    (lambda: chord([add.s(1, 1)]).apply(), "chord\\(header\\) needs a body"),
    (lambda: chain().apply(), "an empty chain has nothing to run"),
])
def test_malformed_signatures_are_one_line_errors_naming_what_is_wrong(bad, message):
    with pytest.raises((ConfigurationError, TypeError), match=message):
        bad()


def test_a_signature_pickles_by_name_and_comes_back_equal():
    workflow = chord([add.s(1, 1), add.s(2, 2) | mul.s(2)], tsum.s())
    back = pickle.loads(pickle.dumps(workflow))
    assert back == workflow and isinstance(back, chord) and back.body.type is tsum


# -- | as Celery combines -----------------------------------------------------------------------

def test_sig_or_sig_is_a_chain_and_chains_flatten_whichever_side_they_are_on():
    two = add.s(1, 1) | mul.s(2)
    assert isinstance(two, chain) and two.tasks == [add.s(1, 1), mul.s(2)]
    assert (two | add.s(3)).tasks == [add.s(1, 1), mul.s(2), add.s(3)]
    assert (add.s(0, 0) | two).tasks == [add.s(0, 0), add.s(1, 1), mul.s(2)]
    assert len((two | (add.s(3) | add.s(4))).tasks) == 4
    assert chain(add.s(1, 1), mul.s(2)) == chain([add.s(1, 1), mul.s(2)]) == two
    assert chain(sig for sig in (add.s(1, 1), mul.s(2))) == two
    assert repr(two) == "tests.canvas.add(1, 1) | tests.canvas.mul(2)"


def test_a_group_followed_by_anything_becomes_a_chord_and_a_chord_takes_what_follows():
    header = group(add.s(1, 1), add.s(2, 2))
    upgraded = header | tsum.s()
    assert isinstance(upgraded, chord) and upgraded.body == tsum.s()
    longer = upgraded | add.s(10)
    assert isinstance(longer, chord) and longer.body == (tsum.s() | add.s(10))
    in_chain = add.s(1, 1) | header | tsum.s()
    assert isinstance(in_chain, chain) and isinstance(in_chain.tasks[-1], chord)
    assert chain(header, tsum.s()).tasks[0] == upgraded


def test_a_group_of_one_in_a_chain_is_its_task_and_groups_inside_groups_flatten():
    assert (add.s(1, 1) | group(mul.s(2))).tasks == [add.s(1, 1), mul.s(2)]
    nested = group(add.s(1, 1), group(add.s(2, 2), add.s(3, 3)))
    assert nested.tasks == [add.s(1, 1), add.s(2, 2), add.s(3, 3)] and len(nested) == 3


def test_a_plain_signature_dict_combines_on_either_side():
    as_dict = json.loads(json.dumps(mul.s(2)))
    assert (add.s(1, 1) | as_dict).tasks[1] == mul.s(2)
    assert (as_dict | add.s(1)).tasks[0] == mul.s(2)


# -- chains, eagerly ----------------------------------------------------------------------------

def test_a_chain_passes_each_result_on_and_its_result_has_parents_back_to_the_first(run):
    result = run(add.s(4, 4) | mul.s(8) | mul.s(10))
    assert result.get() == 640
    assert result.parent.get() == 64 and result.parent.parent.get() == 8
    assert result.parent.parent.parent is None


def test_a_partial_chain_takes_its_arguments_and_immutable_links_take_none(run):
    assert run(add.s(4) | mul.s(8), 16).get() == 160
    result = run(add.si(2, 2) | add.si(4, 4) | add.si(8, 8))
    assert (result.get(), result.parent.get(), result.parent.parent.get()) == (16, 8, 4)


def test_celerys_combined_chain_examples_give_celerys_answers(run):
    assert run(add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8))).get() == 352
    fanned = run(add.s(4, 4) | group(add.si(i, i) for i in range(4)))
    assert isinstance(fanned, GroupResult) and fanned.get() == [0, 2, 4, 6]
    assert fanned.parent.get() == 8
    assert run(add.s(5, 6) | group(add.s(1) | add.s(2), add.s(3))).get() == [14, 14]


def test_a_failing_link_stops_the_chain_fails_the_rest_and_calls_link_error_once(run):
    workflow = (add.s(1, 1) | fail.s() | mul.s(2) | add.s(3)).on_error(log_error.s("chain"))
    result = run(workflow)
    failed = result.parent.parent
    assert [r.state for r in (result, result.parent, failed, failed.parent)] == [
        "FAILURE", "FAILURE", "FAILURE", "SUCCESS"]
    with pytest.raises(Boom, match=r"boom \(2,\)"):
        result.get()
    assert isinstance(result.parent.result, Boom)
    assert ran == [("add", (1, 1)), ("fail", (2,)), ("log_error", (failed.id, "chain"))]


def test_link_on_a_chain_is_called_with_the_last_result(run):
    workflow = add.s(1, 1) | mul.s(3)
    workflow.link(add.s(100))
    result = run(workflow)
    assert result.get() == 6 and [child.get() for child in result.children] == [106]


def test_task_id_on_a_chain_is_the_last_tasks_and_other_options_go_to_the_first(no_broker):
    result = (add.s(1, 1) | mul.s(2)).apply(task_id="the-last")
    assert result.id == "the-last" and result.parent.id != "the-last"
    steps = (add.s(1, 1) | mul.s(2)).clone(countdown=5, task_id="x")._settled().tasks
    assert steps[0].options == {"countdown": 5} and steps[1].options == {"task_id": "x"}


# -- groups, eagerly ----------------------------------------------------------------------------

def test_a_group_is_callable_and_gives_a_group_result_in_order(run):
    job = group(add.s(i, i) for i in range(5))
    result = run(job)
    assert isinstance(result, GroupResult) and result.id
    assert result.get() == [0, 2, 4, 6, 8] and result.join() == [0, 2, 4, 6, 8]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 5 and len(result) == 5
    result.revoke()                     # they already ran: nothing to do, nothing reached


def test_calling_a_group_and_delay_pass_partial_arguments_to_every_member(no_broker):
    config.configure(ALWAYS_EAGER=True)
    assert group(add.s(1), mul.s(2))(10).get() == [11, 20]
    assert group(add.s(1), mul.s(2)).delay(5).get() == [6, 10]


def test_a_failing_member_fails_the_group_but_every_member_runs(run):
    job = group(add.s(1, 1), fail.s(), add.s(2, 2))
    job.link_error(log_error.s("group"))
    result = run(job)
    assert result.failed() and not result.successful() and result.completed_count() == 2
    with pytest.raises(Boom):
        result.get()
    assert [name for name, _ in ran] == ["add", "fail", "log_error", "add"]
    assert ran[2][1] == (result[1].id, "group")


def test_a_group_refuses_a_callback_pointing_to_a_chord_and_link_error_in_apply_async():
    with pytest.raises(ConfigurationError, match="use a chord"):
        group(add.s(1, 1)).link(tsum.s())
    with pytest.raises(ConfigurationError, match="use a chord"):
        group(add.s(1, 1)).apply_async(link=tsum.s())
    with pytest.raises(ConfigurationError, match="group.link_error"):
        group(add.s(1, 1)).apply_async(link_error=log_error.s())


# -- chords, eagerly ----------------------------------------------------------------------------

def test_a_chord_calls_its_body_with_the_header_results_in_order(run):
    header = [add.s(i, i) for i in range(10)]
    for workflow in (chord(header, tsum.s()), group(header) | tsum.s()):
        result = run(workflow)
        assert result.get() == 90
        assert isinstance(result.parent, GroupResult) and result.parent.get() == [
            2 * i for i in range(10)]


def test_chord_header_called_with_a_body_runs_it(no_broker):
    config.configure(ALWAYS_EAGER=True)
    assert chord(add.s(i, i) for i in range(4))(tsum.s()).get() == 12
    assert ran[-1] == ("tsum", ([0, 2, 4, 6],))


def test_an_immutable_body_gets_no_results_and_an_empty_header_gives_an_empty_list(run):
    assert run(chord([add.s(1, 1)], add.si(5, 5))).get() == 10
    assert run(chord([], tsum.s())).get() == 0 and ran[-1] == ("tsum", ([],))


def test_a_chords_body_may_be_a_chain_or_a_group(run):
    assert run(chord([add.s(1, 1), add.s(2, 2)], tsum.s() | mul.s(10))).get() == 60
    assert run(chord([add.s(1, 1)], group(tsum.s(), tsum.s()))).get() == [2, 2]


def test_a_failing_header_task_fails_the_chord_naming_it_and_the_body_never_runs(run):
    workflow = chord([add.s(1, 1), fail.s(5), add.s(2, 2)], tsum.s())
    workflow.link_error(log_error.s("chord"))
    result = run(workflow)
    header = result.parent
    assert result.state == "FAILURE" and [r.state for r in header] == [
        "SUCCESS", "FAILURE", "SUCCESS"]
    with pytest.raises(ChordError) as info:
        result.get()
    message = str(info.value)
    assert "tests.canvas.fail[%s] failed: Boom('boom (5,)')" % header[1].id in message
    assert "chord body tests.canvas.tsum[%s] did not run" % result.id in message
    assert isinstance(info.value.__cause__, Boom)
    assert "tsum" not in [name for name, _ in ran]
    assert ran[-1] == ("log_error", (result.id, "chord"))


def test_a_chord_names_the_task_that_failed_first_in_a_header_chain(run):
    result = run(chord([add.s(1, 1) | fail.s() | mul.s(2)], tsum.s()))
    failed_link = result.parent[0].parent
    with pytest.raises(ChordError, match=r"header task tests.canvas.fail\[%s\]"
                       % failed_link.id):
        result.get()


def test_a_header_task_that_ignores_its_result_is_refused_when_the_chord_is_built():
    for build in (lambda: chord([add.s(1, 1), quiet.s(1)], tsum.s()),
                  lambda: group(quiet.s(1)) | tsum.s(),
                  lambda: chord([add.s(1, 1) | quiet.s()])):
        with pytest.raises(ConfigurationError, match="header task tests.canvas.quiet has "
                                                     "ignore_result=True"):
            build()
    assert chord([quiet.s(1) | add.s(1)], tsum.s())     # only the last of a chain counts


# -- map, starmap, chunks ---------------------------------------------------------------------

def test_map_and_starmap_are_one_call_of_a_built_in_task(run):
    mapped = tsum.map([range(3), range(5)])
    assert isinstance(mapped, xmap) and mapped.task == "minitask.map" and mapped.immutable
    assert run(mapped).get() == [3, 10]
    starred = add.starmap(zip(range(4), range(4)))
    assert isinstance(starred, xstarmap) and starred.task == "minitask.starmap"
    assert run(starred).get() == [0, 2, 4, 6]
    assert repr(starred) == "[tests.canvas.add(*x) for x in [(0, 0), (1, 1), (2, 2), (3, 3)]]"


def test_chunks_run_as_a_group_of_starmaps_one_list_per_part(run):
    parts = add.chunks(zip(range(10), range(10)), 4)
    assert isinstance(parts, chunks)
    as_group = parts.group()
    assert [type(member) for member in as_group.tasks] == [xstarmap] * 3
    assert run(parts).get() == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]


def test_calling_chunks_sends_them_which_under_always_eager_runs_them(no_broker):
    config.configure(ALWAYS_EAGER=True)
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2)().get() == [[2, 4], [6]]


# -- link and link_error on a task --------------------------------------------------------------

def test_link_callbacks_get_the_result_and_are_the_results_children(no_broker):
    result = add.apply((2, 2), link=[mul.s(16), add.si(0, 0)])
    assert result.get() == 4 and [child.get() for child in result.children] == [64, 0]


def test_link_error_gets_the_failed_tasks_id_in_celerys_errback_task_id_form(no_broker):
    config.configure(ALWAYS_EAGER=True)
    result = fail.apply_async((1,), link=mul.s(2), link_error=[log_error.s(), log_error.si(9)])
    assert result.failed() and result.children == ()
    assert ran[1:] == [("log_error", (result.id, None)), ("log_error", (9, None))]


def test_an_errback_taking_task_id_gets_the_id_not_the_workers_own_task_id(no_broker):
    # `task_id` is also a default keyword argument the worker offers; the positional id wins.
    # (Before Task.__call__ dropped filled defaults, this raised "multiple values".)
    result = log_error.apply(("the-failed-id",))
    assert result.get() == "the-failed-id"


def test_an_errback_celery5_style_or_with_a_relative_countdown_is_refused_when_linked():
    @task(name="tests.canvas.celery5")
    def celery5(request, exc, traceback):
        return None

    with pytest.raises(ConfigurationError, match="errback\\(task_id, ...\\).*not Celery's "
                                                 "\\(request, exc, traceback\\)"):
        add.s(1, 1).link_error(celery5.s())
    with pytest.raises(ConfigurationError, match="countdown would count from when the "
                                                 "failing task is sent"):
        add.apply((1, 1), link_error=log_error.s().set(countdown=10))


# -- the dict form, stored and rebuilt ---------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: add.s(1, y=2).set(countdown=3, queue="q"),
    lambda: add.si(1, 2).on_error(log_error.s("x")),
    lambda: add.s(4, 4) | mul.s(8) | add.s(1),
    lambda: group(add.s(1, 1), mul.s(2, 2) | add.s(1)),
    lambda: chord([add.s(1, 1), add.s(2, 2)], tsum.s() | mul.s(10)),
    lambda: tsum.map([[1, 2], [3]]),
    lambda: add.starmap([(1, 2)]),
    lambda: add.chunks([(1, 1), (2, 2), (3, 3)], 2),
])
def test_every_kind_of_signature_survives_json_and_runs_the_same_rebuilt(build, no_broker):
    workflow = build()
    text = json.dumps(workflow.to_dict())
    rebuilt = signature(json.loads(text))
    assert type(rebuilt) is type(workflow) and rebuilt == signature(json.loads(
        json.dumps(workflow)))
    assert json.dumps(rebuilt.to_dict()) == text
    assert rebuilt.apply().get() == workflow.apply().get()


def test_a_frozen_chain_keeps_its_ids_through_json():
    workflow = add.s(1, 1) | mul.s(2) | add.s(3)
    result = workflow.freeze()
    rebuilt = signature(json.loads(json.dumps(workflow)))
    assert [step.id for step in rebuilt.tasks] == [result.parent.parent.id,
                                                   result.parent.id, result.id]
    assert rebuilt.freeze().id == result.id


# -- sending: the messages, decoded ------------------------------------------------------------

class RecordingConnection:
    """Stands in for a broker connection: records what a workflow declares, publishes and
    revokes."""

    def __init__(self):
        self.calls = []
        self.declared_queues = set()

    def declare_queue(self, queue, durable=True, **options):
        self.calls.append(("declare_queue", queue))

    ensure_queue = builtin.Connection.ensure_queue

    def publish(self, message, confirm=True, timeout=None):
        self.calls.append(("publish", [message]))

    def publish_many(self, messages, window=100, timeout=None):
        self.calls.append(("publish", list(messages)))

    def publish_atomic(self, messages, timeout=None):
        self.calls.append(("publish_atomic", list(messages)))

    def revoke(self, task_ids, terminate=False, signal="SIGTERM"):
        self.calls.append(("revoke", list(task_ids)))

    def published(self):
        return [decode(data) for name, batch in self.calls
                if name in ("publish", "publish_atomic") for data in batch]


def decode(data):
    if not isinstance(data, (bytes, bytearray)):
        data = protocol.encode_message(data)
    return TaskMessage.from_bytes(data)


@pytest.fixture
def sent(monkeypatch):
    conn = RecordingConnection()
    monkeypatch.setattr(transport, "connection", lambda settings=None: conn)
    return conn


def test_workflows_cross_the_transport_seam_as_encoded_messages(monkeypatch):
    """Through the in-memory transport (a real one, in this process): what a consumer gets
    decodes to the workflow's messages, headers and body keys included."""
    name = "canvas-%d" % id(monkeypatch)
    memory.open_broker(name)
    settings = config.Settings({"BROKER_URL": "memory://" + name})
    conn = transport.client_for(settings).connect()
    consumer = None
    try:
        transport.declare_topology(conn, config.get_settings())
        monkeypatch.setattr(transport, "connection", lambda settings=None: conn)
        chained = (add.s(1, 1) | mul.s(2)).on_error(log_error.s()).apply_async()
        grouped = group(add.s(i, i) for i in range(3)).apply_async()
        consumer = transport.consumer_for(settings, ["minitask"], 10,
                                          {"hostname": "w", "queues": ["minitask"]}, "w")
        consumer.resume()
        deliveries = consumer.connect() + consumer.read()
        messages = {m.id: m for m in (TaskMessage.from_bytes(d.data) for d in deliveries)}
        assert set(messages) == {chained.parent.id} | {r.id for r in grouped}
        first = messages[chained.parent.id]
        assert first.chain[0]["options"]["task_id"] == chained.id
        assert [decode(e).args for e in errbacks_of(first.headers)] == [(first.id,)]
    finally:
        if consumer is not None:
            consumer.close()
        conn.close()
        memory.drop_broker(name)


def test_a_group_is_published_in_one_pipelined_batch(sent):
    result = group(add.s(i, i) for i in range(5)).apply_async()
    assert [name for name, _ in sent.calls] == ["publish"]
    assert [m.id for m in sent.published()] == [r.id for r in result]
    assert [m.args for m in sent.published()] == [(i, i) for i in range(5)]


def test_a_chain_sends_its_first_task_carrying_the_rest_with_their_ids(sent):
    result = (add.s(2, 2) | mul.s(8) | add.s(1)).apply_async()
    [first] = sent.published()
    assert isinstance(result, AsyncResult) and first.id == result.parent.parent.id
    assert (first.task, first.args, first.callbacks, first.chord) == (
        "tests.canvas.add", (2, 2), None, None)
    assert [(s["task"], s["args"], s["options"]["task_id"]) for s in first.chain] == [
        ("tests.canvas.mul", [8], result.parent.id), ("tests.canvas.add", [1], result.id)]
    assert first.headers == {"x-chain": [result.parent.id, result.id]}


def test_what_a_chain_link_unlocks_is_the_next_link_with_the_result_first(sent):
    result = (add.s(2, 2) | mul.s(8) | add.si(1, 1)).apply_async()
    [first] = sent.published()
    [second], _ = compose_unlocked(first, 4)
    assert (second.id, second.args, len(second.chain)) == (result.parent.id, (4, 8), 1)
    assert second.headers == {"x-chain": [result.id]}
    [third], _ = compose_unlocked(second, 32)
    assert (third.id, third.args, third.chain, third.headers) == (result.id, (1, 1), None,
                                                                   None)


def test_link_and_link_error_travel_as_callbacks_and_prebuilt_errback_messages(sent):
    config.configure(QUEUES={"default": {"exchange": "minitask", "binding_key": "minitask"}})
    result = add.apply_async((1, 2), link=mul.s(10),
                             link_error=[log_error.s("a").set(queue="errors"),
                                         log_error.si("only", "mine")])
    [message] = sent.published()
    assert message.id == result.id
    assert [c["task"] for c in message.callbacks] == ["tests.canvas.mul"]
    assert message.callbacks[0]["options"]["task_id"] == result.links[0].id
    errbacks = [decode(data) for data in errbacks_of(message.headers)]
    assert [(e.task, e.args, e.routing_key) for e in errbacks] == [
        ("tests.canvas.log_error", (result.id, "a"), "errors"),
        ("tests.canvas.log_error", ("only", "mine"), "minitask")]
    assert ("declare_queue", "errors") in sent.calls        # before the errback may be needed
    [callback], _ = compose_unlocked(message, 3)
    assert (callback.task, callback.args, callback.id) == ("tests.canvas.mul", (3, 10),
                                                           result.links[0].id)


def test_a_chains_errback_is_built_for_each_link_with_that_links_id(sent):
    result = (add.s(1, 1) | mul.s(2)).on_error(log_error.s()).apply_async()
    [first] = sent.published()
    [errback] = [decode(data) for data in errbacks_of(first.headers)]
    [second], _ = compose_unlocked(first, 2)
    [second_errback] = [decode(data) for data in errbacks_of(second.headers)]
    assert errback.args == (result.parent.id,) and second_errback.args == (result.id,)
    assert errback.id != second_errback.id


def test_send_task_takes_link_and_link_error_too(sent):
    result = minitask.send_task("elsewhere.task", (1,), link=mul.s(2),
                                link_error=log_error.s())
    [message] = sent.published()
    assert (message.task, message.id, len(message.callbacks)) == ("elsewhere.task", result.id,
                                                                  1)
    assert len(errbacks_of(message.headers)) == 1


def test_a_chord_is_composed_as_a_parked_body_and_header_tasks_naming_it(no_broker):
    workflow = chord([add.s(1, 1), add.s(2, 2) | mul.s(3)], tsum.s())._settled()
    result = workflow.freeze()
    body, first, second = compose_signature(workflow)[0]
    header_ids = [result.parent[0].id, result.parent[1].id]
    assert (body.id, body.args, body.chord) == (result.id, (), {"results": header_ids})
    assert body.headers == {"x-chord-wait": header_ids}
    assert first.headers == {"x-chord": [result.id]}
    assert second.headers == {"x-chain": [header_ids[1]]}       # its chain's last waits
    assert second.chain[0]["options"] == {"task_id": header_ids[1], "chord": [result.id]}
    [last], _ = compose_unlocked(second, 4)
    assert last.headers == {"x-chord": [result.id]}


def test_a_chord_body_that_is_a_group_parks_every_member_with_nested_results(no_broker):
    workflow = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)],
                     group(tsum.s(), tsum.s()))._settled()
    workflow.freeze()
    messages, _ = compose_signature(workflow)
    parked = [m for m in messages if m.chord]
    assert len(parked) == 2 and parked[0].chord == parked[1].chord
    assert len(parked[0].chord["results"]) == 3          # a group in a group is flattened


def test_a_chord_is_sent_as_one_unit_its_body_parked_first(sent):
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    [(name, batch)] = sent.calls
    assert name == "publish_atomic" and len(batch) == 3
    body, first, second = [decode(data) for data in batch]
    assert body.id == result.id and body.headers["x-chord-wait"] == [first.id, second.id]
    assert body.chord == {"results": [first.id, second.id]}
    assert first.headers["x-chord"] == [body.id] and second.headers["x-chord"] == [body.id]


def test_a_chord_inside_a_chain_is_sent_by_the_worker_with_the_result_before_it(sent):
    (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s()).apply_async()
    [(name, [first])] = sent.calls
    first = decode(first)
    assert name == "publish_atomic" and first.chain[0]["subtask_type"] == "chord"


def test_options_on_a_sent_chain_go_where_celery_puts_them(sent):
    (add.s(1, 1) | mul.s(2)).apply_async(countdown=30, task_id="the-last")
    [first] = sent.published()
    assert first.eta > 0 and first.chain[0]["options"] == {"task_id": "the-last"}


def test_revoking_a_workflows_result_revokes_every_task_it_links_to_in_one_request(sent):
    result = (add.s(1, 1) | mul.s(2) | add.s(3)).apply_async()
    sent.calls.clear()
    result.revoke()
    assert sent.calls == [("revoke", [result.id, result.parent.id, result.parent.parent.id])]
    job = group(add.s(1, 1), mul.s(2, 2)).apply_async()
    sent.calls.clear()
    job.revoke()
    assert sent.calls == [("revoke", [job[0].id, job[1].id])]
    assert AsyncResult("alone").parent is None and workflow_ids(AsyncResult("alone")) == [
        "alone"]


def test_a_chords_result_reaches_its_header_when_revoked(sent):
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).freeze()
    result.revoke(terminate=True)
    assert sent.calls == [("revoke", [result.id, result.parent[0].id, result.parent[1].id])]
    assert hash(result.parent) == hash(result.parent.id)


def test_a_signatures_apply_async_takes_link_and_link_error_as_a_tasks_does(sent):
    result = add.s(1).apply_async((2,), link=mul.s(3), link_error=log_error.s())
    [message] = sent.published()
    assert (message.args, message.callbacks[0]["options"]["task_id"]) == (
        (2, 1), result.links[0].id)
    assert [decode(e).args for e in errbacks_of(message.headers)] == [(result.id,)]
    config.configure(ALWAYS_EAGER=True)
    eager = add.s(1).apply_async((2,), link=mul.s(3))
    assert (eager.get(), eager.children[0].get()) == (3, 9)


def test_a_workflow_too_big_for_a_messages_headers_is_refused_naming_the_limit(no_broker):
    workflow = chord([add.s(i, i) for i in range(2000)], tsum.s())._settled()
    workflow.freeze()
    with pytest.raises(ConfigurationError, match="headers would be .* bytes \\(x-chord-wait: "
                                                 "2000 entries\\).* at most 65535"):
        compose_signature(workflow)


def test_sending_the_same_signature_twice_gives_new_ids(sent):
    workflow = add.s(1, 1) | mul.s(2)
    first, second = workflow.apply_async(), workflow.apply_async()
    assert first.id != second.id and workflow.tasks[0].id is None


@pytest.mark.parametrize("body, message", [
    ({"chain": "x"}, "chain must be a list of signatures"),
    ({"callbacks": [1]}, "callbacks must be a list of signatures"),
    ({"chord": {"results": "x"}}, "chord must be an object with a results list"),
])
def test_a_malformed_workflow_key_in_a_message_is_a_serialization_error(body, message):
    data = dict({"v": 1, "id": "x", "task": "t", "args": [], "kwargs": {}}, **body)
    raw = protocol.Message(body=json.dumps(data).encode(), message_id="x", type="t")
    with pytest.raises(SerializationError, match=message):
        TaskMessage.decode(raw)
    with pytest.raises(SerializationError, match="x-errbacks"):
        errbacks_of({"x-errbacks": ["not base64!"]})
