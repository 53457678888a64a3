"""minitask.transport.redis_url: every URL form, its defaults, the vhost, and clear refusals."""
import re

import pytest

from minitask import config
from minitask.exceptions import ConfigurationError
from minitask.transport import redis_producer
from minitask.transport.redis_url import parse_redis_url


def test_a_bare_url_means_localhost_6379_db_0_vhost_minitask():
    url = parse_redis_url("redis://")
    assert (url.hosts, url.db, url.vhost, url.tls, url.sentinel) == (
        [("localhost", 6379)], 0, "minitask", False, False)
    assert (url.username, url.password, url.protocol) == (None, None, 2)
    assert (url.socket_timeout, url.socket_connect_timeout) == (10.0, 5.0)


def test_host_port_db_and_vhost():
    url = parse_redis_url("redis://cache.example.com:6380/3?vhost=myapp")
    assert (url.hosts, url.db, url.vhost) == ([("cache.example.com", 6380)], 3, "myapp")


def test_the_hash_tag_of_the_vhost_starts_every_key():
    assert parse_redis_url("redis://h/0?vhost=myapp").hash_tag == "{myapp}"
    assert parse_redis_url("redis://h").hash_tag == "{minitask}"


def test_credentials_are_percent_decoded_and_a_password_alone_has_no_user():
    url = parse_redis_url("redis://:p%40ss%3Aw%2Fd@h")
    assert (url.username, url.password) == (None, "p@ss:w/d")
    url = parse_redis_url("redis://alice:s3cret@h")
    assert (url.username, url.password) == ("alice", "s3cret")


def test_an_at_sign_in_a_password_is_taken_up_to_the_last_at():
    assert parse_redis_url("redis://:a@b@h:1").password == "a@b"


def test_ipv6_hosts_go_in_brackets():
    url = parse_redis_url("rediss://[::1]:6390")
    assert url.hosts == [("::1", 6390)] and url.tls
    assert url.display == "rediss://[::1]:6390/0"


def test_the_display_form_never_shows_credentials():
    url = parse_redis_url("redis://alice:s3cret@h:1/2?vhost=v")
    assert "s3cret" not in url.display and "s3cret" not in repr(url)
    assert url.display == "redis://h:1/2"


def test_sentinel_urls_list_sentinels_then_the_service_and_db():
    url = parse_redis_url("redis+sentinel://:pw@s1,s2:26380,[::1]/mymaster/2"
                          "?sentinel_password=spw&vhost=app")
    assert url.sentinel and not url.tls
    assert url.hosts == [("s1", 26379), ("s2", 26380), ("::1", 26379)]
    assert (url.service, url.db, url.password, url.sentinel_password, url.vhost) == (
        "mymaster", 2, "pw", "spw", "app")
    assert url.display == "redis+sentinel://s1:26379,s2:26380,[::1]:26379/mymaster/2"
    assert parse_redis_url("rediss+sentinel://s1/m").tls


def test_unix_socket_urls_in_celerys_form_and_redis_pys():
    """Celery's ``redis+socket:///path?virtual_host=3`` (kombu's database number) and
    redis-py's ``unix://[:PASSWORD@]/path?db=3``; minitask's own options still apply."""
    url = parse_redis_url("redis+socket:///var/run/redis.sock?virtual_host=3&vhost=app")
    assert (url.path, url.hosts, url.db, url.vhost, url.tls) == (
        "/var/run/redis.sock", [], 3, "app", False)
    assert url.display == "redis+socket:///var/run/redis.sock?db=3"
    url = parse_redis_url("unix://:s%40cret@/tmp/r.sock?db=2&heartbeat=3")
    assert (url.path, url.password, url.db, url.heartbeat) == ("/tmp/r.sock", "s@cret", 2, 3.0)
    assert "cret" not in url.display


def test_tls_options():
    url = parse_redis_url("rediss://h?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
                          "&ssl_keyfile=/k.pem&ssl_cert_reqs=CERT_NONE")
    assert (url.ssl_ca_certs, url.ssl_certfile, url.ssl_keyfile, url.ssl_cert_reqs) == (
        "/ca.pem", "/c.pem", "/k.pem", "cert_none")


def test_other_options():
    url = parse_redis_url("redis://h?protocol=3&socket_timeout=2.5&socket_connect_timeout=1"
                          "&client_name=worker-1")
    assert (url.protocol, url.socket_timeout, url.socket_connect_timeout, url.client_name) == (
        3, 2.5, 1.0, "worker-1")


def test_transport_options_and_their_defaults():
    url = parse_redis_url("redis://h")
    assert (url.heartbeat, url.handover_grace, url.publish_confirm,
            url.publish_confirm_timeout, url.retry_seconds) == (10.0, 10.0, None, 2.0, 20.0)
    url = parse_redis_url("redis://h?heartbeat=2&handover_grace=0&publish_confirm=wait:2"
                          "&publish_confirm_timeout=0.5&retry_seconds=0")
    assert (url.heartbeat, url.handover_grace, url.publish_confirm,
            url.publish_confirm_timeout, url.retry_seconds) == (2.0, 0.0, ("wait", 2), 0.5, 0.0)


@pytest.mark.parametrize("text,expected", [
    ("none", None), ("wait:1", ("wait", 1)), ("WAIT:3", ("wait", 3)),
    ("waitaof:1,0", ("waitaof", 1, 0)), ("waitaof:0,2", ("waitaof", 0, 2)),
    ("waitaof:1,1", ("waitaof", 1, 1)),
])
def test_publish_confirm_forms(text, expected):
    assert parse_redis_url("redis://h?publish_confirm=" + text).publish_confirm == expected


@pytest.mark.parametrize("url,message", [
    ("redis://h?publish_confirm=wait:0", "expected none, wait:N"),
    ("redis://h?publish_confirm=wait", "expected none, wait:N"),
    ("redis://h?publish_confirm=waitaof:0,0", "expected none, wait:N"),
    ("redis://h?publish_confirm=waitaof:2,1", "expected none, wait:N"),
    ("redis://h?publish_confirm=fsync", "expected none, wait:N"),
    ("redis://h?heartbeat=0", "above 0"),
    ("redis://h?handover_grace=-1", "0 or more"),
    ("amqp://h", "expected redis://"),
    ("h:6379", "expected redis://"),
    ("redis://h:0", "port 0 is not between 1 and 65535"),
    ("redis://h:99999", "not between"),
    ("redis://h:x", "expected HOST[:PORT]"),
    ("redis://a,b", "several hosts are for redis+sentinel"),
    ("redis://h/db1", "a database number"),
    ("redis://h/1/2", "a database number"),
    ("redis://alice@h", "a user name without a password"),
    ("redis+sentinel://s1", "the Sentinel service name"),
    ("redis+sentinel://s1/m/x", "a database number"),
    ("redis+sentinel://s1,/m", "expected HOST[:PORT]"),
    ("redis://h?vhost=", "vhost=''"),
    ("redis://h?vhost=a{b}", "letters, digits"),
    ("redis://h?vhost=" + "x" * 65, "1-64"),
    ("redis://h?vhots=x", "unknown option 'vhots'"),
    ("redis://h?vhost=a&vhost=b", "option vhost is given twice"),
    ("redis://h?protocol=4", "expected one of 2, 3"),
    ("redis://h?socket_timeout=0", "above 0"),
    ("redis://h?socket_timeout=nan", "above 0"),
    ("redis://h?socket_timeout=soon", "socket_timeout='soon'"),
    ("redis://h?client_name=a b", "without spaces"),
    ("redis://h?ssl_ca_certs=/ca.pem", "needs a rediss:// URL"),
    ("redis://h?sentinel_password=x", "needs a redis+sentinel:// URL"),
    ("rediss://h?ssl_cert_reqs=maybe", "expected one of required"),
    ("redis+socket://tmp/r.sock", "the socket's absolute path"),
    ("redis+socket:///tmp/r.sock?virtual_host=a", "virtual_host='a': expected a database"),
    ("unix:///tmp/r.sock?ssl_ca_certs=/ca.pem", "needs a rediss:// URL"),
    ("redis+socket:///tmp/r.sock?vhots=x", "unknown option 'vhots'"),
])
def test_bad_urls_are_refused_naming_what_is_wrong(url, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        parse_redis_url(url)


def test_a_refusal_never_repeats_the_password():
    for url in ("redis://:hunter2@h:0", "redis://:hunter2@h?x=1", "ftp://:hunter2@h",
                "redis+sentinel://:hunter2@s1"):
        with pytest.raises(ConfigurationError) as caught:
            parse_redis_url(url)
        assert "hunter2" not in str(caught.value)


def test_a_refusal_names_the_setting():
    with pytest.raises(ConfigurationError, match="^RESULT_BACKEND"):
        parse_redis_url("redis://h:0", name="RESULT_BACKEND")


def test_the_transport_refuses_resp3_in_one_line_naming_it():
    with pytest.raises(ConfigurationError, match="protocol=3 is not supported"):
        redis_producer.Client(config.Settings({"BROKER_URL": "redis://h?protocol=3"}))
