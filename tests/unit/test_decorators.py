"""minitask.decorators: every spelling of @task, what the task object does when called, and
pickling by reference (never by code), with and without setting __name__ by hand.

The guide's own module (tests/unit/fixtures/mttask_guide.py) is imported by name; its tasks are
unregistered and the module forgotten after each test.
"""
import datetime
import logging
import pickle
import pickletools
import sys

import pytest

from minitask import Task, registry
from minitask.decorators import periodic_task, task
from minitask.exceptions import ConfigurationError, NotRegistered
from minitask.result import EagerResult
from minitask.task import PeriodicTask
from taskkit import FIXTURES, isolated_tasks  # noqa: F401  (a fixture)

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


@pytest.fixture(autouse=True)
def isolated(isolated_tasks, monkeypatch):  # noqa: F811  (the fixture imported above)
    """The shared isolation, with the fixture modules importable and forgotten afterwards."""
    monkeypatch.syspath_prepend(FIXTURES)
    yield
    for name in [n for n in sys.modules if n.startswith("mttask_")]:
        del sys.modules[name]


@pytest.fixture
def guide():
    import mttask_guide
    return mttask_guide


@task()
def module_add(x, y):
    """Adds two numbers."""
    return x + y


@task
def module_bare(x):
    return -x


def module_plain(text):
    return text.upper()


module_alias = task()(module_plain)


def global_names_in(data):
    """The (module, name) pairs a pickle refers to: what unpickling would import and call."""
    strings, found = [], []
    for opcode, arg, _pos in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.append(tuple(strings[-2:]))
        elif opcode.name == "GLOBAL":
            found.append(tuple(arg.split(" ", 1)))
    return found


# -- spellings ---------------------------------------------------------------------------------

def test_task_with_parentheses_returns_the_registered_task_object():
    assert isinstance(module_add, Task)
    assert registry.tasks[__name__ + ".module_add"] is module_add
    assert module_add.name == __name__ + ".module_add"


def test_bare_task_returns_the_registered_task_object():
    assert isinstance(module_bare, Task)
    assert registry.tasks[__name__ + ".module_bare"] is module_bare


def test_task_with_options_applies_them():
    def send(x):
        return x

    sent = task(name="myapp.send", max_retries=7, priority=1, ignore_result=True,
                serializer="pickle", rate_limit="10/s")(send)
    assert registry.tasks["myapp.send"] is sent
    assert (sent.max_retries, sent.priority, sent.ignore_result, sent.serializer,
            sent.rate_limit) == (7, 1, True, "pickle", "10/s")


def test_task_of_a_function_assigned_to_another_name_registers_under_the_function_name():
    assert module_alias.name == __name__ + ".module_plain"
    assert registry.tasks[__name__ + ".module_plain"] is module_alias
    assert module_alias("hi") == "HI"


def test_calling_the_task_object_runs_the_function():
    assert module_add(2, 3) == 5
    assert module_bare(4) == -4
    assert module_add.run(1, 1) == 2


def test_the_task_object_keeps_the_functions_name_and_docstring():
    assert module_add.__name__ == "module_add"
    assert module_add.__doc__ == "Adds two numbers."
    assert module_add.__wrapped__(1, 2) == 3


def test_task_refuses_positional_options():
    with pytest.raises(TypeError):
        task("myapp.name")


def test_task_refuses_something_that_is_not_a_function():
    with pytest.raises(TypeError):
        task()(42)


def test_task_with_a_base_class_builds_on_it():
    class Base(Task):
        abstract = True
        max_retries = 9

    @task(base=Base)
    def based():
        return "based"

    assert isinstance(based, Base) and based.max_retries == 9 and based() == "based"


def test_bad_option_is_refused_when_the_function_is_decorated():
    def urgent():
        return None

    with pytest.raises(ConfigurationError, match=r"priority 12"):
        task(priority=12)(urgent)


def test_periodic_task_decorator_builds_a_registered_periodic_task():
    @periodic_task(run_every=datetime.timedelta(minutes=5))
    def tick():
        return "tick"

    assert isinstance(tick, PeriodicTask) and tick.type == "periodic"
    assert registry.tasks[tick.name] is tick
    assert tick.run_every_seconds == 300.0 and tick() == "tick"


def test_periodic_task_without_run_every_is_refused():
    def never():
        return None

    with pytest.raises(ConfigurationError, match="run_every"):
        periodic_task()(never)


# -- calling methods on decorated tasks ----------------------------------------------------------

def test_apply_on_a_decorated_task_runs_it_here():
    result = module_add.apply((2, 2))
    assert isinstance(result, EagerResult) and result.get() == 4


def test_guides_add_logs_through_get_logger_with_default_kwargs(guide, tmp_path):
    logfile = str(tmp_path / "add.log")
    result = guide.add.apply((2, 3), logfile=logfile, loglevel="INFO")
    assert result.get() == 5
    with open(logfile, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1
    assert "Adding 2 + 3" in lines[0] and result.task_id in lines[0]
    for handler in logging.getLogger("minitask.tasks." + guide.add.name).handlers:
        handler.close()


def test_guides_class_task_works_through_the_class(guide):
    assert guide.CreateUserTask.apply(("bob", "pw")).get() == "created bob"
    assert guide.CreateUserTask.retry.__self__ is registry.tasks[guide.CreateUserTask.name]


# -- pickling by reference -----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_decorated_task_pickles_to_the_same_registered_object(protocol):
    for obj in (module_add, module_bare, module_alias):
        assert pickle.loads(pickle.dumps(obj, protocol)) is obj


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_task_wrapping_a_function_under_another_name_pickles_without_setting_name(guide,
                                                                                  protocol):
    restored = pickle.loads(pickle.dumps(guide.create_user_task, protocol))
    assert restored is guide.create_user_task
    assert restored("ann", "pw") == "created ann"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_setting_name_by_hand_stays_harmless(guide, protocol):
    assert guide.renamed_task.__name__ == "renamed_task"
    assert pickle.loads(pickle.dumps(guide.renamed_task, protocol)) is guide.renamed_task
    assert guide.renamed_task("ann") == "renamed ann"


def test_setting_name_by_hand_on_a_local_alias_stays_harmless():
    def local_plain(x):
        return x

    alias = task()(local_plain)
    alias.__name__ = "alias"
    assert pickle.loads(pickle.dumps(alias)) is alias
    assert alias.name == __name__ + ".local_plain"


def test_class_task_instance_pickles_to_the_registered_instance(guide):
    instance = registry.tasks[guide.CreateUserTask.name]
    assert pickle.loads(pickle.dumps(instance)) is instance


def test_a_pickled_task_carries_its_name_and_no_code(guide):
    data = pickle.dumps(guide.create_user_task)
    assert guide.create_user_task.name.encode() in data
    globals_used = global_names_in(data)
    assert globals_used and all(module == "minitask.task" for module, _ in globals_used)


def test_a_pickled_task_unpickles_in_a_process_that_has_not_imported_it_yet(guide):
    data = pickle.dumps(guide.create_user_task)
    name = guide.create_user_task.name
    for task_name in [n for n, t in registry.tasks.items()
                      if type(t).__module__ == "mttask_guide"]:
        registry.unregister(task_name)
    del sys.modules["mttask_guide"]
    restored = pickle.loads(data)
    assert restored.name == name
    assert registry.tasks[name] is restored
    assert restored("ann", "pw") == "created ann"


def test_unpickling_a_task_whose_name_is_unknown_raises_not_registered():
    def gone():
        return None

    doomed = task()(gone)
    data = pickle.dumps(doomed)
    registry.unregister(doomed)
    with pytest.raises(NotRegistered, match="gone"):
        pickle.loads(data)
