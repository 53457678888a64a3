"""minitask.worker.scheduler: whatever the order jobs are entered in, they come out in due
order (ties in insertion order), none is lost, and none comes out before it is due."""

from hypothesis import given, strategies as st

from minitask.worker.scheduler import Scheduler

dues = st.lists(st.integers(min_value=0, max_value=50), max_size=60)
steps = st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=30)


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


@given(dues, steps)
def test_jobs_come_out_in_due_order_none_lost_none_early(due_times, advances):
    clock = Clock()
    scheduler = Scheduler(clock)
    for index, due in enumerate(due_times):
        scheduler.enter(due, (due, index))
    out = []
    for step in advances + [max(due_times, default=0) + 1]:
        clock.now += step
        popped = scheduler.pop_due()
        assert all(due <= clock.now for due, _index in popped)          # none early
        out.extend(popped)
        next_due = scheduler.next_due()
        assert next_due is None or next_due > clock.now                  # all due came out
    assert out == sorted(out)                                            # due, then entry order
    assert sorted(out) == sorted((due, index) for index, due in enumerate(due_times))
    assert len(scheduler) == 0


@given(dues)
def test_items_lists_what_waits_soonest_first_without_taking_it(due_times):
    scheduler = Scheduler(lambda: -1)
    for index, due in enumerate(due_times):
        scheduler.enter(due, index)
    listed = scheduler.items()
    assert [due for due, _item in listed] == sorted(due_times)
    assert len(scheduler) == len(due_times)
    assert scheduler.pop_due(-1) == []


def test_items_that_compare_badly_are_never_compared():
    scheduler = Scheduler(lambda: 0)
    first, second = object(), object()
    scheduler.enter(1, first)
    scheduler.enter(1, second)
    assert scheduler.pop_due(1) == [first, second]


@given(dues, st.integers(min_value=2, max_value=5))
def test_remove_takes_exactly_the_matching_items_soonest_first(due_times, modulus):
    scheduler = Scheduler(lambda: 0)
    for index, due in enumerate(due_times):
        scheduler.enter(due, (due, index))
    taken = scheduler.remove(lambda item: item[1] % modulus == 0)
    assert taken == sorted((due, index) for index, due in enumerate(due_times)
                           if index % modulus == 0)
    rest = scheduler.pop_due(max(due_times, default=0))
    assert rest == sorted((due, index) for index, due in enumerate(due_times)
                          if index % modulus != 0)
