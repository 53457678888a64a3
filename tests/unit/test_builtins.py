"""minitask.builtins: ping, map_async, execute_remote (pickle only where accepted) and
http_dispatch against a local http.server (the one test module here that opens a loopback
socket: port 0, served from a thread, shut down after)."""
import http.server
import json
import operator
import pickle
import threading
import urllib.parse

import pytest

from minitask import config, registry, task
from minitask.builtins import send_callable
from minitask.exceptions import (
    ContentDisallowed, MinitaskError, NotRegistered, ProtocolError, RemoteTaskError,
)

UNPICKLED = []


def record_unpickling(tag):
    UNPICKLED.append(tag)
    return operator.add


class Tripwire:
    """Unpickling this records it: proof that execute_remote did (or did not) unpickle."""

    def __reduce__(self):
        return (record_unpickling, ("tripwire",))


from taskkit import isolated_tasks, no_broker  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@task(name="tests.builtins.add")
def add(x, y):
    return x + y


def builtin(name):
    return registry.tasks["minitask." + name]


# -- ping and map_async ------------------------------------------------------------------------

def test_ping_answers_pong():
    assert builtin("ping")() == "pong"
    assert builtin("ping").apply().get() == "pong"


def test_map_async_runs_a_registered_task_over_argument_tuples():
    result = builtin("map_async").apply((add.name, [(1, 2), [3, 4], (5, 6)]))
    assert result.get() == [3, 7, 11]


def test_map_async_takes_a_lone_argument_as_a_one_argument_call():
    @task(name="tests.builtins.negate")
    def negate(x):
        return -x

    assert builtin("map_async").apply(("tests.builtins.negate", [1, 2])).get() == [-1, -2]


def test_map_async_of_an_unknown_task_fails_with_not_registered_naming_it():
    result = builtin("map_async").apply(("tests.builtins.nowhere", [(1,)]))
    assert result.failed()
    with pytest.raises(NotRegistered, match="tests.builtins.nowhere"):
        result.get()


# -- execute_remote ----------------------------------------------------------------------------

def test_execute_remote_is_refused_unless_pickle_is_accepted():
    del UNPICKLED[:]
    result = builtin("execute_remote").apply((pickle.dumps(Tripwire()), (1, 2)))
    assert result.failed()
    with pytest.raises(ContentDisallowed, match="ACCEPT_CONTENT"):
        result.get()
    assert UNPICKLED == []


def test_execute_remote_called_directly_is_refused_too():
    with pytest.raises(ContentDisallowed):
        builtin("execute_remote")(pickle.dumps(operator.add), (1, 2))


def test_execute_remote_runs_the_pickled_callable_when_pickle_is_accepted():
    config.configure(ACCEPT_CONTENT=["json", "pickle"])
    result = builtin("execute_remote").apply((pickle.dumps(operator.mul), (6, 7)))
    assert result.get() == 42
    kwargs = builtin("execute_remote").apply(
        (pickle.dumps(int),), {"fargs": ("ff",), "fkwargs": {"base": 16}})
    assert kwargs.get() == 255


def test_execute_remote_accepts_pickle_named_by_content_type():
    config.configure(ACCEPT_CONTENT=["application/x-python-serialize"])
    assert builtin("execute_remote").apply((pickle.dumps(operator.sub), (5, 3))).get() == 2


def test_execute_remote_refuses_something_that_is_not_pickle_bytes():
    config.configure(ACCEPT_CONTENT=["json", "pickle"])
    with pytest.raises(TypeError):
        builtin("execute_remote")(operator.add, (1, 2))


def test_send_callable_runs_eagerly_under_always_eager_when_pickle_is_accepted(no_broker):
    config.configure(ALWAYS_EAGER=True, ACCEPT_CONTENT=["json", "pickle"])
    assert send_callable(operator.mul, 6, 7).get() == 42


# -- http_dispatch -----------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    """/ok echoes the method and parameters as retval; /fail fails with a reason;
    /html answers with something that is not JSON; /odd with JSON of an unknown status."""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.answer(url.path, urllib.parse.parse_qs(url.query))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        self.answer(urllib.parse.urlsplit(self.path).path, urllib.parse.parse_qs(body))

    def answer(self, path, params):
        if path == "/ok":
            reply = {"status": "success",
                     "retval": {"method": self.command,
                                "params": {k: v[0] for k, v in params.items()}}}
            self.send(200, json.dumps(reply).encode(), "application/json")
        elif path == "/fail":
            reply = {"status": "failure", "reason": "the cupboard is bare"}
            self.send(200, json.dumps(reply).encode(), "application/json")
        elif path == "/html":
            self.send(200, b"<html>not json</html>", "text/html")
        elif path == "/odd":
            self.send(200, b'{"status": "maybe"}', "application/json")
        else:
            self.send(404, b"no such page", "text/plain")

    def send(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass                            # keep the test output clean


@pytest.fixture(scope="module")
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def direct(monkeypatch):
    """No proxy between us and the loopback server, whatever the environment says."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def dispatch(**kwargs):
    return builtin("http_dispatch").apply(kwargs=kwargs)


def test_http_dispatch_get_success_is_the_retval(http_url, direct):
    result = dispatch(url=http_url + "/ok", x="1", name="ann")
    assert result.get() == {"method": "GET", "params": {"x": "1", "name": "ann"}}


def test_http_dispatch_post_sends_the_kwargs_as_a_form(http_url, direct):
    result = dispatch(url=http_url + "/ok", method="POST", x="2")
    assert result.get() == {"method": "POST", "params": {"x": "2"}}


def test_http_dispatch_keeps_a_query_already_in_the_url(http_url, direct):
    result = dispatch(url=http_url + "/ok?fixed=yes", x="3")
    assert result.get()["params"] == {"fixed": "yes", "x": "3"}


def test_http_dispatch_never_sends_the_default_kwargs(http_url, direct):
    result = builtin("http_dispatch").apply(kwargs={"url": http_url + "/ok"},
                                            logfile="/tmp/x.log", loglevel="INFO")
    assert result.get() == {"method": "GET", "params": {}}


def test_http_dispatch_failure_is_a_remote_task_error_with_the_reason(http_url, direct):
    result = dispatch(url=http_url + "/fail")
    assert result.failed()
    with pytest.raises(RemoteTaskError, match="the cupboard is bare"):
        result.get()


def test_http_dispatch_of_an_answer_that_is_not_json_is_a_protocol_error(http_url, direct):
    with pytest.raises(ProtocolError, match="JSON"):
        dispatch(url=http_url + "/html").get()


def test_http_dispatch_of_an_unknown_status_is_a_protocol_error(http_url, direct):
    with pytest.raises(ProtocolError, match="maybe"):
        dispatch(url=http_url + "/odd").get()


def test_http_dispatch_of_an_http_error_is_a_remote_task_error_naming_the_code(http_url,
                                                                               direct):
    with pytest.raises(RemoteTaskError, match="404"):
        dispatch(url=http_url + "/missing").get()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "file:///etc/passwd",
                                 "javascript:alert(1)", "127.0.0.1/ok"])
def test_http_dispatch_refuses_a_url_that_is_not_http(url):
    result = dispatch(url=url)
    assert result.failed()
    with pytest.raises((ValueError, MinitaskError), match="http"):
        result.get()
    assert url in str(result.result)


def test_http_dispatch_refuses_methods_other_than_get_and_post(http_url):
    with pytest.raises((ValueError, MinitaskError), match="DELETE"):
        dispatch(url=http_url + "/ok", method="DELETE").get()
