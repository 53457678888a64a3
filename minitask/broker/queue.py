"""A queue of messages in priority order, and the compact record the broker keeps per message.

Data flow inside one queue::

    push() ──> levels[priority] deque ─┐
    requeue() ──> returned heap ───────┴─> pop() -> a consumer -> unacked (in its Session)

Invariants:

- `pop()` takes the highest priority first (0 before 9); within a priority, messages that came
  back (requeued, or unacked when their connection closed) go before every other message of
  that priority, oldest id first; the rest leave in the order they arrived.
- Removing a message from the middle (expiry) only marks it `DEAD`; `pop()` skips dead
  messages, and `ready` counts only live ones. Once the dead outnumber a quarter of the live
  ones, the queue is rebuilt without them, which frees them: every operation stays O(1) or
  O(log n), amortised, however long the queue is. A refused publish is different: its message
  was pushed moments ago, so `take_back()` finds it at the tail and removes it for good.
"""

import collections
import heapq

__all__ = ["StoredMessage", "Queue", "READY", "DELAYED", "UNACKED", "DEAD"]

# StoredMessage.where
READY, DELAYED, UNACKED, DEAD = 0, 1, 2, 3


class StoredMessage:
    """One message in one queue, as small as it can be: a million of these must fit easily.

    `data` is the message exactly as published (protocol section 3.1); everything else the
    broker needs is decoded once and kept here. `segment` is the journal segment holding its
    record (None when not persisted).
    """

    __slots__ = ("id", "data", "queue", "priority", "expires_at", "deliveries", "where",
                 "segment", "persistent")

    def __init__(self, id, data, queue, priority, expires_at, persistent, deliveries=0):
        self.id = id
        self.data = data
        self.queue = queue
        self.priority = priority
        self.expires_at = expires_at
        self.persistent = persistent
        self.deliveries = deliveries
        self.where = READY
        self.segment = None


class Queue:
    """Messages waiting for consumers, and the consumers waiting for messages."""

    def __init__(self, name, durable=True, exclusive=False, auto_delete=False,
                 max_length=None, max_redeliveries=10, dead_letter_queue=None, owner=None):
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete
        self.max_length = max_length
        self.max_redeliveries = max_redeliveries
        self.dead_letter_queue = dead_letter_queue
        self.owner = owner              # the Session of an exclusive queue
        self.levels = {}                # priority -> deque of StoredMessage
        self._priorities = []           # sorted priorities present in levels
        self.returned = []              # heap of (priority, id, StoredMessage)
        self.ready = 0                  # live messages waiting
        self.dead = 0                   # dead messages still in levels or returned
        self.unacked = 0
        self.delayed = 0
        self.consumers = []             # Consumer objects, served round-robin
        self.next_consumer = 0
        self.published = 0              # counters for status and rates
        self.delivered = 0
        self.acked = 0
        self.dead_lettered = 0

    def arguments(self):
        """What a redeclaration must match (AMQP's 'equivalent' rule)."""
        return {"durable": self.durable, "exclusive": self.exclusive,
                "auto_delete": self.auto_delete, "max_length": self.max_length,
                "max_redeliveries": self.max_redeliveries,
                "dead_letter_queue": self.dead_letter_queue}

    def is_full(self):
        return self.max_length is not None and self.ready >= self.max_length

    def push(self, message):
        """Append a message at the tail of its priority."""
        level = self.levels.get(message.priority)
        if level is None:
            level = self.levels[message.priority] = collections.deque()
            self._priorities = sorted(self.levels)
        level.append(message)
        message.where = READY
        self.ready += 1

    def take_back(self, message):
        """Remove a message pushed this turn (its publish was refused), leaving no trace.

        It sits at the tail of its priority, behind only what was pushed after it in the same
        turn: taking a turn's messages back newest first finds each one right at the tail.
        """
        level = self.levels.get(message.priority)
        behind = []
        while level:
            last = level.pop()
            if last is message:
                break
            behind.append(last)
        if level is not None:
            level.extend(reversed(behind))
        if message.where == READY:
            self.ready -= 1
        message.where = DEAD

    def requeue(self, message):
        """Put a message back ahead of newer ones of its priority."""
        heapq.heappush(self.returned, (message.priority, message.id, message))
        message.where = READY
        self.ready += 1

    def pop(self):
        """The next live message to deliver, or None. It leaves marked UNACKED."""
        while self.ready:
            returned = self.returned
            best = None
            for priority in self._priorities:
                if self.levels[priority]:
                    best = priority
                    break
            if returned and (best is None or returned[0][0] <= best):
                message = heapq.heappop(returned)[2]
            elif best is not None:
                message = self.levels[best].popleft()
            else:               # only dead entries were left; ready count says otherwise
                self.ready = self.dead = 0
                return None
            if message.where == READY:
                self.ready -= 1
                message.where = UNACKED     # in flight; the caller decides where it goes
                return message
            self.dead -= 1
        return None

    def discard(self, message):
        """Mark a waiting message dead: pop() skips it, or a rebuild drops it sooner."""
        if message.where == READY:
            message.where = DEAD
            self.ready -= 1
            self.dead += 1
            if self.dead > 16 and self.dead * 4 > self.ready:
                self._sweep()
        message.where = DEAD

    def _sweep(self):
        """Rebuild the levels and the returned heap without their dead messages."""
        for priority, level in self.levels.items():
            self.levels[priority] = collections.deque(m for m in level if m.where == READY)
        self.returned = [entry for entry in self.returned if entry[2].where == READY]
        heapq.heapify(self.returned)
        self.dead = 0

    def drain(self):
        """Remove and return every live waiting message (purge, delete)."""
        taken = [entry[2] for entry in self.returned if entry[2].where == READY]
        for level in self.levels.values():
            taken.extend(message for message in level if message.where == READY)
            level.clear()
        self.returned = []
        self.ready = self.dead = 0
        for message in taken:
            message.where = DEAD
        return taken

    def iter_ready(self):
        """Live waiting messages in delivery order (status, compaction)."""
        returned = sorted(self.returned)
        for priority in sorted(set(self._priorities) | {entry[0] for entry in returned}):
            for entry in returned:
                if entry[0] == priority and entry[2].where == READY:
                    yield entry[2]
            for message in self.levels.get(priority, ()):
                if message.where == READY:
                    yield message
