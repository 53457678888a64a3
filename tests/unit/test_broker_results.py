"""minitask.broker.results: the result store, its waiters, revoked ids and handed-over tasks."""
from minitask.broker.results import Handovers, ResultEntry, ResultStore, Revoked, Waiter
from minitask.broker.session import Session


def entry(task_id, state="SUCCESS", now=100.0, ttl=60.0, payload=b"{}"):
    return ResultEntry(task_id, state, "application/json", payload, now, now + ttl)


# -- ResultStore --------------------------------------------------------------------------

def test_an_unknown_task_is_pending():
    store = ResultStore()
    assert store.get("t") is None
    assert store.state_of("t") == "PENDING"


def test_a_stored_result_is_found_and_counted():
    store = ResultStore()
    assert store.set(entry("t")) is None
    assert store.get("t").state == "SUCCESS"
    assert store.state_of("t") == "SUCCESS"
    assert len(store) == 1


def test_setting_again_returns_the_replaced_entry():
    store = ResultStore()
    first = entry("t", "RETRY")
    store.set(first)
    assert store.set(entry("t", "SUCCESS")) is first
    assert store.state_of("t") == "SUCCESS"
    assert len(store) == 1


def test_inflight_state_shows_until_a_result_arrives():
    store = ResultStore()
    store.inflight["t"] = "STARTED"
    assert store.state_of("t") == "STARTED"
    store.set(entry("t"))
    assert "t" not in store.inflight
    assert store.state_of("t") == "SUCCESS"


def test_results_expire_at_their_time_and_not_before():
    store = ResultStore()
    store.set(entry("a", now=0.0, ttl=10.0))
    store.set(entry("b", now=0.0, ttl=20.0))
    assert store.next_expiry() == 10.0
    assert store.expire(9.999) == []
    assert [e.task_id for e in store.expire(10.0)] == ["a"]
    assert store.get("a") is None and store.get("b") is not None
    assert [e.task_id for e in store.expire(100.0)] == ["b"]
    assert len(store) == 0


def test_a_result_set_again_later_expires_at_its_new_time():
    store = ResultStore()
    store.set(entry("t", now=0.0, ttl=10.0))
    store.set(entry("t", now=5.0, ttl=10.0))
    assert store.expire(10.0) == []
    assert store.get("t") is not None
    assert [e.task_id for e in store.expire(15.0)] == ["t"]


def test_a_result_set_again_sooner_expires_at_its_new_time():
    store = ResultStore()
    store.set(entry("t", now=0.0, ttl=100.0))
    store.set(entry("t", now=0.0, ttl=5.0))
    assert [e.task_id for e in store.expire(5.0)] == ["t"]
    assert store.expire(100.0) == []


def test_expire_removes_at_most_limit_results_per_call():
    store = ResultStore()
    for i in range(10):
        store.set(entry("t%d" % i, now=0.0, ttl=1.0))
    assert len(store.expire(5.0, limit=3)) == 3
    assert len(store) == 7
    assert len(store.expire(5.0)) == 7


def test_forget_removes_the_result_and_inflight_state():
    store = ResultStore()
    store.set(entry("t"))
    store.inflight["u"] = "RECEIVED"
    assert store.forget("t").task_id == "t"
    assert store.forget("u") is None
    assert store.state_of("t") == store.state_of("u") == "PENDING"
    assert store.forget("never") is None


def test_a_forgotten_result_does_not_expire_a_new_one_with_the_same_id():
    store = ResultStore()
    store.set(entry("t", now=0.0, ttl=10.0))
    store.forget("t")
    store.set(entry("t", now=5.0, ttl=10.0))
    assert store.expire(10.0) == []
    assert store.get("t") is not None


def test_many_stale_expiry_entries_are_compacted_and_expiry_still_works():
    store = ResultStore()
    for i in range(3000):                           # one live result, thousands stale
        store.set(entry("t", now=float(i), ttl=1000.0))
    store.set(entry("other", now=0.0, ttl=50.0))
    assert store.expire(0.0) == []
    assert store.get("t") is not None
    assert [e.task_id for e in store.expire(50.0)] == ["other"]
    assert [e.task_id for e in store.expire(3999.0)] == ["t"]


def test_take_waiters_hands_back_every_waiter_of_that_task_once():
    store = ResultStore()
    a, b = Waiter("s1", 1, "t", None), Waiter("s2", 2, "t", 50.0)
    other = Waiter("s1", 3, "u", None)
    for waiter in (a, b, other):
        store.add_waiter(waiter)
    assert list(store.take_waiters("t")) == [a, b]
    assert a.done and b.done and not other.done
    assert list(store.take_waiters("t")) == []
    assert store.timed_out_waiters(100.0) == []      # b was answered already


def test_a_waiter_times_out_at_its_deadline_and_not_before():
    store = ResultStore()
    waiter = Waiter("s", 1, "t", 10.0)
    store.add_waiter(waiter)
    assert store.next_wait_deadline() == 10.0
    assert store.timed_out_waiters(9.99) == []
    assert store.timed_out_waiters(10.0) == [waiter]
    assert waiter.done
    assert "t" not in store.waiters
    assert store.next_wait_deadline() is None


def test_a_timed_out_waiter_leaves_other_waiters_of_the_task_waiting():
    store = ResultStore()
    short, forever = Waiter("s", 1, "t", 1.0), Waiter("s", 2, "t", None)
    store.add_waiter(short)
    store.add_waiter(forever)
    assert store.timed_out_waiters(5.0) == [short]
    assert store.waiters["t"] == [forever]


def test_waiters_without_a_deadline_never_time_out():
    store = ResultStore()
    store.add_waiter(Waiter("s", 1, "t", None))
    assert store.next_wait_deadline() is None
    assert store.timed_out_waiters(1e18) == []


def test_next_wait_deadline_skips_answered_waiters():
    store = ResultStore()
    store.add_waiter(Waiter("s", 1, "t", 5.0))
    store.add_waiter(Waiter("s", 2, "u", 9.0))
    store.take_waiters("t")
    assert store.next_wait_deadline() == 9.0


def test_drop_waiters_of_a_session_leaves_the_others():
    store = ResultStore()
    mine, theirs = Waiter("me", 1, "t", 5.0), Waiter("them", 2, "t", None)
    store.add_waiter(mine)
    store.add_waiter(theirs)
    store.add_waiter(Waiter("me", 3, "u", None))
    store.drop_waiters_of("me")
    assert store.waiters == {"t": [theirs]}
    assert mine.done
    assert store.timed_out_waiters(10.0) == []


def test_waiters_with_equal_deadlines_are_never_compared_even_after_expiry_compaction():
    # Heap entries are (deadline, seq, waiter): seq must stay unique so waiters are never
    # compared. Rebuilding the expiry heap must not restart the counter under live waiters.
    # Here: 2000 sets and one waiter use counters 1..2001; the compaction of 2000 expiry
    # entries for one live result restarts the counter at 1; 1999 more sets bring it back to
    # 2000, so a counter restarted like that would give `second` the same 2001 as `first`.
    store = ResultStore()
    for i in range(2000):
        store.set(entry("t", now=float(i), ttl=1000.0))       # stale expiry entries pile up
    first = Waiter("s", 1, "w", 10.0)
    store.add_waiter(first)
    store.expire(0.0)                                           # compacts the expiry heap
    for i in range(1999):
        store.set(entry("x%d" % (i % 3), now=0.0, ttl=5000.0))
    second = Waiter("s", 2, "w", 10.0)
    store.add_waiter(second)                                    # same deadline as `first`
    assert store.timed_out_waiters(10.0) == [first, second]


# -- Revoked ------------------------------------------------------------------------------

def test_revoked_ids_are_kept_until_they_expire():
    revoked = Revoked()
    revoked.add("a", 10.0)
    revoked.add("b", 20.0)
    assert "a" in revoked.ids and "b" in revoked.ids and "c" not in revoked.ids
    assert len(revoked) == 2
    assert revoked.next_expiry() == 10.0
    assert revoked.expire(9.0) == []
    assert revoked.expire(10.0) == ["a"]
    assert "a" not in revoked.ids and "b" in revoked.ids
    assert revoked.expire(100.0) == ["b"]
    assert len(revoked) == 0


def test_revoking_again_extends_the_time_an_id_is_kept():
    revoked = Revoked()
    revoked.add("a", 10.0)
    revoked.add("a", 30.0)
    assert revoked.expire(10.0) == []
    assert "a" in revoked.ids
    assert revoked.expire(30.0) == ["a"]


def test_revoking_twice_at_the_same_time_expires_once():
    revoked = Revoked()
    revoked.add("a", 10.0)
    revoked.add("a", 10.0)
    assert revoked.expire(10.0) == ["a"]


# -- Handovers ----------------------------------------------------------------------------

def session(number=1):
    return Session(number, "peer")


def test_a_started_task_belongs_to_its_session():
    handovers = Handovers(grace=5.0)
    owner = session()
    handovers.start("t", owner)
    assert handovers.owner == {"t": owner}
    assert owner.started == {"t"}
    assert len(handovers) == 1


def test_finishing_a_handed_over_task_releases_it():
    handovers = Handovers(grace=5.0)
    owner = session()
    handovers.start("t", owner)
    assert handovers.finish("t") is True
    assert owner.started == set()
    assert len(handovers) == 0
    assert handovers.finish("t") is False
    assert handovers.finish("never") is False


def test_orphans_are_lost_after_the_grace_period_and_not_before():
    handovers = Handovers(grace=5.0)
    owner = session()
    handovers.start("a", owner)
    handovers.start("b", owner)
    handovers.orphan_all(owner, now=100.0)
    assert owner.started == set()
    assert handovers.next_deadline() == 105.0
    assert handovers.lost(104.999) == []
    assert sorted(handovers.lost(105.0)) == ["a", "b"]
    assert len(handovers) == 0
    assert handovers.lost(1000.0) == []


def test_a_claimed_orphan_is_not_lost():
    handovers = Handovers(grace=5.0)
    old, new = session(1), session(2)
    handovers.start("t", old)
    handovers.orphan_all(old, now=0.0)
    assert handovers.claim("t", new) is True
    assert new.started == {"t"}
    assert handovers.lost(10.0) == []
    assert handovers.owner["t"] is new


def worker_session(number, hostname="w1", pid=100):
    one = session(number)
    one.info = {"hostname": hostname, "pid": pid}
    return one


def test_a_claim_takes_a_task_over_from_a_connection_still_held():
    """The worker reconnected before the broker saw its old connection go: its claim
    stands, and losing the old connection later orphans nothing. Only handed-over tasks
    can be claimed."""
    handovers = Handovers(grace=5.0)
    old, new = worker_session(1), worker_session(2)
    handovers.start("t", old)
    assert handovers.claim("t", new) is True
    assert handovers.claim("unknown", new) is False
    assert handovers.owner["t"] is new and "t" not in old.started
    handovers.orphan_all(old, now=0.0)
    assert handovers.owner["t"] is new and not handovers.orphans


def test_a_claim_leaves_a_task_under_another_workers_connection_alone():
    """Another worker runs a second run of the same task id: the first run's worker, come
    back, does not take it (losing that worker later must not fail the other's run)."""
    handovers = Handovers(grace=5.0)
    other, back = worker_session(1, "w2", 200), worker_session(2, "w1", 100)
    handovers.start("t", other)
    assert handovers.claim("t", back) is False
    assert handovers.owner["t"] is other and "t" in other.started


def test_a_claimed_task_orphaned_again_gets_a_new_grace_period():
    handovers = Handovers(grace=5.0)
    first, second = session(1), session(2)
    handovers.start("t", first)
    handovers.orphan_all(first, now=0.0)
    handovers.claim("t", second)
    handovers.orphan_all(second, now=3.0)
    assert handovers.lost(5.0) == []                 # the first deadline no longer counts
    assert handovers.lost(8.0) == ["t"]


def test_an_orphan_that_finishes_within_the_grace_is_not_lost():
    handovers = Handovers(grace=5.0)
    owner = session()
    handovers.start("t", owner)
    handovers.orphan_all(owner, now=0.0)
    assert handovers.finish("t") is True
    assert handovers.lost(10.0) == []
