"""Fixtures the task-API unit tests share (imported by name: a conftest.py here would clash
with the integration tests' own `conftest` module)."""

import contextlib
import os
import sys

import pytest

from minitask import config, registry, transport

# Settings modules the configuration and loader tests import (mtfix_*.py, minitaskconfig.py).
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def clear_environment(monkeypatch):
    """Remove every MINITASK_* variable (and DJANGO_SETTINGS_MODULE) for this test."""
    for var in list(os.environ):
        if var.startswith("MINITASK_") or var == "DJANGO_SETTINGS_MODULE":
            monkeypatch.delenv(var)


@pytest.fixture
def isolated_settings(monkeypatch):
    """No MINITASK_* environment, fresh settings, the fixture settings modules importable, and
    those modules forgotten afterwards so each test imports them anew."""
    clear_environment(monkeypatch)
    monkeypatch.syspath_prepend(FIXTURES)
    config.reset()
    yield
    config.reset()
    for name in [n for n in sys.modules if n.startswith(("mtfix_", "minitaskconfig"))]:
        del sys.modules[name]


@pytest.fixture
def isolated_tasks(monkeypatch):
    """No MINITASK_* environment, fresh settings and connection, and the registry as it was."""
    clear_environment(monkeypatch)
    config.reset()
    transport.reset_connection()
    saved = dict(registry.tasks)
    yield
    registry.tasks.clear()
    registry.tasks.update(saved)
    config.reset()
    transport.reset_connection()


@pytest.fixture
def no_broker(monkeypatch):
    """Fail the test if anything tries to reach the broker."""
    def refuse(*args, **kwargs):
        pytest.fail("a connection to the broker was attempted")
    monkeypatch.setattr(transport, "connection", refuse)


@contextlib.contextmanager
def worker_on(consumer, concurrency=1):
    """A Worker with no pool processes and no broker: `consumer` (a fake that records what
    the worker says) stands for its connection. Its sockets are closed afterwards."""
    from minitask.worker.worker import Worker

    worker = Worker(config.Settings({"BROKER_URL": "memory://unit-worker"}),
                    concurrency=concurrency)
    worker.consumer = consumer
    try:
        yield worker
    finally:
        worker.selector.close()
        worker._wake_r.close()
        worker._wake_w.close()
