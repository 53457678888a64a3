"""Periodic tasks: a worker started with ``--beat`` sends each `PeriodicTask` on its schedule,
and each entry of the ``BEAT_SCHEDULE`` setting (Celery's ``beat_schedule``) on its own.

Several workers may run with ``--beat``; a lease held in the broker (LEASE, renewed well
before it runs out) lets exactly one of them send, and another takes over within a lease
time of the holder dying. The time each entry was last sent is a durable broker setting
(KV_SET), sent with the task itself as one ATOMIC unit that the broker journals as one record,
so a restart of the worker or the broker, even a crash mid-write, neither skips nor repeats a
beat. After a long pause an entry that missed several beats is sent once, not once per beat
missed.

An interval is sent as soon as the beat first meets it. A crontab is not (it waits for its
next time, as Celery's beat does): the first holder to meet it writes "now" as its last run,
so a time that comes while the beat or the broker is down is still sent once when they are
back.

Runs in a thread of the worker's main process with its own connection, so a slow broker
answer never holds up the worker's loop.
"""

import logging
import threading
import time

from ..transport import client_for, declare_topology
from ..exceptions import MinitaskError, PublishRefusedError
from ..sending import compose_message
from ..app import current_app
from ..task import registry

__all__ = ["Beat", "ScheduleEntry", "LEASE_NAME", "LEASE_SECONDS"]

logger = logging.getLogger(__name__)

LEASE_NAME = "minitask.beat"
# The holder renews at a third of this; a dead holder is replaced within it.
LEASE_SECONDS = 6.0


def _kv_key(task_name):
    return "beat.last_run.%s" % task_name


def _queue_to_declare(task, settings):
    """The queue a send of `task` (a periodic task or an entry) must declare first, or None."""
    if isinstance(task, ScheduleEntry):
        return task.compose(settings)[1]
    return compose_message(task.name, (), {}, task, settings)[1]


class ScheduleEntry:
    """One entry of BEAT_SCHEDULE, sent like a periodic task (its name says where it came
    from, so it never shares a last-run record with a task)."""

    def __init__(self, name, entry):
        self.name = "beat_schedule.%s" % name
        self.task = entry["task"]
        self.schedule = entry["schedule"]
        self.args = entry["args"]
        self.kwargs = entry["kwargs"]
        self.options = entry["options"]

    def is_due(self, last_run_at, now):
        return self.schedule.is_due(last_run_at, now)

    def build_message(self, settings=None):
        """The call to send: with the task's own options when it is registered here (as
        `apply_async` would), else by name alone (as `send_task`)."""
        return self.compose(settings)[0]

    def compose(self, settings=None):
        task = registry.tasks.get(self.task)
        return compose_message(self.task, self.args, self.kwargs, task, settings,
                               **self.options)

    def __repr__(self):
        return "<ScheduleEntry %s: %s %r>" % (self.name, self.task, self.schedule)


class Beat:
    """Sends due periodic tasks while this worker holds the beat lease."""

    def __init__(self, settings, holder, clock=time.time):
        self.settings = settings
        self.holder = holder
        self.clock = clock
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="minitask-beat", daemon=True)
        self.conn = None
        self.holding = False
        self.last_run = {}
        self.entries = [ScheduleEntry(name, entry) for name, entry
                        in sorted(current_app.periodic_tasks(settings).items())]

    def start(self):
        self.thread.start()

    def stop(self):
        self._stop.set()
        self.thread.join(5.0)

    def _run(self):
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self.conn is None:
                    self.conn = client_for(self.settings, client="minitask-beat").connect()
                    declare_topology(self.conn, self.settings)
                    self.holding = False
                wait = self.tick()
                backoff = 0.5
            except MinitaskError as exc:
                logger.warning("beat: %s; trying again in %.1fs", exc, backoff)
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.holding = False
                wait, backoff = backoff, min(backoff * 2, 5.0)
            self._stop.wait(wait)
        if self.conn is not None:
            self.conn.close()

    def tick(self):
        """Renew the lease and send what is due; returns seconds until the next look."""
        lease = self.conn.lease(LEASE_NAME, self.holder, LEASE_SECONDS)
        if not lease["granted"]:
            if self.holding:
                logger.info("beat: %s now sends the periodic tasks", lease["holder"])
            self.holding = False
            return min(LEASE_SECONDS / 3, max(0.1, lease["expires_in"]))
        if not self.holding:
            logger.info("beat: this worker now sends the periodic tasks")
            self.holding = True
            self.last_run = {}
        wait = LEASE_SECONDS / 3
        entries = [task for _name, task in sorted(registry.tasks.periodic().items())]
        for task in entries + self.entries:
            name = task.name
            if name not in self.last_run:
                self.last_run[name] = self._last_run(task)
            now = self.clock()
            due, next_in = task.is_due(self.last_run[name], now)
            if due:
                queue = _queue_to_declare(task, self.settings)
                if queue is not None:           # routed to a queue not in QUEUES
                    self.conn.ensure_queue(queue)
                try:
                    self.send(task, now)
                except PublishRefusedError as exc:
                    # This one is refused (too big, its queue full); the others go on, and
                    # it waits for its next run, as Celery's beat skips a run it could not
                    # send. The connection is fine: it is not given up.
                    logger.error("beat: %s was not sent: %s; next at its next run", name, exc)
                    self.last_run[name] = now
            wait = min(wait, next_in)
        return max(0.01, wait)

    def _last_run(self, task):
        """When `task` was last sent, from the broker; for a schedule that waits for its first
        time (a crontab) and was never sent, "now", written down so that a restart keeps it."""
        last_run = self.conn.kv_get(_kv_key(task.name))
        if last_run is None and not task.schedule.sends_at_start:
            last_run = self.clock()
            self.conn.kv_set(_kv_key(task.name), last_run)
        return last_run

    def send(self, task, now):
        """Send one periodic task and record when, as one unit (see the module docstring)."""
        message = task.build_message(settings=self.settings)
        self.conn.publish_with_record(message.encode(), _kv_key(task.name), now)
        self.last_run[task.name] = now
        logger.info("beat: sent %s[%s]", task.name, message.id)
