"""Celery's command-line habits, each with a one-line answer naming the minitask way.

People who come from Celery type its flags and commands from memory. The ones minitask takes
as they are (`-A proj`, `-B`, `-P prefork`, `--loglevel=info`, `purge -f`, `inspect -t 5`) are
real options of the parsers in `cli.py` and `admin.py`. Everything else Celery knows and
minitask does not is looked up here when the parser reports it, so the user reads what to type
instead of "unrecognized arguments". Pure data and lookups: nothing here prints.
"""

__all__ = ["command_answer", "flag_answer", "flag_of", "method_answer"]

_DAEMON = ("minitask does not daemonize: run the worker under a service manager (systemd, "
           "supervisord, runit), which keeps its pid and user")
_SCHEDULE = ("periodic tasks are sent by a worker started with --beat (-B); the schedule's "
             "state lives in the broker, so there is no file to name")

# Flags of `celery worker` that minitask's worker does not take.
_WORKER_FLAGS = {
    "-E": "minitask sends no task events: every task is counted as it ends; watch "
          "`minitask status --http HOST:PORT` (its /metrics has per-task counters)",
    "--autoscale": "minitask does not autoscale its pool: give its size with -c N",
    "-O": "minitask already works as -O fair: a task that runs longer than a few "
          "milliseconds goes only to an idle pool process; --prefetch-multiplier N sets how "
          "many tasks a worker reserves per process",
    "--max-memory-per-child": "minitask has no memory limit per pool process: replace them "
                              "after a number of tasks with --max-tasks-per-child N",
    "--time-limit": "give the task a time limit: @task(time_limit=SECONDS)",
    "--soft-time-limit": "give the task a soft time limit: @task(soft_time_limit=SECONDS)",
    "-D": _DAEMON, "--pidfile": _DAEMON, "--uid": _DAEMON, "--gid": _DAEMON,
    "--umask": _DAEMON, "--executable": _DAEMON,
    "--statedb": "not needed: the broker keeps revoked task ids, and a restarted worker "
                 "learns them from it",
    "-s": _SCHEDULE, "-S": _SCHEDULE,
    "-X": "name the queues to consume instead: -Q QUEUE,QUEUE",
    "--purge": "empty a queue before the worker starts with `minitask purge QUEUE --yes`",
    "--heartbeat-interval": "the worker's heartbeat to the broker is built in; there is "
                            "nothing to set",
    "-b": "give the broker as --broker URL (or BROKER_URL in the settings)",
}

# Celery's global options (before the command) that minitask does not take.
_GLOBAL_FLAGS = {
    "--workdir": "change to that folder first: cd DIR && minitask ...",
    "--config": "name the settings module with MINITASK_CONFIG_MODULE=module",
    "--result-backend": "results live in the broker: there is no result backend to name",
    "--loader": "name a loader with LOADER in the settings module",
    "-q": "minitask's commands print only what they were asked for",
    "-C": "minitask's commands print no colours",
}

# Flags of the operator's commands that minitask does not take.
_COMMAND_FLAGS = {
    "call": {"--eta": "give a delay in seconds instead: --countdown S",
             "--serializer": "the task is sent with TASK_SERIALIZER from the settings"},
}

# Long spellings of the flags above; looked up as their short form.
_SYNONYMS = {
    "--task-events": "-E", "--events": "-E", "--detach": "-D", "--schedule": "-s",
    "--scheduler": "-S", "--exclude-queues": "-X", "--discard": "--purge",
    "--quiet": "-q", "--no-color": "-C", "--app": "-A",
}

# Celery's commands that minitask does not have.
_COMMANDS = {
    "multi": "minitask has no multi: start one `minitask worker -n NAME` per worker under a "
             "service manager (systemd, supervisord); one worker already uses every CPU",
    "flower": "minitask serves the monitoring page itself: minitask status --http "
              "127.0.0.1:5680, on any broker (Prometheus metrics at /metrics)",
    "events": "minitask has no event stream: watch the status page (minitask status --http "
              "HOST:PORT), minitask status or minitask inspect active",
    "beat": "periodic tasks are sent by a worker started with --beat (-B); one beat sends at "
            "a time, whatever the number of workers",
    "shell": "start python3 and import your task modules; they reach the broker by BROKER_URL",
    "report": "minitask --version tells the versions; minitask status tells the rest",
    "amqp": "minitask's broker is its own: minitask status, call, purge and result",
    "list": "minitask status lists the queues (--json: also the exchanges)",
    "migrate": "minitask has no migrate: point the producers at the new broker and keep "
               "the old workers until minitask status on the old one (-b OLD_URL) shows "
               "its queues empty",
    "upgrade": "minitask reads Celery's setting names in the settings module; nothing to "
               "upgrade",
    "graph": "minitask has no graph: minitask status shows the workers and queues",
    "logtool": "minitask has no logtool: the worker logs one line per task received, "
               "succeeded, retried and failed",
}


# Celery's inspect and control methods that minitask's do not have.
_POOL_SIZE = "a worker's pool has a fixed size: restart it with -c N"
_NO_EVENTS = ("minitask sends no task events: the broker counts every task itself "
              "(minitask status --http HOST:PORT serves the page and /metrics)")
_METHODS = {
    "inspect": {
        "active_queues": "the queues each worker consumes are in minitask inspect stats "
                         "(and minitask status)",
        "conf": "a worker's settings are your settings module; minitask inspect stats "
                "shows its pool, queues and broker",
        "report": "minitask inspect stats",
        "clock": "minitask has no logical clock: minitask inspect stats tells each worker's "
                 "uptime",
        "memdump": "minitask inspect stats; watch memory with your system's tools",
        "memsample": "minitask inspect stats; watch memory with your system's tools",
        "objgraph": "minitask has no objgraph: use your system's tools on the pool's pids "
                    "(minitask inspect stats lists them)",
    },
    "control": {
        "time_limit": "give the task a time limit: @task(time_limit=SECONDS, "
                      "soft_time_limit=SECONDS), then restart the workers",
        "terminate": "minitask control revoke TASK_ID --terminate",
        "pool_grow": _POOL_SIZE, "pool_shrink": _POOL_SIZE, "autoscale": _POOL_SIZE,
        "pool_restart": "restart the worker under its service manager: its pool starts "
                        "with the code as it is now",
        "enable_events": _NO_EVENTS, "disable_events": _NO_EVENTS,
        "heartbeat": "the worker's heartbeat to the broker is built in; there is nothing "
                     "to ask for",
        "election": "one beat sends at a time already (a lease in the broker); start "
                    "workers with --beat",
        "cancel_consumer_all": "minitask control cancel_consumer QUEUE, once per queue",
    },
}


def method_answer(command, method):
    """The minitask way for a Celery inspect or control method minitask lacks, or None."""
    return _METHODS.get(command, {}).get(method)


def flag_of(token):
    """The flag a command-line word spells: "--pool=solo" -> "--pool", "-Ofair" -> "-O"."""
    if token.startswith("--"):
        return token.split("=", 1)[0]
    if token.startswith("-") and len(token) > 2:
        return token[:2]
    return token


def flag_answer(command, token):
    """The minitask way for a flag Celery knows and `command` does not take, or None."""
    flag = flag_of(token)
    flag = _SYNONYMS.get(flag, flag)
    table = _WORKER_FLAGS if command == "worker" else _COMMAND_FLAGS.get(command, {})
    answer = table.get(flag) or _GLOBAL_FLAGS.get(flag)
    if answer is None and flag == "-A" and command is not None:
        answer = "-A/--app goes before the command: minitask -A proj %s ..." % command
    return answer


def command_answer(name):
    """The minitask way for a Celery command minitask does not have, or None."""
    return _COMMANDS.get(name)
