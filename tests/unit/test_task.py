"""minitask.task: registration by the metaclass, options and their defaults, refusal of bad
options, calling methods on classes and objects, default kwargs, and `apply_async`'s options
(through `build_message`, so no broker is needed).

Every test gets fresh settings and leaves the registry as it found it; tests that must not
reach a broker replace `minitask.transport.connection` with one that fails the test.
"""
import datetime
import socket
import sys
import types

import pytest

import minitask
from minitask import Task, config, protocol, registry, task, transport
from minitask.exceptions import (
    BrokerConnectionError, ConfigurationError, MinitaskError, SerializationError,
)
from minitask.result import EagerResult
from minitask.task import DEFAULT_KWARG_NAMES, PeriodicTask, TaskType, default_kwargs_for

UTC = datetime.timezone.utc
PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))

SPEC_DEFAULTS = {
    "abstract": False, "max_retries": 3, "default_retry_delay": 180, "rate_limit": None,
    "ignore_result": False, "disable_error_emails": False, "serializer": None,
    "routing_key": None, "exchange": None, "mandatory": False, "immediate": False,
    "priority": None, "acks_late": None, "time_limit": None, "soft_time_limit": None,
}   # acks_late None: the TASK_ACKS_LATE setting, False unless set (Celery's default too)


from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


def closed_port():
    """A loopback port nothing listens on: bound by us a moment ago, then closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class CreateUserTask(Task):
    def run(self, username, password):
        return "created %s/%s" % (username, password)


create_user = registry.tasks[CreateUserTask.name]


class Unsendable:
    """No serializer carries this."""


# -- registration ------------------------------------------------------------------------------

def test_task_class_registers_on_creation_under_module_and_class_name():
    class SendMail(Task):
        def run(self):
            return "sent"

    assert SendMail.name == "%s.SendMail" % __name__
    assert registry.tasks[SendMail.name] is SendMail._instance()
    assert isinstance(registry.tasks[SendMail.name], SendMail)


def test_module_level_task_class_is_registered_under_its_module_name():
    assert CreateUserTask.name == __name__ + ".CreateUserTask"
    assert registry.tasks[__name__ + ".CreateUserTask"] is CreateUserTask._instance()


def test_name_attribute_overrides_the_generated_name():
    class Named(Task):
        name = "myapp.send_mail"

        def run(self):
            return 1

    assert Named.name == "myapp.send_mail"
    assert registry.tasks["myapp.send_mail"] is Named._instance()
    assert __name__ + ".Named" not in registry.tasks


def test_subclass_of_a_named_task_gets_its_own_generated_name_and_leaves_the_parent():
    class Parent(Task):
        name = "myapp.parent"

        def run(self):
            return "parent"

    class Child(Parent):
        def run(self):
            return "child"

    assert Child.name == __name__ + ".Child"
    assert registry.tasks["myapp.parent"]() == "parent"
    assert registry.tasks[Child.name]() == "child"


def test_abstract_class_is_not_registered_but_its_subclass_is():
    class Base(Task):
        abstract = True

        def run(self, x):
            return x * 2

    class Concrete(Base):
        pass

    assert Base.name not in registry.tasks
    assert registry.tasks[Concrete.name] is Concrete._instance()
    assert registry.tasks[Concrete.name](21) == 42


def test_abstract_is_not_inherited():
    class Base(Task):
        abstract = True

    class Concrete(Base):
        pass

    class Grandchild(Concrete):
        pass

    assert Base.abstract is True
    assert Concrete.abstract is False and Grandchild.abstract is False
    assert Concrete.name in registry.tasks and Grandchild.name in registry.tasks


def test_task_and_periodic_task_base_classes_are_not_registered():
    names = set(registry.tasks)
    assert not any(name.endswith((".Task", ".PeriodicTask")) for name in names)
    assert Task.abstract is True and PeriodicTask.abstract is True


def test_task_type_is_the_metaclass_of_every_task():
    assert type(Task) is TaskType and type(CreateUserTask) is TaskType
    assert minitask.Task is Task and minitask.TaskType is TaskType


# -- options and their defaults ----------------------------------------------------------------

@pytest.mark.parametrize("option, default", sorted(SPEC_DEFAULTS.items()))
def test_every_option_of_a_task_class_has_the_spec_default(option, default):
    class Defaults(Task):
        def run(self):
            return None

    assert getattr(Defaults, option) == default
    assert getattr(registry.tasks[Defaults.name], option) == default


@pytest.mark.parametrize("option, default", sorted(SPEC_DEFAULTS.items()))
def test_every_option_of_a_decorated_function_has_the_spec_default(option, default):
    @task()
    def defaults():
        return None

    assert getattr(defaults, option) == default


def test_unset_serializer_routing_key_and_exchange_come_from_the_settings():
    config.configure(TASK_SERIALIZER="pickle", DEFAULT_ROUTING_KEY="rk.default",
                     DEFAULT_EXCHANGE="ex.default")
    message = create_user.build_message(("bob", "pw"))
    assert message.serializer == "pickle"
    assert message.routing_key == "rk.default"
    assert message.exchange == "ex.default"
    assert message.encode().content_type == "application/x-python-serialize"


def test_unset_serializer_routing_key_and_exchange_default_to_json_and_minitask():
    message = create_user.build_message(("bob", "pw"))
    assert (message.serializer, message.routing_key, message.exchange) == (
        "json", "minitask", "minitask")


def test_task_options_win_over_settings_and_call_options_win_over_task_options():
    config.configure(TASK_SERIALIZER="json", DEFAULT_ROUTING_KEY="rk.default",
                     DEFAULT_EXCHANGE="ex.default")

    class Routed(Task):
        serializer = "pickle"
        routing_key = "rk.task"
        exchange = "ex.task"
        priority = 2
        mandatory = True
        immediate = True

        def run(self):
            return None

    routed = registry.tasks[Routed.name]
    message = routed.build_message()
    assert (message.serializer, message.routing_key, message.exchange, message.priority,
            message.mandatory, message.immediate) == (
        "pickle", "rk.task", "ex.task", 2, True, True)
    message = routed.build_message(serializer="json", routing_key="rk.call",
                                   exchange="ex.call", priority=7, mandatory=False,
                                   immediate=False)
    assert (message.serializer, message.routing_key, message.exchange, message.priority,
            message.mandatory, message.immediate) == (
        "json", "rk.call", "ex.call", 7, False, False)


def test_unset_priority_leaves_the_queue_default_of_four_to_the_broker():
    message = create_user.build_message(("bob", "pw"))
    assert message.priority is None
    assert protocol.decode_message(protocol.encode_message(message.encode())).priority is None
    assert protocol.DEFAULT_PRIORITY == 4


def test_unset_rate_limit_means_the_default_rate_limit_setting():
    assert CreateUserTask._instance().effective_rate_limit() is None
    config.configure(DEFAULT_RATE_LIMIT="10/s")
    assert CreateUserTask._instance().effective_rate_limit() == "10/s"

    class Limited(Task):
        rate_limit = "100/m"

    assert Limited._instance().effective_rate_limit() == "100/m"


@pytest.mark.parametrize("option, value", [
    ("priority", 0), ("priority", 9), ("rate_limit", "100/m"), ("rate_limit", "10/s"),
    ("rate_limit", "5/h"), ("rate_limit", 3), ("max_retries", 0), ("max_retries", None),
    ("default_retry_delay", 0), ("default_retry_delay", 1.5), ("serializer", "json"),
    ("serializer", "pickle"), ("time_limit", 30), ("soft_time_limit", 0.5),
    ("routing_key", "video.compress"), ("exchange", "media"), ("ignore_result", True),
    ("acks_late", True), ("disable_error_emails", True),
])
def test_valid_option_values_are_kept(option, value):
    Valid = TaskType("Valid", (Task,), {option: value, "__module__": __name__})
    assert getattr(registry.tasks[Valid.name], option) == value


BAD_OPTIONS = [
    ("priority", 12), ("priority", -1), ("priority", 1.5), ("priority", "high"),
    ("priority", True), ("rate_limit", "10/x"), ("rate_limit", "fast"), ("rate_limit", -5),
    ("serializer", "nope"), ("serializer", 3), ("max_retries", -1), ("max_retries", 2.5),
    ("max_retries", "3"), ("default_retry_delay", -5), ("default_retry_delay", "soon"),
    ("time_limit", 0), ("time_limit", -1), ("soft_time_limit", -2),
    ("soft_time_limit", "long"), ("routing_key", 5), ("exchange", 7),
]


@pytest.mark.parametrize("option, value", BAD_OPTIONS)
def test_bad_option_is_refused_at_definition_with_one_line_naming_task_and_value(option, value):
    with pytest.raises(ConfigurationError) as info:
        TaskType("Broken", (Task,), {option: value, "__module__": __name__})
    message = str(info.value)
    assert "\n" not in message
    assert __name__ + ".Broken" in message
    assert repr(value) in message
    assert __name__ + ".Broken" not in registry.tasks


@pytest.mark.parametrize("option, value", BAD_OPTIONS)
def test_bad_option_of_a_decorated_function_is_refused_naming_the_task(option, value):
    def broken():
        return None

    with pytest.raises(ConfigurationError) as info:
        task(**{option: value})(broken)
    message = str(info.value)
    assert "\n" not in message
    assert __name__ + ".broken" in message and repr(value) in message
    assert __name__ + ".broken" not in registry.tasks


def test_bad_option_in_a_class_statement_is_refused():
    with pytest.raises(ConfigurationError, match=r"priority 12"):
        class TooUrgent(Task):
            priority = 12


# -- calling -----------------------------------------------------------------------------------

def test_calling_the_task_object_calls_run():
    assert CreateUserTask._instance()("bob", "pw") == "created bob/pw"
    assert registry.tasks[CreateUserTask.name]("ann", "x") == "created ann/x"


def test_task_without_run_raises_not_implemented_naming_it():
    class Empty(Task):
        pass

    with pytest.raises(NotImplementedError, match="Empty"):
        registry.tasks[Empty.name]()


def test_apply_works_on_the_class_and_on_the_object_alike():
    by_class = CreateUserTask.apply(("bob", "pw"))
    by_object = registry.tasks[CreateUserTask.name].apply(("bob", "pw"))
    assert isinstance(by_class, EagerResult) and isinstance(by_object, EagerResult)
    assert by_class.get() == by_object.get() == "created bob/pw"


@pytest.mark.parametrize("method", ["delay", "apply_async", "apply", "retry", "get_logger",
                                    "AsyncResult", "s", "map_async"])
def test_calling_methods_on_the_class_are_bound_to_the_registered_shared_instance(method):
    bound = getattr(CreateUserTask, method)
    assert bound.__self__ is registry.tasks[CreateUserTask.name]
    assert bound.__self__ is getattr(registry.tasks[CreateUserTask.name], method).__self__


def test_get_logger_works_on_the_class():
    logger = CreateUserTask.get_logger()
    assert logger.extra["task_name"] == CreateUserTask.name


def test_delay_on_the_class_runs_eagerly_under_always_eager(no_broker):
    config.configure(ALWAYS_EAGER=True)
    result = CreateUserTask.delay("bob", "pw")
    assert isinstance(result, EagerResult)
    assert result.get() == "created bob/pw"


def test_always_eager_makes_delay_and_apply_async_return_eager_results(no_broker):
    config.configure(ALWAYS_EAGER=True)

    @task()
    def add(x, y):
        return x + y

    assert isinstance(add.delay(2, 2), EagerResult)
    assert add.delay(2, 2).get() == 4
    result = add.apply_async((3, 4), countdown=60, task_id="eager-id")
    assert isinstance(result, EagerResult)
    assert (result.get(), result.task_id) == (7, "eager-id")


def test_apply_async_refuses_unknown_options():
    with pytest.raises(ConfigurationError, match="unknown option bogus"):
        CreateUserTask.apply_async(("bob", "pw"), bogus=1)


def test_delay_without_a_broker_raises_broker_connection_error_naming_the_url():
    url = "minitask://127.0.0.1:%d" % closed_port()
    config.configure(BROKER_URL=url)
    with pytest.raises(BrokerConnectionError) as info:
        CreateUserTask.delay("bob", "pw")
    assert url in str(info.value)
    assert "\n" not in str(info.value)


def test_unserializable_argument_fails_delay_before_any_connection_naming_its_type(no_broker):
    with pytest.raises(SerializationError, match="Unsendable"):
        CreateUserTask.delay("bob", Unsendable())
    with pytest.raises(SerializationError, match="Unsendable"):
        CreateUserTask.apply_async(args=["bob"], kwargs={"password": [{"x": Unsendable()}]})


def test_unserializable_argument_fails_at_encode_naming_its_type():
    message = create_user.build_message(("bob", Unsendable()))
    with pytest.raises(SerializationError, match="Unsendable"):
        message.encode()


# -- apply_async's options, through build_message -------------------------------------------

def test_countdown_becomes_an_eta_that_many_seconds_from_now():
    before = datetime.datetime.now(UTC).timestamp()
    message = create_user.build_message(("bob", "pw"), countdown=30)
    after = datetime.datetime.now(UTC).timestamp()
    assert before + 30 <= message.eta <= after + 30


def test_without_countdown_or_eta_the_task_is_due_now():
    message = create_user.build_message(("bob", "pw"))
    assert message.eta == 0.0 and message.expires == 0.0


def test_naive_eta_is_taken_as_utc_and_aware_eta_is_honoured():
    naive = datetime.datetime(2030, 1, 1, 12, 0, 0)
    aware = datetime.datetime(2030, 1, 1, 14, 0, 0, tzinfo=PLUS_2)
    expected = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert create_user.build_message(eta=naive).eta == expected
    assert create_user.build_message(eta=aware).eta == expected


@pytest.mark.parametrize("expires", [120, 120.0, datetime.timedelta(minutes=2)])
def test_expires_in_seconds_or_as_a_timedelta_counts_from_now(expires):
    before = datetime.datetime.now(UTC).timestamp()
    message = create_user.build_message(expires=expires)
    after = datetime.datetime.now(UTC).timestamp()
    assert before + 120 <= message.expires <= after + 120


def test_expires_as_a_datetime_is_that_moment_naive_taken_as_utc():
    naive = datetime.datetime(2031, 6, 1, 8, 30)
    aware = datetime.datetime(2031, 6, 1, 10, 30, tzinfo=PLUS_2)
    expected = datetime.datetime(2031, 6, 1, 8, 30, tzinfo=UTC).timestamp()
    assert create_user.build_message(expires=naive).expires == expected
    assert create_user.build_message(expires=aware).expires == expected


def test_eta_and_expires_reach_the_broker_message():
    eta = datetime.datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
    expires = datetime.datetime(2030, 3, 1, 9, 10, tzinfo=UTC)
    message = create_user.build_message(("bob", "pw"), eta=eta, expires=expires).encode()
    assert (message.not_before, message.expires_at) == (eta.timestamp(), expires.timestamp())


@pytest.mark.parametrize("priority", [0, 4, 9])
def test_priority_in_range_is_sent(priority):
    assert create_user.build_message(priority=priority).encode().priority == priority


@pytest.mark.parametrize("priority", [10, -1, 2.5, "1", True])
def test_priority_out_of_range_is_refused_before_any_connection(priority, no_broker):
    with pytest.raises(ConfigurationError) as info:
        CreateUserTask.apply_async(("bob", "pw"), priority=priority)
    assert repr(priority) in str(info.value)


def test_task_id_given_is_the_message_id():
    message = create_user.build_message(("bob", "pw"), task_id="my-own-id")
    assert message.id == "my-own-id" and message.encode().message_id == "my-own-id"


def test_each_call_gets_a_new_task_id():
    assert create_user.build_message().id != create_user.build_message().id


def test_mandatory_and_immediate_set_the_message_flags():
    message = create_user.build_message(mandatory=True, immediate=True).encode()
    assert message.flags & protocol.MANDATORY and message.flags & protocol.IMMEDIATE
    plain = create_user.build_message().encode()
    assert not plain.flags & (protocol.MANDATORY | protocol.IMMEDIATE)
    assert plain.flags & protocol.PERSISTENT


def test_an_explicit_empty_exchange_is_the_default_exchange():
    assert create_user.build_message(exchange="").exchange == ""


@pytest.mark.parametrize("args, kwargs", [("bob", None), (None, [("a", 1)])])
def test_args_must_be_a_sequence_and_kwargs_a_dict(args, kwargs):
    with pytest.raises(TypeError):
        create_user.build_message(args, kwargs)


def test_apply_async_publishes_the_built_message_and_returns_its_async_result(monkeypatch):
    published = []

    class FakeConnection:
        def publish(self, message):
            published.append(message)

    monkeypatch.setattr(transport, "connection", lambda *a, **k: FakeConnection())
    result = CreateUserTask.apply_async(("bob", "pw"), task_id="sent-id", priority=1)
    assert result.task_id == "sent-id"
    assert [m.message_id for m in published] == ["sent-id"]
    assert published[0].type == CreateUserTask.name and published[0].priority == 1


# -- default keyword arguments -------------------------------------------------------------

DEFAULTS = {"logfile": "/tmp/log", "loglevel": "INFO", "task_id": "id-1",
            "task_name": "some.task", "task_retries": 2}


def test_a_function_taking_kwargs_gets_all_five_default_kwargs():
    def fun(x, **kwargs):
        return x

    assert default_kwargs_for(fun, DEFAULTS) == DEFAULTS
    assert set(DEFAULT_KWARG_NAMES) == set(DEFAULTS)


def test_a_function_gets_exactly_the_default_kwargs_it_names():
    def fun(x, task_id, loglevel=None):
        return x

    assert default_kwargs_for(fun, DEFAULTS) == {"task_id": "id-1", "loglevel": "INFO"}


def test_keyword_only_parameters_count_as_named():
    def fun(x, *, task_retries=0):
        return x

    assert default_kwargs_for(fun, DEFAULTS) == {"task_retries": 2}


def test_a_function_naming_none_of_them_gets_none():
    def fun(x, y, *args):
        return x

    assert default_kwargs_for(fun, DEFAULTS) == {}


def test_a_positional_only_parameter_cannot_take_a_default_kwarg_so_gets_none():
    namespace = {}
    exec("def fun(task_id, /, x=None):\n    return task_id\n", namespace)
    assert default_kwargs_for(namespace["fun"], DEFAULTS) == {}


def test_a_run_method_is_read_without_self():
    class Named(Task):
        def run(self, x, task_name=None):
            return x

    assert default_kwargs_for(registry.tasks[Named.name].run, DEFAULTS) == {
        "task_name": "some.task"}


def test_through_apply_a_task_naming_task_id_gets_its_own_id():
    @task()
    def whoami(task_id):
        return task_id

    result = whoami.apply(task_id="the-id")
    assert result.get() == "the-id"
    fresh = whoami.apply()
    assert fresh.get() == fresh.task_id


def test_a_positional_argument_filling_a_default_kwargs_parameter_wins_over_the_workers():
    # Celery's errback(task_id) is called with the failed task's id; the worker's own
    # task_id must not collide with it ("got multiple values"), nor replace it.
    @task()
    def errback(task_id, note=None):
        return task_id, note

    assert errback.apply(("failed-id",)).get() == ("failed-id", None)
    assert errback.apply(("failed-id", "n"), task_id="own").get() == ("failed-id", "n")
    assert errback.apply(kwargs={"note": "n"}, task_id="own").get() == ("own", "n")


def test_through_apply_a_task_that_names_none_never_gets_unknown_kwargs():
    @task()
    def strict(x, y):
        return x + y

    result = strict.apply((1, 2))
    assert result.state == "SUCCESS" and result.get() == 3


def test_through_apply_a_kwargs_task_gets_all_five_with_their_values():
    @task()
    def everything(**kwargs):
        return kwargs

    result = everything.apply(logfile="/tmp/x.log", loglevel="DEBUG")
    assert result.get() == {"logfile": "/tmp/x.log", "loglevel": "DEBUG",
                            "task_id": result.task_id, "task_name": everything.name,
                            "task_retries": 0}


def test_through_apply_a_class_task_gets_the_default_kwargs_it_names():
    class Named(Task):
        def run(self, x, task_name, task_retries=None):
            return (x, task_name, task_retries)

    assert Named.apply((1,)).get() == (1, Named.name, 0)


def test_the_callers_own_arguments_reach_the_task():
    @task()
    def echo(*args, **kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in DEFAULT_KWARG_NAMES}

    assert echo.apply((1, "a"), {"b": [2]}).get() == ((1, "a"), {"b": [2]})


# -- periodic tasks ----------------------------------------------------------------------------

def test_periodic_task_without_run_every_is_refused_at_definition():
    with pytest.raises(ConfigurationError, match="run_every"):
        class NoInterval(PeriodicTask):
            def run(self):
                return None


def test_periodic_task_is_due_after_run_every():
    class Every(PeriodicTask):
        run_every = datetime.timedelta(seconds=30)

        def run(self):
            return None

    every = registry.tasks[Every.name]
    assert every.type == "periodic"
    assert every.is_due(None, 1000.0) == (True, 30.0)
    assert every.is_due(1000.0, 1010.0) == (False, 20.0)
    assert every.is_due(1000.0, 1030.0) == (True, 30.0)


def test_errors_are_minitask_errors():
    assert issubclass(ConfigurationError, MinitaskError)
    assert issubclass(BrokerConnectionError, MinitaskError)


def test_delay_on_commit_sends_once_django_commits_and_at_once_without_django(monkeypatch):
    """Celery 5.4's delay_on_commit / apply_async_on_commit: through Django's
    transaction.on_commit where DJANGO_SETTINGS_MODULE is set, else at once; None back."""
    sent = []

    @task(name="t.commit")
    def commit(x):
        return x

    monkeypatch.setattr(type(commit), "delay", lambda self, *a, **k: sent.append(("d", a)))
    monkeypatch.setattr(type(commit), "apply_async",
                        lambda self, args=None, kwargs=None, **o: sent.append(("a", args, o)))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert commit.delay_on_commit(1) is None and sent == [("d", (1,))]
    callbacks = []
    fake = types.ModuleType("django.db")
    fake.transaction = types.SimpleNamespace(on_commit=callbacks.append)
    monkeypatch.setitem(sys.modules, "django", types.ModuleType("django"))
    monkeypatch.setitem(sys.modules, "django.db", fake)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "proj.settings")
    commit.apply_async_on_commit((2,), countdown=5)
    assert len(sent) == 1 and len(callbacks) == 1      # held until the commit
    callbacks[0]()
    assert sent[1] == ("a", (2,), {"countdown": 5})
