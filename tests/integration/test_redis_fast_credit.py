"""test_fast_credit.py's tests on Redis, where the credit is the worker's own (each FETCH asks
for it); skips, saying why, where redis-server is not installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rediskit import REDIS_SERVER, SKIP_REASON  # noqa: E402
from test_redis_worker import broker, server, start_worker  # noqa: E402,F401
from test_fast_credit import (  # noqa: E402,F401  (collected here again, on Redis)
    test_a_flow_of_short_tasks_is_given_the_extra_credit,
    test_a_multiplier_of_one_reserves_exactly_that,
    test_a_short_task_that_runs_long_takes_it_away_while_it_runs,
    test_short_tasks_earn_a_worker_more_credit_and_one_slow_task_takes_it_away,
)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
