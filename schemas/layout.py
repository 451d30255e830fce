"""Where every file of a sweep lives, and the Arrow schemas of its tables.

Nobody else builds a path: ask a `SweepLayout`. Paths are strings joined with '/', so the
same layout works for a local folder and for an object-store URI (s3://bucket/prefix).

Two layouts of the run tables (logits, metrics, trace) exist. Layout 1 (sweeps made before
sweep axes; no layout.json) partitions them hive-style, TABLE/arch=A/width=W/seed=S/
part-0.parquet, so that a plain reader gets arch, width and seed from folder names, as
text categories. Layout 2 (every new sweep; layout.json says {"layout": 2}) keeps one flat
file per run, TABLE/RUN_ID.parquet, whose rows carry the key and axis columns typed
(`KEY_SCHEMA`, `AXIS_SCHEMA`): pandas, pyarrow, polars and duckdb read width as a number,
and runs of two points of the other axes never share a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
import pyarrow.fs as pafs

RESULTS_DEFAULT = "results"
RESULTS_ENV = "JAMSWEEP_RESULTS"  # sets the default results location


def default_results() -> str:
    """Where results go when nothing names a location: $JAMSWEEP_RESULTS, else ./results."""
    return os.environ.get(RESULTS_ENV) or RESULTS_DEFAULT


def format_width(width: float) -> str:
    """Partition value of a width: '12' for integral widths, '3.5' for fractional ones."""
    return str(int(width)) if float(width).is_integer() else repr(float(width))


def _join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *rest])


HIVE, FLAT = 1, 2  # the layouts of the run tables (module docstring)


@dataclass(frozen=True)
class SweepLayout:
    """The files of one sweep under RESULTS/SWEEP/ (DESIGN.md section 3).

    `version` is the layout of its run tables; None: the one layout.json names (read once,
    when first asked), 1 when there is none (a sweep of an older version, or none yet;
    `submit` settles a new sweep's layout to 2 before anything is written)."""

    results: str
    sweep: str
    version: int | None = field(default=None, compare=False)

    @cached_property
    def tables_layout(self) -> int:
        if self.version is not None:
            return self.version
        return _stored_layout(self.layout_json)

    def settled(self, new_sweep: bool) -> SweepLayout:
        """This layout with its version fixed: layout.json's, else FLAT for a new sweep and
        HIVE for one that has files of an older version."""
        stored = _stored_layout(self.layout_json, missing=0)
        version = stored or (FLAT if new_sweep else HIVE)
        return SweepLayout(self.results, self.sweep, version)

    @property
    def layout_json(self) -> str:
        return _join(self.root, "layout.json")

    def layout_text(self) -> str:
        """What layout.json holds for this layout."""
        return json.dumps({"layout": self.tables_layout}) + "\n"

    @property
    def root(self) -> str:
        return _join(self.results, self.sweep)

    @property
    def lease_dir(self) -> str:
        """The sweep's lease (orchestrator.cluster.lease): beside the sweep's folder, not in
        it, so that moving the folder aside (--force) keeps the lease where it is."""
        return _join(self.results, ".leases", self.sweep)

    @property
    def grid_yaml(self) -> str:
        return _join(self.root, "grid.yaml")

    @property
    def manifest(self) -> str:
        return _join(self.root, "manifest.parquet")

    @property
    def status(self) -> str:
        return _join(self.root, "status.parquet")

    @property
    def logits_dir(self) -> str:
        return _join(self.root, "logits")

    @property
    def metrics_dir(self) -> str:
        return _join(self.root, "metrics")

    @property
    def trace_dir(self) -> str:
        return _join(self.root, "trace")

    @property
    def code_dir(self) -> str:
        """The sweep's copies of its `kind: module` code, code/SHA16/ per source."""
        return _join(self.root, "code")

    @property
    def checkpoints_dir(self) -> str:
        return _join(self.root, "checkpoints")

    @property
    def curves(self) -> str:
        return _join(self.root, "curves.parquet")

    @property
    def ensemble(self) -> str:
        return _join(self.root, "ensemble.parquet")

    @property
    def training(self) -> str:
        return _join(self.root, "training.parquet")

    @property
    def snapshots(self) -> str:
        return _join(self.root, "snapshots.parquet")

    @property
    def summary(self) -> str:
        return _join(self.root, "summary.json")

    @property
    def figures_dir(self) -> str:
        return _join(self.root, "figures")

    def figure(self, name: str, fmt: str = "png") -> str:
        return _join(self.figures_dir, f"{name}.{fmt}")

    def comparison(self, others: list[str], fmt: str = "png") -> str:
        """The figure that overlays this sweep's curves and those of the sweeps `others`."""
        return self.figure("compare_" + "_".join([self.sweep, *others]), fmt)

    @property
    def report(self) -> str:
        return _join(self.root, "report.html")

    def file(self, table: str, run_id: str, arch: str, width: float, seed: int) -> str:
        """The file of one run in a run table ('logits', 'metrics', 'trace')."""
        if self.tables_layout == FLAT:
            return _join(self.root, table, f"{run_id}.parquet")
        return self.run_file(table, arch, width, seed)

    def width_dir(self, table: str, arch: str, width: float) -> str:
        """Layout 1: folder of one (arch, width) in a partitioned table."""
        return _join(self.root, table, f"arch={arch}", f"width={format_width(width)}")

    def run_file(self, table: str, arch: str, width: float, seed: int) -> str:
        """Layout 1: the file of (arch, width, seed); use `file`, which knows the layout."""
        if self.tables_layout == FLAT:
            raise ValueError(f"{self.root} keeps a file per run id (layout 2): ask layout.file")
        return _join(self.width_dir(table, arch, width), f"seed={seed}", "part-0.parquet")

    def logits(self, arch: str, width: float, seed: int) -> str:
        return self.run_file("logits", arch, width, seed)

    def metrics(self, arch: str, width: float, seed: int) -> str:
        return self.run_file("metrics", arch, width, seed)

    def trace(self, arch: str, width: float, seed: int) -> str:
        return self.run_file("trace", arch, width, seed)

    @property
    def models_dir(self) -> str:
        return _join(self.root, "models")

    def model(self, run_id: str, arch: str, width: float, seed: int) -> str:
        """A finished run's final weights (a torch state_dict, `checkpoint.keep_models`):
        models/RUN_ID.pt (layout 2), models/arch=A/width=W/seed=S/model.pt (layout 1)."""
        if self.tables_layout == FLAT:
            return _join(self.models_dir, f"{run_id}.pt")
        return _join(self.width_dir("models", arch, width), f"seed={seed}", "model.pt")

    def set_aside_dir(self, stamp: str) -> str:
        """Where result files that cannot be read are moved (not deleted) before their runs
        are trained again: set_aside/STAMP/ keeps the tables' own relative paths."""
        return _join(self.root, "set_aside", stamp)

    def checkpoint(self, run_id: str) -> str:
        return _join(self.checkpoints_dir, f"{run_id}.pt")


def _stored_layout(location: str, missing: int = HIVE) -> int:
    """The layout that layout.json at `location` names; `missing` when there is none."""
    try:
        if "://" in location:
            fs, path = pafs.FileSystem.from_uri(location)
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(location)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return missing
        with fs.open_input_stream(path) as src:
            return int(json.loads(src.read().decode())["layout"])
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise OSError(f"cannot read the sweep's layout.json ({location}): {exc}") from None


# Layout 1: the partition columns (arch, width, seed) live in the folder names, not in the
# files, so that reading a table folder with pandas/pyarrow/duckdb yields them exactly once.
PARTITIONING = pa.schema([("arch", pa.string()), ("width", pa.float64()), ("seed", pa.int64())])
KEY_SCHEMA = PARTITIONING  # layout 2: the same columns, typed, in every row of every file

# Every run's value of every sweep axis (schemas.axes.AXES, in that order), a column of each
# row of its files (layout 2) and of the manifest, whether or not the grid lists it.
AXIS_SCHEMA = pa.schema(
    [
        ("train_size", pa.int64()),
        ("label_noise", pa.float64()),
        ("data_seed", pa.int64()),
        ("margin", pa.float64()),
        ("lr0", pa.float64()),
        ("lr_exponent", pa.float64()),
        ("lr_max", pa.float64()),
        ("adam_eps", pa.float64()),
        ("batch_size", pa.int64()),  # null: full batch
        ("max_steps", pa.int64()),
        ("delta_tol", pa.float64()),
    ]
)


def with_run_columns(schema: pa.Schema) -> pa.Schema:
    """A run table's file schema in layout 2: run_id, then the key and axis columns."""
    rest = [f for f in schema if f.name != "run_id"]
    return pa.schema([schema.field("run_id"), *KEY_SCHEMA, *AXIS_SCHEMA, *rest])


LOGITS_FILE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("n_params", pa.int64()),
        ("split", pa.string()),
        ("sample", pa.int64()),
        ("step", pa.int64()),
        ("label", pa.int64()),
        ("f", pa.float64()),
        ("grad_norm", pa.float64()),
    ]
)

METRICS_FILE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("n_params", pa.int64()),
        ("steps", pa.int64()),
        ("converged", pa.bool_()),
        ("train_loss", pa.float64()),
        ("n_unsat", pa.int64()),
        ("max_delta", pa.float64()),
        ("train_error", pa.float64()),
        ("test_error", pa.float64()),
        ("f_norm", pa.float64()),
        ("grad_norm", pa.float64()),
        ("lr", pa.float64()),
        ("wall_s", pa.float64()),
        ("device", pa.string()),
        ("resumed_from", pa.int64()),  # step of the checkpoint the last attempt resumed (0: none)
    ]
)

TRACE_FILE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("loss", pa.float64()),
        ("n_unsat", pa.int64()),
        ("max_delta", pa.float64()),
        ("train_error", pa.float64()),
        ("f_norm", pa.float64()),
        ("test_error", pa.float64()),  # the early-stopping curve (null in older traces)
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("arch", pa.string()),
        ("width", pa.float64()),
        ("seed", pa.int64()),
        ("n_params", pa.int64()),
        ("spec", pa.string()),
        ("origin", pa.string()),  # "grid" (named by grid.yaml) or "refine" (added by refine)
        ("label_map", pa.string()),  # how labels became targets: '"B" -> -1, "M" -> +1'
        *AXIS_SCHEMA,  # older manifests lack them: readers take them as absent
    ]
)

STATUS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("arch", pa.string()),
        ("width", pa.float64()),
        ("seed", pa.int64()),
        ("n_params", pa.int64()),
        ("state", pa.string()),
        ("attempts", pa.int64()),
        ("node", pa.string()),
        ("error", pa.string()),
        ("submitted_at", pa.float64()),
        ("started_at", pa.float64()),
        ("ended_at", pa.float64()),
    ]
)


def logits_schema(n_outputs: int) -> pa.Schema:
    """`f` is float64 for one output, list<float64> for several."""
    if n_outputs == 1:
        return LOGITS_FILE_SCHEMA
    i = LOGITS_FILE_SCHEMA.get_field_index("f")
    return LOGITS_FILE_SCHEMA.set(i, pa.field("f", pa.list_(pa.float64())))
