"""The command line as an operator uses it: tables, --json, exit codes, one-line errors."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

import ittasks
from minitask.exceptions import TaskRevokedError
from cluster import ROOT, _env, _Process, wait_for

COMMANDS = ["broker", "worker", "demo", "status", "call", "purge", "inspect", "control",
            "result", "bench"]


def minitask(*args, broker=None, input=None, timeout=60):
    command = [sys.executable, "-m", "minitask"] + list(args)
    if broker is not None:
        command += ["--broker", broker.url]
    return subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=input)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = minitask(command, "--help")
    assert result.returncode == 0
    assert "usage: minitask %s" % command in result.stdout


@pytest.mark.parametrize("args", [["nosuchcommand"], ["worker", "-c", "zero"],
                                  ["broker", "--port", "99999"], ["call"],
                                  ["inspect", "nonsense"]])
def test_bad_use_exits_2_with_one_line(args):
    result = minitask(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "error" in result.stderr


def test_a_command_without_a_broker_says_so_in_one_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "minitask", "status", "--broker",
                             "minitask://127.0.0.1:%d" % port], env=_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot connect to minitask://127.0.0.1:%d" % port in result.stderr


def test_status_shows_queues_and_workers_as_a_table_and_as_json(broker, start_worker):
    ittasks.add.apply_async((1, 1), countdown=60)
    ittasks.record.apply_async(("cli", "x"), exchange="", routing_key="minitask")
    start_worker(name="cliworker", args=["-Q", "other"])
    table = minitask("status", broker=broker)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    queue_line = next(line for line in lines if line.startswith("minitask "))
    assert queue_line.split()[1:4] == ["1", "0", "1"]          # ready, unacked, delayed
    assert any(line.startswith("cliworker") for line in lines)
    report = json.loads(minitask("status", "--json", broker=broker).stdout)
    queue = next(q for q in report["queues"] if q["name"] == "minitask")
    assert queue["ready"] + queue["delayed"] == 2
    assert [w["hostname"] for w in report["workers"]] == ["cliworker"]


def test_call_sends_a_task_by_name_and_waits_for_its_result(broker, start_worker):
    start_worker()
    result = minitask("call", "it.add", "[2, 3]", "--wait", "--timeout", "10", broker=broker)
    assert result.returncode == 0
    task_id, outcome = result.stdout.splitlines()
    assert outcome == "SUCCESS: 5"
    as_json = json.loads(minitask("call", "it.add", "[4, 4]", "--wait", "--json",
                                  broker=broker).stdout)
    assert as_json["state"] == "SUCCESS" and as_json["result"] == 8
    shown = json.loads(minitask("result", task_id, "--json", broker=broker).stdout)
    assert shown == {"task_id": task_id, "state": "SUCCESS", "result": 5, "traceback": None}


def test_call_with_bad_json_arguments_is_one_line(broker):
    result = minitask("call", "it.add", "[1,", broker=broker)
    assert result.returncode == 2                    # bad use
    assert result.stderr.count("\n") == 1 and "not valid JSON" in result.stderr


def test_call_of_a_failing_task_exits_1_and_result_shows_the_traceback(broker, start_worker):
    start_worker()
    result = minitask("call", "it.fail", '["cli boom"]', "--wait", broker=broker)
    assert result.returncode == 1
    task_id = result.stdout.splitlines()[0]
    shown = minitask("result", task_id, broker=broker)
    assert "FAILURE: ValueError('cli boom')" in shown.stdout
    assert "Traceback" in shown.stdout


def test_purge_asks_unless_yes_and_drops_the_waiting_messages(broker):
    for i in range(3):
        ittasks.add.delay(i, i)
    refused = minitask("purge", "minitask", broker=broker)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert broker.queue()["ready"] == 3
    done = minitask("purge", "minitask", "--yes", broker=broker)
    assert done.stdout.strip() == "purged 3 messages from minitask"
    assert broker.queue()["ready"] == 0


def test_purge_f_as_celery_types_it_purges_the_configured_queues(broker):
    """`celery purge -f`: no queue named means every queue of the settings."""
    for i in range(2):
        ittasks.add.delay(i, i)
    done = minitask("purge", "-f", broker=broker)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "purged 2 messages from minitask\n"
    ittasks.add.delay(1, 1)
    excluded = json.loads(minitask("purge", "-f", "-Q", "minitask", "-X", "minitask", "--json",
                                   broker=broker).stdout)
    assert excluded == {"error": "no queue left to purge: --exclude-queues names them all",
                        "command": "purge"}
    as_json = json.loads(minitask("purge", "-Q", "minitask", "--force", "--json",
                                  broker=broker).stdout)
    assert as_json == {"purged": 1, "queues": {"minitask": 1}}


def test_inspect_answers_for_every_worker(broker, start_worker, tmp_path):
    start_worker(name="insp1")
    start_worker(name="insp2")
    registered = json.loads(minitask("inspect", "registered", "--json", broker=broker).stdout)
    assert sorted(registered) == ["insp1", "insp2"]
    assert "it.add" in registered["insp1"] and "minitask.ping" in registered["insp1"]
    running = ittasks.sleep.delay(5, "inspected")
    wait_for(lambda: ittasks.read_trace(tmp_path, "inspected") == ["start"], 10,
             what="the task to start")
    active = json.loads(minitask("inspect", "active", "--json", broker=broker).stdout)
    assert [t["id"] for w in active.values() for t in w] == [running.id]
    ittasks.add.apply_async((1, 2), countdown=0.5 + 0.5)
    scheduled = json.loads(minitask("inspect", "scheduled", "--json", broker=broker).stdout)
    assert sum(len(v) for v in scheduled.values()) <= 1
    stats = json.loads(minitask("inspect", "stats", "--json", broker=broker).stdout)
    assert stats["insp1"]["concurrency"] == 2
    table = minitask("inspect", "ping", broker=broker)
    assert "insp1:" in table.stdout and "pong" in table.stdout


def test_inspect_with_no_workers_reports_none_and_exits_1(broker):
    result = minitask("inspect", "ping", "--timeout", "0.3", broker=broker)
    assert result.returncode == 1
    assert result.stderr == "minitask inspect: no workers answered within 0.3s\n"
    as_json = minitask("inspect", "ping", "-t", "0.3", "--json", broker=broker)
    assert as_json.returncode == 1 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {"error": "no workers answered within 0.3s",
                                          "command": "inspect"}


def test_control_changes_a_rate_limit_at_run_time(broker, start_worker):
    start_worker(name="ctl")
    result = minitask("control", "rate_limit", "it.add", "1/m", broker=broker)
    assert result.returncode == 0
    assert result.stdout == "ctl: rate limit of it.add set to '1/m'\n"      # no dict repr
    first = ittasks.add.delay(1, 1)
    second = ittasks.add.delay(2, 2)
    assert first.get(timeout=10) == 2
    from minitask.exceptions import TimeoutError
    with pytest.raises(TimeoutError):
        second.get(timeout=1.5)                      # held back by the new limit
    minitask("control", "rate_limit", "it.add", "0", broker=broker)
    ittasks.add.delay(0, 0).get(timeout=10)


def test_control_revoke_says_what_it_revoked_also_in_json(broker, start_worker):
    result = minitask("control", "revoke", "id-1", "id-2", broker=broker)
    assert (result.returncode, result.stdout) == (0, "revoked id-1, id-2\n")
    result = minitask("control", "revoke", "id-3", "--terminate", "--json", broker=broker)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"revoked": ["id-3"], "terminate": True}
    start_worker(name="later")
    revoked = ittasks.add.apply_async((1, 1), task_id="id-2")
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=10)
    assert ittasks.add.delay(2, 2).get(timeout=10) == 4


def test_call_to_a_queue_that_does_not_exist_is_an_error(broker):
    result = minitask("call", "it.add", "[1, 2]", "--queue", "no-such-queue", broker=broker)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no-such-queue" in result.stderr


def test_control_that_a_worker_refuses_exits_1(broker, start_worker):
    start_worker(name="strict")
    result = minitask("control", "rate_limit", "it.add", "10/x", broker=broker)
    assert result.returncode == 1
    assert result.stdout.startswith("strict: error: rate_limit: ")
    assert "{" not in result.stdout


def test_result_wait_that_times_out_exits_1(broker):
    result = minitask("result", "no-such-task", "--wait", "--timeout", "0.3", broker=broker)
    assert result.returncode == 1
    assert result.stdout.startswith("PENDING")
    assert result.stderr == ("minitask result: timed out after 0.3s waiting for no-such-task "
                             "(state PENDING)\n")
    as_json = minitask("result", "no-such-task", "--wait", "--timeout", "0.3", "--json",
                       broker=broker)
    assert as_json.returncode == 1 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["error"].startswith("timed out after 0.3s")


def test_a_port_in_use_is_a_failure_not_bad_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = minitask("broker", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                          "-l", "WARNING", timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot listen on" in result.stderr


def test_a_reader_that_leaves_early_gets_no_traceback(broker):
    """`minitask status | head -1`: the pipe closes under the command; it stops quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)                               # every write now fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "minitask", "status", "--broker",
                                 broker.url], env=_env(), cwd=ROOT, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_control_add_consumer_starts_consuming_another_queue(broker, start_worker):
    start_worker(name="adder")
    from minitask.message import TaskMessage
    message = TaskMessage("it.add", [5, 6], {}, exchange="", routing_key="extra")
    with broker.connect() as conn:
        conn.declare_queue("extra")
        conn.publish(message.encode())
    minitask("control", "add_consumer", "extra", broker=broker)
    from minitask.result import AsyncResult
    assert AsyncResult(message.id).get(timeout=10) == 11


def test_control_shutdown_stops_a_worker(broker, start_worker):
    worker = start_worker(name="bye")
    result = minitask("control", "shutdown", broker=broker)
    assert "bye:" in result.stdout
    assert worker.proc.process.wait(20) == 0


def test_status_and_metrics_say_how_many_journal_records_were_found_lost(tmp_path):
    """A broker started on a journal with a damaged record in the middle."""
    from cluster import Broker
    from minitask import protocol as P
    from minitask.broker.http import metrics_text
    broker = Broker(tmp_path).start()
    try:
        with broker.connect() as conn:
            conn.declare_queue("q")
            for i in range(5):
                conn.publish(P.Message(b"body-%d" % i, routing_key="q", message_id="m%d" % i,
                                       flags=P.PERSISTENT))
        broker.kill()
        segment = os.path.join(broker.data_dir, "journal", "0000000001.seg")
        with open(segment, "rb") as handle:
            data = handle.read()
        at = data.index(b"body-2")
        with open(segment, "r+b") as handle:
            handle.seek(at)
            handle.write(b"BODY-2")
        broker.start()
        table = minitask("status", broker=broker)
        assert "journal faults found at start: 1, 1 record lost" in table.stdout
        report = json.loads(minitask("status", "--json", broker=broker).stdout)
        assert report["broker"]["journal_records_lost"] == 1
        assert "minitask_journal_records_lost_total 1\n" in metrics_text(report)
        assert "journal segment" in broker.output() and "1 record lost" in broker.output()
    finally:
        broker.proc.close()


# -- Celery's habits ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, prefix, says", [
    (["worker", "-E"], "minitask worker: error: -E: ", "/metrics"),
    (["worker", "--task-events"], "minitask worker: error: --task-events: ", "status --http"),
    (["worker", "--autoscale=10,3"], "minitask worker: error: --autoscale: ", "-c N"),
    (["worker", "-O", "fair"], "minitask worker: error: -O: ", "-O fair"),
    (["worker", "-Ofair"], "minitask worker: error: -O: ", "-O fair"),
    (["worker", "-P", "solo"], "minitask worker: error: argument -P/--pool: ", "-c 1"),
    (["worker", "--pool=gevent"], "minitask worker: error: argument -P/--pool: ", "-c N"),
    (["worker", "--detach"], "minitask worker: error: --detach: ", "systemd"),
    (["worker", "--pidfile=/tmp/w.pid"], "minitask worker: error: --pidfile: ", "systemd"),
    (["worker", "--max-memory-per-child", "100"], "minitask worker: error: "
     "--max-memory-per-child: ", "--max-tasks-per-child"),
    (["worker", "--time-limit", "5"], "minitask worker: error: --time-limit: ", "time_limit="),
    (["worker", "-l", "verbose"], "minitask worker: error: argument -l/--loglevel: ", "INFO"),
    (["worker", "-c", "zero"], "minitask worker: error: argument -c/--concurrency: ",
     "whole number"),
    (["worker", "--no-such-flag"], "minitask worker: error: unrecognized arguments: ",
     "--no-such-flag"),
    (["multi", "start", "w1"], "minitask multi: error: ", "minitask worker -n NAME"),
    (["-A", "proj", "flower", "--port=5555"], "minitask flower: error: ", "--http"),
    (["events"], "minitask events: error: ", "minitask inspect active"),
    (["beat"], "minitask beat: error: ", "--beat (-B)"),
    (["inspect", "-A", "proj", "active"], "minitask inspect: error: -A: ",
     "minitask -A proj inspect"),
    (["--workdir", "/tmp", "worker"], "minitask: error: --workdir: ", "cd DIR"),
    (["status", "--foo"], "minitask status: error: unrecognized arguments: ", "--foo"),
    (["call", "it.add", "--eta", "2030-01-01"], "minitask call: error: --eta: ", "--countdown"),
    (["inspect", "nonsense"], "minitask inspect: error: argument method: ", "'nonsense'"),
    (["inspect", "active_queues"], "minitask inspect: error: active_queues: ", "inspect stats"),
    (["inspect", "-t", "2", "active", "x"], "minitask inspect: ", "(query_task does)"),
    (["migrate", "redis://localhost", "amqp://localhost"], "minitask migrate: error: ",
     "(-b OLD_URL)"),
    (["control", "time_limit", "it.add", "5"], "minitask control: error: time_limit: ",
     "@task(time_limit="),
    (["control", "-d", "w1", "pool_grow", "2"], "minitask control: error: pool_grow: ",
     "-c N"),
    (["control", "terminate", "SIGKILL", "x"], "minitask control: error: terminate: ",
     "revoke TASK_ID --terminate"),
    (["-b", "minitask://127.0.0.1:1", "demo"], "minitask demo: ", "--host and --port"),
])
def test_celery_habits_are_answered_in_one_line_naming_the_subcommand(args, prefix, says):
    result = minitask(*args)
    assert result.returncode == 2, result
    assert result.stderr.startswith(prefix), result.stderr
    assert says in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_usage_error_with_json_is_a_json_object_on_stdout():
    result = minitask("inspect", "nonsense", "--json")
    assert result.returncode == 2 and result.stderr == ""
    error = json.loads(result.stdout)
    assert error["command"] == "inspect" and "invalid choice: 'nonsense'" in error["error"]


def test_a_json_flag_a_command_does_not_take_is_one_of_its_unknown_arguments():
    """A worker has no --json: the error says so in its usual line, not in a JSON object
    that calls --json unrecognized while obeying it."""
    result = minitask("worker", "--json", "--concurency", "3")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("minitask worker: error: unrecognized arguments: --json "
                                    "--concurency 3")


def test_a_failure_with_json_is_a_json_object_and_keeps_its_exit_code():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = "minitask://127.0.0.1:%d" % probe.getsockname()[1]
    for command in (["status"], ["call", "it.add", "[1, 2]"], ["result", "some-id"],
                    ["inspect", "stats"], ["control", "ping"], ["purge", "minitask", "-f"]):
        result = minitask(*command, "--json", "--broker", url)
        assert result.returncode == 1, (command, result)
        assert result.stderr == ""
        error = json.loads(result.stdout)
        assert error["command"] == command[0]
        assert error["error"].startswith("cannot connect to %s" % url)


PROJ_TASKS = """
from minitask import task

@task()
def add(x, y):
    return x + y
"""


def start_celery_style_worker(tmp_path, broker, argv, name):
    """A worker started with a Celery user's command line, from a folder holding `proj`."""
    package = tmp_path / "proj"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(PROJ_TASKS)
    command = [sys.executable, "-m", "minitask"] + argv + ["-n", name, "-c", "1"]
    return _Process(command, str(tmp_path / ("%s.log" % name)),
                    _env({"MINITASK_BROKER_URL": broker.url}), str(tmp_path))


@pytest.mark.parametrize("argv", [
    ["-A", "proj", "worker", "--loglevel=info", "-B", "-P", "prefork", "--without-gossip",
     "--without-mingle", "--without-heartbeat"],
    ["worker", "--app=proj:app", "-l", "info", "--beat", "--pool=prefork"],
])
def test_a_worker_started_the_celery_way_runs_the_projects_tasks(broker, tmp_path, argv):
    """-A proj imports proj and, as Celery's autodiscovery, its tasks module; -B is --beat."""
    worker = start_celery_style_worker(tmp_path, broker, argv, "celeryish")
    try:
        wait_for(lambda: any(w.get("hostname") == "celeryish"
                             for w in broker.status()["workers"])
                 or (not worker.alive() and worker.output()), 30, what="the worker")
        assert worker.alive(), worker.output()
        called = minitask("-b", broker.url, "call", "proj.tasks.add", "-a", "[2, 3]",
                          "--wait", "--timeout", "20")
        assert called.returncode == 0, called.stderr
        assert called.stdout.splitlines()[1] == "SUCCESS: 5"
        wait_for(lambda: "this worker now sends the periodic tasks" in worker.output(), 20,
                 what="-B to start the beat")
        assert "INFO" in worker.output()              # --loglevel=info, lower case
    finally:
        worker.close()


def test_inspect_scheduled_lists_the_countdowns_the_broker_holds(broker, start_worker):
    start_worker(name="sched")
    due = time.time() + 300
    held = ittasks.add.apply_async((1, 2), eta=due)
    result = json.loads(minitask("inspect", "scheduled", "--json", broker=broker).stdout)
    assert result["sched"] == []                    # a worker gets it only when nearly due
    (entry,) = result["broker"]
    assert entry["id"] == held.id and entry["name"] == "it.add"
    assert entry["queue"] == "minitask" and abs(entry["eta"] - due) < 0.01
    text = minitask("inspect", "scheduled", broker=broker)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    broker_at = lines.index("broker (the countdowns it holds until shortly before they "
                            "are due):")
    assert lines[broker_at + 1] == "  it.add[%s]  eta %s  queue minitask" % (
        held.id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(due)))


def test_inspect_scheduled_answers_from_the_broker_when_no_worker_does(broker):
    held = ittasks.add.apply_async((1, 2), countdown=300)
    result = minitask("inspect", "scheduled", "-t", "0.3", "-j", broker=broker)
    assert result.returncode == 0
    assert [e["id"] for e in json.loads(result.stdout)["broker"]] == [held.id]


def test_inspect_stats_reads_as_aligned_keys_and_values(broker, start_worker):
    start_worker(name="statsy")
    ittasks.add.delay(1, 1).get(timeout=10)
    result = minitask("inspect", "stats", broker=broker)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "statsy:"
    rows = dict(line.split(None, 1) for line in lines[1:])
    assert all(line.startswith("  ") for line in lines[1:])
    columns = {line.index(rows[key].split()[0], 2 + len(key)) for key, line in
               zip(rows, lines[1:])}
    assert len(columns) == 1                        # values in one column
    assert re.fullmatch(r"\d+\.\d\ds|\d+\.\ds|\d+m \d\ds", rows["uptime"]), rows["uptime"]
    assert rows["concurrency"] == "2" and rows["queues"] == "minitask"
    assert re.fullmatch(r"\d+, \d+", rows["pool"])
    assert "received 1" in rows["counts"] and "success 1" in rows["counts"]
    assert not any(c in result.stdout for c in "{}[]'")
