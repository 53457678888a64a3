"""The command line as an operator uses it: tables, --json, exit codes, one-line errors."""

import json
import os
import socket
import subprocess
import sys

import pytest

import ittasks
from cluster import ROOT, _env, wait_for

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
    assert "no workers answered" in result.stdout


def test_control_changes_a_rate_limit_at_run_time(broker, start_worker):
    start_worker(name="ctl")
    result = minitask("control", "rate_limit", "it.add", "1/m", broker=broker)
    assert result.returncode == 0 and "ctl:" in result.stdout
    first = ittasks.add.delay(1, 1)
    second = ittasks.add.delay(2, 2)
    assert first.get(timeout=10) == 2
    from minitask.exceptions import TimeoutError
    with pytest.raises(TimeoutError):
        second.get(timeout=1.5)                      # held back by the new limit
    minitask("control", "rate_limit", "it.add", "0", broker=broker)
    ittasks.add.delay(0, 0).get(timeout=10)


def test_call_to_a_queue_that_does_not_exist_is_an_error(broker):
    result = minitask("call", "it.add", "[1, 2]", "--queue", "no-such-queue", broker=broker)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no-such-queue" in result.stderr


def test_control_that_a_worker_refuses_exits_1(broker, start_worker):
    start_worker(name="strict")
    result = minitask("control", "rate_limit", "it.add", "10/x", broker=broker)
    assert result.returncode == 1
    assert "strict:" in result.stdout and "error" in result.stdout


def test_result_wait_that_times_out_exits_1(broker):
    result = minitask("result", "no-such-task", "--wait", "--timeout", "0.3", broker=broker)
    assert result.returncode == 1
    assert result.stdout.startswith("PENDING")


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
