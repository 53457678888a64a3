"""minitask.control as Celery's app.control, on the in-memory transport (no worker here:
those tests are in tests/integration/test_workeridioms.py): purge, replies when no worker
answers, and revoke kept for workers to come."""

import pytest

from minitask import config, control, task, transport
from minitask.transport import memory
from minitask.exceptions import ConfigurationError

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@task(name="tests.control.add")
def add(x, y):
    return x + y


@pytest.fixture
def memory_broker(monkeypatch, request):
    """This thread's connection is to an in-memory broker of its own (a Settings object,
    not the settings layers: those take only minitask:// and redis:// URLs)."""
    name = "control-%s" % request.node.name
    settings = config.Settings({"BROKER_URL": "memory://" + name})
    conn = transport.client_for(settings, on_connect=lambda c: transport.declare_topology(
        c, settings))
    conn.connect()
    monkeypatch.setattr(transport, "connection", lambda settings=None: conn)
    try:
        yield
    finally:
        conn.close()
        memory.drop_broker(name)


def test_purge_empties_the_configured_queues_and_says_how_many(memory_broker):
    for number in range(3):
        add.delay(number, number)
    assert control.purge() == 3
    assert control.purge() == 0


def test_with_no_worker_the_replies_are_empty(memory_broker):
    assert control.ping(timeout=0.05) == []
    assert control.inspect(timeout=0.05).active() is None
    assert control.broadcast("rate_limit", {"task_name": add.name, "rate_limit": "1/s"}) \
        is None
    assert repr(control.inspect(["w1"], timeout=0.05)) == \
        "<Inspect destination=['w1'] timeout=0.05>"


def test_add_consumer_refuses_celerys_binding_arguments_rather_than_ignore_them():
    with pytest.raises(ConfigurationError, match="declare the queue's binding in QUEUES"):
        control.add_consumer("q", exchange="x", routing_key="k")
