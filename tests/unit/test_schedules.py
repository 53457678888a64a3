"""minitask.schedules: crontab's Celery syntax, its next times (UTC, local and IANA zones across
daylight-saving changes), interval schedules, and what the beat asks of both.

Times are built from explicit UTC datetimes, so no test depends on the machine's clock or zone
(except the "local" ones, which compare with the C library's own answer).
"""
import datetime
import time

import pytest

from minitask import PeriodicTask, crontab, periodic_task, schedule
from minitask.exceptions import ConfigurationError
from minitask.schedules import SOLAR_EVENTS, as_schedule, get_timezone, solar

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

UTC = datetime.timezone.utc

try:
    import zoneinfo
    zoneinfo.ZoneInfo("Europe/Berlin")
    HAVE_ZONES = True
except Exception:                       # Python 3.8, or no timezone database here
    HAVE_ZONES = False
needs_zones = pytest.mark.skipif(not HAVE_ZONES, reason="needs zoneinfo and tzdata")


def at(*fields):
    return datetime.datetime(*fields, tzinfo=UTC).timestamp()


def utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def nexts(cron, start, count):
    times, when = [], start
    for _ in range(count):
        when = cron.next_after(when)
        times.append(utc(when))
    return times


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field, spec, expected", [
    ("minute", "*/15", {0, 15, 30, 45}),
    ("minute", "1,13,30-45/5,50-59/4", {1, 13, 30, 35, 40, 45, 50, 54, 58}),
    ("minute", 7, {7}),
    ("minute", [0, 30], {0, 30}),
    ("minute", {5, 10}, {5, 10}),
    ("hour", "0,8-17/2", {0, 8, 10, 12, 14, 16}),
    ("hour", "22-2", {22, 23, 0, 1, 2}),
    ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
    ("day_of_week", "fri-mon", {5, 6, 0, 1}),
    ("day_of_week", "sunday,Saturday", {0, 6}),
    ("day_of_week", "*/2", {0, 2, 4, 6}),
    ("day_of_month", "1-7,15-21", set(range(1, 8)) | set(range(15, 22))),
    ("day_of_month", "*/10", {1, 11, 21, 31}),
    ("month_of_year", "*/3", {1, 4, 7, 10}),
    ("month_of_year", "jan,Jul-sep", {1, 7, 8, 9}),
    ("month_of_year", "2-12/2", {2, 4, 6, 8, 10, 12}),
])
def test_fields_parse_as_celery_does(field, spec, expected):
    assert getattr(crontab(**{field: spec}), field) == expected


@pytest.mark.parametrize("fields, message", [
    ({"minute": "60"}, "60 is outside 0..59"),
    ({"hour": "24"}, "24 is outside 0..23"),
    ({"day_of_week": "7"}, "7 is outside 0..6"),
    ({"day_of_month": "0"}, "0 is outside 1..31"),
    ({"month_of_year": "13"}, "13 is outside 1..12"),
    ({"minute": "*/0"}, "the step after / must be a whole number above 0"),
    ({"minute": "*/x"}, "the step after / must be a whole number above 0"),
    ({"minute": "5/15"}, r"a step goes after \* or a range"),
    ({"minute": "1,,2"}, "an empty item"),
    ({"minute": "-5"}, "is not a number"),
    ({"hour": "mon"}, "'mon' is not a number"),
    ({"day_of_week": "funday"}, "neither a number nor a name"),
    ({"minute": 1.5}, "expected a cron pattern"),
    ({"minute": True}, "expected a cron pattern"),
    ({"minute": []}, "expected at least one value"),
    ({"minute": [60]}, "60 is outside 0..59"),
    ({"day_of_month": 31, "month_of_year": "feb,apr"}, "never matches"),
])
def test_bad_fields_are_one_line_naming_field_and_value(fields, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        crontab(**fields)
    assert "\n" not in str(info.value)


def test_from_string_reads_a_cron_line_in_crons_field_order():
    cron = crontab.from_string("*/20 9-17 1 * mon-fri")
    assert cron == crontab(minute="*/20", hour="9-17", day_of_month=1, day_of_week="mon-fri")
    with pytest.raises(ConfigurationError, match="expected five fields"):
        crontab.from_string("* * *")


def test_february_29th_is_a_valid_day():
    cron = crontab(0, 0, day_of_month=29, month_of_year=2, tz="UTC")
    assert utc(cron.next_after(at(2025, 1, 1))) == datetime.datetime(2028, 2, 29)


# -- next times in UTC -----------------------------------------------------------------------

def test_every_quarter_hour():
    cron = crontab(minute="*/15", tz="UTC")
    assert nexts(cron, at(2024, 3, 5, 10, 7, 30), 3) == [
        datetime.datetime(2024, 3, 5, 10, 15), datetime.datetime(2024, 3, 5, 10, 30),
        datetime.datetime(2024, 3, 5, 10, 45)]


def test_the_next_time_is_strictly_after_now_even_on_the_minute():
    cron = crontab(minute="*/15", tz="UTC")
    assert utc(cron.next_after(at(2024, 3, 5, 10, 15))) == datetime.datetime(2024, 3, 5, 10, 30)


def test_weekdays_at_seven_skip_the_weekend():
    cron = crontab(minute=0, hour=7, day_of_week="mon-fri", tz="UTC")
    # 2024-03-08 is a Friday
    assert nexts(cron, at(2024, 3, 8, 8, 0), 2) == [
        datetime.datetime(2024, 3, 11, 7, 0), datetime.datetime(2024, 3, 12, 7, 0)]


def test_day_of_week_and_day_of_month_must_both_match_as_in_celery():
    # The first Monday of a month: a Monday among days 1-7 (cron's "or" would be every Monday).
    cron = crontab(minute=0, hour=0, day_of_week="mon", day_of_month="1-7", tz="UTC")
    assert nexts(cron, at(2024, 1, 1, 12), 3) == [
        datetime.datetime(2024, 2, 5), datetime.datetime(2024, 3, 4),
        datetime.datetime(2024, 4, 1)]


def test_a_year_boundary_and_a_month_list():
    cron = crontab(minute=30, hour=23, day_of_month=31, month_of_year="dec,jan", tz="UTC")
    assert nexts(cron, at(2024, 12, 31, 23, 31), 2) == [
        datetime.datetime(2025, 1, 31, 23, 30), datetime.datetime(2025, 12, 31, 23, 30)]


def test_matches_is_the_minute_not_the_second():
    cron = crontab(minute=5, hour=3, tz="UTC")
    assert cron.matches(at(2024, 1, 1, 3, 5)) and cron.matches(at(2024, 1, 1, 3, 5, 59))
    assert not cron.matches(at(2024, 1, 1, 3, 6))


# -- timezones -------------------------------------------------------------------------------

@needs_zones
def test_a_time_in_a_named_zone_is_that_zones_wall_clock():
    cron = crontab(minute=0, hour=9, tz="America/New_York")
    assert utc(cron.next_after(at(2024, 7, 1, 12))) == datetime.datetime(2024, 7, 1, 13)
    assert utc(cron.next_after(at(2024, 1, 10, 15))) == datetime.datetime(2024, 1, 11, 14)


@needs_zones
def test_a_time_the_clock_skips_does_not_happen_that_day():
    cron = crontab(minute=30, hour=2, tz="Europe/Berlin")   # clocks jump 02:00 -> 03:00
    assert nexts(cron, at(2024, 3, 30, 12), 2) == [
        datetime.datetime(2024, 4, 1, 0, 30), datetime.datetime(2024, 4, 2, 0, 30)]


@needs_zones
def test_a_time_the_clock_shows_twice_counts_once_the_first_time():
    cron = crontab(minute=30, hour=2, tz="Europe/Berlin")   # 03:00 -> 02:00 on Oct 27
    assert nexts(cron, at(2024, 10, 26, 12), 2) == [
        datetime.datetime(2024, 10, 27, 0, 30),              # 02:30 CEST
        datetime.datetime(2024, 10, 28, 1, 30)]              # not 01:30 UTC (02:30 CET) twice
    assert not cron.matches(at(2024, 10, 27, 1, 30))


@needs_zones
def test_an_interval_crontab_pauses_through_the_repeated_hour():
    cron = crontab(minute="*/30", tz="Europe/Berlin")
    times = nexts(cron, at(2024, 10, 27, 0, 0), 4)
    assert times == [datetime.datetime(2024, 10, 27, 0, 30), datetime.datetime(2024, 10, 27, 2),
                     datetime.datetime(2024, 10, 27, 2, 30), datetime.datetime(2024, 10, 27, 3)]


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset")
def test_local_time_follows_the_machines_zone(monkeypatch):
    monkeypatch.setenv("TZ", "EST+5")           # POSIX rule: UTC-5, no DST, no database needed
    time.tzset()
    try:
        cron = crontab(minute=0, hour=9, tz="local")
        assert utc(cron.next_after(at(2024, 7, 1, 12))) == datetime.datetime(2024, 7, 1, 14)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("name", ["UTC", "utc", "Etc/UTC", "GMT"])
def test_utc_needs_no_timezone_database(name):
    assert get_timezone(name) is UTC


def test_an_unknown_zone_is_refused_naming_it():
    with pytest.raises(ConfigurationError, match="Not/AZone"):
        get_timezone("Not/AZone")


def test_without_tz_a_crontab_reads_the_timezone_setting(isolated_tasks):
    from minitask import config
    cron = crontab(minute=0, hour=9)
    config.configure(TIMEZONE="UTC")
    assert utc(cron.next_after(at(2024, 7, 1, 12))) == datetime.datetime(2024, 7, 2, 9)
    if HAVE_ZONES:
        config.configure(TIMEZONE="Asia/Tokyo")          # UTC+9, no DST
        assert utc(cron.next_after(at(2024, 7, 1, 12))) == datetime.datetime(2024, 7, 2, 0)


# -- what the beat asks ----------------------------------------------------------------------

def test_a_crontab_is_not_due_when_first_met_and_says_when_to_look_again():
    cron = crontab(minute="*/15", tz="UTC")
    now = at(2024, 3, 5, 10, 7)
    assert cron.is_due(None, now) == (False, 8 * 60.0)
    assert not cron.sends_at_start and schedule(5).sends_at_start


def test_a_crontab_is_due_once_its_time_has_come_since_the_last_run():
    cron = crontab(minute="*/15", tz="UTC")
    last = at(2024, 3, 5, 10, 0, 1)
    assert cron.is_due(last, at(2024, 3, 5, 10, 14, 59)) == (False, 1.0)
    due, wait = cron.is_due(last, at(2024, 3, 5, 10, 15, 0, 200000))
    assert due and wait == pytest.approx(14 * 60 + 59.8)


def test_many_missed_crontab_times_are_one_send():
    cron = crontab(minute="*", tz="UTC")
    due, wait = cron.is_due(at(2024, 3, 5, 10, 0), at(2024, 3, 5, 13, 0, 30))
    assert due and wait == 30.0                 # due now, then the next minute, not 180 times


def test_an_interval_is_due_at_once_then_every_interval():
    every = schedule(datetime.timedelta(seconds=30))
    assert every.is_due(None, 100.0) == (True, 30.0)
    assert every.is_due(100.0, 120.0) == (False, 10.0)
    assert every.is_due(100.0, 130.0) == (True, 30.0)


@pytest.mark.parametrize("value", [0, -1, "5", None, True, datetime.timedelta(0)])
def test_a_bad_interval_is_refused(value):
    with pytest.raises(ConfigurationError, match="run_every"):
        as_schedule(value)


def test_periodic_tasks_take_a_crontab_as_run_every(isolated_tasks):
    @periodic_task(run_every=crontab(minute=0, hour="*/3", tz="UTC"), name="t.every_3h")
    def every_three_hours():
        return "tick"

    assert isinstance(every_three_hours, PeriodicTask)
    assert every_three_hours.is_due(None, at(2024, 1, 1, 1)) == (False, 2 * 3600.0)
    assert every_three_hours.is_due(at(2024, 1, 1, 1), at(2024, 1, 1, 3, 0, 1))[0]
    assert every_three_hours() == "tick"


def test_crontab_is_importable_as_celery_users_write_it():
    import minitask
    import minitask.schedules
    assert minitask.crontab is minitask.schedules.crontab is crontab
    assert "crontab" in minitask.__all__


def test_repr_shows_the_spec_in_cron_order():
    assert repr(crontab(minute=0, hour="*/3", day_of_week="mon-fri")) == \
        "<crontab: 0 */3 * * mon-fri (m/h/dM/MY/d)>"


def test_a_crontab_survives_pickling_and_copying():
    import copy
    import pickle
    cron = crontab(minute="*/5", tz="UTC")
    assert pickle.loads(pickle.dumps(cron)) == cron == copy.deepcopy(cron)
    if HAVE_ZONES:
        zoned = crontab(minute=1, tz="Europe/Berlin")
        assert pickle.loads(pickle.dumps(zoned)) == zoned


# -- Celery's documented examples (the "Crontab schedules" table of its periodic-tasks guide) --

def times_in(cron, start, end):
    """Every time of `cron` from `start` up to `end` (epoch seconds), as naive UTC datetimes."""
    found, when = [], start - 1
    while True:
        when = cron.next_after(when)
        if when >= end:
            return found
        found.append(utc(when))


JAN_2024 = (at(2024, 1, 1), at(2024, 2, 1))      # 2024-01-01 is a Monday


def test_celerys_every_minute_and_daily_at_midnight():
    minutes = times_in(crontab(tz="UTC"), at(2024, 1, 1), at(2024, 1, 1, 1))
    assert len(minutes) == 60 and minutes[1] - minutes[0] == datetime.timedelta(minutes=1)
    assert times_in(crontab(minute=0, hour=0, tz="UTC"), at(2024, 1, 1), at(2024, 1, 4)) == [
        datetime.datetime(2024, 1, day) for day in (1, 2, 3)]


def test_celerys_every_three_hours_in_two_spellings():
    hours = [t.hour for t in times_in(crontab(minute=0, hour="*/3", tz="UTC"),
                                      at(2024, 1, 1), at(2024, 1, 2))]
    assert hours == [0, 3, 6, 9, 12, 15, 18, 21]
    assert crontab(minute=0, hour="*/3") == crontab(minute=0, hour="0,3,6,9,12,15,18,21")


def test_celerys_every_quarter_hour_and_every_minute_on_sundays():
    assert len(times_in(crontab(minute="*/15", tz="UTC"), at(2024, 1, 1), at(2024, 1, 2))) == 96
    sundays = times_in(crontab(day_of_week="sunday", tz="UTC"), *JAN_2024)
    assert len(sundays) == 4 * 1440 and {t.weekday() for t in sundays} == {6}
    assert crontab(day_of_week="sunday") == crontab(minute="*", hour="*", day_of_week="sun")


def test_celerys_every_ten_minutes_at_three_hours_on_thursdays_and_fridays():
    times = times_in(crontab(minute="*/10", hour="3,17,22", day_of_week="thu,fri", tz="UTC"),
                     *JAN_2024)
    assert {t.weekday() for t in times} == {3, 4} and {t.hour for t in times} == {3, 17, 22}
    assert {t.minute for t in times} == {0, 10, 20, 30, 40, 50}
    assert len(times) == 8 * 3 * 6             # 8 Thursdays and Fridays in January 2024


@pytest.mark.parametrize("hour, expected", [
    ("*/2,*/3", set(range(24)) - {1, 5, 7, 11, 13, 17, 19, 23}),
    ("*/5", {0, 5, 10, 15, 20}),
    ("*/3,8-17", {0, 3, 6, 9, 12, 15, 18, 21} | set(range(8, 18))),
])
def test_celerys_hour_lists_and_steps(hour, expected):
    day = times_in(crontab(minute=0, hour=hour, tz="UTC"), at(2024, 1, 1), at(2024, 1, 2))
    assert {t.hour for t in day} == expected


@pytest.mark.parametrize("fields, days", [
    ({"day_of_month": "2"}, {(month, 2) for month in range(1, 13)}),
    ({"day_of_month": "2-30/2"}, None),
    ({"day_of_month": "1-7,15-21"}, None),
    ({"day_of_month": "11", "month_of_year": "5"}, {(5, 11)}),
    ({"month_of_year": "*/3"}, None),
])
def test_celerys_days_of_the_month_and_months(fields, days):
    times = times_in(crontab(0, 0, tz="UTC", **fields), at(2024, 1, 1), at(2025, 1, 1))
    found = {(t.month, t.day) for t in times}
    assert all(t.hour == 0 and t.minute == 0 for t in times)
    if days is not None:
        assert found == days
    elif fields.get("day_of_month") == "2-30/2":
        assert {day for _, day in found} == set(range(2, 31, 2))
    elif fields.get("day_of_month") == "1-7,15-21":
        assert {day for _, day in found} == set(range(1, 8)) | set(range(15, 22))
    else:                                       # the first month of every quarter, every day
        assert {month for month, _ in found} == {1, 4, 7, 10} and len(found) == 31 + 30 + 31 + 31


# -- solar (Celery's solar schedule; there was none: ImportError) ------------------------------

def _utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("event, lat, lon, after, expected", [
    # Times as almanacs give them (to the minute; written here in UTC).
    ("sunset", -37.81753, 144.96715, _utc(2026, 12, 8), _utc(2026, 12, 8, 9, 33)),
    ("sunrise", -37.81753, 144.96715, _utc(2026, 12, 8), _utc(2026, 12, 8, 18, 51)),
    ("sunrise", 51.5074, -0.1278, _utc(2026, 6, 21), _utc(2026, 6, 21, 3, 43)),
    ("sunset", 51.5074, -0.1278, _utc(2026, 6, 21), _utc(2026, 6, 21, 20, 21)),
    ("solar_noon", 51.5074, -0.1278, _utc(2026, 6, 21), _utc(2026, 6, 21, 12, 2)),
    ("dusk_civil", 51.5074, -0.1278, _utc(2026, 6, 21), _utc(2026, 6, 21, 21, 8)),
])
def test_solar_times_agree_with_published_ones_within_three_minutes(event, lat, lon, after,
                                                                     expected):
    assert abs(solar(event, lat, lon).next_after(after) - expected) < 180


def test_solar_events_come_in_order_and_a_day_without_one_is_skipped():
    day = _utc(2026, 3, 20)
    times = [solar(event, 48.85, 2.35).next_after(day) for event in SOLAR_EVENTS]
    assert times == sorted(times) and times[-1] - times[0] < 86400
    # Tromsø: no sunset under the midnight sun, the next one late in July.
    sunset = solar("sunset", 69.65, 18.96).next_after(_utc(2026, 6, 21))
    assert _utc(2026, 7, 20) < sunset < _utc(2026, 7, 30)


def test_solar_is_due_as_a_crontab_is_and_refuses_what_celery_refuses():
    sunset = solar("sunset", -37.81753, 144.96715)
    first = sunset.next_after(_utc(2026, 12, 8))
    assert sunset.is_due(None, first - 10) == (False, pytest.approx(10))
    due, wait = sunset.is_due(first - 10, first + 1)
    assert due and 86000 < wait < 86800
    assert as_schedule(sunset) is sunset and sunset == solar("sunset", -37.81753, 144.96715)
    assert not sunset.sends_at_start
    for args, message in ((("sundown", 0, 0), "solar event 'sundown'"),
                          (("sunset", 91, 0), "solar lat 91"),
                          (("sunset", 0, "east"), "solar lon 'east'")):
        with pytest.raises(ConfigurationError, match=message):
            solar(*args)


def test_celerys_forms_of_is_due_and_remaining_estimate_for_health_checks():
    """A beat health-check script written against Celery: ``is_due(last_run_at)`` with a
    datetime answers a schedstate; ``remaining_estimate(last_run_at)`` a timedelta (negative
    when overdue). minitask's took epoch seconds and a `now` only, and had no
    remaining_estimate."""
    now = time.time()
    last = datetime.datetime.fromtimestamp(now - 45, datetime.timezone.utc)
    state = schedule(30).is_due(last)
    assert state.is_due and state.next == 30.0 and tuple(state) == (True, 30.0)
    assert schedule(30).is_due(last.replace(tzinfo=None)).is_due        # naive is UTC
    overdue = schedule(30).remaining_estimate(last)
    assert -16 < overdue.total_seconds() < -14
    every_minute = crontab()
    ahead = every_minute.remaining_estimate(datetime.datetime.now(datetime.timezone.utc))
    assert datetime.timedelta(0) < ahead <= datetime.timedelta(seconds=60)
    assert every_minute.is_due(None).is_due is False
    sunset = solar("sunset", 51.5, 0.0).remaining_estimate(
        datetime.datetime.now(datetime.timezone.utc))
    assert datetime.timedelta(0) < sunset <= datetime.timedelta(days=1, minutes=5)
