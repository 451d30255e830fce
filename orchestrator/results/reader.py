"""Results in pandas: `open_sweep("results/demo").logits()` and friends.

Partition columns (arch, width, seed) come back typed (str, float, int), unlike a plain
`pandas.read_parquet(folder)`, which returns them as categories of strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow.dataset as ds

from schemas.errors import JamsweepError
from schemas.layout import PARTITIONING, SweepLayout
from schemas.summary import Summary
from workers import io


@dataclass(frozen=True)
class Sweep:
    layout: SweepLayout

    def _table(self, folder: str, filter_expr=None) -> pd.DataFrame:  # noqa: ANN001
        fs, path = io.resolve(folder)
        if not io.exists(folder):
            return pd.DataFrame()
        dataset = ds.dataset(
            path,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
            exclude_invalid_files=False,
        )
        return dataset.to_table(filter=filter_expr).to_pandas()

    def logits(self, split: str | None = None) -> pd.DataFrame:
        """One row per (run, split, sample, step): run_id, arch, width, seed, f, ..."""
        expr = ds.field("split") == split if split is not None else None
        return self._table(self.layout.logits_dir, expr)

    def metrics(self) -> pd.DataFrame:
        """One row per finished run: steps, converged, train_loss, test_error, ..."""
        return self._table(self.layout.metrics_dir)

    def trace(self) -> pd.DataFrame:
        """One row per (run, measurement step): loss, n_unsat, train_error, f_norm."""
        return self._table(self.layout.trace_dir)

    def curves(self) -> pd.DataFrame:
        """One row per (arch, width), as written by `jamsweep reduce`."""
        return io.read_table(self.layout.curves).to_pandas()

    def ensemble(self) -> pd.DataFrame:
        """One row per (arch, width, n): the test error of the average of n seeds."""
        return io.read_table(self.layout.ensemble).to_pandas()

    def training(self) -> pd.DataFrame:
        """One row per (arch, width, measurement step): mean loss, N_Delta, test error."""
        return io.read_table(self.layout.training).to_pandas()

    def snapshots(self) -> pd.DataFrame:
        """One row per (arch, width, snapshot step): mean ||f||^2 on the test set."""
        return io.read_table(self.layout.snapshots).to_pandas()

    def grid_text(self) -> str:
        """grid.yaml as submitted."""
        return io.read_text(self.layout.grid_yaml)

    def manifest(self) -> pd.DataFrame:
        return io.read_table(self.layout.manifest).to_pandas()

    def status(self) -> pd.DataFrame:
        return io.read_table(self.layout.status).to_pandas()

    def summary(self) -> Summary:
        """summary.json: N* and the fits per architecture."""
        return Summary.from_json(io.read_text(self.layout.summary), source=self.layout.summary)


def open_sweep(path: str) -> Sweep:
    """The sweep in folder (or URI) `path`, i.e. RESULTS/SWEEP."""
    results, _, sweep = path.rstrip("/").rpartition("/")
    layout = SweepLayout(results or ".", sweep)
    if not io.exists(layout.grid_yaml):
        raise JamsweepError(f"{path!r} is not a jamsweep sweep folder (it has no grid.yaml)")
    return Sweep(layout)
