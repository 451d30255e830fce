"""Hand a sweep to a cluster as a Ray job (`--address http://HOST:8265`).

The job runs `jamsweep submit grid.yaml --address auto` on the cluster: that driver, not
this process, owns the runs, so closing the laptop or killing this CLI leaves the sweep
going. The project's three packages travel with the job (runtime_env py_modules); its
dependencies (torch, ray, pyarrow, ...) must be installed on the cluster's nodes.
"""

from __future__ import annotations

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
from schemas.grid import GridSpec
from schemas.layout import SweepLayout
from workers import io


def submit_job(
    grid_path: str | Path,
    spec: GridSpec,
    layout: SweepLayout,
    *,
    address: str,
    force: bool,
    detach: bool,
    dry_run: bool,
    echo,  # noqa: ANN001
):  # noqa: ANN201  (a SubmitReport)
    from orchestrator.sweep import SubmitReport  # sweep imports this module lazily

    results = layout.results  # already absolute when a local folder (sweep.submit)
    report = SubmitReport(spec.sweep, results, len(spec.expand()), 0)
    _checks_that_can_run_here(spec, SweepLayout(results, spec.sweep), force)
    if dry_run:
        report.dry_run, report.planned = True, spec.expand()
        return report
    client = JobsClient(address)
    grid_path = Path(grid_path)
    staging = Path(tempfile.mkdtemp(prefix="jamsweep-job-"))
    try:
        shutil.copyfile(grid_path, staging / "grid.yaml")  # verbatim
        command = [
            "python",
            "-m",
            "orchestrator.cli",
            "submit",
            "grid.yaml",
            "--address",
            "auto",
            "--results",
            results,
            "--grid-base",
            str(grid_path.resolve().parent),
        ]
        if force:
            command.append("--force")
        runtime_env = {
            "working_dir": str(staging),
            "py_modules": package_dirs(),
        }
        job_id = client.submit(
            shlex.join(command),
            runtime_env,
            submission_id=f"jamsweep-{spec.sweep}-{uuid.uuid4().hex[:8]}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.job_id = job_id
    echo(f"sweep {spec.sweep}: submitted as Ray job {job_id} to {address}")
    if detach:
        report.job_state = client.status(job_id)
        return report
    report.job_state = follow(client, job_id, echo)
    return report


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
    from orchestrator.sweep import _check_same_grid as check_same_grid
    from workers.data import check_dataset

    root = spec.dataset.root
    if root is None or Path(root).exists():
        check_dataset(spec.dataset)
    if io.is_local(layout.results):
        io.check_writable(layout.results)
        check_same_grid(layout, spec, force)


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
        from schemas.errors import JamsweepError

        last = [line for line in logs.splitlines() if line.strip()][-1:] or ["no output"]
        raise JamsweepError(f"`jamsweep {' '.join(args)}` failed on the cluster: {last[0]}")
    return logs
