"""minitask.transport.redis_client against a real redis-server (and Sentinel): pipelines,
scripts, RESP3, blocking reads, logins, TLS, and a server killed, restarted, loading, demoted
or failed over under the client. Skips, saying why, where redis-server is not installed."""
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rediskit import (  # noqa: E402
    REDIS_SERVER, SKIP_REASON, RedisServer, free_port, wait_for,
)

from minitask.exceptions import (  # noqa: E402
    AuthenticationError, BrokerConnectionError, ReplyError,
)
from minitask.transport.redis_client import MIN_VERSION, RedisClient, Script  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), "--enable-debug-command", "yes")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def client(server):
    client = RedisClient(server.url("/0"))
    client.execute("FLUSHALL")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of this test's own, which it may kill."""
    servers = []

    def make(*args, **kwargs):
        server = RedisServer(tmp_path, *args, **kwargs)
        servers.append(server)
        return server
    try:
        yield make
    finally:
        for server in servers:
            server.stop()


# -- commands, pipelines, scripts ---------------------------------------------------------------

def test_the_server_is_recent_enough_and_answers(client):
    assert client.execute("PING") == "PONG"
    assert client.server_name in ("redis", "valkey")
    assert client.server_version >= MIN_VERSION


def test_a_pipeline_with_an_error_in_the_middle_returns_it_in_place(client):
    replies = client.pipeline([("SET", "a", 1), ("LPUSH", "a", "x"), ("INCR", "a"),
                               ("GET", "a"), ("XADD", "s", "*", "f", "v")])
    ok, error, count, value, entry_id = replies
    assert (ok, count, value) == ("OK", 2, b"2")
    assert isinstance(error, ReplyError) and error.prefix == "WRONGTYPE"
    assert entry_id.endswith(b"-0")


def test_a_long_pipeline_keeps_its_order(client):
    replies = client.pipeline([("INCR", "n")] * 5000)
    assert replies == list(range(1, 5001))


def test_a_big_value_round_trips(client):
    payload = os.urandom(8 * 1024 * 1024)
    assert client.execute("SET", "big", payload) == "OK"
    assert client.execute("GET", "big") == payload


def test_error_replies_carry_the_words_callers_act_on(client):
    client.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    busygroup, nogroup = client.pipeline([("XGROUP", "CREATE", "s", "g", "$"),
                                          ("XREADGROUP", "GROUP", "nope", "c", "STREAMS", "s",
                                           ">")])
    assert (busygroup.prefix, nogroup.prefix) == ("BUSYGROUP", "NOGROUP")


def test_a_script_survives_script_flush_by_loading_it_again(client):
    script = Script("redis.call('INCR', KEYS[1]); return {KEYS[1], ARGV[1], "
                    "redis.call('GET', KEYS[1])}")
    assert client.run_script(script, ["{v}:n"], ["a"]) == [b"{v}:n", b"a", b"1"]
    assert client.execute("SCRIPT", "EXISTS", script.sha1) == [1]
    client.execute("SCRIPT", "FLUSH")
    assert client.execute("SCRIPT", "EXISTS", script.sha1) == [0]
    assert client.run_script(script, ["{v}:n"], ["b"]) == [b"{v}:n", b"b", b"2"]
    assert client.execute("SCRIPT", "EXISTS", script.sha1) == [1]


def test_in_a_pipeline_noscript_comes_back_in_place(client):
    script = Script("return 7")
    client.execute("SCRIPT", "FLUSH")
    missing, pong = client.pipeline([script.command(), ("PING",)])
    assert missing.prefix == "NOSCRIPT" and pong == "PONG"


def test_a_script_error_is_raised(client):
    with pytest.raises(ReplyError, match="boom"):
        client.run_script(Script("return redis.error_reply('ERR boom')"))


def test_resp3_types_from_a_real_server(server):
    client = RedisClient(server.url("/0", protocol=3))
    pushes = []
    client.on_push = pushes.append
    try:
        kinds = ["map", "set", "double", "bignum", "true", "false", "null", "verbatim",
                 "attrib", "push"]
        replies = dict(zip(kinds, client.pipeline([("DEBUG", "PROTOCOL", kind)
                                                   for kind in kinds])))
        assert replies["map"] == {0: False, 1: True, 2: False}
        assert replies["set"] == [0, 1, 2]
        assert replies["double"] == 3.141
        assert replies["bignum"] == 1234567999999999999999999999999999999
        assert (replies["true"], replies["false"], replies["null"]) == (True, False, None)
        assert replies["verbatim"] == b"This is a verbatim\nstring"
        assert replies["attrib"] == b"Some real reply following the attribute"
        assert replies["push"] == b"Some real reply following the push reply"
        assert pushes == [[b"server-cpu-usage", 42]]
        client.execute("HSET", "h", "f", "v")
        assert client.execute("HGETALL", "h") == {b"f": b"v"}
    finally:
        client.close()


def test_resp3_values_made_by_a_script_decode(server):
    client = RedisClient(server.url("/0", protocol=3))
    try:
        reply = client.run_script(Script(
            "redis.setresp(3); return {1, 'two', {double=2.5}, {map={k={1, 2}}}, "
            "{set={a=true}}, false, redis.status_reply('FINE')}"))
        assert reply == [1, b"two", 2.5, {b"k": [1, 2]}, [b"a"], False, "FINE"]
    finally:
        client.close()


def _lua(value):
    """A Lua expression that Redis turns into `value`'s RESP3 reply."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "{double=%r}" % value
    if isinstance(value, bytes):
        return '"%s"' % "".join("\\%d" % byte for byte in value)
    if isinstance(value, list):
        return "{%s}" % ", ".join(map(_lua, value))
    return "{map={%s}}" % ", ".join("[%s]=%s" % (_lua(k), _lua(v)) for k, v in value.items())


lua_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-2 ** 53, 2 ** 53), st.binary(max_size=20),
              st.floats(-1e15, 1e15).filter(lambda f: f != int(f))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.binary(min_size=1, max_size=8), inner,
                                            max_size=3)),
    max_leaves=12)


@pytest.fixture(scope="module")
def resp3_client(server):
    client = RedisClient(server.url("/0", protocol=3))
    try:
        yield client
    finally:
        client.close()


@settings(max_examples=60)
@given(lua_values)
def test_whatever_redis_encodes_from_a_script_decodes_back(resp3_client, value):
    # The encoder here is Redis's own: the decoder is checked against code it did not write.
    assert resp3_client.run_script(Script("redis.setresp(3); return " + _lua(value))) == value


# -- blocking reads and timeouts ----------------------------------------------------------------

def test_a_blocking_read_waits_past_the_reply_timeout(server):
    client = RedisClient(server.url("/0", socket_timeout="0.2"))
    try:
        client.execute("DEL", "s")
        client.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
        started = time.monotonic()
        reply = client.execute("XREADGROUP", "GROUP", "g", "c", "BLOCK", 600, "STREAMS", "s",
                               ">", block=0.6)
        assert reply is None and time.monotonic() - started >= 0.55
        # Without saying it blocks, the same read outlives the reply timeout and is dropped.
        with pytest.raises(BrokerConnectionError, match="no reply .* within 0.2s"):
            client.execute("XREADGROUP", "GROUP", "g", "c", "BLOCK", 600, "STREAMS", "s", ">")
        assert not client.connected
    finally:
        client.close()


def test_a_blocking_read_returns_what_another_client_adds(server):
    reader, writer = RedisClient(server.url("/0")), RedisClient(server.url("/0"))
    try:
        reader.execute("DEL", "q")
        got = {}
        thread = threading.Thread(target=lambda: got.update(
            reply=reader.execute("BLPOP", "q", 0, block=None)))
        thread.start()
        wait_for(lambda: _blocked_clients(writer) == 1, 10, what="the reader to block")
        writer.execute("RPUSH", "q", "job")
        thread.join(10)
        assert got["reply"] == [b"q", b"job"]
    finally:
        reader.close()
        writer.close()


def _read_in_background(client, stream, seconds=30):
    """Start a thread blocked in XREADGROUP on `stream`; its reply lands in got["reply"]."""
    got = {}

    def read():
        got["reply"] = client.execute("XREADGROUP", "GROUP", "g", "c", "BLOCK",
                                      int(seconds * 1000), "STREAMS", stream, ">",
                                      block=seconds)
    reader = threading.Thread(target=read)
    reader.start()
    return reader, got


def _blocked_clients(client):
    info = client.execute("INFO", "clients").decode()
    return int(info.split("blocked_clients:")[1].split()[0])


def test_a_connection_killed_while_idle_is_made_again_without_running_twice(client, server):
    assert client.execute("INCR", "once") == 1
    other = RedisClient(server.url("/0"))
    try:
        my_id = client.execute("CLIENT", "ID")
        assert other.execute("CLIENT", "KILL", "ID", my_id) == 1
    finally:
        other.close()
    assert client.execute("INCR", "once") == 2         # not idempotent, and not lost either
    assert client.execute("CLIENT", "ID") != my_id


# -- logins and databases -----------------------------------------------------------------------

def test_passwords_acl_users_and_databases(fresh_server):
    server = fresh_server("--requirepass", "s3cret").start()
    with pytest.raises(AuthenticationError, match="refused the login"):
        RedisClient(server.url()).execute("PING")
    with pytest.raises(AuthenticationError, match="WRONGPASS"):
        RedisClient(server.url().replace("//", "//:wrong@")).execute("PING")
    admin = RedisClient(server.url("/2").replace("//", "//:s3cret@"))
    assert admin.execute("SET", "k", "in-db-2") == "OK"
    assert admin.execute("ACL", "SETUSER", "alice", "on", ">pw", "~*", "+@all") == "OK"
    alice = RedisClient(server.url("/0").replace("//", "//alice:pw@"))
    assert alice.execute("ACL", "WHOAMI") == b"alice"
    assert alice.execute("GET", "k") is None
    alice.execute("SELECT", 2)
    assert alice.execute("GET", "k") == b"in-db-2"
    admin.close()
    alice.close()


# -- the server goes away and comes back --------------------------------------------------------

def test_a_killed_and_restarted_server_is_reconnected_with_backoff(fresh_server, caplog):
    server = fresh_server().start()
    pauses = []

    def sleep(seconds):
        # The client is waiting for the server: bring it back, as a supervisor would.
        pauses.append(seconds)
        if len(pauses) == 2:
            server.start()
        time.sleep(seconds)
    client = RedisClient(server.url(), sleep=sleep)
    try:
        assert client.execute("INCR", "counter") == 1
        server.kill()
        with caplog.at_level(logging.WARNING, "minitask.transport.redis_client"):
            assert client.execute("INCR", "counter") == 2      # AOF kept the first
        assert len(pauses) >= 2 and pauses[1] > pauses[0] * 0.9
        assert "Connection refused" in caplog.text
    finally:
        client.close()


def test_a_server_that_is_gone_for_good_is_reported_after_retry_seconds(fresh_server):
    server = fresh_server().start()
    client = RedisClient(server.url(), retry_seconds=0.5)
    client.execute("PING")
    server.kill()
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="Connection refused"):
        client.execute("PING")
    assert time.monotonic() - started < 5


def test_loading_replies_are_waited_out(fresh_server, caplog):
    server = fresh_server("--appendonly", "no").start()
    client = RedisClient(server.url())
    try:
        client.pipeline([("SET", "key:%d" % n, n) for n in range(5000)])
        assert client.execute("SAVE") == "OK"
        server.kill()
        # Loading 5000 keys now takes a second, and the server answers LOADING meanwhile.
        server.start("--key-load-delay", "200",
                     "--loading-process-events-interval-bytes", "1024")
        with caplog.at_level(logging.WARNING, "minitask.transport.redis_client"):
            assert client.execute("GET", "key:4999") == b"4999"
        assert "LOADING" in caplog.text
    finally:
        client.close()


def test_a_primary_demoted_under_a_blocked_read_is_survived(fresh_server, caplog):
    primary = fresh_server().start()
    client = RedisClient(primary.url())
    other = fresh_server("--replicaof", "127.0.0.1", str(primary.port)).start()
    admin = RedisClient(primary.url())
    admin_other = RedisClient(other.url())
    try:
        admin.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
        wait_for(lambda: admin_other.execute("EXISTS", "s") == 1, 10, what="the replica to sync")
        with caplog.at_level(logging.WARNING, "minitask.transport.redis_client"):
            reader, got = _read_in_background(client, "s")
            wait_for(lambda: _blocked_clients(admin) == 1, 10, what="the read to block")
            # A failover: the replica takes over and the old primary follows it.
            admin_other.execute("REPLICAOF", "NO", "ONE")
            admin.execute("REPLICAOF", "127.0.0.1", other.port)
            wait_for(lambda: "READONLY" in caplog.text, 15,
                     what="the retried read to meet READONLY")
            assert "UNBLOCKED" in caplog.text
            # This URL names one server, so the client keeps trying it: promote it back.
            admin.execute("REPLICAOF", "NO", "ONE")
            wait_for(lambda: _blocked_clients(admin) == 1, 15, what="the read to block again")
            admin.execute("XADD", "s", "*", "task", "t1")
            reader.join(15)
        [[stream, [[_entry_id, fields]]]] = got["reply"]
        assert (stream, fields) == (b"s", [b"task", b"t1"])
    finally:
        for each in (client, admin, admin_other):
            each.close()


# -- TLS ----------------------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: cannot make test certificates")
    folder = str(tmp_path_factory.mktemp("tls"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the CA needs its key usage.
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=minitask test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=localhost", cwd=folder)
        with open(os.path.join(folder, name + ".ext"), "w") as handle:
            handle.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                         "keyUsage=critical,digitalSignature\n"
                         "extendedKeyUsage=serverAuth,clientAuth\n"
                         "subjectKeyIdentifier=hash\n"
                         "authorityKeyIdentifier=keyid,issuer\n")
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", name + ".crt", "-days", "2",
                 "-extfile", name + ".ext", cwd=folder)
    return folder


@pytest.fixture
def tls_server(fresh_server, certificates):
    path = lambda name: os.path.join(certificates, name)      # noqa: E731
    server = fresh_server("--tls-cert-file", path("server.crt"), "--tls-key-file",
                          path("server.key"), "--tls-ca-cert-file", path("ca.crt"),
                          "--tls-auth-clients", "yes", tls=True)
    try:
        server.start()
    except RuntimeError as exc:
        if "TLS" in str(exc):
            pytest.skip("this redis-server was built without TLS: %s" % exc)
        raise
    return server


def test_tls_with_a_ca_file_and_a_client_certificate(tls_server, certificates):
    path = lambda name: os.path.join(certificates, name)      # noqa: E731
    client = RedisClient(tls_server.url("/1", ssl_ca_certs=path("ca.crt"),
                                        ssl_certfile=path("client.crt"),
                                        ssl_keyfile=path("client.key"), protocol=3))
    try:
        assert client.execute("SET", "k", "over tls") == "OK"
        assert client.execute("GET", "k") == b"over tls"
        assert client.pipeline([("PING",)] * 100) == ["PONG"] * 100
    finally:
        client.close()


def test_tls_refuses_a_server_it_cannot_verify(tls_server):
    client = RedisClient(tls_server.url())
    with pytest.raises(BrokerConnectionError, match="TLS handshake .* failed: .*certificate"):
        client.execute("PING")


def test_tls_without_the_client_certificate_the_server_asks_for(tls_server, certificates):
    client = RedisClient(tls_server.url(ssl_ca_certs=os.path.join(certificates, "ca.crt")))
    with pytest.raises(BrokerConnectionError):
        client.execute("PING")


# -- Sentinel -----------------------------------------------------------------------------------

def _sentinel_conf(primary_port):
    return ("sentinel monitor mymaster 127.0.0.1 %d 1\n"
            "sentinel down-after-milliseconds mymaster 2000\n"
            "sentinel failover-timeout mymaster 10000\n" % primary_port)


def test_sentinel_names_the_primary_and_a_failover_is_survived(fresh_server, caplog):
    primary = fresh_server().start()
    replica = fresh_server("--replicaof", "127.0.0.1", str(primary.port)).start()
    sentinel = fresh_server(sentinel_conf=_sentinel_conf(primary.port)).start()
    # The first Sentinel listed is down (nothing listens on its port): the second answers.
    client = RedisClient("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster/0"
                         % (free_port(), sentinel.port))
    ask = RedisClient("redis://127.0.0.1:%d" % sentinel.port)
    on_primary, on_replica = RedisClient(primary.url()), RedisClient(replica.url())
    try:
        client.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
        assert client.address == ("127.0.0.1", primary.port)
        wait_for(lambda: on_replica.execute("EXISTS", "s") == 1, 10, what="the replica to sync")
        wait_for(lambda: _sentinel_knows_replica(ask, replica.port), 20,
                 what="Sentinel to find the replica")
        with caplog.at_level(logging.WARNING, "minitask.transport.redis_client"):
            reader, got = _read_in_background(client, "s")
            wait_for(lambda: _blocked_clients(on_primary) == 1, 10, what="the read to block")
            assert ask.execute("SENTINEL", "FAILOVER", "mymaster") == "OK"
            wait_for(lambda: ask.execute("SENTINEL", "get-master-addr-by-name", "mymaster")
                     == [b"127.0.0.1", b"%d" % replica.port], 30, what="the failover")
            # Sentinel turns the old primary into a replica within seconds; do it now.
            on_primary.execute("REPLICAOF", "127.0.0.1", replica.port)
            wait_for(lambda: _blocked_clients(on_replica) == 1, 20,
                     what="the read to block on the new primary")
            on_replica.execute("XADD", "s", "*", "task", "t1")
            reader.join(15)
        [[stream, [[_entry_id, fields]]]] = got["reply"]
        assert (stream, fields) == (b"s", [b"task", b"t1"])
        assert client.address == ("127.0.0.1", replica.port)
        assert "UNBLOCKED" in caplog.text
    finally:
        for each in (client, ask, on_primary, on_replica):
            each.close()


def _sentinel_knows_replica(ask, port):
    for replica in ask.execute("SENTINEL", "REPLICAS", "mymaster"):
        fields = dict(zip(replica[0::2], replica[1::2]))
        if fields.get(b"port") == b"%d" % port and b"s_down" not in fields.get(b"flags", b""):
            return fields.get(b"master-link-status") == b"ok"
    return False


def test_a_server_whose_port_another_process_took_starts_on_another(fresh_server):
    """The two test shards run at once, and a free port is only free a moment: a server
    started on a port that another listener has must not take that listener for itself
    (CI once sent a Redis test's commands to the other shard's process there)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        server = fresh_server(port=taken).start()
        assert server.port != taken
        assert RedisClient(server.url()).execute("PING") in ("PONG", b"PONG")
