"""One training (`RunSpec`), its lifecycle (`RunStatus`) and its tracked record (`RunRecord`)."""

from __future__ import annotations

import enum
import hashlib
import json
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.axes import axis_values
from schemas.datasets import IMAGE_SHAPES, LABEL_MAPS, N_OUTPUTS, DataFacts
from schemas.errors import JamsweepError
from schemas.modules import ModuleFacts
from schemas.specs import (
    DATA_LOCATION,
    ArchSpec,
    CheckpointSpec,
    DatasetSpec,
    ResourceSpec,
    TrainingSpec,
)

__all__ = ["DATA_LOCATION", "InvalidTransition", "RunRecord", "RunSpec", "RunStatus"]


class RunSpec(BaseModel):
    """Everything one worker needs to train one (architecture, width, seed)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sweep: str
    arch: ArchSpec
    width: float
    seed: int
    dataset: DatasetSpec
    training: TrainingSpec
    resources: ResourceSpec = ResourceSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()

    @cached_property
    def run_id(self) -> str:
        """Hash of what determines the result: not the sweep, paths or resources. Fields
        left at their defaults are left out, so adding a field (with a default that keeps
        the old behaviour) does not change the ids of existing runs. A files dataset enters
        by its fields and its resolved facts (the fingerprint of the values read), not by
        where its files are: moving or converting them keeps the runs."""
        identity = {
            "arch": self.arch.model_dump(
                mode="json", exclude={"widths", "resolved"}, exclude_defaults=True
            ),
            "width": self.width,
            "seed": self.seed,
            "dataset": self.dataset.model_dump(
                mode="json", exclude=set(DATA_LOCATION), exclude_defaults=True
            ),
            "training": self.training.model_dump(mode="json", exclude_defaults=True),
        }
        if self.arch.kind == "module":  # the code decides the result: its hash, not its path
            identity["module_sha256"] = self.module_facts.source_sha256
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def n_outputs(self) -> int:
        """1 for two label values (or parity), K for K classes."""
        if self.dataset.name == "files":
            return self.facts.n_outputs
        return N_OUTPUTS[self.dataset.name]

    @property
    def d_in(self) -> int:
        """The size of the inputs' second dimension, what a net is built for (as x.shape[1]
        of the worker's data): the features of flat data (pca_dim, or the files' resolved
        d), the channels of images."""
        if self.dataset.name == "files":
            return self.facts.d_in
        if self.dataset.name in IMAGE_SHAPES:
            return IMAGE_SHAPES[self.dataset.name][0]
        assert self.dataset.pca_dim is not None  # the *_pca sets require it
        return self.dataset.pca_dim

    @property
    def label_map(self) -> str:
        """How the dataset's labels became the targets (manifest.parquet, `jamsweep show`)."""
        if self.dataset.name == "files":
            return self.facts.label_map
        return LABEL_MAPS[self.dataset.name]

    @property
    def facts(self) -> DataFacts:
        """The files dataset's facts, resolved at submit (workers.data.check_dataset)."""
        if self.dataset.resolved is None:
            raise JamsweepError(
                "this files dataset was not resolved: its facts (d_in, labels) are read at "
                "submit; build RunSpecs from GridSpec.with_data(check_dataset(...))"
            )
        return self.dataset.resolved

    @property
    def module_facts(self) -> ModuleFacts:
        """A `kind: module` architecture's facts, resolved at submit (workers.builders)."""
        if self.arch.kind != "module" or self.arch.resolved is None:
            raise JamsweepError(
                f"architecture {self.arch.name!r} is not a resolved module: its facts (N, "
                "source hash) are read at submit; build RunSpecs from "
                "GridSpec.with_models(resolve_modules(...))"
            )
        return self.arch.resolved

    @property
    def n_params(self) -> int:
        """N (weights only): an FC net sees d_in inputs, a CNN the dataset's images, a
        module's N was counted from the built net at submit."""
        if self.arch.kind == "module":
            return self.arch.n_params(self.width)
        if self.arch.kind == "cnn":
            channels, side, _ = IMAGE_SHAPES[self.dataset.name]
            return self.arch.n_params(self.width, channels, self.n_outputs, image_size=side)
        return self.arch.n_params(self.width, self.d_in, self.n_outputs)

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.arch.name, self.width, self.seed)

    @property
    def axis_values(self) -> dict[str, Any]:
        """Its value of every sweep axis field (schemas.axes.AXES): its columns."""
        return axis_values(self.dataset, self.training)


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # was running when its driver or cluster went away; resumes from its checkpoint when
    # the grid is submitted again (a new round makes a fresh record)
    INTERRUPTED = "interrupted"

    def is_terminal(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED)

    def is_active(self) -> bool:
        """Pending or running: the round that holds it may still move it."""
        return self in (RunStatus.PENDING, RunStatus.RUNNING)

    def can_become(self, new: RunStatus) -> bool:
        """Any move but out of a terminal state (a resubmission makes a fresh record)."""
        return not self.is_terminal()


class InvalidTransition(RuntimeError):
    """A run was asked to leave a terminal state: a bug, not a user error."""


class RunRecord(BaseModel):
    """What the tracker knows of one run. Lenient: one version writes, another reads."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    arch: str
    width: float
    seed: int
    n_params: int
    state: RunStatus = RunStatus.PENDING
    attempts: int = 0
    node: str | None = None
    error: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def moved_to(self, new: RunStatus, **changes: object) -> RunRecord:
        if not self.state.can_become(new):
            raise InvalidTransition(f"run {self.run_id}: {self.state.value} -> {new.value}")
        return self.model_copy(update={"state": new, **changes})
