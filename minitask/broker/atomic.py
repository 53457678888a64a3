"""ATOMIC: several commands as one unit, written as one journal record.

A periodic task's send and the record of when it was sent must survive a crash together, or
not at all; so must, later, a stored result and the messages it unlocks. The client wraps the
commands (PUBLISH and KV_SET, each with seq 0) in one ATOMIC frame; the broker applies them
in order and wraps every journal record they made in one COMPOUND record, whose single CRC
makes replay take all of it or none of it (see records.py). A command of the unit that fails
undoes the ones before it, and the whole unit gets the ERROR; a failed journal write refuses
the unit like any publish (ERROR 507) and puts its settings back.
"""

from .. import protocol as P
from ..exceptions import MinitaskError
from . import journal as jr
from .result_commands import MISSING, kv_args

__all__ = ["AtomicCommands"]


class AtomicCommands:
    """BrokerState's ATOMIC command (a mixin, like the other command groups)."""

    def _atomic(self, session, seq, body):
        frames = P.decode_atomic(body)
        settings = {index: kv_args(frame_body) for index, (kind, frame_body)
                    in enumerate(frames) if kind == P.KV_SET}        # all checked first
        start, turn = len(self.records), len(self._turn_publishes)
        placed, applied = [], []
        try:
            for index, (kind, frame_body) in enumerate(frames):
                if kind == P.PUBLISH:
                    placed.extend(self._publish(session, 0, frame_body) or ())
                else:
                    applied.append(self._set_setting(*settings[index]))
        except MinitaskError:
            self._undo_unit(placed, applied, start, turn)
            raise
        stored = [message for entry in self._turn_publishes[turn:] for message in entry[2]]
        del self._turn_publishes[turn:]
        if stored:
            self._turn_publishes.append((session, seq, stored, applied))
        written = self.records[start:]
        if len(written) > 1:
            self.records[start:] = [jr.compound_record(written)]
        self._confirmable(session, seq)

    def _undo_unit(self, placed, applied, start, turn):
        """A command of the unit failed: take back what the ones before it did."""
        for message in reversed(placed):
            self._take_back(message)
        for key, previous, value in reversed(applied):
            if previous is MISSING:
                self.kv.pop(key, None)
            else:
                self.kv[key] = previous
        del self.records[start:]
        del self._turn_publishes[turn:]
