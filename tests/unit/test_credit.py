"""The extra credit a worker earns by running short tasks (`minitask.worker.credit`)."""

from minitask.worker.credit import FACTOR, FastCredit
from minitask.worker.pool import FAST_SECONDS


def always():
    return True


def test_the_boost_is_earned_by_a_prefetch_of_fast_tasks_in_a_row():
    credit = FastCredit(prefetch=8, multiplier=4)
    for _ in range(7):
        credit.finished(0.0001)
        assert credit.extra_now(always) == 0
    credit.finished(0.0001)
    assert credit.extra_now(always) == 8 * (FACTOR - 1)


def test_one_slow_task_ends_the_boost_and_it_must_be_earned_again():
    credit = FastCredit(prefetch=2, multiplier=2)
    credit.finished(0.0)
    credit.finished(0.0)
    assert credit.extra_now(always) == 2 * (FACTOR - 1)
    credit.finished(FAST_SECONDS)
    assert credit.extra_now(always) == 0
    credit.finished(0.0)
    assert credit.extra_now(always) == 0
    credit.finished(0.0)
    assert credit.extra_now(always) == 2 * (FACTOR - 1)


def test_a_task_that_did_not_run_ends_it_too():
    credit = FastCredit(prefetch=1, multiplier=2)
    credit.finished(0.0)
    credit.finished(None)
    assert credit.extra_now(always) == 0


def test_holding_a_task_not_known_to_be_fast_withholds_it():
    credit = FastCredit(prefetch=1, multiplier=4)
    credit.finished(0.0)
    assert credit.extra_now(lambda: False) == 0
    assert credit.extra_now(always) == FACTOR - 1


def test_what_is_held_is_only_looked_at_once_the_boost_is_earned():
    asked = []
    credit = FastCredit(prefetch=3, multiplier=4)
    credit.finished(0.0)
    assert credit.extra_now(lambda: asked.append(1) or True) == 0
    assert asked == []


def test_a_multiplier_of_one_is_kept_exactly():
    credit = FastCredit(prefetch=4, multiplier=1)
    for _ in range(100):
        credit.finished(0.0)
    assert credit.extra_now(always) == 0


def test_a_new_connection_starts_over():
    credit = FastCredit(prefetch=1, multiplier=2)
    credit.finished(0.0)
    credit.forget()
    assert credit.extra_now(always) == 0
