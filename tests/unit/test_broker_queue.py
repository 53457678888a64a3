"""minitask.broker.queue: priority order, requeue ahead of newer messages, lazy deletion
and the rebuild that frees what it left behind."""
from minitask.broker.queue import DEAD, READY, UNACKED, Queue, StoredMessage


class Messages:
    """Makes StoredMessages with rising ids, as the broker does."""

    def __init__(self, queue):
        self.queue = queue
        self.next_id = 1

    def __call__(self, priority=4):
        message = StoredMessage(self.next_id, b"m%d" % self.next_id, self.queue, priority,
                                None, True)
        self.next_id += 1
        return message


def setup(**kwargs):
    queue = Queue("q", **kwargs)
    return queue, Messages(queue)


def pop_all(queue):
    out = []
    message = queue.pop()
    while message is not None:
        out.append(message.id)
        message = queue.pop()
    return out


def test_an_empty_queue_pops_nothing():
    queue, _ = setup()
    assert queue.pop() is None
    assert queue.ready == 0


def test_messages_leave_in_arrival_order_within_a_priority():
    queue, make = setup()
    for _ in range(5):
        queue.push(make())
    assert pop_all(queue) == [1, 2, 3, 4, 5]


def test_priority_zero_leaves_first():
    queue, make = setup()
    for priority in (9, 4, 0, 4, 9, 0, 5):
        queue.push(make(priority))
    # ids by priority: 0 -> 3, 6; 4 -> 2, 4; 5 -> 7; 9 -> 1, 5
    assert pop_all(queue) == [3, 6, 2, 4, 7, 1, 5]


def test_a_new_higher_priority_message_overtakes_waiting_ones():
    queue, make = setup()
    queue.push(make(5))
    queue.push(make(5))
    assert queue.pop().id == 1
    queue.push(make(1))
    assert pop_all(queue) == [3, 2]


def test_popped_messages_leave_marked_unacked_and_ready_counts_down():
    queue, make = setup()
    queue.push(make())
    queue.push(make())
    assert queue.ready == 2
    message = queue.pop()
    assert message.where == UNACKED
    assert queue.ready == 1


def test_unacked_messages_return_ahead_of_newer_ones():
    queue, make = setup()
    for _ in range(4):
        queue.push(make())
    first, second = queue.pop(), queue.pop()
    queue.push(make())                                 # id 5 arrives meanwhile
    queue.requeue(second)
    queue.requeue(first)
    assert queue.ready == 5
    assert pop_all(queue) == [1, 2, 3, 4, 5]           # oldest returned id first


def test_a_requeued_message_waits_behind_higher_priorities():
    queue, make = setup()
    low = make(7)
    queue.push(low)
    assert queue.pop() is low
    queue.push(make(2))
    queue.push(make(7))
    queue.requeue(low)
    assert pop_all(queue) == [2, 1, 3]


def test_a_requeued_message_goes_ahead_of_lower_priorities():
    queue, make = setup()
    high = make(1)
    queue.push(high)
    assert queue.pop() is high
    queue.push(make(3))
    queue.requeue(high)
    assert pop_all(queue) == [1, 2]


def test_requeue_marks_the_message_ready_again():
    queue, make = setup()
    queue.push(make())
    message = queue.pop()
    queue.requeue(message)
    assert message.where == READY
    assert queue.ready == 1


def test_discarded_messages_are_skipped_and_not_counted():
    queue, make = setup()
    messages = [make() for _ in range(4)]
    for message in messages:
        queue.push(message)
    queue.discard(messages[0])
    queue.discard(messages[2])
    assert queue.ready == 2
    assert messages[0].where == DEAD
    assert pop_all(queue) == [2, 4]
    assert queue.ready == 0


def test_discarding_twice_counts_once():
    queue, make = setup()
    message = make()
    queue.push(message)
    queue.push(make())
    queue.discard(message)
    queue.discard(message)
    assert queue.ready == 1


def test_discarding_an_unacked_message_leaves_ready_alone():
    queue, make = setup()
    queue.push(make())
    queue.push(make())
    taken = queue.pop()
    queue.discard(taken)
    assert queue.ready == 1
    assert pop_all(queue) == [2]


def test_discarded_requeued_messages_are_skipped_too():
    queue, make = setup()
    for _ in range(3):
        queue.push(make())
    first = queue.pop()
    queue.requeue(first)
    queue.discard(first)
    assert queue.ready == 2
    assert pop_all(queue) == [2, 3]


def test_a_queue_of_only_dead_messages_pops_nothing_and_counts_zero():
    queue, make = setup()
    messages = [make(priority) for priority in (0, 9, 4)]
    for message in messages:
        queue.push(message)
    returned = queue.pop()
    queue.requeue(returned)
    for message in messages:
        queue.discard(message)
    assert queue.ready == 0
    assert queue.pop() is None
    assert queue.ready == 0


def test_drain_takes_every_live_waiting_message_and_leaves_the_queue_empty():
    queue, make = setup()
    messages = [make(priority) for priority in (3, 0, 3)]
    for message in messages:
        queue.push(message)
    returned = queue.pop()                   # id 2 (priority 0)
    queue.requeue(returned)
    queue.discard(messages[2])
    taken = queue.drain()
    assert sorted(m.id for m in taken) == [1, 2]
    assert all(m.where == DEAD for m in taken)
    assert queue.ready == 0
    assert queue.pop() is None
    assert list(queue.iter_ready()) == []


def test_drain_leaves_unacked_messages_alone():
    queue, make = setup()
    queue.push(make())
    queue.push(make())
    taken = queue.pop()
    assert [m.id for m in queue.drain()] == [2]
    assert taken.where == UNACKED


def test_a_drained_queue_takes_new_messages():
    queue, make = setup()
    queue.push(make())
    queue.drain()
    queue.push(make(0))
    assert queue.ready == 1
    assert pop_all(queue) == [2]


def test_iter_ready_lists_live_messages_in_arrival_order_within_a_priority():
    queue, make = setup()
    messages = [make(priority) for priority in (5, 1, 5, 1)]
    for message in messages:
        queue.push(message)
    queue.discard(messages[3])
    assert [m.id for m in queue.iter_ready()] == [2, 1, 3]
    assert queue.ready == 3                  # iterating takes nothing


def test_iter_ready_lists_messages_in_the_order_pop_takes_them():
    queue, make = setup()
    returned = make(5)
    queue.push(returned)
    assert queue.pop() is returned
    queue.requeue(returned)                  # back, but at priority 5
    queue.push(make(0))
    queue.push(make(5))
    queue.push(make(9))
    listed = [m.id for m in queue.iter_ready()]
    assert listed == pop_all(queue) == [2, 1, 3, 4]


def test_is_full_compares_ready_messages_with_max_length():
    queue, make = setup(max_length=2)
    assert not queue.is_full()
    queue.push(make())
    queue.push(make())
    assert queue.is_full()
    queue.pop()
    assert not queue.is_full()
    assert not Queue("unbounded").is_full()


def test_max_length_zero_is_always_full():
    queue, _ = setup(max_length=0)
    assert queue.is_full()


def test_arguments_are_what_a_redeclaration_must_match():
    queue = Queue("q", durable=False, exclusive=True, auto_delete=True, max_length=5,
                  max_redeliveries=2, dead_letter_queue="dlq")
    assert queue.arguments() == {"durable": False, "exclusive": True, "auto_delete": True,
                                 "max_length": 5, "max_redeliveries": 2,
                                 "dead_letter_queue": "dlq"}


def test_discarded_messages_are_freed_once_they_are_more_than_a_quarter_of_the_live():
    queue, make = setup()
    messages = [make(i % 3) for i in range(400)]
    for message in messages:
        queue.push(message)
    returned = queue.pop()
    queue.requeue(returned)
    for message in messages[:100:2]:                    # 50 dead for 350 live: kept for now
        queue.discard(message)
    assert entries(queue) == 400 and queue.dead == 50
    for message in messages[100:200:2]:     # rebuilt at the 81st (81 * 4 > 319 live)...
        queue.discard(message)
    assert queue.ready == 300 and queue.dead == 19     # ... and 19 dead since
    assert entries(queue) == 300 + 19
    live = sorted((m for m in messages if m.where == READY), key=lambda m: (m.priority, m.id))
    assert pop_all(queue) == [m.id for m in live]


def entries(queue):
    """What the queue holds, dead or alive."""
    return sum(len(level) for level in queue.levels.values()) + len(queue.returned)


def test_ready_stays_right_through_a_long_mixed_run():
    queue, make = setup()
    live = {}
    for step in range(300):
        message = make(step % 10)
        queue.push(message)
        live[message.id] = message
        if step % 3 == 0:
            taken = queue.pop()
            del live[taken.id]
            if step % 2:
                queue.requeue(taken)
                live[taken.id] = taken
        if step % 7 == 0 and live:
            victim = live.pop(min(live))
            queue.discard(victim)
        assert queue.ready == len(live)
    order = pop_all(queue)
    assert sorted(order) == sorted(live)
    priorities = [live[i].priority for i in order]
    assert priorities == sorted(priorities)
