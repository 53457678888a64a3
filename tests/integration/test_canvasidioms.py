"""Celery's "Canvas: Designing Work-flows" user guide, idiom by idiom, pasted as a Celery user
writes it (imports aside; the tasks are in canvasidioms.py) and run by real workers on both
transports: the built-in broker and Redis (every test is parametrized by `broker`; Redis
skips, saying why, where redis-server is not installed).

Signatures (signature(), .signature(), .s(), .si(), partials, .set(), clone, options merging,
~sig), callbacks (link), errbacks (link_error, on_error), chains (| and results' .parent, a
chain's task id), groups (GroupResult's methods, group errbacks, unrolling), chains of groups
and groups of chains, chords (the body gets the header's results, an immutable body, a chain
as body, errors in the header), map / starmap, chunks and skew.
"""

import datetime
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, idle, server, settle  # noqa: E402,F401  (fixtures)
from canvasidioms import (  # noqa: E402
    add, another_task, apply_signature, create_user, double, fail, forgetful_task,
    import_contact, import_contacts, log_error, log_error_bound, log_error_request,
    log_result, mul, notify_complete, on_chord_error, other_task, raising_task,
    reset_buffers, send_welcome_email, slow_add, slow_raising_task, subtract, tsum, xsum)
from cluster import wait_for, workers_of  # noqa: E402
from ittasks import read_trace  # noqa: E402

from minitask import chain, chord, group, signature  # noqa: E402
from minitask.exceptions import ChordError, ConfigurationError, TaskRevokedError  # noqa: E402
from minitask.result import AsyncResult, GroupResult  # noqa: E402

MODULES = "canvasidioms"
T = 20          # the timeout of every get()


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


@pytest.fixture
def worker(start_worker):
    return start_worker()


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def trace(tmp_path, name):
    return read_trace(tmp_path, name)


# -- Signatures ------------------------------------------------------------------------------

def test_signatures_by_name_by_method_and_by_shortcut_run_on_a_worker(broker, worker):
    # >>> signature('tasks.add', args=(2, 2), countdown=10)
    by_name = signature("canvasidioms.add", args=(2, 2), countdown=10)
    assert repr(by_name) == "canvasidioms.add(2, 2)"
    assert by_name.options == {"countdown": 10}
    # >>> add.signature((2, 2), countdown=10)  /  add.s(2, 2)  /  add.s(2, 2, debug=True)
    assert repr(add.signature((2, 2), countdown=10)) == "canvasidioms.add(2, 2)"
    assert repr(add.s(2, 2)) == "canvasidioms.add(2, 2)"
    assert repr(add.s(2, 2, debug=True)) == "canvasidioms.add(2, 2, debug=True)"
    s = add.signature((2, 2), {"debug": True}, countdown=10)
    assert (s.args, s.kwargs, s.options) == ((2, 2), {"debug": True}, {"countdown": 10})
    # Calling it runs the task inline; delay / apply_async send it.
    assert add(2, 2) == 4 and add.s(2, 2)() == 4
    assert add.delay(2, 2).get(timeout=T) == 4
    assert add.signature((2, 2)).delay().get(timeout=T) == 4
    assert add.s(2, 2).delay().get(timeout=T) == 4
    assert signature("canvasidioms.add", args=(3, 4)).apply_async().get(timeout=T) == 7
    assert ~add.s(5, 5) == 10                       # the guide's `~sig` shortcut
    # "serialized and sent across the wire": the dict form, through JSON, runs the same.
    wire = json.loads(json.dumps(add.s(2, 2, debug=True)))
    assert signature(wire).delay().get(timeout=T) == 4
    # "you may want to pass the signature of a task invocation to another process or as an
    # argument to another function": a task gets it (a dict, over JSON) and sends it.
    sent = apply_signature.delay(add.s(2), 4).get(timeout=T)
    assert AsyncResult(sent).get(timeout=T) == 6
    sent = apply_signature.delay(add.s(2) | mul.s(10), 4).get(timeout=T)
    assert AsyncResult(sent).get(timeout=T) == 60
    sent = apply_signature.delay(chord([add.s(1, 1), add.s(2, 2)], tsum.s())).get(timeout=T)
    assert AsyncResult(sent).get(timeout=T) == 6


def test_options_given_by_signature_or_set_delay_the_call_and_later_ones_take_precedence(
        broker, worker):
    # >>> add.signature((2, 2), countdown=1).delay()
    # >>> add.signature((2, 2)).set(countdown=1).delay()
    # >>> add.s(2, 2).set(countdown=1)
    sent = now()
    results = [add.signature((2, 2), countdown=1).delay(),
               add.signature((2, 2)).set(countdown=1).delay(),
               add.s(2, 2).set(countdown=1).apply_async(),
               add.s(2, 2).apply_async(countdown=1),
               signature("canvasidioms.add", args=(2, 2), countdown=1).apply_async()]
    assert [r.get(timeout=T) for r in results] == [4] * 5
    for result in results:
        assert (result.date_done - sent).total_seconds() >= 0.9, result
    # >>> s = add.signature((2, 2), countdown=10)
    # >>> s.apply_async(countdown=1)  # countdown is now 1
    s = add.signature((2, 2), countdown=10)
    sent = now()
    res = s.apply_async(countdown=1)
    assert res.get(timeout=8) == 4
    assert 0.9 <= (res.date_done - sent).total_seconds() < 8
    assert s.options == {"countdown": 10}           # the signature itself is unchanged


def test_partials_prepend_args_merge_kwargs_and_clone_makes_derivatives(broker, worker,
                                                                        tmp_path):
    partial = add.s(2)                              # incomplete signature
    assert partial.delay(4).get(timeout=T) == 6     # 4 + 2
    assert partial.apply_async((4,)).get(timeout=T) == 6
    # The guide's note: arguments are *prepended*: subtract.s(10).delay(30) -> 30 - 10.
    assert subtract.s(10).delay(30).get(timeout=T) == 20
    assert subtract.s(10).apply_async((30,)).get(timeout=T) == 20
    # >>> s = add.s(2, 2); s.delay(debug=True)  /  s.apply_async(kwargs={'debug': True})
    s = add.s(2, 2)
    assert s.delay(debug=True).get(timeout=T) == 4
    assert s.apply_async(kwargs={"debug": True}).get(timeout=T) == 4
    assert trace(tmp_path, "debug") == ["2 2", "2 2"]
    assert s.kwargs == {}                           # partials do not change the signature
    # >>> s = add.s(2); s.clone(args=(4,), kwargs={'debug': True}) -> add(4, 2, debug=True)
    s = add.s(2)
    derived = s.clone(args=(4,), kwargs={"debug": True})
    assert repr(derived) == "canvasidioms.add(4, 2, debug=True)"
    assert repr(s) == "canvasidioms.add(2)"
    assert derived.delay().get(timeout=T) == 6
    assert trace(tmp_path, "debug")[-1] == "4 2"
    cloned = subtract.s(10).clone(args=(30,))
    assert cloned.delay().get(timeout=T) == 20


def test_immutable_signatures_take_no_partial_arguments_nor_the_parents_result(
        broker, worker, tmp_path):
    # >>> add.apply_async((2, 2), link=reset_buffers.signature(immutable=True))
    # >>> add.apply_async((2, 2), link=reset_buffers.si())
    first = add.apply_async((2, 2), link=reset_buffers.signature(immutable=True))
    second = add.apply_async((2, 2), link=reset_buffers.si())
    assert (first.get(timeout=T), second.get(timeout=T)) == (4, 4)
    assert first.children[0].get(timeout=T) == "reset"
    assert second.children[0].get(timeout=T) == "reset"
    assert trace(tmp_path, "reset_buffers") == ["reset", "reset"]
    # "Only the execution options can be set when a signature is immutable".
    immutable = add.si(2, 2)
    assert immutable.delay(100).get(timeout=T) == 4
    assert immutable.apply_async((100,), countdown=0.5).get(timeout=T) == 4
    assert add.signature((2, 2), immutable=True).delay(100).get(timeout=T) == 4


# -- Callbacks -------------------------------------------------------------------------------

def test_link_applies_the_callback_with_the_parents_result(broker, worker, tmp_path):
    # >>> add.apply_async((2, 2), link=other_task.s())
    res = add.apply_async((2, 2), link=other_task.s())
    assert res.get(timeout=T) == 4
    assert res.children[0].get(timeout=T) == 4
    # >>> add.apply_async((2, 2), link=add.s(8))  -> 2 + 2, then 4 + 8
    res = add.apply_async((2, 2), link=add.s(8))
    assert res.get(timeout=T) == 4
    assert [child.get(timeout=T) for child in res.children] == [12]
    # >>> res = add.apply_async((2, 2), link=mul.s(16)); res.children[0].get() -> 64
    res = add.apply_async((2, 2), link=mul.s(16))
    assert res.get(timeout=T) == 4
    assert len(res.children) == 1 and res.children[0].get(timeout=T) == 64
    # >>> s = add.s(2, 2); s.link(mul.s(4)); s.link(log_result.s())
    s = add.s(2, 2)
    s.link(mul.s(4))
    s.link(log_result.s())
    res = s.delay()
    assert res.get(timeout=T) == 4
    assert sorted(child.get(timeout=T) for child in res.children) == [4, 16]
    assert trace(tmp_path, "log_result") == ["4"]
    # "The callback will only be applied if the task exited successfully".
    failed = raising_task.apply_async(link=other_task.s(), link_error=log_error.s())
    with pytest.raises(ValueError, match="something something"):
        failed.get(timeout=T)
    wait_for(lambda: trace(tmp_path, "errors"), 10, what="the errback")
    settle(broker)
    assert failed.children == [] and trace(tmp_path, "other_task") == ["4"]


def test_collect_iterates_over_the_result_graph(broker, worker):
    res = add.apply_async((2, 2), link=mul.s(16))
    assert res.get(timeout=T) == 4
    res.children[0].get(timeout=T)
    # >>> list(res.collect())  -> [(<AsyncResult: ...>, 4), (<AsyncResult: ...>, 64)]
    assert [(r.id, value) for r, value in res.collect()] == \
        [(res.id, 4), (res.children[0].id, 64)]
    # Graphs: >>> res = chain(add.s(4, 4), mul.s(8), mul.s(10))(); res.parent.parent.graph
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=T) == 640
    assert res.parent.parent.id in repr(res.parent.parent.graph)
    graph = res.parent.parent.graph
    assert [node.id for node in graph] == [res.parent.parent.id, res.parent.id, res.id]
    assert [node.id for node in graph[res.parent.parent]] == [res.parent.id]
    assert repr(graph).splitlines()[0] == "%s(1)" % res.parent.parent.id


# -- Error callbacks -------------------------------------------------------------------------

def test_on_error_and_link_error_call_the_errback_with_the_failed_tasks_id(broker, worker,
                                                                          tmp_path):
    # >>> add.s(2, 2).on_error(log_error.s()).delay()   (add succeeds: no errback)
    ok = add.s(2, 2).on_error(log_error.s()).delay()
    assert ok.get(timeout=T) == 4
    # ... and with a task that raises, in each of the guide's spellings:
    by_on_error = raising_task.s().on_error(log_error.s()).delay()
    by_option = raising_task.apply_async(link_error=log_error.s())
    by_signature = raising_task.signature(link_error=log_error.s()).apply_async()
    failed = [by_on_error, by_option, by_signature]
    for result in failed:
        with pytest.raises(ValueError, match="something something"):
            result.get(timeout=T)
    wait_for(lambda: len(trace(tmp_path, "errors")) >= 3, 15, what="three errbacks")
    settle(broker)
    lines = trace(tmp_path, "errors")
    assert sorted(lines) == sorted("%s ValueError something something" % r.id
                                   for r in failed)
    assert ok.id not in " ".join(lines)


def test_the_guides_request_exc_traceback_errback_is_refused_when_linked(broker, worker):
    """README, "What differs": "an errback is called as errback(task_id), not (request, exc,
    traceback)", and the Workflows section: that form "is refused when the errback is
    linked". So the guide's `log_error(request, exc, traceback)` and `on_chord_error` are
    refused with a ConfigurationError saying what to do, before anything is sent."""
    with pytest.raises(ConfigurationError, match=r"AsyncResult\(task_id\)"):
        add.s(2, 2).on_error(log_error_request.s()).delay()
    with pytest.raises(ConfigurationError, match=r"AsyncResult\(task_id\)"):
        add.apply_async((2, 2), link_error=log_error_request.s())
    with pytest.raises(ConfigurationError, match=r"AsyncResult\(task_id\)"):
        (group(add.s(i, i) for i in range(10)) |
         tsum.s().on_error(on_chord_error.s())).delay()
    assert broker.status() and idle(broker)        # nothing was sent


# -- Chains ----------------------------------------------------------------------------------

def test_chain_calls_each_task_with_the_previous_result_and_parent_walks_back(broker,
                                                                             worker):
    # >>> res = chain(add.s(2, 2), add.s(4), add.s(8))()  -> 16
    assert chain(add.s(2, 2), add.s(4), add.s(8))().get(timeout=T) == 16
    assert (add.s(2, 2) | add.s(4) | add.s(8))().get(timeout=T) == 16
    # >>> res = chain(add.s(4, 4), mul.s(8), mul.s(10))
    c = chain(add.s(4, 4), mul.s(8), mul.s(10))
    assert repr(c) == "canvasidioms.add(4, 4) | canvasidioms.mul(8) | canvasidioms.mul(10)"
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=T) == 640
    assert res.parent.get(timeout=T) == 64
    assert res.parent.parent.get(timeout=T) == 8
    assert isinstance(res.parent.parent, AsyncResult) and res.parent.parent.parent is None
    # >>> (add.s(2, 2) | mul.s(8) | mul.s(10)).apply_async()
    assert (add.s(2, 2) | mul.s(8) | mul.s(10)).apply_async().get(timeout=T) == 320
    # The same chain object runs again (a signature is not used up).
    assert c.delay().get(timeout=T) == 640
    # Immutable signatures: a chain of independent tasks.
    res = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    assert res.get(timeout=T) == 16
    assert res.parent.get(timeout=T) == 8
    assert res.parent.parent.get(timeout=T) == 4
    # Given as an option, the chain's task id is its last task's (and its result's).
    res = chain(add.s(4, 4), mul.s(8)).apply_async(task_id="chain-last-task-id")
    assert res.id == "chain-last-task-id"
    assert res.get(timeout=T) == 64
    assert AsyncResult("chain-last-task-id").get(timeout=T) == 64


def test_blow_your_mind_by_combining_partial_chains_groups_and_chords(broker, worker):
    # >>> c1 = (add.s(4) | mul.s(8)); c1(16)  -> (16 + 4) * 8
    c1 = (add.s(4) | mul.s(8))
    res = c1(16)
    assert res.get(timeout=T) == 160
    assert res.parent.get(timeout=T) == 20
    # >>> c2 = (add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8)))  -> ((4 + 16) * 2 + 4) * 8
    c2 = (add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8)))
    res = c2()
    assert res.get(timeout=T) == 352
    assert [res.parent.get(timeout=T), res.parent.parent.get(timeout=T),
            res.parent.parent.parent.get(timeout=T)] == [44, 40, 20]
    assert c1.delay(0).get(timeout=T) == 32         # c1 unchanged by being combined
    # "Groups and chords accepts partial arguments too": the header of a chord in a chain
    # gets the previous result.
    res = (add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s()))()
    assert res.get(timeout=T) == 7
    assert res.parent.get(timeout=T) == [3, 4]
    # A chain of groups: each member of the next group gets the list of the group before.
    res = (group(add.s(1, 1), add.s(2, 2)) | group(tsum.s(), xsum.s()))()
    assert res.get(timeout=T) == [6, 6]
    assert res.parent.get(timeout=T) == [2, 4]
    res = chain(add.s(1, 1), group(add.s(1), add.s(2)), group(tsum.s(), xsum.s()),
                tsum.s())()
    assert res.get(timeout=T) == 14
    # Groups of chords, and a chord in a chord's header.
    assert group(chord([add.s(1, 1)], tsum.s()),
                 chord([add.s(2, 2), add.s(3, 3)], tsum.s()))().get(timeout=T) == [2, 10]
    assert chord([chord([add.s(1, 1)], tsum.s()), add.s(2, 2)], tsum.s())() \
        .get(timeout=T) == 6


def test_a_frozen_chain_inherits_the_id_of_its_last_task(broker, worker):
    # Celery's own test of the guide's "Task ID" paragraph (t/integration/test_canvas.py).
    last_task = add.s(2).set(task_id="fortytwo-%s" % os.getpid())
    c = add.s(4) | last_task
    assert c.id is None
    c.freeze(last_task.id)
    assert c.id == last_task.id
    assert c.apply_async((1,)).get(timeout=T) == 7
    assert c.id == last_task.id


def test_chain_errors_stop_the_chain_and_call_link_error_once(broker, worker, tmp_path):
    res = chain(add.s(1, 1), raising_task.si(), add.s(1)).apply_async(
        link_error=log_error.s())
    with pytest.raises(ValueError, match="something something"):
        res.get(timeout=T)                  # README: the rest of the chain gets the error
    assert res.parent.parent.get(timeout=T) == 2
    assert res.parent.state == "FAILURE"
    wait_for(lambda: trace(tmp_path, "errors"), 10, what="the errback")
    settle(broker)
    assert trace(tmp_path, "errors") == ["%s ValueError something something"
                                         % res.parent.id]


# -- Groups ----------------------------------------------------------------------------------

def test_simple_groups_and_group_results(broker, worker):
    # >>> res = group(add.s(i, i) for i in range(10))(); res.get(timeout=1)
    res = group(add.s(i, i) for i in range(10))()
    assert isinstance(res, GroupResult)
    assert res.get(timeout=T) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    # >>> g = group(add.s(2, 2), add.s(4, 4)); res = g(); res.get()  -> [4, 8]
    g = group(add.s(2, 2), add.s(4, 4))
    assert g().get(timeout=T) == [4, 8]
    assert g.delay().get(timeout=T) == [4, 8]
    # Group Results: job = group([add.s(2, 2), ..., add.s(32, 32)]); job.apply_async()
    job = group([add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16), add.s(32, 32)])
    result = job.apply_async()
    assert result.join(timeout=T) == [4, 8, 16, 32, 64]
    assert result.ready() is True
    assert result.successful() is True
    assert result.failed() is False and result.waiting() is False
    assert result.completed_count() == 5
    assert result.get(timeout=T) == [4, 8, 16, 32, 64]
    # With a failing member: failed(), and completed_count() counts the successful ones.
    mixed = group(add.s(1, 1), raising_task.s(), add.s(2, 2)).apply_async()
    assert mixed.join(timeout=T, propagate=False)[0::2] == [2, 4]
    assert (mixed.ready(), mixed.successful(), mixed.failed()) == (True, False, True)
    assert mixed.completed_count() == 2
    with pytest.raises(ValueError, match="something something"):
        mixed.get(timeout=T)
    later = group(add.s(i, i) for i in range(3)).apply_async(countdown=6)
    assert later.waiting() is True and later.ready() is False
    assert later.completed_count() == 0
    later.revoke()                          # "Revoke all of the subtasks"
    with pytest.raises(TaskRevokedError):
        later.get(timeout=T)
    assert [r.state for r in later.results] == ["REVOKED"] * 3
    assert later.ready() is True and later.successful() is False


def test_group_errbacks_run_once_per_failing_task_and_group_link_is_refused(broker, worker,
                                                                            tmp_path):
    # >>> g = group(fail.s(), fail.s()); g.link_error(log_error.s()); res = g()
    g = group(fail.s(), fail.s())
    g.link_error(log_error.s())
    res = g()
    with pytest.raises(ValueError, match="failed on purpose"):
        res.get(timeout=T)
    lines = wait_for(lambda: len(trace(tmp_path, "errors")) >= 2 and
                     trace(tmp_path, "errors"), 10, what="both errbacks")
    settle(broker)
    assert sorted(trace(tmp_path, "errors")) == sorted(
        "%s ValueError failed on purpose" % r.id for r in res.results)
    assert len(lines) == 2
    # >>> g = group(add.s(2, 2), add.s(4, 4)); g.link(add.s())   (the guide calls it faulty)
    # README, Migrating ("group.link(callback) ... refused: use a chord") and Workflows ("A
    # group has no single result for a link callback: use a chord"): refused, not run.
    g = group(add.s(2, 2), add.s(4, 4))
    with pytest.raises(ConfigurationError, match="use a chord"):
        g.link(add.s())
    assert g().get(timeout=T) == [4, 8]


def test_group_unrolling_in_a_chain(broker, worker):
    # A group of one in a chain is unrolled to its signature.
    c = chain(add.s(2, 2), group(add.s(1)), add.s(1))
    assert repr(c) == "canvasidioms.add(2, 2) | canvasidioms.add(1) | canvasidioms.add(1)"
    assert c().get(timeout=T) == 6
    c = chain(group(add.s(1, 1)), add.s(2))
    assert repr(c) == "canvasidioms.add(1, 1) | canvasidioms.add(2)"
    assert c().get(timeout=T) == 4
    # Two members: the group and the next task are a chord (tsum takes the list).
    res = chain(add.s(2, 2), group(add.s(1), add.s(2)), tsum.s())()
    assert res.get(timeout=T) == 11
    assert res.parent.get(timeout=T) == [5, 6]
    assert res.parent.parent.get(timeout=T) == 4


def test_chain_into_a_group_forwards_the_result_to_every_member(broker, worker, tmp_path):
    # >>> new_user_workflow = (create_user.s() | group(import_contacts.s(),
    # ...                                              send_welcome_email.s()))
    # ... new_user_workflow.delay(username='artv', first='Art', last='Vandelay',
    # ...                         email='art@vandelay.com')
    new_user_workflow = (create_user.s() | group(
                         import_contacts.s(),
                         send_welcome_email.s()))
    res = new_user_workflow.delay(username='artv',
                                  first='Art',
                                  last='Vandelay',
                                  email='art@vandelay.com')
    assert res.get(timeout=T) == ["contacts of artv", "welcome artv"]
    assert res.parent.get(timeout=T) == "artv"
    assert trace(tmp_path, "users") == ["artv Art Vandelay art@vandelay.com"]
    # >>> res = (add.s(4, 4) | group(add.si(i, i) for i in range(10)))()
    res = (add.s(4, 4) | group(add.si(i, i) for i in range(10)))()
    assert res.get(timeout=T) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert res.parent.get(timeout=T) == 8


def test_groups_of_chains_and_chords_of_chains(broker, worker):
    res = group(chain(add.s(1, 1), mul.s(10)), add.s(2, 2) | mul.s(3), add.s(5, 5))()
    assert res.get(timeout=T) == [20, 12, 10]
    assert res.results[0].parent.get(timeout=T) == 2
    res = chord([add.s(1, 1) | mul.s(2), add.s(2, 2) | mul.s(2)], tsum.s())()
    assert res.get(timeout=T) == 12
    assert res.parent.get(timeout=T) == [4, 8]


# -- Chords ----------------------------------------------------------------------------------

def test_chord_body_receives_the_header_results(broker, worker):
    # >>> res = chord((add.s(i, i) for i in range(10)), tsum.s())(); res.get()  -> 90
    res = chord((add.s(i, i) for i in range(10)), tsum.s())()
    assert res.get(timeout=T) == 90
    assert res.parent.get(timeout=T) == [2 * i for i in range(10)]
    # >>> chord(add.s(i, i) for i in range(100))(tsum.s()).get()  -> 9900
    assert chord(add.s(i, i)
                 for i in range(100))(tsum.s()).get(timeout=30) == 9900
    # >>> callback = tsum.s(); header = [...]; result = chord(header)(callback)
    callback = xsum.s()
    header = [add.s(i, i) for i in range(20)]
    result = chord(header)(callback)
    assert result.get(timeout=T) == 380
    # The id chord() returns is the callback's.
    assert AsyncResult(result.id).get(timeout=T) == 380
    # >>> c3 = (group(add.s(i, i) for i in range(10)) | tsum.s()); c3().get()  -> 90
    c3 = (group(add.s(i, i) for i in range(10)) | tsum.s())
    assert c3().get(timeout=T) == 90
    # "combined into a list": in the header's order, whichever task ends first.
    res = chord([slow_add.s(1, 1, 1.0), add.s(2, 2), add.s(3, 3)], log_result.s())()
    assert res.get(timeout=T) == [2, 4, 6]
    assert res.parent.results[1].date_done < res.parent.results[0].date_done
    res = group(slow_add.s(1, 1, 1.0), add.s(2, 2))()
    assert res.get(timeout=T) == [2, 4]


def test_an_immutable_chord_body_gets_no_results_and_runs_after_the_header(broker, worker,
                                                                           tmp_path):
    # >>> chord((import_contact.s(c) for c in contacts),
    # ...       notify_complete.si(import_id)).apply_async()
    contacts, import_id = ["ann", "bob", "cyd", "dan"], "import-7"
    res = chord((import_contact.s(c) for c in contacts),
                notify_complete.si(import_id)).apply_async()
    assert res.get(timeout=T) == import_id
    lines = trace(tmp_path, "contacts")
    assert sorted(lines[:-1]) == contacts and lines[-1] == "complete import-7"
    # The guide's Important Notes: ignore_result=False on a Task subclass or a decorated
    # task, and the chord works.
    res = chord([double.s(1), another_task.s("p1"), double.s(2)], log_result.s())()
    assert res.get(timeout=T) == [2, "did p1", 4]
    # A header task that ignores its result: README (Workflows) "A header task with
    # ignore_result=True is refused when the chord is built: the body needs its result."
    with pytest.raises(ConfigurationError, match="ignore_result=True"):
        chord([another_task.s("p1"), forgetful_task.s("p2")], log_result.s())
    with pytest.raises(ConfigurationError, match="ignore_result=True"):
        group(forgetful_task.s("p1"), another_task.s("p2")) | log_result.s()


def test_a_chord_body_may_be_a_chain_and_a_header_error_fails_all_of_it_once(broker, worker,
                                                                           tmp_path):
    res = chord([add.s(1, 1), add.s(2, 2)], tsum.s() | mul.s(10))()
    assert res.get(timeout=T) == 60
    assert res.parent.get(timeout=T) == 6
    assert res.parent.parent.get(timeout=T) == [2, 4]
    # and whatever follows a chord joins its body
    res = (group(add.s(1, 1), add.s(2, 2)) | tsum.s() | mul.s(10) | add.s(1))()
    assert res.get(timeout=T) == 61
    # A header error: every task of the body chain fails, its errback runs once.
    res = chord([add.s(1, 1), raising_task.s()], (tsum.s() | mul.s(10))
                .on_error(log_error.s()))()
    with pytest.raises(ChordError):
        res.get(timeout=T)                  # the body's last task: nothing waits forever
    with pytest.raises(ChordError):
        res.parent.get(timeout=T)
    assert res.parent.parent.failed()
    wait_for(lambda: trace(tmp_path, "errors"), 10, what="the errback")
    settle(broker)
    lines = trace(tmp_path, "errors")
    assert len(lines) == 1 and lines[0].startswith("%s ChordError " % res.parent.id)


def test_an_error_in_the_header_fails_the_body_with_chord_error(broker, worker):
    # >>> c = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)])
    # >>> result = c()
    # (the guide's chord has no body, which Celery cannot send either: tsum.s() here)
    c = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)], tsum.s())
    result = c()
    with pytest.raises(ChordError) as info:
        result.get(timeout=T)
    failed = result.parent.results[1]
    # "the error description includes the id of the task that failed"
    assert failed.id in str(info.value)
    # ... "and a string representation of the original exception": not here. README
    # (Workflows): the body "ends in FAILURE with minitask.exceptions.ChordError naming the
    # task (on a broker: `chord <body id>: header task divide[<id>] ended in FAILURE, so the
    # body never runs`; read the header task's own error with result.parent)".
    assert str(info.value).startswith("chord %s: header task " % result.id)
    assert str(info.value).endswith("ended in FAILURE, so the body never runs")
    assert result.state == "FAILURE" and isinstance(result.result, ChordError)
    with pytest.raises(ValueError, match="something something"):
        failed.get(timeout=T)
    assert "ValueError: something something" in failed.traceback
    # "the rest of the tasks will still execute"
    assert result.parent.results[2].get(timeout=T) == 16
    assert result.parent.results[0].get(timeout=T) == 8
    # "the ChordError only shows the task that failed first (in time): it doesn't respect
    # the ordering of the header group."
    res = chord([slow_raising_task.s(1.0), raising_task.s()], tsum.s())()
    with pytest.raises(ChordError) as info:
        res.get(timeout=T)
    slow, fast = res.parent.results
    assert fast.id in str(info.value) and slow.id not in str(info.value)
    with pytest.raises(KeyError):
        slow.get(timeout=T)                         # it ran to its end all the same


def test_the_failed_chords_result_has_a_traceback(broker, worker):
    result = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)], tsum.s())()
    with pytest.raises(ChordError):
        result.get(timeout=T)
    assert result.state == "FAILURE"
    # The original traceback: the failed header task's (minitask finds it through parent).
    assert result.traceback and "something something" in result.traceback
    assert result.traceback == result.parent.results[1].traceback


def test_chord_errbacks_and_callbacks_belong_to_the_body_and_run_once(broker, worker,
                                                                      tmp_path):
    # The guide's on_chord_error form is refused (test above); "a bound errback declared
    # with @app.task(bind=True) ... receives the id of the failed chord callback".
    c = (group([add.s(1, 1), raising_task.s(), fail.s(), add.s(2, 2)]) |
         tsum.s().on_error(log_error_bound.s())).delay()
    with pytest.raises(ChordError):
        c.get(timeout=T)
    wait_for(lambda: trace(tmp_path, "errors"), 10, what="the chord's errback")
    settle(broker)
    lines = trace(tmp_path, "errors")
    assert len(lines) == 1 and lines[0].startswith("%s ChordError " % c.id)
    # link / link_error on a chord go to its body: called once.
    ok = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    ok.link(log_result.s())
    ok.link_error(log_error.s())
    res = ok.delay()
    assert res.get(timeout=T) == 6
    assert wait_for(lambda: trace(tmp_path, "log_result"), 10, what="the callback") == ["6"]
    broken = chord([raising_task.s(), fail.s()], tsum.s())
    broken.link_error(log_error.s())
    broken.link(log_result.s())
    res = broken.delay()
    with pytest.raises(ChordError):
        res.get(timeout=T)
    wait_for(lambda: len(trace(tmp_path, "errors")) >= 2, 10, what="the second errback")
    # ... and when the body itself fails: once, with the body's id.
    body_fails = chord([add.s(1, 1)], raising_task.si()).on_error(log_error.s()).delay()
    with pytest.raises(ValueError, match="something something"):
        body_fails.get(timeout=T)
    wait_for(lambda: len(trace(tmp_path, "errors")) >= 3, 10, what="the third errback")
    settle(broker)
    assert [line.split()[0] for line in trace(tmp_path, "errors")] == [c.id, res.id,
                                                                      body_fails.id]
    assert trace(tmp_path, "log_result") == ["6"]


# -- Map & Starmap, Chunks -------------------------------------------------------------------

def test_map_and_starmap_are_one_task_each(broker, worker):
    # >>> ~tsum.map([list(range(10)), list(range(100))])  -> [45, 4950]
    assert ~tsum.map([list(range(10)), list(range(100))]) == [45, 4950]
    # >>> ~add.starmap(zip(range(10), range(10)))
    assert ~add.starmap(zip(range(10), range(10))) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    # >>> add.starmap(zip(range(10), range(10))).apply_async(countdown=10)  (1 s here)
    sent = now()
    res = add.starmap(zip(range(10), range(10))).apply_async(countdown=1)
    assert res.get(timeout=T) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert (res.date_done - sent).total_seconds() >= 0.9
    # signatures like any other: in a group
    assert group(tsum.map([[1, 2], [3]]), add.starmap([(1, 1)]))().get(timeout=T) == \
        [[3, 3], [2]]


def test_chunks_run_as_a_group_of_lists_and_skew_spreads_them(broker, worker):
    # >>> res = add.chunks(zip(range(100), range(100)), 10)(); res.get()
    res = add.chunks(zip(range(100), range(100)), 10)()
    expected = [[2 * i for i in range(start, start + 10)] for start in range(0, 100, 10)]
    assert res.get(timeout=30) == expected
    # >>> add.chunks(zip(range(100), range(100)), 10).apply_async()
    assert add.chunks(zip(range(100), range(100)), 10).apply_async().get(timeout=30) == \
        expected
    # >>> group = add.chunks(zip(range(100), range(100)), 10).group()
    # >>> group.skew(start=1, stop=10)()   (three chunks here: countdowns 1, 2, 3)
    g = add.chunks(zip(range(30), range(30)), 10).group()
    sent = now()
    res = g.skew(start=1, stop=10)()
    assert res.get(timeout=T) == expected[:3]
    for index, result in enumerate(res.results):
        assert (result.date_done - sent).total_seconds() >= index + 1 - 0.1, index
