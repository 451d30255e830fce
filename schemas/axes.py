"""Sweep axes: the fields of a grid's dataset and training that may be a list of values.

A grid's runs are the product of every list with the widths and the seeds. A point is one
value of each axis field; `DatasetGrid.at(point)` and `TrainingGrid.at(point)` give the
scalar `DatasetSpec` and `TrainingSpec` a run trains with, so a grid without lists makes
exactly the RunSpecs (and run ids) it made before axes existed.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from schemas.specs import DatasetSpec, TrainingSpec

# Axis fields, named as the columns that carry them (DESIGN.md section 6). Every table row
# of a run carries all of them, so that every file of a sweep has the same schema and a
# field that becomes a list later needs no new column.
DATASET_AXES = ("train_size", "label_noise", "data_seed")
TRAINING_AXES = (
    "margin",
    "lr0",
    "lr_exponent",
    "lr_max",
    "adam_eps",
    "batch_size",
    "max_steps",
    "delta_tol",
)
AXES = (*DATASET_AXES, *TRAINING_AXES)
DEFAULT_MAX_RUNS = 5000  # a grid larger than this is refused unless --max-runs says more

Point = dict[str, Any]  # axis name -> its value at one point (only the grid's list axes)

_ADAPTERS: dict[tuple[str, str], TypeAdapter[Any]] = {}


def _check_values(model: type, name: str, value: Any) -> Any:
    """One value, valid as the scalar field of `model`, or a list of them: non-empty,
    distinct, each valid."""
    key = (model.__name__, name)
    if key not in _ADAPTERS:
        info = model.model_fields[name]  # type: ignore[attr-defined]
        # the scalar field's type with its constraints (ge, gt, ...): Annotated[T, *meta]
        scalar: Any = info.annotation
        if info.metadata:
            scalar = Annotated.__class_getitem__((scalar, *info.metadata))  # type: ignore[attr-defined]
        _ADAPTERS[key] = TypeAdapter(scalar)
    adapter = _ADAPTERS[key]

    def checked(item: Any, where: str) -> Any:
        try:
            return adapter.validate_python(item)
        except ValidationError as exc:
            raise ValueError(f"{where}{exc.errors()[0]['msg']} (got {item!r})") from None

    if not isinstance(value, list):
        return checked(value, "")
    if not value:
        raise ValueError(f"{name} is an empty list: give one value or a list of values")
    values = [checked(item, f"{name} value {item!r}: ") for item in value]
    dup = sorted({v for v in values if values.count(v) > 1}, key=repr)
    if dup:
        raise ValueError(f"{name} repeats {dup}: list each value once")
    return values


def _lists(model: Any, names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {n: getattr(model, n) for n in names if isinstance(getattr(model, n), list)}


class DatasetGrid(DatasetSpec):
    """The grid's dataset: a DatasetSpec whose train_size, label_noise and data_seed may
    each be a list (sweep axes)."""

    train_size: int | list[int] = Field(  # type: ignore[assignment]
        description="P: number of training samples, or a list of them (an axis)."
    )
    data_seed: int | list[int] = Field(  # type: ignore[assignment]
        default=0, description="Seed of the train/test split and of the label noise, or a list."
    )
    label_noise: float | list[float] = Field(  # type: ignore[assignment]
        default=0.0,
        description="q: a fraction q of the P training labels (round(q P), drawn with "
        "data_seed) replaced by another class (binary: flipped); the test set stays clean. "
        "A list sweeps it.",
    )

    @field_validator(*DATASET_AXES, mode="before")
    @classmethod
    def _axis_values(cls, value: Any, info: Any) -> Any:
        return _check_values(DatasetSpec, info.field_name, value)

    def axes(self) -> dict[str, list[Any]]:
        return _lists(self, DATASET_AXES)

    def at(self, point: Point) -> DatasetSpec:
        """The scalar dataset of one point (the first value of every list not in it)."""
        raw = self.model_dump(exclude_unset=True)
        for name in DATASET_AXES:
            value = getattr(self, name)
            if name in point:
                raw[name] = point[name]
            elif isinstance(value, list):
                raw[name] = value[0]
        if self.resolved is not None:
            raw["resolved"] = self.resolved
        return DatasetSpec.model_validate(raw)


class TrainingGrid(TrainingSpec):
    """The grid's training: a TrainingSpec whose numeric fields may each be a list."""

    margin: float | list[float] = Field(  # type: ignore[assignment]
        default=1.0, description="kappa: the hinge margin (a list sweeps it)."
    )
    lr0: float | list[float] = Field(  # type: ignore[assignment]
        default=0.1, description="lr = min(lr0 * h^lr_exponent, lr_max); a list sweeps it."
    )
    lr_exponent: float | list[float] = Field(  # type: ignore[assignment]
        default=-1.5, description="a in lr = min(lr0 * h^a, lr_max); a list sweeps it."
    )
    lr_max: float | list[float] = Field(  # type: ignore[assignment]
        default=1e-4, description="Upper bound of the learning rate; a list sweeps it."
    )
    adam_eps: float | list[float] = Field(  # type: ignore[assignment]
        default=1e-8, description="Adam's epsilon; a list sweeps it."
    )
    batch_size: int | None | list[int] = Field(  # type: ignore[assignment]
        default=None,
        description="Mini-batch size (default: full batch, as the paper); a list sweeps it.",
    )
    max_steps: int | list[int] = Field(  # type: ignore[assignment]
        default=2_000_000, description="Step budget of one run; a list sweeps it."
    )
    delta_tol: float | list[float] = Field(  # type: ignore[assignment]
        default=1e-12,
        description="A constraint counts as satisfied when its Delta <= delta_tol; 0 gives "
        "the authors' strict rule. A list sweeps it.",
    )

    @field_validator(*TRAINING_AXES, mode="before")
    @classmethod
    def _axis_values(cls, value: Any, info: Any) -> Any:
        return _check_values(TrainingSpec, info.field_name, value)

    def axes(self) -> dict[str, list[Any]]:
        return _lists(self, TRAINING_AXES)

    def at(self, point: Point) -> TrainingSpec:
        raw = self.model_dump(exclude_unset=True)
        for name in TRAINING_AXES:
            value = getattr(self, name)
            if name in point:
                raw[name] = point[name]
            elif isinstance(value, list):
                raw[name] = value[0]
        return TrainingSpec.model_validate(raw)


def points(axes: dict[str, list[Any]]) -> list[Point]:
    """Every point of the product of `axes`, in the order the lists are written ([{}]
    without axes)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def axis_values(dataset: DatasetSpec, training: TrainingSpec) -> dict[str, Any]:
    """A run's value of every axis field (its columns in every table)."""
    return {
        **{n: getattr(dataset, n) for n in DATASET_AXES},
        **{n: getattr(training, n) for n in TRAINING_AXES},
    }


def point_label(point: Point) -> str:
    """'train_size=1000 lr_max=0.001' ('' for the one point of a grid without axes). A
    float is written as Python's shortest exact form (repr): two values never share a label."""
    return " ".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def varying(values: list[dict[str, Any]]) -> list[str]:
    """The axes whose value differs among runs' `axis_values` (those that name a point)."""
    return [a for a in AXES if len({repr(v.get(a)) for v in values}) > 1]
