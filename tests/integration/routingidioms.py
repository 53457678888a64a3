"""The tasks and routers of Celery's "Routing Tasks" user guide (docs/userguide/routing.rst,
Celery 5), written as the guide writes them (``@app.task`` is ``@shared_task`` here), for
test_routingidioms.py.

The guide names its tasks by module (``feed.tasks.import_feed``, ``myapp.tasks.compress_video``,
``tasks.reload_cache``), and its routes match those names, so each task here carries the
guide's name. Every run traces one line to ITTASKS_DIR/trace-runs.log (see ittasks._trace):
``name|exchange|routing_key|priority|hostname|argument``, from the request's delivery_info,
so that the test, in another process, sees where each message came from.
"""

from minitask import shared_task

from ittasks import _trace


def _ran(task, argument=None):
    info = task.request.delivery_info or {}
    row = (task.name, info.get("exchange"), info.get("routing_key"), info.get("priority"),
           task.request.hostname, argument)
    _trace("runs", "|".join("" if value is None else str(value) for value in row))
    return {"exchange": info.get("exchange"), "routing_key": info.get("routing_key")}


# -- Automatic routing: "feed.tasks.import_feed" and the other name-spaces -------------------

@shared_task(bind=True, name='feed.tasks.import_feed')
def import_feed(self, url):
    return _ran(self, url)


@shared_task(bind=True, name='feed.tasks.parse_feed')
def parse_feed(self, url):
    return _ran(self, url)


@shared_task(bind=True, name='web.tasks.render_page')
def render_page(self, page):
    return _ran(self, page)


@shared_task(bind=True, name='video.tasks.transcode')
def transcode(self, path):
    return _ran(self, path)


@shared_task(bind=True, name='image.tasks.thumbnail')
def thumbnail(self, path):
    return _ran(self, path)


# -- Manual routing: the guide spells this one "feeds.tasks.import_feed" ---------------------

@shared_task(bind=True, name='feeds.tasks.import_feed')
def feeds_import_feed(self, url):
    return _ran(self, url)


# -- Routers: "myapp.tasks.compress_video" ---------------------------------------------------

@shared_task(bind=True, name='myapp.tasks.compress_video')
def compress_video(self, path):
    return _ran(self, path)


@shared_task(bind=True, name='myapp.tasks.compress_image')
def compress_image(self, path):
    return _ran(self, path)


# -- Broadcast: "tasks.reload_cache", with ignore_result as the guide advises ----------------

@shared_task(bind=True, name='tasks.reload_cache', ignore_result=True)
def reload_cache(self, what=None):
    _ran(self, what)


# -- A regular task for the default queue, and one with routing attributes of its own --------

@shared_task(bind=True, name='tasks.add')
def add(self, x, y):
    _ran(self, x + y)
    return x + y


@shared_task(bind=True, name='tasks.cleanup', queue='maintenance')
def cleanup(self, what):
    """'sensible defaults can still be set as task attributes'."""
    return _ran(self, what)


# -- Routers -----------------------------------------------------------------------------------

def route_task(name, args, kwargs, options, task=None, **kw):
    """The guide's router, as printed (its ``**kwargs`` twice is a SyntaxError in Python:
    the second one is ``**kw`` here)."""
    if name == 'myapp.tasks.compress_video':
        return {'exchange': 'video',
                'exchange_type': 'topic',
                'routing_key': 'video.compress'}


def route_task_declared(name, args, kwargs, options, task=None, **kw):
    """The same router without ``exchange_type``: the "video" topic exchange is declared in
    task_queues instead (README, Routing: exchanges and their types are declared there)."""
    if name == 'myapp.tasks.compress_video':
        return {'exchange': 'video',
                'routing_key': 'video.compress'}


def route_by_queue_name(name, args, kwargs, options, task=None, **kw):
    """A router may answer with a queue name alone (Celery's expand_destination)."""
    if name == 'myapp.tasks.compress_image':
        return 'images'
    return None
