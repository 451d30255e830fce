"""The tables of Fig. 9 and Fig. 10 from a sweep's kept nets (`models/`): per (arch, width)
with two kept nets or more, the measured distance between each net's decision boundary and
their average's, and the linear prediction delta (workers.boundaries); and, at the widest
width, each net's output along the gradient direction through a point of the average's
boundary. A sweep with axes has a series per (arch, point), named as in summary.json; its
`arch` column holds that name. Loads the nets and the test inputs (torch, the data): only
when a figure asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from orchestrator.results.figures.boundary import DISTANCE_COLUMNS, PROFILE_COLUMNS
from orchestrator.results.reader import Sweep, UnreadableWeights
from schemas.axes import point_label, varying
from schemas.layout import SweepLayout
from schemas.run import RunSpec
from workers import io
from workers.reduce import series_name

if TYPE_CHECKING:
    import torch

NO_NETS = (
    "needs the trained nets (models/), and this sweep keeps none: its grid set "
    "checkpoint.keep_models: false, or an older version ran it"
)


class NoBoundaries(Exception):
    """Why the boundary figures cannot be drawn for a sweep."""


def kept_runs(layout: SweepLayout, runs: list[RunSpec]) -> list[RunSpec]:
    """The runs of `runs` whose final weights are stored (one listing of models/)."""
    stored = set(io.list_files(layout.models_dir, suffix=".pt"))
    return [r for r in runs if layout.model(r.run_id, *r.key) in stored]


def boundary_tables(layout: SweepLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profile: PROFILE_COLUMNS + arch, width, n_params; distances: DISTANCE_COLUMNS +
    arch, width, n_nets, n_anchors), or NoBoundaries saying why there are none."""
    from workers.boundaries import measure_boundaries  # torch: only for these figures

    sweep = Sweep(layout)
    runs = kept_runs(layout, sweep.runs())
    if not runs:
        raise NoBoundaries(NO_NETS)
    if any(r.n_outputs != 1 for r in runs):
        raise NoBoundaries("is drawn for one output (two labels); this sweep has several")
    # one series per architecture and point of the sweep's axes ("fc5 train_size=500"),
    # as summary.json names them: nets of two points are never averaged together
    moving = varying([r.axis_values for r in runs])
    groups: dict[tuple[str, float], list[RunSpec]] = {}
    for run in runs:
        series = series_name({"arch": run.arch.name, "point": _point(run, moving)})
        groups.setdefault((series, run.width), []).append(run)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        raise NoBoundaries("needs two kept nets of one width or more (an average to compare)")
    inputs: dict[str, torch.Tensor] = {}  # by data: points of a data axis have their own
    rows, profile = [], pd.DataFrame(columns=[*PROFILE_COLUMNS, "arch", "width", "n_params"])
    widest = max(groups, key=lambda k: (groups[k][0].n_params, k[0]))
    for (arch, width), group in sorted(groups.items()):
        loaded = [(r, _net(sweep, r.run_id)) for r in sorted(group, key=lambda r: r.seed)]
        group = [r for r, net in loaded if net is not None]  # an unreadable file: left out
        nets = [net for _, net in loaded if net is not None]
        if len(nets) < 2:
            continue
        data = group[0].dataset.model_dump_json()
        if data not in inputs:
            inputs[data] = sweep.inputs(split="test", run_id=group[0].run_id)
        measured = measure_boundaries(nets, inputs[data])
        n_params = group[0].n_params
        rows.append(
            {"arch": arch, "width": width, "n_params": n_params, "delta": measured.delta,
             "distance": measured.distance, "n_nets": len(nets),
             "n_anchors": measured.n_anchors}
        )  # fmt: skip
        if (arch, width) == widest:
            seeds = sorted(r.seed for r in group)
            profile = pd.DataFrame(
                [
                    {"seed": seed, "t": t, "f": f, "arch": arch, "width": width,
                     "n_params": n_params}
                    for seed, line in zip(seeds, measured.f.tolist(), strict=True)
                    for t, f in zip(measured.t.tolist(), line, strict=True)
                ]
            )  # fmt: skip
    distances = pd.DataFrame(rows, columns=[*DISTANCE_COLUMNS, "arch", "width", "n_nets",
                                            "n_anchors"])  # fmt: skip
    return profile, distances


def _point(run: RunSpec, moving: list[str]) -> str:
    values = run.axis_values
    return point_label({a: values[a] for a in moving})


def _net(sweep: Sweep, run_id: str) -> torch.nn.Module | None:
    try:
        return sweep.model(run_id)
    except UnreadableWeights:  # its weights file is torn or foreign (not its code: that stops)
        return None
