"""A periodic task for the beat tests (imported by their workers with ``-I ittasks,itbeat``)."""

import os
import time

from minitask import periodic_task
from minitask.task import current_request


@periodic_task(name="it.every_half_second", run_every=0.5)
def every_half_second():
    folder = os.environ.get("ITTASKS_DIR", "/tmp")
    with open(os.path.join(folder, "trace-beat.log"), "a") as handle:
        handle.write("%.6f\n" % time.time())
    with open(os.path.join(folder, "trace-beat-ids.log"), "a") as handle:
        handle.write(current_request().id + "\n")      # which send ran (`beatlog`)
