"""Celery's signals on a real worker (sigtasks.py connects receivers as Celery's guide does):
each is sent in the process Celery sends it in, with what Celery gives it."""

import datetime
import signal
import time

import pytest

import ittasks
import sigtasks
from cluster import wait_for
from ittasks import read_trace


def lines(tmp_path, word):
    return [line.split() for line in read_trace(tmp_path, "signals")
            if line.split()[0] == word]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_sends_celerys_signals_in_the_processes_celery_sends_them_in(
        broker, start_worker, tmp_path, start_method):
    worker = start_worker(name="sig", modules="ittasks,sigtasks",
                          args=("-c", "2", "--start-method", start_method))
    wait_for(lambda: lines(tmp_path, "worker_ready"), 15, what="worker_ready")
    product = sigtasks.mul.delay(6, 7)
    assert product.get(timeout=15) == 42
    failed = sigtasks.boom.delay()
    with pytest.raises(ValueError):
        failed.get(timeout=15)
    stale = sigtasks.mul.apply_async((1, 1), expires=datetime.datetime.now(
        datetime.timezone.utc) - datetime.timedelta(seconds=5))
    assert stale.wait(timeout=15, propagate=False) is not None and stale.state == "REVOKED"
    stuck = [ittasks.sleep.delay(60, tag="stuck%d" % i) for i in range(2)]
    for i in range(2):                  # both pool processes busy
        wait_for(lambda: "start" in read_trace(tmp_path, "stuck%d" % i), 15,
                 what="long task %d" % i)
    waiting = sigtasks.mul.delay(2, 2)
    expires_at = time.time() + 2.0
    expiring = sigtasks.mul.apply_async((3, 3), expires=2.0)
    for held in (waiting, expiring):
        wait_for(lambda: any(line[1] == held.id for line in lines(tmp_path, "received")), 15,
                 what="the worker to hold the next tasks")
    waiting.revoke()
    wait_for(lambda: time.time() > expires_at + 0.1, 5, what="the held task to expire")
    for result in stuck:
        result.revoke(terminate=True)
    for result in stuck + [waiting, expiring]:
        assert result.wait(timeout=15, propagate=False) is not None
        assert result.state == "REVOKED"
    assert worker.stop() == 0

    (init,) = lines(tmp_path, "worker_init")
    (ready,) = lines(tmp_path, "worker_ready")
    main_pid = init[2]
    assert init[1] == ready[1] == "sig" and ready[2] == main_pid
    pool_pids = {line[1] for line in lines(tmp_path, "process_init")}
    assert len(pool_pids) == 4 and main_pid not in pool_pids    # 2, and the 2 replaced
    prerun = {line[2]: line for line in lines(tmp_path, "prerun")}
    assert prerun[product.id][1] == "sig.mul" and prerun[product.id][3:5] == ["[6,", "7]"]
    assert prerun[product.id][5] in pool_pids                # run where the task ran
    postrun = {line[2]: line[1:] for line in lines(tmp_path, "postrun")}
    assert postrun[product.id] == ["sig.mul", product.id, "42", "SUCCESS"]
    assert postrun[failed.id] == ["sig.boom", failed.id, "boom", "FAILURE"]
    assert lines(tmp_path, "failure") == [["failure", "sig.boom", failed.id, "ValueError",
                                           "boom"]]
    received = {line[1]: line for line in lines(tmp_path, "received")}
    assert received[product.id][2:] == ["sig.mul", "sig.mul", "[6,", "7]", main_pid]
    assert stale.id not in received         # the broker found it expired: no worker saw it
    revoked = {line[2]: line[1:] for line in lines(tmp_path, "revoked")}
    term = str(int(signal.SIGTERM))
    assert revoked == {waiting.id: ["sig.mul", waiting.id, "False", "None", "False"],
                       expiring.id: ["sig.mul", expiring.id, "False", "None", "True"],
                       stuck[0].id: ["it.sleep", stuck[0].id, "True", term, "False"],
                       stuck[1].id: ["it.sleep", stuck[1].id, "True", term, "False"]}
    assert lines(tmp_path, "shutting_down") == [["shutting_down", "sig", "SIGTERM", "Warm",
                                                 "0"]]
    assert lines(tmp_path, "worker_shutdown") == [["worker_shutdown", "sig"]]
    ended = {line[1] for line in lines(tmp_path, "process_shutdown")}
    assert len(ended) == 2 and ended < pool_pids        # not the one killed: it never could
    assert ": receiver " not in worker.output()              # no receiver failed
