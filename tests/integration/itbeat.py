"""A periodic task for the beat tests (imported by their workers with ``-I ittasks,itbeat``)."""

import os
import time

from minitask import periodic_task


@periodic_task(name="it.every_half_second", run_every=0.5)
def every_half_second():
    path = os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "trace-beat.log")
    with open(path, "a") as handle:
        handle.write("%.6f\n" % time.time())
