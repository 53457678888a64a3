"""`python -m minitask bench` works end to end and its JSON has the documented shape.

A smoke test, not a benchmark: the figures depend on the machine, so nothing here asserts
how fast anything is, only that every figure is there, is a number, and nothing was lost.
"""

import json
import os
import subprocess
import sys

import pytest

from minitask.bench.tasks import INDEX
from minitask.bench.work import count_runs, percentile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_KEYS = {
    "floor": {"tcp_echo_p50_ms", "tcp_echo_p99_ms", "tcp_oneway_msgs_per_s"},
    "drain": {"tasks", "concurrency", "enqueue_per_s", "drain_per_s", "drain_steady_per_s",
              "lost", "duplicates"},
    "rtt": {"calls", "p50_ms", "p99_ms", "max_ms"},
    "chord": {"size", "runs", "median_s", "min_s", "max_s"},
    "broker": {"everysec_msgs_per_s", "always_msgs_per_s"},
    "machine": {"python", "cpus", "bytecode_cache"},
}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_bench_json_has_every_default_workload_and_loses_nothing(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.pop("MINITASK_CONFIG_MODULE", None)
    done = subprocess.run([sys.executable, "-m", "minitask", "bench", "--tasks", "200",
                           "--json"], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    report = json.loads(done.stdout.decode("utf-8"))
    assert set(report) == set(DEFAULT_KEYS)
    for workload, keys in DEFAULT_KEYS.items():
        assert set(report[workload]) == keys, workload
        for key in keys - {"python", "bytecode_cache"}:
            assert _is_number(report[workload][key]), (workload, key, report[workload][key])
    assert isinstance(report["machine"]["python"], str)
    # The bench's processes inherit this one's environment, so the report says what they did.
    assert report["machine"]["bytecode_cache"] is not bool(env.get("PYTHONDONTWRITEBYTECODE"))
    assert report["drain"]["tasks"] == 200
    assert report["drain"]["lost"] == 0
    assert report["drain"]["duplicates"] == 0
    assert report["rtt"]["calls"] >= 40
    assert report["chord"]["size"] == 20 and report["chord"]["runs"] == 5


def test_bench_refuses_an_unknown_workload():
    done = subprocess.run([sys.executable, "-m", "minitask", "bench", "nosuch"], cwd=ROOT,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 2
    assert b"unknown workload 'nosuch'" in done.stderr


@pytest.mark.parametrize("fraction, expected", [
    (0.0, 1), (0.01, 1), (0.5, 50), (0.99, 99), (0.995, 100), (1.0, 100)])
def test_percentile_is_nearest_rank(fraction, expected):
    assert percentile(list(range(100, 0, -1)), fraction) == expected


def test_percentile_of_one_value_is_that_value():
    assert percentile([7.5], 0.5) == 7.5
    assert percentile([7.5], 0.99) == 7.5


def test_percentile_matches_the_peers_harness_on_the_rtt_sample_size():
    # run.py: xs[max(0, ceil(p * len(xs)) - 1)] over 280 kept samples
    values = [float(v) for v in range(280)]
    assert percentile(values, 0.50) == 139.0
    assert percentile(values, 0.99) == 277.0


def test_percentile_refuses_nothing_and_bad_fractions():
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_count_runs_finds_the_lost_and_the_duplicated(tmp_path):
    counter = tmp_path / "counter"
    counter.write_bytes(b"".join(INDEX.pack(index) for index in (0, 2, 2, 3, 0, 2)))
    assert count_runs(str(counter), 5) == (6, 2, 3)     # 1 and 4 lost; 0 once, 2 twice again


CHAOS_KEYS = {"kills", "confirmed", "completed", "lost", "duplicates", "recovery_p50_s",
              "recovery_max_s", "workflows_sent", "workflows_completed", "workflows_stranded",
              "chord_bodies_queued_twice", "chord_bodies_queued"}


def test_bench_chaos_kills_and_loses_nothing(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.pop("MINITASK_CONFIG_MODULE", None)
    done = subprocess.run([sys.executable, "-m", "minitask", "bench", "--chaos", "--duration",
                           "15", "--json"], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    report = json.loads(done.stdout.decode("utf-8"))
    assert set(report) == {"chaos", "machine"}        # --chaos alone runs only chaos
    chaos = report["chaos"]
    assert set(chaos) == CHAOS_KEYS
    for key in CHAOS_KEYS:
        assert _is_number(chaos[key]), (key, chaos[key])
    assert chaos["kills"] >= 2
    assert chaos["lost"] == 0
    assert chaos["confirmed"] > 0
    assert chaos["completed"] >= chaos["confirmed"]
    assert chaos["workflows_sent"] > 0
    assert chaos["workflows_completed"] == chaos["workflows_sent"]
    assert chaos["workflows_stranded"] == 0 and chaos["chord_bodies_queued_twice"] == 0
    assert chaos["chord_bodies_queued"] >= chaos["workflows_sent"] // 2 > 0


def test_bench_chaos_is_added_to_named_workloads_and_refuses_a_bad_duration():
    from minitask.bench import add_command, selected_workloads
    import argparse
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    assert selected_workloads(parser.parse_args(["bench", "--chaos"])) == ["chaos"]
    assert selected_workloads(parser.parse_args(["bench", "floor", "--chaos"])) == \
        ["floor", "chaos"]
    assert selected_workloads(parser.parse_args(["bench"])) == \
        ["floor", "drain", "rtt", "chord", "broker"]
    done = subprocess.run([sys.executable, "-m", "minitask", "bench", "--chaos", "--duration",
                           "0"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 2
    assert b"--duration" in done.stderr


def test_bench_prefetch_multiplier_reaches_every_worker_and_the_notes(monkeypatch):
    import argparse

    from minitask.bench.run import Bench
    from minitask.bench.work import Lab

    started = []
    monkeypatch.setattr(Lab, "_popen", lambda self, command, name, **kw: started.append(command))
    with Lab() as lab:
        bench = Bench(argparse.Namespace(tasks=10, concurrency=2, prefetch_multiplier=16),
                      lab, progress=None)
        lab.start_worker("minitask://127.0.0.1:1", bench.concurrency)
        assert bench.worker_label == "one worker -c 2 --prefetch-multiplier 16"
    assert started[0][-2:] == ["--prefetch-multiplier", "16"]
    with Lab() as lab:
        bench = Bench(argparse.Namespace(tasks=10, concurrency=2), lab, progress=None)
        lab.start_worker("minitask://127.0.0.1:1", bench.concurrency)
        assert bench.worker_label == "one worker -c 2"
    assert "--prefetch-multiplier" not in started[1]


def test_bench_refuses_a_prefetch_multiplier_below_one():
    done = subprocess.run([sys.executable, "-m", "minitask", "bench", "drain",
                           "--prefetch-multiplier", "0"], cwd=ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 2
    assert b"--prefetch-multiplier" in done.stderr and b"Traceback" not in done.stderr
