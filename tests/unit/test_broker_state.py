"""minitask.broker.state, commands in and frames out: handshake, topology, results and
waits, revoke, handovers, leases, settings, status, bad input, journal records.

Publishing, confirms and delivery (consume, prefetch, ack, reject, requeue, delays, expiry)
are in test_broker_state_delivery.py. Time moves only through the fake clock.
"""
import hashlib
import hmac
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from brokerkit import Broker, BrokerOptions, FakeJournal, body_of, record_types  # noqa: E402

from minitask import control  # noqa: E402
from minitask import protocol as P  # noqa: E402
from minitask.broker import records as rc  # noqa: E402
from minitask.protocol import auth_proof  # noqa: E402
from minitask.exceptions import TaskRevokedError, WorkerLostError  # noqa: E402
from minitask.message import decode_result_meta  # noqa: E402


@pytest.fixture
def kit():
    return Broker()


@pytest.fixture
def client(kit):
    return kit.connect()


def kinds(frames):
    return [(kind, seq) for kind, seq, _body in frames]


def confirms(frames):
    return [seq for kind, seq, _body in frames if kind == P.CONFIRM]


def errors(frames):
    return [(seq,) + P.decode_error(body) for kind, seq, body in frames if kind == P.ERROR]


def declare(client, queue, **args):
    return client.ok(P.DECLARE_QUEUE, dict(args, queue=queue))


# -- handshake (protocol section 6) ---------------------------------------------------------

def test_hello_is_answered_with_welcome_carrying_the_limits(kit):
    client = kit.open()
    frames = client.send_json(P.HELLO, {"protocol": 1, "heartbeat": 30, "client": "test"})
    assert kinds(frames) == [(P.WELCOME, 1)]
    welcome = P.decode_json(frames[0][2])
    assert welcome["protocol"] == 1
    assert welcome["max_frame_bytes"] == P.MAX_FRAME_BYTES
    assert welcome["heartbeat"] == 30
    assert "proof" not in welcome
    assert client.session.is_open


def test_an_unsupported_protocol_version_is_refused_and_closed(kit):
    client = kit.open()
    code, text = client.error(P.HELLO, {"protocol": 2})
    assert code == P.COMMAND_INVALID
    assert "2" in text
    assert client.session.want_close
    assert not client.session.is_open


@pytest.mark.parametrize("kind, body", [
    (P.DECLARE_QUEUE, {"queue": "q"}), (P.STATUS, {}), (P.AUTH, {"proof": "00"}),
    (P.PUBLISH, P.encode_message(P.Message(routing_key="minitask"))),
])
def test_commands_before_hello_are_refused_and_closed(kit, kind, body):
    client = kit.open()
    code, _text = client.error(kind, body)
    assert code == P.COMMAND_INVALID
    assert client.session.want_close
    assert kit.queue("minitask").ready == 0


def test_a_malformed_hello_is_a_bad_frame_and_closed(kit):
    client = kit.open()
    code, _ = client.error(P.HELLO, b"{not json")
    assert code == P.BAD_FRAME
    assert client.session.want_close


def test_auth_without_a_challenge_is_refused(client):
    code, _ = client.error(P.AUTH, {"proof": "00"})
    assert code == P.COMMAND_INVALID
    assert client.session.want_close


def secret_broker():
    return Broker(options=BrokerOptions(secret="s"))


def challenge(client, nonce="ab" * 32):
    frames = client.send_json(P.HELLO, {"protocol": 1, "nonce": nonce})
    assert kinds(frames) == [(P.CHALLENGE, 1)]
    broker_nonce = P.decode_json(frames[0][2])["nonce"]
    assert len(bytes.fromhex(broker_nonce)) == 32
    return broker_nonce


def test_a_secret_makes_hello_answer_with_a_challenge():
    client = secret_broker().open()
    challenge(client)
    assert not client.session.is_open


def test_the_right_proof_is_welcomed_with_the_brokers_own_proof():
    client = secret_broker().open()
    client_nonce = "cd" * 32
    broker_nonce = challenge(client, client_nonce)
    proof = auth_proof(b"s", "client", client_nonce, broker_nonce)
    frames = client.send_json(P.AUTH, {"proof": proof})
    assert kinds(frames) == [(P.WELCOME, 2)]
    welcome = P.decode_json(frames[0][2])
    assert welcome["proof"] == auth_proof(b"s", "broker", broker_nonce, client_nonce)
    assert client.session.is_open
    declare(client, "after-auth")


def test_a_wrong_proof_is_refused_and_closed():
    client = secret_broker().open()
    broker_nonce = challenge(client)
    wrong = auth_proof(b"not-the-secret", "client", "ab" * 32, broker_nonce)
    code, _ = client.error(P.AUTH, {"proof": wrong})
    assert code == P.AUTH_FAILED
    assert client.session.want_close
    assert not client.session.is_open


def test_the_brokers_proof_is_not_accepted_as_the_clients():
    client = secret_broker().open()
    client_nonce = "ab" * 32
    broker_nonce = challenge(client, client_nonce)
    mirrored = auth_proof(b"s", "broker", broker_nonce, client_nonce)
    assert client.error(P.AUTH, {"proof": mirrored})[0] == P.AUTH_FAILED


def test_commands_during_the_challenge_are_refused_and_closed():
    client = secret_broker().open()
    challenge(client)
    assert client.error(P.DECLARE_QUEUE, {"queue": "q"})[0] == P.COMMAND_INVALID
    assert client.session.want_close


def test_auth_proof_is_computed_as_the_protocol_docstring_says():
    # Section 6: proof_c = HMAC-SHA256(secret, "client:" nonce_c ":" nonce_b), in hex; a client
    # in another language can only compute what the docstring spells out.
    client = secret_broker().open()
    client_nonce = "ef" * 32
    broker_nonce = challenge(client, client_nonce)
    proof = hmac.new(b"s", ("client:" + client_nonce + ":" + broker_nonce).encode(),
                     hashlib.sha256).hexdigest()
    frames = client.send_json(P.AUTH, {"proof": proof})
    assert kinds(frames) == [(P.WELCOME, 2)]
    expected = hmac.new(b"s", ("broker:" + broker_nonce + ":" + client_nonce).encode(),
                        hashlib.sha256).hexdigest()
    assert P.decode_json(frames[0][2])["proof"] == expected


# -- topology -------------------------------------------------------------------------------

def test_the_default_exchange_queue_and_binding_exist_at_start(kit, client):
    assert declare(client, "minitask", passive=True) == {"queue": "minitask", "messages": 0,
                                                         "consumers": 0}
    client.publish(exchange="minitask", routing_key="minitask")
    assert kit.queue("minitask").ready == 1


def test_declare_queue_answers_its_name_and_counts(kit, client):
    assert declare(client, "q") == {"queue": "q", "messages": 0, "consumers": 0}
    client.publish(routing_key="q")
    client.consume("q")
    assert declare(client, "q", passive=True) == {"queue": "q", "messages": 1, "consumers": 1}


def test_passive_declare_of_a_missing_queue_is_404(client):
    assert client.error(P.DECLARE_QUEUE, {"queue": "nope", "passive": True})[0] == 404


def test_passive_declare_of_a_missing_exchange_is_404(client):
    body = {"exchange": "nope", "type": "topic", "passive": True}
    assert client.error(P.DECLARE_EXCHANGE, body)[0] == 404


def test_redeclaring_a_queue_with_other_arguments_is_406(client):
    declare(client, "q", max_length=5)
    code, text = client.error(P.DECLARE_QUEUE, {"queue": "q", "max_length": 6})
    assert code == P.PRECONDITION_FAILED
    assert "max_length" in text
    assert client.error(P.DECLARE_QUEUE, {"queue": "q", "durable": False})[0] == 406
    assert declare(client, "q", max_length=5)["queue"] == "q"     # the same arguments are fine
    assert not client.session.want_close


def test_redeclaring_an_exchange_with_another_type_is_406(client):
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "e", "type": "topic"})
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "e", "type": "topic"})
    assert client.error(P.DECLARE_EXCHANGE, {"exchange": "e", "type": "fanout"})[0] == 406


@pytest.mark.parametrize("name", ["", "amq.topic"])
def test_reserved_exchange_names_cannot_be_declared(client, name):
    assert client.error(P.DECLARE_EXCHANGE, {"exchange": name, "type": "fanout"})[0] == 406


def test_an_unknown_exchange_type_is_a_bad_frame(client):
    assert client.error(P.DECLARE_EXCHANGE, {"exchange": "e", "type": "x-weird"})[0] == 400
    assert not client.session.want_close


def test_the_default_exchange_cannot_be_bound(client):
    declare(client, "q")
    body = {"queue": "q", "exchange": "", "binding_key": "other"}
    assert client.error(P.BIND, body)[0] == P.PRECONDITION_FAILED


def test_binding_to_a_missing_exchange_or_queue_is_404(client):
    declare(client, "q")
    assert client.error(P.BIND, {"queue": "q", "exchange": "nope"})[0] == 404
    assert client.error(P.BIND, {"queue": "nope", "exchange": "minitask"})[0] == 404


def test_bind_and_unbind_change_where_messages_go(kit, client):
    declare(client, "q")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "t", "type": "topic"})
    client.ok(P.BIND, {"queue": "q", "exchange": "t", "binding_key": "a.#"})
    client.publish(exchange="t", routing_key="a.b.c")
    assert kit.queue("q").ready == 1
    client.ok(P.UNBIND, {"queue": "q", "exchange": "t", "binding_key": "a.#"})
    client.publish(exchange="t", routing_key="a.b.c")
    assert kit.queue("q").ready == 1


def test_a_headers_exchange_routes_on_message_headers(kit, client):
    declare(client, "q")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "h", "type": "headers"})
    client.ok(P.BIND, {"queue": "q", "exchange": "h",
                       "arguments": {"x-match": "any", "kind": "image", "size": "big"}})
    client.publish(exchange="h", routing_key="", headers={"kind": "image"})
    client.publish(exchange="h", routing_key="", headers={"kind": "text"})
    assert kit.queue("q").ready == 1


def test_purge_and_delete_report_how_many_messages_went(kit, client):
    declare(client, "q")
    for _ in range(3):
        client.publish(routing_key="q")
    assert client.ok(P.PURGE, {"queue": "q"}) == {"messages": 3}
    assert kit.queue("q").ready == 0
    client.publish(routing_key="q")
    assert client.ok(P.DELETE_QUEUE, {"queue": "q"}) == {"messages": 1}
    assert "q" not in kit.state.queues
    assert client.error(P.PURGE, {"queue": "q"})[0] == 404


def test_delete_exchange_removes_it(kit, client):
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "e", "type": "fanout"})
    client.ok(P.DELETE_EXCHANGE, {"exchange": "e"})
    assert "e" not in kit.state.exchanges
    assert client.error(P.DELETE_EXCHANGE, {"exchange": "e"})[0] == 404
    assert client.error(P.DELETE_EXCHANGE, {"exchange": ""})[0] == 404


def test_a_server_named_queue_gets_a_generated_exclusive_name(kit, client):
    reply = declare(client, "")
    name = reply["queue"]
    assert name and name.startswith("mt.gen-")
    assert kit.queue(name).exclusive
    assert declare(client, "")["queue"] != name
    client.publish(routing_key=name)
    assert kit.queue(name).ready == 1


@pytest.mark.parametrize("kind, body", [
    (P.CONSUME, {"queue": "mine"}), (P.DECLARE_QUEUE, {"queue": "mine", "exclusive": True}),
    (P.PURGE, {"queue": "mine"}), (P.DELETE_QUEUE, {"queue": "mine"}),
])
def test_an_exclusive_queue_is_locked_to_its_session(kit, client, kind, body):
    declare(client, "mine", exclusive=True)
    other = kit.connect()
    assert other.error(kind, body)[0] == P.RESOURCE_LOCKED
    assert "mine" in kit.state.queues
    client.consume("mine")                             # its owner still can


def test_an_exclusive_queue_goes_when_its_session_closes(kit, client):
    declare(client, "mine", exclusive=True)
    kit.close(client)
    assert "mine" not in kit.state.queues


def test_an_auto_delete_queue_goes_when_its_last_consumer_cancels(kit, client):
    declare(client, "auto", auto_delete=True)
    first = client.consume("auto")
    second = client.consume("auto")
    client.ok(P.CANCEL, {"consumer_tag": first})
    assert "auto" in kit.state.queues
    client.ok(P.CANCEL, {"consumer_tag": second})
    assert "auto" not in kit.state.queues
    assert client.error(P.DECLARE_QUEUE, {"queue": "auto", "passive": True})[0] == 404


def test_an_auto_delete_queue_without_consumers_yet_stays(kit, client):
    declare(client, "auto", auto_delete=True)
    client.publish(routing_key="auto")
    assert kit.queue("auto").ready == 1


def test_an_auto_delete_exchange_goes_with_its_last_binding(kit, client):
    declare(client, "q")
    client.ok(P.DECLARE_EXCHANGE, {"exchange": "tmp", "type": "direct", "auto_delete": True})
    client.ok(P.BIND, {"queue": "q", "exchange": "tmp", "binding_key": "k"})
    client.ok(P.UNBIND, {"queue": "q", "exchange": "tmp", "binding_key": "k"})
    assert "tmp" not in kit.state.exchanges


def test_cancel_of_an_unknown_consumer_is_404(client):
    assert client.error(P.CANCEL, {"consumer_tag": 99})[0] == 404


@pytest.mark.parametrize("body", [
    {"queue": 5}, {"queue": "q", "max_length": -1}, {"queue": "q", "max_length": "3"},
    {"queue": "q", "max_redeliveries": True}, {"queue": "q", "dead_letter_queue": 3},
    {"queue": "x" * 256},
])
def test_bad_declare_arguments_are_bad_frames_and_keep_the_session(kit, client, body):
    assert client.error(P.DECLARE_QUEUE, body)[0] == P.BAD_FRAME
    assert not client.session.want_close
    assert "q" not in kit.state.queues


# -- results ----------------------------------------------------------------------------------

def test_result_set_is_confirmed_and_result_get_answers_it(kit, client):
    client.set_result("t1", "SUCCESS", b'{"result": 3}', seq=7)
    kit.turn()
    assert kinds(client.frames()) == [(P.CONFIRM, 7)]
    task_id, state, flags, when, content_type, payload = client.get_result("t1")
    assert (task_id, state, flags, content_type, payload) == (
        "t1", "SUCCESS", P.READY, "application/json", b'{"result": 3}')
    assert when == kit.clock.now


def test_an_unknown_result_is_pending_and_not_ready(client):
    assert client.get_result("nobody")[1:4] == ("PENDING", 0, 0.0)


def test_a_non_final_result_is_not_flagged_ready(client):
    client.set_result("t", "RETRY", b"{}")
    assert client.get_result("t")[1:3] == ("RETRY", 0)


def test_result_set_without_store_keeps_nothing(client):
    client.set_result("t", "SUCCESS", b"{}", store=False)
    assert client.get_result("t")[1] == "PENDING"


def test_result_set_needs_a_task_id(client):
    frame = P.encode_result(P.RESULT_SET, 3, "", "SUCCESS", P.STORE, 0.0, "", b"")
    assert client.error(P.RESULT_SET, body_of(frame), seq=3)[0] == P.BAD_FRAME


def test_result_wait_is_answered_the_moment_a_final_result_arrives(kit, client):
    waiter = kit.connect()
    waiter.send_json(P.RESULT_WAIT, {"task_id": "t"}, seq=5)
    assert waiter.frames() == []
    client.set_result("t", "STARTED", b"")
    assert waiter.frames() == []                        # not final yet
    client.set_result("t", "SUCCESS", b'{"result": 1}')
    frames = waiter.frames()
    assert kinds(frames) == [(P.RESULT, 5)]
    assert P.decode_result(frames[0][2])[1:3] == ("SUCCESS", P.READY)
    client.set_result("t", "SUCCESS", b'{"result": 2}')
    assert waiter.frames() == []                        # answered once


def test_result_wait_on_a_final_result_answers_at_once(client):
    client.set_result("t", "FAILURE", b"{}")
    frames = client.send_json(P.RESULT_WAIT, {"task_id": "t", "timeout": 5}, seq=9)
    assert kinds(frames) == [(P.RESULT, 9)]
    assert P.decode_result(frames[0][2])[1] == "FAILURE"


def test_result_wait_with_a_timeout_is_answered_at_the_deadline_with_the_state(kit, client):
    client.send_json(P.RESULT_WAIT, {"task_id": "t", "timeout": 5}, seq=4)
    kit.advance(4.9)
    assert client.frames() == []
    kit.advance(0.1)
    frames = client.frames()
    assert kinds(frames) == [(P.RESULT, 4)]
    assert P.decode_result(frames[0][2])[1:3] == ("PENDING", 0)
    client.set_result("t", "SUCCESS", b"{}")
    assert client.frames() == []                        # the timed-out wait is over


def test_a_timed_out_wait_answers_what_result_get_would(kit, client):
    client.set_result("t", "RETRY", b'{"result": "tombstone"}')
    client.send_json(P.RESULT_WAIT, {"task_id": "t", "timeout": 1}, seq=40)
    kit.advance(1)
    [(_kind, _seq, body)] = client.frames()
    assert P.decode_result(body) == client.get_result("t")


def test_several_waiters_on_one_task_are_all_answered(kit, client):
    others = [kit.connect() for _ in range(3)]
    for number, other in enumerate(others):
        other.send_json(P.RESULT_WAIT, {"task_id": "t"}, seq=number + 1)
    client.set_result("t", "REVOKED", b"")
    assert [kinds(other.frames()) for other in others] == [
        [(P.RESULT, 1)], [(P.RESULT, 2)], [(P.RESULT, 3)]]


def test_a_closed_sessions_waits_are_dropped(kit, client):
    waiter = kit.connect()
    waiter.send_json(P.RESULT_WAIT, {"task_id": "t", "timeout": 1}, seq=1)
    kit.close(waiter)
    client.set_result("t", "SUCCESS", b"")
    kit.advance(5)
    assert waiter.frames() == []


def test_result_wait_refuses_a_negative_timeout(client):
    body = {"task_id": "t", "timeout": -1}
    assert client.error(P.RESULT_WAIT, body)[0] == P.BAD_FRAME


def test_result_forget_removes_results(client):
    client.set_result("a", "SUCCESS", b"")
    client.set_result("b", "SUCCESS", b"")
    assert client.ok(P.RESULT_FORGET, {"task_ids": ["a", "b", "never"]}) == {"forgotten": 2}
    assert client.get_result("a")[1] == client.get_result("b")[1] == "PENDING"


def test_results_expire_at_tick_after_their_ttl(kit, client):
    client.set_result("short", "SUCCESS", b"", ttl=5.0)
    client.set_result("default", "SUCCESS", b"")
    kit.advance(4.9)
    assert client.get_result("short")[1] == "SUCCESS"
    kit.advance(0.1)
    assert client.get_result("short")[1] == "PENDING"
    assert client.get_result("default")[1] == "SUCCESS"
    kit.advance(86400)
    assert client.get_result("default")[1] == "PENDING"


def test_broker_option_result_expires_sets_the_default_ttl():
    kit = Broker(options=BrokerOptions(result_expires=10.0))
    client = kit.connect()
    client.set_result("t", "SUCCESS", b"")
    kit.advance(10)
    assert client.get_result("t")[1] == "PENDING"


# -- revoke -----------------------------------------------------------------------------------

def publish_task(client, task_id, queue="q", **fields):
    return client.publish(routing_key=queue, message_id=task_id, type="tasks.add", **fields)


def test_revoking_a_queued_task_marks_it_revoked_and_it_is_never_delivered(kit, client):
    declare(client, "q")
    publish_task(client, "doomed")
    publish_task(client, "fine")
    client.ok(P.REVOKE, {"task_ids": ["doomed"]})
    assert client.get_result("doomed")[1] == "REVOKED"
    worker = kit.connect()
    worker.consume("q")
    kit.turn()
    assert [d.message.message_id for d in worker.deliveries()] == ["fine"]
    assert kit.queue("q").ready == 0


def test_a_revoked_result_decodes_to_task_revoked_error(kit, client):
    client.ok(P.REVOKE, {"task_ids": ["t"]})
    _id, state, _flags, _when, content_type, payload = client.get_result("t")
    meta = decode_result_meta("t", state, content_type, payload)
    assert isinstance(meta.result, TaskRevokedError)


def test_revoked_ids_are_listed_until_they_expire():
    kit = Broker(options=BrokerOptions(result_expires=100.0))
    client = kit.connect()
    client.ok(P.REVOKE, {"task_ids": ["b", "a"]})
    assert client.ok(P.REVOKED) == {"task_ids": ["a", "b"]}
    kit.advance(100)
    assert client.ok(P.REVOKED) == {"task_ids": []}


def test_revoke_tells_every_worker_through_the_control_exchange(kit, client):
    worker = kit.connect()
    name = declare(worker, "")["queue"]
    worker.ok(P.BIND, {"queue": name, "exchange": control.CONTROL_EXCHANGE})
    worker.consume(name)
    client.ok(P.REVOKE, {"task_ids": ["t1"], "terminate": True})
    kit.turn()
    [delivery] = worker.deliveries()
    assert delivery.message.type == control.CONTROL_TYPE
    command = control.decode_body(delivery.message.body)
    assert command["method"] == "revoke"
    assert command["arguments"] == {"task_ids": ["t1"], "terminate": True,
                                    "signal": "SIGTERM"}


def test_revoke_with_no_control_queue_bound_is_just_remembered(kit, client):
    client.ok(P.REVOKE, {"task_ids": ["t1"]})
    assert sum(queue.ready for queue in kit.state.queues.values()) == 0
    assert "t1" in kit.state.revoked.ids


def test_revoking_a_delivered_task_leaves_its_state_to_the_worker(kit, client):
    declare(client, "q")
    publish_task(client, "running")
    worker = kit.connect()
    worker.consume("q")
    kit.turn()
    assert len(worker.deliveries()) == 1
    client.ok(P.REVOKE, {"task_ids": ["running"]})
    assert client.get_result("running")[1] == "RECEIVED"


# -- handovers (ACK with the started flag) ------------------------------------------------------

def start_task(kit, worker, task_id="t1"):
    declare(worker, "q")
    publish_task(worker, task_id)
    worker.consume("q")
    kit.turn()
    [delivery] = worker.deliveries()
    worker.ack([delivery.tag], flags=P.STARTED)
    return delivery


def test_an_acked_started_task_reads_as_started(kit, client):
    start_task(kit, client)
    assert client.get_result("t1")[1] == "STARTED"
    assert kit.queue("q").unacked == 0


def test_a_lost_workers_started_task_fails_with_worker_lost_error_after_the_grace(kit):
    worker = kit.connect()
    start_task(kit, worker)
    kit.close(worker)
    grace = kit.state.options.handover_grace
    observer = kit.connect()
    kit.advance(grace - 0.01)
    assert observer.get_result("t1")[1] == "STARTED"
    kit.advance(0.01)
    _id, state, flags, _when, content_type, payload = observer.get_result("t1")
    assert (state, flags) == ("FAILURE", P.READY)
    meta = decode_result_meta("t1", state, content_type, payload)
    assert isinstance(meta.result, WorkerLostError)


def test_a_waiter_hears_of_the_lost_worker(kit):
    worker = kit.connect()
    start_task(kit, worker)
    waiter = kit.connect()
    waiter.send_json(P.RESULT_WAIT, {"task_id": "t1"}, seq=3)
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace)
    frames = waiter.frames()
    assert kinds(frames) == [(P.RESULT, 3)]
    assert P.decode_result(frames[0][2])[1] == "FAILURE"


def test_a_claim_within_the_grace_keeps_the_task_alive(kit):
    worker = kit.connect()
    start_task(kit, worker)
    kit.close(worker)
    kit.advance(1.0)
    back = kit.connect()
    assert back.ok(P.CLAIM, {"task_ids": ["t1", "unknown"]}) == {"claimed": 1}
    kit.advance(kit.state.options.handover_grace * 3)
    assert back.get_result("t1")[1] == "STARTED"
    back.set_result("t1", "SUCCESS", b"{}")
    assert back.get_result("t1")[1] == "SUCCESS"


def test_a_claim_after_the_grace_is_too_late(kit):
    worker = kit.connect()
    start_task(kit, worker)
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace)
    back = kit.connect()
    assert back.ok(P.CLAIM, {"task_ids": ["t1"]}) == {"claimed": 0}
    assert back.get_result("t1")[1] == "FAILURE"


def test_a_handed_over_task_that_finishes_is_not_failed_later(kit):
    worker = kit.connect()
    start_task(kit, worker)
    worker.set_result("t1", "SUCCESS", b'{"result": 1}')
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace * 2)
    assert kit.connect().get_result("t1")[1] == "SUCCESS"


def test_a_task_finished_with_ignore_result_is_not_failed_later(kit):
    worker = kit.connect()
    start_task(kit, worker)
    worker.set_result("t1", "SUCCESS", b"", store=False)
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace * 2)
    assert kit.connect().get_result("t1")[1] == "PENDING"


def test_a_plain_ack_hands_nothing_over(kit):
    worker = kit.connect()
    declare(worker, "q")
    publish_task(worker, "t1")
    worker.consume("q")
    kit.turn()
    [delivery] = worker.deliveries()
    worker.ack([delivery.tag])
    kit.close(worker)
    kit.advance(kit.state.options.handover_grace * 2)
    assert kit.connect().get_result("t1")[1] == "PENDING"


# -- leases, settings, status -------------------------------------------------------------------

def test_a_lease_is_granted_to_one_holder_and_refused_to_another_until_it_expires(kit, client):
    first = client.ok(P.LEASE, {"name": "beat", "holder": "a", "ttl": 10})
    assert first == {"granted": True, "holder": "a", "expires_in": 10}
    kit.clock.advance(4)
    second = client.ok(P.LEASE, {"name": "beat", "holder": "b", "ttl": 10})
    assert second == {"granted": False, "holder": "a", "expires_in": 6}
    renewed = client.ok(P.LEASE, {"name": "beat", "holder": "a", "ttl": 10})
    assert renewed["granted"] and renewed["expires_in"] == 10
    kit.clock.advance(10)
    taken = client.ok(P.LEASE, {"name": "beat", "holder": "b", "ttl": 10})
    assert taken == {"granted": True, "holder": "b", "expires_in": 10}


def test_leases_by_different_names_are_independent(client):
    assert client.ok(P.LEASE, {"name": "x", "holder": "a", "ttl": 5})["granted"]
    assert client.ok(P.LEASE, {"name": "y", "holder": "b", "ttl": 5})["granted"]


@pytest.mark.parametrize("ttl", [0, -1, 3601, "10"])
def test_a_lease_ttl_out_of_range_is_a_bad_frame(client, ttl):
    assert client.error(P.LEASE, {"name": "x", "holder": "a", "ttl": ttl})[0] == P.BAD_FRAME


def test_kv_set_then_kv_get_returns_the_value(client):
    assert client.ok(P.KV_GET, {"key": "k"}) == {"value": None}
    client.ok(P.KV_SET, {"key": "k", "value": {"last": 12.5}})
    assert client.ok(P.KV_GET, {"key": "k"}) == {"value": {"last": 12.5}}
    client.ok(P.KV_SET, {"key": "k", "value": 3})
    assert client.ok(P.KV_GET, {"key": "k"}) == {"value": 3}


def test_status_reports_ready_unacked_and_delayed_per_queue(kit, client):
    declare(client, "q")
    for _ in range(3):
        client.publish(routing_key="q")
    client.publish(routing_key="q", not_before=kit.clock.now + 60)
    worker = kit.connect(worker={"hostname": "w1", "pid": 1})
    worker.qos(1)
    worker.consume("q")
    kit.turn()
    status = client.ok(P.STATUS)
    [row] = [row for row in status["queues"] if row["name"] == "q"]
    assert (row["ready"], row["unacked"], row["delayed"], row["consumers"]) == (2, 1, 1, 1)
    assert [w["hostname"] for w in status["workers"]] == ["w1"]
    assert status["states"] == list(P.STATES)


# -- bad input --------------------------------------------------------------------------------

def test_an_unknown_command_is_405_and_closes(client):
    code, text = client.error(0x7E, b"")
    assert code == P.COMMAND_INVALID
    assert "0x7e" in text
    assert client.session.want_close


@pytest.mark.parametrize("kind", [P.DECLARE_QUEUE, P.BIND, P.CONSUME, P.RESULT_GET, P.LEASE,
                                  P.KV_SET, P.REVOKE, P.CLAIM])
def test_malformed_json_is_400_and_the_session_stays_usable(kit, client, kind):
    assert client.error(kind, b"{oops")[0] == P.BAD_FRAME
    assert not client.session.want_close
    declare(client, "still-works")


@pytest.mark.parametrize("kind", [P.ACK, P.REJECT, P.START])
def test_a_malformed_tag_list_is_400(client, kind):
    assert client.error(kind, b"\x00\x00\x00\x00\x02" + b"\x00" * 8)[0] == P.BAD_FRAME


@pytest.mark.parametrize("journal", [None, FakeJournal()], ids=["memory", "journalled"])
def test_a_revoked_task_id_over_255_bytes_is_a_bad_frame(journal):
    # Task ids travel as str8 (255 bytes of UTF-8) everywhere: results, journal records.
    kit = Broker(journal=journal)
    client = kit.connect()
    code, _ = client.error(P.REVOKE, {"task_ids": ["\u00e9" * 200]})   # 400 bytes
    assert code == P.BAD_FRAME
    assert not client.session.want_close
    client.ok(P.REVOKE, {"task_ids": ["\u00e9" * 127]})                # 254 bytes: fine


def test_heartbeat_is_silent_and_close_asks_to_close(client):
    assert client.send(P.HEARTBEAT, b"", seq=0) == []
    assert not client.session.want_close
    assert client.send(P.CLOSE, b"", seq=0) == []
    assert client.session.want_close


def test_a_workers_heartbeat_may_tell_status_how_it_is_now(kit, client):
    worker = kit.connect(worker={"hostname": "w1", "pid": 1, "state": "ok"})
    worker.consume("minitask")
    assert worker.send_json(P.HEARTBEAT, {"worker": {
        "hostname": "w1", "pid": 1, "state": "degraded", "degraded": "cannot import x"}},
        seq=0) == []
    [row] = client.ok(P.STATUS)["workers"]
    assert (row["state"], row["degraded"]) == ("degraded", "cannot import x")


def test_a_heartbeat_body_from_a_client_that_is_no_worker_changes_nothing(kit, client):
    assert client.send_json(P.HEARTBEAT, {"worker": {"hostname": "fake"}}, seq=0) == []
    assert client.ok(P.STATUS)["workers"] == []


def test_a_heartbeat_body_over_4_kib_is_a_bad_frame(kit):
    worker = kit.connect(worker={"hostname": "w1"})
    code, _ = worker.error(P.HEARTBEAT, {"worker": {"hostname": "w1", "x": "y" * 5000}})
    assert code == P.BAD_FRAME and not worker.session.want_close


def test_closing_a_session_twice_is_harmless(kit, client):
    kit.close(client)
    kit.close(client)
    assert client.session.id not in kit.state.sessions


# -- journal records ----------------------------------------------------------------------------

@pytest.fixture
def journalled():
    return Broker(journal=FakeJournal())


def test_a_persistent_publish_to_a_durable_queue_is_recorded_before_its_confirm(journalled):
    kit = journalled
    client = kit.connect()
    declare(client, "q")
    assert record_types(kit.state.take_records()) == [rc.TOPOLOGY]
    seq = client.publish(routing_key="q")
    assert record_types(kit.state.take_records()) == [rc.PUBLISH]
    assert client.frames() == []
    kit.state.confirm_turn()
    assert confirms(client.frames()) == [seq]


def test_transient_messages_and_queues_are_not_recorded(journalled):
    kit = journalled
    client = kit.connect()
    declare(client, "temp", durable=False)
    declare(client, "q")
    kit.state.take_records()
    client.publish(routing_key="temp")
    client.publish(routing_key="q", flags=0)             # not persistent
    assert kit.state.take_records() == []


def test_deliveries_acks_and_handovers_are_recorded(journalled):
    kit = journalled
    worker = kit.connect()
    declare(worker, "q")
    publish_task(worker, "t1")
    publish_task(worker, "t2")
    worker.consume("q")
    kit.state.take_records()
    kit.turn()
    assert record_types(kit.state.take_records()) == [rc.DELIVERED]
    first, second = worker.deliveries()
    worker.ack([first.tag])
    assert record_types(kit.state.take_records()) == [rc.ACK]
    worker.ack([second.tag], flags=P.STARTED)
    [handover] = kit.state.take_records()          # one record: both or neither
    assert record_types([handover]) == [rc.COMPOUND]
    assert [kind for kind, _payload in rc.decode_compound(handover[9:])] \
        == [rc.ACK, rc.STARTED]
    worker.set_result("t2", "SUCCESS", b"{}")
    assert record_types(kit.state.take_records()) == [rc.RESULT]


def test_results_revokes_settings_and_forgets_are_recorded(journalled):
    kit = journalled
    client = kit.connect()
    client.ok(P.KV_SET, {"key": "k", "value": 1})
    assert record_types(kit.state.take_records()) == [rc.KV]
    client.set_result("t", "SUCCESS", b"")
    assert record_types(kit.state.take_records()) == [rc.RESULT]
    client.ok(P.RESULT_FORGET, {"task_ids": ["t"]})
    assert record_types(kit.state.take_records()) == [rc.FORGET]
    client.ok(P.REVOKE, {"task_ids": ["u"]})
    assert sorted(record_types(kit.state.take_records())) == sorted([rc.RESULT, rc.REVOKE])


def refused_publish(kit):
    """A publish whose journal write failed: (client, worker, seq) after one loop turn."""
    client = kit.connect()
    declare(client, "q")
    worker = kit.connect()
    worker.consume("q")
    kit.state.take_records()
    seq = client.publish(routing_key="q")
    records = kit.state.take_records()
    kit.state.refuse_turn("disk full", records)
    kit.turn()
    return client, worker, seq


def test_a_refused_turn_answers_its_publishes_507_and_never_delivers_them(journalled):
    client, worker, seq = refused_publish(journalled)
    frames = client.frames()
    assert [(s, code) for s, code, _text in errors(frames)] == [(seq, P.REFUSED)]
    assert worker.deliveries() == []
    assert journalled.queue("q").ready == 0


def test_a_refused_publish_is_not_also_confirmed(journalled):
    # PUBLISH is answered by "CONFIRM, or ERROR 507": a CONFIRM naming the refused seq makes
    # a client that matches confirms by seq take later, unwritten publishes as confirmed.
    client, _worker, seq = refused_publish(journalled)
    assert confirms(client.frames()) == []
