"""The broker's result store, the set of revoked task ids, and tasks handed to workers.

Pure bookkeeping with times passed in: `BrokerState` drives it and turns what it returns into
replies and journal records.

- `ResultStore`: task id -> `ResultEntry` (state, content type, payload), each expiring
  `ttl` seconds after it was set; blocking waits are kept per task id until a final state
  arrives (the caller takes them with `take_waiters()` and answers them); a wait that times
  out is answered with the current state.
- `Revoked`: task ids revoked, kept until their results would have expired.
- `Handovers`: tasks that started under a connection without being acked late. When that
  connection is lost they become orphans; a reconnecting worker may claim them within the
  grace period, after which the broker stores FAILURE / WorkerLostError for them. The
  message of one with workflow headers is kept while it runs (journalled under the queue
  name `HANDED`), for what that failure unlocks: its errbacks, the rest of its chain.
"""

import heapq

__all__ = ["ResultEntry", "ResultStore", "Revoked", "Handovers", "HANDED", "HANDING",
           "same_worker"]

# The journal's queue name for the message kept for a handed-over task. A NUL byte starts
# it: no name a client declares looks like it.
HANDED = "\x00handed-over"


class _Handing:
    """Stands in for a queue in a kept message's StoredMessage (journal accounting only)."""

    name = HANDED


HANDING = _Handing()

_NONE = object()
# Seconds between looks at a result that has expired but that a chord's body still needs.
KEEP_RECHECK = 60.0                # Handovers.checkpoint: the task was not handed over


class ResultEntry:
    """One task's result. `due` is the time its item in the store's expiry heap has: a
    running task's later states move `expires_at` on without an item of their own, and
    the item, once due, is put back for the new time."""

    __slots__ = ("task_id", "state", "content_type", "payload", "date_done", "expires_at",
                 "due", "segment")

    def __init__(self, task_id, state, content_type, payload, date_done, expires_at):
        self.task_id = task_id
        self.state = state
        self.content_type = content_type
        self.payload = payload
        self.date_done = date_done
        self.expires_at = self.due = expires_at
        self.segment = None


class ResultStore:
    """Results by task id, with expiry and waiters."""

    def __init__(self):
        self.entries = {}
        self.inflight = {}              # task id -> "RECEIVED" / "STARTED" with no result yet
        self._expiry = []               # heap of (expires_at, seq, task_id); lazily cleaned
        self._seq = 0
        self.waiters = {}               # task id -> list of Waiter
        self._wait_deadlines = []       # heap of (deadline, seq, Waiter)
        # keep(task_id): whether a result must not expire yet (a chord's body reads it);
        # such a result is looked at again KEEP_RECHECK seconds later.
        self.keep = None

    def __len__(self):
        return len(self.entries)

    def get(self, task_id):
        return self.entries.get(task_id)

    def state_of(self, task_id):
        entry = self.entries.get(task_id)
        if entry is not None:
            return entry.state
        return self.inflight.get(task_id, "PENDING")

    def set(self, entry):
        """Store `entry`; returns the entry it replaced (or None) for journal accounting."""
        old = self.entries.get(entry.task_id)
        self.entries[entry.task_id] = entry
        if entry.state == "STARTED":    # a running task's own state: it still runs
            if old is not None and old.state == "STARTED":
                entry.due = old.due     # its first state's heap item serves them all
                return old
        else:
            self.inflight.pop(entry.task_id, None)
        self._push(entry)
        return old

    def _push(self, entry):
        entry.due = entry.expires_at
        self._seq += 1
        heapq.heappush(self._expiry, (entry.due, self._seq, entry.task_id))

    def restore(self, task_id, entry, inflight):
        """Put back `task_id`'s result and in-flight state as they were before a `set` (an
        ATOMIC unit was refused); returns the entry that goes. `entry`'s expiry is still in
        the heap: entries leave it only when they expire or are replaced."""
        current = self.entries.pop(task_id, None)
        if entry is not None:
            self.entries[task_id] = entry
        if inflight is None:
            self.inflight.pop(task_id, None)
        else:
            self.inflight[task_id] = inflight
        return current

    def take_waiters(self, task_id):
        """Waiters to answer now that `task_id` is in a final state."""
        waiters = self.waiters.pop(task_id, ())
        for waiter in waiters:
            waiter.done = True
        return waiters

    def forget(self, task_id):
        self.inflight.pop(task_id, None)
        return self.entries.pop(task_id, None)

    def expire(self, now, limit=10000):
        """Remove up to `limit` results whose time is up; returns the removed entries."""
        removed = []
        heap = self._expiry
        while heap and heap[0][0] <= now and len(removed) < limit:
            due, _seq, task_id = heapq.heappop(heap)
            entry = self.entries.get(task_id)
            if entry is None or entry.due != due:
                continue                # replaced or forgotten since: a stale item
            if entry.expires_at > now:  # moved on by a later state of a running task
                self._push(entry)
                continue
            if self.keep is not None and self.keep(task_id):
                entry.expires_at = now + KEEP_RECHECK
                self._push(entry)
                continue
            del self.entries[task_id]
            removed.append(entry)
        if len(heap) > 2 * len(self.entries) + 1024:      # mostly stale: rebuild
            self._expiry = []
            for entry in self.entries.values():
                entry.due = entry.expires_at
                self._seq += 1
                self._expiry.append((entry.due, self._seq, entry.task_id))
            heapq.heapify(self._expiry)
        return removed

    def next_expiry(self):
        return self._expiry[0][0] if self._expiry else None

    def add_waiter(self, waiter):
        self.waiters.setdefault(waiter.task_id, []).append(waiter)
        if waiter.deadline is not None:
            self._seq += 1
            heapq.heappush(self._wait_deadlines, (waiter.deadline, self._seq, waiter))

    def timed_out_waiters(self, now):
        """Waiters whose deadline passed; they are removed from their task's list."""
        out = []
        heap = self._wait_deadlines
        while heap and heap[0][0] <= now:
            waiter = heapq.heappop(heap)[2]
            if waiter.done:
                continue
            waiter.done = True
            waiting = self.waiters.get(waiter.task_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self.waiters[waiter.task_id]
            out.append(waiter)
        return out

    def next_wait_deadline(self):
        heap = self._wait_deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def drop_waiters_of(self, session):
        for task_id in list(self.waiters):
            kept = [w for w in self.waiters[task_id] if w.session is not session]
            for waiter in self.waiters[task_id]:
                if waiter.session is session:
                    waiter.done = True
            if kept:
                self.waiters[task_id] = kept
            else:
                del self.waiters[task_id]


class Waiter:
    __slots__ = ("session", "seq", "task_id", "deadline", "done")

    def __init__(self, session, seq, task_id, deadline):
        self.session = session
        self.seq = seq
        self.task_id = task_id
        self.deadline = deadline
        self.done = False


class Revoked:
    """Revoked task ids, each kept until `expires_at`."""

    def __init__(self):
        self.ids = {}                   # task id -> expires_at
        self._expiry = []

    def __len__(self):
        return len(self.ids)

    def add(self, task_id, expires_at):
        self.ids[task_id] = expires_at
        heapq.heappush(self._expiry, (expires_at, task_id))

    def expire(self, now):
        removed = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, task_id = heapq.heappop(self._expiry)
            if self.ids.get(task_id) == expires_at:
                del self.ids[task_id]
                removed.append(task_id)
        return removed

    def next_expiry(self):
        return self._expiry[0][0] if self._expiry else None


def same_worker(one, other):
    """Whether two connections are of one worker process (the hostname and pid each said
    in its HELLO)."""
    ours = (one.info.get("hostname"), one.info.get("pid"))
    return ours != (None, None) and ours == (other.info.get("hostname"),
                                            other.info.get("pid"))


class Handovers:
    """Started tasks owned by live connections, and orphans waiting to be claimed."""

    def __init__(self, grace):
        self.grace = grace
        self.owner = {}                 # task id -> Session (None once orphaned)
        self.names = {}                 # task id -> task name, for status
        # task id -> its message (a StoredMessage in HANDING), when it has workflow headers:
        # what a WorkerLostError the broker stores for it unlocks. Journalled, so that this
        # holds after a restart too.
        self.messages = {}
        self.orphans = {}               # task id -> deadline
        self._deadlines = []

    def __len__(self):
        return len(self.owner)

    def start(self, task_id, session, name=None):
        previous = self.owner.get(task_id)
        if previous is not None and previous is not session:
            # Handed over again (a resend's run): the older connection no longer owns it,
            # so losing that connection must not fail the run going on now.
            previous.started.discard(task_id)
        self.owner[task_id] = session
        if name:
            self.names[task_id] = name
        self.orphans.pop(task_id, None)
        if session is not None:
            session.started.add(task_id)

    def finish(self, task_id):
        """The task's result arrived; returns True if it was handed over."""
        session = self.owner.pop(task_id, False)
        if session is False:
            return False
        self.names.pop(task_id, None)
        self.orphans.pop(task_id, None)
        if session is not None:
            session.started.discard(task_id)
        return True

    def checkpoint(self, task_id):
        """What `restore` needs to put `task_id`'s handover back as it is now."""
        return (self.owner.get(task_id, _NONE), self.names.get(task_id),
                self.orphans.get(task_id))

    def restore(self, task_id, checkpoint):
        owner, name, deadline = checkpoint
        current = self.owner.pop(task_id, None)
        if current is not None:
            current.started.discard(task_id)
        self.names.pop(task_id, None)
        self.orphans.pop(task_id, None)
        if owner is not _NONE:
            self.start(task_id, owner, name)
        if deadline is not None:
            self.orphans[task_id] = deadline
            heapq.heappush(self._deadlines, (deadline, task_id))

    def orphan_all(self, session, now):
        for task_id in session.started:
            self.orphan(task_id, now)
        session.started = set()

    def orphan(self, task_id, now):
        self.owner[task_id] = None
        deadline = now + self.grace
        self.orphans[task_id] = deadline
        heapq.heappush(self._deadlines, (deadline, task_id))

    def claim(self, task_id, session):
        """A reconnected worker says it runs `task_id`: it owns it now if it is an orphan,
        or under a connection of that same worker the broker has not seen go yet (which
        would orphan it). A task under another worker's connection (a second run of the
        same task id) stays that worker's."""
        if task_id not in self.owner:
            return False
        owner = self.owner[task_id]
        if owner is not None and owner is not session and not same_worker(owner, session):
            return False
        self.start(task_id, session)
        return True

    def lost(self, now):
        """Orphans whose grace period is over: their workers are gone. Their names stay in
        `names` for the caller to take."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            if self.orphans.get(task_id) == deadline:
                del self.orphans[task_id]
                self.owner.pop(task_id, None)
                out.append(task_id)
        return out

    def next_deadline(self):
        return self._deadlines[0][0] if self._deadlines else None
