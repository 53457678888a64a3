"""Error e-mails and http_dispatch, end to end: a real worker talking to local servers.

The SMTP sink and the web server are written here on `socketserver` and `http.server` (no
extra package), bound to port 0 on the loopback and shut down in the fixtures' finalizers.
"""

import email
import email.policy
import http.server
import json
import re
import socket
import socketserver
import threading
import time
import urllib.parse

import pytest

import guidetasks
from cluster import wait_for
from minitask.builtins import http_dispatch
from minitask.exceptions import RemoteTaskError

ADMIN = "admin@example.com"
SERVER_EMAIL = "minitask@example.com"


# -- an SMTP sink --------------------------------------------------------------------------------

class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line):
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self):
        self.reply("220 sink.example.com ESMTP ready")
        sender, recipients = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode("ascii", "replace").rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink.example.com")
            elif verb == "MAIL":
                sender, recipients = _address(command), []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(_address(command))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                self.server.deliver(sender, recipients, self._read_data())
                self.reply("250 OK: queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Command not implemented")

    def _read_data(self):
        lines = []
        while True:
            line = self.rfile.readline()
            if not line or line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)    # dot-unstuffing


def _address(command):
    return command.partition(":")[2].strip().split(" ")[0].strip("<>")


class SMTPSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _SMTPHandler)
        self.port = self.server_address[1]
        self.mails = []                     # (sender, recipients, EmailMessage)
        self._lock = threading.Lock()

    def deliver(self, sender, recipients, data):
        mail = email.message_from_bytes(data, policy=email.policy.default)
        with self._lock:
            self.mails.append((sender, recipients, mail))

    def received(self):
        with self._lock:
            return list(self.mails)


@pytest.fixture
def smtp_sink():
    sink = SMTPSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()


def mail_env(port):
    return {"MINITASK_SEND_TASK_ERROR_EMAILS": "1",
            "MINITASK_ADMINS": json.dumps([["Admin", ADMIN]]),
            "MINITASK_SERVER_EMAIL": SERVER_EMAIL,
            "MINITASK_EMAIL_HOST": "127.0.0.1",
            "MINITASK_EMAIL_PORT": str(port)}


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_log(worker):
    with open(worker.logfile) as handle:
        return handle.read()


# -- error e-mails -------------------------------------------------------------------------------

def test_a_failing_task_mails_the_admins_once_with_everything_needed(broker, start_worker,
                                                                     smtp_sink):
    # One pool process with one mailer thread: mails leave in the order the tasks failed.
    start_worker(args=["-c", "1"], env=mail_env(smtp_sink.port), modules="guidetasks")
    quiet = guidetasks.fails_quietly.delay("hush")        # disable_error_emails=True
    loud = guidetasks.fails.delay("boom")
    for result in (quiet, loud):
        with pytest.raises(KeyError):
            result.get(timeout=10)
    wait_for(lambda: smtp_sink.received(), 10, what="the error e-mail")
    later = guidetasks.fails.delay("again")
    with pytest.raises(KeyError):
        later.get(timeout=10)
    # The mail of the later failure arrives after any the first two might have caused.
    wait_for(lambda: len(smtp_sink.received()) >= 2, 10, what="the second e-mail")
    mails = smtp_sink.received()
    assert [loud.id in mail["Subject"] for _, _, mail in mails] == [True, False]
    assert later.id in mails[1][2]["Subject"]

    sender, recipients, mail = mails[0]
    assert (sender, recipients) == (SERVER_EMAIL, [ADMIN])
    assert mail["From"] == SERVER_EMAIL and mail["To"] == ADMIN
    assert "guidetasks.fails" in mail["Subject"]
    body = mail.get_content()
    assert "Task guidetasks.fails with id %s raised exception:" % loud.id in body
    assert "KeyError('boom')" in body
    assert re.search(r"called with args: [\[(]'boom',?[\])]", body), body
    assert "Traceback (most recent call last):" in body
    assert "raise KeyError(message)" in body


def test_with_the_mail_server_down_the_failure_is_logged_and_tasks_carry_on(broker,
                                                                            start_worker):
    worker = start_worker(args=["-c", "1"], env=mail_env(closed_port()),
                          modules="guidetasks")
    with pytest.raises(KeyError):
        guidetasks.fails.delay("unmailed").get(timeout=10)
    wait_for(lambda: "could not send the error e-mail" in worker_log(worker), 10,
             what="the mail failure in the worker's log")
    started = time.monotonic()
    failing = [guidetasks.fails.delay("more %d" % i) for i in range(3)]
    assert [guidetasks.add.delay(i, i).get(timeout=10) for i in range(5)] == [0, 2, 4, 6, 8]
    for result in failing:
        with pytest.raises(KeyError):
            result.get(timeout=10)
    assert time.monotonic() - started < 5.0
    assert worker.proc.alive()


def test_a_mail_server_that_never_answers_does_not_hold_up_tasks(broker, start_worker):
    # Accepts connections and says nothing: each mail waits for smtplib's timeout, in the
    # mailer thread, while the pool process goes on with the next task.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        start_worker(args=["-c", "1"], env=mail_env(silent.getsockname()[1]),
                     modules="guidetasks")
        started = time.monotonic()
        for i in range(3):
            with pytest.raises(KeyError):
                guidetasks.fails.delay("stuck %d" % i).get(timeout=10)
            assert guidetasks.add.delay(i, 1).get(timeout=10) == i + 1
        assert time.monotonic() - started < 5.0
    finally:
        silent.close()


# -- http_dispatch -------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /add, POST /mul: success; /refuse: failure; anything else: 404."""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.answer(url.path, urllib.parse.parse_qs(url.query))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode("utf-8")
        self.server.content_types.append(self.headers.get("Content-Type"))
        self.answer(urllib.parse.urlsplit(self.path).path, urllib.parse.parse_qs(body))

    def answer(self, path, params):
        self.server.requests.append((self.command, path, params))
        if path == "/add":
            reply = {"status": "success",
                     "retval": int(params["x"][0]) + int(params["y"][0])}
        elif path == "/mul":
            reply = {"status": "success",
                     "retval": int(params["x"][0]) * int(params["y"][0])}
        elif path == "/refuse":
            reply = {"status": "failure", "reason": "no such user: %s" % params["user"][0]}
        else:
            self.send_error(404, "Not Found")
            return
        data = json.dumps(reply).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests, server.content_types = [], []
    server.url = "http://127.0.0.1:%d" % server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_http_dispatch_get_and_post_through_a_worker(broker, start_worker, web_server):
    start_worker(modules="guidetasks")
    assert http_dispatch.delay(web_server.url + "/add", x=2, y=3).get(timeout=10) == 5
    assert http_dispatch.delay(web_server.url + "/mul", method="POST",
                               x=6, y=7).get(timeout=10) == 42
    assert web_server.requests == [("GET", "/add", {"x": ["2"], "y": ["3"]}),
                                   ("POST", "/mul", {"x": ["6"], "y": ["7"]})]
    assert web_server.content_types == ["application/x-www-form-urlencoded"]


def test_http_dispatch_failures_come_back_as_remote_task_errors(broker, start_worker,
                                                                web_server):
    start_worker(modules="guidetasks")
    refused = http_dispatch.delay(web_server.url + "/refuse", user="bob")
    with pytest.raises(RemoteTaskError, match="no such user: bob"):
        refused.get(timeout=10)
    assert refused.state == "FAILURE"
    missing = http_dispatch.delay(web_server.url + "/nowhere", method="POST", x=1)
    with pytest.raises(RemoteTaskError, match="404"):
        missing.get(timeout=10)
    assert [request[:2] for request in web_server.requests] == [("GET", "/refuse"),
                                                                ("POST", "/nowhere")]
