"""The command line: `python -m minitask COMMAND ...` (also installed as `minitask`).

The only place that prints errors: a user's mistake is one line on stderr, ``minitask
COMMAND: ...``, and exit code 2 (bad use) or 1 (could not do it, e.g. no broker there); with
``--json`` the same line is a JSON object on stdout. Tracebacks are for bugs. Celery's flags
and commands that minitask does not take are answered with the minitask way
(`minitask.habits`).
"""

import argparse
import json
import logging
import os
import sys

from . import habits
from .argtypes import (comma_list, host_port, loglevel, pool, port, positive_int,
                       positive_seconds, seconds)
from .exceptions import MinitaskError
from .admin import add_commands
from . import __version__
from .loaders import app_modules, current_loader, import_app_package
from .log import send_logging_signals, setup_logging
from .broker.main import BrokerConfig, run_broker
from .config import configure, parse_broker_url
from .app import send_app_signals
from .worker import Worker, djangofixup
from .worker.nodenames import default_node_name, log_file_name, node_name

__all__ = ["main", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


class _UsageError(MinitaskError):
    """A command was used wrongly in a way argparse cannot see."""


class _ArgumentError(Exception):
    """The command line was refused; `command` is the subcommand it names, if any, and
    `see_help` says whether --help would tell more (argparse's own errors)."""

    def __init__(self, command, message, see_help=False):
        super().__init__(message)
        self.command = command
        self.see_help = see_help


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised for `main` to print in one line (exit code 2);
    and a parser knows its flags (whether a command line that failed asked for JSON)."""

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        self.__dict__.setdefault("flags", set()).update(action.option_strings)
        return action

    def error(self, message):
        raise _ArgumentError(self.prog.partition(" ")[2] or None, message, see_help=True)


# Options before the command that take a value (to find the command word in an argv).
_GLOBAL_VALUED = ("-A", "--app", "-b", "--broker")


def build_parser():
    parser = _Parser(prog="minitask", description="A distributed task queue in the spirit of "
                     "early Celery, on the Python standard library alone.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-A", "--app", action="append", default=[], metavar="MODULE",
                        help="import MODULE[:ATTR] before the command, as Celery's -A proj "
                        "(and MODULE.tasks if it is a package that has one); for a worker, "
                        "these are task modules, as -I")
    parser.add_argument("-b", "--broker", dest="global_broker", metavar="URL",
                        help="broker URL, as the command's own --broker")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    parser.commands = commands.choices          # name -> its parser

    broker = commands.add_parser("broker", help="run the broker")
    broker.add_argument("--host", help="address to listen on (default: BROKER_URL's, "
                        "127.0.0.1)")
    broker.add_argument("--port", type=port, help="port (default: BROKER_URL's, 5679; 0 picks "
                        "a free one)")
    broker.add_argument("--data-dir", help="where the journal lives (default: the user's data "
                        "directory)")
    broker.add_argument("--no-persist", action="store_true",
                        help="keep everything in memory: nothing survives a restart")
    broker.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec",
                        help="when the journal is flushed to disk (default everysec)")
    broker.add_argument("--secret-file", help="file holding the shared secret (else "
                        "BROKER_SECRET)")
    broker.add_argument("--certfile", help="TLS certificate (PEM)")
    broker.add_argument("--keyfile", help="TLS private key (PEM)")
    broker.add_argument("--max-message-bytes", type=positive_int, default=16 * 1024 * 1024,
                        help="largest message accepted (default 16 MiB)")
    broker.add_argument("--http", type=host_port, metavar="HOST:PORT",
                        help="also serve the status page there")
    broker.add_argument("--worker-lost-grace", type=seconds, default=10.0, metavar="S",
                        help="seconds a worker whose connection dropped has to come back and "
                        "claim its running tasks before they fail with WorkerLostError "
                        "(default 10)")
    broker.add_argument("--stall-timeout", type=seconds, default=30.0, metavar="S",
                        help="cut off a client that leaves a frame half sent, or reads none "
                        "of what the broker sends it, for this long (default 30)")
    broker.add_argument("--handshake-timeout", type=positive_seconds, default=10.0,
                        metavar="S", help="cut off a client that has not finished its "
                        "handshake (TLS included) this long after connecting (default 10)")
    broker.add_argument("--max-connections", type=positive_int, default=1024, metavar="N",
                        help="connections served at once; a quarter of them are for clients "
                        "still in their handshake (default 1024)")
    broker.add_argument("--max-partial-bytes", type=positive_int, default=256 * 1024 * 1024,
                        metavar="N", help="bytes of unfinished frames held for all clients "
                        "together; past it the largest holders are cut off (default 256 MiB)")
    broker.add_argument("-l", "--loglevel", type=loglevel, default="INFO",
                        help="log level (default INFO)")
    broker.add_argument("-f", "--logfile", help="log file (default stderr)")
    broker.set_defaults(run=_run_broker)

    worker = commands.add_parser("worker", help="run a worker")
    worker.add_argument("--broker", help="broker URL (default BROKER_URL)")
    worker.add_argument("-I", "--include", type=comma_list, default=[], metavar="MODULES",
                        help="comma-separated task modules to import (besides IMPORTS)")
    worker.add_argument("-c", "--concurrency", type=positive_int,
                        help="pool processes (default: CONCURRENCY, or one per CPU)")
    worker.add_argument("-Q", "--queues", type=comma_list, metavar="QUEUES",
                        help="comma-separated queues (default: DEFAULT_QUEUE plus QUEUES)")
    worker.add_argument("-l", "--loglevel", type=loglevel,
                        help="log level, any case (default: LOGLEVEL, WARNING)")
    worker.add_argument("-f", "--logfile", help="log file (default: LOGFILE, stderr); %%p, "
                        "%%n: the worker's name, its part before @")
    worker.add_argument("-n", "--hostname", help="name of this worker (default pid@host); "
                        "%%h, %%n, %%d: this host's name, without its domain, its domain")
    worker.add_argument("--prefetch-multiplier", type=positive_int,
                        help="messages reserved per pool process (default 4)")
    worker.add_argument("--max-tasks-per-child", type=positive_int,
                        help="replace a pool process after this many tasks")
    worker.add_argument("--shutdown-timeout", type=seconds,
                        help="seconds a warm shutdown waits for running tasks (default 30)")
    worker.add_argument("-B", "--beat", action="store_true", default=None,
                        help="also send periodic tasks (one beat sends at a time)")
    worker.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                        help="how pool processes start (default: the platform's)")
    celery = worker.add_argument_group("taken as Celery takes them")
    celery.add_argument("-A", "--app", dest="worker_app", action="append", default=[],
                        metavar="MODULE", help="the same as -I MODULE (and MODULE.tasks if it "
                        "is a package that has one)")
    celery.add_argument("-P", "--pool", type=pool, metavar="prefork",
                        help="the only pool minitask has: processes")
    for flag in ("--without-gossip", "--without-mingle", "--without-heartbeat"):
        celery.add_argument(flag, action="store_true",
                            help="no effect: minitask workers never gossip, mingle or send "
                            "event heartbeats")
    worker.set_defaults(run=_run_worker)

    demo = commands.add_parser("demo", help="broker, worker and a few tasks, on the defaults")
    demo.set_defaults(run=_run_demo)

    add_commands(commands, _Parser)
    return parser


def _version():
    return "minitask %s (Python %s)" % (__version__, sys.version.split()[0])


def main(argv=None):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())      # task modules next to the caller, as `python -m`
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse(argv)
    except _ArgumentError as exc:
        message = "error: %s%s" % (exc, " (see --help)" if exc.see_help else "")
        return _fail(exc.command, message, EXIT_USAGE, _asks_for_json(argv, exc.command),
                     str(exc))
    as_json = bool(getattr(args, "json", False))
    try:
        _apply_global_options(args)
        return args.run(args) or EXIT_OK
    except _UsageError as exc:
        return _fail(args.command, str(exc), EXIT_USAGE, as_json)
    except MinitaskError as exc:
        code = EXIT_USAGE if type(exc).__name__ == "ConfigurationError" else EXIT_FAILURE
        return _fail(args.command, str(exc), code, as_json)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left early (`minitask status | head`): stop quietly, as Unix tools do.
        # Python would complain again flushing stdout at exit, so point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def parse(argv):
    """The parsed command line; raises _ArgumentError naming the subcommand on bad use.

    A Celery habit (a flag or command minitask does not take) is answered with the minitask
    way, even where argparse stumbled over it first (``inspect -A proj active`` reads as the
    method "proj").
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except _ArgumentError as exc:
        before, word, after = _split_at_command(argv)
        command = exc.command
        flag, answer = _habit_in(after if command else before, command)
        if not answer and command is None and word is not None:
            answer = habits.command_answer(word)
            command = word if answer else None
        if not answer and command in ("inspect", "control"):
            method = _first_word(after, ("-t", "--timeout", "-d", "--destination"))
            answer = habits.method_answer(command, method)
            flag = method if answer else flag
        if answer:
            raise _ArgumentError(command, "%s: %s" % (flag, answer) if flag else answer) \
                from None
        raise
    if extra:
        flag, answer = _habit_in(extra, args.command)
        if answer:
            raise _ArgumentError(args.command, "%s: %s" % (flag, answer))
        raise _ArgumentError(args.command, "unrecognized arguments: %s" % " ".join(extra),
                             see_help=True)
    return args


def _split_at_command(argv):
    """``(words before, the command word, words after)``: the command word is the first that
    is neither an option nor the value of -A or -b (None when there is none)."""
    index = _first_word_at(argv, _GLOBAL_VALUED)
    if index is None:
        return argv, None, []
    return argv[:index], argv[index], argv[index + 1:]


def _first_word(words, valued):
    index = _first_word_at(words, valued)
    return None if index is None else words[index]


def _first_word_at(words, valued):
    """Where the first of `words` is that is neither an option nor the value of one of the
    options in `valued` (None: nowhere)."""
    index = 0
    while index < len(words):
        word = words[index]
        if word in valued:
            index += 2
        elif word.startswith("-"):
            index += 1
        else:
            return index
    return None


def _habit_in(words, command):
    """``(flag, answer)`` for the first flag in `words` that is a Celery habit `command`
    does not take (None: before any command), else ``(None, None)``."""
    for word in words:
        if word.startswith("-"):
            answer = habits.flag_answer(command, word)
            if answer:
                return habits.flag_of(word), answer
    return None, None


def _fail(command, message, code, as_json, json_message=None):
    """Say why the command failed, in one line (stderr, or a JSON object on stdout with
    --json); returns its exit code."""
    if as_json:
        print(json.dumps({"error": json_message or message, "command": command}))
    else:
        print("minitask%s: %s" % (" " + command if command else "", message), file=sys.stderr)
    return code


def _asks_for_json(argv, command):
    """Whether a command line that failed to parse gave `command` a JSON flag it takes (a
    worker's ``--json`` is one of the arguments it does not know, not a request)."""
    command_parser = build_parser().commands.get(command)
    flags = command_parser.flags if command_parser is not None else ()
    return any(flag in argv for flag in ("--json", "-j") if flag in flags)


def _apply_global_options(args):
    """-A and -b before the command (Celery 5's order): -A imports, or adds task modules to a
    worker; -b is the command's --broker. An -A package is imported before any setting is
    read, as Celery does: it may say where the settings are (`import_app_package`)."""
    specs = args.app + getattr(args, "worker_app", [])
    for spec in specs:
        import_app_package(spec)
    modules = [name for spec in specs for name in app_modules(spec)]
    if args.command == "worker":
        args.include = modules + [name for name in args.include if name not in modules]
    elif modules:
        for name in modules:
            current_loader().import_module(name)
    if args.global_broker:
        if not hasattr(args, "broker"):
            raise _UsageError("-b/--broker names a broker to talk to; this command has none "
                              "(a broker listens on --host and --port)")
        args.broker = args.broker or args.global_broker


def _setup_logging(level, logfile):
    setup_logging(level, logfile)


def _read_secret(path):
    if not path:
        return None
    try:
        with open(path, "r", encoding="utf-8") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise _UsageError("cannot read --secret-file %s: %s" % (path, exc.strerror or exc)) \
            from None
    if not secret:
        raise _UsageError("--secret-file %s is empty" % path)
    return secret


def _run_broker(args):
    settings = configure()
    _setup_logging(args.loglevel, args.logfile)
    _scheme, host, port, _tls = parse_broker_url(settings.BROKER_URL)
    config = BrokerConfig(
        host=args.host or host, port=port if args.port is None else args.port,
        data_dir=args.data_dir, persist=not args.no_persist, fsync=args.fsync,
        secret=_read_secret(args.secret_file) or settings.BROKER_SECRET,
        certfile=args.certfile, keyfile=args.keyfile,
        max_message_bytes=args.max_message_bytes, http=args.http,
        handover_grace=args.worker_lost_grace, stall_timeout=args.stall_timeout,
        handshake_timeout=args.handshake_timeout, max_connections=args.max_connections,
        max_partial_bytes=args.max_partial_bytes)

    def announce(line):
        print(line, flush=True)
    return run_broker(config, settings, announce)


def worker_overrides(args):
    """Settings named by the worker's flags (None = not given)."""
    return {"BROKER_URL": args.broker, "CONCURRENCY": args.concurrency,
            "WORKER_QUEUES": args.queues, "LOGLEVEL": args.loglevel, "LOGFILE": args.logfile,
            "PREFETCH_MULTIPLIER": args.prefetch_multiplier,
            "MAX_TASKS_PER_CHILD": args.max_tasks_per_child,
            "SHUTDOWN_TIMEOUT": args.shutdown_timeout, "BEAT": args.beat,
            "START_METHOD": args.start_method}


def _run_worker(args):
    overrides = {key: value for key, value in worker_overrides(args).items()
                 if value is not None}
    settings = configure(**overrides)
    hostname = node_name(args.hostname) if args.hostname else default_node_name()
    logfile = settings.LOGFILE and log_file_name(settings.LOGFILE, hostname)
    djangofixup.setup()                 # before any tasks module: they may import models
    _setup_logging(settings.LOGLEVEL, logfile)
    loader = current_loader()
    loader.on_worker_init()
    for name in args.include:
        loader.import_module(name)
    send_logging_signals(settings.LOGLEVEL, logfile)
    send_app_signals()                  # before the beat reads what they add to its schedule
    worker = Worker(settings, hostname=hostname, logfile=logfile,
                    start_method=settings.START_METHOD,
                    imports=args.include, beat=settings.BEAT, settings_overrides=overrides)
    return worker.run()


def _run_demo(args):
    from .demo import run_demo      # here: importing it registers the demo's tasks
    return run_demo()
