"""A periodic task for the beat tests (imported by their workers with ``-I ittasks,itbeat``)."""

import time

from ittasks import _trace
from minitask import periodic_task
from minitask.task import current_request


@periodic_task(name="it.every_half_second", run_every=0.5)
def every_half_second():
    _trace("beat", "%.6f" % time.time())
    _trace("beat-ids", current_request().id)       # which send ran (`beatlog`)
