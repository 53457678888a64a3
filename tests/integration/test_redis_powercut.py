"""Power loss on Redis, simulated: what `delay()` confirmed survives a power cut under each
`appendfsync` policy, as the README's guarantees table says.

redis-server runs with `powercut.c` preloaded: what it writes to its data folder stays in
memory until it calls fsync() or fdatasync(), as in the page cache, so `kill -9` loses what
a power cut would (the disk's own cache, and directory entries, aside). Then it starts again
without the library and the queue is counted. `appendfsync no` is the control: the library
must make it lose what it was sent, or the test proves nothing.

Skips, saying why, where redis-server or a C compiler is missing.
"""
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from rediskit import REDIS_SERVER, SKIP_REASON, RedisServer  # noqa: E402
from test_redis_transport import Setup, message  # noqa: E402

COMPILER = shutil.which("gcc") or shutil.which("cc")

pytestmark = [pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON),
              pytest.mark.skipif(COMPILER is None, reason="no C compiler (gcc or cc) on PATH: "
                                 "the power-cut library cannot be built")]

# everysec's promise is about time: what is older than this at the cut was synced.
EVERYSEC_SYNCED = 3.0


@pytest.fixture(scope="module")
def powercut(tmp_path_factory):
    library = str(tmp_path_factory.mktemp("powercut") / "powercut.so")
    built = subprocess.run([COMPILER, "-shared", "-fPIC", "-O2", "-o", library,
                            os.path.join(HERE, "powercut.c"), "-ldl", "-lpthread"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert built.returncode == 0, built.stdout.decode("utf-8", "replace")
    return library


class Machine:
    """A redis-server whose power can be cut: what it had not synced is lost."""

    def __init__(self, folder, library, fsync):
        folder.mkdir()
        env = dict(os.environ, LD_PRELOAD=library, POWERCUT_DIR=str(folder))
        self.server = RedisServer(folder, "--appendfsync", fsync, env=env)
        self.setup = None

    def __enter__(self):
        self.server.start()
        self.setup = Setup(self.server.url("/0", vhost="cut-%s" % uuid.uuid4().hex[:8]))
        return self

    def __exit__(self, *exc_info):
        self.setup.close()
        self.server.stop()

    def publish(self, count):
        """`count` messages, each confirmed on its own, as `delay()` sends them."""
        conn = self.setup.client()
        conn.declare_queue("jobs")
        sent = [message() for _ in range(count)]
        for data in sent:
            conn.publish(data)
        return sent

    def cut_and_restart(self):
        """Cut the power, then start again as a machine back from it would: no library."""
        self.server.kill()
        self.setup.closers = []         # their connections died with the server
        self.server.env = None
        self.server.start()
        self.setup = Setup(self.setup.url)

    def survivors(self, expected):
        """The messages waiting in "jobs" after the restart (a fresh consumer drains them)."""
        conn = self.setup.client()
        queues = {row["name"]: row for row in conn.status()["queues"]}
        if "jobs" not in queues:        # the declaration itself was lost
            return []
        ready = queues["jobs"]["ready"]
        assert ready <= expected
        if not ready:
            return []
        return [d.data for d in self.setup.consumer(prefetch=100).drain(ready, timeout=60)]


def test_with_appendfsync_always_a_power_cut_loses_nothing_confirmed(tmp_path, powercut):
    with Machine(tmp_path / "always", powercut, "always") as machine:
        sent = machine.publish(300)
        machine.cut_and_restart()
        assert sorted(machine.survivors(len(sent))) == sorted(sent)


def test_with_appendfsync_everysec_a_power_cut_loses_at_most_the_last_seconds(tmp_path,
                                                                               powercut):
    with Machine(tmp_path / "everysec", powercut, "everysec") as machine:
        older = machine.publish(200)
        time.sleep(EVERYSEC_SYNCED)     # the condition under test: time for a sync to run
        newer = machine.publish(200)
        machine.cut_and_restart()
        survived = set(machine.survivors(len(older) + len(newer)))
        assert set(older) <= survived
        lost = len(set(newer) - survived)
        print("appendfsync everysec: %d of the %d sent in the last moment before the cut "
              "were lost" % (lost, len(newer)))


def test_the_power_cut_is_real_appendfsync_no_loses_what_was_confirmed(tmp_path, powercut):
    with Machine(tmp_path / "no", powercut, "no") as machine:
        sent = machine.publish(200)
        machine.cut_and_restart()
        assert len(machine.survivors(len(sent))) < len(sent)
