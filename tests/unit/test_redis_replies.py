"""minitask.transport.redis_replies: script refusals become the seam's exceptions, and what
the scripts store reads back as `Result`s."""
import pytest

from minitask import protocol as P
from minitask.exceptions import (
    BrokerError, BrokerFullError, NotDeliverableError, ReplyError, TaskRevokedError,
    UnroutableError, WorkerLostError,
)
from minitask.message import decode_result_meta
from minitask.transport.redis_replies import (
    STALE, live_consumers, read_result, redis_ms, refused,
)


@pytest.mark.parametrize("text,cls,code", [
    ("MT312 message to exchange '' with routing key 'x' matched no queue", UnroutableError,
     None),
    ("MT313 no consumer of 'jobs' can take the message now", NotDeliverableError, None),
    ("MT507 queue 'jobs' is full (max_length 2)", BrokerFullError, None),
    ("MT404 no queue 'ghost'", BrokerError, P.NOT_FOUND),
    ("MT409 queue 'q' is exclusive to another connection", BrokerError, P.RESOURCE_LOCKED),
])
def test_a_refusal_is_the_exception_of_its_code_with_its_text(text, cls, code):
    error = refused(ReplyError(text + " script: 0123abcd, on @user_script:12."))
    assert type(error) is cls
    assert str(error) == text.split(" ", 1)[1]
    if code is not None:
        assert error.code == code


def test_stale_and_other_errors():
    assert refused(ReplyError("STALE the topology changed")) is STALE
    other = ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert refused(other) is other


def entry(**fields):
    flat = []
    for name, value in fields.items():
        flat += [name.encode(), value]
    return [[b"1700000000000-0", flat]]


def test_a_stored_result_reads_back_as_stored():
    result, entry_id = read_result("t1", entry(s=b"SUCCESS", t=b"1700000000500",
                                               c=b"application/json", p=b'{"x":1}'),
                                   None, None)
    assert result == ("SUCCESS", True, 1700000000.5, "application/json", b'{"x":1}')
    assert entry_id == "1700000000000-0"


@pytest.mark.parametrize("state,why,cls", [("REVOKED", b"expired", TaskRevokedError),
                                           ("FAILURE", b"the worker was lost", WorkerLostError)])
def test_a_state_the_transport_stored_reads_back_with_its_exception(state, why, cls):
    result, _ = read_result("t2", entry(s=state.encode(), t=b"1000", c=b"", p=b"", w=why),
                            None, None)
    assert (result.state, result.ready, result.date_done) == (state, True, 1.0)
    meta = decode_result_meta("t2", result.state, result.content_type, result.payload)
    assert isinstance(meta.result, cls) and why.decode() in str(meta.result)


def test_without_a_result_the_task_is_received_started_or_pending():
    assert read_result("t", [], b"RECEIVED\tc1\tt.add", None)[0].state == "RECEIVED"
    assert read_result("t", [], b"STARTED\tc1\tt.add", None)[0].state == "STARTED"
    assert read_result("t", [], None, b"c1\tt.add")[0].state == "STARTED"
    assert read_result("t", [], None, None) == (("PENDING", False, 0.0, "", b""), "0-0")


def test_consumers_count_while_their_announcement_lasts():
    flat = [b"c1", b"3 2000", b"c2", b"0 1500", b"c3", b"5 999"]
    assert live_consumers(flat, 1000) == ["c1", "c2"]
    assert live_consumers(flat, 1800) == ["c1"]
    assert redis_ms([b"1700000000", b"123456"]) == 1700000000123
