"""Logging as a Celery project sets it up, on a real worker: a `setup_logging` receiver (the
usual way to keep Celery off a project's logging) takes the worker's logging over, in the
worker and in its pool processes (it used to be an ImportError: the worker did not start);
and a module logger from `get_task_logger(__name__)` names the running task on each line."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import broker, wait_for, workers_of  # noqa: E402,F401  (fixtures)

import tasklogger  # noqa: E402

from minitask import send_task  # noqa: E402

# logsignals is not imported here: its receiver would take this process's logging over.


@pytest.fixture
def start_worker(broker, tmp_path):  # noqa: F811  (the fixture imported above)
    yield from workers_of(broker, tmp_path, "logsignals,tasklogger")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_setup_logging_receiver_sets_up_the_workers_logging(start_worker, tmp_path, method):
    worker = start_worker(args=("-l", "INFO", "--start-method", method))
    assert send_task("ls.hello", args=("ann",)).get(timeout=30) == "hello ann"
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
    # get_task_logger's lines reach the project's set-up as well.
    assert tasklogger.add.delay(1, 2).get(timeout=30) == 3
    wait_for(lambda: "APP INFO tasklogger: Adding 1 + 2" in lines(), 30,
             what="a get_task_logger line in the project's log")


def test_get_task_logger_lines_name_the_task_in_the_workers_log(
        start_worker, tmp_path):
    logfile = tmp_path / "worker.log"
    start_worker(args=("-l", "INFO", "-f", str(logfile)), env={"NO_SETUP_LOGGING": "1"})
    result = tasklogger.add.delay(2, 2)
    assert result.get(timeout=30) == 4
    wanted = "tl.add[%s]: Adding 2 + 2" % result.id
    wait_for(lambda: wanted in logfile.read_text(encoding="utf-8"), 30,
             what="the task's line in the worker's log")
    lines = [line for line in logfile.read_text(encoding="utf-8").splitlines()
             if "Adding 2 + 2" in line]
    assert len(lines) == 1 and lines[0].endswith(wanted)    # once: not by the root's too
    assert "INFO/" in lines[0]
