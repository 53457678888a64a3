"""Celery's logging signals on a real worker: a project's `setup_logging` receiver (the
usual way to keep Celery off a project's logging) takes the worker's logging over, in the
worker and in its pool processes. It used to be an ImportError: the worker did not start."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import broker, wait_for, workers_of  # noqa: E402,F401  (fixtures)

import logsignals  # noqa: E402


@pytest.fixture
def start_worker(broker, tmp_path):  # noqa: F811  (the fixture imported above)
    yield from workers_of(broker, tmp_path, "logsignals")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_setup_logging_receiver_sets_up_the_workers_logging(start_worker, tmp_path, method):
    worker = start_worker(args=("-l", "INFO", "--start-method", method))
    assert logsignals.hello.delay("ann").get(timeout=30) == "hello ann"
    log = tmp_path / "app.log"

    def lines():
        return log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    wait_for(lambda: any("ann said hello" in line for line in lines()), 30,
             what="the task's lines in the project's log")
    assert "APP INFO minitask.tasks.ls.hello: hello ann" in lines()
    assert "APP WARNING myapp.views: ann said hello" in lines()
    # The worker's own lines go there too, and not to its stderr as well.
    assert any(line.startswith("APP INFO minitask.worker") for line in lines())
    assert "hello ann" not in worker.output()
