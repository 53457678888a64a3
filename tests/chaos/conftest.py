"""Fixtures of the crash suite (tools in `chaoskit`).

- ``cluster``: ``cluster(broker_args=(...), workers=2)`` -> a started `chaoskit.Cluster`: a
  broker with a journal in the test's temporary folder and workers importing `chaostasks`,
  every process of it (killed ones' orphans included) stopped at teardown, whatever the
  test did.
- ``redis_cluster``: ``redis_cluster(workers=2, replica=False, **url_options)`` -> a started
  `rediscluster.RedisCluster`: redis-server (with a replica and a Sentinel when asked) in
  place of the broker; stopped as ``cluster`` is.
- ``rng``: a ``random.Random`` seeded per test; the seed is printed, and
  ``MINITASK_CHAOS_SEED`` replays it.

The integration harness (``tests/integration/conftest.py``) is reused through `chaoskit`,
which puts that folder on ``sys.path``. At the end of the run the suite's figures (kills,
tasks, lost, duplicates per test) are printed, even under ``-q``.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import chaoskit  # noqa: E402
from chaoskit import FIGURES, Cluster  # noqa: E402
from rediscluster import RedisCluster  # noqa: E402


def _started(make):
    """A fixture's body: it yields ``start(workers=2, **options)``, which makes an instance
    with ``make(**options)`` and starts it; every one made is closed at teardown."""
    made = []

    def start(workers=2, **options):
        instance = make(**options)
        made.append(instance)
        return instance.start(workers)
    try:
        yield start
    finally:
        for instance in made:
            instance.close()


@pytest.fixture
def cluster(tmp_path):
    def make(broker_args=(), worker_args=("-c", "2"), segment_bytes=None):
        return Cluster(tmp_path, broker_args, worker_args, segment_bytes)
    yield from _started(make)


@pytest.fixture
def redis_cluster(tmp_path):
    """A RedisCluster on redis-server (with `replica`, a replica and a Sentinel too);
    `query` adds options to its URL."""
    def make(replica=False, worker_args=("-c", "2"), **query):
        return RedisCluster(tmp_path, worker_args, replica, **query)
    yield from _started(make)


@pytest.fixture
def rng(request):
    generator, seed = chaoskit.make_rng(request.node.name)
    generator.seed_value = seed
    return generator


def pytest_terminal_summary(terminalreporter):
    lines = FIGURES.lines()
    if lines:
        terminalreporter.write_sep("-", "minitask crash-suite figures (%s form)"
                                   % ("long" if chaoskit.LONG else "short"))
        for line in lines:
            terminalreporter.write_line(line)
