"""Shared test set-up: hypothesis profiles and the path to the unit-test fixture modules."""

import os
import sys

from hypothesis import HealthCheck, settings

# The machine running the tests is shared and noisy: a deadline would make timing, not
# behaviour, decide a property test. CI runs are derandomized so a red CI is reproducible.
settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
