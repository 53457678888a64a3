"""The `broker` fixture of tests that run on both transports: the built-in broker, then Redis
(which skips, saying why, where redis-server is not installed). A test module imports both
names: ``from both import broker, server``."""

import pytest

from cluster import Broker, client_of
from rediskit import REDIS_SERVER, SKIP_REASON, RedisBroker
from test_redis_worker import GRACE, HEARTBEAT, server  # noqa: F401  (redis-server)

__all__ = ["broker", "server"]


@pytest.fixture(params=["builtin", "redis"])
def broker(request, tmp_path):
    """A running broker of one kind; this process's client settings point at it."""
    if request.param == "builtin":
        instance = Broker(tmp_path).start()
    else:
        if REDIS_SERVER is None:
            pytest.skip(SKIP_REASON)
        instance = RedisBroker(request.getfixturevalue("server"), heartbeat=HEARTBEAT,
                               handover_grace=GRACE)
    try:
        with client_of(instance, tmp_path):
            yield instance
    finally:
        if request.param == "builtin":
            instance.proc.close()
