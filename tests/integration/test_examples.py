"""Every example in examples/ runs on its own and prints exactly what a learner should see.

Each example starts its own broker and worker (examples/_run.py) and stops them, so the
examples run side by side, a few at a time, once for the whole module; each test then compares
one example's output, line by line, with the lines below. An example that overruns its
deadline gets SIGTERM, which it turns into a clean stop of its broker and worker.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
TIMEOUT = 60.0          # seconds; each example takes a few on an idle machine
PARALLEL = 4

EXPECTED = {
    "01_task_class_and_decorator.py": [
        "CreateUserTask.name = '01_task_class_and_decorator.CreateUserTask'",
        "CreateUserTask.delay('george', 'secret').get() = 'created user george'",
        "add.name = '01_task_class_and_decorator.add'",
        "add(2, 2) = 4   (called here, like the function)",
        "add.delay(2, 2).get() = 4   (run by the worker)",
        "multiply.delay(3, 4).get() = 12",
        "greet.serializer = 'json'; greet.delay('world').get() = 'hello, world'",
    ],
    "02_task_of_a_function.py": [
        "create_user('ann', 'pw') = 'created user ann'   (still a plain function)",
        "create_user_task.name = '02_task_of_a_function.create_user'",
        "registered: True",
        "pickles by name: True",
        "create_user_task.delay('bob', 'pw').get() = 'created user bob'",
        "rename_user_task.name = '02_task_of_a_function.rename_user'",
        "rename_user_task.delay('bob', 'rob').get() = 'renamed bob to rob'",
    ],
    "03_default_keyword_arguments.py": [
        "takes_all(**kwargs) gets: logfile, loglevel, task_id, task_name, task_retries",
        "takes_some(x, task_id, task_name, task_retries) gets:",
        "  task_id is its own id: True",
        "  task_name = '03_default_keyword_arguments.takes_some'",
        "  task_retries = 0",
        "takes_none(x) gets none of them: takes_none.delay(21).get() = 42",
        "where_it_logs(logfile, loglevel) = ('worker.log', 'INFO')   (the worker's -f and -l)",
        "called here, like a function, it gets none: takes_some(5)['task_id'] = None",
    ],
    "04_logging.py": [
        "add.delay(4, 4).get() = 8",
        "the worker's log file has 1 line(s) from the task:",
        "  INFO 04_logging.add[<task id>]: Adding 4 + 4",
    ],
    "05_retrying.py": [
        "waiting to retry: state RETRY, tombstone FailWhaleError('Twitter is over capacity')",
        "after Twitter comes back: 'posted hello after 3 attempts'",
        "after max_retries=3 retries it raises exc: FailWhaleError: Twitter is over capacity",
        "  state FAILURE",
        "  Twitter saw 4 attempts",
        "MyTask.default_retry_delay = 1800 seconds",
        "MyTask.delay(2, 3).get() = 5",
        "  it ran twice, the retry after countdown=1: True (not 30 minutes later: True)",
    ],
    "06_task_options.py": [
        "option                 plain task       ResizeImageTask",
        "name                   (generated)      'images.resize'",
        "abstract               False            False",
        "max_retries            3                5",
        "default_retry_delay    180              10",
        "rate_limit             None             '10/s'",
        "ignore_result          False            False",
        "disable_error_emails   False            True",
        "serializer             None             'json'",
        "routing_key            None             'image.resize'",
        "exchange               None             'media'",
        "mandatory              False            True",
        "immediate              False            False",
        "priority               None             2",
        "acks_late              None             True",
        "time_limit             None             30",
        "soft_time_limit        None             20",
        "(None: the setting decides: DEFAULT_RATE_LIMIT (off), TASK_SERIALIZER ('json'),",
        " DEFAULT_ROUTING_KEY and DEFAULT_EXCHANGE ('minitask'), TASK_ACKS_LATE (False),",
        " TASK_TIME_LIMIT and TASK_SOFT_TIME_LIMIT (none); priority None is 4)",
        "MediaTask is registered: False; ResizeImageTask is: True",
        "thumbnail: name 'images.thumbnail', rate_limit '100/m', priority 1, time_limit 10",
        "cat.png resized to 200px (routing key image.resize, priority 2)",
        "dog.png resized to 100px (routing key image.small, priority 0)",
        "thumbnail of cat.png",
    ],
    "07_routing.py": [
        "messages no queue would take, dropped by the broker: 1",
        "waiting before any worker runs: video 2, image 2, lowpri 1, feeds 1",
        "compressed movie.mp4 on video box",
        "compressed film.mkv on video box",
        "rotated cat.png by 360 on image box",
        "cropped cat.png to 0,0,10,10 on image box",
        "updated recommendations on image box",
        "imported http://example.com/rss on image box",
    ],
    "08_mandatory_and_immediate.py": [
        "without mandatory, routing key 'nowhere': sent, dropped, state PENDING",
        "with mandatory=True: UnroutableError",
        "  message to exchange 'minitask' with routing key 'nowhere' matched no queue",
        "monthly_report (mandatory=True as a task option): UnroutableError",
        "no worker yet, immediate=True: NotDeliverableError",
        "  no consumer of 'minitask' can take the message now",
        "no worker yet, without immediate: it waits in the queue (1 message)",
        "the worker starts and runs it: add(1, 1) = 2",
        "with a worker running, immediate=True: add(2, 2) = 4",
    ],
    "09_priorities.py": [
        "sent, in this order: low (9), normal (none = 4), high (1), urgent (0), normal (5)",
        "ran, in this order:",
        "  urgent (0, a task option)",
        "  high (1)",
        "  normal (none = 4)",
        "  normal (5)",
        "  low (9)",
    ],
    "10_rate_limits.py": [
        "fetch_page.rate_limit = '5/s', count_words.rate_limit = None",
        "8 calls of fetch_page took at least 7 x 0.2 s = 1.4 s: True",
        "the 4 calls of count_words, sent after them, finished first: True",
    ],
    "11_results.py": [
        "add.delay(8, 8).get() = 16",
        "  state SUCCESS, ready() True, successful() True, result 16",
        "  AsyncResult(its id).get() = 16",
        "add.apply_async(args=[10, 10], countdown=1).get() = 20, after 1 s or more: True",
        "divide.delay(1, 0).get() raised ZeroDivisionError: division by zero",
        "  state FAILURE, failed() True, traceback ends 'ZeroDivisionError: division by zero'",
        "  get(propagate=False) returns ZeroDivisionError('division by zero')",
        "an id nobody sent: state PENDING, get(timeout=0.2) raises TimeoutError",
        "broken_visit (ignore_result=True) failed, and that is stored: no such page: /nowhere",
        "record_visit (ignore_result=True) ran, and its state stays PENDING",
    ],
    "12_builtins_and_registry.py": [
        "registry.tasks:",
        "  12_builtins_and_registry.RefreshFeedTask",
        "  12_builtins_and_registry.add",
        "  12_builtins_and_registry.registered_names",
        "  minitask.delete_expired_task_meta",
        "  minitask.execute_remote",
        "  minitask.http_dispatch",
        "  minitask.map",
        "  minitask.map_async",
        "  minitask.ping",
        "  minitask.starmap",
        "the worker's registry has them all: True",
        "BaseFeedTask (abstract) registered here: False; RefreshFeedTask: True",
        "registry.tasks['12_builtins_and_registry.add'] is add: True",
        "ping.delay().get() = 'pong'",
        "map_async.delay(add.name, [(1, 1), (2, 2), (3, 3)]).get() = [2, 4, 6]",
        "send_callable(operator.mul, 6, 7).get() = 42",
        "http_dispatch.delay('http://127.0.0.1:PORT/add', x=20, y=22).get() = 42",
    ],
    "13_custom_loader.py": [
        'minitask.json says: {"IMPORTS": ["13_custom_loader"]}',
        "hello.delay('loader').get() = 'hello, loader'",
        "the worker's loader: JSONFileLoader",
        "its IMPORTS (from minitask.json): ['13_custom_loader']",
        "on_worker_init ran before the worker took messages: True",
        "on_task_init ran before each task: hello, loader_trace",
    ],
    "14_django_loader.py": [
        "spam_filter.delay(1, 'Nice post!').get() = False",
        "spam_filter.delay(2, 'Win the LOTTERY').get() = True",
        "charge_order.delay(17, 9.5).get() = 'order 17 charged 9.50'",
        "the worker registered, besides minitask's own tasks:",
        "  djangoish.blog.tasks.spam_filter",
        "  djangoish.shop.tasks.charge_order",
    ],
    "15_workflows.py": [
        "(add.s(2, 2) | mul.s(8) | add.s(1)).delay().get() = 33",
        "  .parent.get() = 32, .parent.parent.get() = 4",
        "chain(add.s(4), mul.s(8))(16).get() = 160",
        "(add.si(1, 1) | add.si(2, 2)).delay().get() = 4   (immutable: no result passed)",
        "group(add.s(i, i) for i in range(5))().get() = [0, 2, 4, 6, 8]",
        "chord((add.s(i, i) for i in range(10)), tsum.s())().get() = 90",
        "(group(add.s(1, 1), add.s(2, 2)) | tsum.s()).delay().get() = 6",
        "tsum.map([[1, 2], [3, 4]]).delay().get() = [3, 7]",
        "add.starmap([(1, 2), (3, 4)]).delay().get() = [3, 7]",
        "add.chunks(zip(range(6), range(6)), 4)().get() = [[0, 2, 4, 6], [8, 10]]",
        "add.apply_async((2, 2), link=mul.s(10)): 4, its callback 40",
        "a chain whose divide.s(0) fails: .get() raises ZeroDivisionError: division by zero",
        "  the failed link's state: FAILURE, and its last task's too: FAILURE",
        "  log_error got the failed task's id: True",
        "a chord whose header fails: the body never runs; ChordError names the task: True",
        "stored as JSON (352 characters) and rebuilt: 15_workflows.add(3, 3) | "
        "15_workflows.mul(7) = 42",
        "AsyncResult ids exist before anything runs: True",
    ],
}


def _run_example(filename, scratch):
    """Run one example as a user would; returns (exit code, stdout, stderr)."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("MINITASK_") or name == "DJANGO_SETTINGS_MODULE":
            del env[name]
    env["TMPDIR"] = str(scratch)                # the example's scratch folder goes here
    process = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, filename)],
                               cwd=str(scratch), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)     # the example stops its broker and worker
        try:
            out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        err += b"\n(timed out after %ds)" % TIMEOUT
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Run every example once, PARALLEL at a time: {filename: (code, stdout, stderr)}."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_run_example, name, tmp_path_factory.mktemp("example"))
                   for name in sorted(EXPECTED)}
        return {name: future.result() for name, future in futures.items()}


def test_every_example_file_is_checked():
    files = sorted(name for name in os.listdir(EXAMPLES)
                   if name.endswith(".py") and name[:2].isdigit())
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_example_prints_what_the_learner_should_see(outputs, filename):
    code, out, err = outputs[filename]
    assert out.splitlines() == EXPECTED[filename], "stderr of %s:\n%s" % (filename, err)
    assert code == 0, err
