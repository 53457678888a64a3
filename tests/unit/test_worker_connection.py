"""The worker's loop when its broker connection fails in the middle of a turn: it carries on
and reconnects, whichever call to the consumer found the connection gone."""

import pytest

from minitask import config
from minitask.exceptions import BrokerConnectionError
from minitask.worker.worker import Worker


class FailingConsumer:
    """A consumer whose connection is found lost by the call named `fails`."""

    def __init__(self, fails):
        self.fails = fails
        self.connected = True
        self.lost_calls = 0
        self.flushed = 0

    def _maybe_fail(self, name):
        if name == self.fails and self.connected:
            raise BrokerConnectionError("connection to redis://127.0.0.1:1 lost: reset")

    def set_extra_credit(self, held):
        pass

    def heartbeat(self):
        self._maybe_fail("heartbeat")

    def end_turn(self):
        self._maybe_fail("end_turn")

    def flush(self):
        self._maybe_fail("flush")
        self.flushed += 1
        return False

    def lost(self):
        self.lost_calls += 1
        self.connected = False

    def close(self):
        pass


@pytest.mark.parametrize("fails", ["heartbeat", "end_turn", "flush"])
def test_a_connection_lost_in_any_consumer_call_of_a_turn_is_a_reconnect_not_an_exit(fails):
    worker = Worker(config.Settings({"BROKER_URL": "memory://worker-connection"}),
                    concurrency=1)
    try:
        worker.consumer = FailingConsumer(fails)
        worker._last_send = -1e9        # the heartbeat is due this turn
        worker._send()                  # raised BrokerConnectionError when not caught
        assert worker.consumer.lost_calls == 1
        assert not worker.consumer.connected
        assert worker._reconnect_at > 0     # a reconnect is scheduled
    finally:
        worker.selector.close()
        worker._wake_r.close()
        worker._wake_w.close()
