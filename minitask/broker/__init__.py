"""The broker: `python -m minitask broker`. See server.py (the loop), state.py (what it knows),
routing.py, queue.py, results.py and journal.py (what survives a crash)."""
