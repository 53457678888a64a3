"""minitask.worker.beat's decisions, against an in-memory broker: BEAT_SCHEDULE entries and
crontab schedules, what is sent when, and what is written down so that a restart neither skips
nor repeats a send. (A real broker and workers: tests/integration/test_beat.py.)"""
import datetime
import time

import pytest

from minitask import config, crontab, periodic_task, registry, task
from minitask.message import TaskMessage
from minitask.worker.beat import LEASE_SECONDS, Beat

from taskkit import isolated_tasks  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_tasks")


@pytest.fixture(autouse=True)
def no_other_periodic_tasks(isolated_tasks):  # noqa: F811  (the fixture imported above)
    """Only the periodic tasks a test defines: other suites' modules may have registered some
    (isolated_tasks puts them back afterwards)."""
    for name in list(registry.tasks.periodic()):
        registry.tasks.unregister(name)

UTC = datetime.timezone.utc


def at(*fields):
    return datetime.datetime(*fields, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class FakeBroker:
    """What the beat asks of a broker: a lease, a durable key-value store, publishes."""

    def __init__(self):
        self.kv = {}
        self.sent = []
        self.declared = []
        self.holder = None
        self.expires = 0.0
        self.clock = None

    def connect(self, clock):
        broker = self

        class Connection:          # the seam's Client, as far as the beat uses it
            def lease(self, name, holder, ttl):
                now = clock()
                if broker.holder in (None, holder) or now >= broker.expires:
                    broker.holder, broker.expires = holder, now + ttl
                return {"granted": broker.holder == holder, "holder": broker.holder,
                        "expires_in": broker.expires - now}

            def kv_get(self, key):
                return broker.kv.get(key)

            def kv_set(self, key, value):
                broker.kv[key] = value

            def publish_with_record(self, message, key, value):
                broker.kv[key] = value
                broker.sent.append((clock(), TaskMessage.decode(message)))

            def ensure_queue(self, queue):
                broker.declared.append(queue)

        return Connection()


def beat_for(broker, clock, schedule=None, holder="w1"):
    settings = config.configure(BEAT_SCHEDULE=schedule or {}, TIMEZONE="UTC")
    beat = Beat(settings, holder, clock=clock)
    beat.conn = broker.connect(clock)
    return beat


def sent(broker):
    return [(when, message.task, message.args) for when, message in broker.sent]


def test_a_beat_schedule_entry_is_sent_by_name_with_its_args_and_kwargs():
    broker, clock = FakeBroker(), Clock(at(2024, 1, 1, 12))
    beat = beat_for(broker, clock, {"add": {"task": "proj.add", "schedule": 30,
                                            "args": (16, 16), "kwargs": {"z": 1}}})
    beat.tick()
    clock.now += 10
    beat.tick()
    clock.now += 20
    beat.tick()
    assert sent(broker) == [(at(2024, 1, 1, 12), "proj.add", (16, 16)),
                            (at(2024, 1, 1, 12, 0, 30), "proj.add", (16, 16))]
    assert broker.sent[0][1].kwargs == {"z": 1}
    assert broker.kv == {"beat.last_run.beat_schedule.add": at(2024, 1, 1, 12, 0, 30)}


def test_a_crontab_entry_waits_for_its_time_and_writes_down_when_it_was_first_met():
    broker, clock = FakeBroker(), Clock(at(2024, 1, 1, 12, 7))
    beat = beat_for(broker, clock, {"q": {"task": "proj.q", "schedule": crontab(minute="*/15")}})
    wait = beat.tick()
    assert sent(broker) == [] and wait == LEASE_SECONDS / 3
    assert broker.kv == {"beat.last_run.beat_schedule.q": at(2024, 1, 1, 12, 7)}
    clock.now = at(2024, 1, 1, 12, 14, 59)
    assert beat.tick() == pytest.approx(1.0)
    clock.now = at(2024, 1, 1, 12, 15, 0, 100000)
    beat.tick()
    beat.tick()
    assert [when for when, _task, _args in sent(broker)] == [at(2024, 1, 1, 12, 15, 0, 100000)]


def test_a_crontab_time_that_passes_while_no_beat_runs_is_sent_once_when_one_is_back():
    broker, clock = FakeBroker(), Clock(at(2024, 1, 1, 12, 7))
    schedule = {"q": {"task": "proj.q", "schedule": crontab(minute="*/15")}}
    beat_for(broker, clock, schedule).tick()            # met at 12:07, then the worker dies
    clock.now = at(2024, 1, 1, 13, 2)                   # 12:15 .. 13:00 passed unseen
    beat_for(broker, clock, schedule, holder="w2").tick()
    assert [when for when, _task, _args in sent(broker)] == [at(2024, 1, 1, 13, 2)]


def test_an_entry_for_a_task_known_here_gets_the_tasks_options_and_its_queue_declared():
    @task(name="proj.hipri", queue="hipri", priority=1)
    def hipri():
        return None

    broker, clock = FakeBroker(), Clock(at(2024, 1, 1))
    before = time.time()
    beat_for(broker, clock, {"h": {"task": "proj.hipri", "schedule": 60,
                                   "options": {"expires": 30}}}).tick()
    message = broker.sent[0][1]
    assert (message.exchange, message.routing_key, message.priority) == ("", "hipri", 1)
    assert before + 30 <= message.expires <= time.time() + 30     # counted from the send
    assert broker.declared == ["hipri"]


def test_periodic_tasks_and_entries_are_sent_side_by_side_each_with_its_own_record():
    @periodic_task(run_every=crontab(minute=0), name="proj.hourly")
    def hourly():
        return None

    broker, clock = FakeBroker(), Clock(at(2024, 1, 1, 11, 59, 30))
    beat = beat_for(broker, clock, {"proj.hourly": {"task": "proj.hourly", "schedule": 3600}})
    beat.tick()
    clock.now = at(2024, 1, 1, 12, 0, 1)
    beat.tick()
    assert [(when, name) for when, name, _ in sent(broker)] == [
        (at(2024, 1, 1, 11, 59, 30), "proj.hourly"), (at(2024, 1, 1, 12, 0, 1), "proj.hourly")]
    assert set(broker.kv) == {"beat.last_run.proj.hourly",
                              "beat.last_run.beat_schedule.proj.hourly"}


def test_only_the_lease_holder_sends():
    broker, clock = FakeBroker(), Clock(at(2024, 1, 1))
    schedule = {"p": {"task": "proj.p", "schedule": 1}}
    first, second = beat_for(broker, clock, schedule), beat_for(broker, clock, schedule, "w2")
    for _ in range(10):
        first.tick()
        second.tick()
        clock.now += 0.5
    assert len(sent(broker)) == 5 and broker.holder == "w1"
