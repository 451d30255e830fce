"""What a sweep holds on disk, seen from the orchestrator: its grid and manifest, which
runs finished, whether a new grid may join it, and whether a driver is at work on it.
Paths come from `schemas.layout.SweepLayout`; bytes go through `workers.io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.cluster.lease import is_held
from orchestrator.cluster.tracker import read_status, shown_records
from orchestrator.reports import SweepStatus
from schemas.axes import AXES, point_label
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, parse_grid
from schemas.layout import HIVE, MANIFEST_SCHEMA, SweepLayout, default_results
from schemas.modules import ModuleFacts
from schemas.run import RunRecord, RunSpec, RunStatus
from workers import io
from workers.kept_code import kept_here

ORIGIN_GRID, ORIGIN_REFINE = "grid", "refine"  # why a run is in the manifest


def absolute(location: str) -> str:
    """A local folder made absolute; a URI (s3://..., file://...) as it is."""
    return location if "://" in location else str(Path(location).absolute())


def existing(sweep: str, results: str) -> SweepLayout:
    """The layout of a sweep that exists under `results`, or a JamsweepError naming those
    that do."""
    layout = SweepLayout(results, sweep)
    if not io.exists(layout.grid_yaml):
        known = sweep_names(results)
        hint = f"; sweeps there: {', '.join(sorted(known))}" if known else ""
        raise JamsweepError(
            f"no sweep {sweep!r} under {results!r}{hint}. Check the name and --results"
        )
    return layout


def locate(sweep: str, results: str | None = None) -> tuple[str, str]:
    """(results, sweep name) of a sweep given by name or as a path RESULTS/SWEEP.

    A name is looked up under `results` (default: $JAMSWEEP_RESULTS, else ./results); a
    path (anything with a '/') names its own results location, and a `results` that names
    another one is refused rather than silently ignored."""
    if "/" not in sweep.rstrip("/"):
        return (results or default_results(), sweep.rstrip("/"))
    parent, name = sweep.rstrip("/").rsplit("/", 1)
    parent = parent or "/"
    if results is not None and absolute(results).rstrip("/") != absolute(parent).rstrip("/"):
        raise JamsweepError(
            f"the sweep is given as the path {sweep!r} (results location {parent!r}) and "
            f"--results names another one ({results!r}): give the path alone, or the name "
            "with --results"
        )
    return (parent, name)


def sweep_names(results: str) -> list[str]:
    return [
        name for name in io.list_dirs(results) if io.exists(SweepLayout(results, name).grid_yaml)
    ]


# -- the manifest: every run of the sweep ------------------------------------------------


def manifest_table(specs: list[RunSpec], origin: str = ORIGIN_GRID) -> pa.Table:
    rows = [
        {
            "run_id": s.run_id,
            "arch": s.arch.name,
            "width": s.width,
            "seed": s.seed,
            "n_params": s.n_params,
            "spec": s.model_dump_json(),
            "origin": origin,
            "label_map": s.label_map,
            **s.axis_values,
        }
        for s in specs
    ]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def read_manifest(layout: SweepLayout) -> list[RunSpec]:
    return [spec for spec, _ in _manifest_rows(layout)]


def _manifest_rows(layout: SweepLayout) -> list[tuple[RunSpec, str]]:
    """(spec, origin) of every manifest row; manifests older than `origin` say 'refine' for
    every row, so that the runs they hold beyond a grid are kept, as they were then."""
    if not io.exists(layout.manifest):
        return []
    table = io.read_table(layout.manifest)
    origins = (
        table.column("origin").to_pylist()
        if "origin" in table.column_names
        else [ORIGIN_REFINE] * table.num_rows
    )
    specs = [
        kept_here(RunSpec.model_validate_json(s), layout.code_dir)
        for s in table.column("spec").to_pylist()
    ]
    return list(zip(specs, origins, strict=True))


def planned_runs(grid: GridSpec, layout: SweepLayout) -> tuple[list[RunSpec], list[RunSpec]]:
    """(the grid's runs, the runs `refine` added that the grid still names an architecture
    of, at a point of the sweep axes that the grid still has): together, the sweep's runs
    once the grid is submitted. Runs of widths, seeds, architectures or axis values that
    the grid no longer names leave the manifest (their files stay).

    A refined run takes the grid's current resources, checkpoints and data paths (what may
    change freely), not the ones stored when it was added: its run id is unchanged."""
    runs = grid.expand()
    ids = {s.run_id for s in runs}
    names = {a.name for a in grid.architectures}
    points = {tuple(s.axis_values.items()) for s in runs}
    refined = [
        with_settings_of(grid, spec)
        for spec, origin in _manifest_rows(layout)
        if origin == ORIGIN_REFINE
        and spec.run_id not in ids
        and spec.arch.name in names
        and tuple(spec.axis_values.items()) in points
    ]
    return runs, refined


def with_settings_of(grid: GridSpec, spec: RunSpec) -> RunSpec:
    """`spec` with the grid's resources, checkpoints and dataset location."""
    dataset = spec.dataset.model_copy(update=grid.dataset.location())
    return spec.model_copy(
        update={"resources": grid.resources, "checkpoint": grid.checkpoint, "dataset": dataset}
    )


def dropped_runs(layout: SweepLayout, specs: list[RunSpec]) -> list[RunSpec]:
    """Runs of the stored manifest that `specs` (the sweep once submitted) no longer holds:
    they leave the manifest and the curves; their files stay where they are."""
    ids = {s.run_id for s in specs}
    return [s for s in read_manifest(layout) if s.run_id not in ids]


def add_to_manifest(layout: SweepLayout, specs: list[RunSpec]) -> list[RunSpec]:
    """Append the runs of `specs` that manifest.parquet lacks, as refined; return them.
    Existing rows are kept as stored, so their run_ids keep naming their result files."""
    stored = io.read_table(layout.manifest)
    missing = [f for f in MANIFEST_SCHEMA if f.name not in stored.column_names]
    specs_stored = [spec for spec, _ in _manifest_rows(layout)] if missing else []
    for column in missing:  # an older manifest (before origin, label_map, the axes)
        if column.name == "origin":  # see _manifest_rows
            values: list = [ORIGIN_REFINE] * stored.num_rows
        elif column.name == "label_map":
            values = [spec.label_map for spec in specs_stored]
        else:  # an axis: each row's value, from its spec
            values = [spec.axis_values[column.name] for spec in specs_stored]
        stored = stored.append_column(column, pa.array(values, column.type))
    known = set(stored.column("run_id").to_pylist())
    added = [s for s in specs if s.run_id not in known]
    new = manifest_table(added, ORIGIN_REFINE)
    io.write_table(
        layout.manifest,
        pa.concat_tables([stored.select(new.column_names), new], promote_options="default"),
    )
    return added


# -- finished runs ----------------------------------------------------------------------


def finished_run_ids(layout: SweepLayout, specs: list[RunSpec]) -> set[str]:
    """Runs whose results are whole: their metrics file (written last, atomically) is there
    and names this run, and their logits and trace files are whole Parquet files."""
    return finished_and_broken(layout, specs)[0]


class RunKey(Protocol):
    """What finding a run's files takes: a RunSpec, or the reducer's light ManifestRun."""

    @property
    def run_id(self) -> str: ...

    @property
    def key(self) -> tuple[str, float, int]: ...


K = TypeVar("K", bound=RunKey)


def finished_and_broken(layout: SweepLayout, specs: Sequence[K]) -> tuple[set[str], list[K]]:
    """(the ids of the finished runs of `specs`, the runs whose metrics file says finished
    but whose logits file is missing or cannot be read, or whose trace file cannot be read:
    not results, to be set aside and trained again). One scan of the metrics files, then the
    footers of the other two (a run of an old version without a trace file is finished)."""
    named = _run_id_by_metrics_file(layout)
    landed = [s for s in specs if named.get(layout.file("metrics", s.run_id, *s.key)) == s.run_id]
    traces = set(io.list_files(layout.trace_dir))  # runs of old versions may have none
    others = {
        s.run_id: [layout.file("logits", s.run_id, *s.key)]
        + [p for p in [layout.file("trace", s.run_id, *s.key)] if p in traces]
        for s in landed
    }
    bad = io.unreadable_parquet([path for paths in others.values() for path in paths])
    broken = [s for s in landed if any(path in bad for path in others[s.run_id])]
    gone = {s.run_id for s in broken}
    return {s.run_id for s in landed if s.run_id not in gone}, broken


def set_aside(layout: SweepLayout, runs: Sequence[RunKey]) -> str:
    """Move the result files of `runs` (whatever is there of metrics, logits, trace, model) to
    SWEEP/set_aside/STAMP/, keeping their relative paths, so that those runs are trained
    again and nothing is deleted; returns that folder."""
    import time

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = layout.set_aside_dir(stamp)
    for spec in runs:
        paths = [layout.file(t, spec.run_id, *spec.key) for t in ("metrics", "logits", "trace")]
        for path in [*paths, layout.model(spec.run_id, *spec.key)]:
            if io.exists(path):
                io.move_to(path, target + path[len(layout.root) :])
    return target


def _run_id_by_metrics_file(layout: SweepLayout) -> dict[str, object]:
    """Metrics file -> the run it names: one dataset scan; if a file cannot be read (torn by
    hand, a foreign file), file by file, leaving out what cannot be read."""
    try:
        return io.column_by_file(layout.metrics_dir, "run_id")
    except (OSError, pa.ArrowException):
        files = io.list_files(layout.metrics_dir)
        return {path: run_id for path in files if (run_id := _metrics_run_id(path)) is not None}


def _metrics_run_id(path: str) -> str | None:
    try:
        return io.read_table(path, columns=["run_id"]).column(0)[0].as_py()
    except (OSError, pa.ArrowException, IndexError):
        return None  # unreadable: not a result


def status_from_files(layout: SweepLayout) -> SweepStatus:
    """The persisted status.parquet, corrected by the result files (a metrics file means
    done) and by the sweep's lease (a running run of a round whose lease is not held is
    interrupted); every run of the manifest has a record. Reads no result file: one
    listing of the metrics folder."""
    persisted = read_status(layout)
    alive = is_held(layout)
    records = shown_records(persisted.records, alive)
    if io.exists(layout.manifest):  # the sweep's runs are the manifest's
        known = {r.run_id: r for r in records}
        rows = io.read_table(layout.manifest, ["run_id", "arch", "width", "seed", "n_params"])
        records = [known.get(row["run_id"]) or RunRecord(**row) for row in rows.to_pylist()]
    present = set(io.list_files(layout.metrics_dir))
    fixed = [
        r
        if r.state is RunStatus.DONE
        or layout.file("metrics", r.run_id, r.arch, r.width, r.seed) not in present
        else r.model_copy(update={"state": RunStatus.DONE, "error": None})
        for r in records
    ]
    return SweepStatus(layout.sweep, fixed, "file", alive=alive)


# -- may this grid join the sweep? --------------------------------------------------------


def check_grid_change(layout: SweepLayout, spec: GridSpec, force: bool) -> bool:
    """A sweep grows or shrinks freely (widths, seeds, architectures); what decides a run's
    result may not change under one sweep name. Returns True when the sweep holds a grid
    that differs there and `force` asks to replace it (its folder is moved aside)."""
    if not io.exists(layout.grid_yaml):
        return False
    try:
        old = parse_grid(io.read_text(layout.grid_yaml), source=layout.grid_yaml)
    except JamsweepError:
        differences = ["grid.yaml of the existing sweep can no longer be read"]
    else:
        differences = (
            spec.result_differences(old)
            + _data_differences(layout, spec)
            + _module_differences(layout, spec)
        )
    if not differences:
        return False
    if not force:
        listed = "\n".join(f"  - {d}" for d in differences)
        raise JamsweepError(
            f"sweep {spec.sweep!r} in {layout.results} was run with a grid that differs in "
            f"what decides the runs' results:\n{listed}\nUse another sweep name, or --force "
            f"to move the existing results aside ({spec.sweep}.replaced-TIMESTAMP) and start "
            "this grid afresh. (Adding or removing widths, seeds or architectures needs "
            "neither.)"
        )
    return True


def _data_differences(layout: SweepLayout, spec: GridSpec) -> list[str]:
    """What differs in the facts read from a files dataset (its values, columns, labels)
    between the sweep's runs and this grid's: the same grid may name files whose contents
    changed, or other files with other contents."""
    new = spec.dataset.resolved
    runs = read_manifest(layout)
    old = runs[0].dataset.resolved if runs else None
    if new is None or old is None or new == old:
        return []
    before, after = old.model_dump(), new.model_dump()
    lines = [
        f"dataset.resolved.{k}: {before[k]!r} -> {after[k]!r}"
        for k in before
        if k != "fingerprint" and before[k] != after[k]
    ]
    if old.fingerprint != new.fingerprint:
        files = ", ".join(p for p in (spec.dataset.train, spec.dataset.test) if p)
        lines.append(
            f"the values read from {files} (fingerprint {old.fingerprint[:12]} -> "
            f"{new.fingerprint[:12]})"
        )
    return lines


def _module_differences(layout: SweepLayout, spec: GridSpec) -> list[str]:
    """The `kind: module` architectures whose code (its source hash) differs from the code
    the sweep's runs were trained with: editing the model is a changed grid."""
    stored: dict[str, ModuleFacts] = {}
    for run in read_manifest(layout):
        if run.arch.kind == "module" and run.arch.resolved is not None:
            stored.setdefault(run.arch.name, run.arch.resolved)
    lines = []
    for arch in spec.architectures:
        old = stored.get(arch.name)
        if arch.kind != "module" or arch.resolved is None or old is None:
            continue
        if old.source_sha256 != arch.resolved.source_sha256:
            lines.append(
                f"architecture {arch.name!r}: the code of {arch.builder} "
                f"({arch.resolved.location}) changed (source sha256 {old.source_sha256[:12]} "
                f"-> {arch.resolved.source_sha256[:12]})"
            )
    return lines


# -- points: the runs of some values of the sweep's columns --------------------------------

WHERE_COLUMNS = ("arch", "width", "seed", *AXES)  # what `status --where` may name


def runs_where(layout: SweepLayout, where: dict[str, list[str]]) -> set[str]:
    """The ids of the manifest's runs whose column NAME has one of the values given (as
    text, read as the column's type) for every NAME of `where`. An unknown name, or a
    value no run has, is a JamsweepError that lists what there is."""
    if not io.exists(layout.manifest):
        raise JamsweepError(f"sweep {layout.sweep!r} has no manifest yet: nothing to select")
    fs, path = io.resolve(layout.manifest)
    listed = set(pq.read_schema(path, filesystem=fs).names)
    known = [c for c in WHERE_COLUMNS if c in listed]
    unknown = sorted(set(where) - set(known))
    if unknown:
        raise JamsweepError(
            f"--where {unknown[0]}: no such column of sweep {layout.sweep!r}; "
            f"columns: {', '.join(known)}"
        )
    table = io.read_table(layout.manifest, ["run_id", *where]).to_pandas()
    keep = pd.Series(True, index=table.index)
    for name, texts in where.items():
        column = table[name]
        present = sorted(set(column.dropna().tolist()))
        values = [_as_value_of(column, name, t) for t in texts]
        missing = [t for t, v in zip(texts, values, strict=True) if v not in present]
        if missing:
            shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in present)
            raise JamsweepError(
                f"--where {name}={missing[0]}: no run of sweep {layout.sweep!r} has it; "
                f"its {name} values: {shown}"
            )
        keep &= column.isin(values)
    return set(table.loc[keep, "run_id"])


def run_points(layout: SweepLayout) -> dict[str, str]:
    """run_id -> its point ('train_size=500', the axes that vary among the manifest's runs),
    from the manifest's columns; empty for a sweep without varying axes."""
    if not io.exists(layout.manifest):
        return {}
    fs, path = io.resolve(layout.manifest)
    axes = [a for a in AXES if a in pq.read_schema(path, filesystem=fs).names]
    table = io.read_table(layout.manifest, ["run_id", *axes]).to_pydict()
    moving = [a for a in axes if len(set(table[a])) > 1]
    if not moving:
        return {}
    return {
        run_id: point_label({a: table[a][i] for a in moving})
        for i, run_id in enumerate(table["run_id"])
    }


def _as_value_of(column: pd.Series, name: str, text: str) -> object:
    if column.dtype.kind in "if":
        try:
            return float(text) if column.dtype.kind == "f" else int(float(text))
        except ValueError:
            raise JamsweepError(f"--where {name}={text}: {name} is a number") from None
    return text


def refuse_axes_in_hive(layout: SweepLayout, spec: GridSpec) -> None:
    """A sweep of layout 1 keeps a run's files by (arch, width, seed): two points of an
    axis would share them."""
    if spec.axes and layout.tables_layout == HIVE:
        raise JamsweepError(
            f"sweep {spec.sweep!r} in {layout.results} keeps its runs' files by arch, width "
            f"and seed (layout 1, made before sweep axes); a grid that lists "
            f"{', '.join(spec.axes)} needs a new sweep: give it another name"
        )
