"""What stands for Celery's app object where Celery code is handed one.

minitask has no app: `@task`/`@shared_task` register tasks, the settings module configures,
`minitask.control` is ``app.control``. But Celery's Periodic Tasks guide starts with a
receiver that is given the app::

    from minitask.signals import on_after_configure

    @on_after_configure.connect
    def setup_periodic_tasks(sender, **kwargs):
        sender.add_periodic_task(10.0, test.s('hello'), name='add every 10')

`current_app` is that sender: `add_periodic_task` adds entries to the beat's schedule (those
of BEAT_SCHEDULE, by name, and over them), and it has `conf` (the settings), `control`,
`tasks` (the registry) and `send_task`. A worker sends ``on_after_configure`` and then
``on_after_finalize`` once its task modules are imported (`send_app_signals`), before its
beat (``--beat``) reads the schedule.
"""

import threading

from . import control, signals
from .canvas import maybe_signature
from .config import get_settings
from .exceptions import ConfigurationError
from .schedules import check_beat_schedule
from .task import registry

__all__ = ["App", "current_app", "send_app_signals"]


class App:
    """Celery's app, as far as code handed one uses it (see the module docstring)."""

    control = control

    def __init__(self):
        self._periodic = {}             # name -> a checked BEAT_SCHEDULE entry
        self._lock = threading.Lock()

    def __repr__(self):
        return "<minitask.app.App: %d periodic tasks added>" % len(self._periodic)

    @property
    def conf(self):
        return get_settings()

    @property
    def tasks(self):
        return registry.tasks

    def send_task(self, name, args=None, kwargs=None, **options):
        from .sending import send_task      # here: sending imports what imports this module
        return send_task(name, args, kwargs, **options)

    def add_periodic_task(self, schedule, sig, args=(), kwargs=(), name=None, **opts):
        """Send the call `sig` (a signature) on `schedule` (seconds, a timedelta, a crontab)
        from the beat; `args`, `kwargs` and `opts` (call options) add to the signature's.
        The entry is named `name`, else by the signature; returns that name. Checked now:
        what BEAT_SCHEDULE would refuse is a ConfigurationError here."""
        sig = maybe_signature(sig)
        if sig is None or not hasattr(sig, "task") or not isinstance(sig.task, str):
            raise ConfigurationError("add_periodic_task(%r): expected a task's signature, "
                                     "such as add.s(2, 2)" % (sig,))
        key = name if name is not None else repr(sig)
        entry = {"task": sig.task, "schedule": schedule,
                 "args": tuple(sig.args) + tuple(args),
                 "kwargs": dict(sig.kwargs, **dict(kwargs)),
                 "options": dict(sig.options, **opts)}
        checked = check_beat_schedule("add_periodic_task", {key: entry})
        with self._lock:
            self._periodic.update(checked)
        return key

    def periodic_tasks(self, settings=None):
        """The beat's schedule: BEAT_SCHEDULE's entries and those added here (which win)."""
        schedule = dict((settings or get_settings()).BEAT_SCHEDULE)
        with self._lock:
            schedule.update(self._periodic)
        return schedule


current_app = App()
_sent = []


def send_app_signals():
    """Celery's on_after_configure (with the settings as `source`), then on_after_finalize:
    once per process, once its task modules are imported."""
    if _sent:
        return
    _sent.append(True)
    if signals.on_after_configure.receivers:
        signals.on_after_configure.send(current_app, source=get_settings())
    if signals.on_after_finalize.receivers:
        signals.on_after_finalize.send(current_app)
