"""Celery's "Optimizing" user guide (docs/userguide/optimizing.rst, Celery 5), its advice and
settings pasted as a Celery user writes them, run by real workers on both transports: the
built-in broker and Redis (the `broker` fixture of both.py; Redis skips, saying why, where
redis-server is not installed). The tasks are in optidioms.py.

The guide's settings go where minitask reads Celery's setting names: a settings module written
per test (README, Configuration: "a celeryconfig.py works as
MINITASK_CONFIG_MODULE=celeryconfig"), read by this process and the worker alike.
``app.control.inspect(...)`` is ``minitask.control.inspect(...)`` (README, Migrating from
Celery). Where the README names a difference, the test checks minitask's documented behaviour
and cites the README.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import Broker, celeryconfig, wait_for, workers_of  # noqa: E402,F401
from ittasks import read_trace  # noqa: E402
from optidioms import (  # noqa: E402
    add, fire_and_forget, leak, let_go, long_task, short_task,
)

from minitask import control, group  # noqa: E402
from minitask.exceptions import ConfigurationError  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

MODULES = "optidioms"
TIMEOUT = 15


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES)


def started(tmp_path, tag):
    """``(worker name, pool pid)`` of long_task(tag), once it has started."""
    line = wait_for(lambda: next(iter(read_trace(tmp_path, tag)), None), TIMEOUT,
                    what="long_task(%r) to start" % tag)
    _, hostname, pid = line.split()
    return hostname, int(pid)


def ids(tasks):
    return [task["id"] for task in tasks]


def ready(broker, *queues):
    """The messages waiting in each queue (0 for a queue that does not exist)."""
    rows = {row["name"]: row for row in broker.status()["queues"]}
    return [rows[name]["ready"] if name in rows else 0 for name in queues]


def warm_up(tmp_path):
    """Let long_task run short a few times, so the worker knows its type as a fast one
    (README, Prefetch and short tasks: a task type that ran under 2 ms)."""
    let_go(tmp_path, "warm")
    for _ in range(3):
        assert len(group(long_task.s("warm") for _ in range(4)).apply_async()
                   .get(timeout=TIMEOUT)) == 4


# -- Reserve one task at a time ---------------------------------------------------------------

def test_reserve_one_task_at_a_time_leaves_the_waiting_task_to_an_idle_worker(
        broker, celeryconfig, start_worker, tmp_path):
    """``task_acks_late = True`` and ``worker_prefetch_multiplier = 1``: "a worker only
    reserve[s] as many tasks as there are worker processes": while a long task runs on
    ``-c 1``, ``inspect reserved`` is empty, the broker still holds the next task (ready,
    the running one unacked), and a second worker started then takes it at once."""
    env = celeryconfig("""\
        task_acks_late = True
        worker_prefetch_multiplier = 1
        """)
    start_worker("w1", args=("-c", "1"), env=env)
    running = long_task.delay("long")
    waiting = short_task.delay(1)
    assert started(tmp_path, "long")[0] == "w1"
    inspect = control.inspect(["w1"])
    assert {name: ids(tasks) for name, tasks in inspect.active().items()} == \
        {"w1": [running.id]}
    assert inspect.reserved() == {"w1": []}
    assert inspect.stats()["w1"]["prefetch_count"] == 1
    queue = broker.queue()
    assert (queue["ready"], queue["unacked"]) == (1, 1)
    assert waiting.state == "PENDING"

    start_worker("w2", args=("-c", "1"), env=env)
    assert waiting.get(timeout=TIMEOUT)[1] == "w2"      # not behind the long one
    assert running.state == "STARTED"
    let_go(tmp_path, "long")
    assert running.get(timeout=TIMEOUT)[0] == "w1"


def test_early_acks_with_a_multiplier_of_one_reserve_one_extra_task_per_process(
        broker, celeryconfig, start_worker, tmp_path):
    """"When using the default of early acknowledgment, having a prefetch multiplier setting
    of one, means the worker will reserve at most one extra task for every worker process".
    The guide's other way, ``worker_disable_prefetch = True``, has no counterpart: README,
    Configuration: every other Celery name "gets one warning at start naming it and the
    minitask way" (here: TASK_ACKS_LATE = True and PREFETCH_MULTIPLIER = 1, which the test
    above follows), so one task still waits behind the long one."""
    env = celeryconfig("""\
        worker_prefetch_multiplier = 1
        worker_disable_prefetch = True
        """)
    worker = start_worker("w1", args=("-c", "1"), env=env)
    running = long_task.delay("long")
    started(tmp_path, "long")
    behind = [short_task.delay(i) for i in range(3)]
    wait_for(lambda: behind[0].state == "RECEIVED", TIMEOUT, what="one task reserved")
    inspect = control.inspect(["w1"])
    assert ids(inspect.reserved()["w1"]) == [behind[0].id]
    assert ids(inspect.active()["w1"]) == [running.id]
    assert ready(broker, "minitask") == [2]
    assert [r.state for r in behind[1:]] == ["PENDING", "PENDING"]
    assert "worker_disable_prefetch" in worker.output()
    assert "TASK_ACKS_LATE = True and PREFETCH_MULTIPLIER = 1" in worker.output()
    let_go(tmp_path, "long")
    assert [r.get(timeout=TIMEOUT)[:2] for r in behind] == [[0, "w1"], [1, "w1"], [2, "w1"]]


# -- Prefetch limits: long and short tasks on workers of their own ----------------------------

def test_long_and_short_tasks_routed_to_workers_configured_separately(
        broker, celeryconfig, start_worker, tmp_path):
    """"If you have a combination of long- and short-running tasks, the best option is to use
    two worker nodes that are configured separately, and route the tasks according to the
    run-time": task_routes by name, a long-task worker with a multiplier of one, a short-task
    worker with a large one ("Say 64, or 128"). With early acks the long-task worker holds
    one more long task (see the test above), never a short one."""
    env = celeryconfig("""\
        task_routes = {
            'optidioms.long_task': {'queue': 'long'},
            'optidioms.short_task': {'queue': 'short'},
        }
        """)
    start_worker("long", args=("-Q", "long", "-c", "1", "--prefetch-multiplier", "1"), env=env)
    start_worker("short", args=("-Q", "short", "-c", "1", "--prefetch-multiplier", "64"),
                 env=env)
    first, second = long_task.delay("first"), long_task.delay("second")
    shorts = group(short_task.s(i) for i in range(100)).apply_async()
    assert started(tmp_path, "first")[0] == "long"
    assert {where for _, where, _ in shorts.get(timeout=TIMEOUT)} == {"short"}
    assert (first.state, second.state) == ("STARTED", "RECEIVED")
    assert ready(broker, "long", "short") == [0, 0]
    stats = control.inspect(["long", "short"]).stats()
    assert (stats["long"]["prefetch_count"], stats["short"]["prefetch_count"]) == (1, 64)
    let_go(tmp_path, "first")
    let_go(tmp_path, "second")
    assert [r.get(timeout=TIMEOUT)[0] for r in (first, second)] == ["long", "long"]


# -- Prefork pool prefetch settings: -O fair ---------------------------------------------------

def test_long_tasks_go_only_to_idle_processes_as_with_o_fair(broker, start_worker, tmp_path):
    """``celery worker -c 2 -Ofair``: "the worker will only write to processes that are
    available for work", so no task waits behind a long one while a process is free. README,
    Celery's command lines: ``-O fair`` is "refused: minitask already works so (a task that
    runs longer than a few milliseconds goes only to an idle process)": so plain ``-c 2``.
    A long task of a type not seen yet goes to an idle process, short tasks all run on the
    other one meanwhile, and a task that comes while both are busy runs on whichever frees
    first."""
    start_worker("w1", args=("-c", "2"))
    first = long_task.delay("first")
    _, first_pid = started(tmp_path, "first")
    shorts = group(short_task.s(i) for i in range(20)).apply_async()
    pids = {pid for _, _, pid in shorts.get(timeout=TIMEOUT)}
    assert first.state == "STARTED"
    assert len(pids) == 1 and first_pid not in pids
    other_pid, = pids

    second = long_task.delay("second")
    assert started(tmp_path, "second")[1] == other_pid
    later = short_task.delay(99)
    wait_for(lambda: later.state == "RECEIVED", TIMEOUT, what="the worker to hold it")
    let_go(tmp_path, "first")
    assert later.get(timeout=TIMEOUT)[2] == first_pid
    assert second.state == "STARTED"
    let_go(tmp_path, "second")
    assert [r.get(timeout=TIMEOUT)[1] for r in (first, second)] == [first_pid, other_pid]


def test_no_short_task_waits_behind_a_usually_fast_task_that_runs_long(broker, start_worker,
                                                                       tmp_path):
    """As above, -O fair's promise, with a long task whose type has run fast before (a cache
    look-up that once goes to a slow backend): the short tasks sent while it runs must all
    run on the idle process. They did not: a few are written to the busy process's pipe and
    wait there until the long task ends."""
    start_worker("w1", args=("-c", "2"))
    warm_up(tmp_path)
    stalled = long_task.delay("stall")
    started(tmp_path, "stall")
    shorts = group(short_task.s(i) for i in range(12)).apply_async()
    try:
        wait_for(lambda: all(r.ready() for r in shorts.results), 1.0,
                 what="the short tasks, one pool process being idle")
        assert stalled.state == "STARTED"
    finally:
        let_go(tmp_path, "stall")


def test_a_finished_task_is_reported_while_the_next_one_runs(broker, start_worker, tmp_path):
    """A worker ``-c 1`` given short tasks then a long one (of a type known to be fast), all
    within its prefetch: the short ones run first, in order, and end SUCCESS; their results
    must not wait for the long task. They did: all but the first stayed STARTED (``get()``
    waiting) until it ended."""
    start_worker("w1", args=("-c", "1", "--prefetch-multiplier", "8"))
    warm_up(tmp_path)
    results = group([add.s(i, i) for i in range(4)] + [long_task.s("stall")]).apply_async()
    started(tmp_path, "stall")              # so the four before it have run (one process)
    try:
        wait_for(lambda: all(r.ready() for r in results.results[:4]), 1.0,
                 what="the results of the short tasks that ran")
        assert [r.get(timeout=TIMEOUT) for r in results.results[:4]] == [0, 2, 4, 6]
    finally:
        let_go(tmp_path, "stall")


def test_tasks_taken_back_from_the_only_process_run_there_once_it_is_free(broker,
                                                                         start_worker,
                                                                         tmp_path):
    """With one pool process, what is taken back from behind a stalled task can only go back
    to that process: it must run there once the stall ends (numbered again, not skipped as
    taken back). Found in CI by the workflow chaos test, whose chain stayed PENDING."""
    start_worker("w1", args=("-c", "1", "--prefetch-multiplier", "8"))
    warm_up(tmp_path)
    for _ in range(3):                  # add is known fast too: it queues behind the stall
        assert group(add.s(i, i) for i in range(4)).apply_async().get(timeout=TIMEOUT) == \
            [0, 2, 4, 6]
    results = group([long_task.s("stall")] + [add.s(i, i) for i in range(4)]).apply_async()
    started(tmp_path, "stall")
    wait_for(lambda: [r.state for r in results.results[1:]] == ["RECEIVED"] * 4, TIMEOUT,
             what="the four to wait behind the stall")
    let_go(tmp_path, "stall")
    assert [r.get(timeout=TIMEOUT) for r in results.results[1:]] == [0, 2, 4, 6]


# -- Using transient queues --------------------------------------------------------------------

def test_a_transient_queue_is_lost_with_the_broker_and_a_durable_one_is_not(
        broker, celeryconfig, start_worker):
    """The guide's ``task_queues = (Queue('celery', routing_key='celery'), Queue('transient',
    Exchange('transient', delivery_mode=1), routing_key='transient', durable=False))``, in
    the dict form both Celery's task_queues and minitask's QUEUES take (minitask has no
    kombu), then ``task.apply_async(args, queue='transient')``. Its ``delivery_mode=1`` and
    the task_routes form ``'delivery_mode': 'transient'`` are refused (README, Task options:
    delivery_mode is accepted only as 2 or "persistent", "task messages are always
    persistent"). On the built-in broker a restart loses the transient queue's message,
    "fine" for such tasks, and keeps the durable one's. Redis is not restarted here (its
    server is shared by the module's tests): there both queues just take their calls."""
    for refused in ("task_queues = {'transient': {'exchange': 'transient', "
                    "'routing_key': 'transient', 'durable': False, 'delivery_mode': 1}}\n",
                    "task_routes = {'optidioms.add': {'queue': 'celery', "
                    "'delivery_mode': 'transient'}}\n"):
        with pytest.raises(ConfigurationError, match="delivery_mode"):
            celeryconfig(refused)
    env = celeryconfig("""\
        task_queues = {
            'celery': {'routing_key': 'celery'},
            'transient': {'exchange': 'transient', 'routing_key': 'transient',
                          'durable': False},
        }
        """)
    kept = add.apply_async((2, 2), queue='celery')
    maybe_lost = add.apply_async((4, 4), queue='transient')
    assert ready(broker, 'celery', 'transient') == [1, 1]
    durable = {q["name"]: q["durable"] for q in broker.status()["queues"]}
    assert (durable['celery'], durable['transient']) == (True, False)
    builtin = isinstance(broker, Broker)
    if builtin:
        broker.restart()
        reset_connection()
        assert ready(broker, 'celery', 'transient') == [1, 0]
    start_worker(args=("-Q", "celery,transient", "-c", "1"), env=env)
    assert kept.get(timeout=TIMEOUT) == 4
    assert add.apply_async((8, 8), queue='transient').get(timeout=TIMEOUT) == 16
    if builtin:
        settle(broker)
        assert maybe_lost.state == "PENDING"                # never ran
    else:
        assert maybe_lost.get(timeout=TIMEOUT) == 8


# -- Broker connection pools; results not wanted -----------------------------------------------

def test_pool_limit_threads_and_ignored_results(broker, celeryconfig, start_worker, tmp_path):
    """``broker_pool_limit = 10`` (README: accepted without a word, "each thread has one
    connection") with eight threads sending at once; ``ignore_result=True`` on a task stores
    nothing. ``task_ignore_result = True`` is not minitask's (README, Configuration: only
    ``task_ignore_result=False`` is accepted without a word; other values get one warning):
    a task without the option still stores its result."""
    env = celeryconfig("""\
        broker_pool_limit = 10
        task_ignore_result = True
        """)
    worker = start_worker(args=("-c", "2"), env=env)
    with ThreadPoolExecutor(8) as threads:
        sums = list(threads.map(lambda i: add.delay(i, i).get(timeout=TIMEOUT), range(80)))
        ignored = list(threads.map(lambda i: fire_and_forget.delay("ff", i), range(40)))
    assert sums == [2 * i for i in range(80)]
    settle(broker)
    assert sorted(read_trace(tmp_path, "ff")) == sorted("ran %d" % i for i in range(40))
    assert {r.state for r in ignored} == {"PENDING"}
    output = worker.output()
    assert "task_ignore_result=True has no effect" in output
    assert "broker_pool_limit" not in output


# -- Memory usage -------------------------------------------------------------------------------

def test_max_tasks_per_child_restarts_a_leaking_child(broker, celeryconfig, start_worker):
    """"Celery workers have two main ways to help reduce memory usage ... the
    worker_max_tasks_per_child and worker_max_memory_per_child settings": the first replaces
    a pool process after that many tasks; the second has no counterpart (README, Celery's
    command lines: ``--max-memory-per-child`` is "refused: --max-tasks-per-child N"), so the
    setting gets one warning naming MAX_TASKS_PER_CHILD, and the worker runs."""
    env = celeryconfig("""\
        worker_max_tasks_per_child = 2
        worker_max_memory_per_child = 12000  # 12MB
        """)
    worker = start_worker(args=("-c", "1"), env=env)
    pids = [leak.delay(8).get(timeout=TIMEOUT) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]
    output = worker.output()
    assert "worker_max_memory_per_child" in output and "MAX_TASKS_PER_CHILD" in output
