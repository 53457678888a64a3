"""The journal sink: what one loop turn must write before its answers may go out.

The parts of `BrokerState` never write to the journal. They hand their records to the sink
(`add` and the helpers after it), name the live objects a record keeps (`track`, `untrack`:
compaction copies those forward), and leave with it what is promised once the records are
written: the turn's CONFIRMs (`confirm`) and its *units*. A unit is what a failed write
refuses as a whole: a persistent PUBLISH, or an ATOMIC with everything it did, each with its
records, its messages, how to undo the rest of it, and what waits for the write (answers to
waits on the results it stores). The loop (`loop.Loop`) writes `take_records()`, then::

    written()          the write succeeded: what waited for it runs; the confirms to send
    refuse(records)    it failed: the units to undo and answer ERROR 507, newest first;
                       every other record (acks, results, declarations) is kept for next turn

While an ATOMIC is applied (`begin` ... `end`, or `abort` when one of its commands fails),
what its commands do joins that one unit, and `end` wraps its records in one COMPOUND record.
"""

from . import records as rc

__all__ = ["Sink"]


class Sink:
    """The turn's records, confirms and units (see the module docstring)."""

    def __init__(self, journal):
        self.persist = journal.enabled      # False under --no-persist: records are not made
        self.track = journal.track
        self.untrack = journal.untrack
        self.records = []
        self.open = None                # the ATOMIC being applied: [messages, undo, after, start]
        self._units = []                # (session, seq, messages, records, undo, after)
        self.confirming = []              # sessions with a confirm_seq to answer this turn

    # -- records -------------------------------------------------------------------------------

    def add(self, record):
        self.records.append(record)

    def ids(self, kind, ids):
        if self.persist and ids:
            self.records.append(rc.ids_record(kind, ids))

    def names(self, kind, names):
        if self.persist and names:
            self.records.append(rc.names_record(kind, names))

    def json(self, kind, obj):
        if self.persist:
            self.records.append(rc.json_record(kind, obj))

    def take_records(self):
        records, self.records = self.records, []
        return records

    def mark(self):
        """Where the records added from now on begin (for `bundle`)."""
        return len(self.records), len(self._units)

    def bundle(self, mark):
        """The records added since `mark` become one COMPOUND, replayed all or nothing: a
        decision the broker takes on its own that writes several. Only outside an ATOMIC
        (which wraps its own), and when no unit was made meanwhile (its records stay its)."""
        start, units = mark
        if self.open is None and len(self._units) == units and len(self.records) - start > 1:
            self.records[start:] = [rc.compound_record(self.records[start:])]

    def retain(self, records):
        """A write of records that refuse nothing (deliveries) failed: try them again later."""
        self.records = list(records) + self.records

    # -- promises ------------------------------------------------------------------------------

    def confirm(self, session, seq):
        """Send `session` a CONFIRM up to `seq` once the turn's write succeeded."""
        if seq:
            if not session.confirm_seq:
                self.confirming.append(session)
            session.confirm_seq = seq

    def unit(self, session, seq, messages, records, undo=()):
        """A publish that a failed write refuses (inside an ATOMIC: a part of that unit);
        `undo`: what else to undo then (inside an ATOMIC, use `on_refuse`)."""
        unit = self.open
        if unit is None:
            self._units.append((session, seq, messages, records, undo, ()))
        else:
            unit[0].extend(messages)

    def on_refuse(self, undo):
        """Inside an ATOMIC: call `undo()` if the unit is refused (outside one, nothing)."""
        if self.open is not None:
            self.open[1].append(undo)

    def begin(self):
        self.open = [[], [], [], len(self.records)]

    def after_write(self, action):
        """Inside an ATOMIC: call `action()` once the unit is written, not if it is refused."""
        self.open[2].append(action)

    def end(self, session, seq):
        """The ATOMIC applied whole: one COMPOUND record for all it wrote, one confirm."""
        messages, undo, after, start = self.open
        self.open = None
        records = self.records[start:]
        if len(records) > 1:
            records = self.records[start:] = [rc.compound_record(records)]
        self._units.append((session, seq, messages, records, undo, after))
        self.confirm(session, seq)

    def abort(self):
        """One of the ATOMIC's commands failed: its records go; returns the unit to undo."""
        messages, undo, _after, start = self.open
        self.open = None
        del self.records[start:]
        return messages, undo

    def written(self):
        """The turn's write succeeded: run what waited for it; returns ``[(session, seq)]``
        to confirm."""
        units, self._units = self._units, []
        for unit in units:
            for action in unit[5]:
                action()
        confirms = [(session, session.confirm_seq) for session in self.confirming
                    if session.confirm_seq]
        for session in self.confirming:
            session.confirm_seq = 0
        self.confirming = []
        return confirms

    def refuse(self, records):
        """The write of `records` failed: returns the turn's units, newest first, and keeps
        every other record of that write to be written again."""
        units, self._units = self._units[::-1], []
        refused = {id(record) for unit in units for record in unit[3]}
        self.records = [record for record in records if id(record) not in refused] \
            + self.records
        return units
