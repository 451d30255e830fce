"""Hand a sweep to a cluster as a Ray job (`--address http://HOST:8265`).

The job runs `jamsweep submit grid.yaml --address auto` on the cluster: that driver, not
this process, owns the runs, so closing the laptop or killing this CLI leaves the sweep
going. The project's three packages travel with the job (runtime_env py_modules); its
dependencies (torch, ray, pyarrow, ...) must be installed on the cluster's nodes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orchestrator
import schemas
import workers
from orchestrator.backend import TERMINAL_JOB_STATES, JobsClient
from orchestrator.store import check_grid_change, refuse_second_driver
from schemas.errors import JamsweepError
from schemas.grid import GridSpec, parse_grid
from schemas.layout import RESULTS_ENV, SweepLayout
from workers import io


def submit_job(
    grid_path: str | Path,
    spec: GridSpec,
    *,
    results: str | None,
    address: str,
    force: bool,
    detach: bool,
    dry_run: bool,
    shared_fs: bool,
    echo,  # noqa: ANN001
):  # noqa: ANN201  (a SubmitReport)
    from orchestrator.sweep import SubmitReport  # sweep imports this module lazily

    text = Path(grid_path).read_text()
    location = cluster_results(parse_grid(text, source=str(grid_path)), results, shared_fs)
    layout = SweepLayout(location, spec.sweep)
    report = SubmitReport(spec.sweep, location, len(spec.expand()), 0)
    _checks_that_can_run_here(spec, layout, force)
    if dry_run:
        report.dry_run, report.planned = True, spec.expand()
        return report
    client = JobsClient(address)
    running = client.running_jobs({"jamsweep_sweep": spec.sweep, "jamsweep_results": location})
    if running:
        raise JamsweepError(
            f"sweep {spec.sweep!r} in {location} is already being run by Ray job "
            f"{running[0]} on {address}; wait for it (jamsweep status {spec.sweep} --address "
            f"{address} --results {location}) or cancel it first"
        )
    submission_id = f"jamsweep-{spec.sweep}-{uuid.uuid4().hex[:8]}"
    staging = Path(tempfile.mkdtemp(prefix="jamsweep-job-"))
    try:
        shutil.copyfile(grid_path, staging / "grid.yaml")  # verbatim
        command = ["python", "-m", "orchestrator.cli", "submit", "grid.yaml"]
        command += ["--address", "auto", "--results", location]
        if force:
            command.append("--force")
        runtime_env = {
            "working_dir": str(staging),
            "py_modules": package_dirs(),
            "env_vars": {"JAMSWEEP_JOB_ID": submission_id},
        }
        metadata = {"jamsweep_sweep": spec.sweep, "jamsweep_results": location}
        job_id = client.submit(shlex.join(command), runtime_env, submission_id, metadata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.job_id = job_id
    echo(f"sweep {spec.sweep}: submitted as Ray job {job_id} to {address}")
    if detach:
        report.job_state = client.status(job_id)
        return report
    report.job_state = follow(client, job_id, echo)
    return report


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
    if raw.dataset.root is not None:
        problems += _path_problem("dataset.root", raw.dataset.root, shared_fs)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise JamsweepError(
            f"a sweep sent to a cluster must name paths that every node sees:\n{listed}\n"
            "Pass --results s3://BUCKET/PREFIX (or gs://...), or an absolute path on a "
            "filesystem mounted at the same place on every node together with --shared-fs; "
            "give dataset.root as such an absolute path (with --shared-fs)"
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


def follow(client: JobsClient, job_id: str, echo, poll_s: float = 1.0) -> str:  # noqa: ANN001
    """Print the job's log as it grows until the job ends; return its final state."""
    shown = 0
    while True:
        state = client.status(job_id)
        text = client.logs(job_id)
        for line in text[shown:].splitlines():
            echo(line)
        shown = len(text)
        if state in TERMINAL_JOB_STATES:
            return state
        time.sleep(poll_s)


def _checks_that_can_run_here(spec: GridSpec, layout: SweepLayout, force: bool) -> None:
    """What this machine can check before the cluster sees the sweep: the data when its
    root is visible here, the results location and its grid when they are."""
    from workers.data import check_dataset

    root = spec.dataset.root
    if root is None or Path(root).exists():
        check_dataset(spec.dataset)
    if io.is_local(layout.results) and Path(layout.results.removeprefix("file://")).exists():
        io.check_writable(layout.results)
        check_grid_change(layout, spec, force)
        refuse_second_driver(layout)


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
