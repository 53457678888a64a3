"""Every code snippet of the seed guide, taken from the guide's own text, on a real worker.

`seedguide` extracts each ``.. code-block:: python`` of early Celery's "Tasks" page and
writes it as a module (the guide's code exactly, imports and Python 2's ``except X, exc``
modernised, stand-ins for what it leaves undefined imported above it). One broker and one
worker importing all of them serve this module's tests; each test sends what the guide's
text says next to its snippet and checks what comes back, printing what it saw (run with
``-s`` to read the transcript).

What the tests add beside the guide's code is in the ``seed_extras`` module the worker also
imports: the retry example waits the default three minutes between tries, which a test
cannot, so there it waits `RETRY_DELAY`; and the abstract ``MyTask`` gets a subclass, which
the guide says is registered.
"""

import importlib
import os
import pickle
import subprocess
import sys

import pytest

import seedguide
from cluster import HERE, ROOT, Broker, Worker
from minitask import config, registry
from minitask.transport import reset_connection

RETRY_DELAY = 0.3

EXTRAS = """\
\"\"\"What the tests add beside the guide's code (not the guide's).\"\"\"

import seed_07_retry
import seed_10_abstract

# The guide's retry waits default_retry_delay (three minutes) between tries.
seed_07_retry.send_twitter_status.default_retry_delay = %r


class ConcreteTask(seed_10_abstract.MyTask):
    def run(self):
        return "a subclass of the abstract MyTask runs"
""" % RETRY_DELAY


class SeedCluster:
    """A broker (a built-in one started here unless `broker` is given), and a worker
    importing every snippet module (and the extras)."""

    def __init__(self, folder, broker=None):
        self.folder = folder
        self.modules = {}
        for snippet in seedguide.write_modules(folder):
            self.modules[snippet.module] = snippet
        with open(os.path.join(str(folder), "seed_extras.py"), "w") as handle:
            handle.write(EXTRAS)
        names = [name for name, s in self.modules.items() if not s.is_doctest]
        self.broker = broker or Broker(folder).start()
        self.worker = Worker(self.broker, folder, "seed", modules=",".join(
            names + ["seed_extras"]), env={"PYTHONPATH": os.pathsep.join(
                [ROOT, HERE, str(folder), os.environ.get("PYTHONPATH", "")])})

    def module(self, name):
        return importlib.import_module(name)

    def log(self):
        with open(self.worker.logfile) as handle:
            return handle.read()

    def log_lines(self, task_id):
        return [line for line in self.log().splitlines() if task_id in line]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    saved_registry = dict(registry.tasks)
    saved_environ = os.environ.get("ITTASKS_DIR")
    sys.path.insert(0, str(folder))
    cluster = None
    try:
        cluster = SeedCluster(folder)
        config.configure(BROKER_URL=cluster.broker.url)
        reset_connection()
        os.environ["ITTASKS_DIR"] = str(folder)
        cluster.worker.wait_ready()
        yield cluster
    finally:
        reset_connection()
        config.reset()
        if cluster is not None:
            cluster.worker.proc.close()
            cluster.broker.proc.close()     # the one SeedCluster started
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n.startswith("seed_")]:
            del sys.modules[name]
        registry.tasks.clear()
        registry.tasks.update(saved_registry)
        if saved_environ is None:
            os.environ.pop("ITTASKS_DIR", None)
        else:
            os.environ["ITTASKS_DIR"] = saved_environ


def show(title, *lines):
    print("\n-- %s" % title)
    for line in lines:
        print("   %s" % line)


# -- the text itself ---------------------------------------------------------------------------

def test_every_code_block_of_the_guide_is_taken_word_for_word():
    text = seedguide.read_seed()
    found = seedguide.snippets(text)
    assert len(found) == text.count(seedguide.CODE_BLOCK) == 10
    for snippet, block in zip(found, text.split(seedguide.CODE_BLOCK)[1:]):
        words = snippet.original.split()
        assert block.split()[:len(words)] == words
        if not snippet.is_doctest:
            compile(snippet.code, snippet.module, "exec")       # Python 3 takes it as it is


def test_a_layout_that_changes_the_guides_words_is_refused():
    text = seedguide.read_seed().replace("exc=exc, **kwargs)", "exc=exc, kwargs=kwargs)")
    with pytest.raises(ValueError, match="layout of seed_07_retry differs from the guide"):
        seedguide.snippets(text)


def test_the_copy_kept_with_the_tests_is_the_seed_guide():
    if seedguide.seed_path() == seedguide.FIXTURE:
        pytest.skip("the seed guide is not beside this checkout; only the copy is here")
    assert seedguide.read_seed(seedguide.FIXTURE) == seedguide.read_seed()


# -- the snippets, on a real worker ------------------------------------------------------------

def test_01_a_task_class_calls_create_user(seed, tmp_path):
    module = seed.module("seed_01_task_class")
    result = module.CreateUserTask.delay("george", "secret")
    assert result.get(timeout=10) is None and result.state == "SUCCESS"
    assert "create_user('george', 'secret')" in seedguide.read_trace(seed.folder, "users")
    show("01 CreateUserTask.delay('george', 'secret')", "result: %r (%s)" % (
        result.result, result.state), *seed.log_lines(result.id))


def test_02_the_task_decorator_makes_a_task_of_create_user(seed):
    module = seed.module("seed_02_task_decorator")
    assert module.create_user.name == "seed_02_task_decorator.create_user"
    result = module.create_user.delay("ann", "pw1")
    assert result.get(timeout=10) is None
    assert "User.objects.create(username='ann', password='pw1')" in \
        seedguide.read_trace(seed.folder, "users")
    show("02 create_user.delay('ann', 'pw1')", "result: %r (%s)" % (result.result,
                                                                       result.state),
         *seed.log_lines(result.id))


def test_03_the_decorator_takes_the_options_of_the_task_class(seed):
    module = seed.module("seed_03_decorator_options")
    assert module.create_user.serializer == "json"
    assert module.create_user.build_message(("bob", "pw2")).serializer == "json"
    result = module.create_user.delay("bob", "pw2")
    assert result.get(timeout=10) is None
    assert "User.objects.create(username='bob', password='pw2')" in \
        seedguide.read_trace(seed.folder, "users")
    show("03 create_user (serializer=%r).delay('bob', 'pw2')" % module.create_user.serializer,
         "result: %r (%s)" % (result.result, result.state), *seed.log_lines(result.id))


def test_04_a_task_made_of_a_function_pickles_by_name(seed):
    module = seed.module("seed_04_task_of_a_function")
    task = module.create_user_task
    assert task.__name__ == "create_user_task"
    assert pickle.loads(pickle.dumps(task)) is task
    result = task.delay("carl", "pw3")
    assert result.get(timeout=10) is None
    assert "create_user('carl', 'pw3')" in seedguide.read_trace(seed.folder, "users")
    show("04 create_user_task (%s).delay('carl', 'pw3')" % task.name,
         "result: %r (%s)" % (result.result, result.state), *seed.log_lines(result.id))


def test_05_a_task_class_logs_to_the_worker_log(seed):
    module = seed.module("seed_05_logging_class")
    result = module.AddTask.delay(2, 3)
    assert result.get(timeout=10) == 5
    lines = seed.log_lines(result.id)
    assert any(line.endswith("seed_05_logging_class.AddTask[%s]: Adding 2 + 3" % result.id)
               for line in lines)
    show("05 AddTask.delay(2, 3)", "result: %r" % result.result, *lines)


def test_06_a_decorated_task_logs_to_the_worker_log(seed):
    module = seed.module("seed_06_logging_decorator")
    result = module.add.delay(4, 4)
    assert result.get(timeout=10) == 8
    lines = seed.log_lines(result.id)
    assert any(line.endswith("seed_06_logging_decorator.add[%s]: Adding 4 + 4" % result.id)
               for line in lines)
    show("06 add.delay(4, 4)", "result: %r" % result.result, *lines)


def test_07_retry_sends_the_task_again_until_twitter_is_back(seed):
    module = seed.module("seed_07_retry")
    result = module.send_twitter_status.delay({"failures": 2}, "back")
    assert result.get(timeout=20) is None and result.state == "SUCCESS"
    assert seedguide.read_trace(seed.folder, "tweet-back") == [
        "attempt 1", "attempt 2", "attempt 3"]
    lines = seed.log_lines(result.id)
    assert sum("retry: Retry in %gs" % RETRY_DELAY in line for line in lines) == 2
    show("07 send_twitter_status.delay({'failures': 2}, 'back')",
         "result: %r (%s)" % (result.result, result.state), *lines)


def test_07_past_max_retries_the_exc_given_to_retry_is_raised(seed):
    module = seed.module("seed_07_retry")
    result = module.send_twitter_status.delay({"failures": 99}, "whale")
    with pytest.raises(seedguide.Twitter.FailWhaleError, match="attempt 4"):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert len(seedguide.read_trace(seed.folder, "tweet-whale")) == \
        module.send_twitter_status.max_retries + 1 == 4
    show("07 send_twitter_status.delay({'failures': 99}, 'whale')",
         "result: %r (%s)" % (result.result, result.state),
         *[line for line in seed.log_lines(result.id) if "Traceback" not in line][:8])


def test_08_my_task_runs_as_written(seed):
    """As written, the body is ``...``: it returns None, so its retry is never reached. (Were
    it reached, ``countdown=60 # ...`` followed by ``**kwargs)`` on a later line reads as
    ``countdown=60 ** kwargs``: the guide lost a comma there.)"""
    module = seed.module("seed_08_retry_countdown")
    assert module.MyTask.default_retry_delay == 30 * 60
    result = module.MyTask.delay(1, 2)
    assert result.get(timeout=10) is None and result.state == "SUCCESS"
    show("08 MyTask.delay(1, 2)", "result: %r (%s)" % (result.result, result.state),
         *seed.log_lines(result.id))


def test_09_the_registry_lists_the_builtin_tasks(seed):
    snippet = seed.modules["seed_09_registry"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH",
                                                                              "")]))
    program = ("import code, sys\nconsole = code.InteractiveConsole()\n"
               "for line in sys.stdin.read().splitlines():\n    console.push(line)\n")
    shown = subprocess.run([sys.executable, "-c", program], input="\n".join(
        snippet.statements()) + "\n", capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and not shown.stderr, shown.stderr
    builtins = {"minitask.ping", "minitask.delete_expired_task_meta",
                "minitask.execute_remote", "minitask.map_async", "minitask.http_dispatch"}
    assert all(repr(name) in shown.stdout for name in builtins)
    with seed.broker.connect() as conn:
        on_worker = conn.broadcast("registered", destination=["seed"], timeout=10,
                              limit=1)["seed"]
    assert builtins <= set(on_worker)
    show("09 >>> registry.tasks", *shown.stdout.strip().split(", "))


def test_10_an_abstract_task_is_not_registered_but_its_subclass_is(seed):
    module = seed.module("seed_10_abstract")
    extras = seed.module("seed_extras")
    assert module.MyTask.name not in registry.tasks
    result = extras.ConcreteTask.delay()
    assert result.get(timeout=10) == "a subclass of the abstract MyTask runs"
    with seed.broker.connect() as conn:
        on_worker = conn.broadcast("registered", destination=["seed"], timeout=10,
                              limit=1)["seed"]
    assert "seed_10_abstract.MyTask" not in on_worker
    assert "seed_extras.ConcreteTask" in on_worker
    show("10 abstract MyTask", "registered: %s" % ("seed_10_abstract.MyTask" in on_worker),
         "its subclass: %r" % result.result)
