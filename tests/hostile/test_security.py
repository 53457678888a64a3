"""No one in without the secret; TLS with a certificate made here; the broker keeps serving.

    case                                          expected
    --------------------------------------------  -----------------------------------------
    --host 0.0.0.0 without a secret               exit 2, one line on stderr
    no secret / wrong secret / a stranger's AUTH  AuthenticationError; one and the same
                                                  one-line ERROR 401 for all; closed
    the right secret (client, worker by env)      works
    a recorded HELLO + AUTH replayed              ERROR 401: the broker's nonce is new
    a broker that cannot prove the secret         the client refuses it
    minitasks:// with the CA                      works (name and IP in the certificate)
    minitasks:// without the CA, or another name  BrokerConnectionError (verification)
    a plain client on the TLS port                BrokerConnectionError, fast

Brokers with a secret listen on 0.0.0.0 (port 0) and are reached on 127.0.0.1; each test
runs beside a `GoodClient` that has the secret (or the CA), as in the hostile suite.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import types

import pytest

from hostilekit import (
    ROOT, Arena, Worker, child_env, errors_in, frame_problems, make_certificate, open_socket,
    running, wait_for,
)
from minitask import config
from minitask import protocol as P
from minitask.protocol import auth_proof
from minitask.transport import reset_connection
from minitask.transport.builtin import Connection
from minitask.exceptions import AuthenticationError, BrokerConnectionError

SECRET = "correct horse battery staple"


def _refused_env():
    # The suite's own switch is named like a setting, and a minitask process warns about it
    # on stderr; the one-line rule is about the broker's own words.
    env = child_env()
    env.pop("LONG_MINITASK_TESTS", None)
    return env


def _broker_command(tmp_path, *args):
    return [sys.executable, "-m", "minitask", "broker", "--port", "0", "--data-dir",
            str(tmp_path / "refused-data")] + list(args)


def test_listening_beyond_loopback_without_a_secret_is_refused_at_start(tmp_path):
    result = subprocess.run(_broker_command(tmp_path, "--host", "0.0.0.0"), env=_refused_env(),
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "without a secret" in result.stderr
    assert result.stdout == ""                   # never said it was listening
    empty = tmp_path / "empty-secret"
    empty.write_text("\n")
    result = subprocess.run(_broker_command(tmp_path, "--host", "0.0.0.0", "--secret-file",
                                            str(empty)),
                            env=_refused_env(), cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "empty" in result.stderr, result.stderr


@pytest.fixture
def secret_arena(tmp_path, request):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    arena = Arena(tmp_path, args=["--host", "0.0.0.0", "--secret-file", str(path)],
                  secret=SECRET)
    with running(arena, request.node.name) as instance:
        assert instance.broker.url.startswith("minitask://0.0.0.0:")
        yield instance


def _stranger(arena, auth_body):
    """HELLO, then an AUTH frame with `auth_body`: what does the broker answer?"""
    with arena.raw() as raw:
        challenge = raw.call(P.HELLO, {"protocol": 1, "nonce": os.urandom(32).hex()})
        assert challenge is not None and challenge[0] == P.CHALLENGE
        raw.send_frame(P.AUTH, auth_body)
        frames, closed = raw.read_all(5.0)
    assert closed, "the connection stayed open after a failed AUTH"
    assert frame_problems(frames) == []
    errors = errors_in(frames)
    assert [code for code, _ in errors] == [P.AUTH_FAILED], frames
    return errors[0][1]


def test_only_a_client_with_the_secret_gets_in_and_every_refusal_reads_the_same(secret_arena):
    arena = secret_arena
    with pytest.raises(AuthenticationError) as no_secret:
        Connection(arena.url, timeout=5.0).connect()
    assert "requires a secret" in str(no_secret.value)
    with pytest.raises(AuthenticationError) as wrong:
        Connection(arena.url, secret="not the secret", timeout=5.0).connect()
    texts = {
        "wrong secret": str(wrong.value),
        "random proof": _stranger(arena, json.dumps({"proof": os.urandom(32).hex()}).encode()),
        "no proof": _stranger(arena, b"{}"),
        "not JSON": _stranger(arena, b"\xff\xfe"),
        "proof of the wrong type": _stranger(arena, b'{"proof": [1, 2]}'),
    }
    assert len(set(texts.values())) == 1, texts
    assert "\n" not in texts["wrong secret"] and texts["wrong secret"].strip()
    # Nothing but AUTH is taken before it: a command in its place closes the connection.
    with arena.raw() as raw:
        assert raw.call(P.HELLO, {"protocol": 1})[0] == P.CHALLENGE
        raw.send_json(P.STATUS, {})
        frames, closed = raw.read_all(5.0)
        assert closed and [code for code, _ in errors_in(frames)] == [P.COMMAND_INVALID]
        assert all(kind == P.ERROR for kind, _seq, _body in frames)
    with arena.connect() as conn:                     # the right secret works
        conn.declare_queue("secret.q")
        conn.publish(P.Message(b"in", routing_key="secret.q"))
        conn.consume("secret.q")
        assert conn.get_delivery(5.0).message.body == b"in"


def test_failed_authentications_are_logged_once_per_ten_seconds_naming_the_peer(
        secret_arena):
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            Connection(secret_arena.url, secret="guess", timeout=5.0).connect()
    lines = [line for line in secret_arena.log().splitlines()
             if "authentication" in line.lower()
             and ("127.0.0.1:" in line or "local pid" in line)]
    assert 1 <= len(lines) <= 2, "broker log lines about the 5 failed logins: %r" % lines


def test_a_recorded_handshake_cannot_be_replayed(secret_arena):
    arena = secret_arena
    client_nonce = os.urandom(32).hex()
    hello = P.encode_json(P.HELLO, 1, {"protocol": 1, "nonce": client_nonce})
    with arena.raw() as raw:                          # the conversation an eavesdropper saw
        raw.send(hello)
        challenge = raw.read_frame()
        assert challenge[0] == P.CHALLENGE
        broker_nonce = json.loads(challenge[2].decode())["nonce"]
        auth = P.encode_json(P.AUTH, 2, {"proof": auth_proof(SECRET.encode(), "client",
                                                             client_nonce, broker_nonce)})
        raw.send(auth)
        welcome = raw.read_frame()
        assert welcome[0] == P.WELCOME
        assert json.loads(welcome[2].decode())["proof"] == auth_proof(
            SECRET.encode(), "broker", broker_nonce, client_nonce)
    replies = []
    for pipelined in (False, True):                   # replayed step by step, and at once
        with arena.raw() as raw:
            if pipelined:
                raw.send(hello + auth)
            else:
                raw.send(hello)
                challenge = raw.read_frame()
                assert challenge[0] == P.CHALLENGE
                assert json.loads(challenge[2].decode())["nonce"] != broker_nonce
                raw.send(auth)
            frames, closed = raw.read_all(5.0)
        replies.append(frames)
        assert closed, "a replayed handshake left the connection open"
        assert P.WELCOME not in [kind for kind, _seq, _body in frames]
        assert [code for code, _ in errors_in(frames)] == [P.AUTH_FAILED]


def test_the_client_refuses_a_broker_that_cannot_prove_it_knows_the_secret(tmp_path):
    """Mutual: a stand-in broker that answers AUTH with WELCOME but a made-up proof."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def impostor():
        sock, _peer = listener.accept()
        with sock:
            decoder = P.Decoder()
            for reply in (P.encode_json(P.CHALLENGE, 1, {"nonce": "ab" * 32}),
                          P.encode_json(P.WELCOME, 2, {"protocol": 1, "broker": "fake",
                                                       "max_frame_bytes": 1 << 20,
                                                       "heartbeat": 0,
                                                       "proof": "00" * 32})):
                while decoder.next_frame() is None:
                    data = sock.recv(4096)
                    if not data:
                        return
                    decoder.feed(data)
                sock.sendall(reply)
            sock.recv(4096)
    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    try:
        with pytest.raises(AuthenticationError, match="could not prove"):
            Connection("minitask://127.0.0.1:%d" % port, secret=SECRET, timeout=5.0).connect()
    finally:
        listener.close()
        thread.join(5)


def _start_worker(arena, tmp_path, name, secret):
    worker = Worker(types.SimpleNamespace(url=arena.url), tmp_path, name,
                    env={"MINITASK_BROKER_SECRET": secret})
    return worker


def _worker_names(arena):
    return {w.get("hostname") for w in arena.status()["workers"]}


def test_a_worker_with_the_secret_in_its_environment_runs_tasks_and_a_wrong_one_stays_out(
        secret_arena, tmp_path):
    import ittasks
    arena = secret_arena
    right = _start_worker(arena, tmp_path, "w-right", SECRET)
    wrong = _start_worker(arena, tmp_path, "w-wrong", "not the secret")
    try:
        wait_for(lambda: "w-right" in _worker_names(arena) or not right.proc.alive(), 30.0,
                 what="the worker with the secret to connect")
        assert right.proc.alive(), right.output()
        config.configure(BROKER_URL=arena.url, BROKER_SECRET=SECRET)
        reset_connection()
        assert ittasks.add.delay(2, 3).get(timeout=20) == 5
        wait_for(lambda: "authentication failed" in wrong.output(), 20.0,
                 what="the worker without the secret to say why it is not let in")
        assert "w-wrong" not in _worker_names(arena)
        assert "Traceback" not in wrong.output(), wrong.output()[-3000:]
    finally:
        reset_connection()
        config.reset()
        right.proc.close()
        wrong.proc.close()


# -- TLS ---------------------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path):
    return make_certificate(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")


@pytest.fixture
def tls_arena(tmp_path, certificate, request):
    cert, key = certificate
    arena = Arena(tmp_path, args=["--certfile", cert, "--keyfile", key], ca_file=cert)
    with running(arena, request.node.name) as instance:
        assert instance.broker.url.startswith("minitasks://")
        yield instance


def test_tls_with_a_self_signed_certificate_and_its_ca_file(tls_arena, certificate):
    cert, _key = certificate
    for url in ("minitasks://localhost:%d", "minitasks://127.0.0.1:%d"):
        with Connection(url % tls_arena.port, ca_file=cert, timeout=10.0) as conn:
            assert conn.link.sock.version() is not None          # really TLS
            conn.declare_queue("tls.q")
            conn.publish(P.Message(b"secret stuff", routing_key="tls.q"))
            conn.consume("tls.q")
            assert conn.get_delivery(5.0).message.body == b"secret stuff"


def test_tls_without_the_ca_fails_verification_and_the_broker_carries_on(tls_arena,
                                                                         certificate):
    with pytest.raises(BrokerConnectionError, match="(?i)certificate"):
        Connection("minitasks://localhost:%d" % tls_arena.port, timeout=10.0).connect()
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):       # a plain client on the TLS port
        Connection("minitask://127.0.0.1:%d" % tls_arena.port, timeout=5.0).connect()
    assert time.monotonic() - started < 5.0, "the plain client waited for its timeout"
    for junk in (b"GET / HTTP/1.1\r\n\r\n", P.HEADER.pack(0xFFFFFFFF, P.HELLO, 1),
                 os.urandom(300)):
        sock = open_socket(tls_arena.port)
        try:
            sock.sendall(junk)
            sock.settimeout(5.0)
            while sock.recv(4096):
                pass                                  # until the broker closes it
        except OSError:
            pass                                      # a reset is a close too
        finally:
            sock.close()
    assert tls_arena.status()["broker"]["connections"] >= 1


def test_tls_checks_the_host_name_by_default(tmp_path):
    cert, key = make_certificate(tmp_path, "elsewhere", "DNS:elsewhere.example")
    arena = Arena(tmp_path, args=["--certfile", cert, "--keyfile", key])
    arena.broker.start()
    try:
        with pytest.raises(BrokerConnectionError, match="(?i)hostname|match"):
            Connection("minitasks://localhost:%d" % arena.port, ca_file=cert,
                       timeout=10.0).connect()
        assert arena.alive()
    finally:
        arena.close()
