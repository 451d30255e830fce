"""What a grid file may say (`GridSpec`), and its expansion into one `RunSpec` per run.

User-facing models are strict: unknown keys are errors, every field is described, and
cross-field checks name the offending value. `load_grid` reports every problem at once.
The pieces (dataset, architectures, training, ...) are in `schemas.specs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.axes import DatasetGrid, Point, TrainingGrid, points
from schemas.datasets import (
    DATASETS_WITH_ROOT,
    FLAT_DATASETS,
    IMAGE_SHAPES,
    N_OUTPUTS,
    PCA_DATASETS,
    DataFacts,
)
from schemas.errors import GridError
from schemas.modules import ModuleFacts
from schemas.run import DATA_LOCATION, RunSpec
from schemas.specs import (
    ArchSpec,
    CheckpointSpec,
    CNNArch,
    DatasetSpec,
    FCArch,
    ModuleArch,
    ResourceSpec,
    Strict,
    TrainingSpec,
    _check_safe_name,
)

__all__ = [  # the pieces are importable from here too
    "DATASETS_WITH_ROOT",
    "IMAGE_SHAPES",
    "N_OUTPUTS",
    "PCA_DATASETS",
    "ArchSpec",
    "CNNArch",
    "CheckpointSpec",
    "DataFacts",
    "DatasetSpec",
    "FCArch",
    "GridSpec",
    "ModuleArch",
    "ResourceSpec",
    "TrainingSpec",
    "load_grid",
    "parse_grid",
]

AnyArch = FCArch | CNNArch | ModuleArch


class GridSpec(Strict):
    sweep: str = Field(description="Name of the sweep: the folder RESULTS/SWEEP.")
    results: str | None = Field(
        default=None,
        description="Where results go (folder or URI); relative paths are taken from the grid "
        "file's folder. The CLI's --results wins.",
    )
    dataset: DatasetGrid = Field(
        description="The data every run trains and tests on; train_size, label_noise and "
        "data_seed may be lists (sweep axes)."
    )
    architectures: list[ArchSpec] = Field(description="Architectures, each with its widths.")
    seeds: int | list[int] = Field(
        description="A count n (seeds 0..n-1) or an explicit list of distinct seeds."
    )
    training: TrainingGrid = Field(
        default_factory=TrainingGrid,
        description="How runs train; any numeric field may be a list (a sweep axis).",
    )
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="Per-run resources.")
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="When runs save their state."
    )

    @field_validator("sweep")
    @classmethod
    def _safe_sweep(cls, value: str) -> str:
        return _check_safe_name(value, "sweep name")

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, seeds: int | list[int]) -> int | list[int]:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"seeds must be a count >= 1 or a list; got {seeds}")
            return seeds
        if not seeds:
            raise ValueError("seeds is an empty list: give a count or at least one seed")
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be >= 0; got {seeds}")
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"seeds repeat {dup}: list each seed once")
        return seeds

    @field_validator("architectures")
    @classmethod
    def _valid_architectures(cls, archs: list[AnyArch]) -> list[AnyArch]:
        if not archs:
            raise ValueError("architectures is empty: list at least one")
        names = [a.name for a in archs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"architecture names repeat {dup}: give each a distinct name")
        return archs

    @model_validator(mode="after")
    def _archs_fit_dataset(self) -> GridSpec:
        """FC nets take the flat *_pca inputs, CNNs the images; a CNN must not shrink the
        images to nothing. Every mismatch is reported at once, at its architecture."""
        problems = [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{problem}", {"problem": problem}),
                loc=("architectures", i),
                input=arch.name,
            )
            for i, arch in enumerate(self.architectures)
            if (problem := _arch_dataset_problem(arch, self.dataset.name))
        ]
        if problems:  # a ValidationError keeps each problem's location, unlike a ValueError
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def with_data(self, facts: DataFacts | None) -> GridSpec:
        """This grid with its files dataset's facts resolved (`workers.data.check_dataset`),
        so that its RunSpecs know d_in and the outputs; unchanged when `facts` is None."""
        if facts is None:
            return self
        dataset = self.dataset.model_copy(update={"resolved": facts})
        return self.model_copy(update={"dataset": dataset})

    def with_models(self, facts: dict[str, ModuleFacts]) -> GridSpec:
        """This grid with the facts of its `kind: module` architectures resolved, by name
        (`workers.builders.resolve_modules`): their N per width and source hash."""
        if not facts:
            return self
        archs = [
            a.model_copy(update={"resolved": facts[a.name]}) if a.name in facts else a
            for a in self.architectures
        ]
        return self.model_copy(update={"architectures": archs})

    @property
    def axes(self) -> dict[str, list[Any]]:
        """The fields given as lists (name -> values), dataset fields first."""
        return {**self.dataset.axes(), **self.training.axes()}

    @property
    def points(self) -> list[Point]:
        """Every point of the product of the axes ([{}] for a grid without lists)."""
        return points(self.axes)

    @property
    def n_runs(self) -> int:
        """The size of the product: runs of every (architecture, point, width, seed)."""
        n_widths = sum(len(a.widths) for a in self.architectures)
        return n_widths * len(self.points) * len(self.seed_list)

    def expand(self) -> list[RunSpec]:
        """One RunSpec per (architecture, point, width, seed), in grid order."""
        at = [(self.dataset.at(p), self.training.at(p)) for p in self.points]
        return [
            RunSpec(
                sweep=self.sweep,
                arch=arch,
                width=width,
                seed=seed,
                dataset=dataset,
                training=training,
                resources=self.resources,
                checkpoint=self.checkpoint,
            )
            for arch in self.architectures
            for dataset, training in at
            for width in arch.widths
            for seed in self.seed_list
        ]

    def result_differences(self, old: GridSpec) -> list[str]:
        """What differs from `old` among the fields that decide a run's result: the
        dataset (not where it is read from, nor the facts read from its files: those are
        compared with the manifest's, store.check_grid_change), the training, and the
        definition of each architecture the two grids share. Widths, seeds, added or
        removed architectures, the values of an axis (a field that is a list in either
        grid), resources, checkpoints and paths do not count: a sweep may grow or shrink
        along every axis. A field that is one value in both grids and changes does count.
        One 'field: old -> new' line each, empty when the grids are the same experiment."""
        axes = set(old.axes) | set(self.axes)
        pairs = [
            ("dataset", _decisive(old.dataset, axes), _decisive(self.dataset, axes)),
            (
                "training",
                old.training.model_dump(mode="json", exclude=axes),
                self.training.model_dump(mode="json", exclude=axes),
            ),
        ]
        before = {a.name: a for a in old.architectures}
        pairs += [
            (f"architectures[{a.name}]", _decisive(before[a.name], set()), _decisive(a, set()))
            for a in self.architectures
            if a.name in before
        ]
        return [line for where, a, b in pairs for line in _changed(where, a, b)]

    def identity(self) -> dict[str, Any]:
        """What makes two grids the same experiment (resources and paths aside)."""
        return self.model_dump(
            mode="json",
            exclude_defaults=True,
            exclude={
                "results": True,
                "resources": True,
                "checkpoint": True,
                "dataset": {*DATA_LOCATION, "resolved"},
            },
        )


def _decisive(model: BaseModel, axes: set[str]) -> dict[str, Any]:
    """A dataset's or architecture's fields that decide results (not paths, not widths,
    not the `axes`, not the facts resolved from a dataset's files)."""
    return model.model_dump(mode="json", exclude={*DATA_LOCATION, *axes, "resolved", "widths"})


def _changed(where: str, old: Any, new: Any) -> list[str]:
    """'where.field: old -> new' for every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [line for k in keys for line in _changed(f"{where}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _arch_dataset_problem(arch: AnyArch, data: str) -> str | None:
    """Why `arch` cannot train on dataset `data`, or None."""
    where = f"architecture {arch.name!r} (kind {arch.kind})"
    if arch.kind == "fc" and data not in FLAT_DATASETS:
        return (
            f"{where} needs flat inputs ({', '.join(FLAT_DATASETS)}), not dataset.name "
            f"{data!r}; use a kind: cnn architecture for images"
        )
    if arch.kind == "cnn" and data not in IMAGE_SHAPES:
        return (
            f"{where} needs an image dataset ({', '.join(IMAGE_SHAPES)}), not dataset.name {data!r}"
        )
    if arch.kind == "cnn" and arch.feature_size(IMAGE_SHAPES[data][1]) < 1:
        return (
            f"{where}: kernel_size {arch.kernel_size}, stride {arch.stride} and padding "
            f"{arch.padding} over {arch.depth} layers shrink the {IMAGE_SHAPES[data][1]}-pixel "
            f"images of {data!r} to nothing; use a smaller stride or kernel, more padding or "
            "fewer layers"
        )
    return None


def parse_grid(text: str, *, source: str = "grid", base_dir: Path | None = None) -> GridSpec:
    """Parse grid YAML text; raise GridError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GridError(source, [f"not valid YAML{line}: {problem}"]) from None
    if not isinstance(raw, dict):
        raise GridError(source, ["the file must be a YAML mapping (key: value lines)"])
    if isinstance(raw.get("dataset"), dict) and "resolved" in raw["dataset"]:
        raise GridError(
            source, ["dataset.resolved is set by jamsweep when it reads the files; remove it"]
        )
    archs = raw.get("architectures")
    if isinstance(archs, list) and any(isinstance(a, dict) and "resolved" in a for a in archs):
        raise GridError(
            source,
            ["architectures[].resolved is set by jamsweep when it reads the module; remove it"],
        )
    try:
        grid = GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise GridError(source, [_describe(err) for err in exc.errors()]) from None
    return _resolve_paths(grid, base_dir) if base_dir is not None else grid


def load_grid(path: str | Path, base_dir: str | Path | None = None) -> tuple[GridSpec, str]:
    """Read and validate a grid file; return the spec and the file's verbatim text.

    Relative paths in it are taken from `base_dir` (default: the file's folder)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(str(path), [f"cannot read the grid file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise GridError(str(path), ["the grid file is not UTF-8 text"]) from None
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    return parse_grid(text, source=str(path), base_dir=base), text


def _resolve_paths(grid: GridSpec, base_dir: Path) -> GridSpec:
    def resolve(p: str | None) -> str | None:
        if p is None or "://" in p or Path(p).is_absolute():
            return p
        return str((base_dir / p).resolve())

    paths = ("root", "train", "test")
    dataset = grid.dataset.model_copy(update={k: resolve(getattr(grid.dataset, k)) for k in paths})
    return grid.model_copy(update={"dataset": dataset, "results": resolve(grid.results)})


def _describe(err: Any) -> str:
    """One line per pydantic error: the field path, what is wrong, the value given."""
    loc = ".".join(str(p) for p in err["loc"] if p not in ("fc", "cnn", "module")) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check its spelling"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    if (
        "input" in err
        and err["type"] not in ("value_error",)
        and not isinstance(err["input"], dict)
    ):
        return f"{loc}: {msg} (got {err['input']!r})"
    return f"{loc}: {msg}"
