"""The ``everysec`` fsync, in a thread of its own, so a slow disk never stops the broker's loop.

As Redis does for its append-only file: the loop thread only calls write() (into the page
cache) and tells the `Syncer`; the syncer's thread calls fsync() about once a second when
something was written. A `kill -9` of the broker loses nothing either way (the page cache
survives it); a power cut loses what no fsync had covered yet.

How much that can be is bounded by the broker, not the disk: while the oldest write that no
completed fsync covers is more than `MAX_LAG` seconds old (`lag()`), the server holds back
the confirms of new writes until an fsync covers them. So ``everysec`` never confirms more
than about two seconds of writes that a power cut could take, however slow the disk.

Threads and file descriptors: the loop thread never closes a descriptor the syncer may be
using. A sealed segment's descriptor is handed over (`seal`): the syncer fsyncs it, then
closes it. The head's descriptor is closed only after `stop()` has joined the thread.

    loop thread                              syncer thread
    os.write(fd, batch); wrote() ----+
    rotation: seal(old fd) ----------+--> every second, when anything is pending:
    compaction: hurry() -------------+       fsync(sealed fds, head fd[, directory])
    lag() / synced, written   <--------------  synced = written at the start; notify()
"""

import logging
import os
import threading
import time

__all__ = ["Syncer", "MAX_LAG"]

logger = logging.getLogger(__name__)

# Confirms wait for an fsync once the oldest unsynced write is this many seconds old.
MAX_LAG = 2.0


class Syncer:
    """Runs `fsync(fd)` (and `fsync_directory()`) in a background thread, once a second."""

    def __init__(self, fsync, fsync_directory, clock=time.monotonic, interval=1.0,
                 throttle=None):
        self._fsync = fsync
        self._fsync_directory = fsync_directory
        self._clock = clock
        self._interval = interval
        self._throttle = throttle
        self._cond = threading.Condition()
        self.written = 0                # writes made so far (the loop thread counts them)
        self.synced = 0                 # how many of them the last completed fsync covered
        self.notify = None              # called from the syncer's thread after each fsync
        self._fd = None
        self._sealed = []               # descriptors of sealed segments: fsync, then close
        self._directory = False         # a segment was made or deleted
        self._dirty_since = None        # when the oldest write no fsync covered was made
        self._urgent = False
        self._last = clock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="minitask-fsync", daemon=True)
        self._thread.start()

    # -- the loop thread ---------------------------------------------------------------------

    def use(self, fd):
        """The head segment's descriptor, fsynced from now on."""
        with self._cond:
            self._fd = fd

    def wrote(self):
        """Something was written to the head: an fsync is due within a second."""
        with self._cond:
            self._pending(wake=False)

    def seal(self, fd):
        """A sealed segment's descriptor: fsync it with the next pass, then close it."""
        with self._cond:
            self._sealed.append(fd)
            self._directory = True
            self._pending(wake=True)

    def directory_changed(self):
        with self._cond:
            self._directory = True
            self._pending(wake=True)

    def _pending(self, wake):
        """Count one more write for an fsync to cover (the lock is held); the thread is woken
        when it is the first one since the last fsync, or when `wake`."""
        self.written += 1
        if self._dirty_since is None:
            self._dirty_since = self._clock()
            wake = True
        if wake:
            self._cond.notify()

    def hurry(self):
        """Sync now rather than at the next second (compaction waits for it)."""
        with self._cond:
            self._urgent = True
            self._cond.notify()

    def lag(self):
        """Seconds since the oldest write that no completed fsync covers (0 when none)."""
        since = self._dirty_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def stop(self):
        """Stop the thread; returns the sealed descriptors it had not closed yet."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        sealed, self._sealed = self._sealed, []
        return sealed

    # -- the syncer's thread -----------------------------------------------------------------

    def _run(self):
        while True:
            with self._cond:
                while not self._stopping:
                    if self.written > self.synced or self._sealed or self._directory:
                        wait = 0.0 if self._urgent else self._last + self._interval - self._clock()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return
                target, fd, sealed, directory = (self.written, self._fd, self._sealed,
                                                 self._directory)
                self._sealed, self._directory, self._urgent = [], False, False
                started = self._clock()
            ok = self._sync(sealed + ([fd] if fd is not None else []), directory)
            for each in sealed:
                os.close(each)
            with self._cond:
                self._last = started
                if ok:
                    self.synced = target
                    if self.written == target:
                        self._dirty_since = None
                    elif self._dirty_since is not None:
                        self._dirty_since = max(self._dirty_since, started)
                notify = self.notify
            if notify is not None:
                notify()

    def _sync(self, fds, directory):
        ok = True
        for fd in fds:
            try:
                self._fsync(fd)
            except OSError as exc:
                ok = False
                # Reported once a while, not once a second; confirms wait meanwhile (lag).
                if self._throttle is None or self._throttle.allow("fsync failed") is not None:
                    logger.error("fsync of the journal failed: %s; confirms wait until one "
                                 "succeeds", exc)
        if directory:
            self._fsync_directory()
        return ok
