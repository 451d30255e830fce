"""Which runs share a Ray task: `resources.pack` turned into a list of tasks. No torch work.

Packs are trained by `workers.pack`; this module only decides who goes together, from
the grid's `pack` value, the runs' widths and how many tasks the cluster runs at once.
"""

from __future__ import annotations

import math

from schemas.grid import CNNArch, FCArch
from schemas.run import RunSpec
from workers.pack import pack_key, packable


def auto_pack_size(width: float, depth: int, train_size: int, gpu: bool) -> int:
    """The pack size `resources.pack: auto` gives one (arch, width).

    CPU (bench/bench_throughput.py, 1 thread, issue 19's step): a pack of 20 beats a pack
    of one (a run alone) while P * h is small: P = 1000, h = 8: 0.17 vs 0.25 ms per
    run-step early, 0.09 vs 0.31 late; P * h = 20,000 (P = 2500, h = 8; P = 5000, h = 4):
    0.94-1.06x early, 1.5-2.0x late; P * h = 40,000 (P = 10,000, h = 4): 0.86x early,
    1.14x late, no gain; from P * h = 160,000 on a pack is 1.3-2.5x slower (batched
    matmuls of (R, P, h) leave the caches). So pack while P * h <= 25,000. GPU (not
    measured here: no GPU was available): kernel-launch bound, so pack up to 20 runs.
    Either way a pack's activations (about 3 (R, P, h) float64 tensors per layer, kept for
    the backward) stay under 512 MiB."""
    if not gpu and train_size * width > 25_000:
        return 1
    per_run = 3 * train_size * width * depth * 8
    return max(1, min(20, int(512 * 2**20 // max(per_run, 1))))


WIDTH_BAND = 2.0  # `auto` packs widths up to twice the narrowest of their band


def plan_tasks(specs: list[RunSpec], slots: int) -> list[list[RunSpec]]:
    """Split `specs` into tasks; runs that are not packed train alone.

    `pack: k` packs the seeds of a width, at most k per task, split evenly (22 runs by 20
    give 11 + 11). `pack: auto` packs the runs of one arch across its widths, in bands
    whose widest is at most WIDTH_BAND times the narrowest (the padding a narrow run pays
    stays small), each task at most `auto_pack_size` of the band's widest. A band has a
    multiple of the cluster's `slots` tasks (4 runs on 2 cores: 2 packs of 2; 20 runs on
    2 cores: 2 packs of 10, not 1 of 20 that leaves a core idle), and its runs are dealt
    to them in turn, by width, so every task holds a spread of widths and they end
    together."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        pack = spec.resources.pack
        if pack == 1 or not packable(spec) or (pack == "auto" and _auto_size(spec) == 1):
            key = spec.run_id
        else:
            key = pack_key(spec) + ("" if pack == "auto" else f" width {spec.width}")
        groups.setdefault(key, []).append(spec)
    tasks = []
    for group in groups.values():
        pack = group[0].resources.pack
        if pack != "auto":
            tasks += _deal(group, math.ceil(len(group) / pack))
            continue
        for band in _bands(sorted(group, key=lambda s: (s.width, s.seed))):
            n_tasks = math.ceil(len(band) / _auto_size(band[-1]))
            per_slot = max(1, slots)  # a multiple of the slots: every slot gets its part
            tasks += _deal(band, min(len(band), per_slot * math.ceil(n_tasks / per_slot)))
    return tasks


def _auto_size(spec: RunSpec) -> int:
    gpu = spec.resources.num_gpus > 0
    depth = spec.arch.depth if isinstance(spec.arch, FCArch | CNNArch) else 1  # a lone run
    return auto_pack_size(spec.width, depth, spec.dataset.train_size, gpu)


def _bands(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """`runs` (sorted by width) cut where a width passes WIDTH_BAND times its band's first."""
    bands: list[list[RunSpec]] = []
    for spec in runs:
        if bands and spec.width <= WIDTH_BAND * bands[-1][0].width:
            bands[-1].append(spec)
        else:
            bands.append([spec])
    return bands


def _deal(runs: list[RunSpec], n_tasks: int) -> list[list[RunSpec]]:
    return [runs[i::n_tasks] for i in range(n_tasks)]
