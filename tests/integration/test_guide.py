"""Early Celery's task guide, promise by promise, against a real broker and worker.

The guide's code lives in guidetasks.py (imports changed from celery to minitask); each test
here checks what the guide's text says next to an example: the "Tasks" page (basics, default
keyword arguments, logging, retrying, options, how it works, tips) and the "Executing Tasks"
page (countdown and eta, routing, mandatory, immediate, priority).
"""

import datetime
import json
import time

import pytest

import guidetasks
from cluster import wait_for
from minitask import config, registry
from minitask.builtins import ping
from minitask.transport import reset_connection
from minitask.decorators import task
from minitask.exceptions import (
    MaxRetriesExceededError, NotDeliverableError, NotRegistered, RetryTaskError,
    UnroutableError,
)
from minitask.result import AsyncResult
from minitask.task import Task

BUILTINS = {"minitask.ping", "minitask.delete_expired_task_meta", "minitask.execute_remote",
            "minitask.map_async", "minitask.http_dispatch"}

GUIDE_QUEUES = {   # "Executing Tasks", routing options: one topic exchange, three queues
    "video": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "video.#"},
    "image": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "image.#"},
    "lowpri": {"exchange": "tasks", "exchange_type": "topic", "binding_key": "misc.#"},
}


def guide_worker(start_worker, args=(), env=None, name=None):
    return start_worker(name=name, args=args, env=env, modules="guidetasks")


def use_queues(broker, queues):
    """Point this process at `queues` (declared as the connection opens)."""
    config.configure(BROKER_URL=broker.url, ACCEPT_CONTENT=["json", "pickle"], QUEUES=queues)
    reset_connection()


def registered_on_worker(broker, name):
    """The worker's task names, by remote control. Call it after the worker has run a task:
    it binds its control queue before it consumes tasks, but only after it shows in status."""
    with broker.connect() as conn:
        replies = conn.broadcast("registered", destination=[name], timeout=10, limit=1)
    return set(replies[name])


def worker_log(worker):
    with open(worker.logfile) as handle:
        return handle.read()


# -- Tasks: basics -----------------------------------------------------------------------------

def test_a_task_class_runs_by_its_generated_name(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    assert guidetasks.CreateUserTask.name == "guidetasks.CreateUserTask"
    result = guidetasks.CreateUserTask.delay("george", "secret")
    assert result.get(timeout=10) is None and result.state == "SUCCESS"
    assert guidetasks.read_trace(tmp_path, "users") == ["george:secret"]


def test_the_task_decorator_takes_the_same_options_as_the_class(broker, start_worker,
                                                                 tmp_path):
    guide_worker(start_worker)
    assert guidetasks.create_user.name == "guidetasks.create_user"
    assert guidetasks.create_user_json.serializer == "json"
    first = guidetasks.create_user.delay("ann", "pw1")
    second = guidetasks.create_user_json.delay("bob", "pw2")
    assert first.get(timeout=10) is None and second.get(timeout=10) is None
    assert sorted(guidetasks.read_trace(tmp_path, "users")) == ["ann:pw1", "bob:pw2"]


def test_delay_is_apply_async_with_args_and_kwargs(broker, start_worker):
    guide_worker(start_worker)
    assert guidetasks.add.delay(1, y=2).get(timeout=10) == 3
    assert guidetasks.add.apply_async(args=[1], kwargs={"y": 2}).get(timeout=10) == 3


# -- Tasks: default keyword arguments ----------------------------------------------------------

def test_default_keyword_arguments_are_given_to_tasks_that_take_them(broker, start_worker):
    guide_worker(start_worker)
    assert guidetasks.kwargs_all.delay().get(timeout=10) == [
        "logfile", "loglevel", "task_id", "task_name", "task_retries"]
    listed = guidetasks.kwargs_listed.delay(5)
    assert listed.get(timeout=10) == {"x": 5, "task_id": listed.id,
                                      "task_name": "guidetasks.kwargs_listed"}
    # one it did not name would be a TypeError in the task
    assert guidetasks.kwargs_none.delay(7).get(timeout=10) == 7


# -- Tasks: logging ----------------------------------------------------------------------------

def test_get_logger_writes_to_the_worker_log_file(broker, start_worker):
    worker = guide_worker(start_worker)                 # -l INFO
    result = guidetasks.add.delay(2, 3)
    assert result.get(timeout=10) == 5
    # The line is written before the result is stored, so it is there by now.
    assert "guidetasks.add[%s]: Adding 2 + 3" % result.id in worker_log(worker)


def test_the_worker_loglevel_decides_which_lines_are_written(broker, start_worker):
    worker = guide_worker(start_worker, args=["-l", "WARNING"])
    result = guidetasks.add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert "Adding 2 + 3" not in worker_log(worker)


# -- Tasks: retrying a task if something fails -------------------------------------------------

def test_retry_with_exc_runs_again_until_twitter_is_back(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    result = guidetasks.send_twitter_status.delay({"failures": 2}, "back")
    assert result.get(timeout=20) is None and result.state == "SUCCESS"
    assert len(guidetasks.read_trace(tmp_path, "back")) == 3


def test_when_max_retries_is_exceeded_the_exc_is_raised(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    whale = guidetasks.send_twitter_status.delay({"failures": 99}, "whale")
    login = guidetasks.send_twitter_status.delay({"failures": 99, "login_fails": True}, "login")
    with pytest.raises(guidetasks.Twitter.FailWhaleError):
        whale.get(timeout=20)
    with pytest.raises(guidetasks.Twitter.LoginError):
        login.get(timeout=20)
    assert whale.state == login.state == "FAILURE"
    max_retries = guidetasks.send_twitter_status.max_retries
    assert max_retries == 3
    assert len(guidetasks.read_trace(tmp_path, "whale")) == max_retries + 1
    assert len(guidetasks.read_trace(tmp_path, "login")) == max_retries + 1


def test_while_it_waits_the_exc_is_the_tombstone_and_countdown_beats_the_default(
        broker, start_worker):
    worker = guide_worker(start_worker)
    result = guidetasks.MyTask.delay(1, 0)
    wait_for(lambda: result.state == "RETRY", 10, what="the RETRY state")
    assert isinstance(result.result, ZeroDivisionError)
    assert not result.ready()
    # countdown=60 overrides default_retry_delay = 30 * 60 ...
    assert "Task guidetasks.MyTask[%s] retry: Retry in 60s" % result.id in worker_log(worker)
    # ... and the retry waits in the broker, not in the worker.
    wait_for(lambda: broker.queue()["delayed"] == 1, 10, what="the retry in the broker")
    assert guidetasks.MyTask.default_retry_delay == 30 * 60
    assert guidetasks.MyTask.delay(4, 2).get(timeout=10) == 2


def test_without_exc_the_tombstone_is_retry_task_error(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    result = guidetasks.retry_without_exc.delay("noexc")
    wait_for(lambda: result.state == "RETRY", 10, what="the RETRY state")
    assert isinstance(result.result, RetryTaskError)
    assert guidetasks.read_trace(tmp_path, "noexc") == ["0"]


def test_without_exc_running_out_of_retries_raises_max_retries_exceeded(broker, start_worker,
                                                                       tmp_path):
    guide_worker(start_worker)
    result = guidetasks.always_retry_without_exc.delay("out")
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=20)
    assert guidetasks.read_trace(tmp_path, "out") == ["0", "1", "2"]      # max_retries=2


# -- Tasks: options ----------------------------------------------------------------------------

def test_task_options_have_the_guides_defaults():
    class PlainTask(Task):
        name = "guide.plain_defaults"

        def run(self):
            return None
    try:
        assert {option: getattr(PlainTask, option) for option in (
            "abstract", "max_retries", "default_retry_delay", "rate_limit", "ignore_result",
            "disable_error_emails", "mandatory", "immediate", "priority", "acks_late",
            "time_limit", "soft_time_limit")} == {
            "abstract": False, "max_retries": 3, "default_retry_delay": 180,
            "rate_limit": None, "ignore_result": False, "disable_error_emails": False,
            "mandatory": False, "immediate": False, "priority": None, "acks_late": None,
            "time_limit": None, "soft_time_limit": None}
        # acks_late None: the TASK_ACKS_LATE setting, False unless set (as in Celery).
        assert PlainTask._instance().effective("acks_late") is False
        message = PlainTask._instance().build_message()
        assert (message.serializer, message.exchange, message.routing_key) == \
            ("json", "minitask", "minitask")
    finally:
        registry.tasks.unregister("guide.plain_defaults")


def test_a_rate_limit_holds_the_task_type_to_its_rate(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    started = time.monotonic()
    results = [guidetasks.limited.delay("rl") for _ in range(5)]
    assert [r.get(timeout=15) for r in results] == ["rl"] * 5
    assert time.monotonic() - started >= 0.39               # 10/s: 4 gaps of 0.1 s
    assert len(guidetasks.read_trace(tmp_path, "rl")) == 5


# -- Tasks: how it works -----------------------------------------------------------------------

def test_the_registry_has_the_builtin_tasks_here_and_in_the_worker(broker, start_worker):
    worker = guide_worker(start_worker)
    assert BUILTINS <= set(registry.tasks)
    assert ping.delay().get(timeout=10) == "pong"
    on_worker = registered_on_worker(broker, worker.name)
    assert BUILTINS <= on_worker
    assert {"guidetasks.add", "guidetasks.CreateUserTask", "guidetasks.MyTask"} <= on_worker


def test_abstract_tasks_are_not_registered_but_their_subclasses_are(broker, start_worker):
    worker = guide_worker(start_worker)
    assert guidetasks.AbstractTask.name not in registry.tasks
    assert registry.tasks["guidetasks.ConcreteTask"] is guidetasks.ConcreteTask._instance()
    assert guidetasks.ConcreteTask.delay().get(timeout=10) == "concrete"
    on_worker = registered_on_worker(broker, worker.name)
    assert "guidetasks.AbstractTask" not in on_worker
    assert "guidetasks.RoutedTask" not in on_worker
    assert "guidetasks.ConcreteTask" in on_worker


def test_messages_carry_the_name_not_the_code(broker, start_worker):
    @task(name="guide.only_in_the_client")
    def only_in_the_client():
        return "never runs"
    try:
        guide_worker(start_worker)
        with pytest.raises(NotRegistered, match="guide.only_in_the_client"):
            only_in_the_client.delay().get(timeout=10)
    finally:
        registry.tasks.unregister("guide.only_in_the_client")


# -- Tasks: tips -------------------------------------------------------------------------------

def test_ignore_result_stores_nothing(broker, start_worker, tmp_path):
    guide_worker(start_worker)
    result = guidetasks.mytask.delay("ignored")
    wait_for(lambda: guidetasks.read_trace(tmp_path, "ignored") == ["ran"], 10,
             what="mytask to run")
    wait_for(lambda: broker.queue()["unacked"] == 0, 10, what="the ack")
    assert result.state == "PENDING"


# -- Executing tasks: countdown and eta --------------------------------------------------------

def test_a_countdown_or_an_eta_takes_at_least_that_long(broker, start_worker):
    guide_worker(start_worker)
    sent = time.time()
    later = guidetasks.add.apply_async(args=[10, 10], countdown=1)
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    at_eta = guidetasks.add.apply_async(args=[5, 5], eta=eta)
    assert later.get(timeout=10) == 20
    assert at_eta.get(timeout=10) == 10
    assert time.time() - sent >= 1.0


# -- Executing tasks: routing options ----------------------------------------------------------

def test_routing_keys_take_tasks_to_the_queues_bound_to_them(broker, start_worker):
    use_queues(broker, GUIDE_QUEUES)
    results = [
        guidetasks.CompressVideoTask.apply_async(args=["movie.mp4"],
                                                 routing_key="video.compress"),
        guidetasks.ImageRotateTask.apply_async(args=["cat.png", 360],
                                               routing_key="image.rotate"),
        guidetasks.ImageCropTask.apply_async(args=["cat.png", "0,0,5,5"],
                                             routing_key="image.crop"),
        guidetasks.UpdateReccomendationsTask.apply_async(routing_key="misc.recommend"),
    ]
    assert [broker.queue(name)["ready"] for name in ("video", "image", "lowpri")] == [1, 2, 1]
    guide_worker(start_worker, args=["-Q", "video,image,lowpri"],
                 env={"MINITASK_QUEUES": json.dumps(GUIDE_QUEUES)})
    assert [r.get(timeout=10) for r in results] == [
        ["CompressVideoTask", "movie.mp4"], ["ImageRotateTask", "cat.png", 360],
        ["ImageCropTask", "cat.png", "0,0,5,5"], ["UpdateReccomendationsTask"]]


def test_topic_and_direct_exchanges_match_as_the_guide_says(broker):
    use_queues(broker, {
        "stocks": {"exchange": "market", "exchange_type": "topic", "binding_key": "*.stock.#"},
        "feeds": {"exchange": "feeds", "exchange_type": "direct", "binding_key": "feed.import"},
    })

    def send(exchange, routing_key):
        return guidetasks.add.apply_async((1, 1), exchange=exchange, routing_key=routing_key,
                                          mandatory=True)
    # "*.stock.#" matches usd.stock and euro.stock.db, but not stock.nasdaq
    send("market", "usd.stock")
    send("market", "euro.stock.db")
    with pytest.raises(UnroutableError):
        send("market", "stock.nasdaq")
    # a direct exchange matches the whole routing key exactly
    send("feeds", "feed.import")
    with pytest.raises(UnroutableError):
        send("feeds", "feed.import.all")
    assert broker.queue("stocks")["ready"] == 2
    assert broker.queue("feeds")["ready"] == 1


# -- Executing tasks: AMQP options -------------------------------------------------------------

def test_mandatory_raises_when_no_queue_would_take_the_message(broker):
    @task(name="guide.mandatory_report", mandatory=True, routing_key="reports")
    def report():
        return "report"
    try:
        with pytest.raises(UnroutableError):
            guidetasks.add.apply_async((1, 1), routing_key="nowhere", mandatory=True)
        with pytest.raises(UnroutableError):
            report.delay()
        guidetasks.add.apply_async((1, 1), routing_key="nowhere")       # dropped quietly
        assert broker.status()["broker"]["unroutable"] == 1
    finally:
        registry.tasks.unregister("guide.mandatory_report")


def test_immediate_raises_when_no_worker_can_take_the_task_now(broker, start_worker):
    with pytest.raises(NotDeliverableError):
        guidetasks.add.apply_async((2, 2), immediate=True)
    assert broker.queue()["ready"] == 0
    guide_worker(start_worker)
    wait_for(lambda: broker.queue()["consumers"] >= 1, 10, what="the worker to consume")
    assert guidetasks.add.apply_async((2, 2), immediate=True).get(timeout=10) == 4


def test_priority_zero_is_the_highest(broker, start_worker, tmp_path):
    for value, priority in [("p9", 9), ("none", None), ("p0", 0), ("p5", 5), ("p1", 1)]:
        guidetasks.record.apply_async(("prio", value), priority=priority)
    guide_worker(start_worker, args=["-c", "1", "--prefetch-multiplier", "1"])
    wait_for(lambda: len(guidetasks.read_trace(tmp_path, "prio")) == 5, 15,
             what="all five to run")
    assert guidetasks.read_trace(tmp_path, "prio") == ["p0", "p1", "none", "p5", "p9"]


def test_a_result_can_be_looked_up_by_id(broker, start_worker):
    guide_worker(start_worker)
    result = guidetasks.add.delay(8, 8)
    assert AsyncResult(result.id).get(timeout=10) == 16
