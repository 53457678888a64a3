"""The worker retries exactly as the eager model does (SPEC "Retry"), for generated plans.

One broker and one worker serve every example (about ten, so the test stays short); each
example gets its own trace tag. The model is `Task.apply()`, which runs retries inline with
the same policy module the worker uses.
"""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ittasks
from minitask.exceptions import MaxRetriesExceededError


def model(failures, max_retries, use_exc):
    """Runs (task_retries seen, in order) and the outcome the eager path gives."""
    tag = "model-" + uuid.uuid4().hex
    result = ittasks.PlannedRetry.apply(args=[tag, failures, max_retries, None, use_exc])
    runs = list(range(min(failures, max_retries) + 1))
    return tag, runs, result


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    from cluster import Broker, Worker
    from minitask import config
    from minitask.transport import reset_connection
    import os
    tmp_path = tmp_path_factory.mktemp("retry-model")
    broker = Broker(tmp_path).start()
    os.environ["ITTASKS_DIR"] = str(tmp_path)
    config.configure(BROKER_URL=broker.url)
    reset_connection()
    worker = Worker(broker, tmp_path, "model")
    try:
        worker.wait_ready()
        yield tmp_path
    finally:
        worker.proc.close()
        broker.proc.close()
        reset_connection()
        config.reset()


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(failures=st.integers(0, 5), max_retries=st.integers(0, 3), use_exc=st.booleans(),
       countdown=st.sampled_from([None, 0, 0.05, 0.2]))
def test_the_worker_runs_a_retry_plan_exactly_as_the_eager_model(one_worker, failures,
                                                                 max_retries, use_exc,
                                                                 countdown):
    tag = "plan-" + uuid.uuid4().hex
    model_tag, expected_runs, eager = model(failures, max_retries, use_exc)
    result = ittasks.PlannedRetry.apply_async(
        args=[tag, failures, max_retries, countdown, use_exc])
    if failures <= max_retries:
        assert result.get(timeout=30) == failures == eager.get()
        assert result.state == eager.state == "SUCCESS"
    else:
        expected = RuntimeError if use_exc else MaxRetriesExceededError
        with pytest.raises(expected):
            result.get(timeout=30)
        with pytest.raises(expected):
            eager.get()
        assert result.state == eager.state == "FAILURE"
    runs = [int(line) for line in ittasks.read_trace(one_worker, tag)]
    assert runs == expected_runs
    assert [int(line) for line in ittasks.read_trace(one_worker, model_tag)] == expected_runs


def test_a_retry_cannot_run_before_the_retry_that_sent_it_is_stored(start_worker, tmp_path):
    # The first run's on_retry hook holds its report back for up to a second; the retry must
    # not have run meanwhile (it is published with the RETRY), and the task ends in the
    # retry's FAILURE, not in a RETRY stored after it.
    start_worker()                      # two pool processes: one free for the retry
    one_worker = tmp_path
    tag = "race-" + uuid.uuid4().hex
    result = ittasks.RetryThenWait.apply_async(args=[tag])
    with pytest.raises(RuntimeError, match="the retry fails"):
        result.get(timeout=30)
    assert ittasks.read_trace(one_worker, tag + "-hook") == ["1"]
    assert ittasks.read_trace(one_worker, tag) == ["0", "1"]
    assert result.state == "FAILURE"
