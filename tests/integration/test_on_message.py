"""Celery's `get(on_message=...)` (the "Calling Tasks" guide's progress idiom): the callback
hears each state the task goes through, progress reported with `update_state` included,
then the final one; `get()` used to refuse the argument (TypeError). On both transports."""

import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ittasks  # noqa: E402
from both import broker, server  # noqa: E402,F401  (fixtures: each transport)
from cluster import workers_of  # noqa: E402
from ittasks import _trace  # noqa: E402

from minitask.exceptions import TimeoutError  # noqa: E402


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path)


def test_on_message_hears_each_progress_state_then_the_result(start_worker):
    start_worker()
    tag = "progress-%s" % uuid.uuid4().hex[:10]
    result = ittasks.progress.delay(tag, 3)
    heard, intervals = [], []

    def on_raw_message(body):
        heard.append(body)
        if body["status"] == "PROGRESS":        # the task waits until it was seen
            _trace(tag, "seen %d" % body["result"]["current"])

    assert result.get(timeout=30, on_message=on_raw_message,
                      on_interval=lambda: intervals.append(1)) == 3
    progress = [body["result"] for body in heard if body["status"] == "PROGRESS"]
    assert progress == [{"current": n, "total": 3} for n in (1, 2, 3)]
    assert heard[-1]["status"] == "SUCCESS" and heard[-1]["result"] == 3
    assert heard[-1]["task_id"] == result.id and heard[-1]["date_done"] is not None
    assert set(heard[0]) == {"task_id", "status", "result", "traceback", "children",
                             "date_done"}
    assert {body["status"] for body in heard} <= {"PENDING", "RECEIVED", "STARTED",
                                                  "PROGRESS", "SUCCESS"}
    assert intervals                            # it waited between looks
    heard.clear()
    assert result.get(on_message=heard.append) == 3     # known already: heard once
    assert [body["status"] for body in heard] == ["SUCCESS"]


def test_on_message_with_a_timeout_raises_after_hearing_what_came(broker):
    heard = []
    result = ittasks.add.delay(1, 1)            # no worker: it stays PENDING
    with pytest.raises(TimeoutError, match="state PENDING"):
        result.get(timeout=0.3, on_message=heard.append)
    assert [body["status"] for body in heard] == ["PENDING"]


def test_a_groups_get_passes_on_message_for_each_result(start_worker):
    from minitask import group
    start_worker()
    heard = []
    result = group(ittasks.add.s(i, i) for i in range(3)).apply_async()
    assert result.get(timeout=30, on_message=heard.append) == [0, 2, 4]
    finals = [(body["task_id"], body["result"]) for body in heard
              if body["status"] == "SUCCESS"]
    assert finals == [(member.id, 2 * i) for i, member in enumerate(result.results)]
