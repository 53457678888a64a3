"""For commands that run brokers and workers of their own (demo, bench): read their ready line.
"""

import threading

__all__ = ["READY_PREFIX", "read_line"]

READY_PREFIX = "minitask broker listening on "


def read_line(process, prefix, timeout):
    """The first line of `process`'s stdout that starts with `prefix`, or None when the
    process exits or `timeout` seconds pass first (text or binary pipes alike)."""
    found = {}

    def read():
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if line.startswith(prefix):
                found["line"] = line.strip()
                return
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found.get("line")
