"""The broker's status page (``broker --http``), read over real HTTP from a real broker.

The broker prints a second ready line, ``minitask status page on http://HOST:PORT/``, which
gives the port picked by ``--http 127.0.0.1:0``. Messages are published and results stored
through the client; the endpoints must then report them exactly, refuse what they should, and
the page must render them in a headless Chromium (skipped where Chromium is not installed).
"""

import base64
import html.parser
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from cluster import Broker, Worker, wait_for
from minitask import protocol as P
from minitask.transport.builtin import Connection
from minitask.message import ResultMeta, TaskMessage, encode_result_meta

QUEUE = "it.status"
XSS = "<img src=x onerror=\"document.title='pwned'\">"
TRACEBACK = ('Traceback (most recent call last):\n  File "ittasks.py", line 42, in fail\n'
             '    raise ValueError(message)\nValueError: disk on fire ' + XSS + '\n')


class PageClient:
    """GETs from a status page at `base`, with the secret as the Basic auth password."""

    def __init__(self, base, secret=None, tls=None):
        self.base, self.secret, self.tls = base, secret, tls

    def get(self, path, password=None, method="GET"):
        """``(status, headers, body bytes)``; the secret is sent unless told otherwise."""
        password = self.secret if password is None else password
        request = urllib.request.Request(self.base + path.lstrip("/"), method=method)
        if password:
            token = base64.b64encode(("status:%s" % password).encode()).decode()
            request.add_header("Authorization", "Basic " + token)
        # No proxy from the environment: the page is on this machine.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self.tls))
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def json(self, path):
        status, headers, body = self.get(path)
        assert status == 200, (status, body)
        assert headers["Content-Type"] == "application/json"
        return json.loads(body)


class StatusBroker(PageClient):
    """A broker started with ``--http 127.0.0.1:0``, and a client of its status page."""

    def __init__(self, tmp_path, args=(), secret=None):
        extra = ["--http", "127.0.0.1:0"] + list(args)
        if secret is not None:
            path = tmp_path / "secret"
            path.write_text(secret)
            extra += ["--secret-file", str(path)]
        self.broker = Broker(tmp_path, args=extra).start()
        line = wait_for(lambda: next((text for text in self.broker.proc.lines
                                      if text.startswith("minitask status page on ")), None),
                        10.0, what="the status page line")
        super().__init__(line.rsplit(" ", 1)[1], secret)

    def connect(self):
        return Connection(self.broker.url, secret=self.secret).connect()

    def close(self):
        self.broker.proc.close()


@pytest.fixture
def page(tmp_path):
    instance = StatusBroker(tmp_path)
    try:
        yield instance
    finally:
        instance.close()


def publish_tasks(conn, count, name="it.add"):
    conn.declare_queue(QUEUE)
    ids = []
    for i in range(count):
        message = TaskMessage(name, (i, i), routing_key=QUEUE)
        conn.publish(message.encode())
        ids.append(message.id)
    return ids


def store_failure(conn, task_id, task="it.fail", message="disk on fire " + XSS):
    content_type, payload = encode_result_meta(ResultMeta(
        task_id, "FAILURE", result=ValueError(message), traceback=TRACEBACK, task=task))
    conn.set_result(task_id, "FAILURE", content_type, payload)


def busy_worker(page):
    """A client that says it is a worker, with a prefetch of two: it starts both deliveries,
    one acked early (the worker's default) and one acked late, and so is sent a third."""
    worker = Connection(page.broker.url, secret=page.secret, worker_info={
        "hostname": "w1@test", "pid": 4242, "concurrency": 2, "queues": [QUEUE]}).connect()
    worker.qos(2)
    worker.consume(QUEUE)
    first, second = worker.get_delivery(5), worker.get_delivery(5)
    assert first is not None and second is not None
    worker.ack([first.delivery_tag], started=True)
    worker.send_frames(P.encode_tags(P.START, 0, [second.delivery_tag]))

    def settled():
        workers = page.json("/api/status.json")["workers"]
        return workers and (workers[0]["running"], workers[0]["delivered"]) == (2, 3)
    wait_for(settled, 10.0, what="the worker's two running tasks and a third delivery")
    return worker, first, second


def queue_row(status, name=QUEUE):
    return next(q for q in status["queues"] if q["name"] == name)


def test_status_json_reports_queues_workers_running_tasks_and_rates(page):
    with page.connect() as conn:
        publish_tasks(conn, 5)
        worker, early, late = busy_worker(page)
        try:
            status = page.json("/api/status.json")
            row = queue_row(status)
            assert (row["ready"], row["unacked"], row["delayed"], row["dead"]) == (2, 2, 0, 0)
            assert (row["published"], row["delivered"], row["acked"]) == (5, 3, 1)
            (w,) = status["workers"]
            assert (w["hostname"], w["pid"], w["concurrency"]) == ("w1@test", 4242, 2)
            assert (w["reserved"], w["running"], w["delivered"]) == (1, 2, 3)
            assert w["connected_for"] >= 0
            running = {r["task_id"]: r for r in status["running"]}
            assert set(running) == {early.message.message_id, late.message.message_id}
            assert running[late.message.message_id]["task"] == "it.add"
            assert running[early.message.message_id]["worker"] == "w1@test"
            assert status["broker"]["connections"] == 2
            rates = wait_for(lambda: page.json("/api/status.json")["rates"]["window"] > 0
                             and page.json("/api/status.json")["rates"], 10.0,
                             what="two samples for the rates")
            assert set(rates) >= {"published", "delivered", "acked", "window", "queues"}
            assert all(rates[key] >= 0 for key in ("published", "delivered", "acked"))
        finally:
            worker.close()


def test_rates_count_what_was_published_in_the_window(page):
    wait_for(lambda: len(page.json("/api/history.json")["samples"]) >= 2, 10.0,
             what="two samples")
    with page.connect() as conn:
        publish_tasks(conn, 20)

    def all_twenty():
        rates = page.json("/api/status.json")["rates"]
        return rates if abs(rates["published"] * rates["window"] - 20) < 0.1 else None
    # The rate times its window is what was published in it, once a sample has all twenty.
    rates = wait_for(all_twenty, 10.0, what="a rate counting the twenty messages")
    assert 0 < rates["window"] <= 6.0
    assert rates["queues"][QUEUE]["published"] == rates["published"]
    assert rates["delivered"] == rates["acked"] == 0


def test_history_keeps_one_sample_a_second_and_answers_since(page):
    with page.connect() as conn:
        publish_tasks(conn, 2)
    history = wait_for(lambda: (lambda h: h if len(h["samples"]) >= 3
                                and h["samples"][-1]["published"] == 2 else None)(
        page.json("/api/history.json")), 10.0, what="three samples, the last after publishing")
    assert history["interval"] == 1.0 and history["capacity"] == 300
    assert history["queue_fields"] == ["ready", "unacked", "delayed", "dead"]
    samples = history["samples"]
    times = [s["time"] for s in samples]
    assert times == sorted(times)
    assert all(0.3 < b - a < 5.0 for a, b in zip(times, times[1:]))
    assert samples[0]["published_rate"] is None or samples[0]["published_rate"] >= 0
    last = samples[-1]
    assert last["queues"][QUEUE] == [2, 0, 0, 0] and last["ready"] == 2
    assert last["published"] == 2
    later = page.json("/api/history.json?since=%r" % samples[-2]["time"])["samples"]
    assert [s["time"] for s in later][:1] == [samples[-1]["time"]]
    assert page.get("/api/history.json?since=yesterday")[0] == 400


# Prometheus text exposition format 0.0.4: `name{label="value",...} number`.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
                     r'\\.)*",?)*\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)$')


def parse_metrics(text):
    """{(name, frozenset of label pairs): value}, checking every line's syntax and TYPE (a
    histogram's samples are its name with _bucket, _sum and _count)."""
    types, values = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, "TYPE of %s given twice" % name
            assert kind in ("gauge", "counter", "histogram")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.match(line)
        assert match, "not exposition format: %r" % line
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", \
            "%s has no TYPE line before it" % name
        pairs = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        values[(name, pairs)] = float(value.replace("+Inf", "inf"))
    return types, values


def test_metrics_are_prometheus_text_with_labelled_queue_gauges(page):
    with page.connect() as conn:
        ids = publish_tasks(conn, 5)
        worker, _early, _late = busy_worker(page)
        store_failure(conn, ids[-1])
        try:
            status, headers, body = page.get("/metrics")
        finally:
            worker.close()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, values = parse_metrics(body.decode("utf-8"))

    def metric(name, **labels):
        return values[(name, frozenset(labels.items()))]
    for state, expected in (("ready", 2), ("unacked", 2), ("delayed", 0), ("dead", 0)):
        assert metric("minitask_queue_messages", queue=QUEUE, state=state) == expected
    assert types["minitask_messages_published_total"] == "counter"
    assert metric("minitask_messages_published_total", queue=QUEUE) == 5
    assert metric("minitask_messages_delivered_total", queue=QUEUE) == 3
    assert metric("minitask_messages_acked_total", queue=QUEUE) == 1
    assert metric("minitask_queue_consumers", queue=QUEUE) == 1
    assert metric("minitask_connections") == 2
    assert metric("minitask_workers") == 1
    assert metric("minitask_tasks_running") == 2
    assert metric("minitask_results") == 1
    assert metric("minitask_journal_bytes") > 0
    assert types["minitask_queue_messages"] == "gauge"


@pytest.fixture
def start_worker(page, tmp_path):
    """Real workers of the page's broker, which is also the client settings' broker."""
    from minitask import config
    from minitask.transport import reset_connection
    config.configure(BROKER_URL=page.broker.url, ACCEPT_CONTENT=["json", "pickle"])
    reset_connection()
    os.environ["ITTASKS_DIR"] = str(tmp_path)
    workers = []

    def start(name):
        worker = Worker(page.broker, tmp_path, name)
        workers.append(worker)
        return worker.wait_ready()
    try:
        yield start
    finally:
        for worker in workers:
            worker.proc.close()
        reset_connection()
        config.reset()


def task_metrics(page):
    """{(metric, task, event or le): value} of the per-task metrics, and the queue labels."""
    types, values = parse_metrics(page.get("/metrics")[2].decode("utf-8"))
    tasks = {}
    for (name, labels), value in values.items():
        labels = dict(labels)
        if "task" in labels:
            tasks[(name, labels["task"], labels.get("event") or labels.get("le"))] = value
    queues = {dict(labels)["queue"] for (name, labels) in values if "queue" in dict(labels)}
    return types, tasks, queues


def test_metrics_count_each_task_name_over_several_workers_and_restarts(page, start_worker):
    """What a Flower user alerts on, counted by the broker: right however many workers ran it,
    and whichever of them restarted; workers' control queues never show up under new names."""
    import ittasks
    first = start_worker("m1")
    results = [ittasks.add.delay(i, i) for i in range(3)]
    results += [ittasks.fail.delay("boom"), ittasks.flaky.delay("metrics", 1),
                ittasks.sleep.delay(0.3), ittasks.mul.delay(2, 3)]
    ittasks.ignored.delay(1)                            # ignore_result: still counted
    with page.connect() as conn:
        conn.revoke(["revoked-before-sent"])
    ittasks.add.apply_async((9, 9), task_id="revoked-before-sent")
    for result in results:
        result.get(timeout=20, propagate=False)
    _types, _tasks, queues_before = task_metrics(page)
    first.stop()
    start_worker("m2")
    start_worker("m3")
    for result in [ittasks.add.delay(i, 1) for i in range(4)]:
        result.get(timeout=20)
    expected = {("it.add", "received"): 7, ("it.add", "succeeded"): 7, ("it.add", "revoked"): 1,
                ("it.add", "failed"): 0, ("it.fail", "received"): 1, ("it.fail", "failed"): 1,
                ("it.flaky", "received"): 2, ("it.flaky", "retried"): 1,
                ("it.flaky", "succeeded"): 1, ("it.sleep", "succeeded"): 1,
                ("it.mul", "succeeded"): 1, ("it.ignored", "received"): 1,
                ("it.ignored", "succeeded"): 1}

    def counted():
        types, tasks, queues = task_metrics(page)
        got = {key: tasks.get(("minitask_task_events_total",) + key) for key in expected}
        return (types, tasks, queues) if got == expected else None
    types, tasks, queues_after = wait_for(counted, 20, what="the per-task counts")
    assert types["minitask_task_events_total"] == "counter"
    assert types["minitask_task_runtime_seconds"] == "histogram"
    buckets = [(float(le), value) for (name, task, le), value in tasks.items()
               if name == "minitask_task_runtime_seconds_bucket" and task == "it.add"]
    counts = [value for _le, value in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 7         # cumulative, +Inf = all
    assert tasks[("minitask_task_runtime_seconds_count", "it.add", None)] == 7
    assert 0 < tasks[("minitask_task_runtime_seconds_sum", "it.add", None)] < 7
    assert tasks[("minitask_task_runtime_seconds_bucket", "it.sleep", "0.25")] == 0
    assert tasks[("minitask_task_runtime_seconds_bucket", "it.sleep", "+Inf")] == 1
    assert tasks[("minitask_task_runtime_seconds_sum", "it.sleep", None)] >= 0.3
    assert tasks[("minitask_task_runtime_seconds_count", "it.fail", None)] == 0
    # Three workers came and went, each with its own control queue: one label stands for them.
    assert queues_before == queues_after == {"minitask", "mt.gen-*"}


def test_failures_carry_name_exception_and_traceback(page, tmp_path):
    with page.connect() as conn:
        ids = publish_tasks(conn, 2)
        store_failure(conn, ids[0])
        # A result stored as pickle must never be unpickled by the broker: this one would
        # create a directory when loaded.
        marker = tmp_path / "unpickled"
        payload = (b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR.")
        conn.set_result(ids[1], "FAILURE", "application/x-python-serialize", payload)
        status, _headers, body = page.get("/api/failures.json")
    assert status == 200
    failures = json.loads(body)["failures"]
    assert [f["task_id"] for f in failures] == [ids[1], ids[0]]          # newest first
    pickled, failed = failures
    assert failed["task"] == "it.fail" and failed["state"] == "FAILURE"
    assert failed["exc_type"] == "ValueError"
    assert failed["exc_message"] == "disk on fire " + XSS
    assert failed["traceback"] == TRACEBACK
    assert failed["time"] > 0
    assert "not shown" in pickled["exc_message"] and pickled["traceback"] is None
    assert not marker.exists()


def test_bad_requests_get_errors_and_the_server_carries_on(page):
    assert page.get("/nowhere")[0] == 404
    status, headers, _ = page.get("/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert page.get("/api/status.json", method="DELETE")[0] == 405
    status, headers, body = page.get("/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    host, port = page.base.split("//")[1].rstrip("/").split(":")
    for junk in (b"GARBAGE\r\n\r\n", b"\x00\xff\xfe\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                 b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(100)
        assert reply == b"" or re.match(rb"HTTP/1\.[01] (400|414|505|200)", reply), reply
    assert page.get("/api/status.json")[0] == 200
    assert page.broker.proc.alive()


def test_the_page_is_self_contained_with_a_strict_policy(page):
    status, headers, body = page.get("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    text = body.decode("utf-8")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy
    assert " src=" not in text and "<link rel=\"stylesheet\"" not in text
    # The only absolute URL is the SVG namespace, which is a name and is never fetched.
    assert re.findall(r"https?://[^\"' ]+", text) == ["http://www.w3.org/2000/svg"]
    assert "innerHTML" not in text


def test_a_secret_is_required_when_the_broker_has_one(tmp_path):
    page = StatusBroker(tmp_path, secret="s3cret-for-the-page")
    try:
        for path in ("/", "/metrics", "/api/status.json", "/nowhere"):
            status, headers, _ = page.get(path, password="")
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert page.get("/api/status.json", password="wrong")[0] == 401
        with page.connect() as conn:
            publish_tasks(conn, 1)
        assert queue_row(page.json("/api/status.json"))["ready"] == 1
        assert page.get("/metrics")[0] == 200
    finally:
        page.close()


def test_beyond_loopback_the_page_needs_a_secret(tmp_path):
    broker = Broker(tmp_path, args=["--http", "0.0.0.0:0"])
    with pytest.raises(AssertionError) as failed:
        broker.start()
    assert "refusing to serve the status page on 0.0.0.0 without a secret" in str(failed.value)


def test_tls_serves_the_page_with_the_brokers_certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    page = StatusBroker(tmp_path, args=["--certfile", cert, "--keyfile", key])
    try:
        assert page.base.startswith("https://127.0.0.1:")
        page.tls = ssl.create_default_context(cafile=cert)
        assert page.json("/api/status.json")["broker"]["pid"] > 0
        plain = page.base.replace("https://", "http://")
        with pytest.raises(OSError):             # URLError and resets are OSErrors
            PageClient(plain).get("/api/status.json")
        assert page.json("/api/status.json")["queues"]
    finally:
        page.close()


class _FakeBroker:
    """Stands in for `BrokerServer`: a loop that never runs calls, or runs them at once."""

    ssl_context = None
    state = None                # status_report(None) raises: a bug in the gathering

    def __init__(self, runs_calls):
        self.runs_calls = runs_calls
        self.calls = []

    def call_in_loop(self, function):
        self.calls.append(function)
        if self.runs_calls:
            function()          # must not raise: the real loop would die of it


def in_process_page(fake):
    from minitask.broker.http import StatusHTTPServer
    server = StatusHTTPServer(fake, ("127.0.0.1", 0))
    return server, PageClient(server.url)


def test_a_loop_that_does_not_answer_costs_a_503_and_queues_one_call():
    fake = _FakeBroker(runs_calls=False)
    server, page = in_process_page(fake)
    server.start()
    try:
        status, headers, body = page.get("/api/status.json")
        assert status == 503 and headers["Retry-After"] == "1"
        assert body.strip()         # why, in a line: the loop did not answer, or still busy
        for path in ("/api/status.json", "/metrics", "/api/failures.json"):
            assert page.get(path)[0] == 503
        assert len(fake.calls) == 1             # not one more per request or per second
        assert page.get("/api/history.json")[0] == 200      # the ring needs no loop call
        assert page.get("/")[0] == 200
    finally:
        server.stop()


def test_a_failing_gathering_costs_a_503_not_the_brokers_loop():
    fake = _FakeBroker(runs_calls=True)
    server, page = in_process_page(fake)
    server.start()
    try:
        status, _headers, body = page.get("/api/status.json")
        assert status == 503 and b"failed" in body
        assert page.get("/metrics")[0] == 503
    finally:
        server.stop()


def test_a_transport_source_that_cannot_reach_its_broker_costs_a_503_then_reconnects():
    """``status --http``: the page of a broker reached over its transport (Redis, say)."""
    from minitask.broker.http import StatusHTTPServer, TransportSource
    from minitask.exceptions import BrokerConnectionError
    reachable = threading.Event()

    class Client:
        def status(self):
            return {"broker": {"time": time.time(), "connections": 1, "version": "x"},
                    "queues": [], "workers": []}

        def close(self):
            pass

    def connect():
        if not reachable.is_set():
            raise BrokerConnectionError("redis://127.0.0.1:1: connection refused")
        return Client()
    server = StatusHTTPServer(None, ("127.0.0.1", 0), source=TransportSource(connect))
    page = PageClient(server.url)
    server.start()
    try:
        status, _headers, body = page.get("/metrics")
        assert status == 503 and b"connection refused" in body
        reachable.set()
        _status, _headers, body = wait_for(
            lambda: (lambda answer: answer if answer[0] == 200 else None)(page.get("/metrics")),
            what="the broker reached again")
        assert b"minitask_workers 0" in body
        assert b"minitask_journal_bytes" not in body    # not in that broker's report
    finally:
        server.stop()


# -- headless Chromium -------------------------------------------------------------------------

CHROMIUM = next((path for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                 if os.path.exists(path)), None)


def chromium(url, tmp_path, *extra):
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               "--no-proxy-server",
               "--user-data-dir=%s" % profile, "--virtual-time-budget=5000"] + list(extra) + [url]
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    return done.stdout.decode("utf-8")


class _DOM(html.parser.HTMLParser):
    """Just enough of a DOM: each element's tag, attributes and text, in document order."""

    def __init__(self):
        super().__init__()
        self.elements, self._open = [], []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self._open)}
        self.elements.append(element)
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, **attrs):
        return [e for e in self.elements
                if all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]


def test_headless_chromium_renders_the_live_numbers(page, tmp_path):
    if CHROMIUM is None:
        print("skipped: no /usr/bin/chromium (apt-get install chromium) to run the page in")
        pytest.skip("Chromium is not installed (Debian package chromium)")
    with page.connect() as conn:
        ids = publish_tasks(conn, 7)
        store_failure(conn, ids[-1], task="it.fail")
        worker, _early, _late = busy_worker(page)
        try:
            wait_for(lambda: len(page.json("/api/history.json")["samples"]) >= 2, 10.0,
                     what="two samples")
            dom = _DOM()
            dom.feed(chromium(page.base, tmp_path, "--dump-dom"))
        finally:
            worker.close()
    (row,) = dom.find(data_queue=QUEUE)
    cells = {e["attrs"]["data-field"]: e["text"].strip() for e in dom.elements
             if row in e["parents"] and "data-field" in e["attrs"]}
    assert (cells["ready"], cells["unacked"], cells["published"]) == ("4", "2", "7")
    assert [e for e in dom.elements if row in e["parents"] and e["tag"] == "svg"]
    (worker_row,) = dom.find(data_worker="w1@test")
    assert "4242" in worker_row["text"]
    assert dom.find(id="total-ready")[0]["text"] == "4"
    assert dom.find(id="rate-published")[0]["text"] not in ("", "\u2013")
    assert dom.find(id="live")[0]["attrs"]["class"] == "ok"
    (failure,) = [e for e in dom.find(data_task_id=ids[-1]) if e["tag"] == "li"]
    assert "ValueError" in failure["text"] and "it.fail" in failure["text"]
    pre = [e for e in dom.elements if failure in e["parents"] and e["tag"] == "pre"]
    assert pre and pre[0]["text"] == TRACEBACK
    # The exception message held markup: it must be shown as text, not become an element.
    assert XSS in failure["text"]
    assert not [e for e in dom.elements if e["tag"] == "img"]
    assert dom.find(id="version")[0]["text"].startswith("minitask ")
