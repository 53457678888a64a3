"""The worker's main process: one loop between the broker, the pool and the clock.

Data flow::

    broker ──delivery─> Consumer.read() ──> _receive(): revoked? expired? ──> REVOKED
                                               │ ETA ahead / no rate token ──> Scheduler
                                               v
                                           ready deque ──Pool.assign()──> children
                                                                              │
    broker <── store_result, acks (flushed once per turn) <── _finished() <───┘
           <── ack_started / started <── Pool.notice_starts() (shared memory)

The broker is reached only through the transport seam (`minitask.transport`): the Consumer
`BROKER_URL` names, selectable by its `fileno()`.

One thread; every wait is a `select()` whose timeout is the next thing due (a scheduled task,
a time limit, a heartbeat, a reconnect attempt, or a 20 ms look at children that started
something not yet reported). Acks and started notices are batched per turn.

Lifecycle: the worker takes tasks once every pool process has reported ready. SIGTERM or
SIGINT is a warm shutdown — stop consuming, hand back everything not started, let running
tasks finish for up to ``--shutdown-timeout`` seconds — and a second one is a cold shutdown,
as SIGQUIT is at once (Celery's).
A lost broker connection is retried with backoff while running tasks carry on; their results
are sent once connected again.

Pool processes that cannot start (a tasks module that fails to import in them, a loader
hook that raises) degrade the worker: it logs the cause in one line, stops taking tasks,
hands back what it had reserved, says "degraded" in status and `inspect stats`, and starts
them again after a backoff. Once they all start it takes tasks again; after
`MAX_START_FAILURES` failed tries in a row it exits with PoolStartupError (exit code 1), for
a supervisor to restart it. No task is failed for it: none was given to those processes.
"""

import collections
import logging
import os
import selectors
import signal
import socket
import time

from .. import control, protocol as P, signals
from ..app import current_app
from ..config import safe_url
from ..exceptions import (
    BrokerConnectionError, BrokerFullError, PoolStartupError, PublishRefusedError,
    SerializationError, TaskRevokedError, WorkerLostError,
)
from ..message import ResultMeta, encode_result_meta
from ..ratelimit import TokenBucket, parse_rate
from ..task import registry
from ..transport import consumer_for
from ..transport.base import HEARTBEAT
from .execution import REJECTED, REQUEUED, unlocked_by_failure
from .nodenames import default_node_name
from .pool import SLOW_RUN, ChildConfig, Job, Pool, remember_revoked
from .credit import FastCredit
from .request import WorkerRequest
from .scheduler import Scheduler
from .beat import Beat
from .remote import handle_control

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

# Celery's cold shutdown signal (none on Windows).
_SIGQUIT = getattr(signal, "SIGQUIT", None)
# Scheduled and rate-limited messages held here raise the prefetch by as many, up to this, so
# they never use up the credit other tasks need; past it the broker keeps the rest.
MAX_HELD = 10000
# What PREFETCH_MULTIPLIER = 0 (Celery's "no limit") reserves at most, for the whole worker.
MAX_PREFETCH = 10000
# `inspect stats` counts tasks per name for at most this many names.
MAX_TOTALS = 10000
# How often a worker whose short tasks earned it extra credit looks again at what it holds
# (at once when a task not known to be short comes).
BOOST_RECHECK = 0.005
# How long an idle worker keeps the extra credit short tasks earned it.
IDLE_GRACE = 0.1
# How often to look for tasks that started but whose start is not reported yet.
START_POLL = 0.02
# Pool processes that fail to start this many times in a row stop the worker. Between tries
# it waits START_BACKOFF seconds, doubling up to MAX_START_BACKOFF: a broken tasks module
# costs a few lines and a few seconds, never a busy loop.
MAX_START_FAILURES = 5
START_BACKOFF = 0.5
MAX_START_BACKOFF = 8.0
# A result the broker had no room for with what it unlocks (BrokerFullError: a full disk or
# queue, Redis at maxmemory) is sent again after STORE_AGAIN seconds, doubling up to
# MAX_STORE_AGAIN, for as long as it takes: the outcome is kept, never turned into a failure.
STORE_AGAIN = 0.1
MAX_STORE_AGAIN = 5.0


class Worker:
    """`python -m minitask worker`: consume, run in the pool, report, until stopped."""

    def __init__(self, settings, concurrency=None, queues=None, hostname=None,
                 prefetch_multiplier=None, max_tasks_per_child=None, shutdown_timeout=None,
                 start_method=None, loglevel=None, logfile=None, imports=(), beat=False,
                 settings_overrides=None):
        self.settings = settings
        self.concurrency = concurrency or settings.CONCURRENCY or os.cpu_count() or 1
        self.queues = list(queues or settings.WORKER_QUEUES or
                           [settings.DEFAULT_QUEUE] + [q for q in settings.QUEUES
                                                       if q != settings.DEFAULT_QUEUE])
        self.hostname = hostname or default_node_name()
        multiplier = prefetch_multiplier or settings.PREFETCH_MULTIPLIER
        if not multiplier:              # Celery's 0: as many as it wants; here, up to a bound
            multiplier = max(1, MAX_PREFETCH // self.concurrency)
        self.prefetch = self.concurrency * multiplier
        self.fast_credit = FastCredit(self.prefetch, multiplier)
        self.boost = 0                  # the extra credit asked for in the last turn
        self._boost_checked = -BOOST_RECHECK    # when what it holds was last looked at
        self._boost_allowed = False
        self._slow_came = False         # a task not known to be fast came since
        self._idle_since = None         # since when it holds nothing (time.monotonic())
        self.shutdown_timeout = settings.SHUTDOWN_TIMEOUT if shutdown_timeout is None \
            else shutdown_timeout
        self.loglevel = loglevel or settings.LOGLEVEL
        self.logfile = logfile or settings.LOGFILE
        self.imports = list(imports)
        self.beat = beat
        self.clock = time.time
        self.scheduler = Scheduler(self.clock)
        self.selector = selectors.DefaultSelector()
        self.ready = collections.deque()
        self.held = 0
        self.buckets = {}
        self._options = {}              # task name -> (acks_late, time_limit, soft_time_limit)
        self.revoked = {}               # task id -> when we heard (bounded)
        self.pending_results = []       # store_result() arguments waiting for a connection
        self.stores_again = []          # results the broker had no room for (`_store_later`)
        self.seq = 0
        self.stopping = None            # None, "warm", "cold"
        self.stop_deadline = None
        self.started_at = time.time()
        self.counts = collections.Counter()
        self.totals = collections.Counter()     # tasks given to the pool, by name (Celery's)
        self._reconnect_at = 0.0
        self._backoff = 0.1
        self._last_send = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.degraded = None            # why pool processes cannot start, while they cannot
        self.consumer = consumer_for(settings, self.queues, self.prefetch, self._info(),
                                     self.hostname)
        self._broker_fd = None          # what the selector watches for the consumer
        config = ChildConfig(settings_overrides, self.imports, self.loglevel, self.logfile,
                             settings.ACCEPT_CONTENT,
                             environ={"MINITASK_WORKER_HOSTNAME": self.hostname})
        self.pool = Pool(self.concurrency, config, start_method,
                         max_tasks_per_child or settings.MAX_TASKS_PER_CHILD,
                         close_in_child=self._fds_for_children,
                         max_queued=2 * multiplier)
        self.beat_service = None
        self._writing_children = set()   # children whose inbox waits for EVENT_WRITE
        self._signals = 0
        self._last_signal = None        # the number of the last SIGTERM, SIGINT or SIGQUIT
        self._quit = False              # a SIGQUIT came: a cold shutdown
        self._ready_sent = False        # worker_ready goes once
        self.taking_tasks = False       # consuming the task queues
        self.start_failures = 0         # failed tries to start them, in a row
        self._restart_at = None         # when to try again (time.monotonic())
        self.exit_error = None          # what run() raises once stopped

    def _fds_for_children(self):
        fds = [self._wake_r.fileno(), self._wake_w.fileno()]
        try:
            fds.append(self.selector.fileno())
        except (AttributeError, ValueError):
            pass                        # a selector without its own descriptor
        if self.consumer.connected:
            fds.append(self.consumer.fileno())
        return fds

    # -- running ---------------------------------------------------------------------------------

    def run(self):
        """Run until stopped; returns the process exit code."""
        self._install_signals()
        if signals.worker_init.receivers:
            signals.worker_init.send(self)
        self.pool.start()
        for child in self.pool.children.values():
            self._watch_child(child)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        logger.info("worker %s: %d pool processes (%s), queues %s, prefetch %d",
                    self.hostname, self.concurrency, self.pool.start_method,
                    ", ".join(self.queues), self.prefetch)
        try:
            # Inside: a first connect that fails for good (a bad setting, a server that is
            # not a broker) still stops the pool, so the error line is followed by an exit.
            self._connect()
            if self.beat:
                self.beat_service = Beat(self.settings, self.hostname)
                self.beat_service.start()
            while not self._finished_stopping():
                self._turn()
        finally:
            self._close()
        if self.exit_error is not None:
            raise self.exit_error
        return 0

    def _install_signals(self):
        def on_signal(signum, frame):
            self._signals += 1          # acted on by the loop, never inside the handler
            self._last_signal = signum
            if signum == _SIGQUIT:
                self._quit = True
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if _SIGQUIT is not None:
            signal.signal(_SIGQUIT, on_signal)      # Celery's cold shutdown at once
        signal.set_wakeup_fd(self._wake_w.fileno())

    def stop(self, cold=False):
        """Warm shutdown (or cold when `cold`, or when already stopping)."""
        if cold:
            if self.stopping != "cold":
                logger.warning("worker %s: cold shutdown", self.hostname)
                self._shutting_down("Cold")
            self.stopping = "cold"
        elif self.stopping is None:
            self._shutting_down("Warm")
            logger.info("worker %s: warm shutdown (finishing running tasks for up to %gs; "
                        "signal again to stop at once)", self.hostname, self.shutdown_timeout)
            self.stopping = "warm"
            self.stop_deadline = time.monotonic() + self.shutdown_timeout
            self._hand_back_unstarted()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass                        # a wake-up is already pending

    def _shutting_down(self, how):
        if signals.worker_shutting_down.receivers:
            sig = self._last_signal
            signals.worker_shutting_down.send(
                self.hostname, sig=signal.Signals(sig).name if sig else None, how=how,
                exitcode=0 if self.exit_error is None else 1)   # what run() will exit with

    def _finished_stopping(self):
        if self.stopping == "cold":
            return True
        if self.stopping == "warm":
            done = self.pool.idle() and not self.stores_again
            if done or time.monotonic() >= self.stop_deadline:
                if not self.pool.idle():
                    logger.warning("worker %s: shutdown timeout; stopping running tasks",
                                   self.hostname)
                    self.stopping = "cold"
                if self.stores_again:
                    logger.error("worker %s: shutdown timeout; %d results the broker had no "
                                 "room for are not stored (acks-late tasks will run again)",
                                 self.hostname, len(self.stores_again))
                return True
        return False

    def _turn(self):
        while self._signals:
            self._signals -= 1
            self.stop(cold=self.stopping is not None or self._quit)
        if self._finished_stopping():
            return
        timeout = self._timeout()
        for key, mask in self.selector.select(timeout):
            data = key.data
            if data == "wake":
                try:
                    while self._wake_r.recv(512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            elif data == "broker":
                self._read_broker(mask)
            elif data[1].closed:
                continue                # died earlier in this turn: the event is stale
            elif data[0] == "out":
                child = data[1]
                was_ready = child.ready
                for job, report in self.pool.read(child):
                    self._finished(job, report)
                if child.ready and not was_ready:
                    self._child_ready(child)
            elif data[0] == "in":
                self._flush_child(data[1])
            elif data[0] == "died":
                self._child_died(data[1])
        if self.consumer.holds_deliveries and self.consumer.connected:
            self._read_broker(selectors.EVENT_READ)
        if self._restart_at is not None and time.monotonic() >= self._restart_at:
            self._restart_missing()
        now = self.clock()
        for item in self.scheduler.pop_due(now):
            self._due(item)
        if self.stores_again:
            self._store_again()
        self._assign()
        for job in self.pool.notice_starts():
            self._notice_start(job)
        taken_back = self.pool.take_back(now)
        if taken_back:                  # queued behind a job that runs long: first in line
            self.ready.extendleft(reversed(taken_back))
            self._assign()
        for job in self.pool.time_limits(now):
            logger.error("Task %s[%s] ran past its time limit of %ss; killing its process",
                         job.task_name, job.task_id, job.time_limit)
        self._send()

    def _timeout(self):
        if (self.ready and self._can_assign()) or self.consumer.holds_deliveries:
            return 0
        now = self.clock()
        timeout = HEARTBEAT / 2
        due = self.scheduler.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        limit = self.pool.next_limit(now)
        if limit is not None:
            timeout = min(timeout, limit)
        if any(not job.start_noticed for child in self.pool.children.values()
               for job in child.jobs):
            timeout = min(timeout, START_POLL)
        if self.boost:
            if not self.pool.idle():
                timeout = min(timeout, SLOW_RUN)    # a task running long ends the boost
            elif self._idle_since is not None:      # so does an idle spell
                timeout = min(timeout, max(0.0, self._idle_since + IDLE_GRACE
                                           - time.monotonic()))
        if not self.consumer.connected:
            timeout = min(timeout, max(0.0, self._reconnect_at - time.monotonic()))
        else:
            flush_due = self.consumer.flush_due()
            if flush_due is not None:
                timeout = min(timeout, flush_due)
        if self._restart_at is not None:
            timeout = min(timeout, max(0.0, self._restart_at - time.monotonic()))
        if self.stores_again:
            timeout = min(timeout, max(0.0, min(entry[0] for entry in self.stores_again)
                                       - time.monotonic()))
        if self.stopping == "warm":
            timeout = min(timeout, max(0.0, self.stop_deadline - time.monotonic()), 0.1)
        return timeout

    # -- the broker ------------------------------------------------------------------------------

    def _connect(self):
        """Try to (re)connect; on failure schedule the next try with backoff."""
        if self.stopping:
            return
        try:
            early = self.consumer.connect()
        except BrokerConnectionError as exc:
            self._reconnect_at = time.monotonic() + self._backoff
            logger.error("worker %s: %s; retrying in %.1fs", self.hostname, exc, self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            return
        self._backoff = 0.1
        self._broker_fd = self.consumer.fileno()
        self.selector.register(self._broker_fd, selectors.EVENT_READ, "broker")
        logger.info("worker %s: connected to %s", self.hostname,
                    safe_url(self.settings.BROKER_URL))
        handed_over = [job.task_id for child in self.pool.children.values()
                       for job in child.jobs if job.handed_over]
        if handed_over:
            self.consumer.claim(handed_over)
        pending, self.pending_results = self.pending_results, []
        for arguments, data in pending:         # against this broker's limit, too
            self._store(data=data, **arguments)
        for delivery in early:
            self._receive(delivery)

    def _connection_lost(self, exc):
        logger.error("worker %s: %s; running tasks carry on, reconnecting", self.hostname, exc)
        if self._broker_fd is not None:
            try:
                self.selector.unregister(self._broker_fd)
            except (KeyError, ValueError):
                pass                    # never registered
            self._broker_fd = None
        self.consumer.lost()
        # The broker has put back every message it had given us that we had not acked:
        # whatever of those has not started must not start here now.
        self.pool.new_epoch()
        self.ready = collections.deque()
        self.scheduler = Scheduler(self.clock)
        self.held = 0
        # A result waiting to be sent again with its ack: its message comes back (acks late).
        self.stores_again = [entry for entry in self.stores_again if entry[2] is None]
        self.fast_credit.forget()
        self.boost = 0
        self.consumer.set_extra_credit(0)
        self._reconnect_at = time.monotonic()

    def _read_broker(self, mask):
        try:
            if mask & selectors.EVENT_READ:
                for delivery in self.consumer.read():
                    if delivery.consumer_tag == self.consumer.control_tag:
                        self._control(delivery)
                    else:
                        self._receive(delivery)
                self._store_refused()           # sent by this turn's end
            if mask & selectors.EVENT_WRITE:
                self._flush_broker()
        except BrokerConnectionError as exc:
            self._connection_lost(exc)

    def _send(self):
        consumer = self.consumer
        if not consumer.connected:
            if not self.stopping and time.monotonic() >= self._reconnect_at:
                self._connect()
            return
        self.boost = self._fast_extra()
        consumer.set_extra_credit(min(self.held, MAX_HELD) + self.boost)
        mono = time.monotonic()
        try:
            if mono - self._last_send >= HEARTBEAT / 2:     # a few bytes every 5 s: no need
                consumer.heartbeat()                       # to skip it when other frames went
                self._last_send = mono
            consumer.end_turn()
        except BrokerConnectionError as exc:    # a heartbeat on Redis talks to it at once
            self._connection_lost(exc)
            return
        self._flush_broker()

    def _fast_extra(self):
        """The extra credit short tasks have earned (`minitask.worker.credit`): none once
        idle for IDLE_GRACE seconds (a worker waiting for its next round trip keeps it, so
        its credit does not change twice per task); what is held is looked at again every
        BOOST_RECHECK seconds, at once when a task not known to be fast has come."""
        now = time.monotonic()
        if not self.ready and self.pool.idle():
            if self._idle_since is None:
                self._idle_since = now
        else:
            self._idle_since = None
        if not self.fast_credit.earned() or (
                self._idle_since is not None and now - self._idle_since >= IDLE_GRACE):
            self._boost_checked = -BOOST_RECHECK
            return 0
        if self._slow_came or now - self._boost_checked >= BOOST_RECHECK:
            self._slow_came = False
            self._boost_checked = now
            self._boost_allowed = self._holds_only_fast()
        return self.fast_credit.extra if self._boost_allowed else 0

    def _holds_only_fast(self):
        pool = self.pool
        return pool.runs_only_fast(self.clock()) and all(pool.is_fast(job.task_name)
                                                         for job in self.ready)

    def _flush_broker(self):
        """Write what the consumer has buffered; watch for writability while some is left.
        What a transport found refused as it wrote (Redis) is stored otherwise at once."""
        try:
            left = self.consumer.flush()
            for _ in range(3):          # each refusal of one result stores less (at most 3)
                if not self._store_refused():
                    break
                left = self.consumer.flush()
        except BrokerConnectionError as exc:
            self._connection_lost(exc)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if left else 0)
        key = self.selector.get_key(self._broker_fd)
        if key.events != events:
            self.selector.modify(self._broker_fd, events, "broker")

    # -- deliveries ------------------------------------------------------------------------------

    def _receive(self, delivery):
        """A task message arrived: refuse, hold, or queue it for the pool."""
        data = delivery.data
        try:
            fields = P.parse_message(data)
            task_id, name = fields.message_id, fields.type
            not_before, expires_at = fields.not_before, fields.expires_at
        except Exception as exc:        # a malformed message must not take the worker down
            logger.error("dropped a malformed message (delivery %d): %s",
                         delivery.delivery_tag, exc)
            self.consumer.ack(delivery.delivery_tag)
            return
        task = registry.tasks.get(name)
        self.seq += 1                   # the pool numbers it again as it hands it out
        acks_late, time_limit, soft_time_limit = self._delivery_options(name, task)
        job = Job(self.seq, delivery.delivery_tag, task_id, name, data, delivery.redelivered,
                  acks_late=acks_late, time_limit=time_limit, soft_time_limit=soft_time_limit,
                  generation=self.consumer.generation)
        job.received_at = time.time()
        self.counts["received"] += 1
        if logger.isEnabledFor(logging.INFO):
            logger.info("Received task: %s[%s]%s", name, task_id,
                        " (redelivered)" if delivery.redelivered else "")
        if self.stopping:
            self.consumer.release(job.tag)
            return
        if task_id in self.revoked:
            self._store_final(job, "REVOKED", "revoked before it started")
            return
        job.expires_at = expires_at
        if expires_at and expires_at <= job.received_at:
            self._store_final(job, "REVOKED", "expired before it started")
            return
        if signals.task_received.receivers:
            signals.task_received.send(self.consumer, request=self._request_of(job))
        if not_before and not_before > job.received_at:
            self._hold(job, not_before)
            return
        self._queue(job, task)

    def _signal_revoked(self, job, expired):
        if signals.task_revoked.receivers:
            terminated = job.kill_reason is not None
            signals.task_revoked.send(
                registry.tasks.get(job.task_name) or job.task_name,
                request=self._request_of(job), terminated=terminated,
                signum=job.kill_signum if terminated else None, expired=expired)

    def _request_of(self, job):
        return WorkerRequest(job, registry.tasks.get(job.task_name), self.hostname,
                             self.settings.ACCEPT_CONTENT)

    def _delivery_options(self, name, task):
        """``(acks_late, time_limit, soft_time_limit)`` in force for task `name`: the task's
        own, else the TASK_* settings; worked out once per task name."""
        options = self._options.get(name)
        if options is None:
            settings = self.settings
            if task is None:            # refused in the pool process; settings decide the ack
                options = (bool(settings.TASK_ACKS_LATE), None, None)
            else:
                options = (bool(task.effective("acks_late", settings)),
                           task.effective("time_limit", settings),
                           task.effective("soft_time_limit", settings))
            if len(self._options) < 10000:
                self._options[name] = options
        return options

    def _queue(self, job, task=None):
        task = task or registry.tasks.get(job.task_name)
        rate = self._bucket(task) if task is not None else None
        if rate is not None and not rate.consume():
            job.rate_held = True
            self._hold(job, self.clock() + rate.wait_time())
            return
        if self.boost and not self.pool.is_fast(job.task_name):
            self._slow_came = True
        self.ready.append(job)

    def _hold(self, job, due):
        self.held += 1
        self.scheduler.enter(due, job)

    def _due(self, job):
        self.held -= 1
        job.rate_held = False
        if job.generation != self.consumer.generation:
            return
        if job.task_id in self.revoked:
            self._store_final(job, "REVOKED", "revoked before it started")
            return
        if job.expires_at and job.expires_at <= self.clock():
            self._store_final(job, "REVOKED", "expired before it started")
            return
        self._queue(job)

    def _bucket(self, task):
        limit = task.effective_rate_limit(self.settings)
        if limit is None:
            return None
        bucket = self.buckets.get(task.name)
        rate = parse_rate(limit)
        if rate is None:
            return None
        if bucket is None:
            bucket = self.buckets[task.name] = TokenBucket(rate, clock=time.monotonic)
        return bucket

    def set_rate_limit(self, task_name, rate_limit):
        task = registry.tasks[task_name]
        rate = parse_rate(rate_limit)
        task.rate_limit = rate_limit if rate is not None else 0
        if rate is None:
            self.buckets.pop(task_name, None)
        elif task_name in self.buckets:
            self.buckets[task_name].set_rate(rate)
        # Its tasks waiting for a token wait again under the new limit, none when it is
        # lifted (Celery's wait out the time the old limit gave them: an hour, at 1/h).
        for job in self.scheduler.remove(lambda job: job.rate_held and
                                         job.task_name == task_name):
            self._due(job)

    def _can_assign(self):
        return self.pool.has_free_child() or \
            (self.ready and self.pool.is_fast(self.ready[0].task_name))

    def _assign(self):
        ready = self.ready
        children = {}                   # the children given jobs, in order (a dict keeps it)
        now = self.clock()
        while ready:
            job = ready[0]
            if job.task_id in self.revoked:
                ready.popleft()
                self._store_final(job, "REVOKED", "revoked before it started")
                continue
            if job.expires_at and job.expires_at <= now:
                ready.popleft()
                self._store_final(job, "REVOKED", "expired before it started")
                continue
            if not self.pool.assign(job):
                break
            ready.popleft()
            if job.task_name in self.totals or len(self.totals) < MAX_TOTALS:
                self.totals[job.task_name] += 1
            children[job.child] = True
        for child in children:          # one write per child for the jobs of this turn
            self._flush_child(child)

    def _flush_child(self, child):
        if child.closed:
            return
        left = self.pool.flush(child)
        if left and child not in self._writing_children:
            self.selector.register(child.in_fd, selectors.EVENT_WRITE, ("in", child))
            self._writing_children.add(child)
        elif not left and child in self._writing_children:
            self.selector.unregister(child.in_fd)
            self._writing_children.discard(child)

    def _notice_start(self, job):
        if job.generation != self.consumer.generation or not self.consumer.connected:
            return
        if job.acks_late:
            self.consumer.started(job.tag)
        else:
            self.consumer.ack_started(job.tag)
            job.handed_over = True

    # -- results ---------------------------------------------------------------------------------

    def _finished(self, job, report):
        same_connection = job.generation == self.consumer.generation and \
            self.consumer.connected
        if report[0] == "skipped":
            if same_connection:
                self.consumer.release(job.tag)
            return
        state, content_type, payload, store, runtime, summary, publish, chained = report
        if state == "REVOKED":          # a pool process found it revoked or expired: not run
            self._signal_revoked(job, expired=summary == "expired")
        else:
            self.fast_credit.finished(runtime)
        if state in (REJECTED, REQUEUED):
            if self._reject(job, state == REQUEUED, same_connection, runtime, publish):
                return
            state = "SUCCESS"           # nothing to reject: as Ignore, nothing stored
        # Even with nothing to store (ignore_result) the broker hears how the task ended: a
        # task handed over must be finished, and the broker counts per task name.
        ack = job.tag if same_connection and not job.handed_over else None
        state = self._store(job.task_id, state, content_type, payload, store, job.task_name,
                            runtime, publish, chained, job.data, ack=ack)
        self.counts[state.lower()] += 1
        self.counts["processed"] += 1

    def _reject(self, job, requeue, same_connection, runtime, publish):
        """The task raised Reject: its message goes back to its queue (`requeue`), or to its
        dead-letter queue, or is dropped (the broker then fails the task with
        DeadLetteredError). What the run sent (held) is sent all the same, as after Ignore.
        False when there is no message to reject: acked as the task started (acks_late
        off: Celery's Reject "won't have any effect"), or its connection is gone (it comes
        back by itself)."""
        if job.handed_over or not same_connection:
            if job.handed_over:
                logger.warning("Task %s[%s] raised Reject, which changes nothing for a task "
                               "acked as it started: give it acks_late=True", job.task_name,
                               job.task_id)
            return False
        if publish:
            self._store(job.task_id, "SUCCESS", "", b"", False, job.task_name, runtime,
                        publish, (), job.data)
        self.consumer.reject(job.tag, requeue=requeue)
        self.counts["requeued" if requeue else "rejected"] += 1
        self.counts["processed"] += 1
        return True

    def _store(self, task_id, state, content_type, payload, store, task_name, runtime=None,
               publish=(), chained=(), data=None, attempt=0, ack=None, tries=0):
        """Store a result, with what it unlocks in a workflow, now or once connected again;
        returns the state stored (FAILURE for what the broker cannot take: `_too_big`).
        `attempt`: how many times the broker refused this task's result with what it
        unlocked (`_store_refused`); `tries`: how many times it had no room for it.
        `ack`: the delivery to ack once the broker took it (None: none, or the connection
        that delivered it is gone)."""
        consumer = self.consumer
        why = consumer.oversized(task_id, state, content_type, payload, publish, task_name,
                                 runtime, chained)
        if why is not None:
            state, content_type, payload, publish, chained = self._too_big(
                task_id, task_name, state, why, data, publish)
            store = True
        if not publish and not chained and consumer.connected:     # the usual case, inline
            consumer.store_result(task_id, state, content_type, payload, store, (), task_name,
                                  runtime, ack=ack)
            return state
        arguments = dict(task_id=task_id, state=state, content_type=content_type,
                         payload=payload, store=store, task_name=task_name, runtime=runtime)
        if publish:
            arguments["publish"] = list(publish)
        if chained:
            arguments["chained"] = list(chained)
        if consumer.connected:
            consumer.store_result(context=(data, attempt, arguments, tries), ack=ack,
                                  **arguments)
        else:
            self.pending_results.append((arguments, data))
        return state

    def _store_refused(self):
        """Results the broker refused as one unit with what they unlocked: none of it
        happened, and the task would never finish. One it had no room for (BrokerFullError:
        a full disk or queue, Redis at maxmemory) is sent again as it was, with backoff
        (`_store_later`). Otherwise (a message it cannot route) a SUCCESS or RETRY becomes a
        FAILURE saying so, with what a failure unlocks; a FAILURE or REVOKED keeps its own
        outcome, without its errbacks; refused again, the outcome is stored under each id
        alone (nothing there to refuse). Each acks the delivery the refused one was to.
        True if any came."""
        refused = self.consumer.refused()
        for unit in refused:
            data, attempt, arguments, tries = unit.context or (None, 2, None, 0)
            task_id, name, ack = unit.task_id, unit.task_name, unit.ack
            if isinstance(unit.error, BrokerFullError) and arguments is not None:
                self._store_later(unit, data, attempt, arguments, tries)
                continue
            content_type = payload = None
            if arguments is not None:
                content_type, payload = arguments["content_type"], arguments["payload"]
            errbacks, chained = unlocked_by_failure(data, task_id) if data else ((), ())
            if attempt == 0 and unit.state in ("SUCCESS", "RETRY"):
                what = "its retry" if unit.state == "RETRY" else "what its SUCCESS unlocks"
                error = PublishRefusedError("task %s: the broker refused %s: %s"
                                            % (task_id, what, unit.error))
                logger.error("Task %s[%s] stored as FAILURE: %s", name, task_id, error)
                meta = ResultMeta(task_id, "FAILURE", error, None, name, 0, time.time())
                content_type, payload = encode_result_meta(meta)
                self._store(task_id, "FAILURE", content_type, payload, True, name, None,
                            errbacks, chained, data, 1, ack)
                continue
            state = "FAILURE" if unit.state in ("SUCCESS", "RETRY") else unit.state
            if payload is None:         # nothing kept of it: say why it ended so
                meta = ResultMeta(task_id, state, PublishRefusedError(
                    "task %s: the broker refused what it unlocked: %s" % (task_id,
                                                                          unit.error)),
                    None, name, 0, time.time())
                content_type, payload = encode_result_meta(meta)
            if attempt <= 1:
                logger.error("Task %s[%s]: the broker refused its errbacks, which are "
                             "dropped: %s", name, task_id, unit.error)
                self._store(task_id, state, content_type, payload, True, name, None, (),
                            chained, data, 2, ack)
                continue
            logger.error("Task %s[%s]: the broker refused its outcome with the rest of its "
                         "chain (%s); stored one by one", name, task_id, unit.error)
            for one in [task_id] + list(chained):
                self._store(one, state, content_type, payload, True, name, None, (), (),
                            None, 3, ack if one == task_id else None)
        return bool(refused)

    def _store_later(self, unit, data, attempt, arguments, tries):
        """Send a refused result again, as it was, once the broker may have room."""
        delay = min(MAX_STORE_AGAIN, STORE_AGAIN * 2 ** min(tries, 16))
        if tries % 20 == 0:             # the first time, then about every 100 s
            logger.error("Task %s[%s]: the broker has no room for its %s with what it "
                         "unlocks (%s); sending it again in %gs", unit.task_name,
                         unit.task_id, unit.state, unit.error, delay)
        self.stores_again.append((time.monotonic() + delay, arguments, unit.ack, data,
                                  attempt, tries + 1))

    def _store_again(self):
        """Send the results `_store_later` kept whose wait is over."""
        now, waiting = time.monotonic(), self.stores_again
        self.stores_again = [entry for entry in waiting if entry[0] > now]
        for due, arguments, ack, data, attempt, tries in waiting:
            if due <= now:
                self._store(data=data, attempt=attempt, ack=ack, tries=tries, **arguments)

    def _too_big(self, task_id, task_name, state, why, data, publish=()):
        """A result the broker cannot take in one message (it would drop the connection,
        and the task would be reported lost) is a FAILURE saying so, unlocking what a failure
        unlocks (errbacks, the rest of its chain) rather than what the success would have;
        without them if even that is too big. A RETRY's tombstone stays a RETRY, saying so,
        sent with its retry (`publish`), and unlocks nothing; a retry too big to send is
        the FAILURE, as its publish would have raised in the task."""
        error = SerializationError("the result of task %s %s: return less (where the data "
                                   "is kept, say)" % (task_id, why))
        if state == "RETRY":
            meta = ResultMeta(task_id, state, error, None, task_name, 0, time.time())
            content_type, payload = encode_result_meta(meta)
            if self.consumer.oversized(task_id, state, content_type, payload, publish,
                                       task_name) is None:
                logger.error("Task %s[%s] result not stored: %s", task_name, task_id, error)
                return state, content_type, payload, publish, ()
            error = SerializationError("the retry of task %s %s: it cannot be sent"
                                       % (task_id, why))
        logger.error("Task %s[%s] result not stored: %s", task_name, task_id, error)
        state = "FAILURE"
        meta = ResultMeta(task_id, state, error, None, task_name, 0, time.time())
        content_type, payload = encode_result_meta(meta)
        publish, chained = unlocked_by_failure(data, task_id) if data else ((), ())
        if self.consumer.oversized(task_id, "FAILURE", content_type, payload, publish,
                                   task_name, None, chained) is not None:
            logger.error("Task %s[%s]: its errbacks and the rest of its chain are too big to "
                         "send as well; they are dropped", task_name, task_id)
            publish, chained = (), ()
        return state, content_type, payload, publish, chained

    def _store_final(self, job, state, why, exc=None):
        """Store a final state the worker decided itself (revoked, expired, lost) with the
        errbacks it unlocks, and ack."""
        if exc is None:
            exc = TaskRevokedError("task %s %s" % (job.task_id, why))
        if state == "REVOKED":
            logger.info("Task %s[%s] %s", job.task_name, job.task_id, why)
            self._signal_revoked(job, expired=why.startswith("expired"))
        meta = ResultMeta(job.task_id, state, exc, None, job.task_name, 0, time.time())
        content_type, payload = encode_result_meta(meta)
        publish, chained = unlocked_by_failure(job.data, job.task_id)
        same_connection = job.generation == self.consumer.generation and \
            self.consumer.connected
        ack = job.tag if same_connection and not job.handed_over else None
        state = self._store(job.task_id, state, content_type, payload, True, job.task_name,
                            None, publish, chained, job.data, ack=ack)
        self.counts[state.lower()] += 1

    # -- the pool's children ---------------------------------------------------------------------

    def _watch_child(self, child):
        self.selector.register(child.out_fd, selectors.EVENT_READ, ("out", child))
        self.selector.register(child.process.sentinel, selectors.EVENT_READ, ("died", child))

    def _unwatch_child(self, child):
        for fd in (child.out_fd, child.process.sentinel):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass                    # not registered
        if child in self._writing_children:
            self._writing_children.discard(child)
            try:
                self.selector.unregister(child.in_fd)
            except (KeyError, ValueError):
                pass                    # not registered

    def _child_died(self, child):
        for job, report in self.pool.read(child):      # what it managed to report
            self._finished(job, report)
        how = self.pool.exit_description(child)
        if not child.ready:             # it never took a job: it could not start
            self._unwatch_child(child)
            self.pool.close_child(child)
            self._start_failed(child.failure or "it exited (%s) before it was ready" % how)
            return
        lost, unstarted = self.pool.reap(child)
        self._unwatch_child(child)
        retiring = child.retiring and not lost
        if any(job.kill_reason is not None for job in lost):
            logger.info("pool process %d ended (%s): the worker stopped it, for its task",
                        child.pid, how)
        elif not retiring:
            logger.error("pool process %d died (%s)", child.pid, how)
        for job in lost:
            self._lost(job, how)
        if self.stopping != "cold":
            replacement = self.pool.replace(child)
            self._watch_child(replacement)
        else:
            self.pool.close_child(child)
        for job in reversed(unstarted):
            if job.generation == self.consumer.generation:
                self.ready.appendleft(job)

    def _lost(self, job, how):
        if isinstance(job.kill_reason, TaskRevokedError):    # as asked: logged as REVOKED
            self._store_final(job, "REVOKED", "revoked and terminated (%s)" % how,
                              job.kill_reason)
        elif job.kill_reason is not None:                   # its time limit
            logger.error("Task %s[%s] %s", job.task_name, job.task_id, job.kill_reason)
            self._store_final(job, "FAILURE", str(job.kill_reason), job.kill_reason)
        elif job.acks_late and not job.handed_over:
            logger.error("Task %s[%s]: its process died (%s); it goes back to its queue",
                         job.task_name, job.task_id, how)
            if job.generation == self.consumer.generation and self.consumer.connected:
                self.consumer.reject(job.tag)
        else:
            self._store_final(job, "FAILURE", "lost", WorkerLostError(
                "worker process running task %s[%s] died: %s"
                % (job.task_name, job.task_id, how)))

    # -- pool processes that start, or cannot --------------------------------------------------

    def _child_ready(self, child):
        """A child set itself up. Once every slot has one, take tasks (again)."""
        if not self.pool.complete() or self._restart_at is not None:
            return
        self.start_failures = 0
        if self.degraded is not None:
            logger.info("worker %s: pool processes started; taking tasks again", self.hostname)
            self.degraded = None
            self.consumer.report(self._info())
        if not self.taking_tasks and not self.stopping:
            self.taking_tasks = True
            self.consumer.resume()
            if not self._ready_sent:
                self._ready_sent = True
                if signals.worker_ready.receivers:
                    signals.worker_ready.send(self)

    def _start_failed(self, cause):
        """A child could not start: stop taking tasks and try again later, or give up."""
        if self.stopping:
            return
        if self._restart_at is not None:        # another child of the same try
            logger.debug("worker %s: another pool process could not start: %s",
                         self.hostname, cause)
            return
        self.start_failures += 1
        self._degrade(cause)
        if self.start_failures >= MAX_START_FAILURES:
            self.exit_error = PoolStartupError(
                "pool processes could not start %d times in a row, the last time because: "
                "%s; stopping (exit code 1) so that a supervisor can restart the worker"
                % (self.start_failures, cause))
            logger.critical("worker %s: %s", self.hostname, self.exit_error)
            self.stop()
            return
        delay = min(START_BACKOFF * 2 ** (self.start_failures - 1), MAX_START_BACKOFF)
        self._restart_at = time.monotonic() + delay
        logger.error("worker %s: a pool process could not start: %s; taking no tasks, trying "
                     "again in %gs (%d of %d)", self.hostname, cause, delay,
                     self.start_failures, MAX_START_FAILURES)

    def _degrade(self, cause):
        if self.taking_tasks:
            self.taking_tasks = False
            self.consumer.pause()
            self._put_back_reserved()
        if self.degraded != cause:
            self.degraded = cause
            self.consumer.report(self._info())

    def _restart_missing(self):
        self._restart_at = None
        if self.stopping:
            return
        for slot in self.pool.missing_slots():
            self._watch_child(self.pool.start_slot(slot))

    def _info(self):
        """What this worker says about itself to the broker (HELLO, and status)."""
        return dict({"hostname": self.hostname, "pid": os.getpid(),
                     "concurrency": self.concurrency, "queues": list(self.queues)},
                    **self._health())

    def _health(self):
        if self.degraded is None:
            return {"state": "ok"}
        return {"state": "degraded", "degraded": self.degraded}

    def _hand_back_unstarted(self):
        """Warm shutdown: stop consuming; everything not started goes back to the broker."""
        self.consumer.cancel_all()
        self._put_back_reserved()

    def _put_back_reserved(self):
        """Give back (release) every message held here and not started; children skip
        theirs. None of them counts as a delivery toward max_redeliveries."""
        for job in self.ready:
            if job.generation == self.consumer.generation:
                self.consumer.release(job.tag)
        self.ready.clear()
        for _due, job in self.scheduler.items():
            if job.generation == self.consumer.generation:
                self.consumer.release(job.tag)
        self.scheduler = Scheduler(self.clock)
        self.held = 0
        self.consumer.set_extra_credit(0)
        self.pool.new_epoch()

    # -- remote control --------------------------------------------------------------------------

    def _control(self, delivery):
        try:
            body = control.decode_body(delivery.message.body)
        except Exception as exc:        # a bad control message must not hurt the worker
            logger.error("dropped a malformed control message: %s", exc)
            return
        handle_control(self, body)

    def revoke(self, task_ids, terminate=False, signum=signal.SIGTERM):
        remember_revoked(self.revoked, dict.fromkeys(task_ids, time.time()))
        self.pool.broadcast_revoke(task_ids)
        for child in self.pool.alive():
            self._flush_child(child)
            if terminate:
                job = self.pool.running_job(child)
                if job is not None and job.task_id in task_ids:
                    job.kill_reason = TaskRevokedError("task %s revoked and terminated"
                                                       % job.task_id)
                    job.kill_signum = int(signum)
                    self.pool.kill(child, signum)

    # -- closing ---------------------------------------------------------------------------------

    def _close(self):
        if self.beat_service is not None:
            self.beat_service.stop()
        if self.stopping == "cold":
            for child in self.pool.alive():
                job = self.pool.running_job(child)
                if job is not None:
                    logger.warning("Task %s[%s] stopped by cold shutdown", job.task_name,
                                   job.task_id)
        else:
            for child in self.pool.alive():
                for job, report in self.pool.read(child):
                    self._finished(job, report)
        if signals.worker_shutdown.receivers:
            signals.worker_shutdown.send(self)
        self.consumer.close()
        self.pool.stop(timeout=0.0 if self.stopping == "cold" else 2.0)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        logger.info("worker %s stopped", self.hostname)

    @property
    def app(self):
        """Celery's ``sender.app`` of the worker signals: `minitask.app.current_app`."""
        return current_app

    def stats(self):
        # The queues consumed now: add_consumer and cancel_consumer change them.
        return dict({"hostname": self.hostname, "pid": os.getpid(),
                     "concurrency": self.concurrency, "queues": list(self.consumer.queues),
                     "prefetch": self.prefetch,
                     "fast_credit": self.boost,
                     "fast_credit_earned": self.fast_credit.earned(),
                     "uptime": time.time() - self.started_at,
                     "counts": dict(self.counts), "start_method": self.pool.start_method,
                     "pool": [child.pid for child in self.pool.alive()],
                     "broker": safe_url(self.settings.BROKER_URL),
                     # Celery's names: tasks taken per name, the prefetch, resource usage.
                     "total": dict(self.totals), "prefetch_count": self.prefetch,
                     "rusage": _rusage(),
                     "taking_tasks": self.taking_tasks,
                     "start_failures": self.start_failures}, **self._health())


def _rusage():
    """The main process's resource usage, as Celery's `stats` gives it (``utime``,
    ``maxrss``, ...); None where the `resource` module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name[3:]: getattr(usage, name) for name in dir(usage) if name.startswith("ru_")}
