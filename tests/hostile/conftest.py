"""Fixtures of the hostile-input and security suites (tools in `hostilekit`).

- ``arena``: a broker process on a free port with a `GoodClient` publishing and consuming
  beside the test and its memory sampled; at teardown the good client must have lost
  nothing, the broker must be alive with no traceback in its log, and its peak RSS must stay
  under start + 200 MiB (+ what the test says it queued on purpose). Flags for the broker
  come from ``@pytest.mark.broker_args(...)``, as in the integration suite.
- ``long_run``: True under ``LONG_MINITASK_TESTS=1`` (``python3 tests/run.py --long``).
- ``broker``, ``start_worker``: the integration suite's fixtures, unchanged.

At the end of the run the suite's figures are printed (connections tried, frames fuzzed,
peak broker RSS, the good client's messages), even under ``-q``.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import hostilekit  # noqa: E402
from hostilekit import BUDGET, FIGURES, LONG, Arena, running  # noqa: E402

# The flood test opens ~1100 sockets and the broker (started from this process) must hold
# 1024 of them: raise the soft descriptor limit here, before any broker starts.
hostilekit.raise_fd_limit(BUDGET.flood_connections + 512)

broker = hostilekit.harness.broker
start_worker = hostilekit.harness.start_worker


@pytest.fixture(scope="session")
def long_run():
    return LONG


@pytest.fixture
def arena(tmp_path, request):
    marker = request.node.get_closest_marker("broker_args")
    with running(Arena(tmp_path, args=marker.args if marker else ()),
                 request.node.name) as instance:
        yield instance


def pytest_terminal_summary(terminalreporter):
    lines = FIGURES.lines()
    if lines:
        terminalreporter.write_sep("-", "minitask hostile figures")
        for line in lines:
            terminalreporter.write_line(line)
