"""minitask.registry: name -> task object, register/unregister, NotRegistered, the built-ins."""
import pytest

import minitask
from minitask import Task, registry, task
from minitask.exceptions import MinitaskError, NotRegistered
from minitask.registry import TaskRegistry

BUILTINS = ["minitask.ping", "minitask.delete_expired_task_meta", "minitask.execute_remote",
            "minitask.map_async", "minitask.http_dispatch"]


@pytest.fixture(autouse=True)
def restored_registry():
    saved = dict(registry.tasks)
    yield
    registry.tasks.clear()
    registry.tasks.update(saved)


def make_task(name):
    return task(name=name)(lambda: name)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_task_is_always_registered(name):
    assert registry.tasks[name].name == name
    assert isinstance(registry.tasks[name], Task)


def test_tasks_maps_each_name_to_the_task_object_of_that_name():
    made = make_task("myapp.mapped")
    assert registry.tasks["myapp.mapped"] is made
    assert all(t.name == name for name, t in registry.tasks.items())


def test_unknown_name_raises_not_registered_naming_it():
    with pytest.raises(NotRegistered) as info:
        registry.tasks["myapp.nowhere"]
    assert "myapp.nowhere" in str(info.value)
    assert "\n" not in str(info.value)


def test_not_registered_is_a_key_error_and_a_minitask_error():
    assert issubclass(NotRegistered, KeyError)
    assert issubclass(NotRegistered, MinitaskError)
    with pytest.raises(KeyError):
        registry.tasks["myapp.nowhere"]


def test_membership_and_get_do_not_raise_for_unknown_names():
    assert "myapp.nowhere" not in registry.tasks
    assert registry.tasks.get("myapp.nowhere") is None


def test_register_adds_a_task_object_and_returns_it():
    own = TaskRegistry()
    made = make_task("myapp.own")
    assert own.register(made) is made
    assert own["myapp.own"] is made


def test_register_of_a_class_registers_its_shared_instance():
    class Abstractly(Task):
        abstract = True
        name = "myapp.abstractly"

        def run(self):
            return "ran"

    assert "myapp.abstractly" not in registry.tasks
    registered = registry.register(Abstractly)
    assert registered is Abstractly._instance()
    assert registry.tasks["myapp.abstractly"] is registered
    assert Abstractly.apply().get() == "ran"


def test_unregister_by_name_object_or_class_removes_the_task():
    made = make_task("myapp.by_name")
    registry.unregister("myapp.by_name")
    assert "myapp.by_name" not in registry.tasks

    made = make_task("myapp.by_object")
    registry.unregister(made)
    assert "myapp.by_object" not in registry.tasks

    class ByClass(Task):
        name = "myapp.by_class"

    registry.unregister(ByClass)
    assert "myapp.by_class" not in registry.tasks


def test_unregister_of_an_unknown_name_raises_not_registered_naming_it():
    with pytest.raises(NotRegistered, match="myapp.never"):
        registry.unregister("myapp.never")


def test_registering_a_name_again_replaces_the_old_task():
    first = make_task("myapp.twice")
    second = make_task("myapp.twice")
    assert first is not second
    assert registry.tasks["myapp.twice"] is second


def test_module_functions_act_on_the_one_process_registry():
    assert registry.register.__self__ is registry.tasks
    assert registry.unregister.__self__ is registry.tasks
    assert minitask.registry is registry


def test_regular_and_periodic_split_the_tasks_by_type():
    class Every(minitask.PeriodicTask):
        name = "myapp.every"
        run_every = 60

    make_task("myapp.regular")
    assert "myapp.every" in registry.tasks.periodic()
    assert "myapp.every" not in registry.tasks.regular()
    assert "myapp.regular" in registry.tasks.regular()
    assert set(BUILTINS) <= set(registry.tasks.regular())


def test_get_all_is_a_copy():
    everything = registry.tasks.get_all()
    everything.clear()
    assert set(BUILTINS) <= set(registry.tasks)
