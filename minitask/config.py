"""Settings: every name, its default, and where each value in force came from.

    defaults < settings module < custom LOADER's read_configuration() < MINITASK_<NAME> < flags

The settings module is the one MINITASK_CONFIG_MODULE names, else DJANGO_SETTINGS_MODULE's (a
Django project needs no second file), else `minitaskconfig` if it exists. A custom loader's
configuration counts only when its class overrides `read_configuration`; flags are the
overrides given to `load_settings` or `configure`.

`load_settings` builds one read-only `Settings` from those layers; `get_settings` keeps the one
in force for the process. Every value is validated where it enters, so a mistake is reported as
one `ConfigurationError` line naming the setting (as the user spelled it) and the value, at
start-up rather than deep inside a worker. A settings module may use early Celery's names
(`ALIASES`); environment variables use only ``MINITASK_<NAME>``.

Left to others: the worker resolves `CONCURRENCY` None (CPU count) and `WORKER_QUEUES` None
(`DEFAULT_QUEUE` plus `QUEUES`); `loaders` imports task modules; `serialization` knows which
serializers exist.
"""

import copy
import datetime
import importlib
import ipaddress
import json
import logging
import math
import os
import re
import reprlib
import threading

from minitask import celery_settings, ratelimit, routes, schedules
from minitask.exceptions import ConfigurationError, MinitaskError

__all__ = [
    "DEFAULTS", "DESCRIPTIONS", "ALIASES", "Settings", "load_settings", "get_settings",
    "configure", "reset", "parse_broker_url", "find_settings_module", "import_settings_module",
    "read_settings_module", "safe_url",
]

logger = logging.getLogger(__name__)

DEFAULT_MODULE = "minitaskconfig"
DEFAULT_PORT = 5679

_SETTINGS = (   # name, default, the line the README's configuration reference shows
    ("BROKER_URL", "minitask://127.0.0.1:5679", "The broker; minitasks:// for TLS."),
    ("BROKER_SECRET", None, "Shared secret for the broker handshake (required beyond loopback)."),
    ("BROKER_CA_FILE", None, "CA file to verify a minitasks:// broker; None: the system's."),
    ("BROKER_UID", None, "User (id or name) the broker runs as, when not the client's own or "
                         "root: its local socket is trusted."),
    ("IMPORTS", [], "Modules a worker imports at start so that their tasks are registered."),
    ("TASK_SERIALIZER", "json", "Encoding of task arguments and results: json, pickle, yaml, ..."),
    ("ACCEPT_CONTENT", ["json"], "Serializers a worker accepts (pickle only when listed)."),
    ("DEFAULT_RATE_LIMIT", None, "Rate limit of tasks that set none: \"100/m\", \"10/s\"."),
    ("DEFAULT_EXCHANGE", "minitask", "Exchange of tasks that name none; unset: DEFAULT_QUEUE."),
    ("DEFAULT_EXCHANGE_TYPE", "direct", "direct, topic, fanout or headers."),
    ("DEFAULT_QUEUE", "minitask", "Queue the broker declares at start and workers consume "
                                  "(set it alike for both)."),
    ("DEFAULT_ROUTING_KEY", "minitask", "Routing key of tasks that name none; unset: "
                                        "DEFAULT_QUEUE."),
    ("QUEUES", {}, "{queue: {exchange, exchange_type, binding_key, arguments, durable}}; "
                   "Celery's queue_arguments: x-max-priority, x-queue-type (no effect)."),
    ("RESULT_EXPIRES", 86400.0, "Seconds (or a timedelta) that results are kept; None or 0: "
                                "for ever (a hundred years)."),
    ("ALWAYS_EAGER", False, "Run tasks in the calling process instead of sending them."),
    ("SEND_TASK_ERROR_EMAILS", False, "E-mail ADMINS when a task fails."),
    ("ADMINS", [], "(name, email) pairs that receive task error e-mails."),
    ("SERVER_EMAIL", "minitask@localhost", "Sender address of error e-mails."),
    ("EMAIL_HOST", "localhost", "SMTP host for error e-mails."),
    ("EMAIL_PORT", 25, "SMTP port for error e-mails."),
    ("LOADER", None, "Loader class, \"pkg.module.ClassName\" (or default, django)."),
    ("CONCURRENCY", None, "Worker pool processes (-c); None: one per CPU."),
    ("LOGLEVEL", "WARNING", "Worker log level (-l): DEBUG, INFO, WARNING, ERROR, CRITICAL."),
    ("LOGFILE", None, "Worker log file (-f); None: stderr."),
    ("PREFETCH_MULTIPLIER", 4, "Messages a worker reserves per pool process; 0: as many as "
                               "it wants, up to 10,000 a worker."),
    ("MAX_TASKS_PER_CHILD", None, "Tasks a pool process runs before it is replaced."),
    ("SHUTDOWN_TIMEOUT", 30.0, "Seconds a stopping worker waits for running tasks."),
    ("WORKER_QUEUES", None, "Queues a worker consumes (-Q); None: DEFAULT_QUEUE plus QUEUES."),
    ("BEAT", False, "Also send periodic tasks from this worker (--beat)."),
    ("START_METHOD", None, "How pool processes start (--start-method): fork, spawn or "
                           "forkserver; None: the platform's default."),
    ("TASK_ACKS_LATE", False, "acks_late of tasks that set none (ack when they finish)."),
    ("TASK_TIME_LIMIT", None, "time_limit (s) of tasks that set none."),
    ("TASK_SOFT_TIME_LIMIT", None, "soft_time_limit (s) of tasks that set none."),
    ("TASK_ROUTES", None, "Task name or glob -> queue, or {exchange, routing_key}; or "
                          "router functions (Celery's task_routes)."),
    ("BEAT_SCHEDULE", {}, "{name: {task, schedule, args, kwargs, options}} sent by --beat "
                          "(Celery's beat_schedule)."),
    ("TIMEZONE", "UTC", "Timezone of crontab schedules: UTC, local, or a name such as "
                        "Europe/Berlin (Python 3.9+)."),
)

DEFAULTS = {name: default for name, default, _ in _SETTINGS}
DESCRIPTIONS = {name: description for name, _, description in _SETTINGS}

# Early Celery's names, accepted in a settings module only (never from the environment).
ALIASES = dict(
    {"CELERY_" + name: name for name in (
        "BROKER_URL", "IMPORTS", "TASK_SERIALIZER", "ACCEPT_CONTENT", "DEFAULT_RATE_LIMIT",
        "DEFAULT_EXCHANGE", "DEFAULT_EXCHANGE_TYPE", "DEFAULT_QUEUE", "DEFAULT_ROUTING_KEY",
        "QUEUES", "RESULT_EXPIRES", "ALWAYS_EAGER", "SEND_TASK_ERROR_EMAILS", "LOADER")},
    CELERY_TASK_RESULT_EXPIRES="RESULT_EXPIRES",
    CELERYD_CONCURRENCY="CONCURRENCY",
    CELERYD_LOG_LEVEL="LOGLEVEL",
    CELERYD_LOG_FILE="LOGFILE",
    CELERYD_PREFETCH_MULTIPLIER="PREFETCH_MULTIPLIER",
    CELERYD_MAX_TASKS_PER_CHILD="MAX_TASKS_PER_CHILD",
)


def _celery_spellings(name):
    """Celery 4/5's names for setting `name`: lower case, the Django ``CELERY_`` namespace's
    upper case, and Celery 3's old upper-case names."""
    lower = [celery for celery, target in celery_settings.MAPPED.items() if target == name]
    return tuple(lower) + tuple("CELERY_" + celery.upper() for celery in lower) + tuple(
        old for old, celery in celery_settings.OLD_NAMES.items() if celery in lower)


# Every spelling a settings module may use, the plain name first (reported as the source when
# several spellings agree; when they disagree, that is an error naming both).
_SPELLINGS = {name: tuple(dict.fromkeys(
    (name, "MINITASK_" + name) + tuple(a for a, n in ALIASES.items() if n == name)
    + _celery_spellings(name))) for name in DEFAULTS}
_SETTING_OF = {spelling: name for name, spellings in _SPELLINGS.items()
               for spelling in spellings}

# How MINITASK_<NAME> text is read when the default (None) does not tell.
_ENV_TYPES = {"CONCURRENCY": int, "MAX_TASKS_PER_CHILD": int, "WORKER_QUEUES": list,
              "TASK_TIME_LIMIT": float, "TASK_SOFT_TIME_LIMIT": float, "TASK_ROUTES": "json"}
# Not settings: the settings module's name, and the worker's name that a worker sets for its
# pool processes (their tasks may read it).
_ENV_NOT_SETTINGS = {"MINITASK_CONFIG_MODULE", "MINITASK_WORKER_HOSTNAME"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
_LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_QUEUE_KEYS = ("exchange", "exchange_type", "binding_key", "routing_key", "arguments", "durable",
               "queue_arguments")
# Celery's queue_arguments (RabbitMQ's x- arguments) that change nothing here: every queue
# has priorities 0..9, and is a classic one.
_QUEUE_ARGUMENTS = {"x-max-priority": "every queue has priorities 0..9",
                    "x-queue-type": "minitask queues have one type"}
_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+socket",
                  "unix")
_BROKER_URL = re.compile(   # scheme :// ( [IPv6 with an optional %zone] | name ) [:port] [/]
    r"([A-Za-z]+)://(?:\[([0-9A-Fa-f:.]+(?:%\w+)?)\]|([\w.-]+))(?::([0-9]+))?/?\Z")

_repr = reprlib.Repr()   # keeps a huge bad value from swamping the one-line message
_repr.maxstring = _repr.maxother = 100
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 8
_repr.maxlevel = 3


def _setting_named(name):
    """The setting `name` spells: minitask's own name, or Celery's in any of its spellings
    (``app.conf.timezone``, ``conf["CELERY_TIMEZONE"]``); else `name` as it is."""
    if isinstance(name, str) and name not in DEFAULTS:
        kind, setting = celery_settings.classify(name, None, _SETTING_OF)
        if kind == "setting":
            return setting
    return name


class Settings:
    """The settings in force: read-only, by attribute (`s.BROKER_URL`) or key (`s["BROKER_URL"]`),
    by minitask's names or Celery's (`s.timezone`, as Celery's ``app.conf.timezone``).

    Read-only so that a setting can only change through `configure`, which validates it and
    records its source. Names missing from `values` take their defaults.
    """

    def __init__(self, values=None, sources=None, module_name=None):
        merged = copy.deepcopy(DEFAULTS)
        merged.update(values or {})
        object.__setattr__(self, "_values", merged)
        # Every setting (all capitals, so never a method's name) is also a plain attribute:
        # reading one, several times per delay(), is then an ordinary lookup.
        self.__dict__.update((name, value) for name, value in merged.items() if name.isupper())
        sources = dict(dict.fromkeys(merged, "default"), **(sources or {}))
        object.__setattr__(self, "_sources", sources)
        object.__setattr__(self, "module_name", module_name)

    def __getattr__(self, name):
        # Only reached when normal lookup fails; "_" names (pickle probing) are never settings.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[_setting_named(name)]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError(f"settings are read-only: use minitask.config.configure({name}=...)")

    def __getitem__(self, name):
        return self._values[_setting_named(name)]

    def __contains__(self, name):
        return _setting_named(name) in self._values

    def get(self, name, default=None):
        return self._values.get(_setting_named(name), default)

    def as_dict(self):
        """Return a copy of every setting, in `DEFAULTS` order."""
        return copy.deepcopy(self._values)

    def source(self, name):
        """Return where `name`'s value came from: "default", "module X", "environment
        MINITASK_X", "loader X" or "flag"."""
        return self._sources[name]

    def __repr__(self):
        changed = sorted(n for n, s in self._sources.items() if s != "default")
        return f"<Settings module={self.module_name!r} changed={changed}>"


def load_settings(module=None, environ=None, overrides=None):
    """Build `Settings` from the defaults, a settings module, the environment and `overrides`.

    `module` is a module (or any object with attributes) or a module name; None finds it with
    `find_settings_module`. Overrides that are None are skipped, so argparse's None defaults
    do not hide the layers below.
    """
    environ = os.environ if environ is None else environ
    if isinstance(module, str):
        module = import_settings_module(module)
    elif module is None:
        module = find_settings_module(environ)
    module_name = None if module is None else getattr(module, "__name__", repr(module))
    values = copy.deepcopy(DEFAULTS)
    sources = dict.fromkeys(DEFAULTS, "default")

    def apply(layer, source):
        for name, (label, value) in layer.items():
            values[name] = _VALIDATORS[name](label, value)
            sources[name] = source(label)

    notes = []
    module_layer = {} if module is None else _layer(vars(module), notes)
    apply(module_layer, lambda label: "module " + module_name)
    env_layer, flag_layer = _env_layer(environ), _flag_layer(overrides or {}, notes)
    loader_path = values["LOADER"]
    for layer in (env_layer, flag_layer):
        if "LOADER" in layer:
            loader_path = _VALIDATORS["LOADER"](*layer["LOADER"])
    if loader_path:
        # Only what the loader adds or changes: one that extends the settings module's
        # configuration hands its values back, and they should still say "module".
        loader_layer = _layer(_loader_configuration(loader_path), notes)
        apply({name: entry for name, entry in loader_layer.items()
               if name not in module_layer or module_layer[name][1] != entry[1]},
              lambda label: "loader " + loader_path)
    apply(env_layer, lambda label: "environment " + label)
    apply(flag_layer, lambda label: "flag")
    for name in ("DEFAULT_EXCHANGE", "DEFAULT_ROUTING_KEY"):
        if sources[name] == "default":      # as Celery's: named after the default queue
            values[name] = values["DEFAULT_QUEUE"]
    values["QUEUES"] = _complete_queues(values)
    _warn_about(notes, values)
    return Settings(values, sources, module_name)


def find_settings_module(environ=None):
    """Return the settings module in force, or None when there is none.

    MINITASK_CONFIG_MODULE, else DJANGO_SETTINGS_MODULE (so a Django project needs no second
    file), else `minitaskconfig` if it exists. A module that exists but fails is an error.
    """
    environ = os.environ if environ is None else environ
    name = environ.get("MINITASK_CONFIG_MODULE") or environ.get("DJANGO_SETTINGS_MODULE")
    if name:
        return import_settings_module(name)
    try:
        return importlib.import_module(DEFAULT_MODULE)
    except ImportError as exc:
        if exc.name == DEFAULT_MODULE:   # absent, not broken: the defaults apply
            return None
        raise _module_error(DEFAULT_MODULE, exc) from exc
    except Exception as exc:
        raise _module_error(DEFAULT_MODULE, exc) from exc


def import_settings_module(name):
    """Import the settings module `name`; any failure is one ConfigurationError line."""
    try:
        return importlib.import_module(name)
    except Exception as exc:   # its own bug or a missing module: either way, one line
        raise _module_error(name, exc) from exc


def read_settings_module(module):
    """Return {setting: value} from a module's setting names (every spelling), unchecked."""
    return {name: value for name, (_, value) in _layer(vars(module)).items()}


_PASSWORD_OPTION = re.compile(r"(?i)((?:^|&)[^=&]*password=)([^&#]*)")


def safe_url(url):
    """`url` fit to show in logs, output and errors: what stands before its host's ``@``
    shown as ``**`` (a user name before a colon kept), and so is the value of an option
    named ``...password``, much as Celery shows a broker URL."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    location, mark, query = rest.partition("?")
    userinfo, at, hosts = location.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        location = (user + ":**" if colon else "**") + "@" + hosts
    return scheme + sep + location + mark + _PASSWORD_OPTION.sub(r"\1**", query)


def _is_redis_url(url):
    return isinstance(url, str) and url.partition("://")[0].lower() in _REDIS_SCHEMES


def _sentinel_advice(url):
    """What to write for Celery's ``sentinel://H:P;sentinel://H:P`` (its master's name in
    broker_transport_options, which minitask does not read): the same Sentinels, in
    minitask's one URL."""
    hosts = [part.partition("://")[2].rpartition("@")[2].split("/")[0]
             for part in url.split(";") if part.strip()]
    return ("Celery's Sentinel form; write redis+sentinel://%s/MASTER_NAME (the master_name "
            "of broker_transport_options)" % ",".join(host for host in hosts if host))


def parse_broker_url(url, name="BROKER_URL"):
    """Split ``minitask[s]://HOST[:PORT]`` into (scheme, host, port, tls).

    An IPv6 host is written in brackets and returned without them; the port defaults to 5679.
    A Redis URL (``redis://``, ``rediss://``, ``redis[s]+sentinel://``) is checked whole by
    the Redis transport's parser; its first host is returned.
    """
    scheme = url.partition("://")[0].lower() if isinstance(url, str) else None
    if (_is_redis_url(url) or scheme in ("minitask", "minitasks")) and ";" in url:
        raise _bad(name, safe_url(url), "Celery's failover list (URLs joined by ';'): give "
                                        "one broker; for failover, Redis Sentinel "
                                        "(redis+sentinel://...)")
    if scheme in _REDIS_SCHEMES:
        from .transport.redis_url import parse_redis_url  # transport imports this module
        parsed = parse_redis_url(url, name)
        host, port = parsed.hosts[0] if parsed.hosts else (parsed.path, None)
        return scheme, host, port, parsed.tls
    shown = safe_url(url)
    if scheme == "sentinel":
        raise _bad(name, shown, _sentinel_advice(url))
    match = _BROKER_URL.match(url) if isinstance(url, str) else None
    scheme = match.group(1).lower() if match else None
    if scheme not in ("minitask", "minitasks"):
        raise _bad(name, shown, "expected minitask://HOST:PORT, minitasks://HOST:PORT or a "
                              "Redis URL (redis://HOST:PORT/DB)")
    ipv6, host, port = match.group(2), match.group(3), match.group(4)
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6.split("%")[0])
        except ValueError:
            raise _bad(name, shown, "expected an IPv6 address in the brackets") from None
        host = ipv6
    port = DEFAULT_PORT if port is None else int(port)
    if not 1 <= port <= 65535:
        raise _bad(name, shown, "expected a port from 1 to 65535")
    return scheme, host, port, scheme == "minitasks"


# -- the settings in force for this process --------------------------------------------------

_lock = threading.RLock()
_current = None
_overrides = {}
_loading = False


def get_settings():
    """Return the process's settings, loading them on first use."""
    global _current, _loading
    with _lock:
        if _current is None:
            if _loading:   # only this thread can be here: something in the load asked again
                raise ConfigurationError(
                    "settings were asked for while loading them (does LOADER's module use them?)")
            _loading = True
            try:
                _current = load_settings(overrides=_overrides)
            finally:
                _loading = False
        return _current


def configure(**overrides):
    """Reload the settings with `overrides` (flag values) on top, and return them.

    Each call replaces the previous call's overrides; on error the old settings stay.
    """
    global _current, _overrides
    with _lock:
        _current = load_settings(overrides=overrides)
        _overrides = dict(overrides)
        return _current


def reset():
    """Forget the settings in force and any overrides; the next `get_settings` loads afresh
    (and warns again about names it does not use)."""
    global _current, _overrides
    with _lock:
        _current, _overrides = None, {}
        _warned.clear()


# -- layers ------------------------------------------------------------------------------------

def _layer(namespace, notes=None):
    """Return {setting: (spelling found, value)} from a module's or mapping's names.

    Several spellings of one setting must agree (ConfigurationError naming both). Names that
    look like settings but are none here go to `notes` as ``(label, Celery name or None,
    value)``, for `_warn_about`.
    """
    found = {}
    for label, value in namespace.items():
        kind, name = celery_settings.classify(label, value, _SETTING_OF)
        if kind == "setting":
            found.setdefault(name, []).append((label, value))
        elif kind is not None and notes is not None:
            notes.append((label, name, value))
    layer = {}
    for name, spellings in found.items():
        spellings.sort(key=lambda entry: _SPELLINGS[name].index(entry[0]))
        if name == "IMPORTS":
            layer[name] = _imports_and_include(spellings)
            continue
        first_label, first_value = spellings[0]
        for label, value in spellings[1:]:
            if _VALIDATORS[name](label, value) != _VALIDATORS[name](first_label, first_value):
                raise ConfigurationError(
                    f"{first_label}={_repr.repr(first_value)} and {label}={_repr.repr(value)} "
                    f"are two spellings of {name} that disagree: keep one")
        layer[name] = spellings[0]
    return layer


def _imports_and_include(spellings):
    """IMPORTS from its spellings: Celery's `include` (and CELERY_INCLUDE) add their modules
    to those of `imports`, as Celery imports both; the spellings of IMPORTS itself must
    agree."""
    own = [(label, value) for label, value in spellings if label not in _INCLUDE_SPELLINGS]
    included = [(label, value) for label, value in spellings if label in _INCLUDE_SPELLINGS]
    for group in (own, included):
        for label, value in group[1:]:
            if _VALIDATORS["IMPORTS"](label, value) != \
                    _VALIDATORS["IMPORTS"](group[0][0], group[0][1]):
                raise ConfigurationError(
                    f"{group[0][0]}={_repr.repr(group[0][1])} and {label}={_repr.repr(value)} "
                    f"are two spellings of IMPORTS that disagree: keep one")
    if not own or not included:
        return (own or included)[0]
    label, value = own[0]
    modules = _VALIDATORS["IMPORTS"](label, value) + \
        _VALIDATORS["IMPORTS"](*included[0])
    return label, list(dict.fromkeys(modules))


_INCLUDE_SPELLINGS = ("include", "CELERY_INCLUDE")
_warned = set()


def _warn_about(notes, values):
    """One warning per process for each name a settings module gives that changes nothing
    here, naming it and the minitask way; silence for Celery names whose value is what
    minitask does anyway."""
    for label, celery, value in notes:
        message = celery_settings.warning(label, celery, value, values, _SETTING_OF,
                                          on_redis=_is_redis_url(values["BROKER_URL"]))
        if message is None:
            continue
        if label not in _warned:
            _warned.add(label)
            logger.warning("%s", message)


def _env_layer(environ):
    layer = {}
    for var in sorted(environ):
        if not var.startswith("MINITASK_") or var in _ENV_NOT_SETTINGS:
            continue
        name = var[len("MINITASK_"):]
        if name not in DEFAULTS:
            logger.warning("ignoring environment variable %s: there is no setting %s", var, name)
            continue
        layer[name] = (var, _from_text(name, var, environ[var]))
    return layer


def _flag_layer(overrides, notes):
    """`configure()`'s keywords and the command line's flags: minitask's names in either
    case, or Celery's as a settings module may spell them (``app.conf.update(...)`` in
    Celery's tutorials); a Celery name minitask has no use for goes to `notes`, and any
    other name is refused."""
    layer = {}
    for key, value in overrides.items():
        label, name = key, key.upper()
        if name not in DEFAULTS:
            kind, name = celery_settings.classify(key, value, _SETTING_OF)
            if kind == "celery":
                notes.append((key, name, value))
                continue
            if kind != "setting":
                raise ConfigurationError(f"unknown setting {key!r}")
        if value is None:
            continue
        if name in layer and _VALIDATORS[name](label, value) != _VALIDATORS[name](*layer[name]):
            raise ConfigurationError(
                f"{layer[name][0]}={_repr.repr(layer[name][1])} and {label}={_repr.repr(value)} "
                f"are two spellings of {name} that disagree: keep one")
        layer[name] = (label, value)
    return layer


def _loader_configuration(path):
    """Return what a custom loader's own read_configuration() adds; {} for the built-in ones."""
    from minitask import loaders   # here, not at the top: loaders imports this module

    cls = loaders.loader_class(path)
    if cls.read_configuration in (loaders.BaseLoader.read_configuration,
                                  loaders.DefaultLoader.read_configuration):
        return {}   # it would only read the settings module again
    configuration = cls().read_configuration()
    if not isinstance(configuration, dict):
        raise ConfigurationError(f"LOADER={path!r}: read_configuration() returned "
                                 f"{type(configuration).__name__}, expected a dict")
    return configuration


def _from_text(name, var, text):
    """Read an environment variable's text as the setting's type; "" means None if that is
    the default."""
    default = DEFAULTS[name]
    if default is None and text == "":
        return None
    parse, expected = _FROM_TEXT[_ENV_TYPES.get(name, str) if default is None else type(default)]
    try:
        return parse(text)
    except ValueError:   # json.JSONDecodeError is a ValueError too
        raise _bad(var, text, expected) from None


def _json(kind):
    def parse(text):
        value = json.loads(text)
        if not isinstance(value, kind):
            raise ValueError(text)
        return value
    return parse


def _boolean(text):
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(text)
    return word in _TRUE


_FROM_TEXT = {   # type: (parse, what the text should have been)
    bool: (_boolean, "expected 1/0, true/false, yes/no or on/off"),
    int: (int, "expected an integer"), float: (float, "expected a number"),
    dict: (_json(dict), "expected a JSON object"),
    list: (lambda text: _json(list)(text) if text.lstrip().startswith("[") else _split(text),
           "expected a JSON list or comma-separated names"),
    str: (str, None),
    "json": (json.loads, "expected JSON (an object or a list)"),
}


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _bad(label, value, expected):
    return ConfigurationError(f"{label}={_repr.repr(value)}: {expected}")


def _module_error(name, exc):
    reason = " ".join(str(exc).split())
    return ConfigurationError(f"settings module {name!r} failed: {type(exc).__name__}: {reason}")


# -- validators: (label, value) -> normalised value, or ConfigurationError -----------------

def _text(label, value):
    if not isinstance(value, str) or not value:
        raise _bad(label, value, "expected a non-empty string")
    return value


def _optional(check):
    """Wrap `check` so that None (or "", as an empty environment variable gives) passes as None."""
    return lambda label, value: None if value is None or value == "" else check(label, value)


def _names(label, value):
    if isinstance(value, str):
        value = _split(value)
    if isinstance(value, (set, frozenset)):     # Celery's accept_content default is {'json'}
        value = sorted(value, key=str)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise _bad(label, value, "expected a list of names")
    return list(value)


def _flag(label, value):
    if not isinstance(value, bool):
        raise _bad(label, value, "expected True or False")
    return value


def _integer(minimum, maximum=None):
    def check(label, value):
        if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
                or (maximum is not None and value > maximum)):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise _bad(label, value, f"expected an integer {bounds}")
        return value
    return check


def _seconds(minimum, strict):
    def check(label, value):
        if isinstance(value, datetime.timedelta):
            value = value.total_seconds()
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or (value <= minimum if strict else value < minimum)):
            above = "above" if strict else "at least"
            raise _bad(label, value,
                       f"expected seconds (a number {above} {minimum}, or a timedelta)")
        return float(value)
    return check


# RESULT_EXPIRES of None or 0 (Celery's "never expire"): a hundred years.
RESULTS_FOREVER = 100 * 365.25 * 86400.0


def _result_expires(label, value):
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and value == 0):
        return RESULTS_FOREVER
    return _seconds(0, strict=True)(label, value)


def _serializer(label, value):
    _text(label, value)
    try:   # imported here so that config works before, and without, the serializers
        serialization = importlib.import_module("minitask.serialization")
    except ImportError as exc:
        if exc.name != "minitask.serialization":
            raise
        return value
    try:
        serialization.check_serializer(value)
    except MinitaskError as exc:
        raise _bad(label, value, str(exc)) from exc
    return value


def _rate(label, value):
    try:
        rate = ratelimit.parse_rate(value)
    except ConfigurationError:
        raise _bad(label, value, "expected N/s, N/m or N/h, or a number per second") from None
    return None if rate is None else value   # the user's spelling, "100/m", reads better


def _exchange_type(label, value):
    if value not in _EXCHANGE_TYPES:
        raise _bad(label, value, "expected direct, topic, fanout or headers")
    return value


def _queues(label, value):
    """Check QUEUES's shape; the exchange defaults are filled in by `_complete_queues`."""
    if not isinstance(value, dict) or not all(isinstance(q, str) and q for q in value):
        raise _bad(label, value, "expected a dict of queue name -> options")
    return {queue: _queue(f"{label}[{queue!r}]", queue, options)
            for queue, options in value.items()}


def _queue(label, queue, options):
    unknown = sorted(set(options) - set(_QUEUE_KEYS), key=str) if isinstance(options, dict) else 0
    if unknown != [] or ("binding_key" in options and "routing_key" in options):
        raise _bad(label, options, "expected a dict of " + ", ".join(_QUEUE_KEYS)
                   + " (routing_key is binding_key's old name: give one)")
    checked = {"binding_key": options.get("binding_key", options.get("routing_key", queue)),
               "arguments": copy.deepcopy(options.get("arguments", {})),
               "durable": _flag(f"{label}['durable']", options.get("durable", True))}
    if "exchange" in options:
        checked["exchange"] = _text(f"{label}['exchange']", options["exchange"])
    if "exchange_type" in options:
        checked["exchange_type"] = _exchange_type(f"{label}['exchange_type']",
                                                  options["exchange_type"])
    for key, kind in (("binding_key", str), ("arguments", dict)):
        if not isinstance(checked[key], kind):
            raise _bad(f"{label}[{key!r}]", checked[key], f"expected a {kind.__name__}")
    _queue_arguments(f"{label}['queue_arguments']", options.get("queue_arguments", {}))
    return checked


def _queue_arguments(label, value):
    """Celery's queue_arguments: the ones that change nothing here are accepted (and
    dropped); any other is refused, rather than ignored."""
    if not isinstance(value, dict):
        raise _bad(label, value, "expected a dict of RabbitMQ x- arguments")
    other = sorted(set(value) - set(_QUEUE_ARGUMENTS), key=str)
    if other:
        raise _bad(label, value, "minitask takes only %s here (%s); %s is not supported"
                   % (" and ".join(_QUEUE_ARGUMENTS), "; ".join(_QUEUE_ARGUMENTS.values()),
                      ", ".join(map(str, other))))


def _complete_queues(values):
    """Give every queue its full form, exchange settings defaulting to the DEFAULT_ ones."""
    return {queue: {"exchange": options.get("exchange", values["DEFAULT_EXCHANGE"]),
                    "exchange_type": options.get("exchange_type", values["DEFAULT_EXCHANGE_TYPE"]),
                    "binding_key": options["binding_key"],
                    "arguments": options["arguments"],
                    "durable": options["durable"]}
            for queue, options in values["QUEUES"].items()}


def _admins(label, value):
    if (not isinstance(value, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(isinstance(part, str) for part in pair) for pair in value)):
        raise _bad(label, value, "expected a list of (name, email) pairs")
    return [tuple(pair) for pair in value]


def _loglevel(label, value):
    if not isinstance(value, str) or value.upper() not in _LOGLEVELS:
        raise _bad(label, value, "expected one of " + ", ".join(_LOGLEVELS))
    return value.upper()


def _user_id(label, value):
    """A user id, given as a number or as a user name of this machine (resolved now)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, str):
        try:
            import pwd
        except ImportError:         # Windows: no user database, and no local socket either
            raise _bad(label, value, "expected a numeric user id") from None
        try:
            return pwd.getpwnam(value).pw_uid
        except KeyError:
            raise _bad(label, value, "expected a user id or the name of a user of this "
                                     "machine") from None
    return _integer(0)(label, value)


def _broker_url(label, value):
    parse_broker_url(value, label)
    return value


def _start_method(label, value):
    if value not in ("fork", "spawn", "forkserver"):
        raise _bad(label, value, "expected fork, spawn or forkserver")
    return value


def _loader(label, value):
    if not isinstance(value, str) or (value.lower() not in ("default", "django")
                                      and "." not in value.strip(".")):
        raise _bad(label, value, "expected pkg.module.ClassName, default or django")
    return value


def _routes(label, value):
    return None if value is None else routes.check_routes(label, value)


def _timezone(label, value):
    try:
        schedules.get_timezone(value)
    except ConfigurationError:
        raise _bad(label, value, "expected \"UTC\", \"local\" or a timezone name such as "
                                 "\"Europe/Berlin\" (Python 3.9+ with the timezone database)") \
            from None
    return value


_VALIDATORS = {
    "BROKER_URL": _broker_url, "BROKER_SECRET": _optional(_text),
    "BROKER_CA_FILE": _optional(_text), "BROKER_UID": _optional(_user_id),
    "IMPORTS": _names, "TASK_SERIALIZER": _serializer,
    "ACCEPT_CONTENT": _names, "DEFAULT_RATE_LIMIT": _rate, "DEFAULT_EXCHANGE": _text,
    "DEFAULT_EXCHANGE_TYPE": _exchange_type, "DEFAULT_QUEUE": _text, "DEFAULT_ROUTING_KEY": _text,
    "QUEUES": _queues, "RESULT_EXPIRES": _result_expires, "ALWAYS_EAGER": _flag,
    "SEND_TASK_ERROR_EMAILS": _flag, "ADMINS": _admins, "SERVER_EMAIL": _text,
    "EMAIL_HOST": _text, "EMAIL_PORT": _integer(0, 65535), "LOADER": _optional(_loader),
    "CONCURRENCY": _optional(_integer(1)), "LOGLEVEL": _loglevel, "LOGFILE": _optional(_text),
    "PREFETCH_MULTIPLIER": _integer(0), "MAX_TASKS_PER_CHILD": _optional(_integer(1)),
    "SHUTDOWN_TIMEOUT": _seconds(0, strict=False), "WORKER_QUEUES": _optional(_names),
    "BEAT": _flag, "START_METHOD": _optional(_start_method), "TASK_ACKS_LATE": _flag,
    "TASK_TIME_LIMIT": _optional(_seconds(0, strict=True)),
    "TASK_SOFT_TIME_LIMIT": _optional(_seconds(0, strict=True)), "TASK_ROUTES": _routes,
    "BEAT_SCHEDULE": schedules.check_beat_schedule, "TIMEZONE": _timezone,
}
