"""test_retry_model.py's retry ordering on Redis; skips, saying why, where redis-server is not
installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rediskit import REDIS_SERVER, SKIP_REASON  # noqa: E402
from test_redis_worker import broker, server, start_worker  # noqa: E402,F401
from test_retry_model import (  # noqa: E402,F401  (collected here again, on Redis)
    test_a_retry_cannot_run_before_the_retry_that_sent_it_is_stored,
)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
