"""minitask.options and where it is applied: every Celery task option and call option is
implemented, accepted with no effect, or refused where it is written, naming it and the
minitask way; `shared_task`, `send_task` and `queue=` as Celery users write them.

No broker: calls are built with `compose_message`, or sent through a recording connection.
"""
import datetime
import time

import pytest

import minitask
from minitask import Task, chain, chord, config, registry, send_task, shared_task, task, transport
from minitask.transport import builtin
from minitask.exceptions import ConfigurationError
from minitask.options import (
    CALL_ACCEPTED, CALL_REFUSED, PUBLISH_OPTIONS, TASK_ACCEPTED, TASK_REFUSED,
)
from minitask.result import AsyncResult, EagerResult
from minitask.task import compose_message

from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@task(name="tests.options.add")
def add(x, y):
    return x + y


class RecordingConnection:
    """Stands in for a broker connection: records what a call declares and publishes."""

    def __init__(self):
        self.calls = []
        self.declared_queues = set()

    def declare_queue(self, queue, durable=True, **options):
        self.calls.append(("declare_queue", queue, durable))

    ensure_queue = builtin.Connection.ensure_queue

    def publish(self, message, confirm=True, timeout=None):
        self.calls.append(("publish", message))

    def publish_many(self, messages, window=100, timeout=None):
        for message in messages:
            self.publish(message)


@pytest.fixture
def sent(monkeypatch):
    conn = RecordingConnection()
    monkeypatch.setattr(transport, "connection", lambda settings=None: conn)
    return conn


def published(conn):
    return [call[1] for call in conn.calls if call[0] == "publish"]


# -- the three lists -------------------------------------------------------------------------

def test_the_lists_do_not_overlap_and_none_shadows_an_implemented_option():
    implemented = {name for name in vars(Task) if not name.startswith("_")}
    assert not set(TASK_ACCEPTED) & set(TASK_REFUSED)
    assert not (set(TASK_ACCEPTED) | set(TASK_REFUSED)) & implemented
    assert not set(CALL_ACCEPTED) & set(CALL_REFUSED)
    assert not (set(CALL_ACCEPTED) | set(CALL_REFUSED)) & set(PUBLISH_OPTIONS)


def test_publish_options_are_one_list_both_apply_async_and_retry_can_import():
    from minitask.task import PUBLISH_OPTIONS as from_task
    assert from_task is PUBLISH_OPTIONS
    assert {"countdown", "eta", "expires", "queue", "exchange", "routing_key",
            "priority"} <= set(PUBLISH_OPTIONS)


@pytest.mark.parametrize("option", sorted(TASK_REFUSED))
def test_a_refused_task_option_is_an_error_at_definition_naming_it(option):
    with pytest.raises(ConfigurationError) as info:
        task(name="tests.options.refused", **{option: "x"})(lambda: None)
    message = str(info.value)
    assert "tests.options.refused" in message and option in message
    assert TASK_REFUSED[option] in message
    assert "tests.options.refused" not in registry.tasks


@pytest.mark.parametrize("option", sorted(TASK_REFUSED))
def test_a_refused_task_attribute_is_an_error_in_the_class_statement(option):
    with pytest.raises(ConfigurationError, match=option):
        type("Refused", (Task,), {option: "x", "__module__": __name__,
                                  "run": lambda self: None})


@pytest.mark.parametrize("option", sorted(TASK_ACCEPTED))
def test_an_accepted_task_option_changes_nothing(option):
    values, _reason = TASK_ACCEPTED[option]
    value = values[0] if values else "anything"
    made = task(name="tests.options.accepted", **{option: value})(lambda: 7)
    assert made() == 7 and registry.tasks["tests.options.accepted"] is made


@pytest.mark.parametrize("option, value", [
    ("acks_on_failure_or_timeout", False), ("acks_on_failure", False),
    ("acks_on_timeout", False), ("reject_on_worker_lost", False), ("delivery_mode", 1)])
def test_an_accepted_option_asking_for_what_minitask_does_not_do_is_refused(option, value):
    with pytest.raises(ConfigurationError, match="%s=%r is not supported" % (option, value)):
        task(name="tests.options.value", **{option: value})(lambda: None)


def test_an_option_neither_celery_nor_minitask_knows_is_refused():
    with pytest.raises(ConfigurationError, match="unknown option max_retrys"):
        task(name="tests.options.typo", max_retrys=3)(lambda: None)


def test_a_custom_base_may_bring_options_of_its_own():
    class Audited(Task):
        abstract = True
        audit_channel = "default"

    made = task(base=Audited, name="tests.options.audited", audit_channel="billing")(lambda: 1)
    assert made.audit_channel == "billing"


def test_a_task_class_keeps_attributes_of_its_own():
    class WithHelpers(Task):
        cache_size = 10

        def helper(self):
            return self.cache_size

        def run(self):
            return self.helper()

    assert registry.tasks[WithHelpers.name]() == 10


@pytest.mark.parametrize("option, value, message", [
    ("queue", 5, "queue 5: expected a string"),
    ("queue", "", "queue '': expected a queue name"),
    ("expires", -1, "expires -1"),
    ("autoretry_for", ("ValueError",), "autoretry_for"),
    ("throws", 5, "throws"),
    ("retry_kwargs", {"countdwn": 1}, "retry_kwargs"),
    ("retry_backoff", "yes", "retry_backoff"),
    ("retry_backoff_max", -5, "retry_backoff_max"),
    ("retry_jitter", 1, "retry_jitter"),
    ("bind", "yes", "bind"),
    ("acks_late", "yes", "acks_late"),
])
def test_bad_values_of_the_new_options_are_refused_at_definition(option, value, message):
    with pytest.raises(ConfigurationError, match=message):
        task(name="tests.options.bad", **{option: value})(lambda: None)


def test_a_single_exception_class_is_taken_as_a_tuple():
    made = task(name="tests.options.one", autoretry_for=KeyError, throws=[ValueError])(
        lambda: None)
    assert made.autoretry_for == (KeyError,) and made.throws == (ValueError,)


# -- the decorator's own options ---------------------------------------------------------------

def test_shared_task_is_task():
    assert shared_task is task and minitask.shared_task is task

    @shared_task(name="tests.options.shared")
    def shared(x):
        return x * 2

    assert registry.tasks["tests.options.shared"] is shared and shared(4) == 8


def test_bind_gives_the_function_the_task_as_self():
    @task(bind=True, name="tests.options.bound")
    def bound(self, x):
        return self, x

    assert bound(3) == (bound, 3)
    assert bound.request.called_directly and bound.request.id is None
    assert bound.apply((5,)).get() == (bound, 5)


def test_filter_is_applied_to_the_task_object():
    seen = []

    def remember(made):
        seen.append(made)
        return made

    made = task(name="tests.options.filtered", filter=remember)(lambda: 1)
    assert seen == [made] and made is registry.tasks["tests.options.filtered"]


def test_lazy_and_shared_change_nothing():
    made = task(name="tests.options.lazy", lazy=False, shared=False)(lambda: 2)
    assert registry.tasks["tests.options.lazy"] is made and made() == 2


# -- call options ----------------------------------------------------------------------------

@pytest.mark.parametrize("option", sorted(CALL_REFUSED))
def test_a_refused_call_option_is_an_error_naming_it_and_the_minitask_way(option, no_broker):
    with pytest.raises(ConfigurationError) as info:
        add.apply_async((1, 2), **{option: "x"})
    assert option in str(info.value) and CALL_REFUSED[option] in str(info.value)


def test_the_options_the_canvas_sets_itself_say_how_to_build_the_workflow(no_broker):
    for option in ("chord", "chain", "group_id"):
        with pytest.raises(ConfigurationError, match="%s is not supported: set by the canvas "
                                                     "itself; build the workflow" % option):
            add.apply_async((1, 2), **{option: add.s(1)})


def test_none_is_not_given_as_celery_wrappers_pass_it(sent):
    add.apply_async((1, 2), link=None, headers=None, shadow=None, compression=None)
    assert len(published(sent)) == 1


def test_accepted_call_options_change_nothing(sent):
    add.apply_async((1, 2), add_to_parent=False, retry=True, delivery_mode=2)
    with pytest.raises(ConfigurationError, match="retry=False is not supported"):
        add.apply_async((1, 2), retry=False)
    assert len(published(sent)) == 1


def test_a_call_option_that_repeats_the_tasks_own_value_is_accepted(sent):
    quiet = task(name="tests.options.quiet", ignore_result=True, time_limit=5)(lambda: 1)
    quiet.apply_async(ignore_result=True, time_limit=5)
    with pytest.raises(ConfigurationError, match="set ignore_result on the task"):
        quiet.apply_async(ignore_result=False)
    with pytest.raises(ConfigurationError, match="set time_limit on the task"):
        quiet.apply_async(time_limit=10)
    assert len(published(sent)) == 1


def test_an_unknown_call_option_is_refused_listing_the_call_options(no_broker):
    with pytest.raises(ConfigurationError, match="unknown option countdwn.*countdown, eta"):
        add.apply_async((1, 2), countdwn=5)


def test_call_options_are_checked_under_always_eager_too():
    config.configure(ALWAYS_EAGER=True)
    assert add.apply_async((1, 2), link=None).get() == 3
    assert add.apply_async((1, 2), link=add.s(1)).children[0].get() == 4
    with pytest.raises(ConfigurationError, match="stamped_headers"):
        add.apply_async((1, 2), stamped_headers=["a"])
    with pytest.raises(ConfigurationError, match="compression"):
        add.apply((1, 2), compression="zlib")


def test_workflow_entry_points_exist_and_the_ones_a_running_task_would_need_are_refused():
    assert isinstance(add.s(1, 2) | add.s(3), chain)
    assert isinstance(minitask.group(add.s(1, 2), add.s(3, 4)) | add.s(), chord)
    assert add.si(1, 2).immutable
    for attempt in (lambda: add.replace(add.s(1, 2)), lambda: add.add_to_chord(add.s(1))):
        with pytest.raises(ConfigurationError, match="is not supported: a running task "
                                                     "cannot change its own place"):
            attempt()


def test_send_event_is_refused_with_the_minitask_way():
    with pytest.raises(ConfigurationError, match="get_logger"):
        add.send_event("task-progress")


def test_update_state_refuses_final_states_and_unknown_arguments_and_stores_nothing_eagerly():
    """(What a worker stores: test_worker_e2e.py's
    test_update_state_shows_progress_until_the_task_ends.)"""
    for state in ("SUCCESS", "FAILURE", "REVOKED"):
        with pytest.raises(ConfigurationError, match="%s: a final state" % state):
            add.update_state("t", state=state)
    with pytest.raises(ConfigurationError, match="not sticky"):
        add.update_state(state="PROGRESS", sticky=True)
    with pytest.raises(ConfigurationError, match="meta"):
        add.update_state("t", state="PROGRESS", meta=object())
    assert add.update_state(state="PROGRESS", meta={"done": 1}) is None   # not on a worker


def test_update_state_in_an_eager_run_stores_nothing_even_given_its_own_task_id(no_broker):
    """Celery's idiom names the task id: an eager run still reaches no broker."""
    config.configure(ALWAYS_EAGER=True)

    @task(name="tests.options.progress", bind=True)
    def progress(self):
        self.update_state(task_id=self.request.id, state="PROGRESS", meta={"done": 1})
        return "ran"
    assert progress.delay().get() == "ran"


def test_signature_carries_call_options(sent):
    add.signature((1, 2), countdown=60).apply_async()
    message = published(sent)[0]
    assert message.not_before > 0


# -- queue= --------------------------------------------------------------------------------

def test_queue_on_a_task_sends_straight_to_that_queue_and_declares_it_first(sent):
    hipri = task(name="tests.options.hipri", queue="hipri")(lambda: 1)
    hipri.delay()
    hipri.delay()
    assert sent.calls[0] == ("declare_queue", "hipri", True)
    assert [c[0] for c in sent.calls] == ["declare_queue", "publish", "publish"]
    assert [(m.exchange, m.routing_key) for m in published(sent)] == [("", "hipri")] * 2


def test_queue_on_apply_async_wins_over_the_tasks_and_a_queue_in_queues_is_not_declared(sent):
    config.configure(QUEUES={"videos": {"exchange": "media", "binding_key": "video.#"}})
    hipri = task(name="tests.options.hipri2", queue="hipri")(lambda: 1)
    hipri.apply_async(queue="videos")
    assert sent.calls == [("publish", published(sent)[0])]
    assert (published(sent)[0].exchange, published(sent)[0].routing_key) == ("", "videos")


def test_apply_async_queue_was_a_type_error_before(no_broker):
    message = add.build_message((1, 2), queue="hipri")
    assert (message.exchange, message.routing_key) == ("", "hipri")


def test_a_new_connection_declares_again(sent):
    hipri = task(name="tests.options.hipri3", queue="hipri")(lambda: 1)
    hipri.delay()
    sent.declared_queues = set()            # what a reconnect does
    hipri.delay()
    assert [c[0] for c in sent.calls] == ["declare_queue", "publish"] * 2


def test_a_group_declares_each_missing_queue_once(sent):
    minitask.group(add.s(1, 1).set(queue="a"), add.s(2, 2).set(queue="a"),
                   add.s(3, 3)).apply_async()
    assert sent.declared_queues == {"a"}


# -- send_task ---------------------------------------------------------------------------------

def test_send_task_sends_by_name_a_task_not_registered_here(sent):
    result = send_task("somewhere.else", (1, 2), {"z": 3}, countdown=5, priority=1)
    assert isinstance(result, AsyncResult) and result.task_name == "somewhere.else"
    message = published(sent)[0]
    assert (message.message_id, message.type, message.priority) == (
        result.id, "somewhere.else", 1)
    assert minitask.send_task is send_task


def test_send_task_does_not_use_a_local_tasks_options_but_does_use_the_routes(sent):
    task(name="tests.options.local", queue="own", priority=9)(lambda: 1)
    send_task("tests.options.local")
    assert (published(sent)[0].routing_key, published(sent)[0].priority) == ("minitask", None)
    config.configure(TASK_ROUTES={"tests.options.*": "routed"})
    send_task("tests.options.local")
    assert published(sent)[1].routing_key == "routed"


def test_send_task_is_sent_even_under_always_eager_as_in_celery(sent):
    config.configure(ALWAYS_EAGER=True)
    assert isinstance(add.delay(1, 2), EagerResult)
    assert isinstance(send_task("tests.options.add", (1, 2)), AsyncResult)
    assert len(published(sent)) == 1


def test_send_task_refuses_what_apply_async_refuses(no_broker):
    with pytest.raises(ConfigurationError, match="send_task\\(\\): chord is not supported"):
        send_task("x.y", chord=add.s(1))
    with pytest.raises(ConfigurationError, match="unknown option bogus"):
        send_task("x.y", bogus=1)
    with pytest.raises(ConfigurationError, match="expected a task name"):
        send_task("")


# -- other implemented options -----------------------------------------------------------------

def test_expires_on_the_task_is_every_calls_default():
    fleeting = task(name="tests.options.fleeting", expires=datetime.timedelta(seconds=60))(
        lambda: 1)
    before = time.time()
    message, _ = compose_message(fleeting.name, (), {}, fleeting)
    assert before + 60 <= message.expires <= time.time() + 60
    explicit, _ = compose_message(fleeting.name, (), {}, fleeting, expires=3600)
    assert explicit.expires - message.expires > 3000


def test_typing_refuses_a_call_run_could_not_take(no_broker):
    strict = task(name="tests.options.strict", typing=True)(lambda x, y, task_id=None: x)
    with pytest.raises(TypeError, match="tests.options.strict"):
        strict.delay(1)
    with pytest.raises(TypeError):
        strict.delay(1, 2, 3, 4)
    loose = task(name="tests.options.loose")(lambda x, y: x)
    config.configure(ALWAYS_EAGER=True)
    assert loose.delay(1, 2).get() == 1
    assert strict.delay(1, 2).get() == 1


def test_acks_late_and_time_limits_come_from_the_settings_when_a_task_sets_none():
    config.configure(TASK_ACKS_LATE=True, TASK_TIME_LIMIT=30, TASK_SOFT_TIME_LIMIT=20)
    plain = task(name="tests.options.plain")(lambda: 1)
    own = task(name="tests.options.own", acks_late=False, time_limit=5)(lambda: 1)
    assert (plain.effective("acks_late"), plain.effective("time_limit"),
            plain.effective("soft_time_limit")) == (True, 30.0, 20.0)
    assert (own.effective("acks_late"), own.effective("time_limit")) == (False, 5)
