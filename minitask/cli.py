"""The command line: `python -m minitask COMMAND ...` (also installed as `minitask`).

The only place that prints errors: a user's mistake is one line on stderr and exit code 2
(bad use) or 1 (could not do it, e.g. no broker there); tracebacks are for bugs.
"""

import argparse
import logging
import os
import sys

from .argtypes import comma_list, host_port, port, positive_int, seconds
from .exceptions import MinitaskError

__all__ = ["main", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and the exit code is 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, "%s: error: %s (see --help)\n" % (self.prog, message))


class _UsageError(MinitaskError):
    """A command was used wrongly in a way argparse cannot see."""


def build_parser():
    parser = _Parser(prog="minitask", description="A distributed task queue in the spirit of "
                     "early Celery, on the Python standard library alone.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

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
    broker.add_argument("-l", "--loglevel", default="INFO", help="log level (default INFO)")
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
    worker.add_argument("-l", "--loglevel", help="log level (default: LOGLEVEL, WARNING)")
    worker.add_argument("-f", "--logfile", help="log file (default: LOGFILE, stderr)")
    worker.add_argument("-n", "--hostname", help="name of this worker (default pid@host)")
    worker.add_argument("--prefetch-multiplier", type=positive_int,
                        help="messages reserved per pool process (default 4)")
    worker.add_argument("--max-tasks-per-child", type=positive_int,
                        help="replace a pool process after this many tasks")
    worker.add_argument("--shutdown-timeout", type=seconds,
                        help="seconds a warm shutdown waits for running tasks (default 30)")
    worker.add_argument("--beat", action="store_true", default=None,
                        help="also send periodic tasks (one beat sends at a time)")
    worker.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                        help="how pool processes start (default: the platform's)")
    worker.set_defaults(run=_run_worker)

    demo = commands.add_parser("demo", help="broker, worker and a few tasks, on the defaults")
    demo.set_defaults(run=_run_demo)

    from .admin import add_commands
    add_commands(commands, _Parser)
    return parser


def _version():
    from . import __version__
    return "minitask %s (Python %s)" % (__version__, sys.version.split()[0])


def main(argv=None):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())      # task modules next to the caller, as `python -m`
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or EXIT_OK
    except _UsageError as exc:
        print("minitask %s: %s" % (args.command, exc), file=sys.stderr)
        return EXIT_USAGE
    except MinitaskError as exc:
        print("minitask %s: %s" % (args.command, exc), file=sys.stderr)
        return EXIT_USAGE if type(exc).__name__ == "ConfigurationError" else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left early (`minitask status | head`): stop quietly, as Unix tools do.
        # Python would complain again flushing stdout at exit, so point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _setup_logging(level, logfile):
    from .log import setup_logging
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
    from .broker.main import BrokerConfig, run_broker
    from .config import configure, parse_broker_url
    settings = configure()
    _setup_logging(args.loglevel, args.logfile)
    _scheme, host, port, _tls = parse_broker_url(settings.BROKER_URL)
    config = BrokerConfig(
        host=args.host or host, port=port if args.port is None else args.port,
        data_dir=args.data_dir, persist=not args.no_persist, fsync=args.fsync,
        secret=_read_secret(args.secret_file) or settings.BROKER_SECRET,
        certfile=args.certfile, keyfile=args.keyfile,
        max_message_bytes=args.max_message_bytes, http=args.http,
        handover_grace=args.worker_lost_grace, stall_timeout=args.stall_timeout)

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
    from .config import configure
    from .loaders import current_loader
    from .worker import Worker
    overrides = {key: value for key, value in worker_overrides(args).items()
                 if value is not None}
    settings = configure(**overrides)
    _setup_logging(settings.LOGLEVEL, settings.LOGFILE)
    loader = current_loader()
    loader.on_worker_init()
    for name in args.include:
        loader.import_module(name)
    worker = Worker(settings, hostname=args.hostname, start_method=settings.START_METHOD,
                    imports=args.include, beat=settings.BEAT, settings_overrides=overrides)
    return worker.run()


def _run_demo(args):
    from .demo import run_demo
    return run_demo()
