"""A reduced sweep's tables read back (summary.json, curves, ensemble, training and
snapshots), as the figures, the report and `show` take them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from orchestrator.results.store import existing
from schemas.errors import JamsweepError
from schemas.layout import RESULTS_DEFAULT, SweepLayout
from schemas.summary import Summary
from workers import io
from workers.ensembles import ENSEMBLE_COLUMNS
from workers.history import SNAPSHOT_COLUMNS, TRAINING_COLUMNS
from workers.reduce import CURVE_COLUMNS


@dataclass(frozen=True)
class Reduced:
    """A reduced sweep's tables, as the figures and the report take them."""

    summary: Summary
    curves: pd.DataFrame
    ensemble: pd.DataFrame
    training: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRAINING_COLUMNS))
    snapshots: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SNAPSHOT_COLUMNS))


def load_summary(sweep: str, *, results: str = RESULTS_DEFAULT) -> Summary:
    """summary.json of a reduced sweep."""
    layout = existing(sweep, results)
    if not io.exists(layout.summary):
        raise JamsweepError(
            f"sweep {sweep!r} has not been reduced yet: run `jamsweep reduce {sweep}` first"
        )
    return Summary.from_json(io.read_text(layout.summary), source=layout.summary)


def read_reduced(sweep: str, results: str) -> tuple[SweepLayout, Reduced]:
    """The reducer's outputs of a sweep, refused (with what to do) when an older jamsweep
    wrote them without the columns the figures need."""
    summary = load_summary(sweep, results=results)
    layout = existing(sweep, results)
    tables = {}
    for name, path, columns in (
        ("curves", layout.curves, CURVE_COLUMNS),
        ("ensemble", layout.ensemble, ENSEMBLE_COLUMNS),
        ("training", layout.training, TRAINING_COLUMNS),
        ("snapshots", layout.snapshots, SNAPSHOT_COLUMNS),
    ):
        frame = io.read_table(path).to_pandas() if io.exists(path) else pd.DataFrame()
        if set(columns) - set(frame.columns):
            raise JamsweepError(
                f"{path} was written by an older jamsweep (or is missing): run "
                f"`jamsweep reduce {layout.root}` again to write every table the figures need"
            )
        tables[name] = frame
    return layout, Reduced(summary, **tables)
