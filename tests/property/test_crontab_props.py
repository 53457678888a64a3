"""crontab's next time, for any spec, any moment and any of a few timezones (some with
daylight saving, one with a half-hour shift): it is after now, it matches the spec, and no
moment between now and it matches.

"Matches" is worked out here on its own, from the zone's wall clock (`datetime.fromtimestamp`),
not with crontab's code: the minute's fields are in the spec's sets, and the clock shows that
minute for the first time (``fold == 0``), the rule the module docstring states.
"""
import datetime

from hypothesis import assume, given
from hypothesis import strategies as st

from minitask.exceptions import ConfigurationError
from minitask.schedules import crontab

UTC = datetime.timezone.utc
ZONES = [UTC]
try:
    import zoneinfo
    ZONES += [zoneinfo.ZoneInfo(name) for name in
              ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")]
except Exception:                       # Python 3.8, or no timezone database: UTC alone
    pass

minutes = st.sets(st.integers(0, 59), min_size=1, max_size=6)
hours = st.sets(st.integers(0, 23), min_size=1, max_size=6)
weekdays = st.one_of(st.just(set(range(7))), st.sets(st.integers(0, 6), min_size=1))
days = st.one_of(st.just(set(range(1, 32))), st.sets(st.integers(1, 31), min_size=1,
                                                     max_size=5))
months = st.one_of(st.just(set(range(1, 13))), st.sets(st.integers(1, 12), min_size=1))
moments = st.datetimes(min_value=datetime.datetime(1971, 1, 1),
                       max_value=datetime.datetime(2090, 1, 1)).map(
    lambda naive: naive.replace(tzinfo=UTC).timestamp())


def shown(when, zone):
    return datetime.datetime.fromtimestamp(when, zone)


def matches(when, zone, fields):
    minute, hour, weekday, day, month = fields
    local = shown(when, zone)
    return (local.fold == 0 and local.minute in minute and local.hour in hour
            and (local.weekday() + 1) % 7 in weekday and local.day in day
            and local.month in month)


def candidates(start, end, zone, fields):
    """Every moment between `start` and `end` whose wall clock has the spec's fields, found
    day by day over the wall-clock dates in between (both folds of each time)."""
    minute, hour, weekday, day, month = fields
    date = shown(start, zone).date()
    last = shown(end, zone).date()
    while date <= last:
        if date.month in month and date.day in day and (date.weekday() + 1) % 7 in weekday:
            for h in hour:
                for m in minute:
                    for fold in (0, 1):
                        wall = datetime.datetime(date.year, date.month, date.day, h, m,
                                                 tzinfo=zone, fold=fold)
                        yield wall.timestamp()
        date += datetime.timedelta(days=1)


@given(minutes, hours, weekdays, days, months, moments, st.sampled_from(ZONES))
def test_the_next_time_is_after_now_matches_and_nothing_between_matches(
        minute, hour, weekday, day, month, now, zone):
    try:
        cron = crontab(minute, hour, weekday, day, month, tz=zone)
    except ConfigurationError:          # no date has these days and months (31 Feb)
        assume(False)
    fields = (minute, hour, weekday, day, month)
    following = cron.next_after(now)
    assert following > now
    assert matches(following, zone, fields)
    assert cron.matches(following)
    for moment in candidates(now, following, zone, fields):
        if now < moment < following:
            assert not matches(moment, zone, fields), shown(moment, zone)
