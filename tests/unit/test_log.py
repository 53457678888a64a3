"""minitask.log and `Task.get_logger()`: a task's lines go to its logfile at its loglevel, each
naming the task and its id, and never twice."""
import logging
import logging.config

import pytest

from minitask import registry, task
from minitask import signals
from minitask.log import (
    FORMAT, TASK_FORMAT, level_of, send_logging_signals, setup_logging, task_logger,
)


from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)


@pytest.fixture(autouse=True)
def isolated(isolated_tasks):  # noqa: F811  (the fixture imported above)
    """The shared isolation, and the tasks' log files closed before their tasks are forgotten."""
    yield
    for name in list(registry.tasks):
        for handler in logging.getLogger("minitask.tasks." + name).handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@task(name="tests.log.add")
def add(x, y, **kwargs):
    logger = add.get_logger(**kwargs)
    logger.info("Adding %s + %s" % (x, y))
    logger.debug("only at debug")
    logger.warning("added")
    return x + y


def test_get_logger_writes_to_the_logfile_with_task_name_and_id_on_each_line(tmp_path):
    logfile = str(tmp_path / "task.log")
    logger = add.get_logger(logfile=logfile, loglevel="INFO", task_id="id-1")
    logger.info("first")
    logger.warning("second")
    lines = lines_of(logfile)
    assert len(lines) == 2
    assert all("tests.log.add" in line and "id-1" in line for line in lines)
    assert lines[0].endswith("first") and lines[1].endswith("second")
    assert "INFO" in lines[0] and "WARNING" in lines[1]


def test_a_task_run_with_a_logfile_logs_there_under_its_own_id(tmp_path):
    logfile = str(tmp_path / "run.log")
    first = add.apply((1, 2), logfile=logfile, loglevel="INFO")
    second = add.apply((3, 4), logfile=logfile, loglevel="INFO")
    assert (first.get(), second.get()) == (3, 7)
    lines = lines_of(logfile)
    assert len(lines) == 4
    assert all("tests.log.add" in line for line in lines)
    assert [first.task_id in line for line in lines] == [True, True, False, False]
    assert [second.task_id in line for line in lines] == [False, False, True, True]
    assert "Adding 1 + 2" in lines[0] and "Adding 3 + 4" in lines[2]


def test_lines_below_the_loglevel_are_not_written(tmp_path):
    logfile = str(tmp_path / "warn.log")
    add.apply((1, 2), logfile=logfile, loglevel="WARNING")
    lines = lines_of(logfile)
    assert len(lines) == 1 and lines[0].endswith("added")


def test_debug_loglevel_writes_debug_lines(tmp_path):
    logfile = str(tmp_path / "debug.log")
    add.apply((1, 2), logfile=logfile, loglevel="DEBUG")
    assert any(line.endswith("only at debug") for line in lines_of(logfile))


def test_get_logger_inside_a_task_takes_the_id_and_logfile_of_the_running_task(tmp_path):
    logfile = str(tmp_path / "inside.log")

    @task()
    def plain(x):
        plain.get_logger().info("plain %s", x)
        return x

    result = plain.apply((5,), logfile=logfile, loglevel="INFO")
    [line] = lines_of(logfile)
    assert plain.name in line and result.task_id in line and line.endswith("plain 5")


def test_get_logger_on_a_class_task_names_it(tmp_path):
    from minitask import Task

    class Mailer(Task):
        def run(self, **kwargs):
            self.get_logger(**kwargs).info("sending")

    logfile = str(tmp_path / "class.log")
    result = Mailer.apply(logfile=logfile, loglevel="INFO")
    [line] = lines_of(logfile)
    assert Mailer.name in line and result.task_id in line


def test_task_lines_are_not_propagated_so_never_written_twice(tmp_path):
    logger = task_logger("tests.log.lonely", "id-2", str(tmp_path / "x.log"), "INFO")
    assert logger.logger.propagate is False
    logger.info("once")
    assert len(lines_of(str(tmp_path / "x.log"))) == 1
    for handler in logger.logger.handlers:
        handler.close()


def test_a_new_logfile_for_the_same_task_replaces_the_old_one(tmp_path):
    first, second = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    add.get_logger(logfile=first, loglevel="INFO", task_id="id-a").info("to a")
    add.get_logger(logfile=second, loglevel="INFO", task_id="id-b").info("to b")
    assert [line.endswith("to a") for line in lines_of(first)] == [True]
    assert [line.endswith("to b") for line in lines_of(second)] == [True]


def test_a_logger_outside_a_task_without_an_id_says_so_with_a_dash(tmp_path):
    logfile = str(tmp_path / "dash.log")
    add.get_logger(logfile=logfile, loglevel="INFO").info("no id")
    [line] = lines_of(logfile)
    assert "tests.log.add[-]" in line


def test_the_task_format_names_task_and_id():
    assert "%(task_name)s" in TASK_FORMAT and "%(task_id)s" in TASK_FORMAT


@pytest.mark.parametrize("given, level", [
    (None, logging.WARNING), ("info", logging.INFO), ("DEBUG", logging.DEBUG),
    ("error", logging.ERROR), (logging.CRITICAL, logging.CRITICAL), ("nonsense", logging.WARNING),
])
def test_level_of_reads_names_in_any_case_and_numbers(given, level):
    assert level_of(given) == level


@pytest.fixture
def root_logger():
    """The root logger, its handlers and level put back after the test (and those of
    get_task_logger's parent, which setup_logging sets up too)."""
    root, tasks = logging.getLogger(), logging.getLogger("minitask.task")
    kept = [(logger, list(logger.handlers), logger.level, logger.propagate)
            for logger in (root, tasks)]
    try:
        yield root
    finally:
        for logger, handlers, level, propagate in kept:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            for handler in handlers:
                logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def test_setup_logging_takes_the_root_logger_over_as_a_django_logging_setting_leaves_it(
        tmp_path, root_logger):
    """As Celery's worker_hijack_root_logger: the worker's lines go to its log once, and
    minitask's loggers speak again after a dictConfig with disable_existing_loggers (Django's
    LOGGING, applied by django.setup() before the worker sets its logging up)."""
    worker_logger = logging.getLogger("minitask.worker.test_log_probe")
    others = logging.getLogger("someapp.test_log_probe")
    try:
        logging.config.dictConfig({
            "version": 1, "disable_existing_loggers": True,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["console"], "level": "WARNING"}})
        assert worker_logger.disabled and others.disabled
        logfile = str(tmp_path / "worker.log")
        setup_logging("INFO", logfile)
        assert [type(h).__name__ for h in root_logger.handlers] == ["FileHandler"]
        worker_logger.info("once")
        for handler in root_logger.handlers:
            handler.flush()
        with open(logfile) as handle:
            assert handle.read().count("once") == 1
        assert others.disabled          # the project's own choice stays
    finally:
        worker_logger.disabled = others.disabled = False


def test_a_forked_pool_process_keeps_the_root_handlers_it_inherited(tmp_path, root_logger):
    """take_over=False (a forked child): a handler a tasks module added to the root after
    the worker set its logging up (Sentry's, a file's) stays; only minitask's are replaced."""
    theirs = logging.NullHandler()
    setup_logging("INFO", str(tmp_path / "parent.log"))
    root_logger.addHandler(theirs)
    setup_logging("INFO", str(tmp_path / "child.log"), take_over=False)
    assert theirs in root_logger.handlers and len(root_logger.handlers) == 2


# -- Celery's logging signals ----------------------------------------------------------------

@pytest.fixture
def receivers():
    """Receivers connected in a test are gone after it."""
    kept = {name: getattr(signals, name).receivers
            for name in ("setup_logging", "after_setup_logger", "after_setup_task_logger")}
    try:
        yield
    finally:
        for name, connected in kept.items():
            getattr(signals, name).receivers = connected


def test_a_setup_logging_receiver_takes_logging_over_as_in_celery(
        tmp_path, root_logger, receivers):
    """Celery's idiom to keep the worker off a project's logging: with a receiver, minitask
    undoes its own set-up and the receiver does it all; task lines propagate to it."""
    seen = []

    @signals.setup_logging.connect
    def config_loggers(*args, **kwargs):
        seen.append(kwargs)
        logging.config.dictConfig({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"app": {"format": "APP %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "app",
                                  "filename": str(tmp_path / "app.log")}},
            "root": {"handlers": ["file"], "level": "INFO"}})
    setup_logging("WARNING", str(tmp_path / "worker.log"))
    send_logging_signals("WARNING", str(tmp_path / "worker.log"))
    assert seen == [{"signal": signals.setup_logging, "sender": None, "loglevel": logging.WARNING,
                     "logfile": str(tmp_path / "worker.log"), "format": FORMAT,
                     "colorize": False}]
    assert [type(h).__name__ for h in root_logger.handlers] == ["FileHandler"]
    task_logger("tests.log.add", "id-1").info("from the task")
    logging.getLogger("minitask.worker.test_log_probe").info("from the worker")
    for handler in root_logger.handlers:
        handler.close()
    assert lines_of(tmp_path / "app.log") == ["APP minitask.tasks.tests.log.add from the task",
                                              "APP minitask.worker.test_log_probe from the "
                                              "worker"]
    assert not (tmp_path / "worker.log").exists() or lines_of(tmp_path / "worker.log") == []


def test_after_setup_logger_and_after_setup_task_logger_get_the_loggers_once(
        tmp_path, root_logger, receivers):
    seen = []
    signals.after_setup_logger.connect(
        lambda logger=None, loglevel=None, **kwargs: seen.append(("root", logger, loglevel)))
    signals.after_setup_task_logger.connect(
        lambda logger=None, format=None, **kwargs: seen.append(("task", logger.name, format)))
    setup_logging("INFO", str(tmp_path / "worker.log"))
    send_logging_signals("INFO", str(tmp_path / "worker.log"))
    for task_id in ("id-1", "id-2"):
        task_logger("tests.log.once", task_id, str(tmp_path / "task.log"), "INFO")
    assert seen == [("root", root_logger, logging.INFO),
                    ("task", "minitask.task", TASK_FORMAT),     # get_task_logger's parent
                    ("task", "minitask.tasks.tests.log.once", TASK_FORMAT)]


def test_get_task_logger_names_the_running_task_and_writes_once(tmp_path, root_logger):
    """Celery's get_task_logger(__name__): in a worker its lines go to the worker's log with
    the task's name and id (``???`` outside a task), and not through the root logger too."""
    from minitask.log import get_task_logger
    from minitask.task import Request, pop_request, push_request
    logfile = str(tmp_path / "worker.log")
    setup_logging("INFO", logfile)
    logger = get_task_logger("tests.log.module_probe")
    push_request(Request(id="id-7", name="tests.log.add"))
    try:
        logger.info("inside")
    finally:
        pop_request()
    logger.warning("outside")
    for handler in root_logger.handlers + logging.getLogger("minitask.task").handlers:
        handler.flush()
    lines = lines_of(logfile)
    assert [line.split("] ", 1)[1] for line in lines] == [
        "tests.log.add[id-7]: inside", "???[???]: outside"]
    with pytest.raises(ValueError, match="reserved"):
        get_task_logger("minitask.task")
