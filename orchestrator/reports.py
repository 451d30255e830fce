"""What the API returns: plain typed records of a sweep's status, a submission and a
refinement, and how the CLI names a width. No I/O here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from schemas.run import RunRecord, RunSpec, RunStatus

Echo = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass
class SweepStatus:
    sweep: str
    records: list[RunRecord]
    source: str  # "live" (the tracker answered) or "file" (status.parquet)
    alive: bool = False  # a driver is at work on the sweep (its round has not ended)
    points: dict[str, str] = field(default_factory=dict)  # run_id -> its point, if axes vary

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(r.state.value for r in self.records)
        return {s.value: found.get(s.value, 0) for s in RunStatus}

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.state is RunStatus.FAILED]

    def to_json(self) -> dict:
        return {
            "sweep": self.sweep,
            "source": self.source,
            "alive": self.alive,
            "counts": self.counts,
            "runs": [
                {**r.model_dump(mode="json"), "point": self.points.get(r.run_id, "")}
                for r in self.records
            ],
        }

    def where(self, ids: set[str]) -> SweepStatus:
        """This status with the runs of `ids` only."""
        kept = [r for r in self.records if r.run_id in ids]
        return SweepStatus(self.sweep, kept, self.source, self.alive, self.points)


@dataclass
class SubmitReport:
    sweep: str
    results: str
    n_runs: int
    n_already_done: int
    status: SweepStatus | None = None
    curves: pd.DataFrame | None = None
    dry_run: bool = False
    planned: list[RunSpec] = field(default_factory=list)
    dropped: list[RunSpec] = field(default_factory=list)  # runs the grid no longer names
    replaced: bool = False  # --force on a changed grid: the previous results move aside
    broken: list[RunSpec] = field(default_factory=list)  # finished, with unreadable files
    job_id: str | None = None  # set when the sweep went to a cluster as a Ray job
    job_state: str | None = None
    product: str = ""  # the grid's product: widths x points x seeds = runs (sweep.submit)
    axis_names: list[str] = field(default_factory=list)  # the grid's list fields

    @property
    def ok(self) -> bool:
        if self.job_state is not None:
            return self.job_state in ("SUCCEEDED", "PENDING", "RUNNING")
        if self.status is None:
            return True
        return not self.status.failed and self.status.counts["cancelled"] == 0


@dataclass
class RefineReport:
    sweep: str
    brackets: dict[str, tuple[float, float]]  # arch -> (width below N*, width at N*)
    widths: dict[str, list[float]]  # arch -> the widths added
    planned: list[RunSpec]  # the new runs
    status: SweepStatus | None = None
    curves: pd.DataFrame | None = None
    job_id: str | None = None  # set when it ran on a cluster as a Ray job
    axis_names: list[str] = field(default_factory=list)  # the axes that vary in the sweep


def width_symbol(kind: str) -> str:
    """The paper's name of the swept width: h for FC nets, f (channels) for CNNs."""
    return "f" if kind == "cnn" else "h"
