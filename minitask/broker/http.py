"""The broker's live status page (``broker --http HOST:PORT``): HTML, JSON and Prometheus text.

Served by `http.server` in threads of its own, off the broker's message loop::

    sampler thread ─ every 1 s ─ call_in_loop(status_report) ─> ring of the last 300 samples
    HTTP threads   ─ GET /                    the page (broker/page.py), which polls:
                   ─ GET /api/status.json     a fresh report + rates
                   ─ GET /api/history.json    the ring, or the samples after ?since=TIME
                   ─ GET /api/failures.json   raw stored results from the loop, decoded here
                   ─ GET /metrics             the fresh report as Prometheus gauges/counters

Invariants: broker state is read only inside the loop thread, by functions handed over with
`BrokerServer.call_in_loop`; what they return is fresh data no one else mutates. At most one
such call is queued at a time, and a loop that does not run it within `LOOP_TIMEOUT` gets the
request a 503, never a stuck thread. Result payloads are decoded here, as JSON only (a pickle
is never loaded in the broker). Access follows the broker port's rule: beyond loopback only
with the broker secret (the broker refuses to start otherwise); with a secret, every request
needs HTTP Basic auth whose password is the secret. With ``--certfile/--keyfile`` the page is served over TLS with the same context.
"""

import base64
import binascii
import collections
import hmac
import json
import logging
import math
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from .. import protocol as P
from ..exceptions import BrokerError, MinitaskError
from ..message import decode_result_meta
from ..serialization import exception_to_dict
from . import page
from .status import status_report
from .taskstats import EVENTS, RUNTIME_BUCKETS

__all__ = ["StatusHTTPServer", "LoopSource", "TransportSource", "metrics_text", "sample_of", "rates_over", "describe_failure",
           "failed_results"]

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
HISTORY_SAMPLES = 300               # five minutes at one a second
RATE_WINDOW = 5.0                   # seconds the rates shown are averaged over
LOOP_TIMEOUT = 2.0
# Per-sample history keeps this many queues (by name); the report itself has them all.
HISTORY_QUEUES = 200
# Threads are per connection: a cap, and a timeout for idle or slow clients.
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT = 15.0
MAX_TRACEBACK_CHARS = 64 * 1024
MAX_MESSAGE_CHARS = 4 * 1024
QUEUE_FIELDS = ("ready", "unacked", "delayed", "dead")
_COUNTERS = ("published", "delivered", "acked")
_SAFE_CONTENT = ("json",)


def _unavailable(text):
    """The broker's loop did not answer in time (or the gathering failed): answered with 503."""
    return BrokerError(text, 503)


class StatusHTTPServer:
    """The status page of one `BrokerServer` (or of any broker, Redis included, with a
    `TransportSource`); binds at construction, serves after `start()`."""

    def __init__(self, broker, address, secret=None, ssl_context=None, source=None):
        host, port = address
        self.source = source if source is not None else LoopSource(broker)
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.ssl_context = ssl_context
        try:
            self.httpd = _HTTPServer((host, port), _Handler, self)
        except OSError as exc:
            raise MinitaskError("cannot serve the status page on %s:%s: %s"
                                % (host, port, exc.strerror or exc)) from None
        self.address = self.httpd.server_address[:2]
        self._ring = collections.deque(maxlen=HISTORY_SAMPLES)
        self._ring_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._latest = (None, float("-inf"))    # (report, monotonic time it was asked for)
        self._stopping = threading.Event()
        self._threads = []

    @property
    def url(self):
        host, port = self.address
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d/" % ("https" if self.ssl_context else "http", host, port)

    def start(self):
        for name, target in (("minitask-http", lambda: self.httpd.serve_forever(0.2)),
                             ("minitask-http-sampler", self._sample_forever)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("status page on %s", self.url)

    def stop(self):
        self._stopping.set()
        self.source.stop()
        if self._threads:                   # shutdown() waits for a serve_forever() to end
            self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(LOOP_TIMEOUT + 1.0)
        logger.info("status page stopped")

    # -- data, from the source ------------------------------------------------------------------

    def report(self):
        """A status report gathered after this call began; callers waiting together share one,
        so a burst of requests costs the loop one report, and no one sees one from before."""
        asked = time.monotonic()
        if not self._report_lock.acquire(timeout=LOOP_TIMEOUT):
            raise _unavailable("the status page is busy")
        try:
            report, asked_for = self._latest
            if asked_for < asked:
                asked_for = time.monotonic()
                report = self.source.report()
                self._latest = (report, asked_for)
            return report
        finally:
            self._report_lock.release()

    def samples(self, since=None):
        with self._ring_lock:
            samples = list(self._ring)
        if since is not None:
            samples = [s for s in samples if s["time"] > since]
        return samples

    def status(self):
        """The report with the rates of the last few seconds added."""
        report = self.report()
        return dict(report, rates=rates_over(self.samples(), RATE_WINDOW))

    def failures(self):
        return [describe_failure(*row) for row in self.source.failures()]

    def _sample_forever(self):
        next_at = time.monotonic()
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at += SAMPLE_INTERVAL
            if next_at < time.monotonic():          # fell behind (a slow loop): skip ahead
                next_at = time.monotonic() + SAMPLE_INTERVAL
            try:
                report = self.report()
            except BrokerError as exc:
                logger.warning("status page: no sample this second: %s", exc)
                continue
            with self._ring_lock:
                previous = self._ring[-1] if self._ring else None
                self._ring.append(sample_of(report, previous))


# -- sources: where the reports come from ------------------------------------------------------

class LoopSource:
    """Reports gathered in a `BrokerServer`'s loop thread (the broker's own page, ``broker
    --http``): broker state is read only there."""

    def __init__(self, broker):
        self.broker = broker
        self._loop_lock = threading.Lock()
        self._pending = None                # Event of the loop call not yet run, if any
        self._stopping = threading.Event()

    def report(self):
        return self.in_loop(status_report)

    def failures(self):
        return self.in_loop(failed_results)

    def stop(self):
        self._stopping.set()

    def in_loop(self, function):
        """`function(state)` run in the broker's loop thread; raises _Unavailable on timeout."""
        if not self._loop_lock.acquire(timeout=LOOP_TIMEOUT):
            raise _unavailable("the status page is busy")
        try:
            if self._pending is not None and not self._pending.is_set():
                # The last call timed out and is still queued: queue no more behind it.
                raise _unavailable("the broker's loop has not answered for over %gs"
                                   % LOOP_TIMEOUT)
            done, box = threading.Event(), []

            def call():
                try:
                    box.append(function(self.broker.state))
                except Exception:       # a bug here must cost a 503, not the broker's loop
                    logger.exception("status page: gathering in the broker loop failed")
                finally:
                    done.set()
            self._pending = done
            self.broker.call_in_loop(call)
            deadline = time.monotonic() + LOOP_TIMEOUT
            while not done.wait(0.1):       # in slices: a stopping broker runs no more calls
                if self._stopping.is_set() or time.monotonic() > deadline:
                    raise _unavailable("the broker's loop did not answer within %gs"
                                       % LOOP_TIMEOUT)
            if not box:
                raise _unavailable("gathering the status failed (see the broker log)")
            return box[0]
        finally:
            self._loop_lock.release()


class TransportSource:
    """Reports asked over a transport, as ``minitask status`` asks (``minitask status
    --http``): the page of a broker that has no process of ours to serve it, Redis above
    all. One connection, used by one thread at a time."""

    def __init__(self, connect):
        self._connect = connect             # () -> a connected transport client
        self._conn = None
        self._lock = threading.Lock()

    def _ask(self, question):
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return question(self._conn)
            except MinitaskError as exc:
                self._close()
                raise _unavailable("the broker did not answer: %s" % exc) from None

    def report(self):
        return self._ask(lambda conn: conn.status())

    def failures(self):
        """The recent failures, newest first, with their stored results (as
        `failed_results`)."""
        def ask(conn):
            rows = []
            for failure in conn.status().get("recent_failures", []):   # newest first
                result = conn.get_result(failure["task_id"])
                if result.ready:
                    rows.append((failure["time"], failure["task_id"], result.state,
                                 result.content_type, bytes(result.payload)))
                else:
                    rows.append((failure["time"], failure["task_id"], None, None, None))
            return rows
        return self._ask(ask)

    def stop(self):
        with self._lock:
            self._close()

    def _close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except (MinitaskError, OSError) as exc:
                logger.debug("status page: closing the connection: %s", exc)
            self._conn = None


# -- pure: samples, rates, metrics, failures ---------------------------------------------------

def sample_of(report, previous=None):
    """One history point from a report: totals, per-queue depths, and rates since `previous`."""
    queues = report["queues"][:HISTORY_QUEUES]
    sample = {"time": report["broker"]["time"],
              "connections": report["broker"]["connections"],
              "workers": len(report["workers"]),
              "queues": {q["name"]: [q[field] for field in QUEUE_FIELDS] for q in queues},
              "counters": {q["name"]: [q[field] for field in _COUNTERS] for q in queues}}
    for field in QUEUE_FIELDS + _COUNTERS:
        sample[field] = sum(q[field] for q in report["queues"])
    for field in _COUNTERS:
        sample[field + "_rate"] = None if previous is None else _rate(
            sample[field], previous[field], sample["time"] - previous["time"])
    return sample


def _rate(now, before, elapsed):
    # A deleted queue takes its counts with it: never show a negative rate for that.
    return round(max(0, now - before) / elapsed, 3) if elapsed > 0 else 0.0


def rates_over(samples, window):
    """Per-second rates, in total and per queue, between the newest sample and the one
    `window` seconds before it (or the oldest kept)."""
    rates = {"window": 0.0, "queues": {}}
    rates.update((field, 0.0) for field in _COUNTERS)
    if len(samples) < 2:
        return rates
    newest = samples[-1]
    oldest = next((s for s in samples if s["time"] >= newest["time"] - window - 0.25),
                  samples[-2])
    if oldest is newest:
        oldest = samples[-2]
    elapsed = newest["time"] - oldest["time"]
    rates["window"] = round(elapsed, 3)
    for field in _COUNTERS:
        rates[field] = _rate(newest[field], oldest[field], elapsed)
    for name, counts in newest["counters"].items():
        before = oldest["counters"].get(name, [0, 0, 0])
        rates["queues"][name] = {field: _rate(counts[i], before[i], elapsed)
                                 for i, field in enumerate(_COUNTERS)}
    return rates


def _history_sample(sample):
    return {key: value for key, value in sample.items() if key != "counters"}


def failed_results(state):
    """The recent failures, newest first, each with its stored result as raw bytes.

    ``(time, task_id, result_state, content_type, payload)``; the last three are None when the
    result has expired or been forgotten. The payload is an immutable bytes object, safe to
    hand to another thread; decoding it is left to that thread.
    """
    out = []
    for when, task_id in reversed(state.result_commands.recent_failures):
        entry = state.results.get(task_id)
        if entry is None:
            out.append((when, task_id, None, None, None))
        else:
            out.append((when, task_id, entry.state, entry.content_type, bytes(entry.payload)))
    return out


def describe_failure(when, task_id, result_state, content_type, payload):
    """A failure as the page shows it; the stored result is decoded as JSON only."""
    row = {"time": when, "task_id": task_id, "task": "", "state": result_state,
           "exc_type": "", "exc_message": "", "traceback": None, "retries": 0,
           "date_done": None}
    if result_state is None:
        row["exc_message"] = "(the result has expired or was forgotten)"
        return row
    try:
        meta = decode_result_meta(task_id, result_state, content_type, payload,
                                  accept=_SAFE_CONTENT)
    except Exception as exc:        # one unreadable result must not hide the others
        row["exc_message"] = "(stored as %s, not shown: %s)" % (content_type, exc)
        return row
    row.update(task=str(meta.task or ""), retries=meta.retries, date_done=meta.date_done)
    traceback_text = meta.traceback
    if isinstance(meta.result, BaseException):
        described = exception_to_dict(meta.result)
        row["exc_type"], row["exc_message"] = described["type"], described["message"]
        traceback_text = traceback_text or described["traceback"]
    elif meta.result is not None:
        row["exc_message"] = repr(meta.result)
    row["exc_message"] = row["exc_message"][:MAX_MESSAGE_CHARS]
    if isinstance(traceback_text, str):
        # The end of a traceback says where it broke; keep that part of a huge one.
        row["traceback"] = traceback_text[-MAX_TRACEBACK_CHARS:]
    return row


_BROKER_METRICS = (
    # (name, type, help, key in the report's "broker" part, with workers and running added)
    ("minitask_connections", "gauge", "Open client connections.", "connections"),
    ("minitask_workers", "gauge", "Connected workers.", "workers"),
    ("minitask_tasks_running", "gauge", "Tasks the connected workers are running.", "running"),
    ("minitask_results", "gauge", "Results held in the result store.", "results"),
    ("minitask_revoked", "gauge", "Revoked task ids remembered.", "revoked"),
    ("minitask_journal_bytes", "gauge", "Size of the journal on disk.", "journal_bytes"),
    ("minitask_journal_live_bytes", "gauge", "Journal bytes still needed after compaction.",
     "journal_live_bytes"),
    ("minitask_journal_records_lost_total", "counter",
     "Journal records found lost or damaged when the broker started (see its log).",
     "journal_records_lost"),
    ("minitask_journal_faults_total", "counter",
     "Faults (missing, cut short or damaged segments) found in the journal at start.",
     "journal_faults"),
    ("minitask_unroutable_total", "counter", "Messages published that matched no queue.",
     "unroutable"),
    ("minitask_uptime_seconds", "gauge", "Seconds since the broker started.", "uptime"),
)

_QUEUE_METRICS = (
    ("minitask_queue_consumers", "gauge", "Consumers of the queue.", "consumers"),
    ("minitask_messages_published_total", "counter", "Messages routed to the queue.",
     "published"),
    ("minitask_messages_delivered_total", "counter", "Deliveries from the queue.", "delivered"),
    ("minitask_messages_acked_total", "counter", "Messages of the queue acked.", "acked"),
    ("minitask_messages_dead_lettered_total", "counter", "Messages of the queue dead-lettered.",
     "dead_lettered"),
)


# Queues the broker named (workers' control queues, replies) get a new name at every
# connection: their gauges are summed under this one label, their counters left out (a sum
# over queues that come and go would go down, which Prometheus reads as a counter reset).
GENERATED_QUEUES = P.GENERATED_QUEUE_PREFIX + "*"


def metrics_text(report):
    """The report in the Prometheus text exposition format (version 0.0.4)."""
    broker = dict(report["broker"], workers=len(report["workers"]),
                  running=sum(w.get("running", 0) for w in report["workers"]))
    named, generated = [], []
    for queue in report["queues"]:
        generated_name = queue["name"].startswith(P.GENERATED_QUEUE_PREFIX)
        (generated if generated_name else named).append(queue)
    gauge_rows = named + ([dict({field: sum(q[field] for q in generated)
                                 for field in QUEUE_FIELDS + ("consumers",)},
                                name=GENERATED_QUEUES)] if generated else [])
    lines = ["# HELP minitask_info The broker's version.", "# TYPE minitask_info gauge",
             "minitask_info%s 1" % _labels(version=broker["version"]),
             "# HELP minitask_queue_messages Messages in the queue, by state "
             "(dead: waiting in its .dead queue; %s: the broker-named queues together)."
             % GENERATED_QUEUES, "# TYPE minitask_queue_messages gauge"]
    for queue in gauge_rows:
        lines += ["minitask_queue_messages%s %s" % (_labels(queue=queue["name"], state=field),
                                                    _number(queue[field]))
                  for field in QUEUE_FIELDS]
    for name, kind, help_text, field in _QUEUE_METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind)]
        lines += ["%s%s %s" % (name, _labels(queue=queue["name"]), _number(queue[field]))
                  for queue in (gauge_rows if kind == "gauge" else named)]
    for name, kind, help_text, key in _BROKER_METRICS:
        if key not in broker:           # a broker without a journal of its own (Redis)
            continue
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind),
                  "%s %s" % (name, _number(broker[key]))]
    lines += task_metric_lines(report.get("task_stats", {}))
    return "\n".join(lines) + "\n"


def task_metric_lines(task_stats):
    """Per task name: what happened to its tasks (counters) and how long they ran."""
    lines = ["# HELP minitask_task_events_total Tasks by name and what happened to them: "
             "received (delivered to a worker), succeeded, failed, retried, revoked.",
             "# TYPE minitask_task_events_total counter"]
    for task, row in task_stats.items():
        lines += ["minitask_task_events_total%s %s" % (_labels(task=task, event=event),
                                                       _number(row[event]))
                  for event in EVENTS]
    lines += ["# HELP minitask_task_runtime_seconds Run time of the tasks that succeeded, "
              "as their worker measured it.", "# TYPE minitask_task_runtime_seconds histogram"]
    bounds = [repr(float(bound)) for bound in RUNTIME_BUCKETS] + ["+Inf"]
    for task, row in task_stats.items():
        runtime = row["runtime"]
        lines += ["minitask_task_runtime_seconds_bucket%s %s" % (_labels(task=task, le=bound),
                                                                 _number(count))
                  for bound, count in zip(bounds, runtime["buckets"])]
        lines += ["minitask_task_runtime_seconds_sum%s %s" % (_labels(task=task),
                                                              _number(float(runtime["sum"]))),
                  "minitask_task_runtime_seconds_count%s %s" % (_labels(task=task),
                                                                _number(runtime["count"]))]
    return lines


def _labels(**labels):
    def escape(value):
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{%s}" % ",".join('%s="%s"' % (key, escape(value))
                             for key, value in sorted(labels.items()))


def _number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return repr(value) if isinstance(value, float) else str(int(value or 0))


def _json_bytes(value):
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:      # a NaN from a worker's HELLO: the page's JSON.parse would fail
        text = json.dumps(json.loads(json.dumps(value, default=str),
                                     parse_constant=lambda _name: None), separators=(",", ":"))
    return text.encode("utf-8")


# -- HTTP --------------------------------------------------------------------------------------

class _HTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = sys.platform != "win32"     # there it would let others steal it
    request_queue_size = 64

    def __init__(self, address, handler, status):
        infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.status = status
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(infos[0][4][:2], handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            logger.warning("status page: over %d connections; dropped %s", MAX_CONNECTIONS,
                           client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:            # no thread to be had: drop this one, keep serving
            self._slots.release()
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        """In the request's own thread, so a slow TLS handshake stalls no one else."""
        request.settimeout(SOCKET_TIMEOUT)
        context = self.status.ssl_context
        if context is None:
            return super().finish_request(request, client_address)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:     # ssl.SSLError is an OSError
            logger.debug("status page: TLS handshake with %s failed: %s", client_address[0], exc)
            return None
        try:
            return super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)

    def handle_error(self, request, client_address):
        # A client that hangs up or stalls is routine; anything else is a bug worth a trace.
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            logger.debug("status page: %s went away: %s", client_address[0], sys.exc_info()[1])
        else:
            logger.exception("status page: error serving %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "minitask-status"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    default_request_version = "HTTP/1.0"    # errors to junk get a status line too

    def parse_request(self):
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True        # its body, if any, is left unread
            self._send(405, b"only GET and HEAD here\n", "text/plain; charset=utf-8",
                       {"Allow": "GET, HEAD", "Connection": "close"})
            return False
        return True

    def do_GET(self):
        status = self.server.status
        if status.secret is not None and not self._authorized(status.secret):
            self._send(401, b"the broker secret is needed (HTTP Basic auth, any user name)\n",
                       "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="minitask broker", charset="UTF-8"'})
            return
        url = urlsplit(self.path)
        route = _ROUTES.get(url.path)
        if route is None:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        try:
            route(self, status, parse_qs(url.query))
        except (ConnectionError, socket.timeout):
            raise                       # the client went away; handle_error notes it
        except BrokerError as exc:
            self._send(503, ("%s\n" % exc).encode("utf-8"), "text/plain; charset=utf-8",
                       {"Retry-After": "1"})
        except Exception:               # a bug costs this request a 500, not the server
            logger.exception("status page: %s failed", url.path)
            self._send(500, b"internal error (see the broker log)\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def _authorized(self, secret):
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _user, colon, password = decoded.partition(b":")
        return bool(colon) and hmac.compare_digest(password, secret)

    def _page(self, status, query):
        self._send(200, _PAGE_BYTES, "text/html; charset=utf-8",
                   {"Content-Security-Policy": _CSP})

    def _status_json(self, status, query):
        self._send(200, _json_bytes(status.status()), "application/json")

    def _history_json(self, status, query):
        since = None
        if query.get("since"):
            try:
                since = float(query["since"][0])
            except ValueError:
                self._send(400, b"since: expected a time in seconds\n",
                           "text/plain; charset=utf-8")
                return
        samples = [_history_sample(s) for s in status.samples(since)]
        self._send(200, _json_bytes({"interval": SAMPLE_INTERVAL, "capacity": HISTORY_SAMPLES,
                                     "queue_fields": list(QUEUE_FIELDS), "samples": samples}),
                   "application/json")

    def _failures_json(self, status, query):
        self._send(200, _json_bytes({"failures": status.failures()}), "application/json")

    def _metrics(self, status, query):
        self._send(200, metrics_text(status.report()).encode("utf-8"),
                   "text/plain; version=0.0.4; charset=utf-8")

    def _send(self, code, body, content_type, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        logger.debug("status page: %s %s", self.address_string(), format % args)

    def log_error(self, format, *args):
        logger.debug("status page: %s %s", self.address_string(), format % args)


_ROUTES = {"/": _Handler._page, "/index.html": _Handler._page,
           "/api/status.json": _Handler._status_json, "/api/history.json": _Handler._history_json,
           "/api/failures.json": _Handler._failures_json, "/metrics": _Handler._metrics}
_PAGE_BYTES = page.PAGE.encode("utf-8")
_CSP = page.content_security_policy()
