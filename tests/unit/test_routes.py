"""minitask.routes: TASK_ROUTES in each of Celery's forms, and Celery's precedence (the call,
then the routes, then the task's own options, then the defaults), seen in the message a call
builds (`compose_message`) and the queue it would declare first."""
import re

import pytest

from minitask import config, task
from minitask.exceptions import ConfigurationError
from minitask.routes import Router, check_routes
from minitask.task import compose_message

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")

QUEUES = {"videos": {"exchange": "media", "exchange_type": "topic", "binding_key": "video.#"}}


@task(name="feed.tasks.import_feed")
def import_feed(url):
    return url


@task(name="feed.tasks.own_queue", queue="own", priority=7)
def own_queue():
    return None


def where(name, task_object=None, routes=None, queues=None, args=(), **call):
    config.configure(TASK_ROUTES=routes, QUEUES=queues or {})
    message, declare = compose_message(name, args, {}, task_object, **call)
    return message.exchange, message.routing_key, message.priority, declare


def test_without_routes_the_defaults_reach_the_default_queue():
    assert where("feed.tasks.import_feed", import_feed) == ("minitask", "minitask", None, None)


def test_a_route_to_a_queue_sends_straight_to_it_and_declares_it():
    routes = {"feed.tasks.import_feed": {"queue": "feeds"}}
    assert where("feed.tasks.import_feed", import_feed, routes) == ("", "feeds", None, "feeds")


@pytest.mark.parametrize("routes", [
    {"feed.tasks.*": {"queue": "feeds"}},
    {"feed.tasks.*": "feeds"},
    {re.compile(r"feed\.tasks\..*"): "feeds"},
    [{"nothing.here": "other"}, {"feed.*": "feeds"}],
    ([("web.*", "web"), ("feed.tasks.*", {"queue": "feeds"})],),
    [("web.*", "web"), ("feed.tasks.*", "feeds")],
    lambda name, args, kwargs, options, task=None, **kw: "feeds" if "feed" in name else None,
    ["test_routes.feeds_router"],
    "test_routes:feeds_router",
])
def test_every_form_celery_takes(routes):
    assert where("feed.tasks.import_feed", import_feed, routes)[1] == "feeds"


def feeds_router(name, args, kwargs, options, task=None, **kw):
    return {"queue": "feeds"} if name.startswith("feed.") else None


class OldStyleRouter:
    """A router as Celery before 4.0 wrote them."""

    def route_for_task(self, task, args=None, kwargs=None):
        return {"queue": "old"} if task.startswith("feed.") else None


def test_pre_4_0_router_objects_and_classes_by_name():
    assert where("feed.tasks.import_feed", import_feed, [OldStyleRouter()])[1] == "old"
    assert where("feed.tasks.import_feed", import_feed, "test_routes.OldStyleRouter")[1] == "old"


def test_an_exact_name_beats_a_pattern_and_the_first_router_that_answers_decides():
    routes = [{"feed.*": "glob", "feed.tasks.import_feed": "exact"}, {"feed.*": "second"}]
    assert where("feed.tasks.import_feed", import_feed, routes)[1] == "exact"
    assert where("feed.tasks.other", None, routes)[1] == "glob"


def test_a_router_function_sees_the_arguments():
    def by_size(name, args, kwargs, options, task=None, **kw):
        return "big" if args and args[0] > 100 else None

    assert where("x.y", None, [by_size], args=(500,))[1] == "big"
    assert where("x.y", None, [by_size], args=(5,))[1] == "minitask"


def test_a_route_may_name_an_exchange_and_routing_key():
    routes = {"feed.*": {"exchange": "media", "routing_key": "video.compress", "priority": 2}}
    assert where("feed.tasks.import_feed", import_feed, routes) == (
        "media", "video.compress", 2, None)


def test_a_queue_in_queues_with_a_routing_key_uses_its_exchange():
    routes = {"feed.*": {"queue": "videos", "routing_key": "video.compress"}}
    assert where("feed.tasks.import_feed", import_feed, routes, QUEUES)[:2] == (
        "media", "video.compress")
    routes = {"feed.*": {"queue": "videos", "exchange": "other"}}
    assert where("feed.tasks.import_feed", import_feed, routes, QUEUES)[:2] == (
        "other", "video.#")


def test_a_queue_not_in_queues_with_a_routing_key_is_refused():
    routes = {"feed.*": {"queue": "nowhere", "routing_key": "x"}}
    with pytest.raises(ConfigurationError, match="'nowhere' with an exchange or routing key"):
        where("feed.tasks.import_feed", import_feed, routes)


# -- precedence: the call, then the routes, then the task, then the defaults -------------------

def test_the_routes_win_over_the_tasks_own_queue_and_priority():
    routes = {"feed.*": {"queue": "routed", "priority": 1}}
    assert where("feed.tasks.own_queue", own_queue, routes) == ("", "routed", 1, "routed")


def test_the_tasks_own_options_apply_where_no_route_answers():
    assert where("feed.tasks.own_queue", own_queue, {"web.*": "web"}) == ("", "own", 7, "own")


def test_the_calls_options_win_over_the_routes():
    routes = {"feed.*": {"queue": "routed", "priority": 1}}
    assert where("feed.tasks.own_queue", own_queue, routes, queue="call", priority=3) == (
        "", "call", 3, "call")
    assert where("feed.tasks.own_queue", own_queue, routes, exchange="ex", routing_key="rk")[
        :2] == ("ex", "rk")


def test_exchange_and_routing_key_complete_each_other_down_to_a_queue():
    routes = {"feed.*": {"exchange": "media"}}
    assert where("feed.tasks.import_feed", import_feed, routes, routing_key="video.x")[:2] == (
        "media", "video.x")
    # A call's routing key stops at the task's queue: the queue is not mixed in.
    assert where("feed.tasks.own_queue", own_queue, None, routing_key="rk")[:2] == (
        "minitask", "rk")


def test_the_message_a_retry_sends_goes_where_the_first_one_went():
    first = where("feed.tasks.own_queue", own_queue, {"feed.*": "routed"})
    again = where("feed.tasks.own_queue", own_queue, {"feed.*": "routed"},
                  exchange=first[0], routing_key=first[1], priority=first[2])
    assert again[:3] == first[:3]


# -- checking the setting --------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (5, "expected a dict, a router function"),
    ({"a.*": 5}, "expected a queue name or a dict"),
    ({"a.*": {"queue": "q", "exchange_type": "topic"}}, "declare exchanges and their types"),
    ({"a.*": {"qeue": "q"}}, "qeue is not a route key"),
    ({"a.*": {"queue": 5}}, "expected a string"),
    ({"": "q"}, "expected a task name, a glob"),
    (["norouter"], "expected the dotted name"),
    ([5], "expected a dict, \\(pattern, route\\) pairs"),
])
def test_a_bad_task_routes_is_one_line_naming_where(value, message):
    with pytest.raises(ConfigurationError, match=message):
        config.configure(TASK_ROUTES=value)


def test_a_router_that_cannot_be_imported_says_so_when_first_asked():
    router = Router(check_routes("TASK_ROUTES", ["no_such_module.route"]))
    with pytest.raises(ConfigurationError, match="no_such_module.route"):
        router.route("x.y")


def test_a_router_answering_nonsense_is_refused_naming_the_task():
    router = Router(check_routes("TASK_ROUTES", [lambda *args, **kwargs: {"bogus": 1}]))
    with pytest.raises(ConfigurationError, match="TASK_ROUTES answer for x.y"):
        router.route("x.y")


def test_answers_of_plain_maps_are_remembered_and_functions_asked_each_time():
    calls = []

    def counting(name, *args, **kwargs):
        calls.append(name)
        return None

    static = Router(check_routes("TASK_ROUTES", {"a.*": "q"}))
    assert static.route("a.b") == static.route("a.b") == {"queue": "q"}
    assert static._cache == {"a.b": {"queue": "q"}}
    asked = Router(check_routes("TASK_ROUTES", [counting]))
    asked.route("a.b")
    asked.route("a.b")
    assert calls == ["a.b", "a.b"]
