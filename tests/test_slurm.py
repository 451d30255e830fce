"""deploy/slurm/jamsweep.sbatch on a real single-node SLURM started here (munged, slurmctld,
slurmd on loopback): the script brings up Ray, runs a grid to the end with
`jamsweep submit GRID --address auto`, and stops Ray. `make test-slurm` installs SLURM.
The grid is small (digits, 3 widths x 2 seeds, and a user's module beside it): what is
tested is the deploy path; the demo's own promise is tests/test_demo.py's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.demo_checks import check_finished_sweep
from tests.slurm import SingleNodeSlurm, missing_commands
from tests.test_user_modules import NETS

pytestmark = [pytest.mark.ray, pytest.mark.slurm]

SCRIPT = ROOT / "deploy" / "slurm" / "jamsweep.sbatch"
LOOPBACK = ("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")
# Ports of the head that default to fixed numbers: free ones, so that the job's Ray keeps
# clear of any other Ray on this (shared) machine.
HEAD_PORTS = (
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


GRID = """
sweep: slurm
dataset: {name: digits_parity_pca, train_size: 200, test_size: 300, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [2, 4, 8]}
  - {name: mlp, kind: module, builder: "lab_nets:mlp", widths: [4]}
seeds: 2
training: {lr_max: 0.01, max_steps: 1500}
resources: {num_cpus: 1, max_retries: 1}
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_commands()
    if missing:
        pytest.fail(
            f"SLURM is not installed here ({', '.join(missing)} missing): run `make test-slurm` "
            "or `make test`, which apt-get install slurm-wlm and munge when missing"
        )
    if os.geteuid() != 0:
        pytest.fail("slurmd must run as root to start jobs: run this test as root")
    with SingleNodeSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _listening(pids: set[int]) -> dict[str, str]:
    """Listening TCP sockets of `pids`: address -> the process's name."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        for pid in pids:
            if f"pid={pid}," in line:
                found[line.split()[3]] = line.split('(("', 1)[1].split('"', 1)[0]
    return found


def _names(pids: set[int]) -> dict[int, str]:
    names = {}
    for pid in pids:
        try:
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
    return names


@pytest.fixture
def short_tmp():
    """A short folder for the job's TMPDIR: Ray's unix sockets live under it (<108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="jsw"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sbatch_script_runs_a_grid_to_the_end_and_stops_ray(slurm, tmp_path, short_tmp):
    results, log = tmp_path / "results", tmp_path / "job.out"
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    (tmp_path / "lab_nets.py").write_text(NETS)  # a user's module, found beside the grid
    env = {
        "TMPDIR": str(short_tmp),  # the script puts Ray's files in $TMPDIR/ray-JOBID
        "JAMSWEEP_VENV": str(Path(sys.executable).parent.parent),
        "RAY_PORT": str(free_port()),
        "RAY_HEAD_ARGS": " ".join(f"--{p}={free_port()}" for p in HEAD_PORTS),
    }
    job = slurm.sbatch(
        "--nodes=1",
        f"--cpus-per-task={slurm.cpus}",
        f"--output={log}",
        str(SCRIPT),
        str(grid),
        "--results",
        str(results),
        env=env,
    )
    sockets: dict[str, str] = {}
    processes: dict[int, str] = {}

    def watch() -> None:
        pids = slurm.job_pids()
        processes.update(_names(pids))
        sockets.update(_listening(pids))

    info = slurm.wait(job, timeout=900, on_poll=watch)  # under a minute on 2 idle cores
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-5000:]
    assert "jamsweep.sbatch: 1 node(s) up" in text
    assert "jamsweep submit exited with 0" in text and "jamsweep.sbatch: stopping Ray" in text
    check_finished_sweep(results / "slurm", grid)
    assert [p.name for p in (results / "slurm" / "code").glob("*/*")] == ["lab_nets.py"]

    # The job's Ray: one head (jamsweep connected to it, it started no Ray of its own),
    # every port of it on loopback (srun's own I/O ports are SLURM's, not Ray's).
    assert sorted(n for n in processes.values() if n == "gcs_server") == ["gcs_server"]
    assert "raylet" in processes.values()
    ray_sockets = {a: n for a, n in sockets.items() if n not in ("srun", "slurmstepd")}
    assert ray_sockets, f"saw no listening socket of the job's Ray: {sockets}"
    assert all(a.startswith(LOOPBACK) for a in ray_sockets), ray_sockets
    assert not _names(slurm.job_pids()), "processes of the job outlived it"
    assert (short_tmp / f"ray-{job}").is_dir()  # Ray's files: per job, under the job's TMPDIR
