"""Results in pandas, for a notebook: `open_sweep("demo").logits(split="test", width=8)`.

A sweep is opened by path (str or pathlib.Path: RESULTS/SWEEP, a folder or a URI) or by
name (a str without '/': looked up under $JAMSWEEP_RESULTS, else ./results, as the CLI
does). The run tables (logits, metrics, trace) take filters by keyword, on any of their
columns (arch, width, seed, every sweep axis such as train_size, and the files' own),
pushed down to pyarrow: a filter skips files and row groups by their statistics (layout 1:
a partition filter opens only the files of the runs it names). Key columns come back typed
(arch str, width float64, seed int64) in both layouts (schemas.layout); timestamps come
back as UTC datetimes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.results.store import absolute, existing, locate, read_manifest
from schemas.errors import JamsweepError
from schemas.layout import (
    AXIS_SCHEMA,
    FLAT,
    METRICS_FILE_SCHEMA,
    PARTITIONING,
    TRACE_FILE_SCHEMA,
    SweepLayout,
    logits_schema,
    with_run_columns,
)
from schemas.run import RunSpec
from schemas.summary import Summary
from workers import io

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "test")
TIMESTAMPS = ("submitted_at", "started_at", "ended_at")  # status: float seconds on disk
FINAL = "final"  # step="final": each run's last step (its metrics' `steps`)


@dataclass(frozen=True)
class Sweep:
    """One sweep's files, read into pandas. Made by `open_sweep`."""

    layout: SweepLayout

    def __repr__(self) -> str:
        return f"Sweep({self.layout.root!r})"

    # -- the partitioned tables ---------------------------------------------------------

    def logits(
        self,
        split: str | None = None,
        *,
        step: int | Iterable[int] | str | None = None,
        columns: list[str] | None = None,
        **where: Any,
    ) -> pd.DataFrame:
        """One row per (run, split, sample, step): run_id, arch, width, seed, n_params,
        split, sample, step, label, f, grad_norm (docs/results.md).

        `split` is 'train', 'test' or None (both); `step` an int, a list of them, or
        'final' (each run's last step: what the reducer uses); `columns` the columns to
        return; any other keyword filters on that column (a value, or a list of values):
        arch, width, seed, run_id, sample, ... Filters are pushed down to pyarrow.

        >>> sweep = open_sweep("demo")
        >>> test = sweep.logits(split="test", step="final", width=[8, 12], columns=["seed", "f"])
        """
        if split is not None and split not in SPLITS:
            raise JamsweepError(
                f"split={split!r} is not a split of a sweep: use 'train', 'test' or None (both)"
            )
        where = {**where, **({"split": split} if split is not None else {})}
        return self._partitioned("logits", self.layout.logits_dir, step, columns, where)

    def metrics(self, *, columns: list[str] | None = None, **where: Any) -> pd.DataFrame:
        """One row per finished run: run_id, arch, width, seed, n_params, steps, converged,
        train_loss, n_unsat, max_delta, train_error, test_error, f_norm, grad_norm, lr,
        wall_s, device, resumed_from. Keywords filter as in `logits`.

        >>> open_sweep("demo").metrics(converged=True, columns=["width", "seed", "test_error"])
        """
        return self._partitioned("metrics", self.layout.metrics_dir, None, columns, where)

    def trace(
        self,
        *,
        step: int | Iterable[int] | str | None = None,
        columns: list[str] | None = None,
        **where: Any,
    ) -> pd.DataFrame:
        """One row per (run, measurement step): run_id, step, loss, n_unsat, max_delta,
        train_error, f_norm. Keywords filter as in `logits`.

        >>> open_sweep("demo").trace(width=8, seed=0)[["step", "loss", "n_unsat"]]
        """
        return self._partitioned("trace", self.layout.trace_dir, step, columns, where)

    def _partitioned(
        self,
        table: str,
        folder: str,
        step: int | Iterable[int] | str | None,
        columns: list[str] | None,
        where: dict[str, Any],
    ) -> pd.DataFrame:
        flat = self.layout.tables_layout == FLAT
        if not io.exists(folder):  # no run has finished yet
            schema = self._file_schema(table)
            empty = with_run_columns(schema) if flat else pa.schema([*PARTITIONING, *schema])
            _check_names(table, empty.names, where, columns)
            return empty.empty_table().to_pandas()
        fs, path = io.resolve(folder)
        dataset = ds.dataset(  # layout 2: the key and axis columns are in the files
            path,
            filesystem=fs,
            format="parquet",
            partitioning=None if flat else ds.partitioning(PARTITIONING, flavor="hive"),
            exclude_invalid_files=False,
        )
        _check_names(table, dataset.schema.names, where, columns)
        expression = _expression(dataset.schema, where)  # checks each value's type
        self._check_partition_values(where)
        if step is None:
            return dataset.to_table(filter=expression, columns=columns).to_pandas()
        if step != FINAL:
            expression = _and(expression, _expression(dataset.schema, {"step": step}))
            return dataset.to_table(filter=expression, columns=columns).to_pandas()
        # each run's own last step: those steps pushed down, then each row matched to its run
        final = self._final_steps()
        steps = _expression(dataset.schema, {"step": sorted(set(final.values())) or [-1]})
        wanted = sorted({*(columns or dataset.schema.names), "run_id", "step"})
        frame = dataset.to_table(filter=_and(expression, steps), columns=wanted).to_pandas()
        frame = frame[frame["step"].to_numpy() == frame["run_id"].map(final).to_numpy()]
        return frame[columns or dataset.schema.names].reset_index(drop=True)

    def _file_schema(self, table: str) -> pa.Schema:
        if table == "metrics":
            return METRICS_FILE_SCHEMA
        if table == "trace":
            return TRACE_FILE_SCHEMA
        runs = self.runs()
        return logits_schema(runs[0].n_outputs if runs else 1)

    def _check_partition_values(self, where: dict[str, Any]) -> None:
        """A value of a partition column that no run of the manifest has is an error that
        names the values there are (an empty frame would hide a typo)."""
        if not io.exists(self.layout.manifest):
            return
        fs, path = io.resolve(self.layout.manifest)
        listed = pq.read_schema(path, filesystem=fs).names  # the axes the manifest records
        keys = [*PARTITIONING.names, *AXIS_SCHEMA.names]
        names = [n for n in keys if n in where and n in listed]
        if not names:
            return
        manifest = io.read_table(self.layout.manifest, names).to_pandas()
        for name in names:
            asked = _values(where[name])
            present = set(manifest[name].tolist())
            missing = [v for v in asked if v not in present]
            if missing:
                raise JamsweepError(
                    f"{name}={missing[0]!r}: no run of sweep {self.layout.sweep!r} has it; "
                    f"its {name} values: {', '.join(map(str, sorted(present)))}"
                )

    def _final_steps(self) -> dict[str, int]:
        metrics = self.metrics(columns=["run_id", "steps"])
        return dict(zip(metrics["run_id"], metrics["steps"].astype(int), strict=True))

    # -- the whole-sweep files ----------------------------------------------------------

    def training(self) -> pd.DataFrame:
        """One row per (arch, width, measurement step), as written by `jamsweep reduce`:
        the mean over seeds of the loss, N_Delta and the test error (the training curves).

        >>> t = open_sweep("demo").training()
        >>> t[t.width == 8].plot(x="step", y="loss_mean", logx=True, logy=True)
        """
        return io.read_table(self._reduced(self.layout.training)).to_pandas()

    def snapshots(self) -> pd.DataFrame:
        """One row per (arch, width, snapshot step), as written by `jamsweep reduce`: the
        mean over seeds of ||f||^2 on the test set at `training.snapshot_steps` (Fig. 7B).

        >>> open_sweep("demo").snapshots().pivot(index="n_params", columns="step")
        """
        return io.read_table(self._reduced(self.layout.snapshots)).to_pandas()

    def grid_text(self) -> str:
        """grid.yaml as submitted, verbatim.

        >>> print(open_sweep("demo").grid_text())
        """
        return io.read_text(self.layout.grid_yaml)

    def manifest(self) -> pd.DataFrame:
        """One row per run of the sweep: run_id, arch, width, seed, n_params, spec (the
        RunSpec as JSON), origin ('grid', or 'refine': added by `jamsweep refine`) and
        label_map (how the labels became targets).

        >>> open_sweep("demo").manifest().groupby("width").n_params.first()
        """
        return io.read_table(self.layout.manifest).to_pandas()

    def runs(self) -> list[RunSpec]:
        """Every run's RunSpec, in manifest order (`spec.dataset`, `spec.training`, ...).

        >>> [(r.width, r.seed, r.training.learning_rate(r.width)) for r in sweep.runs()]
        """
        return read_manifest(self.layout)  # a module's code copy: where the sweep is now

    def status(self) -> pd.DataFrame:
        """The last persisted state of every run of the latest round: run_id, arch, width,
        seed, n_params, state, attempts, node, error, and submitted_at, started_at,
        ended_at as UTC datetimes (NaT where not reached). For the live view, with the
        result files' corrections, use `orchestrator.sweep.status`.

        >>> st = open_sweep("demo").status()
        >>> (st.ended_at - st.started_at).dt.total_seconds().describe()
        """
        if not io.exists(self.layout.status):
            raise JamsweepError(
                f"sweep {self.layout.sweep!r} has no status.parquet yet: it is written once "
                "its first round starts (jamsweep submit)"
            )
        frame = io.read_table(self.layout.status).to_pandas()
        for name in TIMESTAMPS:
            if name in frame:
                frame[name] = pd.to_datetime(frame[name], unit="s", utc=True)
        return frame

    def curves(self) -> pd.DataFrame:
        """One row per (arch, width), as written by `jamsweep reduce`: n_params, n_seeds,
        n_converged, test_error_mean, test_error_std, ens_test_error, gap, ...

        >>> c = open_sweep("demo").curves()
        >>> c.plot(x="n_params", y=["test_error_mean", "ens_test_error"], logx=True)
        """
        return io.read_table(self._reduced(self.layout.curves)).to_pandas()

    def ensemble(self) -> pd.DataFrame:
        """One row per (arch, width, n): the test error of the average of n seeds.

        >>> e = open_sweep("demo").ensemble()
        >>> e[e.width == 8][["n", "ens_test_error_mean"]]
        """
        return io.read_table(self._reduced(self.layout.ensemble)).to_pandas()

    def summary(self) -> Summary:
        """summary.json: N* and the fits per architecture.

        >>> s = open_sweep("demo").summary()
        >>> s.n_star["fc5"], s.fits["fc5"]["gap"].params
        """
        path = self._reduced(self.layout.summary)
        return Summary.from_json(io.read_text(path), source=path)

    def _reduced(self, path: str) -> str:
        if not io.exists(path):
            raise JamsweepError(
                f"sweep {self.layout.sweep!r} is not reduced yet ({path.rsplit('/', 1)[-1]} "
                f"is missing): run `jamsweep reduce {self.layout.root}`"
            )
        return path

    # -- the data -------------------------------------------------------------------------

    def inputs(self, split: str = "test", run_id: str | None = None) -> torch.Tensor:
        """The preprocessed inputs of `split` ('train' or 'test') that the runs of the
        sweep trained or were tested on, in the run's dtype: (n, d) for flat data, (n, 3, 32,
        32) for CIFAR-10, rows in ascending `sample` order (the `sample` column of logits).
        Read with the runs' own loader (workers.data), so the data must be reachable here.
        A sweep whose axes change the data (train_size, data_seed, label_noise) needs the
        `run_id` of a run whose inputs to give.

        >>> sweep = open_sweep("demo")
        >>> x = sweep.inputs(split="test")  # row i: the i-th smallest test `sample`
        >>> rows = sweep.logits(split="test", step="final", width=8, seed=0)
        >>> f = rows.sort_values("sample").f.to_numpy()  # f[i] is the net's output on x[i]
        """
        import torch

        if split not in SPLITS:
            raise JamsweepError(f"split={split!r} is not a split of a sweep: use 'train' or 'test'")
        runs = self.runs()
        if not runs:
            raise JamsweepError(f"sweep {self.layout.sweep!r} has no runs in its manifest")
        if run_id is not None:
            run = self._run(run_id)
        elif len({r.dataset.model_dump_json() for r in runs}) > 1:
            raise JamsweepError(
                f"the runs of sweep {self.layout.sweep!r} differ in their data (a dataset "
                "axis): give the run whose inputs you want, inputs(split, run_id=...)"
            )
        else:
            run = runs[0]
        from workers.data import load_dataset  # torch and the data: only when asked

        data = load_dataset(run.dataset)
        part = data.train if split == "train" else data.test
        order = torch.argsort(part.index)
        return part.x[order].to(getattr(torch, run.training.dtype))

    def _run(self, run_id: str) -> RunSpec:
        spec = next((r for r in self.runs() if r.run_id == run_id), None)
        if spec is None:
            raise JamsweepError(
                f"sweep {self.layout.sweep!r} has no run {run_id!r}; its run ids are in "
                "manifest().run_id"
            )
        return spec

    def model(self, run_id: str) -> torch.nn.Module:
        """The trained net of a finished run (built-in or built by your `builder`), its
        final weights loaded, in eval mode and the run's dtype: `model(inputs)` gives the
        run's stored final logits (n, outputs). A module is built by the code it was
        submitted with (where it was found at submit, the sweep's copy in code/, or the
        Python path: the first whose source hash is the submitted one).

        >>> sweep = open_sweep("demo")
        >>> run = sweep.manifest().query("width == 8 and seed == 0").run_id.item()
        >>> f = sweep.model(run)(sweep.inputs(split="test"))  # (n_test, 1)
        """
        spec = self._run(run_id)
        path = self.layout.model(spec.run_id, *spec.key)
        if not io.exists(path):
            raise JamsweepError(
                f"run {run_id} ({spec.arch.name}, width {spec.width:g}, seed {spec.seed}) has no "
                f"stored weights ({path}): it has not finished, or its grid set "
                "checkpoint.keep_models: false"
            )
        from workers.train import DTYPES, build_model  # torch and the user's code: when asked

        net = build_model(spec, spec.d_in).to(dtype=DTYPES[spec.training.dtype])
        weights = io.load_checkpoint(path)
        if weights is None:  # torn or not a torch file: never read as the run's net
            raise UnreadableWeights(
                f"run {run_id}: its stored weights {path} cannot be read (a torn or foreign "
                "file); move it away and submit the grid again to train that run anew"
            )
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:  # another net's weights (a foreign file)
            raise JamsweepError(
                f"run {run_id}: {path} holds no weights of its net: {exc}"
            ) from None
        return net.eval()


class UnreadableWeights(JamsweepError):
    """A run's models/ file is torn or foreign: never read as its net."""


def open_sweep(path: str | os.PathLike[str], *, results: str | None = None) -> Sweep:
    """The sweep at `path`: RESULTS/SWEEP as a str or pathlib.Path (a folder or a URI such
    as s3://bucket/sweeps/demo), or a sweep's name (a str without '/') looked up under
    `results` (default: $JAMSWEEP_RESULTS, else ./results), as the CLI does.

    >>> sweep = open_sweep("demo")                      # ./results/demo
    >>> sweep = open_sweep(Path("results/demo"))
    >>> sweep.curves()
    """
    if isinstance(path, os.PathLike):
        text = os.fspath(path)
        text = text if "/" in text else f"./{text}"  # a Path is a path, never a name
    elif isinstance(path, str):
        text = path
    else:
        raise JamsweepError(
            f"open_sweep takes a path or a sweep name (str or pathlib.Path), not "
            f"{type(path).__name__}"
        )
    where, name = locate(text, results)
    return Sweep(existing(name, absolute(where)))


# -- filters --------------------------------------------------------------------------------


def _values(value: Any) -> list[Any]:
    """A filter's values: one, or each of a list, tuple, set, range or array."""
    if isinstance(value, (list, tuple, set, frozenset, range, np.ndarray, pd.Index, pd.Series)):
        return list(value)
    return [value]


def _check_names(
    table: str, names: list[str], where: dict[str, Any], columns: list[str] | None
) -> None:
    unknown = [k for k in [*where, *(columns or [])] if k not in names]
    if unknown:
        raise JamsweepError(
            f"{table} has no column {unknown[0]!r}: filter or select among {', '.join(names)}"
        )


def _expression(schema: pa.Schema, where: dict[str, Any]) -> ds.Expression | None:
    """field == value (or isin values) for every filter, each value cast to its column's
    type so that a wrong one is named rather than matching nothing."""
    expression = None
    for name, value in where.items():
        type_ = schema.field(name).type
        try:
            values = [pa.scalar(v, type=type_) for v in _values(value)]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            raise JamsweepError(
                f"{name}={value!r}: the column {name!r} holds {type_} values"
            ) from None
        if not values:
            raise JamsweepError(f"{name}=[]: give at least one value to filter on")
        term = (
            ds.field(name) == values[0]
            if len(values) == 1
            else ds.field(name).isin(pa.array([v.as_py() for v in values], type=type_))
        )
        expression = _and(expression, term)
    return expression


def _and(a: ds.Expression | None, b: ds.Expression | None) -> ds.Expression | None:
    return b if a is None else a if b is None else a & b
