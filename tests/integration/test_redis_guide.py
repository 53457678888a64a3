"""The guide on Redis: test_guide.py's promises (early Celery's task guide) and
test_seed_guide.py's snippets (the seed guide's code, word for word), collected here again and
run as they are against redis-server; all hold there as written. Left out: the tests that
start no broker (the guide's option defaults, the seed's text checks). Skips, saying why,
where redis-server is not installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rediskit import REDIS_SERVER, SKIP_REASON, RedisBroker  # noqa: E402
from test_redis_worker import GRACE, HEARTBEAT, broker, server, start_worker  # noqa: E402,F401
from test_guide import (  # noqa: E402,F401  (collected here again, on Redis)
    test_a_countdown_or_an_eta_takes_at_least_that_long,
    test_a_rate_limit_holds_the_task_type_to_its_rate,
    test_a_result_can_be_looked_up_by_id,
    test_a_task_class_runs_by_its_generated_name,
    test_abstract_tasks_are_not_registered_but_their_subclasses_are,
    test_default_keyword_arguments_are_given_to_tasks_that_take_them,
    test_delay_is_apply_async_with_args_and_kwargs,
    test_get_logger_writes_to_the_worker_log_file,
    test_ignore_result_stores_nothing,
    test_immediate_raises_when_no_worker_can_take_the_task_now,
    test_mandatory_raises_when_no_queue_would_take_the_message,
    test_messages_carry_the_name_not_the_code,
    test_priority_zero_is_the_highest,
    test_retry_with_exc_runs_again_until_twitter_is_back,
    test_routing_keys_take_tasks_to_the_queues_bound_to_them,
    test_the_registry_has_the_builtin_tasks_here_and_in_the_worker,
    test_the_task_decorator_takes_the_same_options_as_the_class,
    test_the_worker_loglevel_decides_which_lines_are_written,
    test_topic_and_direct_exchanges_match_as_the_guide_says,
    test_when_max_retries_is_exceeded_the_exc_is_raised,
    test_while_it_waits_the_exc_is_the_tombstone_and_countdown_beats_the_default,
    test_without_exc_running_out_of_retries_raises_max_retries_exceeded,
    test_without_exc_the_tombstone_is_retry_task_error,
)
from test_seed_guide import (  # noqa: E402,F401  (the snippets, on a Redis worker)
    EXTRAS, SeedCluster,
    test_01_a_task_class_calls_create_user,
    test_02_the_task_decorator_makes_a_task_of_create_user,
    test_03_the_decorator_takes_the_options_of_the_task_class,
    test_04_a_task_made_of_a_function_pickles_by_name,
    test_05_a_task_class_logs_to_the_worker_log,
    test_06_a_decorated_task_logs_to_the_worker_log,
    test_07_past_max_retries_the_exc_given_to_retry_is_raised,
    test_07_retry_sends_the_task_again_until_twitter_is_back,
    test_08_my_task_runs_as_written,
    test_09_the_registry_lists_the_builtin_tasks,
    test_10_an_abstract_task_is_not_registered_but_its_subclass_is,
)

from minitask import config, registry  # noqa: E402
from minitask.transport import reset_connection  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def redis_seed(server, tmp_path_factory):
    """One worker importing every snippet, for the module (as test_seed_guide's `seed`)."""
    folder = tmp_path_factory.mktemp("seed")
    saved_registry = dict(registry.tasks)
    sys.path.insert(0, str(folder))
    cluster = None
    try:
        cluster = SeedCluster(folder, RedisBroker(server, prefix="seed", heartbeat=HEARTBEAT,
                                                  handover_grace=GRACE))
        cluster.worker.wait_ready()
        yield cluster
    finally:
        if cluster is not None:
            cluster.worker.proc.close()
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n.startswith("seed_")]:
            del sys.modules[name]
        registry.tasks.clear()
        registry.tasks.update(saved_registry)


@pytest.fixture
def seed(redis_seed):
    """The module's seed cluster; this process's settings point at it for the test (the
    guide's tests in this module reset them after each of theirs)."""
    saved_environ = os.environ.get("ITTASKS_DIR")
    config.configure(BROKER_URL=redis_seed.broker.url)
    reset_connection()
    os.environ["ITTASKS_DIR"] = str(redis_seed.folder)
    try:
        yield redis_seed
    finally:
        reset_connection()
        config.reset()
        if saved_environ is None:
            os.environ.pop("ITTASKS_DIR", None)
        else:
            os.environ["ITTASKS_DIR"] = saved_environ

