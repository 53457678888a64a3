"""Schedules of periodic tasks: a fixed interval (`schedule`), wall-clock times (`crontab`),
or the sun's (`solar`: sunrise, sunset, dawn, dusk, solar noon at a place).

Each answers the beat's one question, ``is_due(last_run_at, now)``: is a send due, and how
many seconds until it is worth asking again (a ``schedstate(is_due, next)``, as Celery's).
Times are epoch seconds; the clock is the caller's, so everything here is pure. Celery's
forms work too, for scripts written against them (a beat health check): ``is_due(datetime)``
and ``remaining_estimate(datetime)`` (a timedelta, negative when overdue) read the clock.

`crontab` follows Celery's syntax and meaning: five fields (minute, hour, day_of_week,
day_of_month, month_of_year), each ``*``, a number, a range ``a-b`` (``fri-mon`` wraps), a step
``*/15`` or ``a-b/n``, a comma-separated list of those, or an int or a set/list of ints;
day names in day_of_week (``sun``/``sunday`` = 0 ... ``sat`` = 6) and month names in
month_of_year. All five must match (a day must be in day_of_week *and* day_of_month, as in
Celery, unlike Vixie cron's "or").

Wall-clock time is read in a timezone: the ``TIMEZONE`` setting (``"UTC"`` by default,
``"local"`` for the machine's, or an IANA name such as ``"Europe/Berlin"`` where Python has
`zoneinfo`, 3.9 and later). The rule across daylight-saving changes, the one thing cron
implementations disagree on: a minute is due when the clock *shows* it for the first time, so
a time the clock skips does not happen that day, and a time it shows twice counts once.

A crontab or a solar schedule never sends when the beat first meets it (``sends_at_start``
is False): it waits for its next time, as Celery's beat does. An interval sends at once, then
every interval.
"""

import calendar
import collections
import datetime
import math
import time

from .exceptions import ConfigurationError
from .options import check_call_options

__all__ = ["schedule", "crontab", "solar", "schedstate", "as_schedule", "get_timezone",
           "check_beat_schedule", "DAY_NAMES", "MONTH_NAMES", "SOLAR_EVENTS"]

UTC = datetime.timezone.utc
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec")
# A valid spec matches within 28 years (the calendar repeats its weekdays); look no further.
_HORIZON_YEARS = 400


schedstate = collections.namedtuple("schedstate", "is_due next")
schedstate.__doc__ = "Celery's answer of is_due: due now, and seconds until the next look."


def _epoch(when):
    """Epoch seconds of `when`: a number already, or a datetime (naive: UTC, as Celery's
    beat records them with enable_utc)."""
    if isinstance(when, datetime.datetime):
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return when


class _Schedule:
    """Celery's forms of the beat's question, on top of `_is_due` and `next_after`."""

    def is_due(self, last_run_at, now=None):
        """``schedstate(due, seconds until the next look)`` for an entry last sent at
        `last_run_at` (epoch seconds or a datetime; None: never), at `now` (the clock's
        time when not given)."""
        now = time.time() if now is None else _epoch(now)
        return schedstate(*self._is_due(None if last_run_at is None else _epoch(last_run_at),
                                        now))

    def remaining_estimate(self, last_run_at):
        """Celery's: a timedelta from now to the first time due after `last_run_at` (a
        datetime or epoch seconds), negative when that time has passed."""
        due = self.next_after(_epoch(last_run_at))
        if due is None:                 # a solar event that does not happen there in a year
            return datetime.timedelta.max
        return datetime.timedelta(seconds=due - time.time())


class schedule(_Schedule):
    """Every `run_every` (seconds or a timedelta): Celery's `celery.schedules.schedule`."""

    sends_at_start = True

    def __init__(self, run_every):
        self.run_every = run_every
        self.seconds = _interval_seconds(run_every)

    def _is_due(self, last_run_at, now):
        if last_run_at is None:
            return True, self.seconds
        remaining = last_run_at + self.seconds - now
        if remaining <= 0:
            return True, self.seconds
        return False, remaining

    def next_after(self, when):
        """The first time due after epoch second `when`: an interval later."""
        return when + self.seconds

    def __eq__(self, other):
        return isinstance(other, schedule) and other.seconds == self.seconds

    def __repr__(self):
        return "<schedule: every %gs>" % self.seconds


def _interval_seconds(value):
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError("run_every %r: expected seconds, a timedelta or a crontab"
                                 % (value,))
    if not seconds > 0:
        raise ConfigurationError("run_every %r: expected a positive interval" % (value,))
    return seconds


def as_schedule(value):
    """A schedule object for `value`: seconds, a timedelta, a `schedule` or a `crontab`."""
    if isinstance(value, (schedule, crontab, solar)):
        return value
    return schedule(value)


# -- the BEAT_SCHEDULE setting (Celery's beat_schedule) -------------------------------------

_ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "relative")


def check_beat_schedule(label, value):
    """Check a beat_schedule: {name: {task, schedule, args, kwargs, options}}; returns it with
    each schedule a schedule object and each entry complete. Raises ConfigurationError naming
    the entry and key."""
    if not isinstance(value, dict) or not all(isinstance(name, str) and name for name in value):
        raise _bad(label, value, "expected a dict of entry name -> {task, schedule, args, "
                                 "kwargs, options}")
    return {name: _entry("%s[%r]" % (label, name), entry) for name, entry in value.items()}


def _entry(label, entry):
    unknown = sorted(set(entry) - set(_ENTRY_KEYS), key=str) if isinstance(entry, dict) else 0
    if unknown != [] or "task" not in entry or "schedule" not in entry:
        raise _bad(label, entry, "expected a dict with task and schedule, and maybe args, "
                                 "kwargs, options")
    if not isinstance(entry["task"], str) or not entry["task"]:
        raise _bad(label + "['task']", entry["task"], "expected a non-empty string")
    if entry.get("relative", False) is not False:
        raise _bad(label + "['relative']", entry["relative"],
                   "not supported: a schedule counts from the entry's last send")
    args, kwargs = entry.get("args", ()), entry.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise _bad(label + "['args']", args, "expected a list or tuple")
    if not isinstance(kwargs, dict):
        raise _bad(label + "['kwargs']", kwargs, "expected a dict")
    options = entry.get("options", {})
    try:
        every = as_schedule(entry["schedule"])
        if not isinstance(options, dict):
            raise ConfigurationError("expected a dict of call options")
        options = check_call_options(None, options)
    except ConfigurationError as exc:
        raise ConfigurationError("%s: %s" % (label, exc)) from None
    return {"task": entry["task"], "schedule": every, "args": tuple(args),
            "kwargs": dict(kwargs), "options": options}


def _bad(label, value, expected):
    text = repr(value)
    return ConfigurationError("%s=%s: %s" % (label, text if len(text) <= 100 else
                                             text[:97] + "...", expected))


class crontab(_Schedule):
    """Wall-clock times, as a cron line gives them: ``crontab(minute=0, hour="*/3")``.

    Raises ConfigurationError at once for a field that does not parse, or for a spec that
    no date can match (``day_of_month=31, month_of_year="feb"``).
    """

    sends_at_start = False

    def __init__(self, minute="*", hour="*", day_of_week="*", day_of_month="*",
                 month_of_year="*", tz=None):
        self.spec = (minute, hour, day_of_week, day_of_month, month_of_year)
        self.minute = _field("minute", minute, 0, 59)
        self.hour = _field("hour", hour, 0, 23)
        self.day_of_week = _field("day_of_week", day_of_week, 0, 6, DAY_NAMES, 0)
        self.day_of_month = _field("day_of_month", day_of_month, 1, 31)
        self.month_of_year = _field("month_of_year", month_of_year, 1, 12, MONTH_NAMES, 1)
        self.tz = tz if tz is None else get_timezone(tz)
        if not any(day <= _longest_month(month) for month in self.month_of_year
                   for day in self.day_of_month):
            raise ConfigurationError("%r never matches: no month of month_of_year has a day "
                                     "of day_of_month" % (self,))

    @classmethod
    def from_string(cls, line):
        """A crontab from a cron line: ``"minute hour day_of_month month day_of_week"``."""
        fields = line.split() if isinstance(line, str) else ()
        if len(fields) != 5:
            raise ConfigurationError("crontab line %r: expected five fields (minute hour "
                                     "day_of_month month_of_year day_of_week)" % (line,))
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    # -- the beat's questions --------------------------------------------------------------------

    def _is_due(self, last_run_at, now):
        """Due once a time of ours has come since `last_run_at` (once, however many came)."""
        return _due_by_times(self.next_after, last_run_at, now)

    def matches(self, when):
        """True if the minute that holds epoch second `when` is one of our times (as the
        clock shows it the first time, see the module docstring)."""
        wall, fold = _wall(when, self._zone())
        return fold == 0 and self._matches_wall(wall)

    def next_after(self, when):
        """The first of our times strictly after epoch second `when`, in epoch seconds."""
        zone = self._zone()
        wall, _fold = _wall(when, zone)
        wall = wall.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        limit = wall.year + _HORIZON_YEARS
        while True:
            wall = self._next_wall(wall, limit)
            instant = _instant(wall, zone)
            # Kept only if the clock really shows `wall` at that instant, for the first time
            # (not inside a skipped hour), and it lies ahead (not the first of a repeated one).
            if instant > when and _wall(instant, zone) == (wall, 0):
                return instant
            wall += datetime.timedelta(minutes=1)

    # -- wall-clock arithmetic -------------------------------------------------------------------

    def _matches_wall(self, wall):
        return (wall.minute in self.minute and wall.hour in self.hour
                and _weekday(wall) in self.day_of_week and wall.day in self.day_of_month
                and wall.month in self.month_of_year)

    def _next_wall(self, wall, limit):
        """The first wall-clock minute at or after `wall` that matches every field."""
        while wall.year <= limit:
            if wall.month not in self.month_of_year:
                wall = _first_of_next_month(wall)
            elif wall.day not in self.day_of_month or _weekday(wall) not in self.day_of_week:
                wall = datetime.datetime(wall.year, wall.month, wall.day) \
                    + datetime.timedelta(days=1)
            elif wall.hour not in self.hour:
                wall = wall.replace(minute=0) + datetime.timedelta(hours=1)
            elif wall.minute not in self.minute:
                later = [m for m in self.minute if m > wall.minute]
                wall = wall.replace(minute=min(later)) if later else \
                    wall.replace(minute=0) + datetime.timedelta(hours=1)
            else:
                return wall
        raise ConfigurationError("%r never matches before the year %d" % (self, limit))

    def _zone(self):
        if self.tz is not None:
            return self.tz
        from .config import get_settings   # config checks schedules: read it only when used
        return get_timezone(get_settings().TIMEZONE)

    def __eq__(self, other):
        return isinstance(other, crontab) and (
            other.minute, other.hour, other.day_of_week, other.day_of_month,
            other.month_of_year, other.tz) == (
            self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year,
            self.tz)

    def __repr__(self):
        return "<crontab: %s %s %s %s %s (m/h/dM/MY/d)>" % tuple(
            _show(field) for field in (self.spec[0], self.spec[1], self.spec[3],
                                       self.spec[4], self.spec[2]))


def _due_by_times(next_after, last_run_at, now):
    """`is_due` of a schedule of points in time (`next_after(t)`: the first after t, or
    None when there is none within a year): due once one has come since `last_run_at`."""
    if last_run_at is None:
        upcoming = next_after(now)
        return False, _DAY if upcoming is None else max(0.0, upcoming - now)
    passed = next_after(last_run_at)
    if passed is not None and passed <= now:
        upcoming = next_after(now)
        return True, _DAY if upcoming is None else max(0.0, upcoming - now)
    return False, _DAY if passed is None else max(0.0, passed - now)


_DAY = 86400.0

# Celery's solar events: the sun's centre at this altitude (degrees), rising (+1), setting
# (-1), or crossing the meridian (0). Sunrise and sunset are the upper limb at the horizon,
# seen through the air: the centre 0.833 degrees below it.
SOLAR_EVENTS = {
    "dawn_astronomical": (-18.0, 1), "dawn_nautical": (-12.0, 1), "dawn_civil": (-6.0, 1),
    "sunrise": (-0.833, 1), "solar_noon": (0.0, 0), "sunset": (-0.833, -1),
    "dusk_civil": (-6.0, -1), "dusk_nautical": (-12.0, -1), "dusk_astronomical": (-18.0, -1),
}
_J2000 = 2451545.0              # the Julian day of 2000-01-01 12:00 UTC
_UNIX_EPOCH_JD = 2440587.5      # the Julian day of 1970-01-01 00:00 UTC


class solar(_Schedule):
    """When the sun does `event` at latitude `lat`, longitude `lon` (degrees, north and east
    positive): Celery's ``solar('sunset', -37.81753, 144.96715)``. Events are SOLAR_EVENTS'
    names. Times come from the sunrise equation (NOAA's low-precision formulas: within about
    a minute between the polar circles); a day when the event does not happen there (the
    midnight sun) is skipped.
    """

    sends_at_start = False

    def __init__(self, event, lat, lon):
        if event not in SOLAR_EVENTS:
            raise ConfigurationError("solar event %r: expected one of %s"
                                     % (event, ", ".join(SOLAR_EVENTS)))
        for name, value, limit in (("lat", lat, 90), ("lon", lon, 180)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not -limit <= value <= limit):
                raise ConfigurationError("solar %s %r: expected degrees from -%d to %d"
                                         % (name, value, limit, limit))
        self.event, self.lat, self.lon = event, float(lat), float(lon)

    def _is_due(self, last_run_at, now):
        return _due_by_times(self.next_after, last_run_at, now)

    def next_after(self, when):
        """The first time of the event strictly after epoch second `when`; None when it
        does not happen there within a year."""
        day = round((when / _DAY + _UNIX_EPOCH_JD) - _J2000)
        for number in range(day - 1, day + 367):
            instant = self._on_day(number)
            if instant is not None and instant > when:
                return instant
        return None

    def _on_day(self, number):
        """The event on day `number` since J2000 (epoch seconds), or None that day."""
        altitude, direction = SOLAR_EVENTS[self.event]
        mean_time = number - self.lon / 360.0
        anomaly = math.radians((357.5291 + 0.98560028 * mean_time) % 360.0)
        centre = (1.9148 * math.sin(anomaly) + 0.0200 * math.sin(2 * anomaly)
                  + 0.0003 * math.sin(3 * anomaly))
        longitude = math.radians((math.degrees(anomaly) + centre + 180.0 + 102.9372) % 360.0)
        transit = (_J2000 + mean_time + 0.0053 * math.sin(anomaly)
                   - 0.0069 * math.sin(2 * longitude))
        if direction:
            declination = math.asin(math.sin(longitude) * math.sin(math.radians(23.4397)))
            latitude = math.radians(self.lat)
            cosine = ((math.sin(math.radians(altitude))
                       - math.sin(latitude) * math.sin(declination))
                      / (math.cos(latitude) * math.cos(declination) or 1e-12))
            if not -1.0 <= cosine <= 1.0:
                return None             # the sun stays above (or below) that altitude
            half_day = math.degrees(math.acos(cosine)) / 360.0     # transit to event, days
            transit -= direction * half_day                         # rising: before it
        return (transit - _UNIX_EPOCH_JD) * _DAY

    def __eq__(self, other):
        return isinstance(other, solar) and (other.event, other.lat, other.lon) == (
            self.event, self.lat, self.lon)

    def __repr__(self):
        return "<solar: %s at latitude %g, longitude %g>" % (self.event, self.lat, self.lon)


def _show(field):
    if isinstance(field, (set, frozenset, list, tuple)):
        return ",".join(str(value) for value in sorted(field))
    return str(field)


def _weekday(wall):
    return (wall.weekday() + 1) % 7          # Python: Monday 0; cron: Sunday 0


def _longest_month(month):
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _first_of_next_month(wall):
    if wall.month == 12:
        return datetime.datetime(wall.year + 1, 1, 1)
    return datetime.datetime(wall.year, wall.month + 1, 1)


# -- parsing one field -----------------------------------------------------------------------

def _field(name, spec, low, high, names=(), first=0):
    """The set of values `spec` allows, between `low` and `high` inclusive."""
    def bad(expected):
        return ConfigurationError("crontab %s=%r: %s" % (name, spec, expected))
    if isinstance(spec, int) and not isinstance(spec, bool):
        values = {spec}
    elif isinstance(spec, str):
        values = set()
        for part in spec.replace(" ", "").split(","):
            values |= _part(part, low, high, names, first, bad)
    elif isinstance(spec, (set, frozenset, list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in spec):
        values = set(spec)
    else:
        raise bad("expected a cron pattern (\"*/15\", \"1-5\", \"0,30\"), a number or a "
                  "set of numbers")
    if not values:
        raise bad("expected at least one value")
    outside = sorted(v for v in values if not low <= v <= high)
    if outside:
        raise bad("%d is outside %d..%d" % (outside[0], low, high))
    return frozenset(values)


def _part(part, low, high, names, first, bad):
    if not part:
        raise bad("an empty item in the list")
    step = 1
    if "/" in part:
        part, _slash, step_text = part.partition("/")
        if not step_text.isdigit() or int(step_text) == 0:
            raise bad("the step after / must be a whole number above 0")
        step = int(step_text)
        if part != "*" and "-" not in part:
            raise bad("a step goes after * or a range (\"*/%s\", \"a-b/%s\")"
                      % (step_text, step_text))
    if part == "*":
        return set(range(low, high + 1, step))
    start, dash, end = part.partition("-")
    start = _number(start, names, first, bad)
    if not dash:
        return {start}
    end = _number(end, names, first, bad)
    for value in (start, end):
        if not low <= value <= high:
            raise bad("%d is outside %d..%d" % (value, low, high))
    if end >= start:
        span = list(range(start, end + 1))
    else:                                   # wraps: fri-mon, 22-2
        span = list(range(start, high + 1)) + list(range(low, end + 1))
    return set(span[::step])


def _number(text, names, first, bad):
    if text.isdigit():
        return int(text)
    word = text.lower()
    for index, short in enumerate(names):
        if word == short or (len(word) > 3 and word.startswith(short)
                             and _full_name(short).startswith(word)):
            return first + index
    if names:
        raise bad("%r is neither a number nor a name (%s)" % (text, ", ".join(names)))
    raise bad("%r is not a number" % (text,))


_FULL_NAMES = {"sun": "sunday", "mon": "monday", "tue": "tuesday", "wed": "wednesday",
               "thu": "thursday", "fri": "friday", "sat": "saturday", "jan": "january",
               "feb": "february", "mar": "march", "apr": "april", "may": "may",
               "jun": "june", "jul": "july", "aug": "august", "sep": "september",
               "oct": "october", "nov": "november", "dec": "december"}


def _full_name(short):
    return _FULL_NAMES[short]


# -- timezones -------------------------------------------------------------------------------

class _Local:
    """The machine's own timezone, as the C library knows it (works on every Python)."""

    def __repr__(self):
        return "local"

    def __eq__(self, other):
        return isinstance(other, _Local)

    def __hash__(self):
        return hash("local")


LOCAL = _Local()


def get_timezone(name):
    """The timezone a TIMEZONE value names: "UTC", "local", or an IANA name (Python 3.9+).

    Raises ConfigurationError naming the value when it is none of those here.
    """
    if isinstance(name, (datetime.tzinfo, _Local)):
        return name
    if not isinstance(name, str) or not name:
        raise ConfigurationError("TIMEZONE %r: expected \"UTC\", \"local\" or a name such as "
                                 "\"Europe/Berlin\"" % (name,))
    if name.upper() in ("UTC", "ETC/UTC", "GMT", "Z"):
        return UTC
    if name.lower() == "local":
        return LOCAL
    try:
        import zoneinfo
    except ImportError:             # Python 3.8
        raise ConfigurationError("TIMEZONE %r needs Python 3.9 or later (zoneinfo); on this "
                                 "Python use \"UTC\" or \"local\"" % (name,)) from None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError("TIMEZONE %r: no such timezone here (%s)" % (name, exc)) \
            from None


def _wall(when, zone):
    """``(naive wall-clock datetime, fold)`` the clock of `zone` shows at epoch second `when`;
    fold is 1 the second time it shows a repeated time."""
    if isinstance(zone, _Local):
        local = datetime.datetime.fromtimestamp(when)
    else:
        local = datetime.datetime.fromtimestamp(when, zone).replace(tzinfo=None)
    return local.replace(fold=0), local.fold


def _instant(wall, zone):
    """Epoch seconds when the clock of `zone` first shows `wall` (for a time the clock skips,
    some instant nearby; `_wall` of it then differs)."""
    if isinstance(zone, _Local):
        return wall.replace(fold=0).timestamp()
    return wall.replace(tzinfo=zone, fold=0).timestamp()
