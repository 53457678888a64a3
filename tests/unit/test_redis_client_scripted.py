"""minitask.transport.redis_client against scripted fake servers: the handshake, the version
check, what is retried and what is not, Sentinel, scripts, pushes. No sockets, no sleeps: the
fakes answer in the same thread and time moves only through a fake clock."""
import hashlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from respkit import (  # noqa: E402
    HANG_UP, SILENCE, FakeClock, FakeRedis, encode_reply, hello_reply,
)

from minitask.exceptions import (  # noqa: E402
    AuthenticationError, BrokerConnectionError, ConfigurationError, ProtocolError, ReplyError,
)
from minitask.transport.redis_client import Backoff, RedisClient, Script  # noqa: E402
from minitask.transport.resp import Push  # noqa: E402

PRIMARY = ("localhost", 6379)


def client_for(fake, url="redis://", **kwargs):
    clock = FakeClock()
    client = RedisClient(url, connector=fake.connector, sleep=clock.sleep, clock=clock,
                         **kwargs)
    client.clock = clock
    return client


def fake_with(handler=lambda sock, command: None):
    return FakeRedis(handler, PRIMARY)


def replies_in_turn(*replies):
    """A handler answering the commands it does not leave to the default with these
    replies, one per command, in order."""
    queue = list(replies)

    def handler(sock, command):
        if command[0].upper() in (b"HELLO", b"SELECT", b"ROLE"):
            return None
        return queue.pop(0)
    return handler


# -- connecting ---------------------------------------------------------------------------------

def test_the_handshake_is_one_round_trip_of_hello_and_select():
    fake = fake_with()
    client = client_for(fake, "redis://alice:pw@localhost/4?client_name=w1")
    assert client.execute("PING") == "PONG"
    sock = fake.sockets[0]
    assert sock.sent[0] == [b"HELLO", b"2", b"AUTH", b"alice", b"pw", b"SETNAME", b"w1"]
    assert sock.sent[1] == [b"SELECT", b"4"]
    assert (client.server_name, client.server_version) == ("redis", (7, 0, 15))
    assert client.address == PRIMARY


def test_a_password_alone_logs_in_as_the_default_user():
    fake = fake_with()
    client_for(fake, "redis://:pw@localhost").execute("PING")
    assert fake.sockets[0].sent[0] == [b"HELLO", b"2", b"AUTH", b"default", b"pw"]


def test_db_0_and_no_credentials_send_hello_alone():
    fake = fake_with()
    client_for(fake).connect()
    assert fake.commands() == ["HELLO"]


def test_resp3_when_the_url_asks_for_it():
    fake = fake_with()
    client = client_for(fake, "redis://?protocol=3")
    client.connect()
    assert fake.sockets[0].sent[0] == [b"HELLO", b"3"]
    assert client.server_version == (7, 0, 15)


@pytest.mark.parametrize("version,name", [("6.0.16", "Redis"), ("5.9.1", "Redis"),
                                          ("6.1.99", "Redis")])
def test_a_server_older_than_6_2_is_refused_naming_its_version(version, name):
    fake = fake_with(lambda sock, command: hello_reply(version)
                     if command[0] == b"HELLO" else None)
    with pytest.raises(ConfigurationError) as caught:
        client_for(fake).execute("PING")
    assert str(caught.value) == ("redis://localhost:6379/0 runs %s %s; minitask needs Redis "
                                 "or Valkey 6.2 or later" % (name, version))
    assert fake.sockets[0].closed
    assert fake.commands() == ["HELLO"]


@pytest.mark.parametrize("version", ["6.2.0", "7.0.15", "7.2.4", "8.0.2"])
def test_6_2_and_later_are_accepted(version):
    fake = fake_with(lambda sock, command: hello_reply(version)
                     if command[0] == b"HELLO" else None)
    assert client_for(fake).execute("PING") == "PONG"


def test_valkey_is_recognised():
    fake = fake_with(lambda sock, command: hello_reply("8.0.1", server="valkey")
                     if command[0] == b"HELLO" else None)
    client = client_for(fake)
    client.connect()
    assert (client.server_name, client.server_version) == ("valkey", (8, 0, 1))


def test_a_server_without_hello_is_refused_with_the_version_info_reports():
    def redis5(sock, command):
        if command[0] == b"HELLO":
            return b"-ERR unknown command `HELLO`, with args beginning with: `2`, \r\n"
        if command[0] == b"INFO":
            return encode_reply(("bulk", b"# Server\r\nredis_version:5.0.7\r\nredis_mode:x\r\n"))
        return None
    fake = fake_with(redis5)
    with pytest.raises(ConfigurationError, match="runs Redis 5.0.7; minitask needs Redis or "
                                                 "Valkey 6.2 or later"):
        client_for(fake, "redis://:pw@localhost").connect()
    assert fake.commands() == ["HELLO", "AUTH", "INFO"]
    assert fake.sockets[0].sent[1] == [b"AUTH", b"pw"]      # AUTH before 6.0: password only


@pytest.mark.parametrize("error", [
    b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    b"-NOAUTH HELLO must be called with the client already authenticated\r\n",
])
def test_a_refused_login_is_an_authentication_error_and_never_retried(error):
    fake = fake_with(lambda sock, command: error if command[0] == b"HELLO" else None)
    client = client_for(fake, "redis://:wrong@localhost")
    with pytest.raises(AuthenticationError, match="refused the login"):
        client.execute("PING")
    assert len(fake.sockets) == 1 and client.clock.sleeps == []


def test_a_db_the_server_lacks_is_a_configuration_error():
    fake = fake_with(lambda sock, command: b"-ERR DB index is out of range\r\n"
                     if command[0] == b"SELECT" else None)
    with pytest.raises(ConfigurationError, match="SELECT failed: ERR DB index is out of range"):
        client_for(fake, "redis:///99").connect()


def test_a_server_never_reached_is_reported_at_once():
    fake = FakeRedis()
    client = client_for(fake)
    with pytest.raises(BrokerConnectionError, match="cannot connect to Redis at "
                                                    "localhost:6379: Connection refused"):
        client.execute("PING", idempotent=True)
    assert client.clock.sleeps == []


# -- replies and pipelines ----------------------------------------------------------------------

def test_execute_raises_an_error_reply():
    fake = fake_with(replies_in_turn(b"-WRONGTYPE Operation against a key\r\n"))
    with pytest.raises(ReplyError) as caught:
        client_for(fake).execute("INCR", "k")
    assert caught.value.prefix == "WRONGTYPE"


def test_a_pipeline_returns_every_reply_with_errors_in_place():
    fake = fake_with(replies_in_turn(b"+OK\r\n", b"-WRONGTYPE no\r\n", b":2\r\n"))
    client = client_for(fake)
    ok, error, count = client.pipeline([("SET", "a", 1), ("INCR", "a"), ("LPUSH", "l", 1)])
    assert (ok, count) == ("OK", 2) and error.prefix == "WRONGTYPE"
    assert client.connected                 # an ordinary error costs nothing


def test_a_pipeline_is_sent_in_one_write():
    fake = fake_with()
    client = client_for(fake)
    client.connect()
    sends = []
    sock = fake.sockets[0]
    original = sock.sendall
    sock.sendall = lambda data: (sends.append(data), original(data))[1]
    assert client.pipeline([("PING",)] * 50) == ["PONG"] * 50
    assert len(sends) == 1


def test_an_empty_pipeline_sends_nothing():
    fake = fake_with()
    assert client_for(fake).pipeline([]) == []
    assert fake.sockets == []


# -- what is retried ----------------------------------------------------------------------------

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
READONLY = b"-READONLY You can't write against a read only replica.\r\n"
UNBLOCKED = (b"-UNBLOCKED force unblock from blocking operation, instance state changed "
             b"(master -> replica?)\r\n")


def test_loading_is_waited_out_on_the_same_connection():
    fake = fake_with(replies_in_turn(LOADING, LOADING, b"$1\r\nv\r\n"))
    client = client_for(fake)
    assert client.execute("GET", "k") == b"v"
    assert len(client.clock.sleeps) == 2 and len(fake.sockets) == 1


def test_loading_for_longer_than_retry_seconds_raises_it():
    fake = fake_with(lambda sock, command: LOADING if command[0] == b"GET" else None)
    client = client_for(fake, retry_seconds=3.0)
    with pytest.raises(ReplyError, match="^LOADING"):
        client.execute("GET", "k")
    assert 2.0 < sum(client.clock.sleeps) <= 3.0
    assert max(client.clock.sleeps) <= 1.0              # the backoff's cap


def test_a_pipeline_is_retried_only_when_no_command_ran():
    fake = fake_with(replies_in_turn(LOADING, LOADING, b"+OK\r\n", b":1\r\n"))
    assert client_for(fake).pipeline([("SET", "a", 1), ("INCR", "b")]) == ["OK", 1]
    fake = fake_with(replies_in_turn(b"+OK\r\n", LOADING))
    client = client_for(fake)
    ok, loading = client.pipeline([("INFO",), ("INCR", "b")])
    assert ok == "OK" and loading.prefix == "LOADING" and client.clock.sleeps == []


def test_readonly_means_failover_reconnect_and_retry():
    fake = fake_with(replies_in_turn(READONLY, b":1\r\n"))
    client = client_for(fake)
    assert client.execute("INCR", "k") == 1
    assert len(fake.sockets) == 2 and fake.sockets[0].closed
    assert fake.commands() == ["HELLO", "INCR", "HELLO", "INCR"]


def test_a_wait_refused_by_a_demoted_primary_does_not_stop_the_retry():
    # Writes then WAIT: a primary demoted under the client refuses the writes (READONLY) and
    # the WAIT with ERR; nothing ran, so the whole pipeline goes to the new primary.
    wait_refused = b"-ERR WAIT cannot be used with replica instances.\r\n"
    fake = fake_with(replies_in_turn(READONLY, wait_refused, b":1\r\n", b":1\r\n"))
    client = client_for(fake)
    assert client.pipeline([("INCR", "k"), ("WAIT", 1, 100)]) == [1, 1]
    assert len(fake.sockets) == 2 and fake.sockets[0].closed


def test_a_wait_refused_after_a_write_that_ran_is_returned_not_retried():
    wait_refused = b"-ERR WAIT cannot be used with replica instances.\r\n"
    fake = fake_with(replies_in_turn(b":1\r\n", wait_refused))
    client = client_for(fake)
    done, error = client.pipeline([("INCR", "k"), ("WAIT", 1, 100)])
    assert done == 1 and "replica" in str(error) and client.clock.sleeps == []


def test_unblocked_retries_the_blocking_read_on_a_new_connection():
    entry = encode_reply(("array", [("array", [("bulk", b"s"), ("array", [])])]))
    fake = fake_with(replies_in_turn(UNBLOCKED, entry))
    client = client_for(fake)
    reply = client.execute("XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "s", ">",
                           block=5.0)
    assert reply == [[b"s", []]]
    assert len(fake.sockets) == 2
    # The read waits for the block time plus the usual reply timeout.
    assert fake.sockets[1].timeout == 15.0


def test_a_read_that_may_block_forever_has_no_timeout():
    fake = fake_with(replies_in_turn(b"*-1\r\n"))
    client = client_for(fake)
    assert client.execute("BLPOP", "q", 0, block=None) is None
    assert fake.sockets[0].timeout is None


def test_a_failover_reply_among_others_drops_the_connection_but_returns_the_replies():
    fake = fake_with(replies_in_turn(b"$1\r\nv\r\n", READONLY, b"+PONG\r\n"))
    client = client_for(fake)
    value, error = client.pipeline([("GET", "k"), ("SET", "k", 2)])
    assert value == b"v" and error.prefix == "READONLY"
    assert not client.connected
    assert client.execute("PING") == "PONG"
    assert len(fake.sockets) == 2


def test_a_connection_lost_after_sending_is_not_retried_unless_idempotent():
    fake = fake_with(replies_in_turn(b"+OK\r\n", HANG_UP, HANG_UP, b"+OK\r\n"))
    client = client_for(fake)
    assert client.execute("SET", "a", 1) == "OK"
    with pytest.raises(BrokerConnectionError, match="closed the connection"):
        client.execute("INCR", "a")
    assert client.execute("SET", "a", 1, idempotent=True) == "OK"
    assert len(client.clock.sleeps) == 1
    assert fake.commands().count("HELLO") == 3


def test_a_connection_closed_while_idle_is_made_again_before_sending():
    fake = fake_with()
    client = client_for(fake)
    assert client.execute("PING") == "PONG"
    fake.sockets[0].hang_up()                       # a restart, an idle timeout, CLIENT KILL
    assert client.execute("PING") == "PONG"         # not idempotent, yet safe: not yet sent
    assert fake.commands() == ["HELLO", "PING", "HELLO", "PING"]
    assert client.clock.sleeps == []


def test_a_server_down_for_a_while_is_waited_for_with_backoff():
    fake = fake_with()
    client = client_for(fake)
    client.connect()
    fake.sockets[0].hang_up()
    fake.down.add(PRIMARY)
    attempts = []

    def sleep(seconds):
        attempts.append(seconds)
        if len(attempts) == 4:
            fake.down.discard(PRIMARY)
        client.clock.now += seconds
    client._sleep = sleep
    assert client.execute("PING") == "PONG"
    assert len(attempts) == 4
    assert attempts[3] > attempts[0]                # backing off


def test_a_server_down_too_long_raises_after_retry_seconds():
    fake = fake_with()
    client = client_for(fake, retry_seconds=2.0)
    client.connect()
    fake.sockets[0].hang_up()
    fake.down.add(PRIMARY)
    with pytest.raises(BrokerConnectionError, match="Connection refused"):
        client.execute("PING")
    assert sum(client.clock.sleeps) <= 2.0


def test_no_reply_within_the_timeout_drops_the_connection():
    fake = fake_with(replies_in_turn(SILENCE))
    client = client_for(fake, "redis://?socket_timeout=0.5")
    with pytest.raises(BrokerConnectionError, match="no reply from redis://localhost:6379/0 "
                                                    "within 0.5s; connection dropped"):
        client.execute("GET", "k")
    assert not client.connected and fake.sockets[0].closed


def test_bytes_that_are_not_resp_drop_the_connection():
    fake = fake_with(replies_in_turn(b"HTTP/1.1 400 Bad Request\r\n"))
    client = client_for(fake)
    with pytest.raises(ProtocolError, match="sent bytes that are not RESP"):
        client.execute("GET", "k", idempotent=True)
    assert not client.connected


def test_a_forked_child_does_not_share_its_parents_connection():
    fake = fake_with()
    client = client_for(fake)
    client.connect()
    client._link.pid = -1                           # as if this process were a fork's child
    assert client.execute("PING") == "PONG"
    assert len(fake.sockets) == 2 and fake.sockets[0].closed


def test_backoff_doubles_to_its_cap_with_jitter_and_stops_at_the_deadline():
    clock = FakeClock()
    backoff = Backoff(5.0, first=0.1, cap=1.0, clock=clock, rand=lambda: 1.0)
    pauses = []
    pause = backoff.next_pause()
    while pause is not None:
        pauses.append(pause)
        clock.now += pause
        pause = backoff.next_pause()
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    low = Backoff(5.0, first=0.1, clock=clock, rand=lambda: 0.0)
    assert low.next_pause() == 0.05


# -- scripts ------------------------------------------------------------------------------------

def scripting_fake():
    cache = {}

    def handler(sock, command):
        name = command[0].upper()
        if name == b"SCRIPT" and command[1].upper() == b"LOAD":
            sha = hashlib.sha1(command[2]).hexdigest().encode()
            cache[sha] = command[2]
            return encode_reply(("bulk", sha))
        if name == b"SCRIPT" and command[1].upper() == b"FLUSH":
            cache.clear()
            return b"+OK\r\n"
        if name == b"EVALSHA":
            if command[1] not in cache:
                return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
            return encode_reply(("array", [("bulk", arg) for arg in command[3:]]))
        return None
    return FakeRedis(handler, PRIMARY), cache


def test_a_script_is_known_by_its_sha1():
    script = Script("return 1")
    assert script.sha1 == hashlib.sha1(b"return 1").hexdigest()
    assert script.command(["k1", "k2"], [5]) == ("EVALSHA", script.sha1, 2, "k1", "k2", 5)


def test_a_script_the_server_lacks_is_loaded_then_run_by_sha():
    fake, cache = scripting_fake()
    client = client_for(fake)
    script = Script("return {KEYS[1], ARGV[1]}")
    assert client.run_script(script, ["k"], ["a"]) == [b"k", b"a"]
    assert client.run_script(script, ["k"], ["b"]) == [b"k", b"b"]
    assert fake.commands() == ["HELLO", "EVALSHA", "SCRIPT", "EVALSHA", "EVALSHA"]
    client.execute("SCRIPT", "FLUSH")
    assert client.run_script(script, ["k"], ["c"]) == [b"k", b"c"]
    assert fake.commands()[-3:] == ["EVALSHA", "SCRIPT", "EVALSHA"]


def test_a_script_that_does_not_compile_raises_the_load_error():
    def handler(sock, command):
        if command[0] == b"EVALSHA":
            return b"-NOSCRIPT No matching script.\r\n"
        if command[0] == b"SCRIPT":
            return b"-ERR Error compiling script (new function): user_script:1: syntax\r\n"
        return None
    with pytest.raises(ReplyError, match="Error compiling script"):
        client_for(fake_with(handler)).run_script(Script("return ("))


# -- Sentinel -----------------------------------------------------------------------------------

S1, S2 = ("s1", 26379), ("s2", 26379)
P1, P2 = ("10.0.0.1", 6379), ("10.0.0.2", 6380)


def sentinel_fake(primary):
    """Two Sentinels naming `primary[0]`; P1 and P2 are both Redis servers."""
    fake = FakeRedis()

    def sentinel(sock, command):
        if command[0] == b"SENTINEL":
            if command[2] != b"mymaster":
                return b"*-1\r\n"
            host, port = primary[0]
            return encode_reply(("array", [("bulk", host.encode()), ("bulk", b"%d" % port)]))
        if command[0] == b"AUTH":
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"

    def redis(sock, command):
        return b"+OK\r\n" if command[0] == b"SET" else None

    fake.handlers.update({S1: sentinel, S2: sentinel, P1: redis, P2: redis})
    return fake


def test_sentinel_names_the_primary_and_role_confirms_it():
    primary = [P2]
    fake = sentinel_fake(primary)
    client = client_for(fake, "redis+sentinel://s1,s2/mymaster/1")
    assert client.execute("PING") == "PONG"
    assert client.address == P2
    assert fake.log[0] == (S1, [b"SENTINEL", b"get-master-addr-by-name", b"mymaster"])
    assert fake.commands(P2) == ["HELLO", "ROLE", "SELECT", "PING"]


def test_sentinel_credentials_are_the_sentinels_own():
    fake = sentinel_fake([P1])
    client_for(fake, "redis+sentinel://:pw@s1/mymaster?sentinel_password=spw").connect()
    assert fake.log[0] == (S1, [b"AUTH", b"spw"])
    assert fake.sockets[1].sent[0] == [b"HELLO", b"2", b"AUTH", b"default", b"pw"]


def test_a_sentinel_that_is_down_is_skipped_and_the_one_that_answered_asked_first():
    fake = sentinel_fake([P1])
    fake.down.add(S1)
    client = client_for(fake, "redis+sentinel://s1,s2/mymaster")
    client.connect()
    assert client.address == P1
    fake.down.discard(S1)
    client._link.sock.hang_up()
    client.execute("PING")
    sentinels_asked = [where for where, command in fake.log if command[0] == b"SENTINEL"]
    assert sentinels_asked == [S2, S2]


def test_no_sentinel_knowing_the_service_is_a_clear_error():
    fake = sentinel_fake([P1])
    fake.down.add(S1)
    with pytest.raises(BrokerConnectionError) as caught:
        client_for(fake, "redis+sentinel://s1,s2/other").connect()
    message = str(caught.value)
    assert "no Sentinel named the primary of 'other'" in message
    assert "cannot connect to Sentinel at s1:26379" in message
    assert "s2:26379 knows no service 'other'" in message


def test_a_named_primary_that_is_a_replica_is_refused_until_failover_ends():
    primary = [P1]
    fake = sentinel_fake(primary)
    client = client_for(fake, "redis+sentinel://s1/mymaster")
    client.connect()

    replica_role = encode_reply(("array", [("bulk", b"slave"), ("bulk", b"10.0.0.2"),
                                           ("int", 6380), ("bulk", b"connected"), ("int", 1)]))
    sleeps = []

    def p1(sock, command):
        if command[0] == b"ROLE":
            return replica_role
        if command[0] == b"SET":
            return READONLY
        return None

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            primary[0] = P2             # Sentinel has caught up
        client.clock.now += seconds
    fake.handlers[P1] = p1
    client._sleep = sleep
    assert client.execute("SET", "k", 1) == "OK"
    assert client.address == P2
    assert fake.commands(P2)[-1] == "SET"
    assert len(sleeps) == 2


# -- pushes -------------------------------------------------------------------------------------

def test_pushes_go_to_on_push_and_never_take_a_replys_place():
    pushes = []
    invalidate = encode_reply(("push", [("bulk", b"invalidate"), ("array", [("bulk", b"k")])]))

    def handler(sock, command):
        if command[0] == b"GET":
            return invalidate + b"$1\r\nv\r\n" + invalidate
        return None
    fake = fake_with(handler)
    client = client_for(fake, "redis://?protocol=3", on_push=pushes.append)
    assert client.execute("GET", "k") == b"v"
    assert pushes == [[b"invalidate", [b"k"]]]      # the one after the reply comes next time
    fake.sockets[0].push(invalidate)                # one that arrives between commands
    assert client.execute("PING") == "PONG"
    assert pushes == [[b"invalidate", [b"k"]]] * 3
    assert all(type(push) is Push for push in pushes)


def test_pushes_without_on_push_are_dropped():
    fake = fake_with(lambda sock, command: encode_reply(("push", [("bulk", b"x")])) + b":1\r\n"
                     if command[0] == b"INCR" else None)
    client = client_for(fake, "redis://?protocol=3")
    assert client.execute("INCR", "k") == 1
    assert not client._link.decoder.pushes
