"""`JobsExecutor`: hand a sweep to a cluster as a Ray job (`--address http://HOST:8265`).

The job runs `jamsweep submit grid.yaml --address auto` on the cluster: that driver, not
this process, owns the runs, so closing the laptop or killing this CLI leaves the sweep
going. The project's three packages travel with the job (runtime_env py_modules); its
dependencies (torch, ray, pyarrow, ...) must be installed on the cluster's nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orchestrator
import schemas
import workers
from orchestrator.cluster import lease
from orchestrator.cluster.progress import ProgressHook
from orchestrator.jobs.backend import TERMINAL_JOB_STATES, JobsClient
from orchestrator.reports import Echo, RefineReport, SubmitReport, SweepStatus
from orchestrator.results.store import check_grid_change, refuse_axes_in_hive
from schemas.axes import DEFAULT_MAX_RUNS
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, ModuleArch, parse_grid
from schemas.layout import RESULTS_ENV, SweepLayout
from schemas.run import RunRecord
from workers import io


class JobsExecutor:
    """The cluster behind a Jobs API address runs the driver; this process only submits,
    follows and asks (through short jobs for what needs the live tracker)."""

    def __init__(self, address: str, *, shared_fs: bool = False) -> None:
        self.address = address
        self.shared_fs = shared_fs

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
        progress: ProgressHook | None = None,  # a Ray job reports through `echo`
    ) -> SubmitReport:
        location = cluster_results(parse_grid(text, source=str(grid)), results, self.shared_fs)
        layout = SweepLayout(location, spec.sweep)
        report = SubmitReport(spec.sweep, location, len(spec.expand()), 0)
        spec = _checks_that_can_run_here(spec, grid, layout, force)  # with its data's facts
        if dry_run:
            report.dry_run, report.planned = True, spec.expand()
            return report
        client = JobsClient(self.address)
        self._refuse_running_job(client, spec.sweep, location)
        staging = Path(tempfile.mkdtemp(prefix="jamsweep-job-"))
        try:
            shutil.copyfile(grid, staging / "grid.yaml")  # verbatim
            ship_modules(spec, grid, staging)  # the user's nets, beside it as found here
            # the limit was checked here; the job's own check must not refuse it again
            runs = max(spec.n_runs, DEFAULT_MAX_RUNS)
            args = ["submit", "grid.yaml", "--results", location, "--max-runs", str(runs)]
            report.job_id = self._start_job(
                client, spec.sweep, location, args + (["--force"] if force else []), staging
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        echo(f"sweep {spec.sweep}: submitted as Ray job {report.job_id} to {self.address}")
        report.job_state = (
            client.status(report.job_id) if detach else follow(client, report.job_id, echo)
        )
        return report

    def status(
        self, sweep: str, results: str, where: dict[str, list[str]] | None = None
    ) -> SweepStatus:
        """`jamsweep status --json` run on the cluster (live tracker, else its files), with
        `--where` applied there, where the manifest is."""
        selects = [f"--where={name}={','.join(values)}" for name, values in (where or {}).items()]
        args = ["status", sweep, "--json", "--results", results, *selects]
        log = run_cli_job(self.address, args)
        start, end = log.find("{"), log.rfind("}")
        if start < 0:
            raise JamsweepError(
                f"the cluster at {self.address} gave no status for {sweep!r}: {log[-300:]}"
            )
        return _status_of(sweep, json.loads(log[start : end + 1]))

    def watch(self, sweep: str, results: str, every_s: float = 2.0) -> Iterator[SweepStatus]:
        """ONE short job on the cluster, `jamsweep status SWEEP --watch --json --address
        auto`, prints the status as JSON lines until the round ends; its log is followed
        here (not a job per look). The job is stopped if this watch ends first (Ctrl-C)."""
        client = JobsClient(self.address)
        args = ["status", sweep, "--watch", "--json", "--results", results]
        args += ["--every", f"{every_s:g}"]
        command = ["python", "-m", "orchestrator.cli", *args, "--address", "auto"]
        job_id = client.submit(
            shlex.join(command),
            {"py_modules": package_dirs()},
            f"jamsweep-watch-{uuid.uuid4().hex[:8]}",
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            try:
                follow(client, job_id, lines.put)
            finally:
                lines.put(None)  # the job ended (or could not be followed)

        threading.Thread(target=pump, name="jamsweep-watch", daemon=True).start()
        ended = False
        try:
            while (line := lines.get()) is not None:
                if line.startswith("{"):
                    yield _status_of(sweep, json.loads(line))
            ended = True
        finally:
            if not ended:
                with contextlib.suppress(JamsweepError):
                    client.stop(job_id)
        if client.status(job_id) != "SUCCEEDED":
            raise JamsweepError(f"the watch job {job_id} on {self.address} did not succeed")

    def cancel(self, sweep: str, results: str) -> list[str]:
        log = run_cli_job(self.address, ["cancel", sweep, "--results", results])
        return [line.split()[-1] for line in log.splitlines() if line.startswith("cancelled run ")]

    def refine(self, sweep: str, results: str, *, echo: Echo, **options: object) -> RefineReport:
        """`jamsweep refine` run on the cluster as a Ray job, followed until it ends."""
        args = ["refine", sweep, "--results", results, "--n-widths", str(options["n_widths"])]
        for flag, key in (("--seeds", "seeds"), ("--arch", "arch")):
            if options.get(key) is not None:
                args += [flag, str(options[key])]
        if options.get("dry_run"):
            args.append("--dry-run")
        client = JobsClient(self.address)
        self._refuse_running_job(client, sweep, results)
        staging = Path(tempfile.mkdtemp(prefix="jamsweep-job-"))
        try:
            job_id = self._start_job(client, sweep, results, args, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        echo(f"sweep {sweep}: refining as Ray job {job_id} on {self.address}")
        state = follow(client, job_id, echo)
        if state != "SUCCEEDED":
            raise JamsweepError(f"the refine job {job_id} ended {state}; see its log above")
        return RefineReport(sweep, {}, {}, [], job_id=job_id)

    def _refuse_running_job(self, client: JobsClient, sweep: str, location: str) -> None:
        running = client.running_jobs({"jamsweep_sweep": sweep, "jamsweep_results": location})
        if running:
            raise JamsweepError(
                f"sweep {sweep!r} in {location} is already being run by Ray job "
                f"{running[0]} on {self.address}; wait for it (jamsweep status {sweep} "
                f"--address {self.address} --results {location}) or cancel it first"
            )

    def _start_job(
        self, client: JobsClient, sweep: str, location: str, args: list[str], staging: Path
    ) -> str:
        """`jamsweep ARGS --address auto` as a Ray job that carries the project's code.

        The driver does not stand in Ray's working_dir, which carries `staging` (the grid):
        Ray may remove or unpack that folder again while the job runs (seen when another
        node of the machine set up the same runtime env: the driver's cwd vanished and the
        job ended FAILED after every run had finished). The job copies the staged files to a
        fresh folder of its own, stands there, and loads all of the project's code at start
        (JAMSWEEP_JOB_ID: orchestrator/cli/__main__.py), so nothing it needs later lives in
        a folder it does not own."""
        submission_id = f"jamsweep-{sweep}-{uuid.uuid4().hex[:8]}"
        command = ["python", "-m", "orchestrator.cli", *args, "--address", "auto"]
        entrypoint = (
            'own="$(mktemp -d -t jamsweep-job-XXXXXX)" && cp -R . "$own" && cd "$own" && exec '
            + shlex.join(command)
        )
        runtime_env = {
            "working_dir": str(staging),
            "py_modules": package_dirs(),
            "env_vars": {"JAMSWEEP_JOB_ID": submission_id},
        }
        metadata = {"jamsweep_sweep": sweep, "jamsweep_results": location}
        return client.submit(entrypoint, runtime_env, submission_id, metadata)


def _status_of(sweep: str, answer: dict) -> SweepStatus:
    """A SweepStatus from `jamsweep status --json`'s answer."""
    runs = answer["runs"]
    records = [RunRecord.model_validate({k: v for k, v in r.items() if k != "point"}) for r in runs]
    points = {r["run_id"]: r["point"] for r in runs if r.get("point")}
    alive = bool(answer.get("alive", False))
    return SweepStatus(sweep, records, answer.get("source", "live"), alive, points)


def cluster_results(raw: GridSpec, results: str | None, shared_fs: bool) -> str:
    """Where the cluster writes, checked before anything is sent: every path handed to a
    cluster must mean the same on its nodes as here. `raw` is the grid as written (its
    paths not resolved against this machine's folders). Raises JamsweepError naming each
    path that would not."""
    location = results or raw.results or os.environ.get(RESULTS_ENV)
    problems = []
    if location is None:
        problems.append("no results location: the default ./results is a folder of this machine")
    else:
        problems += _path_problem("results", location, shared_fs)
    for field in ("root", "train", "test"):  # the data: a folder, or a files dataset's files
        if (path := getattr(raw.dataset, field)) is not None:
            problems += _path_problem(f"dataset.{field}", path, shared_fs)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise JamsweepError(
            f"a sweep sent to a cluster must name paths that every node sees:\n{listed}\n"
            "Pass --results s3://BUCKET/PREFIX (or gs://...), or an absolute path on a "
            "filesystem mounted at the same place on every node together with --shared-fs; "
            "give dataset.root, dataset.train and dataset.test as object-store URIs or such "
            "absolute paths (with --shared-fs)"
        )
    assert location is not None
    return location


def _path_problem(what: str, path: str, shared_fs: bool) -> list[str]:
    if "://" in path and not path.startswith("file://"):
        return []  # an object store: the same for every node
    local = path.removeprefix("file://")
    if not Path(local).is_absolute():
        return [f"{what} {path!r} is relative: it would be resolved on this machine"]
    if not shared_fs:
        return [
            f"{what} {path!r} is a folder of this machine; with --shared-fs you declare that "
            "every node mounts it at the same path"
        ]
    return []


def follow(client: JobsClient, job_id: str, echo: Echo, poll_s: float = 1.0) -> str:
    """Print the job's log as it grows until the job ends; return its final state.

    The log streams (`JobsClient.tail`); where it cannot, or the stream breaks, the rest
    of the log is polled every `poll_s` and printed from where the stream stopped."""
    shown = 0  # characters of the log printed

    def echo_line(line: str) -> None:
        nonlocal shown
        shown += len(line) + 1
        echo(line)

    with contextlib.suppress(RuntimeError):  # no stream: poll below
        client.tail(job_id, echo_line)
    while True:
        state = client.status(job_id)
        text = client.logs(job_id)  # read after the state: a final state has its whole log
        for line in text[shown:].splitlines():
            echo_line(line)
        shown = max(shown, len(text))
        if state in TERMINAL_JOB_STATES:
            return state
        time.sleep(poll_s)


def _checks_that_can_run_here(
    spec: GridSpec, grid: str | Path, layout: SweepLayout, force: bool
) -> GridSpec:
    """What this machine can check before the cluster sees the sweep: the data when its
    root or files are visible here (a files dataset's URIs are read from here too), the
    results location and its grid when they are; the user's modules (found, imported and,
    when the data's facts are known, built and counted). Returns the grid with the facts
    read (the cluster's driver reads them again, where the runs start)."""
    from workers.builders import find_module, import_builder, with_modules
    from workers.data import check_dataset

    data = spec.dataset
    files = [p for p in (data.train, data.test) if p is not None]
    root_here = data.root is None or Path(data.root).exists()
    if root_here and all("://" in p or Path(p).exists() for p in files):
        spec = spec.with_data(check_dataset(data))
    if data.name != "files" or spec.dataset.resolved is not None:
        spec = with_modules(spec, grid)
    else:  # d_in is not known here: the cluster's driver builds and counts them
        for arch in spec.architectures:
            if isinstance(arch, ModuleArch):
                import_builder(arch, find_module(arch, Path(grid).resolve().parent))
    if io.is_local(layout.results) and Path(layout.results.removeprefix("file://")).exists():
        io.check_writable(layout.results)
        replace = check_grid_change(layout, spec, force)
        refuse_axes_in_hive(layout.settled(replace or not io.exists(layout.grid_yaml)), spec)
        lease.refuse_if_held(layout)
    return spec


def ship_modules(spec: GridSpec, grid: str | Path, staging: Path) -> None:
    """Copy each `kind: module` architecture's module (its file, or its top-level package)
    into the job's working_dir beside grid.yaml, where the cluster's driver finds it and
    from where Ray gives it to every worker. A module installed in site-packages is not
    copied: the cluster's nodes must have it installed (the source hash checks they do)."""
    from workers.builders import find_module

    for arch in spec.architectures:
        if not isinstance(arch, ModuleArch):
            continue
        found = find_module(arch, Path(grid).resolve().parent)
        if "site-packages" in found.location.parts or "dist-packages" in found.location.parts:
            continue
        target = staging / found.location.name
        if found.location.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(found.location, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copyfile(found.location, target)


def package_dirs() -> list[str]:
    """The folders of the project's three packages, shipped with every job."""
    return [str(Path(m.__path__[0])) for m in (schemas, workers, orchestrator)]


def run_cli_job(address: str, args: list[str], timeout_s: float = 120) -> str:
    """Run `jamsweep ARGS --address auto` on the cluster as a short job; return its log.

    For what needs a driver on the cluster (talking to the live tracker) when all this
    machine can reach is the Jobs API."""
    client = JobsClient(address)
    command = ["python", "-m", "orchestrator.cli", *args, "--address", "auto"]
    runtime_env = {"py_modules": package_dirs()}
    job_id = client.submit(shlex.join(command), runtime_env, f"jamsweep-cli-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + timeout_s
    while client.status(job_id) not in TERMINAL_JOB_STATES:
        if time.monotonic() > deadline:
            client.stop(job_id)
            break
        time.sleep(0.5)
    logs = client.logs(job_id)
    if client.status(job_id) != "SUCCEEDED":
        last = [line for line in logs.splitlines() if line.strip()][-1:] or ["no output"]
        raise JamsweepError(f"`jamsweep {' '.join(args)}` failed on the cluster: {last[0]}")
    return logs
