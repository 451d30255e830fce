"""A round's progress as counts: what the driver hands to an optional `progress` callback
(orchestrator.sweep.submit, refine) about once a second, and what the CLI draws as a bar.
Plain data, no printing: a notebook user may pass any callable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.run import RunStatus


@dataclass(frozen=True)
class Progress:
    """Counts of one round of a sweep. `already_done` runs finished before the round began;
    `done` includes them. Rate and ETA count this round's runs only."""

    sweep: str
    total: int  # runs of the sweep
    already_done: int
    done: int
    failed: int
    cancelled: int
    running: int
    elapsed_s: float  # since the round's runs were started

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def remaining(self) -> int:
        return self.total - self.finished

    @property
    def rate_per_min(self) -> float | None:
        """Runs of this round that ended, per minute (None before the first one)."""
        ended = self.finished - self.already_done
        if ended <= 0 or self.elapsed_s <= 0:
            return None
        return 60.0 * ended / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Seconds to go at the rate so far (None before the first run ends)."""
        rate = self.rate_per_min
        if rate is None:
            return None
        return 60.0 * self.remaining / rate

    def line(self) -> str:
        """One plain line, for logs: counts, rate and ETA."""
        rate = self.rate_per_min
        rate_text = f"{rate:.1f} runs/min" if rate is not None else "- runs/min"
        return (
            f"progress {self.sweep}: {self.finished}/{self.total} finished ({self.done} done, "
            f"{self.failed} failed, {self.cancelled} cancelled), {self.running} running, "
            f"{rate_text}, ETA {format_duration(self.eta_s)}"
        )


ProgressHook = Callable[[Progress], None]


def format_duration(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12s'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class RoundCounter:
    """What the driver counts while it waits: the outcomes its task refs gave, and the
    tracker's running count. Reports to `hook` (if any) when asked."""

    def __init__(self, sweep: str, total: int, already_done: int, hook: ProgressHook | None):
        self.sweep, self.total, self.already_done, self.hook = sweep, total, already_done, hook
        self.ended = {RunStatus.DONE: 0, RunStatus.FAILED: 0, RunStatus.CANCELLED: 0}
        self.started = time.monotonic()

    def ended_one(self, state: RunStatus) -> None:
        self.ended[state] = self.ended.get(state, 0) + 1

    def report(self, running: Callable[[], int]) -> None:
        """Hand the counts to the hook; `running` is asked only when there is a hook."""
        if self.hook is None:
            return
        self.hook(
            Progress(
                sweep=self.sweep,
                total=self.total,
                already_done=self.already_done,
                done=self.already_done + self.ended[RunStatus.DONE],
                failed=self.ended[RunStatus.FAILED],
                cancelled=self.ended[RunStatus.CANCELLED],
                running=running(),
                elapsed_s=time.monotonic() - self.started,
            )
        )
