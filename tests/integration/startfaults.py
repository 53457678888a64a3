"""Loaders that fail in a worker's pool processes only, for test_pool_startup.py.

Each stands in for a real cause: a licence check or a database a per-process hook needs, a
start-up hook that cannot run twice. Named with ``MINITASK_LOADER=startfaults.<Class>``.
"""

import multiprocessing
import os

from minitask.loaders import DefaultLoader


def in_pool_process():
    return multiprocessing.current_process().name.startswith("minitask-pool")


class FailingProcessInit(DefaultLoader):
    """Its per-process hook fails while ``<ITTASKS_DIR>/pool-broken`` exists."""

    def on_worker_process_init(self):
        if os.path.exists(os.path.join(os.environ["ITTASKS_DIR"], "pool-broken")):
            raise RuntimeError("the licence server is unreachable")


class FailingWorkerInit(DefaultLoader):
    """Its start-up hook works in the worker and fails when a pool process runs it again."""

    def on_worker_init(self):
        if in_pool_process():
            raise RuntimeError("the worker's start-up hook cannot run twice")
        super().on_worker_init()


class RecordingLoader(DefaultLoader):
    """Notes which hook ran in which process, in ``<ITTASKS_DIR>/hooks.log``."""

    def _note(self, hook):
        path = os.path.join(os.environ["ITTASKS_DIR"], "hooks.log")
        with open(path, "a") as handle:
            handle.write("%s %s\n" % (multiprocessing.current_process().name, hook))

    def on_worker_init(self):
        self._note("on_worker_init")
        super().on_worker_init()

    def on_worker_process_init(self):
        self._note("on_worker_process_init")
