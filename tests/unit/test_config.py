"""minitask.config: layers, their precedence and sources, aliases, environment typing, and one
clear line for every bad value.

The settings modules live in tests/unit/fixtures (all named mtfix_*); each test gets that folder
on sys.path, a clean environment and fresh settings, and its mtfix_* modules are forgotten after.
"""
import datetime
import pickle
import sys
import types

import pytest

from minitask import config
from minitask.config import DEFAULTS, DESCRIPTIONS, Settings, load_settings, parse_broker_url
from minitask.exceptions import ConfigurationError

from taskkit import isolated_settings  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_settings")


def settings_module(name="mtfix_inline", **values):
    module = types.ModuleType(name)
    vars(module).update(values)
    return module


def load_error(**values):
    """Return the message of the ConfigurationError a module with `values` gives."""
    with pytest.raises(ConfigurationError) as info:
        load_settings(settings_module(**values), environ={})
    return str(info.value)


# -- the table of settings -------------------------------------------------------------------

def test_every_setting_of_the_spec_has_a_default_and_a_one_line_description():
    spec_names = (
        "BROKER_URL BROKER_SECRET BROKER_CA_FILE BROKER_UID IMPORTS TASK_SERIALIZER "
        "ACCEPT_CONTENT "
        "DEFAULT_RATE_LIMIT DEFAULT_EXCHANGE DEFAULT_EXCHANGE_TYPE DEFAULT_QUEUE "
        "DEFAULT_ROUTING_KEY QUEUES RESULT_EXPIRES ALWAYS_EAGER SEND_TASK_ERROR_EMAILS ADMINS "
        "SERVER_EMAIL EMAIL_HOST EMAIL_PORT LOADER CONCURRENCY LOGLEVEL LOGFILE "
        "PREFETCH_MULTIPLIER MAX_TASKS_PER_CHILD SHUTDOWN_TIMEOUT WORKER_QUEUES BEAT "
        "START_METHOD TASK_ACKS_LATE TASK_TIME_LIMIT TASK_SOFT_TIME_LIMIT TASK_ROUTES "
        "BEAT_SCHEDULE TIMEZONE").split()
    assert list(DEFAULTS) == spec_names
    assert list(DESCRIPTIONS) == spec_names
    assert all(text and "\n" not in text for text in DESCRIPTIONS.values())


def test_defaults_are_the_documented_ones():
    assert DEFAULTS["BROKER_URL"] == "minitask://127.0.0.1:5679"
    assert DEFAULTS["ACCEPT_CONTENT"] == ["json"]
    assert DEFAULTS["RESULT_EXPIRES"] == 86400.0
    assert (DEFAULTS["DEFAULT_EXCHANGE"], DEFAULTS["DEFAULT_EXCHANGE_TYPE"],
            DEFAULTS["DEFAULT_QUEUE"], DEFAULTS["DEFAULT_ROUTING_KEY"]) == (
        "minitask", "direct", "minitask", "minitask")
    assert DEFAULTS["PREFETCH_MULTIPLIER"] == 4 and DEFAULTS["LOGLEVEL"] == "WARNING"


def test_the_default_exchange_and_routing_key_follow_the_default_queue_unless_set():
    """Celery's task_default_exchange and task_default_routing_key default to
    task_default_queue: the guide's `task_default_queue = 'default'` alone must reach it."""
    settings = load_settings(settings_module(task_default_queue="default"), environ={})
    assert (settings.DEFAULT_QUEUE, settings.DEFAULT_EXCHANGE,
            settings.DEFAULT_ROUTING_KEY) == ("default", "default", "default")
    assert settings.QUEUES == {}
    settings = load_settings(settings_module(DEFAULT_QUEUE="q", DEFAULT_EXCHANGE="x"),
                             environ={"MINITASK_DEFAULT_ROUTING_KEY": "k"})
    assert (settings.DEFAULT_EXCHANGE, settings.DEFAULT_ROUTING_KEY) == ("x", "k")


def test_celerys_queue_arguments_that_change_nothing_are_taken_and_others_refused():
    settings = load_settings(settings_module(task_queues={"tasks": {
        "exchange": "tasks", "routing_key": "tasks",
        "queue_arguments": {"x-max-priority": 10, "x-queue-type": "classic"}}}), environ={})
    assert settings.QUEUES["tasks"]["binding_key"] == "tasks"
    assert "queue_arguments" not in settings.QUEUES["tasks"]
    message = load_error(task_queues={"tasks": {"queue_arguments": {"x-message-ttl": 60}}})
    assert "queue_arguments" in message and "x-message-ttl is not supported" in message
    assert "expected a dict" in load_error(QUEUES={"q": {"queue_arguments": [1]}})


def test_celerys_include_adds_its_modules_to_imports():
    """Celery: include has "exact same semantics as imports"; both lists are imported. It
    was ignored, with a warning, so the tutorial's include=['proj.tasks'] registered none."""
    settings = load_settings(settings_module(imports=["a", "b"], include=["b", "c"]),
                             environ={})
    assert settings.IMPORTS == ["a", "b", "c"]
    assert load_settings(settings_module(CELERY_INCLUDE=["proj.tasks"]),
                         environ={}).IMPORTS == ["proj.tasks"]
    assert "disagree" in load_error(imports=["a"], CELERY_IMPORTS=["b"])


def test_without_a_settings_module_every_value_is_the_default():
    settings = load_settings(environ={})
    assert settings.as_dict() == DEFAULTS
    assert {settings.source(name) for name in DEFAULTS} == {"default"}
    assert settings.module_name is None


def test_every_default_passes_its_own_validation():
    settings = load_settings(environ={}, overrides=dict(DEFAULTS))
    assert settings.as_dict() == DEFAULTS


# -- layers and sources ----------------------------------------------------------------------

def test_each_layer_overrides_the_one_below_and_says_so():
    module = settings_module(EMAIL_HOST="mod.example.com", EMAIL_PORT=2525,
                             SERVER_EMAIL="mod@example.com", LOGLEVEL="info")
    environ = {"MINITASK_EMAIL_PORT": "2626", "MINITASK_SERVER_EMAIL": "env@example.com"}
    settings = load_settings(module, environ=environ,
                             overrides={"SERVER_EMAIL": "flag@example.com"})

    assert settings.BROKER_URL == DEFAULTS["BROKER_URL"]
    assert settings.EMAIL_HOST == "mod.example.com"
    assert settings.EMAIL_PORT == 2626
    assert settings.SERVER_EMAIL == "flag@example.com"
    assert settings.LOGLEVEL == "INFO"
    assert settings.source("BROKER_URL") == "default"
    assert settings.source("EMAIL_HOST") == "module mtfix_inline"
    assert settings.source("EMAIL_PORT") == "environment MINITASK_EMAIL_PORT"
    assert settings.source("SERVER_EMAIL") == "flag"


def test_overrides_that_are_none_do_not_hide_lower_layers():
    settings = load_settings(settings_module(CONCURRENCY=3), environ={},
                             overrides={"CONCURRENCY": None, "LOGLEVEL": None})
    assert settings.CONCURRENCY == 3 and settings.source("CONCURRENCY") == "module mtfix_inline"
    assert settings.LOGLEVEL == "WARNING"


def test_overrides_may_use_lowercase_names_but_not_unknown_ones():
    assert load_settings(environ={}, overrides={"concurrency": 2}).CONCURRENCY == 2
    with pytest.raises(ConfigurationError, match="unknown setting 'CONCURENCY'"):
        load_settings(environ={}, overrides={"CONCURENCY": 2})


def test_module_may_be_given_by_name():
    settings = load_settings("mtfix_settings", environ={})
    assert settings.EMAIL_PORT == 2525
    assert settings.source("EMAIL_PORT") == "module mtfix_settings"
    assert settings.module_name == "mtfix_settings"


def test_unknown_uppercase_and_lowercase_names_in_a_module_are_ignored():
    settings = load_settings("mtfix_settings", environ={})
    assert "DEBUG" not in settings
    with pytest.raises(AttributeError, match="DEBUG"):
        settings.DEBUG


def test_celery_names_are_aliases_in_a_settings_module():
    settings = load_settings("mtfix_celery_settings", environ={})
    assert settings.BROKER_URL == "minitasks://celery.example.com:5679"
    assert settings.IMPORTS == ["mtfix_tasks_a"]
    assert settings.ACCEPT_CONTENT == ["json", "pickle"]
    assert settings.DEFAULT_RATE_LIMIT == "100/m"
    assert (settings.DEFAULT_EXCHANGE, settings.DEFAULT_EXCHANGE_TYPE, settings.DEFAULT_QUEUE,
            settings.DEFAULT_ROUTING_KEY) == ("celery", "topic", "celery", "celery.default")
    assert settings.RESULT_EXPIRES == 3600.0
    assert settings.ALWAYS_EAGER is True and settings.SEND_TASK_ERROR_EMAILS is True
    assert (settings.CONCURRENCY, settings.LOGLEVEL, settings.LOGFILE) == (
        3, "DEBUG", "/tmp/worker.log")
    assert (settings.PREFETCH_MULTIPLIER, settings.MAX_TASKS_PER_CHILD) == (2, 100)
    assert settings.SHUTDOWN_TIMEOUT == 5.0   # MINITASK_-prefixed names work in a module too
    assert settings.QUEUES == {"images": {
        "exchange": "celery", "exchange_type": "topic", "binding_key": "images.#",
        "arguments": {}, "durable": True}}
    assert settings.source("IMPORTS") == "module mtfix_celery_settings"


@pytest.mark.parametrize("alias", ["CELERY_RESULT_EXPIRES", "CELERY_TASK_RESULT_EXPIRES",
                                   "MINITASK_RESULT_EXPIRES", "result_expires"])
def test_two_spellings_of_a_setting_that_disagree_are_an_error_naming_both(alias):
    message = load_error(**{alias: 10, "RESULT_EXPIRES": 20})
    assert "RESULT_EXPIRES=20" in message and "%s=10" % alias in message
    assert "disagree" in message
    assert load_settings(settings_module(**{alias: 10}), environ={}).RESULT_EXPIRES == 10.0


@pytest.mark.parametrize("alias", ["CELERY_RESULT_EXPIRES", "result_expires"])
def test_two_spellings_that_agree_are_one_setting_reported_under_the_plain_name(alias):
    settings = load_settings(settings_module(**{alias: datetime.timedelta(seconds=20),
                                                "RESULT_EXPIRES": 20}), environ={})
    assert settings.RESULT_EXPIRES == 20.0
    assert settings.source("RESULT_EXPIRES") == "module mtfix_inline"


def test_celery_names_are_not_read_from_the_environment(caplog):
    settings = load_settings(environ={"CELERY_ALWAYS_EAGER": "1",
                                      "MINITASK_CELERY_ALWAYS_EAGER": "1"})
    assert settings.ALWAYS_EAGER is False
    assert "MINITASK_CELERY_ALWAYS_EAGER" in caplog.text


def test_an_unknown_minitask_variable_is_a_warning_not_an_error(caplog):
    settings = load_settings(environ={"MINITASK_BROKER_ULR": "x", "MINITASK_CONFIG_MODULE": ""})
    assert settings.BROKER_URL == DEFAULTS["BROKER_URL"]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "MINITASK_BROKER_ULR" in caplog.records[0].getMessage()


def test_module_values_are_copied_so_changing_settings_changes_nothing_else():
    module = settings_module(IMPORTS=["a"], QUEUES={"q": {"arguments": {"x-max-length": 5}}})
    settings = load_settings(module, environ={})
    settings.IMPORTS.append("b")
    settings.QUEUES["q"]["arguments"]["x-max-length"] = 6
    settings.as_dict()["ACCEPT_CONTENT"].append("pickle")
    assert module.IMPORTS == ["a"] and module.QUEUES["q"]["arguments"] == {"x-max-length": 5}
    assert DEFAULTS["IMPORTS"] == [] and DEFAULTS["ACCEPT_CONTENT"] == ["json"]
    assert settings.ACCEPT_CONTENT == ["json"]


# -- the environment -------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, expected", [
    ("IMPORTS", '["a.tasks", "b.tasks"]', ["a.tasks", "b.tasks"]),
    ("IMPORTS", "a.tasks, b.tasks,", ["a.tasks", "b.tasks"]),
    ("ACCEPT_CONTENT", "json,pickle", ["json", "pickle"]),
    ("QUEUES", '{"q": {"binding_key": "k"}}', {"q": {
        "exchange": "minitask", "exchange_type": "direct", "binding_key": "k",
        "arguments": {}, "durable": True}}),
    ("ADMINS", '[["Ada", "ada@example.com"]]', [("Ada", "ada@example.com")]),
    ("EMAIL_PORT", "2525", 2525),
    ("PREFETCH_MULTIPLIER", " 8 ", 8),
    ("RESULT_EXPIRES", "3600", 3600.0),
    ("SHUTDOWN_TIMEOUT", "2.5", 2.5),
    ("ALWAYS_EAGER", "1", True), ("ALWAYS_EAGER", "Yes", True), ("ALWAYS_EAGER", "on", True),
    ("ALWAYS_EAGER", "true", True), ("BEAT", "0", False), ("BEAT", "no", False),
    ("BEAT", "OFF", False), ("BEAT", "False", False),
    ("CONCURRENCY", "4", 4), ("CONCURRENCY", "", None),
    ("MAX_TASKS_PER_CHILD", "100", 100),
    ("WORKER_QUEUES", "video,images", ["video", "images"]),
    ("DEFAULT_RATE_LIMIT", "100/m", "100/m"), ("DEFAULT_RATE_LIMIT", "0", None),
    ("BROKER_SECRET", "s3cret", "s3cret"), ("LOGFILE", "", None),
    ("LOGLEVEL", "debug", "DEBUG"),
    ("BROKER_URL", "minitasks://[::1]:7000", "minitasks://[::1]:7000"),
])
def test_environment_values_are_read_as_the_settings_type(name, text, expected):
    settings = load_settings(environ={"MINITASK_" + name: text})
    assert settings[name] == expected
    assert type(settings[name]) is type(expected)
    assert settings.source(name) == "environment MINITASK_" + name


@pytest.mark.parametrize("name, text, message", [
    ("EMAIL_PORT", "abc", "MINITASK_EMAIL_PORT='abc': expected an integer"),
    ("CONCURRENCY", "many", "MINITASK_CONCURRENCY='many': expected an integer"),
    ("RESULT_EXPIRES", "1 day", "MINITASK_RESULT_EXPIRES='1 day': expected a number"),
    ("ALWAYS_EAGER", "maybe",
     "MINITASK_ALWAYS_EAGER='maybe': expected 1/0, true/false, yes/no or on/off"),
    ("QUEUES", "{bad json", "MINITASK_QUEUES='{bad json': expected a JSON object"),
    ("QUEUES", '["q"]', """MINITASK_QUEUES='["q"]': expected a JSON object"""),
    ("IMPORTS", '["a", ', """MINITASK_IMPORTS='["a", ': expected a JSON list or """
                          "comma-separated names"),
    ("EMAIL_PORT", "70000", "MINITASK_EMAIL_PORT=70000: expected an integer 0..65535"),
    ("DEFAULT_RATE_LIMIT", "10/x", "MINITASK_DEFAULT_RATE_LIMIT='10/x': expected N/s, N/m or "
                                   "N/h, or a number per second"),
])
def test_a_bad_environment_value_names_the_variable_and_value(name, text, message):
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"MINITASK_" + name: text})
    assert str(info.value) == message


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, message", [
    ("DEFAULT_RATE_LIMIT", "10/x",
     "DEFAULT_RATE_LIMIT='10/x': expected N/s, N/m or N/h, or a number per second"),
    ("DEFAULT_RATE_LIMIT", -1, "DEFAULT_RATE_LIMIT=-1: expected N/s, N/m or N/h, or a number "
                               "per second"),
    ("DEFAULT_EXCHANGE_TYPE", "fan",
     "DEFAULT_EXCHANGE_TYPE='fan': expected direct, topic, fanout or headers"),
    ("BROKER_URL", "amqp://localhost:5672",
     "BROKER_URL='amqp://localhost:5672': expected minitask://HOST:PORT, "
     "minitasks://HOST:PORT or a Redis URL (redis://HOST:PORT/DB)"),
    ("BROKER_URL", "minitask://localhost:0",
     "BROKER_URL='minitask://localhost:0': expected a port from 1 to 65535"),
    ("QUEUES", ["video"], "QUEUES=['video']: expected a dict of queue name -> options"),
    ("QUEUES", {"": {}}, "QUEUES={'': {}}: expected a dict of queue name -> options"),
    ("QUEUES", {"video": "media"}, "QUEUES['video']='media': expected a dict of exchange, "
     "exchange_type, binding_key, routing_key, arguments, durable, queue_arguments "
     "(routing_key is binding_key's old name: give one)"),
    ("QUEUES", {"video": {"exchnage": "media"}}, "QUEUES['video']={'exchnage': 'media'}: "
     "expected a dict of exchange, exchange_type, binding_key, routing_key, arguments, durable, "
     "queue_arguments (routing_key is binding_key's old name: give one)"),
    ("QUEUES", {"video": {"exchange_type": "fan"}},
     "QUEUES['video']['exchange_type']='fan': expected direct, topic, fanout or headers"),
    ("QUEUES", {"video": {"exchange": ""}},
     "QUEUES['video']['exchange']='': expected a non-empty string"),
    ("QUEUES", {"video": {"binding_key": 7}},
     "QUEUES['video']['binding_key']=7: expected a str"),
    ("QUEUES", {"video": {"arguments": ["x"]}},
     "QUEUES['video']['arguments']=['x']: expected a dict"),
    ("QUEUES", {"video": {"durable": "yes"}},
     "QUEUES['video']['durable']='yes': expected True or False"),
    ("EMAIL_PORT", "25", "EMAIL_PORT='25': expected an integer 0..65535"),
    ("PREFETCH_MULTIPLIER", -1, "PREFETCH_MULTIPLIER=-1: expected an integer >= 0"),
    ("CONCURRENCY", 0, "CONCURRENCY=0: expected an integer >= 1"),
    ("CONCURRENCY", True, "CONCURRENCY=True: expected an integer >= 1"),
    ("MAX_TASKS_PER_CHILD", 2.5, "MAX_TASKS_PER_CHILD=2.5: expected an integer >= 1"),
    ("RESULT_EXPIRES", -5, "RESULT_EXPIRES=-5: expected seconds (a number above 0, or a timedelta)"),
    ("RESULT_EXPIRES", datetime.timedelta(seconds=-1),
     "RESULT_EXPIRES=-1.0: expected seconds (a number above 0, or a timedelta)"),
    ("SHUTDOWN_TIMEOUT", float("nan"),
     "SHUTDOWN_TIMEOUT=nan: expected seconds (a number at least 0, or a timedelta)"),
    ("LOGLEVEL", "LOUD", "LOGLEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("ACCEPT_CONTENT", ["json", 1], "ACCEPT_CONTENT=['json', 1]: expected a list of names"),
    ("IMPORTS", None, "IMPORTS=None: expected a list of names"),
    ("ADMINS", ["ada@example.com"],
     "ADMINS=['ada@example.com']: expected a list of (name, email) pairs"),
    ("ALWAYS_EAGER", "yes", "ALWAYS_EAGER='yes': expected True or False"),
    ("DEFAULT_QUEUE", "", "DEFAULT_QUEUE='': expected a non-empty string"),
    ("LOADER", "MyLoader", "LOADER='MyLoader': expected pkg.module.ClassName, default or django"),
])
def test_a_bad_setting_is_one_line_naming_the_setting_and_value(name, value, message):
    assert load_error(**{name: value}) == message


def test_a_bad_value_under_an_alias_is_reported_under_the_name_the_user_wrote():
    assert load_error(CELERY_DEFAULT_RATE_LIMIT="10/x").startswith(
        "CELERY_DEFAULT_RATE_LIMIT='10/x': ")


def test_a_bad_flag_is_reported_like_a_bad_module_value():
    with pytest.raises(ConfigurationError, match=r"^CONCURRENCY=0: expected an integer >= 1$"):
        load_settings(environ={}, overrides={"CONCURRENCY": 0})


def test_a_huge_bad_value_is_shortened_to_keep_the_message_on_one_line():
    message = load_error(ACCEPT_CONTENT=list(range(1000)))
    assert "\n" not in message and len(message) < 200


def test_task_serializer_is_checked_by_the_serialization_module(monkeypatch):
    asked = []

    def check_serializer(name):
        asked.append(name)
        if name != "json":
            raise ConfigurationError(f"unknown serializer {name!r}: expected one of json")
        return name

    fake = types.ModuleType("minitask.serialization")
    fake.check_serializer = check_serializer
    monkeypatch.setitem(sys.modules, "minitask.serialization", fake)
    settings = load_settings(settings_module(TASK_SERIALIZER="json"), environ={})
    assert settings.TASK_SERIALIZER == "json"
    assert load_error(TASK_SERIALIZER="xml") == (
        "TASK_SERIALIZER='xml': unknown serializer 'xml': expected one of json")
    assert asked == ["json", "xml"]


def test_an_unknown_serializer_is_refused_by_the_real_serialization_module():
    pytest.importorskip("minitask.serialization")
    message = load_error(CELERY_TASK_SERIALIZER="xml")
    assert message.startswith("CELERY_TASK_SERIALIZER='xml': ") and "\n" not in message
    assert load_settings(settings_module(TASK_SERIALIZER="pickle"), environ={})


def test_task_serializer_is_accepted_unchecked_while_serialization_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "minitask.serialization", None)   # import raises
    settings = load_settings(settings_module(TASK_SERIALIZER="xml"), environ={})
    assert settings.TASK_SERIALIZER == "xml"


@pytest.mark.parametrize("value, expected", [
    ("100/m", "100/m"), ("10/s", "10/s"), (5, 5), ("0", None), (0, None), ("", None), (None, None),
])
def test_default_rate_limit_keeps_the_users_spelling_and_off_is_none(value, expected):
    assert load_settings(settings_module(DEFAULT_RATE_LIMIT=value), environ={}) \
        .DEFAULT_RATE_LIMIT == expected


def test_result_expires_takes_a_timedelta_and_stores_seconds():
    settings = load_settings(settings_module(RESULT_EXPIRES=datetime.timedelta(minutes=5)),
                             environ={})
    assert settings.RESULT_EXPIRES == 300.0 and type(settings.RESULT_EXPIRES) is float


def test_admins_become_name_email_tuples():
    settings = load_settings(settings_module(ADMINS=[["Ada", "ada@example.com"]]), environ={})
    assert settings.ADMINS == [("Ada", "ada@example.com")]


def test_imports_and_worker_queues_accept_a_comma_separated_string_as_flags_give_it():
    settings = load_settings(environ={}, overrides={"IMPORTS": "a.tasks,b.tasks",
                                                    "WORKER_QUEUES": "video"})
    assert settings.IMPORTS == ["a.tasks", "b.tasks"] and settings.WORKER_QUEUES == ["video"]


# -- QUEUES ------------------------------------------------------------------------------------

def test_queues_are_normalised_to_their_full_form():
    settings = load_settings(settings_module(
        DEFAULT_EXCHANGE="tasks",
        QUEUES={
            "video": {"exchange": "media", "exchange_type": "topic", "binding_key": "media.video"},
            "images": {"routing_key": "images"},          # early Celery's spelling
            "plain": {},
            "matched": {"exchange": "match", "exchange_type": "headers",
                        "arguments": {"x-match": "all", "format": "pdf"}, "durable": False},
        }), environ={})
    assert settings.QUEUES == {
        "video": {"exchange": "media", "exchange_type": "topic", "binding_key": "media.video",
                  "arguments": {}, "durable": True},
        "images": {"exchange": "tasks", "exchange_type": "direct", "binding_key": "images",
                   "arguments": {}, "durable": True},
        "plain": {"exchange": "tasks", "exchange_type": "direct", "binding_key": "plain",
                  "arguments": {}, "durable": True},
        "matched": {"exchange": "match", "exchange_type": "headers", "binding_key": "matched",
                    "arguments": {"x-match": "all", "format": "pdf"}, "durable": False},
    }


def test_queue_exchange_defaults_follow_the_final_default_exchange_whatever_its_layer():
    settings = load_settings(settings_module(QUEUES={"q": {}}),
                             environ={"MINITASK_DEFAULT_EXCHANGE": "env-exchange",
                                      "MINITASK_DEFAULT_EXCHANGE_TYPE": "topic"})
    assert settings.QUEUES["q"]["exchange"] == "env-exchange"
    assert settings.QUEUES["q"]["exchange_type"] == "topic"


def test_a_queue_may_not_give_both_binding_key_and_routing_key():
    assert "give one" in load_error(QUEUES={"q": {"binding_key": "a", "routing_key": "b"}})


# -- BROKER_URL --------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("minitask://127.0.0.1:5679", ("minitask", "127.0.0.1", 5679, False)),
    ("minitasks://broker.example.com:7000", ("minitasks", "broker.example.com", 7000, True)),
    ("minitask://[::1]:5679", ("minitask", "::1", 5679, False)),
    ("minitasks://[fe80::1%eth0]:1", ("minitasks", "fe80::1%eth0", 1, True)),
    ("minitask://localhost", ("minitask", "localhost", 5679, False)),
    ("MINITASK://my-host_1:65535/", ("minitask", "my-host_1", 65535, False)),
])
def test_broker_urls_that_parse(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url, expected", [
    ("redis://cache:6380/2?vhost=app", ("redis", "cache", 6380, False)),
    ("rediss://:secret@cache", ("rediss", "cache", 6379, True)),
    ("redis+sentinel://s1:26380,s2/mymaster/0", ("redis+sentinel", "s1", 26380, False)),
])
def test_redis_urls_parse_with_the_redis_transports_rules(url, expected):
    assert parse_broker_url(url) == expected
    assert load_settings(environ={"MINITASK_BROKER_URL": url}).BROKER_URL == url


def test_a_bad_redis_url_is_refused_naming_the_setting_and_what_is_wrong():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"MINITASK_BROKER_URL": "redis://h?heartbeat=never"})
    assert str(info.value).startswith("MINITASK_BROKER_URL redis://h: heartbeat='never'")


@pytest.mark.parametrize("url", [
    "amqp://guest@localhost:5672//", "minitask://user@host:5679", "minitask://host:5679/vhost",
    "minitask://:5679", "minitask://host:port", "minitask://[::1", "minitask://::1:5679",
    "localhost:5679", "", None, 5679, "minitask://host:5679?x=1",
])
def test_broker_urls_that_do_not_parse(url):
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(url)
    shown = url.replace("guest@", "**@").replace("user@", "**@") if isinstance(url, str) else url
    assert str(info.value) == (f"BROKER_URL={shown!r}: expected minitask://HOST:PORT, "
                               "minitasks://HOST:PORT or a Redis URL (redis://HOST:PORT/DB)")


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@h:6379/0", "redis://:**@h:6379/0"),
    ("rediss://alice:s3c:ret@h/1?vhost=v", "rediss://alice:**@h/1?vhost=v"),
    ("redis://s3cret@h", "redis://**@h"),
    ("redis://:p%40ss@word@h", "redis://:**@h"),
    ("redis+sentinel://:pw@s1,s2/mymaster?sentinel_password=s3cret&vhost=v",
     "redis+sentinel://:**@s1,s2/mymaster?sentinel_password=**&vhost=v"),
    ("redis://h/0?Sentinel_Password=s3cret", "redis://h/0?Sentinel_Password=**"),
    ("minitask://127.0.0.1:5679", "minitask://127.0.0.1:5679"),
    ("no scheme:s3cret@h", "no scheme:s3cret@h"),
    (None, None),
])
def test_safe_url_shows_no_password(url, shown):
    assert config.safe_url(url) == shown


@pytest.mark.parametrize("url, expected", [
    ("minitask://h:0", "expected a port from 1 to 65535"),
    ("minitask://h:65536", "expected a port from 1 to 65535"),
    ("minitask://[1::2::3]:1", "expected an IPv6 address in the brackets"),
])
def test_broker_urls_with_a_bad_port_or_address(url, expected):
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(url, name="--broker")
    assert str(info.value) == f"--broker={url!r}: {expected}"


# -- finding the settings module ---------------------------------------------------------------

def write_module(directory, name, text):
    path = directory / (name + ".py")
    path.write_text(text)
    return path


def test_minitaskconfig_on_sys_path_is_the_settings_module(tmp_path, monkeypatch):
    write_module(tmp_path, "minitaskconfig", "EMAIL_PORT = 2727\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = load_settings(environ={})
    assert settings.EMAIL_PORT == 2727 and settings.source("EMAIL_PORT") == "module minitaskconfig"


def test_an_import_error_inside_minitaskconfig_is_not_mistaken_for_its_absence(tmp_path,
                                                                              monkeypatch):
    write_module(tmp_path, "minitaskconfig", "import mtfix_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={})
    assert str(info.value) == ("settings module 'minitaskconfig' failed: ModuleNotFoundError: "
                               "No module named 'mtfix_not_installed'")


def test_minitask_config_module_names_the_settings_module():
    settings = load_settings(environ={"MINITASK_CONFIG_MODULE": "mtfix_settings"})
    assert settings.EMAIL_HOST == "mail.example.com"
    assert settings.source("EMAIL_HOST") == "module mtfix_settings"


def test_minitask_config_module_wins_over_django_settings_module():
    settings = load_settings(environ={"MINITASK_CONFIG_MODULE": "mtfix_settings",
                                      "DJANGO_SETTINGS_MODULE": "mtfix_django_settings"})
    assert settings.module_name == "mtfix_settings"


def test_django_settings_module_is_the_settings_module_when_no_other_is_named():
    settings = load_settings(environ={"DJANGO_SETTINGS_MODULE": "mtfix_django_settings"})
    assert settings.EMAIL_HOST == "django-mail.example.com"
    assert settings.ADMINS == [("Ada", "ada@example.com")]
    assert settings.source("IMPORTS") == "module mtfix_django_settings"


def test_a_missing_named_settings_module_is_an_error():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"MINITASK_CONFIG_MODULE": "mtfix_nowhere"})
    assert str(info.value) == ("settings module 'mtfix_nowhere' failed: ModuleNotFoundError: "
                               "No module named 'mtfix_nowhere'")


def test_a_settings_module_that_raises_is_one_line_naming_module_and_error():
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={"MINITASK_CONFIG_MODULE": "mtfix_broken_settings"})
    assert str(info.value) == ("settings module 'mtfix_broken_settings' failed: "
                               "RuntimeError: boom on two lines")
    assert isinstance(info.value.__cause__, RuntimeError)


# -- Settings ----------------------------------------------------------------------------------

def test_settings_are_read_only_and_unknown_names_are_named():
    settings = load_settings(environ={})
    with pytest.raises(AttributeError, match="read-only"):
        settings.BROKER_URL = "minitask://elsewhere:1"
    with pytest.raises(AttributeError, match="'BROKER_ULR'"):
        settings.BROKER_ULR
    with pytest.raises(KeyError):
        settings["BROKER_ULR"]
    assert settings.get("BROKER_ULR", "fallback") == "fallback"
    assert settings.get("BROKER_URL") == settings["BROKER_URL"] == settings.BROKER_URL


def test_settings_survive_pickling_for_spawned_pool_processes():
    settings = load_settings("mtfix_settings", environ={"MINITASK_CONCURRENCY": "2"})
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.as_dict() == settings.as_dict()
    assert copy.source("CONCURRENCY") == "environment MINITASK_CONCURRENCY"


def test_settings_made_directly_take_defaults_for_missing_names():
    settings = Settings({"ALWAYS_EAGER": True})
    assert settings.ALWAYS_EAGER is True and settings.BROKER_URL == DEFAULTS["BROKER_URL"]


# -- the settings in force -------------------------------------------------------------------

def test_get_settings_loads_once_from_the_environment_and_caches(monkeypatch):
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_settings")
    first = config.get_settings()
    assert first.EMAIL_PORT == 2525
    monkeypatch.setenv("MINITASK_EMAIL_PORT", "1")
    assert config.get_settings() is first
    config.reset()
    assert config.get_settings().EMAIL_PORT == 1


def test_configure_reloads_with_overrides_and_each_call_replaces_the_last():
    configured = config.configure(ALWAYS_EAGER=True, LOGLEVEL="debug")
    assert config.get_settings() is configured
    assert configured.ALWAYS_EAGER is True and configured.source("ALWAYS_EAGER") == "flag"
    assert config.configure(LOGLEVEL="error").ALWAYS_EAGER is False


def test_configure_takes_celerys_names_as_a_settings_module_does(caplog):
    """``app.conf.update(task_default_queue=..., ...)`` of Celery's tutorials, as
    `configure`: Celery's names of minitask settings apply; those minitask has no use for
    are warned about, as in a settings module; a name that is neither is still refused."""
    configured = config.configure(task_default_queue="default", CELERY_ALWAYS_EAGER=True,
                                  worker_prefetch_multiplier=1, result_backend="rpc://",
                                  enable_utc=True)
    assert (configured.DEFAULT_QUEUE, configured.ALWAYS_EAGER,
            configured.PREFETCH_MULTIPLIER) == ("default", True, 1)
    assert configured.source("DEFAULT_QUEUE") == "flag"
    assert "result_backend" in caplog.text and "enable_utc" not in caplog.text
    with pytest.raises(ConfigurationError, match="unknown setting 'task_defualt_queue'"):
        config.configure(task_defualt_queue="default")
    with pytest.raises(ConfigurationError, match="task_serializer.*TASK_SERIALIZER"):
        config.configure(task_serializer="json", TASK_SERIALIZER="pickle")


def test_a_failed_configure_keeps_the_settings_in_force():
    kept = config.configure(CONCURRENCY=2)
    with pytest.raises(ConfigurationError):
        config.configure(CONCURRENCY=0)
    assert config.get_settings() is kept


def test_reset_forgets_overrides_too():
    config.configure(CONCURRENCY=2)
    config.reset()
    assert config.get_settings().CONCURRENCY is None


def test_a_bad_environment_is_reported_on_every_use_not_cached(monkeypatch):
    monkeypatch.setenv("MINITASK_EMAIL_PORT", "abc")
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="MINITASK_EMAIL_PORT"):
            config.get_settings()
    monkeypatch.delenv("MINITASK_EMAIL_PORT")
    assert config.get_settings().EMAIL_PORT == 25


# -- Celery 4/5 names --------------------------------------------------------------------------

def test_a_celery_5_configuration_module_is_read_by_its_lower_case_names(caplog):
    settings = load_settings("mtfix_celery5_settings", environ={})
    assert settings.BROKER_URL == "minitask://celery5.example.com:5679"
    assert settings.RESULT_EXPIRES == 7200.0 and settings.ALWAYS_EAGER is False
    assert settings.DEFAULT_QUEUE == "work" and settings.IMPORTS == ["mtfix_tasks_a"]
    assert (settings.TASK_ACKS_LATE, settings.TASK_TIME_LIMIT,
            settings.TASK_SOFT_TIME_LIMIT) == (True, 60.0, 50.0)
    assert (settings.CONCURRENCY, settings.PREFETCH_MULTIPLIER,
            settings.MAX_TASKS_PER_CHILD) == (3, 1, 200)
    assert settings.TIMEZONE == "UTC"
    assert sorted(settings.BEAT_SCHEDULE) == ["add-every-30-seconds", "nightly"]
    assert settings.BEAT_SCHEDULE["add-every-30-seconds"]["args"] == (16, 16)
    assert settings.source("BROKER_URL") == "module mtfix_celery5_settings"
    # helpers, imports and private names are not settings; only result_backend is a warning
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring result_backend: minitask has no such setting; results live in the broker; "
        "there is no result backend to configure"]


def test_a_django_project_with_the_celery_namespace_is_read_too(caplog):
    settings = load_settings("mtfix_django_celery5", environ={})
    assert settings.BROKER_URL == "minitask://django5.example.com:5679"
    assert (settings.ALWAYS_EAGER, settings.RESULT_EXPIRES, settings.CONCURRENCY) == (
        True, 600.0, 2)
    assert settings.BEAT_SCHEDULE["ping"]["task"] == "minitask.ping"
    assert settings.source("ALWAYS_EAGER") == "module mtfix_django_celery5"
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring CELERY_RESULT_BACKEND: minitask has no such setting; results live in the "
        "broker; there is no result backend to configure"]


@pytest.mark.parametrize("label, value, name, expected", [
    ("broker_url", "minitask://h:1", "BROKER_URL", "minitask://h:1"),
    ("CELERY_BROKER_URL", "minitask://h:1", "BROKER_URL", "minitask://h:1"),
    ("task_always_eager", True, "ALWAYS_EAGER", True),
    ("CELERY_TASK_ALWAYS_EAGER", True, "ALWAYS_EAGER", True),
    ("CELERY_ALWAYS_EAGER", True, "ALWAYS_EAGER", True),
    ("task_default_exchange", "ex", "DEFAULT_EXCHANGE", "ex"),
    ("task_default_exchange_type", "topic", "DEFAULT_EXCHANGE_TYPE", "topic"),
    ("task_default_routing_key", "rk", "DEFAULT_ROUTING_KEY", "rk"),
    ("task_default_rate_limit", "10/s", "DEFAULT_RATE_LIMIT", "10/s"),
    ("CELERY_ACKS_LATE", True, "TASK_ACKS_LATE", True),
    ("CELERYD_TIME_LIMIT", 30, "TASK_TIME_LIMIT", 30.0),
    ("CELERYD_SOFT_TIME_LIMIT", 20, "TASK_SOFT_TIME_LIMIT", 20.0),
    ("CELERY_ROUTES", {"a.*": "q"}, "TASK_ROUTES", [[("a.*", "q")]]),
    ("CELERYBEAT_SCHEDULE", {}, "BEAT_SCHEDULE", {}),
    ("CELERY_TIMEZONE", "local", "TIMEZONE", "local"),
    ("task_queues", {"q": {}}, "QUEUES", {"q": {
        "exchange": "minitask", "exchange_type": "direct", "binding_key": "q",
        "arguments": {}, "durable": True}}),
    ("worker_logfile", "/tmp/w.log", "LOGFILE", "/tmp/w.log"),
])
def test_each_spelling_of_a_mapped_celery_setting(label, value, name, expected):
    settings = load_settings(settings_module(**{label: value}), environ={})
    assert settings[name] == expected


def test_a_bad_value_under_a_celery_name_is_reported_under_that_name():
    assert load_error(broker_url="amqp://localhost:5672//").startswith(
        "broker_url='amqp://localhost:5672//': expected minitask://HOST:PORT")
    assert load_error(CELERY_TASK_ROUTES=5).startswith("CELERY_TASK_ROUTES=5:")


def test_celery_spellings_that_disagree_with_each_other_are_an_error():
    message = load_error(CELERY_BROKER_URL="minitask://a:1", broker_url="minitask://b:1")
    assert "CELERY_BROKER_URL='minitask://a:1'" in message
    assert "broker_url='minitask://b:1'" in message and "BROKER_URL" in message


def test_lower_case_names_celery_does_not_know_are_a_modules_own():
    settings = load_settings(settings_module(concurrency=9, queues={"x": {}}, debug=True),
                             environ={})
    assert settings.CONCURRENCY is None and settings.QUEUES == {}


def test_an_imported_module_or_class_under_a_celery_name_is_not_a_setting(caplog):
    import datetime as datetime_module
    settings = load_settings(settings_module(timezone=datetime.timezone,
                                             imports=datetime_module), environ={})
    assert settings.TIMEZONE == "UTC" and settings.IMPORTS == []
    assert caplog.records == []


@pytest.mark.parametrize("label, value, expected", [
    ("worker_send_task_events", True, "worker_send_task_events=True has no effect in minitask: "
                                      "minitask has no event stream"),
    ("task_ignore_result", True, "task_ignore_result=True has no effect in minitask: set "
                                 "ignore_result=True on the tasks"),
    ("enable_utc", False, "enable_utc=False has no effect in minitask: times in messages are "
                          "always UTC"),
    ("result_serializer", "pickle", "result_serializer='pickle' has no effect in minitask: "
                                    "results are encoded like their task's arguments"),
    ("CELERYD_POOL", "gevent", "CELERYD_POOL='gevent' has no effect in minitask: the pool is "
                               "always processes"),
    ("beat_enable_remote_control", False, "beat_enable_remote_control=False has no effect in "
                                          "minitask: the beat runs in a worker (--beat), which "
                                          "always answers remote control"),
    ("redis_socket_timeout", 5, "ignoring redis_socket_timeout: minitask has no such setting; "
                                "results live in the broker"),
    ("CELERY_RESULT_BACKEND", "rpc://", "ignoring CELERY_RESULT_BACKEND: minitask has no such "
                                        "setting; results live in the broker"),
    ("CELERYD_WORKER_LOST_WAIT", 10, "ignoring CELERYD_WORKER_LOST_WAIT: minitask has no such "
                                     "setting; the broker's --worker-lost-grace"),
    ("CELERY_TASK_DEFAULT_QEUE", "x", "ignoring CELERY_TASK_DEFAULT_QEUE: there is no such "
                                      "setting (did you mean CELERY_TASK_DEFAULT_QUEUE?)"),
    ("MINITASK_BROKER_ULR", "x", "ignoring MINITASK_BROKER_ULR: there is no such setting "
                                 "(did you mean MINITASK_BROKER_URL?)"),
    ("CELERYBEAT_FOO", 1, "ignoring CELERYBEAT_FOO: there is no such setting"),
])
def test_every_setting_like_name_without_effect_gets_one_warning_naming_it(caplog, label, value,
                                                                          expected):
    load_settings(settings_module(**{label: value}), environ={})
    load_settings(settings_module(**{label: value}), environ={})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(expected)
    assert caplog.records[0].levelname == "WARNING"
    config.reset()
    load_settings(settings_module(**{label: value}), environ={})
    assert len(caplog.records) == 2           # a new start warns again


@pytest.mark.parametrize("label, value", [
    ("enable_utc", True), ("task_track_started", False), ("task_create_missing_queues", True),
    ("broker_connection_retry_on_startup", True), ("worker_pool", "prefork"),
    ("result_serializer", "json"), ("result_accept_content", ["json"]),
    ("task_acks_on_failure_or_timeout", True), ("CELERY_TASK_PROTOCOL", 2),
])
def test_a_celery_setting_whose_value_minitask_follows_anyway_is_silent(caplog, label, value):
    load_settings(settings_module(**{label: value}), environ={})
    assert caplog.records == []


def test_enable_utc_false_with_a_timezone_is_silent(caplog):
    load_settings(settings_module(enable_utc=False, timezone="local"), environ={})
    assert caplog.records == []


# -- the new settings ------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, message", [
    ("TASK_ACKS_LATE", 1, "TASK_ACKS_LATE=1: expected True or False"),
    ("TASK_TIME_LIMIT", 0, "TASK_TIME_LIMIT=0: expected seconds"),
    ("TASK_SOFT_TIME_LIMIT", "5", "TASK_SOFT_TIME_LIMIT='5': expected seconds"),
    ("TASK_ROUTES", {"a.*": 5}, "TASK_ROUTES[0]['a.*']=5: expected a queue name or a dict"),
    ("BEAT_SCHEDULE", [], "BEAT_SCHEDULE=[]: expected a dict of entry name"),
    ("BEAT_SCHEDULE", {"x": {"task": "t"}}, "BEAT_SCHEDULE['x']={'task': 't'}: expected a dict "
                                             "with task and schedule"),
    ("BEAT_SCHEDULE", {"x": {"task": "t", "schedule": 5, "sched": 1}},
     "BEAT_SCHEDULE['x']="),
    ("BEAT_SCHEDULE", {"x": {"task": "t", "schedule": 0}},
     "BEAT_SCHEDULE['x']: run_every 0: expected a positive interval"),
    ("BEAT_SCHEDULE", {"x": {"task": "t", "schedule": 5, "args": "ab"}},
     "BEAT_SCHEDULE['x']['args']='ab': expected a list or tuple"),
    ("BEAT_SCHEDULE", {"x": {"task": "t", "schedule": 5, "options": {"link": "y"}}},
     "BEAT_SCHEDULE['x']: send_task(): link is not supported here: callbacks and errbacks "
     "are set on apply_async()"),
    ("BEAT_SCHEDULE", {"x": {"task": "t", "schedule": 5, "relative": True}},
     "BEAT_SCHEDULE['x']['relative']=True: not supported"),
    ("BEAT_SCHEDULE", {"x": {"task": "", "schedule": 5}},
     "BEAT_SCHEDULE['x']['task']='': expected a non-empty string"),
    ("TIMEZONE", "Mars/Olympus", "TIMEZONE='Mars/Olympus': expected \"UTC\", \"local\" or a "
                                 "timezone name"),
    ("TIMEZONE", 5, "TIMEZONE=5: expected"),
])
def test_a_bad_new_setting_is_one_line_naming_it(name, value, message):
    assert load_error(**{name: value}).startswith(message)


def test_a_beat_schedule_entry_takes_celerys_keys_and_call_options():
    from minitask import crontab
    entries = load_settings(settings_module(BEAT_SCHEDULE={
        "a": {"task": "t.a", "schedule": datetime.timedelta(minutes=5), "args": [1],
              "kwargs": {"k": 2}, "options": {"queue": "q", "expires": 30, "link": None},
              "relative": False},
        "b": {"task": "t.b", "schedule": crontab(minute=0)}}), environ={}).BEAT_SCHEDULE
    assert entries["a"]["schedule"].seconds == 300.0
    assert (entries["a"]["args"], entries["a"]["kwargs"], entries["a"]["options"]) == (
        (1,), {"k": 2}, {"queue": "q", "expires": 30})
    assert entries["b"]["schedule"] == crontab(minute=0)
    assert (entries["b"]["args"], entries["b"]["kwargs"], entries["b"]["options"]) == (
        (), {}, {})


@pytest.mark.parametrize("name, text, expected", [
    ("TASK_ACKS_LATE", "yes", True),
    ("TASK_TIME_LIMIT", "30", 30.0),
    ("TASK_ROUTES", '{"a.*": "q"}', [[("a.*", "q")]]),
    ("TIMEZONE", "local", "local"),
])
def test_the_new_settings_come_from_the_environment_too(name, text, expected):
    assert load_settings(environ={"MINITASK_" + name: text})[name] == expected


def test_a_beat_schedule_from_the_environment_is_json_with_seconds():
    settings = load_settings(environ={"MINITASK_BEAT_SCHEDULE":
                                      '{"p": {"task": "minitask.ping", "schedule": 10}}'})
    assert settings.BEAT_SCHEDULE["p"]["schedule"].seconds == 10.0


def test_celerys_documented_forms_of_three_settings():
    """From Celery's reference (an outside check): accept_content as a set, result_expires
    None or 0 (never expire: a hundred years here), worker_prefetch_multiplier 0 (no limit
    of its own: the worker bounds it)."""
    settings = config.configure(accept_content={"json", "pickle"}, result_expires=0,
                                worker_prefetch_multiplier=0)
    assert settings.ACCEPT_CONTENT == ["json", "pickle"]
    assert settings.RESULT_EXPIRES == config.RESULTS_FOREVER > 3e9
    assert settings.PREFETCH_MULTIPLIER == 0
    module = load_settings(types.SimpleNamespace(__name__="m", result_expires=None),
                           environ={})
    assert module.RESULT_EXPIRES == config.RESULTS_FOREVER
    with pytest.raises(ConfigurationError, match="expected seconds"):
        config.configure(result_expires=-1)


def test_settings_read_by_celerys_names_as_app_conf_does():
    """``app.conf.timezone`` (and ``CELERY_TIMEZONE``, ``conf["task_time_limit"]``) read the
    setting Celery's name spells, as Celery's app.conf does (a Django guide check found
    AttributeError); a name that is no setting is still an AttributeError."""
    settings = config.configure(TIMEZONE="local", TASK_TIME_LIMIT=1800)  # 3.8: no zoneinfo
    assert settings.timezone == settings.CELERY_TIMEZONE == "local"
    assert settings["task_time_limit"] == settings.get("CELERYD_TIME_LIMIT") == 1800
    assert "broker_url" in settings and settings.BROKER_URL == settings.broker_url
    with pytest.raises(AttributeError, match="no setting named 'timezon'"):
        settings.timezon
