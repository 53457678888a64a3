"""Fixtures of the integration suite: `broker` and `start_worker` (defined in cluster.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import broker, start_worker  # noqa: E402,F401  (fixtures)
