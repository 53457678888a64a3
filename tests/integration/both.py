"""The `broker` fixture of tests that run on both transports: the built-in broker, then Redis
(which skips, saying why, where redis-server is not installed). A test module imports both
names: ``from both import broker, server``."""

import pytest

from cluster import Broker, client_of, wait_for
from rediskit import REDIS_SERVER, SKIP_REASON, RedisBroker
from test_redis_worker import GRACE, HEARTBEAT, server  # noqa: F401  (redis-server)

__all__ = ["broker", "server", "idle", "settle"]


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


def idle(broker):
    """True once the broker shows nothing queued, delayed, unacked or running."""
    status = broker.status()
    return all(q["ready"] == 0 and q["unacked"] == 0 and q.get("delayed", 0) == 0
               for q in status["queues"]) and \
        all(w.get("running", 0) == 0 for w in status["workers"])


def settle(broker, timeout=30):
    """Wait until the broker is `idle`: every task sent has run and been acked."""
    wait_for(lambda: idle(broker), timeout, interval=0.05, what="the broker to be idle")
