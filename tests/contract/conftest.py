"""The transport fixture: every contract test runs once per transport.

- ``memory``: an in-process broker (`minitask.transport.memory`), new for each test;
- ``minitask``: a real ``python -m minitask broker`` process on a free port with its journal
  in the test's temporary folder (`cluster.Broker` of the integration suite), stopped after.

- ``redis``: a real ``redis-server`` (`rediskit.RedisServer`, AOF on, in a temporary folder),
  one per session, each test on a virtual host of its own; skipped, saying why, where
  redis-server is not installed.

Each gives its handed-over tasks `contractkit.GRACE` seconds. A transport joins the contract
by adding a branch here that yields a `Harness` on its URL.
"""

import os
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
for path in (HERE, INTEGRATION):
    if path not in sys.path:
        sys.path.insert(0, path)

from cluster import Broker  # noqa: E402  (tests/integration, put on the path above)
from contractkit import GRACE, Harness  # noqa: E402
from rediskit import REDIS_SERVER, SKIP_REASON, RedisServer  # noqa: E402

from minitask.transport import memory  # noqa: E402

TRANSPORTS = ("memory", "minitask", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; a test that kills it gets it started again by the
    next test (`transport`)."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path_factory.mktemp("contract-redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request, tmp_path):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        if server.process.poll() is not None:
            server.start()
        # retry_seconds: a test that kills the server wants to hear so soon.
        url = server.url("/0", vhost="contract-%s" % uuid.uuid4().hex[:12],
                         handover_grace=GRACE, retry_seconds=2)
        harness = Harness("redis", url, server.kill)
        stop = lambda: None                 # noqa: E731  (the server outlives the test)
    elif request.param == "memory":
        name = "contract-%s" % uuid.uuid4().hex
        memory.open_broker(name, handover_grace=GRACE)
        harness = Harness("memory", "memory://" + name, lambda: memory.drop_broker(name))
        stop = harness.stop_broker
    else:
        broker = Broker(tmp_path, args=["--worker-lost-grace", str(GRACE)]).start()
        harness = Harness("minitask", broker.url, broker.kill)
        stop = broker.proc.close
    try:
        yield harness
    finally:
        try:
            harness.close()
        finally:
            stop()
