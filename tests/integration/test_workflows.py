"""Workflows on a real broker and worker: chains, callbacks, errbacks, groups and chords."""

import pytest

import itflow
from cluster import wait_for
from minitask import chain, chord, group
from minitask.exceptions import ChordError, PublishRefusedError
from minitask.result import AsyncResult
from minitask.transport import reset_connection


@pytest.fixture
def flow_worker(start_worker):
    return start_worker(modules="itflow")


def test_a_chain_passes_each_result_on_and_its_result_is_its_last_tasks(broker, flow_worker):
    result = (itflow.add.s(2, 2) | itflow.mul.s(8) | itflow.add.s(1)).delay()
    assert result.get(timeout=20) == 33
    assert result.parent.get(timeout=5) == 32
    assert result.parent.parent.get(timeout=5) == 4
    assert result.parent.parent.parent is None


def test_an_immutable_link_gets_no_result(broker, flow_worker):
    assert (itflow.add.si(1, 1) | itflow.add.si(2, 2)).delay().get(timeout=20) == 4


def test_chain_called_with_partial_arguments(broker, flow_worker):
    assert chain(itflow.add.s(4), itflow.mul.s(8))(16).get(timeout=20) == 160


def test_a_link_callback_gets_the_result(broker, flow_worker):
    result = itflow.add.apply_async((2, 2), link=itflow.mul.s(10))
    assert result.get(timeout=20) == 4
    assert result.children[0].get(timeout=20) == 40


def test_a_fresh_handle_of_a_task_finds_its_children_in_its_result(broker, flow_worker):
    """As Celery's result backends: the children are stored with the result, so a handle
    made from the id alone (a web request's, later) sees the callbacks and the next link."""
    linked = itflow.add.apply_async((2, 2), link=[itflow.mul.s(10), itflow.add.s(1)])
    chained = (itflow.add.s(1, 1) | itflow.mul.s(3)).delay()
    assert (linked.get(timeout=20), chained.get(timeout=20)) == (4, 6)
    children = AsyncResult(linked.id).children
    assert [child.id for child in children] == [link.id for link in linked.links]
    assert sorted(child.get(timeout=20) for child in children) == [5, 40]
    assert [child.id for child in AsyncResult(chained.parent.id).children] == [chained.id]
    assert AsyncResult(chained.id).children == []


def test_the_children_of_a_task_that_failed_are_none_as_its_callbacks_never_ran(
        broker, flow_worker):
    failed = itflow.divide.apply_async((1, 0), link=itflow.mul.s(10))
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)
    assert failed.children == [] and len(failed.links) == 1
    assert failed.links[0].state == "PENDING"


def test_a_failing_link_stops_the_chain_and_calls_its_errback(broker, flow_worker, tmp_path):
    failed = (itflow.add.s(1, 1) | itflow.divide.s(0) | itflow.add.s(1)) \
        .on_error(itflow.errback.s("errors")).delay()
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)           # the last task never ran: it has the chain's failure
    assert failed.parent.state == "FAILURE"
    assert failed.parent.parent.get(timeout=5) == 2
    trace = wait_for(lambda: itflow_trace(tmp_path, "errors"), what="the errback")
    assert trace == [failed.parent.id]


@pytest.mark.parametrize("route", [{"exchange": "no-such-exchange"},
                                   {"routing_key": "nowhere", "mandatory": True}])
def test_a_link_the_broker_cannot_route_fails_its_task_and_ends_the_chain(
        broker, flow_worker, tmp_path, route):
    """The broker refuses a result with what it unlocks as one unit: the first task stayed
    STARTED and the chain never ended. Its FAILURE says why, and reaches the errback and
    the rest of the chain, as a send that failed in the task would."""
    result = (itflow.add.s(1, 1) | itflow.add.s(2).set(**route) | itflow.add.s(3)) \
        .on_error(itflow.errback.s("unroutable")).delay()
    with pytest.raises(PublishRefusedError, match="the broker refused what its SUCCESS "
                                                  "unlocks"):
        result.get(timeout=20)
    first = result.parent.parent
    assert (first.state, result.parent.state) == ("FAILURE", "FAILURE")
    assert wait_for(lambda: itflow_trace(tmp_path, "unroutable"), what="the errback") \
        == [first.id]
    assert itflow.add.delay(2, 2).get(timeout=20) == 4      # the worker carries on


def test_link_error_on_a_single_task(broker, flow_worker, tmp_path):
    result = itflow.divide.apply_async((1, 0), link_error=itflow.errback.s("single"))
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=20)
    assert wait_for(lambda: itflow_trace(tmp_path, "single"), what="the errback") \
        == [result.id]


def test_a_link_that_retries_carries_its_chain_on(broker, flow_worker, tmp_path):
    result = (itflow.add.s(1, 1) | itflow.retry_once.s("r") | itflow.mul.s(10)).delay()
    assert result.get(timeout=20) == 30
    assert itflow_trace(tmp_path, "r") == ["retrying"]


def test_a_group_runs_its_members(broker, flow_worker):
    assert group(itflow.add.s(i, i) for i in range(5))().get(timeout=20) == [0, 2, 4, 6, 8]


def test_a_revoked_link_is_not_run_and_its_chain_gets_the_revocation(broker, flow_worker):
    workflow = itflow.add.s(1, 1) | itflow.add.s(1) | itflow.add.s(1)
    result = workflow.freeze()
    AsyncResult(result.parent.id).revoke()
    workflow.apply_async()
    with pytest.raises(Exception) as info:
        result.get(timeout=20)
    assert type(info.value).__name__ == "TaskRevokedError"
    assert result.parent.parent.get(timeout=5) == 2


def test_a_chord_body_gets_every_header_result_in_order(broker, flow_worker):
    result = chord((itflow.add.s(i, i) for i in range(10)), itflow.tsum.s())()
    assert result.get(timeout=30) == 90
    assert result.parent.get(timeout=5) == [2 * i for i in range(10)]


def test_a_group_piped_into_a_task_is_a_chord(broker, flow_worker):
    assert (group(itflow.add.s(1, 1), itflow.add.s(2, 2)) | itflow.tsum.s()).delay() \
        .get(timeout=30) == 6


def test_an_immutable_chord_body_waits_for_the_header_but_gets_no_results(broker,
                                                                           flow_worker):
    assert chord([itflow.add.s(1, 1), itflow.add.s(2, 2)], itflow.tsum.si([100])).delay() \
        .get(timeout=30) == 100
    assert (group(itflow.add.s(1, 1), itflow.add.s(2, 2)) | itflow.tsum.si([7])).delay() \
        .get(timeout=30) == 7


def test_a_chord_with_an_empty_header_runs_its_body_with_an_empty_list(broker, flow_worker):
    assert chord([], itflow.tsum.s()).delay().get(timeout=30) == 0
    assert (group([]) | itflow.tsum.s()).delay().get(timeout=30) == 0
    # As another chord's body, it waits for that chord's header, but its own (empty)
    # header takes those values: its body still gets [] alone, as it does eagerly.
    nested = chord([itflow.add.s(1, 1)], chord([], itflow.tsum.s()))
    assert nested.apply().get() == 0
    assert nested.delay().get(timeout=30) == 0
    beside = chord([itflow.add.s(1, 1)], group(chord([], itflow.tsum.s()), itflow.first.s()))
    assert beside.apply().get() == [0, 2]
    assert beside.delay().get(timeout=30) == [0, 2]


def test_a_chord_inside_a_chain_is_sent_by_the_worker(broker, flow_worker):
    result = (itflow.add.s(1, 1) | group(itflow.add.s(1), itflow.add.s(2)) | itflow.tsum.s()
              | itflow.mul.s(10)).delay()
    assert result.get(timeout=30) == 70


def test_a_failing_header_task_fails_the_chord_naming_it_and_calls_its_errback(
        broker, flow_worker, tmp_path):
    broken = chord([itflow.add.s(1, 1), itflow.divide.s(1, 0)],
                   itflow.tsum.s("never").on_error(itflow.errback.s("chord-errors"))).delay()
    with pytest.raises(ChordError, match=broken.parent.results[1].id):
        broken.get(timeout=30)
    assert wait_for(lambda: itflow_trace(tmp_path, "chord-errors"), what="the errback") \
        == [broken.id]
    assert itflow_trace(tmp_path, "never") == []


def test_map_starmap_and_chunks(broker, flow_worker):
    assert itflow.tsum.map([[1, 2], [3, 4]]).delay().get(timeout=20) == [3, 7]
    assert itflow.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=20) == [3, 7]
    assert itflow.add.chunks(zip(range(6), range(6)), 4)().get(timeout=20) == [[0, 2, 4, 6],
                                                                              [8, 10]]


def test_a_parked_chord_body_survives_a_broker_kill_9(broker, start_worker):
    result = chord((itflow.add.s(i, 1) for i in range(5)), itflow.tsum.s())()
    broker.kill()                       # kill -9 before any header task ran: nothing is lost
    broker.start()
    reset_connection()
    start_worker(modules="itflow")
    assert result.get(timeout=30) == sum(i + 1 for i in range(5))


def test_a_chord_whose_header_finished_before_a_broker_kill_9_is_released_on_restart(
        broker, start_worker):
    worker = start_worker(modules="itflow")
    result = chord([itflow.add.s(1, 1), itflow.add.s(2, 2)], itflow.tsum.s())()
    assert result.get(timeout=30) == 6
    broker.kill()
    broker.start()
    reset_connection()
    worker.stop()
    assert AsyncResult(result.id).get(timeout=10) == 6  # the result, not a second body run
    assert broker.queue("minitask")["ready"] == 0


@pytest.mark.broker_args("--worker-lost-grace", "0.5")
def test_a_header_task_whose_worker_is_killed_fails_the_chord_with_worker_lost(
        broker, start_worker, tmp_path):
    worker = start_worker(modules="itflow")
    result = chord([itflow.add.s(1, 1), itflow.hang.s("hang")],
                   itflow.tsum.s().on_error(itflow.errback.s("lost")))()
    hung = result.parent.results[1]
    # Handed over: the broker heard it start (not only the pool process running it).
    wait_for(lambda: hung.state == "STARTED", what="the broker to hear the header task start")
    worker.kill()                       # kill -9: the broker stores WorkerLostError itself
    start_worker(name="w2", modules="itflow")   # (on Redis, a live worker's sweeper does)
    with pytest.raises(ChordError, match=hung.id):
        result.get(timeout=30)
    assert type(hung.result).__name__ == "WorkerLostError"
    assert wait_for(lambda: itflow_trace(tmp_path, "lost"), what="the errback") == [result.id]


@pytest.mark.parametrize("broker_killed", [False, True], ids=["", "broker-killed-too"])
@pytest.mark.broker_args("--worker-lost-grace", "0.5")
def test_a_task_whose_worker_is_killed_calls_its_errback_and_ends_its_chain(
        broker, start_worker, tmp_path, broker_killed):
    if broker_killed and not hasattr(broker, "kill"):
        pytest.skip("on Redis there is no broker process of ours to kill (redis-server "
                    "kills are in test_redis_crash and the chaos runs)")
    worker = start_worker(modules="itflow")
    result = (itflow.hang.s("hang") | itflow.add.s(1)).on_error(
        itflow.errback.s("lost-task")).delay()
    hung = result.parent
    wait_for(lambda: hung.state == "STARTED", what="the broker to hear the task start")
    worker.kill()                       # kill -9: the broker stores WorkerLostError itself
    if broker_killed:                   # kill -9 the broker too, before the grace is over
        broker.kill()
        broker.start()
    start_worker(name="w2", modules="itflow")   # (on Redis, a live worker's sweeper does)
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)          # the link never ran: it has the chain's failure
    assert type(raised.value).__name__ == "WorkerLostError"
    assert type(hung.result).__name__ == "WorkerLostError"
    assert wait_for(lambda: itflow_trace(tmp_path, "lost-task"), what="the errback") \
        == [hung.id]


def itflow_trace(directory, name):
    import os
    path = os.path.join(str(directory), "trace-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]
