"""Where a sweep's driver runs, chosen once from the address: `LocalExecutor` drives the
runs from this process (an embedded Ray when no address is given, else `auto`, `ray://...`
or HOST:PORT), `JobsExecutor` (orchestrator.jobs.executor) hands them to a cluster's Jobs API
(`http://HOST:8265`). Both offer submit, status, cancel and refine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from orchestrator.cluster import lease
from orchestrator.cluster.driver import drive
from orchestrator.cluster.progress import ProgressHook
from orchestrator.reports import Echo, RefineReport, SubmitReport, SweepStatus
from orchestrator.results.reduction import reduce
from orchestrator.results.store import (
    ORIGIN_REFINE,
    absolute,
    check_grid_change,
    dropped_runs,
    existing,
    finished_and_broken,
    manifest_table,
    planned_runs,
    refuse_axes_in_hive,
    run_points,
    runs_where,
    set_aside,
    status_from_files,
)
from schemas.errors import JamsweepError
from schemas.grid import GridSpec
from schemas.layout import FLAT, SweepLayout, default_results
from schemas.run import RunRecord
from workers import io


class Executor(Protocol):
    def submit(
        self,
        grid: str | Path,
        spec: GridSpec,
        text: str,
        *,
        results: str | None,
        force: bool,
        dry_run: bool,
        detach: bool,
        echo: Echo,
        progress: ProgressHook | None = None,
    ) -> SubmitReport: ...

    def status(
        self, sweep: str, results: str, where: dict[str, list[str]] | None = None
    ) -> SweepStatus: ...

    def cancel(self, sweep: str, results: str) -> list[str]: ...

    def watch(self, sweep: str, results: str, every_s: float) -> Iterator[SweepStatus]: ...

    def refine(
        self, sweep: str, results: str, *, echo: Echo, **options: object
    ) -> RefineReport: ...


def is_jobs_address(address: str | None) -> bool:
    return address is not None and address.startswith(("http://", "https://"))


def executor_for(
    address: str | None, *, num_cpus: int | None = None, shared_fs: bool = False
) -> Executor:
    """The executor of `address` (None: this machine, an embedded Ray)."""
    if is_jobs_address(address):
        from orchestrator.jobs.executor import JobsExecutor  # the Jobs client imports ray

        return JobsExecutor(address or "", shared_fs=shared_fs)
    return LocalExecutor(address, num_cpus=num_cpus)


def round_going(st: SweepStatus) -> bool:
    """Whether a driver is still at work on the sweep with runs left to end."""
    return st.alive and any(r.state.is_active() for r in st.records)


def _until_over(look: Callable[[], SweepStatus], every_s: float) -> Iterator[SweepStatus]:
    st = look()
    yield st
    while round_going(st):
        time.sleep(every_s)
        st = look()
        yield st


class LocalExecutor:
    """This process is the driver: of an embedded Ray (`address` None) or of a cluster."""

    def __init__(self, address: str | None, *, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus

    def submit(
        self,
        grid: str | Path,
        spec: GridSpec,
        text: str,
        *,
        results: str | None,
        force: bool,
        dry_run: bool,
        detach: bool,
        echo: Echo,
        progress: ProgressHook | None = None,
    ) -> SubmitReport:
        # absolute: Ray workers and the tracker resolve paths from their own folders
        layout = SweepLayout(absolute(results or spec.results or default_results()), spec.sweep)
        from workers.data import check_dataset  # imports torch: only when submitting

        # A files dataset's facts (d_in, labels, fingerprint) are read here, once, and
        # travel in every RunSpec: N is in the manifest before anything trains.
        spec = spec.with_data(check_dataset(spec.dataset))
        from workers.builders import keep_code, with_kept_code, with_modules

        spec = with_kept_code(with_modules(spec, grid), layout.code_dir)
        replace = check_grid_change(layout, spec, force)
        # a new sweep (or one started afresh) keeps a typed file per run (layout 2)
        layout = layout.settled(new_sweep=replace or not io.exists(layout.grid_yaml))
        refuse_axes_in_hive(layout, spec)
        grid_runs, refined = planned_runs(spec, layout) if not replace else (spec.expand(), [])
        specs = grid_runs + refined
        done_ids, broken = (set(), []) if replace else finished_and_broken(layout, specs)
        todo = [s for s in specs if s.run_id not in done_ids]
        report = SubmitReport(spec.sweep, layout.results, len(specs), len(specs) - len(todo))
        report.dropped = [] if replace else dropped_runs(layout, specs)
        report.broken, report.replaced = broken, replace
        if dry_run:
            io.check_creatable(layout.results)
            report.dry_run, report.planned = True, todo
            return report
        io.check_writable(layout.results)
        with lease.acquire(layout, lease.Holder.this_process(self.address)) as held:

            def write_sweep() -> None:  # the grid as submitted, and its runs
                if replace:
                    moved = io.move_aside(layout.root)
                    echo(f"sweep {spec.sweep}: the previous grid's results were moved to {moved}")
                if layout.tables_layout == FLAT:
                    io.write_text(layout.layout_json, layout.layout_text())
                io.write_text(layout.grid_yaml, text)
                keep_code(spec)
                runs = [manifest_table(grid_runs), manifest_table(refined, ORIGIN_REFINE)]
                io.write_table(layout.manifest, pa.concat_tables(runs))

            if broken:
                moved = set_aside(layout, broken)
                echo(
                    f"sweep {spec.sweep}: {len(broken)} finished run(s) had result files that "
                    f"cannot be read; they were moved to {moved} and are trained again"
                )
            if report.dropped:
                echo(
                    f"sweep {spec.sweep}: {len(report.dropped)} run(s) the grid no longer names "
                    "leave the manifest and the curves (their files stay)"
                )
            if not todo:
                write_sweep()
                echo(f"sweep {spec.sweep}: all {len(specs)} runs already done -> {layout.root}")
                report.status = status_from_files(layout)
            else:
                from orchestrator.cluster.backend import RayBackend

                with RayBackend(self.address, num_cpus=self.num_cpus) as backend:
                    backend.check_resources([s.resources for s in todo])
                    backend.check_results_shared(layout)
                    write_sweep()
                    echo(
                        f"sweep {spec.sweep}: {len(specs)} runs, {report.n_already_done} already "
                        f"done, {len(todo)} to run -> {layout.root}"
                    )
                    report.status = drive(
                        backend, layout, specs, todo, done_ids, held, echo=echo, progress=progress
                    )
            if not report.status.failed and report.status.counts["cancelled"] == 0:
                held.check()
                report.curves = reduce(spec.sweep, results=layout.results)
        return report

    def status(
        self, sweep: str, results: str, where: dict[str, list[str]] | None = None
    ) -> SweepStatus:
        """Live from the tracker when the address reaches a cluster that has one; else from
        the files (see store.status_from_files); only the runs `where` selects."""
        layout = existing(sweep, absolute(results))
        live = self._live_records(layout) if self.address is not None else None
        if live is not None:
            st = SweepStatus(sweep, live, "live", alive=True)
        else:
            st = status_from_files(layout)
        st.points = run_points(layout)
        return st if where is None else st.where(runs_where(layout, where))

    def watch(self, sweep: str, results: str, every_s: float = 2.0) -> Iterator[SweepStatus]:
        """The sweep's status every `every_s` until its round ends (the last one included).
        With an address, through ONE connection to the cluster for the whole watch (not one
        per look): from its live tracker while there is one, then from the files."""
        layout = existing(sweep, absolute(results))
        if self.address is None:
            yield from _until_over(lambda: status_from_files(layout), every_s)
            return
        from orchestrator.cluster.backend import RayBackend

        with RayBackend(self.address) as backend:

            def look() -> SweepStatus:
                tracker = backend.existing_tracker(layout)
                if tracker is not None:
                    return SweepStatus(sweep, tracker.snapshot(), "live", alive=True)
                return status_from_files(layout)

            yield from _until_over(look, every_s)

    def _live_records(self, layout: SweepLayout) -> list[RunRecord] | None:
        """The live tracker's records, or None when the cluster has no tracker of this sweep
        (its round is over, or ran elsewhere). A cluster that cannot be reached is an error,
        not a silent fall back to the files: the address was asked for."""
        from orchestrator.cluster.backend import RayBackend

        with RayBackend(self.address) as backend:
            tracker = backend.existing_tracker(layout)
            return None if tracker is None else tracker.snapshot()

    def cancel(self, sweep: str, results: str) -> list[str]:
        """Ask the live tracker to cancel every unfinished run; returns their ids."""
        from orchestrator.cluster.backend import RayBackend

        layout = existing(sweep, absolute(results))
        with RayBackend(self.address) as backend:
            tracker = backend.existing_tracker(layout)
            if tracker is None:
                raise JamsweepError(
                    f"sweep {sweep!r} is not running on the cluster at {self.address!r}"
                )
            return tracker.cancel()

    def refine(self, sweep: str, results: str, *, echo: Echo, **options: object) -> RefineReport:
        from orchestrator.cluster.refine import refine_here

        return refine_here(
            sweep,
            results=results,
            address=self.address,
            num_cpus=self.num_cpus,
            echo=echo,
            **options,  # type: ignore[arg-type]
        )
