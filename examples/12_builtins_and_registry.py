"""12. How it works: the task registry, and the tasks built into minitask.

Every task is registered by name in ``minitask.registry.tasks`` when its class is created
(the metaclass `TaskType` does it), or when @task() wraps a function. An abstract task type
(``abstract = True``) is not registered; its subclasses are. Messages carry only the name:
the worker looks it up in its own registry, so workers must run the same task code as the
clients that send to them.

The built-in tasks are always there, because importing minitask registers them:

- ``minitask.ping``: answers "pong";
- ``minitask.map_async``: runs a task by name once per argument tuple, in one worker;
- ``minitask.map`` and ``minitask.starmap``: the same for a signature, as ``task.map(it)``
  and ``task.starmap(it)`` send them (see example 15);
- ``minitask.execute_remote``: runs a pickled callable (only where ACCEPT_CONTENT allows
  pickle, as this example's worker does);
- ``minitask.http_dispatch``: calls a URL with the task's keyword arguments; a JSON answer
  ``{"status": "success", "retval": ...}`` is the result (it stands in for early Celery's
  ``rest`` tasks; here a small web server in this process answers);
- ``minitask.delete_expired_task_meta``: removes expired results now.

Run it:  python examples/12_builtins_and_registry.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import http.server
import json
import operator
import threading
import urllib.parse

from minitask import Task, registry, task
from minitask.builtins import http_dispatch, map_async, ping, send_callable


class BaseFeedTask(Task):
    abstract = True             # not registered: a base for the tasks below

    def fetch(self, url):
        return "<feed %s>" % url


class RefreshFeedTask(BaseFeedTask):
    def run(self, url):
        return self.fetch(url)


@task()
def add(x, y):
    return x + y


@task()
def registered_names():
    """The worker's own registry, as the worker sees it."""
    return sorted(registry.tasks)


class _Adder(http.server.BaseHTTPRequestHandler):
    """Answers GET /add?x=..&y=.. the way http_dispatch expects."""

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        body = json.dumps({"status": "success",
                           "retval": int(query["x"][0]) + int(query["y"][0])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass                    # keep the example's output to what it prints


def main(cluster):
    # Run as a script, this file was first executed as __main__, which registered its tasks
    # under "__main__.*" too (see _run.py); the worker never sees those names.
    names = sorted(name for name in registry.tasks if not name.startswith("__main__."))
    print("registry.tasks:")
    for name in names:
        print("  " + name)
    print("the worker's registry has them all: %s"
          % set(names).issubset(registered_names.delay().get(timeout=10)))
    print("BaseFeedTask (abstract) registered here: %s; RefreshFeedTask: %s"
          % (BaseFeedTask.name in registry.tasks, RefreshFeedTask.name in registry.tasks))
    print("registry.tasks[%r] is add: %s" % (add.name, registry.tasks[add.name] is add))

    print("ping.delay().get() = %r" % ping.delay().get(timeout=10))
    print("map_async.delay(add.name, [(1, 1), (2, 2), (3, 3)]).get() = %r"
          % map_async.delay(add.name, [(1, 1), (2, 2), (3, 3)]).get(timeout=10))
    print("send_callable(operator.mul, 6, 7).get() = %r"
          % send_callable(operator.mul, 6, 7).get(timeout=10))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Adder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = "http://127.0.0.1:%d/add" % server.server_address[1]
        result = http_dispatch.delay(url, x=20, y=22)
        print("http_dispatch.delay('http://127.0.0.1:PORT/add', x=20, y=22).get() = %r"
              % result.get(timeout=10))
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    _run.example(__file__, settings={"ACCEPT_CONTENT": ["json", "pickle"]})
