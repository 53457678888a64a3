"""The operator's commands: status, call, purge, inspect, result, and remote control.

Each talks to the broker through the transport seam (`minitask.transport`) and prints a table that fits 80 columns,
or one JSON document with ``--json``. Remote control (``inspect``, ``control``) publishes a
command on the control exchange and gathers the workers' replies until a timeout; a worker
that does not answer in time is simply not in the reply. ``inspect scheduled`` also asks the
broker for the countdowns it holds itself (a worker is handed a countdown only shortly before
it is due). Celery's spellings of these commands' flags work too (``purge -f``, ``inspect
-t 5 -j``, ``call -a '[1]' -k '{}'``).
"""

import functools
import json
import signal
import sys
import threading
import time

from . import protocol as P
from .argtypes import comma_list, host_port, positive_seconds, seconds
from .exceptions import BrokerError, ConfigurationError, MinitaskError, TimeoutError
from .transport import client_for, declare_topology
from .bench import add_command as add_bench
from .config import configure, safe_url
from .control import broker_scheduled, configured_queues
from .message import TaskMessage
from .result import AsyncResult

__all__ = ["add_commands", "format_table", "format_mapping", "duration_text"]

INSPECT_METHODS = ("active", "scheduled", "reserved", "revoked", "registered", "stats", "ping",
                   "query_task")
CONTROL_METHODS = ("ping", "rate_limit", "revoke", "shutdown", "add_consumer",
                   "cancel_consumer")


def add_commands(commands, parser_class):
    status = commands.add_parser("status", help="queues, depths, consumers and workers")
    _common(status)
    status.add_argument("--http", type=host_port, metavar="HOST:PORT",
                        help="serve the status page and /metrics there until stopped, "
                        "from the broker's reports (for Redis, which has no process of ours "
                        "to serve them); beyond loopback only with BROKER_SECRET, which "
                        "becomes the page's password")
    status.set_defaults(run=run_status)

    call = commands.add_parser("call", help="send a task by name")
    call.add_argument("name", help="registered task name, e.g. tasks.add")
    call.add_argument("args", nargs="?", default="[]", help="positional arguments as a JSON "
                      "list (default [])")
    call.add_argument("-a", "--args", dest="args_option", metavar="JSON",
                      help="the same as ARGS (Celery's spelling)")
    call.add_argument("-k", "--kwargs", default="{}", help="keyword arguments as a JSON object")
    call.add_argument("--countdown", type=seconds, help="seconds to wait before it runs")
    call.add_argument("--queue", help="send straight to this queue (default exchange)")
    call.add_argument("--exchange", help="exchange (default DEFAULT_EXCHANGE)")
    call.add_argument("--routing-key", help="routing key (default DEFAULT_ROUTING_KEY)")
    call.add_argument("--priority", type=int, choices=range(10), metavar="0..9")
    call.add_argument("--wait", action="store_true", help="wait for the result and print it")
    call.add_argument("--timeout", type=seconds, default=None, help="with --wait: give up after "
                      "this many seconds")
    _common(call)
    call.set_defaults(run=run_call)

    purge = commands.add_parser("purge", help="drop every waiting message of queues")
    purge.add_argument("queues", nargs="*", metavar="QUEUE", help="queues to purge (default: "
                       "every queue of the settings, DEFAULT_QUEUE and QUEUES)")
    purge.add_argument("-Q", "--queues", dest="queue_list", type=comma_list, default=[],
                       metavar="QUEUES", help="comma-separated queues, as QUEUE")
    purge.add_argument("-X", "--exclude-queues", type=comma_list, default=[],
                       metavar="QUEUES", help="comma-separated queues not to purge")
    purge.add_argument("-f", "--force", "--yes", dest="yes", action="store_true",
                       help="do not ask")
    _common(purge)
    purge.set_defaults(run=run_purge)

    inspect = commands.add_parser("inspect", help="ask workers what they are doing")
    inspect.add_argument("method", nargs="?", default="active", choices=INSPECT_METHODS)
    inspect.add_argument("ids", nargs="*", metavar="TASK_ID", help="query_task: the tasks")
    inspect.add_argument("-t", "--timeout", type=positive_seconds, default=1.0,
                         help="seconds to wait for replies (default 1)")
    inspect.add_argument("-d", "--destination", help="comma-separated worker names")
    _common(inspect, celery_json=True)
    inspect.set_defaults(run=run_inspect)

    ctl = commands.add_parser("control", help="tell workers to do something")
    ctl.add_argument("method", choices=CONTROL_METHODS)
    ctl.add_argument("arguments", nargs="*", help="rate_limit TASK RATE | revoke TASK_ID... | "
                     "add_consumer QUEUE | cancel_consumer QUEUE")
    ctl.add_argument("--terminate", action="store_true", help="revoke: also stop it if running")
    ctl.add_argument("-t", "--timeout", type=positive_seconds, default=1.0,
                     help="seconds to wait for replies (default 1)")
    ctl.add_argument("-d", "--destination", help="comma-separated worker names")
    _common(ctl, celery_json=True)
    ctl.set_defaults(run=run_control)

    result = commands.add_parser("result", help="show a task's state and result")
    result.add_argument("task_id")
    result.add_argument("--wait", action="store_true", help="wait for a final state")
    result.add_argument("--timeout", type=seconds, default=None)
    result.add_argument("--traceback", action="store_true",
                        help="no effect: a failure's traceback is always shown")
    result.add_argument("-t", "--task", metavar="NAME",
                        help="no effect: the broker finds the result by its id alone")
    _common(result)
    result.set_defaults(run=run_result)
    add_bench(commands)


def _common(parser, celery_json=False):
    parser.add_argument("--broker", help="broker URL (default BROKER_URL)")
    flags = ("-j", "--json") if celery_json else ("--json",)
    parser.add_argument(*flags, action="store_true", help="print JSON for scripts (a failure: "
                        "{\"error\": ..., \"command\": ...})")


def _settings(args):
    overrides = {"BROKER_URL": args.broker} if getattr(args, "broker", None) else {}
    return configure(**overrides)


def _connect(settings):
    return client_for(settings, client="minitask-cli").connect()


def _print_json(value):
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def format_table(headers, rows, widths=None):
    """Rows as aligned columns, each cut to fit an 80-column terminal."""
    widths = widths or [max([len(str(h))] + [len(str(r[i])) for r in rows])
                        for i, h in enumerate(headers)]
    total = sum(widths) + 2 * (len(widths) - 1)
    if total > 80:                  # shrink the first (name) column
        widths[0] = max(8, widths[0] - (total - 80))
    lines = ["  ".join(_cell(h, w, i) for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in rows:
        lines.append("  ".join(_cell(c, w, i) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value, width, index):
    text = str(value)
    if len(text) > width:
        text = text[:max(1, width - 1)] + "~"
    return text.ljust(width) if index == 0 else text.rjust(width)


# -- status ------------------------------------------------------------------------------------

def serve_status(settings, address, announce=functools.partial(print, flush=True)):
    """``status --http``: the status page of the broker BROKER_URL names, until SIGTERM or
    Ctrl-C. Each report is asked of the broker as ``status`` asks it."""
    from .broker.http import StatusHTTPServer, TransportSource  # only for status --http
    from .broker.main import is_loopback  # only for status --http
    secret = settings.BROKER_SECRET
    if not is_loopback(address[0]) and not secret:
        raise ConfigurationError("status --http %s:%d: beyond loopback the page needs "
                                 "BROKER_SECRET (its password)" % address)
    server = StatusHTTPServer(None, address, secret=secret,
                              source=TransportSource(lambda: _connect(settings)))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    announce("minitask status page on %s (broker %s)" % (server.url,
                                                           safe_url(settings.BROKER_URL)))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def run_status(args):
    settings = _settings(args)
    if args.http:
        return serve_status(settings, args.http)
    with _connect(settings) as conn:
        report = conn.status()
    if args.json:
        _print_json(report)
        return 0
    broker = report["broker"]
    print("broker %s, up %s, %d connections" % (safe_url(settings.BROKER_URL),
                                                  _duration(broker["uptime"]),
                                                  broker["connections"]))
    print("journal %s (fsync %s), %d results, %d revoked, %d unroutable" % (
        _size(broker["journal_bytes"]) if broker["persistent"] else
        "off (Redis's appendonly is no)" if broker.get("transport") == "redis" else
        "off (--no-persist)",
        broker["fsync"], broker["results"], broker["revoked"], broker["unroutable"]))
    if broker.get("journal_faults"):        # a broker before format 2 does not say
        lost = broker.get("journal_records_lost", 0)
        print("journal faults found at start: %d, %d record%s lost (see the broker's log)"
              % (broker["journal_faults"], lost, "" if lost == 1 else "s"))
    rows = [(q["name"], q["ready"], q["unacked"], q["delayed"], q["dead"], q["consumers"])
            for q in report["queues"] if not q["name"].startswith(P.GENERATED_QUEUE_PREFIX)]
    print()
    print(format_table(("queue", "ready", "unacked", "delayed", "dead", "consumers"), rows))
    print()
    workers = report["workers"]
    if not workers:
        print("no workers connected")
    else:
        rows = [(w.get("hostname", "?"), w.get("pid", "?"), w.get("concurrency", "?"),
                 w["unacked"], w["handed_over"], _duration(w["connected_for"]),
                 w.get("state", "ok")) for w in workers]
        print(format_table(("worker", "pid", "procs", "reserved", "running", "uptime", "state"),
                           rows))
        for worker in workers:
            if worker.get("degraded"):
                print("%s is degraded: %s" % (worker.get("hostname", "?"), worker["degraded"]))
    return 0


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    if seconds < 172800:
        return "%dh" % (seconds // 3600)
    return "%dd" % (seconds // 86400)


def _size(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return "%d %s" % (count, unit) if unit == "B" else "%.1f %s" % (count, unit)
        count /= 1024.0


# -- call, purge, result -----------------------------------------------------------------------

def _parse_json(text, what, kind):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError("%s is not valid JSON: %s" % (what, exc)) from None
    if not isinstance(value, kind):
        raise ConfigurationError("%s must be a JSON %s"
                                 % (what, "list" if kind is list else "object"))
    return value


def run_call(args):
    settings = _settings(args)
    if args.args_option is not None and args.args != "[]":
        raise ConfigurationError("give the arguments once: ARGS or -a/--args, not both")
    arguments = _parse_json(args.args if args.args_option is None else args.args_option,
                            "ARGS", list)
    kwargs = _parse_json(args.kwargs, "--kwargs", dict)
    eta = time.time() + args.countdown if args.countdown else 0.0
    if args.queue:
        exchange, routing_key = "", args.queue
    else:
        exchange = settings.DEFAULT_EXCHANGE if args.exchange is None else args.exchange
        routing_key = args.routing_key or settings.DEFAULT_ROUTING_KEY
    # Mandatory: a typo in --queue is an error here, not a message silently dropped.
    message = TaskMessage(args.name, arguments, kwargs, eta=eta, exchange=exchange,
                          routing_key=routing_key, priority=args.priority, mandatory=True,
                          serializer=settings.TASK_SERIALIZER)
    with _connect(settings) as conn:
        declare_topology(conn, settings)
        conn.publish(message.encode())
        result = {"task_id": message.id}
        if args.wait:
            state, meta, note = _wait(AsyncResult(message.id, connection=conn), args)
            result.update(state=state, result=meta)
            if note:
                result["error"] = note
    if args.json:
        _print_json(result)
    else:
        print(result["task_id"])
        if args.wait:
            print("%s: %s" % (result["state"], result["result"]))
    return 0 if not args.wait or result["state"] == "SUCCESS" else 1


def _wait(result, args):
    """``(state, value, note)`` of `result` once it is ready or `args.timeout` is up; the
    state is printed either way, and `note` says when it is what the wait gave up on."""
    try:
        value = result.get(timeout=args.timeout, propagate=False)
    except TimeoutError:
        state = result.state
        note = "timed out after %gs waiting for %s (state %s)" % (args.timeout, result.id,
                                                                  state)
        if not args.json:
            print("minitask %s: %s" % (args.command, note), file=sys.stderr)
        return state, None, note
    return result.state, value if result.state == "SUCCESS" else repr(value), None


def run_purge(args):
    settings = _settings(args)
    named = list(dict.fromkeys(args.queues + args.queue_list))
    queues = [queue for queue in named or configured_queues(settings)
              if queue not in args.exclude_queues]
    if not queues:
        raise ConfigurationError("no queue left to purge: --exclude-queues names them all")
    names = ", ".join(queues)
    if not args.yes:
        if not sys.stdin.isatty():
            raise MinitaskError("purge %s would drop their waiting messages; add --yes (or -f) "
                                "to confirm" % names)
        answer = input("Drop every waiting message of %s? [y/N] " % names)
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return 1
    purged = {}
    with _connect(settings) as conn:
        for queue in queues:
            try:
                purged[queue] = conn.purge(queue)
            except BrokerError as exc:
                if named or exc.code != 404:
                    raise
                purged[queue] = None            # in the settings, not declared yet: empty
    if args.json:
        _print_json({"purged": sum(n or 0 for n in purged.values()), "queues": purged})
    else:
        for queue, count in purged.items():
            print("purged %d messages from %s" % (count, queue) if count is not None
                  else "no queue %s in the broker yet" % queue)
    return 0


def run_result(args):
    settings = _settings(args)
    with _connect(settings) as conn:
        result = AsyncResult(args.task_id, connection=conn)
        note = None
        if args.wait:
            state, value, note = _wait(result, args)
        else:
            state = result.state
            value = result.result
            value = value if state == "SUCCESS" or value is None else repr(value)
        traceback = result.traceback
    if args.json:
        _print_json(dict({"task_id": args.task_id, "state": state, "result": value,
                          "traceback": traceback}, **({"error": note} if note else {})))
    else:
        print("%s: %s" % (state, value))
        if traceback:
            print(traceback.rstrip())
    # Waiting is asking for the outcome: as `call --wait`, anything but SUCCESS is a failure.
    return 0 if not args.wait or state == "SUCCESS" else 1


# -- remote control ----------------------------------------------------------------------------

def _destination(args):
    """The worker names of ``-d``, or None for all. As many replies as names end the wait,
    as in Celery: "if a destination is specified, this limit is set to the number of
    destination hosts"."""
    return [name.strip() for name in args.destination.split(",")] if args.destination else None


def run_inspect(args):
    settings = _settings(args)
    arguments, held = None, None
    if args.method == "query_task":
        if not args.ids:
            raise ConfigurationError("query_task needs at least one task id")
        arguments = {"ids": args.ids}
    elif args.ids:
        raise ConfigurationError("inspect %s takes no task ids (query_task does)" % args.method)
    with _connect(settings) as conn:
        destination = _destination(args)
        replies = conn.broadcast(args.method, arguments, destination=destination,
                                 timeout=args.timeout, limit=destination and len(destination))
        if args.method == "scheduled":
            # None from a broker older than the "scheduled" argument of STATUS.
            held = broker_scheduled(conn)
    if not replies and held is None:
        raise TimeoutError("no workers answered within %gs" % args.timeout)
    if held is not None:
        replies["broker" if "broker" not in replies else safe_url(settings.BROKER_URL)] = held
    if args.json:
        _print_json(replies)
        return 0
    for hostname in sorted(replies, key=lambda name: (replies[name] is held, name)):
        reply = replies[hostname]
        if reply is held:
            print("broker (the countdowns it holds until shortly before they are due):")
        else:
            print("%s:" % hostname)
        if isinstance(reply, list):
            print("\n".join("  " + _describe_item(item) for item in reply) or "  (none)")
        elif args.method == "query_task" and isinstance(reply, dict) and "error" not in reply:
            print("\n".join("  %s: %s" % (found[0], _describe_item(found[1]))
                            for found in reply.values() if isinstance(found, list)
                            and len(found) == 2) or "  (none of them)")
        elif isinstance(reply, dict):
            print(format_mapping(reply, indent=2))
        else:
            print("  %s" % (reply,))
    if held is not None and len(replies) == 1:
        print("(no workers answered within %gs)" % args.timeout)
    return 0


def _describe_item(item):
    """One task of an inspect list, as a line: name[id] and what is known about it."""
    if not isinstance(item, dict):
        return str(item)
    parts = ["%s[%s]" % (item.get("name"), item.get("id"))]
    if isinstance(item.get("runtime"), (int, float)):
        parts.append("running for %s" % duration_text(item["runtime"]))
    if isinstance(item.get("eta"), (int, float)):
        parts.append("eta %s" % _when(item["eta"]))
    if item.get("queue"):
        parts.append("queue %s" % item["queue"])
    if item.get("worker_pid"):
        parts.append("pid %s" % item["worker_pid"])
    if item.get("redelivered"):
        parts.append("redelivered")
    return "  ".join(parts)


# Reply keys whose numbers are durations or points in time (epoch seconds).
_DURATION_KEYS = ("uptime", "runtime", "connected_for")
_TIME_KEYS = ("eta", "time_start", "date_done", "time")


def format_mapping(mapping, indent=0):
    """A reply object as aligned ``key  value`` lines: durations and times in words, lists
    comma-separated, objects inline (``key value, ...``)."""
    width = max((len(str(key)) for key in mapping), default=0)
    return "\n".join("%s%s  %s" % (" " * indent, str(key).ljust(width), _value_text(key, value))
                     for key, value in mapping.items())


def _value_text(key, value):
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, (int, float)) and key in _DURATION_KEYS:
        return duration_text(value)
    if isinstance(value, (int, float)) and key in _TIME_KEYS:
        return _when(value)
    if isinstance(value, float):
        return "%.6g" % value
    if isinstance(value, list):
        return ", ".join(_value_text(key, item) for item in value) or "-"
    if isinstance(value, dict):
        return ", ".join("%s %s" % (name, _value_text(name, item))
                         for name, item in sorted(value.items())) or "-"
    return str(value)


def duration_text(seconds):
    """A duration as people say it: 0.35s, 42.0s, 3m 07s, 5h 02m, 2d 03h."""
    if seconds < 10:
        return "%.2fs" % seconds
    if seconds < 60:
        return "%.1fs" % seconds
    seconds = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if seconds >= size:
            return "%d%s %02d%s" % (seconds // size, unit, seconds % size // sub_size, sub)
    return "%ds" % seconds


def _when(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _reply_text(reply):
    """A worker's answer to a control command, as a line: "pong", the "ok" text, or
    "error: ..." (anything else as aligned key/values)."""
    if isinstance(reply, dict) and set(reply) == {"ok"}:
        return str(reply["ok"])
    if isinstance(reply, dict) and set(reply) == {"error"}:
        return "error: %s" % reply["error"]
    if isinstance(reply, dict):
        return "\n" + format_mapping(reply, indent=2)
    return str(reply)


def run_control(args):
    settings = _settings(args)
    method, rest = args.method, args.arguments
    if method == "rate_limit":
        if len(rest) != 2:
            raise ConfigurationError("rate_limit needs TASK_NAME and RATE (e.g. 10/s, 0 for off)")
        arguments = {"task_name": rest[0], "rate_limit": rest[1]}
    elif method == "revoke":
        if not rest:
            raise ConfigurationError("revoke needs at least one task id")
        arguments = {"task_ids": rest, "terminate": args.terminate}
    elif method in ("add_consumer", "cancel_consumer"):
        if len(rest) != 1:
            raise ConfigurationError("%s needs one QUEUE" % method)
        arguments = {"queue": rest[0]}
    else:
        arguments = {}
    with _connect(settings) as conn:
        if method == "revoke":          # kept by the broker, for workers started later too
            conn.revoke(arguments["task_ids"], terminate=args.terminate)
            replies = {"revoked": arguments["task_ids"], "terminate": args.terminate}
        else:
            destination = _destination(args)
            replies = conn.broadcast(method, arguments, destination, args.timeout,
                                     limit=destination and len(destination))
    if not replies:
        raise TimeoutError("no workers answered within %gs" % args.timeout)
    if args.json:
        _print_json(replies)
    elif method == "revoke":
        print("revoked %s" % ", ".join(arguments["task_ids"]))
    else:
        for hostname in sorted(replies):
            print("%s: %s" % (hostname, _reply_text(replies[hostname])))
    if method == "revoke":
        return 0
    refused = any(isinstance(reply, dict) and "error" in reply for reply in replies.values())
    return 1 if refused else 0

