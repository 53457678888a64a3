"""Redis URLs: where the Redis transport connects, as whom, and under which virtual host.

Pure: parsing only; `redis_client` does the connecting.

The URL
-------
::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]
    rediss://...                     the same over TLS
    redis+sentinel://[[USER]:PASSWORD@]SENTINEL[:PORT][,SENTINEL[:PORT]...]/SERVICE[/DB][?OPTIONS]
    rediss+sentinel://...            the same, with TLS to the Sentinels and to the primary
    redis+socket://[[USER]:PASSWORD@]/PATH[?OPTIONS]   a Unix socket (Celery's form; DB as
    unix://...                       ``db=N`` or Celery's ``virtual_host=N``)

HOST defaults to localhost, PORT to 6379 (26379 for a Sentinel), DB to 0. USER and PASSWORD
are percent-decoded (write ``@ : / ? #`` in them as ``%40`` ...); a PASSWORD alone logs in as
the ``default`` user. IPv6 addresses go in brackets. OPTIONS are ``name=value`` pairs joined
by ``&``; an unknown name is an error, so a typo is never silently ignored:

    vhost=NAME                  the virtual host (below); default ``minitask``
    protocol=2|3                the RESP version HELLO asks for; default 2 (the transport
                                needs 2; 3 is for the RESP client used alone)
    socket_timeout=SECONDS      how long to wait for a reply (plus any BLOCK time); default 10
    socket_connect_timeout=S    how long to wait for a connection; default 5
    retry_seconds=SECONDS       how long a command is tried again while the server is
                                unreachable, loading or failing over; default 20
    client_name=NAME            shown by CLIENT LIST
    ssl_ca_certs=PATH           CA file that signed the server's certificate (default: the
                                ``ca_file`` given to the client, else the system's CAs)
    ssl_certfile=PATH, ssl_keyfile=PATH   a client certificate, for ``tls-auth-clients yes``
    ssl_cert_reqs=required|optional|none  verify the server's certificate; default required
                                (Celery's spellings CERT_REQUIRED... are accepted too)
    sentinel_username=U, sentinel_password=P   credentials for the Sentinels (the USER and
                                PASSWORD in front of the hosts are the primary's)

Options of the Redis transport (what a worker promises and what a publish waits for):

    heartbeat=SECONDS           how long a worker that stopped renewing its heartbeat counts
                                as alive; its messages go back to their queues within about
                                1.5 times this after it died; default 10
    handover_grace=SECONDS      how long a task handed over to a lost worker waits for that
                                worker to come back and claim it before it fails with
                                WorkerLostError; default 10
    publish_confirm=none|wait:N|waitaof:L,N
                                what a publish waits for once Redis holds the message:
                                nothing more (none, the default), N replicas (WAIT N), or
                                the primary's AOF fsync (L=1) and N replicas' (WAITAOF,
                                Redis 7.2 and later); once per publish call or batch
    publish_confirm_timeout=SECONDS   how long it waits for that; default 2

The virtual host
----------------
Several applications (or test runs) can share one Redis under different virtual hosts, as
with RabbitMQ's. `RedisURL.hash_tag`, ``{NAME}``, is in every key of a vhost (e.g.
``mt:{myapp}:q:default:p4``): one vhost never sees another's keys, and all of a vhost's keys
hash to one Redis Cluster slot, so one script may touch any of them. NAME is 1 to 64 letters,
digits, ``_``, ``.`` or ``-``. (A DB number separates too, but a Cluster has only DB 0.)
"""

import re
import ssl
from urllib.parse import parse_qsl, unquote

from ..exceptions import ConfigurationError

__all__ = ["RedisURL", "parse_redis_url", "DEFAULT_PORT", "SENTINEL_PORT", "DEFAULT_VHOST",
           "RETRY_SECONDS", "CERT_REQS", "hostport"]

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
DEFAULT_VHOST = "minitask"
# Long enough for a Sentinel failover (down-after-milliseconds of 5-10 s plus the election)
# and for a restarted server to load an AOF of a few GB; short enough that a caller hears
# of an outage while it can still do something about it.
RETRY_SECONDS = 20.0

_SCHEMES = {"redis": (False, False), "rediss": (True, False),
            "redis+sentinel": (False, True), "rediss+sentinel": (True, True),
            "redis+socket": (False, False), "unix": (False, False)}
_SOCKET_SCHEMES = ("redis+socket", "unix")
_HOST = re.compile(r"^(?:\[([^\]]+)\]|([^\[\]:]*))(?::(\d+))?$")
_VHOST = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CLIENT_NAME = re.compile(r"^[!-~]{1,128}$")      # CLIENT SETNAME refuses spaces
CERT_REQS = {"required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED,
             "optional": ssl.CERT_OPTIONAL, "cert_optional": ssl.CERT_OPTIONAL,
             "none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE}


def _seconds(text):
    value = float(text)
    if not 0 < value < 1e6:
        raise ValueError("expected seconds above 0")
    return value


def _choice(*allowed):
    def convert(text):
        if text.lower() not in allowed:
            raise ValueError("expected one of %s" % ", ".join(allowed))
        return text.lower()
    return convert


def _grace(text):
    value = float(text)
    if not 0 <= value < 1e6:
        raise ValueError("expected seconds, 0 or more")
    return value


def _publish_confirm(text):
    """None, ("wait", replicas) or ("waitaof", local, replicas)."""
    kind, _, count = text.lower().partition(":")
    try:
        if kind == "none" and not count:
            return None
        if kind == "wait" and int(count) >= 1:
            return ("wait", int(count))
        if kind == "waitaof":
            local, _, replicas = count.partition(",")
            if local in ("0", "1") and int(replicas) >= 0 and int(local) + int(replicas) >= 1:
                return ("waitaof", int(local), int(replicas))
    except ValueError:
        pass                    # said below
    raise ValueError("expected none, wait:N (N >= 1) or waitaof:L,N (L 0 or 1)")


def _matching(pattern, expected):
    def convert(text):
        if not pattern.match(text):
            raise ValueError(expected)
        return text
    return convert


# name -> (converter, default, needs): needs is "tls" or "sentinel" for options that mean
# nothing without them.
_OPTIONS = {
    "vhost": (_matching(_VHOST, "expected 1-64 letters, digits, '_', '.' or '-'"),
              DEFAULT_VHOST, None),
    "protocol": (lambda text: int(_choice("2", "3")(text)), 2, None),
    "socket_timeout": (_seconds, 10.0, None),
    "socket_connect_timeout": (_seconds, 5.0, None),
    "retry_seconds": (_grace, RETRY_SECONDS, None),
    "client_name": (_matching(_CLIENT_NAME, "expected a name without spaces"), None, None),
    "ssl_ca_certs": (str, None, "tls"),
    "ssl_certfile": (str, None, "tls"),
    "ssl_keyfile": (str, None, "tls"),
    "ssl_cert_reqs": (_choice(*CERT_REQS), "required", "tls"),
    "sentinel_username": (str, None, "sentinel"),
    "sentinel_password": (str, None, "sentinel"),
    "heartbeat": (_seconds, 10.0, None),
    "handover_grace": (_grace, 10.0, None),
    "publish_confirm": (_publish_confirm, None, None),
    "publish_confirm_timeout": (_seconds, 2.0, None),
}


class RedisURL:
    """A parsed Redis URL: where to connect, as whom, with which options (see the module
    docstring). `display` is the URL without credentials, for messages and logs."""

    def __init__(self, scheme, hosts, db=0, service=None, username=None, password=None,
                 path=None, **options):
        self.scheme = scheme
        self.tls, self.sentinel = _SCHEMES[scheme]
        self.hosts = list(hosts)
        self.path = path                # a Unix socket's (then `hosts` is empty)
        self.db = db
        self.service = service
        self.username = username
        self.password = password
        for name, (_convert, default, _needs) in _OPTIONS.items():
            setattr(self, name, options.pop(name, default))
        if options:
            raise TypeError("unknown options: %s" % ", ".join(sorted(options)))

    @property
    def hash_tag(self):
        """``{vhost}``: the prefix of every key this vhost owns."""
        return "{%s}" % self.vhost

    @property
    def display(self):
        if self.path is not None:
            return "%s://%s?db=%d" % (self.scheme, self.path, self.db)
        hosts = ",".join(hostport(host, port) for host, port in self.hosts)
        path = "/%s/%d" % (self.service, self.db) if self.sentinel else "/%d" % self.db
        return "%s://%s%s" % (self.scheme, hosts, path)

    def __repr__(self):
        return "<RedisURL %s vhost=%s>" % (self.display, self.vhost)


def hostport(host, port):
    """``host:port`` (IPv6 in brackets); a Unix socket's path (port None) alone."""
    if port is None:
        return host
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def parse_redis_url(url, name="BROKER_URL"):
    """Parse a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL into a RedisURL.

    Raises ConfigurationError naming what is wrong; the message never repeats the password.
    """
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ConfigurationError("%s: expected redis://, rediss://, redis+sentinel:// or "
                                 "redis+socket:// (got %r)"
                                 % (name, (url.split("@")[-1] if sep else url)))
    tls, sentinel = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    if scheme in _SOCKET_SCHEMES:
        return _parse_socket_url(scheme, rest, query, name)
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    shown = "%s://%s%s" % (scheme, hostlist, "/" + path if path else "")

    def bad(why):
        return ConfigurationError("%s %s: %s" % (name, shown, why))

    username, password = _credentials(userinfo, at, bad)
    hosts = []
    for item in hostlist.split(","):
        match = _HOST.match(item)
        if not match or not (match.group(1) or match.group(2) or not sentinel):
            raise bad("expected HOST[:PORT]%s, got %r" % (",..." if sentinel else "", item))
        port = int(match.group(3) or (SENTINEL_PORT if sentinel else DEFAULT_PORT))
        if not 1 <= port <= 65535:
            raise bad("port %d is not between 1 and 65535" % port)
        hosts.append((match.group(1) or match.group(2) or "localhost", port))
    if len(hosts) > 1 and not sentinel:
        raise bad("several hosts are for redis+sentinel:// only")
    parts = [part for part in path.split("/") if part] if path else []
    service = parts.pop(0) if sentinel and parts else None
    if sentinel and service is None:
        raise bad("expected the Sentinel service name after the hosts: /SERVICE[/DB]")
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise bad("expected /%sDB, a database number, got /%s"
                  % ("SERVICE/" if sentinel else "", path))
    db = int(parts[0]) if parts else 0
    options = _options(parse_qsl(query, keep_blank_values=True), tls, sentinel, bad)
    return RedisURL(scheme, hosts, db, service, username, password, **options)


def _parse_socket_url(scheme, rest, query, name):
    """``redis+socket://[[USER]:PASSWORD@]/PATH?OPTIONS`` (and ``unix://``): the database
    as ``db=N``, or as Celery's ``virtual_host=N``."""
    userinfo, at, path = rest.rpartition("@")
    shown = "%s://%s" % (scheme, path)

    def bad(why):
        return ConfigurationError("%s %s: %s" % (name, shown, why))

    username, password = _credentials(userinfo, at, bad)
    if not path.startswith("/") or path == "/":
        raise bad("expected the socket's absolute path, as %s:///var/run/redis.sock" % scheme)
    db, pairs = 0, []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ("db", "virtual_host"):
            if not value.isdigit():
                raise bad("%s=%r: expected a database number" % (key, value))
            db = int(value)
        else:
            pairs.append((key, value))
    options = _options(pairs, False, False, bad)
    return RedisURL(scheme, [], db, None, username, password, path=unquote(path), **options)


def _credentials(userinfo, at, bad):
    """``(username, password)`` from a URL's ``USER:PASSWORD@``; Nones without one."""
    if not at:
        return None, None
    user, colon, secret = userinfo.partition(":")
    if not colon:
        raise bad("a user name without a password; write USER:PASSWORD@ or :PASSWORD@")
    return unquote(user) or None, unquote(secret)


def _options(pairs, tls, sentinel, bad):
    """The URL's OPTIONS (``(name, value)`` pairs), checked and converted."""
    options = {}
    for key, value in pairs:
        if key not in _OPTIONS:
            raise bad("unknown option %r; expected one of %s" % (key, ", ".join(_OPTIONS)))
        if key in options:
            raise bad("option %s is given twice" % key)
        convert, _default, needs = _OPTIONS[key]
        if (needs == "tls" and not tls) or (needs == "sentinel" and not sentinel):
            raise bad("option %s needs a %s URL" % (
                key, "rediss://" if needs == "tls" else "redis+sentinel://"))
        try:
            options[key] = convert(value)
        except ValueError as exc:
            raise bad("%s=%r: %s" % (key, value, exc)) from None
    return options
