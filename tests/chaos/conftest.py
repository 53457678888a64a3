"""Fixtures of the crash suite (tools in `chaoskit`).

- ``cluster``: ``cluster(broker_args=(...), workers=2)`` -> a started `chaoskit.Cluster`: a
  broker with a journal in the test's temporary folder and workers importing `chaostasks`,
  every process of it (killed ones' orphans included) stopped at teardown, whatever the
  test did.
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


@pytest.fixture
def cluster(tmp_path):
    made = []

    def start(broker_args=(), workers=2, worker_args=("-c", "2"), segment_bytes=None):
        instance = Cluster(tmp_path, broker_args, worker_args, segment_bytes)
        made.append(instance)
        return instance.start(workers)
    try:
        yield start
    finally:
        for instance in made:
            instance.close()


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
