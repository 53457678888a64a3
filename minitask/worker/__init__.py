"""The worker: `python -m minitask worker`. See worker.py for the loop and its data flow."""

from .worker import Worker

__all__ = ["Worker"]
