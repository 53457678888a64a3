"""minitask.app: the stand-in for Celery's app that on_after_configure / on_after_finalize
receivers are handed, with add_periodic_task (the Periodic Tasks guide's first example:
there was no such signal, and no add_periodic_task)."""

import datetime

import pytest

from minitask import app as app_module, signals, task
from minitask.app import App
from minitask.exceptions import ConfigurationError
from minitask.schedules import crontab

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@task(name="tests.app.test")
def greet(arg):
    return arg


def test_add_periodic_task_adds_checked_entries_over_beat_schedule(monkeypatch):
    monkeypatch.setenv("MINITASK_BEAT_SCHEDULE", "{}")
    app = App()
    assert app.add_periodic_task(10.0, greet.s("hello"), name="add every 10") == \
        "add every 10"
    key = app.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1),
                                greet.s("Happy Mondays!"), expires=60)
    unnamed = app.add_periodic_task(datetime.timedelta(seconds=5), greet.s(),
                                    args=("late",), kwargs={"x": 1}, priority=0)
    schedule = app.periodic_tasks()
    assert set(schedule) == {"add every 10", key, unnamed}
    every = schedule["add every 10"]
    assert (every["task"], every["args"], every["kwargs"]) == ("tests.app.test", ("hello",), {})
    assert schedule[key]["options"]["expires"] == 60
    assert (schedule[unnamed]["args"], schedule[unnamed]["kwargs"],
            schedule[unnamed]["options"]["priority"]) == (("late",), {"x": 1}, 0)


def test_a_bad_entry_is_refused_where_it_is_added():
    app = App()
    with pytest.raises(ConfigurationError, match="add_periodic_task"):
        app.add_periodic_task("every minute", greet.s(1))
    with pytest.raises(ConfigurationError, match="expected a signature"):
        app.add_periodic_task(10.0, "tests.app.test")
    with pytest.raises(ConfigurationError):
        app.add_periodic_task(10.0, greet.s(1), bogus_option=True)
    assert app.periodic_tasks() == {}


def test_the_app_signals_go_once_with_the_app_as_sender(monkeypatch):
    heard = []
    monkeypatch.setattr(app_module, "_sent", [])

    def configured(sender, source=None, **kwargs):
        heard.append(("configure", sender, source.BROKER_URL))
        sender.add_periodic_task(1.0, greet.s("hi"), name="hi")

    def finalized(sender, **kwargs):
        heard.append(("finalize", sender, None))

    signals.on_after_configure.connect(configured)
    signals.on_after_finalize.connect(finalized)
    try:
        app_module.send_app_signals()
        app_module.send_app_signals()
    finally:
        signals.on_after_configure.disconnect(configured)
        signals.on_after_finalize.disconnect(finalized)
        app_module.current_app._periodic.pop("hi", None)
    current = app_module.current_app
    assert heard == [("configure", current, "minitask://127.0.0.1:5679"),
                     ("finalize", current, None)]
    assert current.conf.BROKER_URL == "minitask://127.0.0.1:5679"
    assert current.tasks["tests.app.test"] is greet
    assert current.control.inspect is not None


def test_a_tasks_app_and_a_worker_senders_app_are_the_stand_in():
    """Celery code reads ``self.app`` in a task's base class and ``sender.app`` in a worker
    signal's receiver; neither had one."""
    from minitask.worker.worker import Worker

    assert greet.app is app_module.current_app
    assert greet.app.tasks[greet.name] is greet
    assert Worker.app.fget(None) is app_module.current_app
