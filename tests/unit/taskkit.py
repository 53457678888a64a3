"""Fixtures the task-API unit tests share (imported by name: a conftest.py here would clash
with the integration tests' own `conftest` module)."""

import os

import pytest

from minitask import client, config, registry


@pytest.fixture
def isolated_tasks(monkeypatch):
    """No MINITASK_* environment, fresh settings and connection, and the registry as it was."""
    for var in list(os.environ):
        if var.startswith("MINITASK_") or var == "DJANGO_SETTINGS_MODULE":
            monkeypatch.delenv(var)
    config.reset()
    client.reset_connection()
    saved = dict(registry.tasks)
    yield
    registry.tasks.clear()
    registry.tasks.update(saved)
    config.reset()
    client.reset_connection()


@pytest.fixture
def no_broker(monkeypatch):
    """Fail the test if anything tries to reach the broker."""
    def refuse(*args, **kwargs):
        pytest.fail("a connection to the broker was attempted")
    monkeypatch.setattr(client, "connection", refuse)
