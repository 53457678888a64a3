"""Celery's "Periodic Tasks" user guide (docs/userguide/periodic-tasks.rst, Celery 5), its idioms
pasted as a Celery user writes them, run by real workers with ``-B`` on both transports: the
built-in broker and Redis (the `broker` fixture of both.py; Redis skips, saying why, where
redis-server is not installed). The tasks are the guide's, in periodicidioms.py.

The guide's settings (``app.conf.beat_schedule = ...``, ``app.conf.timezone = ...``) go where
minitask reads Celery's setting names: a settings module (README, Configuration: "a
celeryconfig.py works as MINITASK_CONFIG_MODULE=celeryconfig"), written per test and read by
this process and the worker alike. ``celery.schedules.crontab`` is ``minitask.schedules.crontab``.

Crontab entries are never waited for: the beat's record of an entry's last send (the broker's
``beat.last_run.beat_schedule.<name>``, README, Periodic tasks: "The last send time of each task
and entry is kept in the broker") is set before the worker starts, just before one of the
entry's times, so the beat finds that time passed and sends it; what a crontab means is read
from its next run times (``crontab.next_after``, minitask's counterpart of Celery's
``remaining_estimate``).

Where the README names a difference (an interval sent at once, ``relative`` and ``celery beat``
refused), the test checks minitask's documented behaviour and cites the README.
"""

import datetime
import importlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from beatlog import gaps, sends  # noqa: E402
from both import broker, server  # noqa: E402,F401  (fixtures)
from cluster import HERE, ROOT, _env, celeryconfig, wait_for, workers_of  # noqa: E402,F401
from ittasks import read_trace  # noqa: E402

from minitask import get_settings  # noqa: E402
from minitask.schedules import crontab  # noqa: E402

MODULES = "periodicidioms"
TIMEOUT = 20
ZONE = "Asia/Kolkata"           # UTC+05:30 all year: a zone whose clock is never UTC's


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def last_run_key(entry):
    return "beat.last_run.beat_schedule.%s" % entry


def kv_get(broker, key):
    with broker.connect() as conn:
        return conn.kv_get(key)


def kv_set(broker, key, value):
    with broker.connect() as conn:
        conn.kv_set(key, value)


def send_log(worker, entry):
    """``(when, task id)`` of each send of beat_schedule entry `entry`, from the worker's log."""
    return sends([worker], "beat_schedule.%s" % entry)


def reports(tmp_path, tag):
    """The runs of periodicidioms.report traced under `tag`, as dicts."""
    keys = ("time", "id", "expires", "routing_key", "priority", "full")
    rows = [dict(zip(keys, line.split("|"))) for line in read_trace(tmp_path, tag)]
    for row in rows:
        row["time"] = float(row["time"])
    return rows


def previous(cron, now):
    """The last of `cron`'s times at or before `now` (epoch seconds), from its next run times."""
    for span in (120, 4 * 3600, 2 * 86400, 8 * 86400, 32 * 86400, 367 * 86400):
        last, moment = None, now - span
        while True:
            moment = cron.next_after(moment)
            if moment > now:
                break
            last = moment
        if last is not None:
            return last
    raise AssertionError("%r has no time in the last year" % (cron,))


def walls(cron, zone, start, days):
    """The wall-clock times (in `zone`) of `cron`'s runs in the `days` after `start`."""
    found, moment, end = [], start, start + days * 86400
    while True:
        moment = cron.next_after(moment)
        if moment > end:
            return found
        found.append(datetime.datetime.fromtimestamp(moment, zone))


# -- Entries: beat_schedule with a number of seconds and a timedelta; args, kwargs, options ----

def test_beat_schedule_entries_send_their_args_kwargs_and_options_on_a_beat_worker(
        broker, celeryconfig, start_worker, tmp_path):
    """The guide's "Run the tasks.add task every 30 seconds" entry ('schedule': 30.0, 'args':
    (16, 16)) and its like at one second, as a number and as a timedelta; 'args' as a single
    item tuple (the guide's note: "the constructor is a comma"); 'kwargs'; 'options', "any
    argument supported by apply_async": queue, priority, expires (counted from each send);
    'relative': False (the default). "Scheduling groups and other workflows": a wrapper task
    that dispatches a group with apply_async(), scheduled by name. "Like with cron, the tasks
    may overlap if the first task doesn't complete before the next." `app.conf.timezone =
    'UTC'`; enable_utc=False and beat_scheduler are Celery settings minitask warns about
    (README, Configuration: "Every other setting-like name ... gets one warning at start
    naming it and the minitask way")."""
    env = celeryconfig("""\
        from datetime import timedelta

        beat_schedule = {
            'add-every-30-seconds': {
                'task': 'periodicidioms.add',
                'schedule': 30.0,
                'args': (16, 16)
            },
            'test-every-second': {
                'task': 'periodicidioms.test',
                'schedule': 1.0,
                'args': ('hello',),
                'relative': False,
            },
            'report-every-second': {
                'task': 'periodicidioms.report',
                'schedule': timedelta(seconds=1),
                'args': ('options',),
                'kwargs': {'full': True},
                'options': {'queue': 'periodic', 'priority': 0, 'expires': 10},
            },
            'add-group-every-second': {
                'task': 'periodicidioms.run_add_group',
                'schedule': timedelta(seconds=1),
            },
            'slow-every-second': {
                'task': 'periodicidioms.slow',
                'schedule': 1.0,
                'args': (1.2,),
            },
        }
        timezone = 'UTC'
        enable_utc = False
        beat_scheduler = 'django_celery_beat.schedulers:DatabaseScheduler'
        """)
    worker = start_worker(args=["-B", "-Q", "minitask,periodic", "-c", "3"], env=env)

    def group_runs():
        sums = read_trace(tmp_path, "add")
        return min(sums.count(str(i + i)) for i in range(10))
    wait_for(lambda: len(read_trace(tmp_path, "test")) >= 3
             and len(reports(tmp_path, "options")) >= 3 and group_runs() >= 2
             and len([line for line in read_trace(tmp_path, "slow")
                      if line.startswith("start")]) >= 2,
             TIMEOUT, what="three beats of each one-second entry")

    for entry in ("test-every-second", "report-every-second", "add-group-every-second",
                  "slow-every-second"):
        times = [when for when, _id in send_log(worker, entry)]
        # Never early; late by at most what a loaded 2-core CI machine may stall a thread.
        assert all(0.8 < gap < 2.5 for gap in gaps(times)), (entry, gaps(times))
    assert set(read_trace(tmp_path, "test")) == {"hello"}
    # README, Periodic tasks: "An interval is sent as soon as the beat first meets it" (Celery
    # sends it 30 seconds after beat starts): once, at start, and not again in 30 s.
    assert read_trace(tmp_path, "add").count("32") == 1
    assert len(send_log(worker, "add-every-30-seconds")) == 1
    for run in reports(tmp_path, "options"):
        assert (run["routing_key"], run["priority"], run["full"]) == ("periodic", "0", "True")
        expires = datetime.datetime.fromisoformat(run["expires"]).timestamp()
        assert 7.0 < expires - run["time"] <= 10.0          # counted from its send
    slow = read_trace(tmp_path, "slow")
    starts = [float(line.split()[1]) for line in slow if line.startswith("start")]
    ends = [float(line.split()[1]) for line in slow if line.startswith("end")]
    assert starts[1] < ends[0]                          # the second run overlapped the first
    output = worker.output()
    assert "enable_utc=False has no effect in minitask" in output
    assert "TIMEZONE" in output
    assert "ignoring beat_scheduler" in output
    worker.kill()       # not stopped warm: that would wait for the slow task that is running


# -- Time zones and crontab schedules ---------------------------------------------------------

CRONTABS = {
    # the guide's table, row by row
    "every-minute": "crontab()",
    "daily-at-midnight": "crontab(minute=0, hour=0)",
    "every-three-hours": "crontab(minute=0, hour='*/3')",
    "every-three-hours-listed": "crontab(minute=0, hour='0,3,6,9,12,15,18,21')",
    "every-15-minutes": "crontab(minute='*/15')",
    "sundays": "crontab(day_of_week='sunday')",
    "sundays-spelled-out": "crontab(minute='*', hour='*', day_of_week='sun')",
    "thursdays-or-fridays": "crontab(minute='*/10', hour='3,17,22', day_of_week='thu,fri')",
    "even-hours-and-thirds": "crontab(minute=0, hour='*/2,*/3')",
    "hours-divisible-by-5": "crontab(minute=0, hour='*/5')",
    "thirds-and-office-hours": "crontab(minute=0, hour='*/3,8-17')",
    "second-day": "crontab(0, 0, day_of_month='2')",
    "even-days": "crontab(0, 0, day_of_month='2-30/2')",
    "first-and-third-weeks": "crontab(0, 0, day_of_month='1-7,15-21')",
    "eleventh-of-may": "crontab(0, 0, day_of_month='11', month_of_year='5')",
    "quarters": "crontab(0, 0, month_of_year='*/3')",
    # a range with a step ('a-b/n', as celery.schedules.crontab's reference allows)
    "every-ten-minutes-ranged": "crontab(minute='0-59/10')",
}


def test_the_guides_crontab_schedules_in_a_timezone_on_a_beat_worker(
        broker, celeryconfig, start_worker, tmp_path):
    """"Executes every Monday morning at 7:30 a.m." and every row of the guide's crontab
    table, as beat_schedule entries, in `timezone` (the guide: "you can change the time zone
    used using the timezone setting"). Each entry's last send is set to just before its
    latest time, so the beat sends each once; an entry at the minute just past on the zone's
    clock is sent, one at that minute of UTC's clock is not; an entry met for the first time
    waits for its next time, as in Celery. What each row means is read from its next run
    times."""
    zoneinfo = pytest.importorskip("zoneinfo")
    zone = zoneinfo.ZoneInfo(ZONE)
    now = time.time()
    # The minute two minutes ago, on the zone's clock and on UTC's.
    here = datetime.datetime.fromtimestamp(now - 120, zone)
    utc = datetime.datetime.fromtimestamp(now - 120, datetime.timezone.utc)
    crontabs = dict(CRONTABS, **{
        "zone-clock": "crontab(minute=%d, hour=%d)" % (here.minute, here.hour),
        "utc-clock": "crontab(minute=%d, hour=%d)" % (utc.minute, utc.hour),
        "unseeded": "crontab()"})
    entries = "".join("""
            '%s': {
                'task': 'periodicidioms.test',
                'schedule': %s,
                'args': ('%s',),
            },""" % (name, spec, name) for name, spec in crontabs.items())
    env = celeryconfig("""\
        from minitask.schedules import crontab

        beat_schedule = {
            # Executes every Monday morning at 7:30 a.m.
            'add-every-monday-morning': {
                'task': 'periodicidioms.add',
                'schedule': crontab(hour=7, minute=30, day_of_week=1),
                'args': (16, 16),
            },%s
        }
        timezone = '%s'
        """ % (entries, ZONE))
    schedule = {name: entry["schedule"] for name, entry in get_settings().BEAT_SCHEDULE.items()}
    assert get_settings().TIMEZONE == ZONE

    seeded = {}
    for name, cron in schedule.items():
        if name == "unseeded":
            continue
        seeded[name] = now - 240 if name.endswith("-clock") else previous(cron, now) - 60
        kv_set(broker, last_run_key(name), seeded[name])
    started = time.time()
    worker = start_worker(args=["-B"], env=env)
    due = set(seeded) - {"utc-clock", "add-every-monday-morning"}
    wait_for(lambda: due <= set(read_trace(tmp_path, "test"))
             and "32" in read_trace(tmp_path, "add")
             and kv_get(broker, last_run_key("unseeded")),
             TIMEOUT, what="each seeded crontab entry to be sent")

    # What the rows mean, on the zone's clock, from their next run times.
    def hours(name):
        runs = walls(schedule[name], zone, now, 1)
        assert {run.minute for run in runs} == {0}
        return {run.hour for run in runs}
    minutes = walls(schedule["every-minute"], zone, now, 3 / 1440.0)
    assert len(minutes) == 3 and gaps([m.timestamp() for m in minutes]) == [60.0, 60.0]
    midnights = walls(schedule["daily-at-midnight"], zone, now, 3)
    assert [(m.hour, m.minute) for m in midnights] == [(0, 0)] * 3
    assert hours("every-three-hours") == hours("every-three-hours-listed") == \
        {0, 3, 6, 9, 12, 15, 18, 21}
    assert {m.minute for m in walls(schedule["every-15-minutes"], zone, now, 1 / 24.0)} == \
        {0, 15, 30, 45}
    sundays = walls(schedule["sundays"], zone, now, 7)
    assert len(sundays) == 1440 and {m.strftime("%A") for m in sundays} == {"Sunday"}
    assert walls(schedule["sundays-spelled-out"], zone, now, 7) == sundays
    thu_fri = walls(schedule["thursdays-or-fridays"], zone, now, 7)
    assert len(thu_fri) == 36
    assert {m.strftime("%A") for m in thu_fri} == {"Thursday", "Friday"}
    assert {m.hour for m in thu_fri} == {3, 17, 22}
    assert {m.minute for m in thu_fri} == {0, 10, 20, 30, 40, 50}
    assert hours("even-hours-and-thirds") == set(range(24)) - {1, 5, 7, 11, 13, 17, 19, 23}
    assert hours("hours-divisible-by-5") == {0, 5, 10, 15, 20}       # 3pm, not 5pm
    assert hours("thirds-and-office-hours") == {0, 3, 6, 9, 12, 15, 18, 21} | set(range(8, 18))

    def days(name, span):
        runs = walls(schedule[name], zone, now, span)
        assert {(run.hour, run.minute) for run in runs} == {(0, 0)}
        return runs
    assert {m.day for m in days("second-day", 62)} == {2}
    assert {m.day for m in days("even-days", 62)} == set(range(2, 31, 2))
    assert {m.day for m in days("first-and-third-weeks", 62)} == \
        set(range(1, 8)) | set(range(15, 22))
    assert [(m.month, m.day) for m in days("eleventh-of-may", 365)] == [(5, 11)]
    assert {(m.month, m.day) for m in days("quarters", 366)} == {
        (month, day) for month, length in ((1, 31), (4, 30), (7, 31), (10, 31))
        for day in range(1, length + 1)}
    assert schedule["every-ten-minutes-ranged"] == crontab(minute='*/10')
    monday = walls(schedule["add-every-monday-morning"], zone, now, 7)
    assert [(m.strftime("%A"), m.hour, m.minute) for m in monday] == [("Monday", 7, 30)]
    assert monday[0].astimezone(datetime.timezone.utc).strftime("%H:%M") == "02:00"

    # What the beat sent: each seeded entry once (again only when another of its times came
    # since), the UTC-clock entry never, the unseeded one not before its first time.
    checked = time.time()
    for name, seed in seeded.items():
        sent = [when for when, _id in send_log(worker, name)]
        if name == "utc-clock":
            assert sent == [], "sent on UTC's clock, not the zone's"
            continue
        assert sent and schedule[name].next_after(seed) <= sent[0], name
        for before, after in zip(sent, sent[1:]):
            assert schedule[name].next_after(before) <= after, (name, sent)
    met = kv_get(broker, last_run_key("unseeded"))
    assert started <= met <= checked
    assert all(schedule["unseeded"].next_after(met) <= when
               for when, _id in send_log(worker, "unseeded"))
    wait_for(lambda: all(read_trace(tmp_path, "test").count(name) ==
                         len(send_log(worker, name)) for name in crontabs),
             TIMEOUT, what="each send to run once")


# -- Starting the scheduler; what a restart keeps ---------------------------------------------

def test_a_restarted_beat_worker_neither_repeats_nor_skips_an_entry(
        broker, celeryconfig, start_worker, tmp_path):
    """The guide: "Beat needs to store the last run times of the tasks" (a celerybeat-schedule
    file; README, Periodic tasks: "The last send time of each task and entry is kept in the
    broker's journal, so a restart neither skips nor repeats a beat"). A -B worker stopped and
    started again sends an interval entry on its old rhythm, not at once, each send once.
    Then the timezone setting changes across the restart: Celery's default scheduler
    "will automatically detect that the time zone has changed, and so will reset the
    schedule itself"; minitask keeps the last send times (the README does not say so), so a
    time of the new zone's clock that passed since the entry's last send is sent, once."""
    zoneinfo = pytest.importorskip("zoneinfo")
    now = time.time()
    here = datetime.datetime.fromtimestamp(now - 120, zoneinfo.ZoneInfo(ZONE))
    settings = """\
        from datetime import timedelta
        from minitask.schedules import crontab

        beat_schedule = {
            'report-every-1.5-seconds': {
                'task': 'periodicidioms.report',
                'schedule': timedelta(seconds=1.5),
                'args': ('restart',),
            },
            'zone-clock': {
                'task': 'periodicidioms.test',
                'schedule': crontab(minute=%d, hour=%d),
                'args': ('zone-clock',),
            },
        }
        timezone = '%%s'
        """ % (here.minute, here.hour)
    env = celeryconfig(settings % "UTC")
    kv_set(broker, last_run_key("zone-clock"), now - 240)
    first = start_worker(name="beat", args=["-B"], env=env)
    wait_for(lambda: len(reports(tmp_path, "restart")) >= 2, TIMEOUT, what="two beats")
    assert first.stop() == 0
    stopped = time.time()
    second = start_worker(name="beat", args=["-B"], env=celeryconfig(settings % ZONE))
    restarted = time.time()
    wait_for(lambda: [r for r in reports(tmp_path, "restart") if r["time"] > stopped]
             and read_trace(tmp_path, "test"), TIMEOUT, what="a beat after the restart")

    sent = send_log(second, "report-every-1.5-seconds")     # its log holds both runs' lines
    before = [when for when, _id in sent if when < stopped]
    after = [when for when, _id in sent if when > stopped]
    assert len(before) >= 2 and after
    assert all(1.4 < gap < 3.0 for gap in gaps(before) + gaps(after))
    # Not sent again as the worker came back (when it came back within the period), and
    # not later than a period after the last send, or than its return.
    assert 1.4 < after[0] - before[-1] < max(1.5, restarted - before[-1]) + 2.0
    ids = [task_id for _when, task_id in sent]
    assert len(set(ids)) == len(ids)
    wait_for(lambda: set(ids) <= {run["id"] for run in reports(tmp_path, "restart")}, TIMEOUT,
             what="every send to run")
    ran = [run["id"] for run in reports(tmp_path, "restart")]
    assert len(set(ran)) == len(ran)
    zone_sends = [when for when, _id in send_log(second, "zone-clock")]
    assert len(zone_sends) == 1 and zone_sends[0] > stopped
    assert read_trace(tmp_path, "test") == ["zone-clock"]


# -- What minitask refuses, each in one line: relative, a workflow as an entry, `celery beat` ---

def test_relative_a_workflow_entry_and_the_beat_command_are_refused_saying_why(
        broker, tmp_path):
    """'relative': True is refused (README, Periodic tasks: "relative=True is refused"); so
    is the guide's single-item-tuple mistake ('args': ('hello') is a string) and a group as
    an entry ("you can't pass a group, chain, or chord signature directly to ... a
    beat_schedule entry"). `celery -A proj beat` and `celery -A proj beat -s
    /home/celery/var/run/celerybeat-schedule` are answered with the minitask way (README,
    Celery's command lines: "celery beat | refused: a worker with --beat (-B)"; "-s/--schedule,
    -S/--scheduler | refused: revoked ids and the beat's state live in the broker"). Each
    exits 2 with one line, no traceback, before it reaches the broker."""
    def entry(text):
        """The worker's env for a settings module with one beat_schedule entry (not read
        here: this process would refuse it too)."""
        name = "celeryconfig_%s" % uuid.uuid4().hex[:10]
        (tmp_path / (name + ".py")).write_text(textwrap.dedent("""\
            from minitask import group
            from periodicidioms import add

            beat_schedule = {
                'the-entry': %s,
            }
            """) % text)
        return {"MINITASK_CONFIG_MODULE": name,
                "PYTHONPATH": os.pathsep.join([ROOT, HERE, str(tmp_path)])}
    cases = [
        (["worker", "-B"], entry("{'task': 'periodicidioms.add', 'schedule': 30.0, "
                                 "'args': (16, 16), 'relative': True}"),
         "beat_schedule['the-entry']['relative']=True: not supported"),
        (["worker", "-B"], entry("{'task': 'periodicidioms.test', 'schedule': 10.0, "
                                 "'args': ('hello')}"),
         "beat_schedule['the-entry']['args']='hello': expected a list or tuple"),
        (["worker", "-B"], entry("{'task': group(add.s(i, i) for i in range(10)), "
                                 "'schedule': 30.0}"),
         "beat_schedule['the-entry']['task']="),
        (["-A", MODULES, "beat", "-l", "INFO"], {}, "--beat (-B)"),
        (["-A", MODULES, "beat", "-s", str(tmp_path / "celerybeat-schedule")], {},
         "--beat (-B)"),
        (["-A", MODULES, "worker", "-B", "-s", str(tmp_path / "celerybeat-schedule")], {},
         "the schedule's state lives in the broker"),
        (["-A", MODULES, "beat", "-l", "INFO", "--scheduler",
          "django_celery_beat.schedulers:DatabaseScheduler"], {}, "--beat (-B)"),
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "minitask"] + args, cwd=str(tmp_path),
                              env=_env(dict(env, MINITASK_BROKER_URL=broker.url,
                                            ITTASKS_DIR=str(tmp_path))),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args, env, _expected in cases]
    for (args, _env_, expected), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=30)
        err = err.decode("utf-8", "replace")
        assert proc.returncode == 2, (args, proc.returncode, out, err)
        assert expected in err and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err


# -- Solar schedules; add_periodic_task -------------------------------------------------------

def test_a_solar_schedule_entry(broker, celeryconfig, start_worker, tmp_path):
    """The guide's "Executes at sunset in Melbourne": solar('sunset', -37.81753, 144.96715)
    as an entry's schedule. A beat worker takes it and, as for a crontab, waits for its next
    time (within a day). There was no solar (ImportError)."""
    env = celeryconfig("""\
        from minitask.schedules import solar

        beat_schedule = {
            # Executes at sunset in Melbourne
            'add-at-melbourne-sunset': {
                'task': 'periodicidioms.add',
                'schedule': solar('sunset', -37.81753, 144.96715),
                'args': (16, 16),
            },
        }
        """)
    sunset = get_settings().BEAT_SCHEDULE["add-at-melbourne-sunset"]["schedule"]
    now = time.time()
    assert 0 < sunset.next_after(now) - now <= 86400
    start_worker(args=["-B"], env=env)
    met = wait_for(lambda: kv_get(broker, last_run_key("add-at-melbourne-sunset")), TIMEOUT,
                   what="the beat to meet the solar entry")
    assert now <= met <= time.time()


def test_add_periodic_task_from_on_after_configure_and_on_after_finalize(
        broker, celeryconfig, start_worker, tmp_path):
    """The guide's first example: periodic tasks set up from the app's on_after_configure
    signal (and, for tasks outside the app's module, on_after_finalize) with
    sender.add_periodic_task(seconds, signature, name=..., expires=...). With no app object,
    the app's signals are minitask.signals', their sender minitask.app.current_app (there
    were none: ImportError)."""
    name = "periodicsetup_%s" % uuid.uuid4().hex[:10]
    (tmp_path / (name + ".py")).write_text(textwrap.dedent("""\
        from minitask.schedules import crontab
        from minitask.signals import on_after_configure, on_after_finalize

        from periodicidioms import test


        @on_after_configure.connect
        def setup_periodic_tasks(sender, **kwargs):
            # Calls test('hello') every second.
            sender.add_periodic_task(1.0, test.s('hello'), name='add every 1')

            # Calls test('world') every second
            sender.add_periodic_task(1.0, test.s('world'), expires=10)

            # Executes every Monday morning at 7:30 a.m.
            sender.add_periodic_task(
                crontab(hour=7, minute=30, day_of_week=1),
                test.s('Happy Mondays!'),
            )


        @on_after_finalize.connect
        def setup_more_periodic_tasks(sender, **kwargs):
            sender.add_periodic_task(1.0, test.s('finalized'), name='finalized every 1')
        """))
    env = celeryconfig("")
    importlib.import_module(name)
    start_worker(args=["-B"], env=env, modules=MODULES + "," + name)
    wait_for(lambda: all(read_trace(tmp_path, "test").count(word) >= 2
                         for word in ("hello", "world", "finalized")),
             TIMEOUT, what="two beats of each periodic task")
    assert "Happy Mondays!" not in read_trace(tmp_path, "test")


# -- Health checks ---------------------------------------------------------------------------

def test_the_beat_health_check(broker, celeryconfig, start_worker, tmp_path, caplog):
    """"If you enable the beat_enable_remote_control setting, beat joins the same
    remote-control exchange the workers use (as a node named celerybeat@hostname) and
    answers celery inspect ping": `celery -A proj inspect ping -t 5 -d celerybeat@$(hostname)`.
    Here beat is a worker with --beat (README, Celery's command lines: "celery beat |
    refused: a worker with --beat (-B)"), which always answers remote control, so that
    worker, named as Celery names beat's node, answers the guide's command line. The
    setting is what minitask does anyway, so it is taken in silence (False gets a warning:
    tests/unit/test_config.py); it used to be an unknown name, ignored without one."""
    node = "celerybeat@%s" % socket.gethostname()
    with caplog.at_level("WARNING"):
        env = celeryconfig("""\
            beat_enable_remote_control = True
            """)
    start_worker(name=node, args=["-B"], env=env)
    done = subprocess.run([sys.executable, "-m", "minitask", "-A", MODULES, "inspect", "ping",
                           "-t", "5", "-d", node], cwd=str(tmp_path), timeout=30,
                          env=_env(dict(env, MINITASK_BROKER_URL=broker.url)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.returncode == 0, done.stderr
    assert node in done.stdout.decode() and "pong" in done.stdout.decode()
    assert "beat_enable_remote_control" not in caplog.text
