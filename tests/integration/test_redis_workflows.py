"""Workflows on Redis: the built-in broker's workflow tests, run as they are against
redis-server (chains, callbacks, errbacks, groups, chords, a chord a worker sends, a
revoked link, a header task or a task lost with its worker), and what only Redis has: a parked chord
body through a kill -9 of redis-server (AOF). Skips, saying why, where redis-server is not
installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import itflow  # noqa: E402
from rediskit import REDIS_SERVER, SKIP_REASON  # noqa: E402
from test_redis_worker import broker, server, start_worker  # noqa: E402,F401
from test_workflows import (  # noqa: E402,F401  (collected here again, on Redis)
    flow_worker,
    test_a_chain_passes_each_result_on_and_its_result_is_its_last_tasks,
    test_a_chord_body_gets_every_header_result_in_order,
    test_a_chord_with_an_empty_header_runs_its_body_with_an_empty_list,
    test_an_immutable_chord_body_waits_for_the_header_but_gets_no_results,
    test_a_chord_inside_a_chain_is_sent_by_the_worker,
    test_a_failing_header_task_fails_the_chord_naming_it_and_calls_its_errback,
    test_a_failing_link_stops_the_chain_and_calls_its_errback,
    test_a_group_piped_into_a_task_is_a_chord, test_a_group_runs_its_members,
    test_a_header_task_whose_worker_is_killed_fails_the_chord_with_worker_lost,
    test_a_fresh_handle_of_a_task_finds_its_children_in_its_result,
    test_a_link_callback_gets_the_result, test_a_link_that_retries_carries_its_chain_on,
    test_the_children_of_a_task_that_failed_are_none_as_its_callbacks_never_ran,
    test_a_revoked_link_is_not_run_and_its_chain_gets_the_revocation,
    test_a_task_whose_worker_is_killed_calls_its_errback_and_ends_its_chain,
    test_an_immutable_link_gets_no_result, test_chain_called_with_partial_arguments,
    test_link_error_on_a_single_task, test_map_starmap_and_chunks,
    test_a_link_the_broker_cannot_route_fails_its_task_and_ends_the_chain,
)

from minitask import chord  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)


def test_a_parked_chord_body_survives_a_kill_9_of_redis_server(server, broker, start_worker):
    result = chord((itflow.add.s(i, 1) for i in range(5)), itflow.tsum.s())()
    server.kill()                       # before any header task ran; AOF keeps the body
    server.start()
    reset_connection()
    start_worker(modules="itflow")
    assert result.get(timeout=30) == sum(i + 1 for i in range(5))
