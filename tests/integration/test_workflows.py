"""Workflows on a real broker and worker: chains, callbacks, errbacks, groups and chords."""

import pytest

import itflow
from cluster import wait_for
from minitask import chain, group
from minitask.result import AsyncResult


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


def test_a_failing_link_stops_the_chain_and_calls_its_errback(broker, flow_worker, tmp_path):
    failed = (itflow.add.s(1, 1) | itflow.divide.s(0) | itflow.add.s(1)) \
        .on_error(itflow.errback.s("errors")).delay()
    with pytest.raises(ZeroDivisionError):
        failed.get(timeout=20)           # the last task never ran: it has the chain's failure
    assert failed.parent.state == "FAILURE"
    assert failed.parent.parent.get(timeout=5) == 2
    trace = wait_for(lambda: itflow_trace(tmp_path, "errors"), what="the errback")
    assert trace == [failed.parent.id]


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


def itflow_trace(directory, name):
    import os
    path = os.path.join(str(directory), "trace-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]
