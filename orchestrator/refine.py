"""Adaptive search for N*: which widths to add between the two that bracket it (pure).

Bisection on the width: the new widths split the bracket (w_lo, w_hi) evenly, each moved to
the nearest width that gives a number of weights N not yet in the sweep, because for FC
nets N only changes when h crosses a multiple of 1/L (layer i has floor(h + 1 - (i+1)/L)
units), and for CNNs the channel count is an integer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from schemas.errors import JamsweepError
from schemas.run import RunSpec


def width_step(spec: RunSpec) -> float:
    """The finest change of width that can change N: 1/L for FC nets, 1 channel for CNNs."""
    return 1.0 / spec.arch.depth if spec.arch.kind == "fc" else 1.0


def candidate_widths(
    lo: float, hi: float, step: float, n_params: Callable[[float], int]
) -> dict[int, float]:
    """N -> the smallest width lo + j*step (j >= 1, < hi) that gives it, for every N strictly
    between those of lo and hi. Widths are rounded to 6 decimals, so folder names stay short."""
    out: dict[int, float] = {}
    n_lo, n_hi = n_params(lo), n_params(hi)
    j = 1
    while (w := round(lo + j * step, 6)) < hi:
        n = n_params(w)
        if n not in (n_lo, n_hi) and n not in out:
            out[n] = w
        j += 1
    return out


def propose_widths(
    lo: float,
    hi: float,
    k: int,
    *,
    step: float,
    n_params: Callable[[float], int],
    existing: Iterable[int] = (),
) -> list[float]:
    """Up to k widths inside (lo, hi), evenly spread, each with an N the sweep does not have.

    Fewer than k when the bracket holds fewer distinct new N; JamsweepError when it holds
    none (then N* is known to one step of N, and more seeds, not widths, would help)."""
    if k < 1:
        raise JamsweepError(f"--n-widths must be at least 1, not {k}")
    if not lo < hi:
        raise JamsweepError(f"the bracket of N* must have lo < hi, got ({lo:g}, {hi:g})")
    taken = set(existing)
    free = sorted(w for n, w in candidate_widths(lo, hi, step, n_params).items() if n not in taken)
    if not free:
        raise JamsweepError(
            f"no width between {lo:g} and {hi:g} gives a new number of weights N: N* is located "
            "to the resolution of the architecture; add seeds there instead (--seeds)"
        )
    chosen: list[float] = []
    for i in range(1, k + 1):
        target = lo + (hi - lo) * i / (k + 1)
        left = [w for w in free if w not in chosen]
        if not left:
            break
        chosen.append(min(left, key=lambda w: (abs(w - target), w)))
    return sorted(chosen)


def refined_specs(template: RunSpec, widths: list[float], seeds: list[int]) -> list[RunSpec]:
    """RunSpecs of the new runs: the template's arch, data and training at each width, seed.

    The spec is rebuilt by validation (not model_copy), so run_id and n_params follow the
    new width and seed."""
    raw = template.model_dump(mode="json")
    return [RunSpec.model_validate({**raw, "width": w, "seed": s}) for w in widths for s in seeds]
