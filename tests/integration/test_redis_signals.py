"""test_signals.py on Redis; skips, saying why, where redis-server is not installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rediskit import REDIS_SERVER, SKIP_REASON  # noqa: E402
from test_redis_worker import broker, server, start_worker  # noqa: E402,F401
from test_signals import (  # noqa: E402,F401  (collected here again, on Redis)
    test_a_worker_sends_celerys_signals_in_the_processes_celery_sends_them_in,
)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
