"""A user's own net (`kind: module`): the grid's `builder: MODULE:FUNCTION` and its options,
and the facts jamsweep reads from the code at submit (`ModuleFacts`: where the module was
found, the hash of its source, N per width, whether its outputs depend on the batch). The
facts travel in every RunSpec, like a files dataset's: N is in the manifest before anything
trains, the source hash is part of the run id, and no worker probes the module again.
The code itself is imported in one place, `workers.builders`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.errors import JamsweepError
from schemas.strict import Strict, check_no_repeats, check_safe_name

# MODULE:FUNCTION, MODULE dotted (a package's module), as uvicorn's import strings
BUILDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
OWN_PACKAGES = ("schemas", "workers", "orchestrator")  # jamsweep's: a user module may not shadow


def width_key(width: float) -> str:
    """A width as a key of `ModuleFacts.n_params` (as the results' folder names write it)."""
    return str(int(width)) if float(width).is_integer() else repr(float(width))


class ModuleFacts(BaseModel):
    """What the builder's code decides, read once at submit (`workers.builders`). Written by
    one version, read by another: lenient."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    location: str = Field(
        description="The module's file or package folder where it was found (a path of the "
        "machine that submitted; workers look there first, then on their Python path)."
    )
    source_sha256: str = Field(
        description="sha256 of the module's source (every .py file of a package): in the "
        "run id, so editing the model is a changed grid."
    )
    n_params: dict[str, int] = Field(
        description="N per width (width_key): parameters with ndim >= 2, or all with `count: all`."
    )
    kept: str | None = Field(
        default=None,
        description="The sweep's own copy of the source (SWEEP/code/SHA16, written at "
        "submit): where workers, `refine` and `open_sweep().model()` look when the module is "
        "not at `location`. None in sweeps submitted before copies were kept.",
    )
    batch_mixing: str | None = Field(
        default=None,
        description="Why the module's outputs in train mode depend on the rest of the batch "
        "(a BatchNorm, a Dropout, or the probe's numbers), or None: then violator-only "
        "steps are exact; otherwise every step is a plain full-batch step.",
    )


class ModuleArch(Strict):
    """Your own torch.nn.Module: `FUNCTION(width, d_in, n_out, **options)` from MODULE
    (beside the grid file, or on the Python path) returns it (docs/your-data.md)."""

    kind: Literal["module"] = Field(description="Your own net, built by `builder`.")
    name: str = Field(description="Label of this architecture in results (arch=NAME).")
    builder: str = Field(
        description="MODULE:FUNCTION; MODULE is found beside the grid file first, then on "
        "the Python path. FUNCTION(width, d_in, n_out, **options) -> torch.nn.Module."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the builder (JSON values)."
    )
    widths: list[float] = Field(
        description="Widths to sweep, passed to the builder as the first argument (an int "
        "when integral)."
    )
    count: Literal["weights", "all"] = Field(
        default="weights",
        description="N: weights (parameters with ndim >= 2, as the paper counts) or all "
        "parameters.",
    )
    resolved: ModuleFacts | None = Field(
        default=None,
        description="Set by jamsweep at submit (source hash, N per width, ...); never "
        "written in a grid.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_safe_name(value, "architecture name")

    @field_validator("builder")
    @classmethod
    def _valid_builder(cls, value: str) -> str:
        if not BUILDER.match(value):
            raise ValueError(
                f"builder {value!r} is not MODULE:FUNCTION (e.g. lab_nets:build, or "
                "mylab.nets:build for a package's module)"
            )
        top = value.split(":")[0].split(".")[0]
        if top in OWN_PACKAGES:
            raise ValueError(
                f"builder {value!r}: a module named {top!r} would shadow jamsweep's own "
                "package of that name; rename your module"
            )
        return value

    @field_validator("widths")
    @classmethod
    def _valid_widths(cls, widths: list[float]) -> list[float]:
        if not widths:
            raise ValueError("widths is empty: list at least one width")
        bad = [w for w in widths if not math.isfinite(w) or w <= 0]
        if bad:
            raise ValueError(f"widths must be finite and > 0; got {bad}")
        return check_no_repeats(widths)

    @property
    def module_name(self) -> str:
        return self.builder.split(":")[0]

    @property
    def function_name(self) -> str:
        return self.builder.split(":")[1]

    def n_params(self, width: float) -> int:
        """N at `width`, as counted at submit from the built module."""
        if self.resolved is None or width_key(width) not in self.resolved.n_params:
            raise JamsweepError(
                f"architecture {self.name!r}: N at width {width:g} was not counted; a module's "
                "N is counted from the built net at submit (workers.builders.resolve_modules)"
            )
        return self.resolved.n_params[width_key(width)]
