"""Celery's "Routing Tasks" user guide (docs/userguide/routing.rst, Celery 5), its idioms pasted
as a Celery user writes them, run by real workers on both transports: the built-in broker and
Redis (the `broker` fixture of both.py; Redis skips, saying why, where redis-server is not
installed). The tasks and routers are the guide's, in routingidioms.py.

The guide's settings (``app.conf.task_routes = ...``) go where minitask reads Celery's setting
names: a settings module (README, Configuration: "a celeryconfig.py works as
MINITASK_CONFIG_MODULE=celeryconfig"), written per test and read by this process and the
worker alike. The guide's ``kombu.Queue(...)`` declarations are written in the dict form that
both Celery's ``task_queues`` and minitask's ``QUEUES`` take (``{name: {exchange,
exchange_type, routing_key}}``): minitask has no kombu.

Where the README names a difference (the default queue's name, priorities counted from 0,
refused route keys), the test checks minitask's documented behaviour and cites the README.
"""

import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from both import broker, server, settle  # noqa: E402,F401  (fixtures)
from cluster import celeryconfig, wait_for, workers_of  # noqa: E402,F401
from ittasks import read_trace  # noqa: E402
from routingidioms import (  # noqa: E402
    add, cleanup, compress_image, compress_video, feeds_import_feed, import_feed, parse_feed,
    reload_cache, render_page, thumbnail, transcode,
)

from minitask import chord, group, send_task  # noqa: E402
from minitask.exceptions import BrokerError, ConfigurationError, UnroutableError  # noqa: E402

MODULES = "routingidioms"
TIMEOUT = 20


@pytest.fixture
def start_worker(broker, tmp_path):
    yield from workers_of(broker, tmp_path, MODULES, ready_timeout=60)


def runs(tmp_path):
    """The runs traced by routingidioms._ran, as dicts."""
    keys = ("task", "exchange", "routing_key", "priority", "hostname", "argument")
    return [dict(zip(keys, line.split("|"))) for line in read_trace(tmp_path, "runs")]


def ready(broker, *queues):
    """The messages waiting in each queue (0 for a queue that does not exist)."""
    rows = {row["name"]: row for row in broker.status()["queues"]}
    return [rows[name]["ready"] if name in rows else 0 for name in queues]


# -- Basics: automatic routing ----------------------------------------------------------------

def test_automatic_routing_by_name_glob_regex_and_items(broker, celeryconfig, start_worker,
                                                        tmp_path):
    """task_routes as a dict of one task name, as a dict of a glob, and in *items* format (a
    tuple holding a list of (pattern, route) pairs, a compiled regex among them), the first
    matching pattern winning; a named queue not in task_queues is created (calls sent before
    any worker wait there); send_task is routed too; then one worker consumes them all with
    `-Q feeds,celery` (minitask's default queue is "minitask": README, Configuration,
    DEFAULT_QUEUE's default)."""
    celeryconfig("task_routes = {'feed.tasks.import_feed': {'queue': 'feeds'}}\n")
    sent = [import_feed.delay('http://cnn.com/rss'), parse_feed.delay('a')]
    assert ready(broker, 'feeds', 'minitask') == [1, 1]

    celeryconfig("task_routes = {'feed.tasks.*': {'queue': 'feeds'}}\n")
    sent += [import_feed.delay('b'), parse_feed.delay('c'), render_page.delay('d')]
    assert ready(broker, 'feeds', 'minitask') == [3, 2]

    celeryconfig("""\
        import re

        task_routes = ([
            ('feed.tasks.*', {'queue': 'feeds'}),
            ('web.tasks.*', {'queue': 'web'}),
            (re.compile(r'(video|image)\\.tasks\\..*'), {'queue': 'media'}),
            ('*.tasks.*', {'queue': 'web'}),
            ('*', {'queue': 'misc'}),
        ],)
        """)
    sent += [import_feed.delay('e'), render_page.delay('f'), transcode.delay('g'),
             thumbnail.delay('h'), add.delay(1, 2),
             send_task('video.tasks.transcode', args=['i'])]
    assert ready(broker, 'feeds', 'web', 'media', 'misc', 'minitask') == [4, 1, 3, 1, 2]

    start_worker(name="z", args=("-Q", "feeds,web,media,misc,minitask"))
    where = [result.get(timeout=TIMEOUT) for result in sent]
    expected = ['feeds', 'minitask', 'feeds', 'feeds', 'minitask', 'feeds', 'web', 'media',
                'media', None, 'media']
    for got, queue in zip(where, expected):
        if queue is None:                                   # add returns its sum
            continue
        if queue == 'minitask':                             # the default exchange and key
            assert got == {'exchange': 'minitask', 'routing_key': 'minitask'}
        else:                                               # straight to a named queue
            assert got == {'exchange': '', 'routing_key': queue}
    assert where[9] == 3
    assert len(runs(tmp_path)) == len(sent)


def test_changing_the_name_of_the_default_queue(broker, celeryconfig, start_worker, tmp_path):
    """app.conf.task_default_queue = 'default': tasks with no route go there, and a worker
    started without -Q consumes it. Set for the app alone, as the guide does: the built-in
    broker keeps its own settings (its default queue "minitask"). It used to: the calls waited
    in "minitask" for ever, while the worker consumed an unbound "default"."""
    env = celeryconfig("task_default_queue = 'default'\n")
    result = add.delay(2, 2)
    assert ready(broker, 'default') == [1]
    start_worker(name="x", env=env)
    assert result.get(timeout=TIMEOUT) == 4
    run, = runs(tmp_path)
    assert (run["task"], run["hostname"]) == ('tasks.add', 'x')


def test_how_an_automatic_queue_is_declared(broker, celeryconfig, start_worker, tmp_path):
    """"A queue named "video" will be created with the following settings: {'exchange':
    'video', 'exchange_type': 'direct', 'routing_key': 'video'}". README, Routing: a queue
    not in QUEUES is bound to "the default exchange "", where every queue is bound by its own
    name" (and a worker's -Q queue to DEFAULT_EXCHANGE under its name), so no exchange named
    after the queue exists: a call sent to exchange 'video' is refused, loudly, while the
    queue's name as routing key reaches it through either of those exchanges."""
    env = celeryconfig("task_routes = {'myapp.tasks.*': {'queue': 'video'}}\n")
    start_worker(name="z", args=("-Q", "video"), env=env)
    routed = compress_video.delay('movie.mp4')
    assert routed.get(timeout=TIMEOUT) == {'exchange': '', 'routing_key': 'video'}
    with pytest.raises(BrokerError, match="exchange 'video'"):
        compress_video.apply_async(('movie2.mp4',), exchange='video', routing_key='video')
    for exchange in ('', 'minitask'):
        result = compress_video.apply_async(('movie3.mp4',), exchange=exchange,
                                            routing_key='video')
        assert result.get(timeout=TIMEOUT) == {'exchange': exchange, 'routing_key': 'video'}
    assert len(runs(tmp_path)) == 3


# -- Basics: manual routing -------------------------------------------------------------------

MANUAL_ROUTING = """\
    task_default_queue = 'default'
    task_queues = {
        'default': {'routing_key': 'task.#'},
        'feed_tasks': {'routing_key': 'feed.#'},
        'image_tasks': {'exchange': 'mediatasks', 'exchange_type': 'direct',
                        'routing_key': 'image.compress'},
    }
    task_default_exchange = 'tasks'
    task_default_exchange_type = 'topic'
    task_default_routing_key = 'task.default'

    task_routes = {
        'feeds.tasks.import_feed': {
            'queue': 'feed_tasks',
            'routing_key': 'feed.import',
        },
    }
    """


def test_manual_routing_with_a_topic_default_exchange(broker, celeryconfig, start_worker,
                                                      tmp_path):
    """The guide's manual routing: queues 'default' (task.#) and 'feed_tasks' (feed.#) on the
    default topic exchange 'tasks' (exchange and type taken from task_default_exchange and
    task_default_exchange_type), 'image_tasks' on its own direct exchange 'mediatasks'; the
    feed task routed by task_routes, or by apply_async(queue=, routing_key=); a routing_key
    given to send_task overrides the route's; untouched tasks go by task_default_routing_key
    'task.default'. Queues in task_queues are declared by the client, so the calls wait in
    them; then server z consumes `-Q feed_tasks,default,image_tasks`."""
    env = celeryconfig(MANUAL_ROUTING)
    routed = feeds_import_feed.delay('http://cnn.com/rss')
    explicit = feeds_import_feed.apply_async(args=['http://cnn.com/rss'],
                                             queue='feed_tasks', routing_key='feed.import')
    by_name = send_task('feeds.tasks.import_feed', args=['http://bbc.co.uk/rss'])
    overridden = send_task('feeds.tasks.import_feed', args=['later'],
                           routing_key='task.later')
    regular = add.delay(1, 2)
    urgent = add.apply_async((2, 3), routing_key='task.urgent')
    image = compress_image.apply_async(('cat.png',), exchange='mediatasks',
                                       routing_key='image.compress')
    assert ready(broker, 'feed_tasks', 'default', 'image_tasks') == [3, 3, 1]

    start_worker(name="z", args=("-Q", "feed_tasks,default,image_tasks"), env=env)
    feed = {'exchange': 'tasks', 'routing_key': 'feed.import'}
    assert [r.get(timeout=TIMEOUT) for r in (routed, explicit, by_name)] == [feed] * 3
    assert overridden.get(timeout=TIMEOUT) == {'exchange': 'tasks',
                                               'routing_key': 'task.later'}
    assert (regular.get(timeout=TIMEOUT), urgent.get(timeout=TIMEOUT)) == (3, 5)
    assert image.get(timeout=TIMEOUT) == {'exchange': 'mediatasks',
                                          'routing_key': 'image.compress'}
    keys = sorted((run["task"], run["routing_key"]) for run in runs(tmp_path))
    assert keys == [('feeds.tasks.import_feed', 'feed.import')] * 3 + [
        ('feeds.tasks.import_feed', 'task.later'), ('myapp.tasks.compress_image',
                                                    'image.compress'),
        ('tasks.add', 'task.default'), ('tasks.add', 'task.urgent')]


# -- Routing tasks: defining queues, specifying task destination, routers ---------------------

DEFINING_QUEUES = """\
    task_queues = {
        'default': {'exchange': 'default', 'exchange_type': 'direct', 'routing_key': 'default'},
        'videos': {'exchange': 'media', 'exchange_type': 'direct', 'routing_key': 'media.video'},
        'images': {'exchange': 'media', 'exchange_type': 'direct', 'routing_key': 'media.image'},
        'video': {'exchange': 'video', 'exchange_type': 'topic', 'routing_key': 'video.#'},
    }
    task_default_queue = 'default'
    task_default_exchange = 'default'
    task_default_routing_key = 'default'
    """


def test_defining_queues_and_routers(broker, celeryconfig, start_worker, tmp_path):
    """"Defining queues": default, videos and images on two direct exchanges, with
    task_default_queue/exchange/routing_key 'default' (plus the topic exchange 'video' of the
    router example). Routers: the guide's route_task installed with task_routes =
    (route_task,), or by name ('myapp.routers.route_task'); the guide's dict {'queue':
    'video', 'routing_key': 'video.compress'} "expanded with the defined settings of that
    queue" (its exchange 'video'); a router answering with a queue name; a list [router,
    router, dict] visited in turn, the first answer chosen. A worker started without
    -Q consumes every queue of task_queues."""
    celeryconfig(DEFINING_QUEUES, "from routingidioms import route_task\n"
                                  "task_routes = (route_task,)\n")
    # README, Task options: exchange_type is refused on calls ("Refused with a
    # ConfigurationError where they are written"); the route's hint says to declare the
    # exchange and its type in QUEUES (task_queues), as DEFINING_QUEUES does for 'video'.
    with pytest.raises(ConfigurationError, match="exchange_type"):
        compress_video.delay('refused.mp4')

    celeryconfig(DEFINING_QUEUES, "task_routes = ('routingidioms.route_task_declared',)\n")
    sent = {'by_name': compress_video.delay('a.mp4')}
    celeryconfig(DEFINING_QUEUES, """\
        task_routes = {
            'myapp.tasks.compress_video': {
                'queue': 'video',
                'routing_key': 'video.compress',
            },
        }
        """)
    sent['dict'] = compress_video.delay('a2.mp4')
    celeryconfig(DEFINING_QUEUES, """\
        from routingidioms import route_by_queue_name, route_task_declared

        task_routes = [
            route_task_declared,
            route_by_queue_name,
            {
                'myapp.tasks.compress_video': {
                    'queue': 'videos',
                    'routing_key': 'media.video',
                },
                'myapp.tasks.compress_image': {'queue': 'videos'},
                'image.tasks.*': {'queue': 'images', 'routing_key': 'media.image'},
            },
        ]
        """)
    sent.update(first=compress_video.delay('b.mp4'), queue_name=compress_image.delay('c.png'),
                expanded=thumbnail.delay('d.png'), unrouted=add.delay(2, 2),
                explicit=render_page.apply_async(('e',), exchange='media',
                                                 routing_key='media.video'))
    assert ready(broker, 'default', 'videos', 'images', 'video') == [1, 1, 2, 3]

    env = celeryconfig(DEFINING_QUEUES)
    start_worker(name="w", env=env)
    got = {key: result.get(timeout=TIMEOUT) for key, result in sent.items()}
    assert got == {
        'by_name': {'exchange': 'video', 'routing_key': 'video.compress'},
        'dict': {'exchange': 'video', 'routing_key': 'video.compress'},
        'first': {'exchange': 'video', 'routing_key': 'video.compress'},
        'queue_name': {'exchange': '', 'routing_key': 'images'},
        'expanded': {'exchange': 'media', 'routing_key': 'media.image'},
        'unrouted': 4,
        'explicit': {'exchange': 'media', 'routing_key': 'media.video'},
    }
    assert [run["routing_key"] for run in runs(tmp_path) if run["task"] == 'tasks.add'] == \
        ['default']


# -- AMQP primer: exchange types; Broadcast -----------------------------------------------------

def test_topic_bindings_and_a_fanout_broadcast(broker, celeryconfig, start_worker, tmp_path):
    """Topic exchanges: "bindings could be *.news (all news), usa.# (all items in the USA),
    or usa.weather (all USA weather items)"; `*` is one word, `#` zero or more, and a message
    goes to every queue whose binding matches. Broadcast: 'tasks.reload_cache' routed to the
    fanout exchange 'broadcast_tasks' reaches every queue bound to it (the guide's beat
    variant routes by {'exchange': 'broadcast_tasks'}; kombu's Broadcast queue, one
    auto-named queue per worker, is not there: here each queue is declared by name), also
    from the guide's beat_schedule entry with 'options': {'exchange': 'broadcast_tasks'} (an
    interval of 3 hours where the guide has crontab(minute=0, hour='*/3'): README, Periodic
    tasks, "An interval is sent as soon as the beat first meets it; a crontab waits for its
    next time"). One worker, with -B, consumes all of them and runs each copy."""
    env = celeryconfig("""\
        task_queues = {
            'news': {'exchange': 'reports', 'exchange_type': 'topic', 'routing_key': '*.news'},
            'usa': {'exchange': 'reports', 'exchange_type': 'topic', 'routing_key': 'usa.#'},
            'usa_weather': {'exchange': 'reports', 'exchange_type': 'topic',
                            'routing_key': 'usa.weather'},
            'cache_x': {'exchange': 'broadcast_tasks', 'exchange_type': 'fanout'},
            'cache_y': {'exchange': 'broadcast_tasks', 'exchange_type': 'fanout'},
        }
        task_routes = {'tasks.reload_cache': {'exchange': 'broadcast_tasks'}}

        beat_schedule = {
            'test-task': {
                'task': 'tasks.reload_cache',
                'schedule': 3 * 60 * 60,
                'options': {'exchange': 'broadcast_tasks'}
            },
        }
        """)
    keys = ['usa.news', 'usa.weather', 'norway.news', 'usa', 'usa.news.today']
    for number, key in enumerate(keys):
        add.apply_async((number, 100), exchange='reports', routing_key=key)
    with pytest.raises(UnroutableError):
        add.apply_async((9, 100), exchange='reports', routing_key='norway.weather',
                        mandatory=True)
    reload_cache.delay('everything')
    # README, Routing: queue= "sends the message straight to that queue through the default
    # exchange """ (Celery would publish to the queue's fanout exchange): one copy.
    reload_cache.apply_async(('one',), queue='cache_x')
    assert ready(broker, 'news', 'usa', 'usa_weather', 'cache_x', 'cache_y') == \
        [2, 4, 1, 2, 1]

    start_worker(name="w", args=("-Q", "news,usa,usa_weather,cache_x,cache_y", "-B"),
                 env=env)
    wait_for(lambda: len(runs(tmp_path)) >= 12, TIMEOUT, what="twelve runs")
    settle(broker)
    got = sorted((run["task"], run["routing_key"], run["argument"]) for run in runs(tmp_path))
    assert got == sorted([
        ('tasks.add', 'usa.news', '100'), ('tasks.add', 'usa.news', '100'),
        ('tasks.add', 'usa.weather', '101'), ('tasks.add', 'usa.weather', '101'),
        ('tasks.add', 'norway.news', '102'), ('tasks.add', 'usa', '103'),
        ('tasks.add', 'usa.news.today', '104'),
        ('tasks.reload_cache', 'cache_x', 'one'),
    ] + [('tasks.reload_cache', 'minitask', 'everything')] * 2      # task_default_routing_key
      + [('tasks.reload_cache', 'minitask', '')] * 2)                # from the beat


# -- Special routing options: message priorities ----------------------------------------------

def test_message_priorities_on_a_declared_queue(broker, celeryconfig, start_worker, tmp_path):
    """"Queues can be configured to support priorities by setting the x-max-priority
    argument", or task_queue_max_priority for all queues; then priority= orders the queue.
    README, Configuration: task_queue_max_priority is accepted ("every queue has priorities
    0..9 (0 first)"); Task options: priority is "0..9, **0 is the highest** (RabbitMQ's
    Celery counts the other way)", so the most urgent calls here are sent with 0. Celery's
    queue_arguments used to be refused as an unknown key of task_queues."""
    env = celeryconfig("""\
        task_queues = {
            'tasks': {'exchange': 'tasks', 'routing_key': 'tasks',
                      'queue_arguments': {'x-max-priority': 10}},
        }
        task_queue_max_priority = 10
        task_routes = {'tasks.add': {'queue': 'tasks'},
                       'tasks.cleanup': {'queue': 'tasks', 'priority': 0}}
        """)
    for number, priority in enumerate([9, 5, None, 0, 9, 1]):
        add.apply_async((number, 0), priority=priority)
    routed = cleanup.delay('urgent')                        # the route's priority
    assert ready(broker, 'tasks') == [7]
    start_worker(name="w", args=("-Q", "tasks", "-c", "1", "--prefetch-multiplier", "1"),
                 env=env)
    assert routed.get(timeout=TIMEOUT) == {'exchange': '', 'routing_key': 'tasks'}
    wait_for(lambda: len(runs(tmp_path)) == 7, TIMEOUT, what="seven runs")
    order = [(run["task"], run["priority"], run["argument"]) for run in runs(tmp_path)]
    assert order == [('tasks.add', '0', '3'), ('tasks.cleanup', '0', 'urgent'),
                     ('tasks.add', '1', '5'), ('tasks.add', '', '2'), ('tasks.add', '5', '1'),
                     ('tasks.add', '9', '0'), ('tasks.add', '9', '4')]


def test_the_destination_is_decided_by_routes_then_call_options_then_task_attributes(
        broker, celeryconfig, start_worker, tmp_path):
    """"Specifying task destination": the routers of task_routes, the routing arguments to
    apply_async, the task's own attributes ("sensible defaults can still be set as task
    attributes"). A route beats the task's queue attribute; a call's queue= or routing_key=
    overrides the route (the guide's "You can also override this using the routing_key
    argument to apply_async, or send_task"; README, Routing: "Precedence, as in Celery: the
    call's own queue, exchange, routing_key and priority, then TASK_ROUTES, then the task's
    options")."""
    celeryconfig("task_routes = {'tasks.add': {'queue': 'routed'}}\n")
    by_attribute = cleanup.delay('tmp')                     # @shared_task(queue='maintenance')
    assert ready(broker, 'maintenance') == [1]
    env = celeryconfig("task_routes = {'tasks.cleanup': {'queue': 'routed'}, "
                       "'tasks.add': {'exchange': 'minitask', 'routing_key': 'nowhere'}}\n")
    by_route = cleanup.delay('cache')
    by_call = cleanup.apply_async(('logs',), queue='direct')
    by_name = send_task('tasks.cleanup', args=['spool'])
    by_key = add.apply_async((1, 1), routing_key='minitask')     # the default queue's key
    assert ready(broker, 'maintenance', 'routed', 'direct', 'minitask') == [1, 2, 1, 1]
    start_worker(name="w", args=("-Q", "maintenance,routed,direct,minitask"), env=env)
    assert [r.get(timeout=TIMEOUT) for r in (by_attribute, by_route, by_call, by_name)] == [
        {'exchange': '', 'routing_key': queue}
        for queue in ('maintenance', 'routed', 'direct', 'routed')]
    assert by_key.get(timeout=TIMEOUT) == 2
    wait_for(lambda: len(runs(tmp_path)) == 5, TIMEOUT, what="five runs")
    assert [(run["exchange"], run["routing_key"]) for run in runs(tmp_path)
            if run["task"] == 'tasks.add'] == [('minitask', 'minitask')]


def test_a_worker_named_z_at_percent_h(broker, celeryconfig, start_worker, tmp_path):
    """The guide starts server z with `celery -A proj worker -Q feed_tasks --hostname=z@%h`
    (and x, y with `--hostname=x@%h`): Celery expands %h to the machine's host name, so the
    worker is z@<host>. It used to be named 'z@%h'."""
    env = celeryconfig(MANUAL_ROUTING)
    start_worker(name="z", args=("-Q", "feed_tasks", "--hostname=z@%h"), env=env,
                 ready=False)
    wait_for(lambda: broker.status()["workers"], TIMEOUT, what="the worker to connect")
    result = feeds_import_feed.delay('http://cnn.com/rss')
    assert result.get(timeout=TIMEOUT) == {'exchange': 'tasks', 'routing_key': 'feed.import'}
    run, = runs(tmp_path)
    assert run["hostname"] == 'z@' + socket.gethostname()


def test_task_routes_route_every_task_of_a_workflow(broker, celeryconfig, start_worker,
                                                    tmp_path):
    """task_routes decides where each task goes, whoever sends it: a chain's next link and a
    link callback (sent on by the worker), a group's members and a chord's body."""
    env = celeryconfig("task_routes = {'feed.tasks.*': {'queue': 'feeds'}}\n")
    start_worker(name="w", args=("-Q", "feeds,minitask"), env=env)
    feed = {'exchange': '', 'routing_key': 'feeds'}
    assert (add.s(1, 2) | parse_feed.s()).delay().get(timeout=TIMEOUT) == feed
    assert group(parse_feed.s(str(n)) for n in range(2))().get(timeout=TIMEOUT) == [feed] * 2
    assert chord((add.s(n, n) for n in range(2)), parse_feed.s())().get(timeout=TIMEOUT) == \
        feed
    linked = add.apply_async((2, 2), link=parse_feed.s())
    assert linked.get(timeout=TIMEOUT) == 4
    wait_for(lambda: linked.children, TIMEOUT, what="the callback among the children")
    assert linked.children[0].get(timeout=TIMEOUT) == feed
    routed = sorted(run["argument"] for run in runs(tmp_path)
                    if run["task"] == 'feed.tasks.parse_feed' and run["routing_key"] == 'feeds')
    assert routed == ['0', '1', '3', '4', '[0, 2]']
