"""The per-sweep status record: plain Python, run as a named detached Ray actor by the
backend, and persisted as status.parquet beside the results.

Persisting is throttled (at most every `persist_every_s`) but always happens when a run
reaches a terminal state, so a lost head loses nothing that finished.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa

from schemas.layout import STATUS_SCHEMA, SweepLayout
from schemas.run import RunRecord, RunSpec, RunStatus
from workers import io


class Tracker:
    def __init__(self, layout: SweepLayout, persist_every_s: float = 2.0) -> None:
        self.layout = layout
        self.persist_every_s = persist_every_s
        # A restarted tracker (its node died) starts from what it last persisted.
        self.records: dict[str, RunRecord] = {r.run_id: r for r in read_records(layout)}
        self.last_persist = 0.0
        self.dirty = False  # changes not yet in status.parquet
        self.cancelled = False

    # -- what the driver says --------------------------------------------------------
    def register(self, records: list[RunRecord], layout: SweepLayout | None = None) -> None:
        """Start a round of the sweep (a submission): these records replace the old ones,
        and a cancellation of an earlier round no longer holds."""
        self.cancelled = False
        if layout is not None:
            self.layout = layout
        for rec in records:
            self.records[rec.run_id] = rec
        self.persist(force=True)

    def finished(self, run_id: str, state: RunStatus, error: str | None = None) -> None:
        rec = self.records.get(run_id)
        if rec is None or rec.state.is_terminal():
            return  # a late report of a run already closed (e.g. cancelled) changes nothing
        self.records[run_id] = rec.moved_to(state, error=error, ended_at=time.time())
        self.persist(force=True)

    def cancel(self) -> list[str]:
        """Mark every unfinished run cancelled; return their ids."""
        self.cancelled = True
        open_ids = [r.run_id for r in self.records.values() if not r.state.is_terminal()]
        for run_id in open_ids:
            self.records[run_id] = self.records[run_id].moved_to(
                RunStatus.CANCELLED, ended_at=time.time()
            )
        self.persist(force=True)
        return open_ids

    # -- what the workers say ---------------------------------------------------------
    def started(self, run_id: str, node: str) -> bool:
        """A worker began an attempt; returns False if the run should not go on."""
        rec = self.records.get(run_id)
        if rec is None or rec.state.is_terminal():
            return rec is None  # unknown to a tracker restarted from disk: let it run
        self.records[run_id] = rec.moved_to(
            RunStatus.RUNNING, node=node, attempts=rec.attempts + 1, started_at=time.time()
        )
        self.dirty = True
        self.persist()
        return True

    # -- what anyone asks --------------------------------------------------------------
    def snapshot(self) -> list[RunRecord]:
        return list(self.records.values())

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.state.value for r in self.records.values()))

    def heartbeat(self) -> bool:
        """The driver's call every second: persist what changed (throttled), and say
        whether the sweep was cancelled."""
        self.persist()
        return self.cancelled

    def persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.dirty or now - self.last_persist < self.persist_every_s):
            return
        io.write_table(self.layout.status, records_table(self.snapshot()))
        self.last_persist, self.dirty = now, False


def records_table(records: list[RunRecord]) -> pa.Table:
    rows = [r.model_dump(mode="json") for r in records]
    return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)


def read_records(layout: SweepLayout) -> list[RunRecord]:
    """The persisted status, or nothing if none was written yet."""
    if not io.exists(layout.status):
        return []
    return [RunRecord.model_validate(r) for r in io.read_table(layout.status).to_pylist()]


def pending_record(spec: RunSpec) -> RunRecord:
    arch, width, seed = spec.key
    return RunRecord(
        run_id=spec.run_id,
        arch=arch,
        width=width,
        seed=seed,
        n_params=spec.n_params,
        submitted_at=time.time(),
    )
