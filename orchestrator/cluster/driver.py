"""A round: one driver starting a sweep's runs on Ray and waiting for every one of them,
with the tracker recording what happens. No ray here (see orchestrator.cluster.backend)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from orchestrator.cluster.progress import ProgressHook, RoundCounter
from orchestrator.cluster.tracker import pending_record
from orchestrator.reports import Echo, SweepStatus, quiet, width_symbol
from orchestrator.results.store import finished_run_ids
from schemas.axes import point_label, varying
from schemas.layout import SweepLayout
from schemas.run import RunRecord, RunSpec, RunStatus

if TYPE_CHECKING:  # the backend imports ray: only when a sweep runs
    from orchestrator.cluster.backend import RayBackend
    from orchestrator.cluster.lease import Lease


def run_on_ray(
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    held: Lease,
    *,
    address: str | None,
    num_cpus: int | None,
    echo: Echo = quiet,
    progress: ProgressHook | None = None,
) -> SweepStatus:
    """Connect to Ray and drive `todo` (a subset of `specs`) to a terminal state."""
    from orchestrator.cluster.backend import RayBackend

    with RayBackend(address, num_cpus=num_cpus) as backend:
        backend.check_resources([s.resources for s in todo])
        backend.check_results_shared(layout)
        todo_ids = {s.run_id for s in todo}
        finished = finished_run_ids(layout, [s for s in specs if s.run_id not in todo_ids])
        return drive(backend, layout, specs, todo, finished, held, echo=echo, progress=progress)


def drive(
    backend: RayBackend,
    layout: SweepLayout,
    specs: list[RunSpec],
    todo: list[RunSpec],
    finished: set[str],
    held: Lease,
    *,
    echo: Echo = quiet,
    progress: ProgressHook | None = None,
) -> SweepStatus:
    """Start `todo` on the backend and wait for every run; the tracker records everything.
    `finished` holds the ids of the runs of `specs` whose results are already there; `held`
    is the sweep's lease, which this round holds (a lost lease stops the round).

    The driver asks the tracker every second whether the sweep was cancelled. Its own task refs are
    the truth about which runs ended: should the tracker restart (its node died), the
    driver tells the new incarnation every outcome again. Stopped early (Ctrl-C, an
    error), the round is closed with its running runs recorded interrupted.
    """
    ended: dict[str, tuple[str, RunStatus, str | None]] = {}
    records = [_round_record(s, s.run_id in finished) for s in specs]
    tracker = backend.tracker(layout)
    incarnation = tracker.register(records, layout, held.token)
    try:
        # run_id -> the task that runs it (a pack's task runs several)
        waiting = {s.run_id: h for h in backend.start(todo, layout, tracker) for s in h.specs}
        n_done = len(specs) - len(todo)
        counter = RoundCounter(layout.sweep, len(specs), n_done, progress)
        axes = varying([s.axis_values for s in specs])  # named in each run's line
        cancelling = False
        while waiting:
            held.check()
            tasks = list({id(h): h for h in waiting.values()}.values())
            outcomes = backend.wait(tasks, timeout_s=1.0)
            for outcome in outcomes:
                run_id = outcome.spec.run_id
                ended[run_id] = (run_id, outcome.state, outcome.error)
                del waiting[run_id]
                n_done += 1
                counter.ended_one(outcome.state)
                echo(_progress_line(n_done, len(specs), outcome, axes))
            if outcomes:
                tracker.finished([ended[o.spec.run_id] for o in outcomes])
            counter.report(lambda: tracker.counts().get(RunStatus.RUNNING.value, 0))
            cancelled, now = tracker.heartbeat()
            if now != incarnation:  # a restarted tracker: repeat what it may have missed
                incarnation = now
                tracker.finished(list(ended.values()))
            if cancelled and waiting and not cancelling:
                echo(f"sweep {layout.sweep}: cancelled; stopping {len(waiting)} run(s)")
                backend.cancel(list({id(h): h for h in waiting.values()}.values()))
                cancelling = True
    except BaseException:
        _close_interrupted(backend, tracker)
        raise
    try:
        final = {r.run_id: r for r in tracker.close()}
    finally:
        backend.release_tracker(tracker)
    for run_id, state, error in ended.values():  # the driver's refs decide what ended
        rec = final[run_id]
        if rec.state is not state and (state is RunStatus.DONE or not rec.state.is_terminal()):
            final[run_id] = rec.model_copy(update={"state": state, "error": error})
    return SweepStatus(layout.sweep, list(final.values()), "live")


def _close_interrupted(backend: RayBackend, tracker) -> None:  # noqa: ANN001
    """Record the round as interrupted, if the tracker can still be reached, and remove the
    tracker in any case (a tracker that cannot be closed would otherwise outlive the round)."""
    tracker.deadline_s = 5.0  # no long retries on the way out
    try:
        tracker.close(True)
    except Exception:  # the cluster may be gone: the expired lease tells the same
        pass
    finally:
        with contextlib.suppress(Exception):
            backend.release_tracker(tracker)


def _round_record(spec: RunSpec, finished: bool) -> RunRecord:
    """The record a round starts from: done when its results are there, else pending."""
    record = pending_record(spec)
    return record.model_copy(update={"state": RunStatus.DONE}) if finished else record


def _progress_line(n: int, total: int, o, axes: list[str]) -> str:  # noqa: ANN001  (an Outcome)
    s = o.spec
    values = s.axis_values
    at = "".join(f"{part} " for part in [point_label({a: values[a] for a in axes})] if part)
    what = (
        f"{s.arch.name} {at}{width_symbol(s.arch.kind)}={s.width:g} seed={s.seed} (N={s.n_params})"
    )
    if o.state is RunStatus.DONE:
        m = o.metrics
        conv = "converged" if m["converged"] else f"{m['n_unsat']} unsatisfied"
        result = f"{m['steps']} steps, {conv}, test error {m['test_error']:.4f}"
        return f"[{n}/{total}] done      {what}: {result}"
    if o.state is RunStatus.FAILED:
        return f"[{n}/{total}] FAILED    {what}: {o.error}"
    return f"[{n}/{total}] cancelled {what}"
