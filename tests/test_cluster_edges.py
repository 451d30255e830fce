"""Clusters off the beaten path, on real Rays on loopback: a head with no CPU whose
autoscaler offers node types, a multi-node cluster whose Ray job driver must not depend on
Ray's working_dir, and a node that does not see the results folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.cluster.lease import is_held
from schemas.layout import SweepLayout
from tests.conftest import ROOT, RayHead, free_port, jamsweep, write_grid
from tests.test_faults import wait_for

pytestmark = pytest.mark.ray

GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}}
architectures:
  - {{name: fc3, depth: 3, widths: [4, 6]}}
seeds: 2
training: {{lr_max: 0.01, max_steps: 200}}
resources: {{num_cpus: {cpus}}}
"""


def report_node_types(gcs: str, types: dict[str, dict[str, float]]) -> None:
    """Tell the head's GCS the node types an autoscaler could launch, as Ray's autoscaler
    does (its ReportClusterConfig call): the only fake here, at the edge."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    for name, resources in types.items():
        group = config.node_group_configs.add()
        group.name, group.max_count = name, 8
        for key, value in resources.items():
            group.resources[key] = int(value)
    GcsClient(address=gcs).report_cluster_config(config.SerializeToString())


@pytest.fixture(scope="module")
def zero_cpu_head(tmp_path_factory):
    cluster = RayHead(num_cpus=0, log=tmp_path_factory.mktemp("head0") / "head.log")
    yield cluster
    cluster.kill()


def test_a_head_without_cpus_takes_what_its_autoscaler_can_launch(tmp_path, zero_cpu_head):
    grid = write_grid(tmp_path / "g.yaml", GRID.format(sweep="scaled", cpus=1))
    res = str(tmp_path / "res")
    args = ("submit", str(grid), "--results", res, "--address", zero_cpu_head.gcs)
    refused = jamsweep(*args)  # no node type known yet: nothing could ever run it
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "no node of the cluster can hold a run" in refused.stderr
    assert "0 CPUs" in refused.stderr, refused.stderr
    assert not os.path.exists(os.path.join(res, "scaled"))  # nothing written

    report_node_types(zero_cpu_head.gcs, {"cpu-worker": {"CPU": 4}})
    big = write_grid(tmp_path / "big.yaml", GRID.format(sweep="big", cpus=64))
    too_big = jamsweep("submit", str(big), "--results", res, "--address", zero_cpu_head.gcs)
    assert too_big.returncode == 1 and "node type cpu-worker: 4 CPUs" in too_big.stderr

    # accepted: the runs wait for the autoscaler's nodes (none come here), Ctrl-C ends it
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    layout = SweepLayout(res, "scaled")
    try:
        wait_for(lambda: is_held(layout) and os.path.exists(layout.manifest), 120, "the round")
    finally:
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "4 runs, 0 already done, 4 to run" in stderr, stderr
    assert not is_held(layout)  # released on the way out


@pytest.fixture(scope="module")
def cluster():
    """A 0-CPU head with a dashboard (the Jobs API) and two 1-CPU worker nodes, all on
    127.0.0.1 (ray.cluster_utils), one with a logical GPU (Ray's bookkeeping only). Every
    node of it shares this machine's disk."""
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    path = os.environ["PATH"]  # a job's `python` is the one on the head's PATH: this venv's
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{path}"
    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
        },
    )
    try:
        for gpus in (1, 0):  # the first declares a GPU that torch cannot see (none here)
            nodes.add_node(num_cpus=1, num_gpus=gpus, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes()
        url = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: _answers(url), 90, "the dashboard")
        nodes.jobs_url = url  # type: ignore[attr-defined]
        yield nodes
    finally:
        nodes.shutdown()
        os.environ["PATH"] = path


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True  # it answers (401 without the token)
    except OSError:
        return False
    return True


def test_a_followed_jobs_sweep_on_several_nodes_ends_succeeded(tmp_path, cluster):
    """Defect 0: the worker nodes set up the job's runtime env again in the folders they
    share with the head here, which removed the driver's working_dir under it: the job
    failed in Path.cwd() after every run had finished. The driver now stands in a folder of
    its own."""
    grid = write_grid(tmp_path / "g.yaml", GRID.format(sweep="spread", cpus=1))
    res = str(tmp_path / "res")
    proc = jamsweep(
        "submit", str(grid), "--address", cluster.jobs_url, "--results", res, "--shared-fs"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is SUCCEEDED" in proc.stdout and "Traceback" not in proc.stderr
    assert "sweep spread: 4 done." in proc.stderr


def test_a_gpu_run_where_torch_sees_no_cuda_device_fails_at_once_with_one_message(
    tmp_path, cluster
):
    """Issue 19: a node's GPUs are Ray's bookkeeping; a run that asks for one on a node
    where torch sees no CUDA device fails at once, says what to do and is not retried or
    trained on the CPU unseen. Its tasks ran one after another in one worker process: GPU
    tasks keep their process (and would keep a CUDA context) from run to run."""
    text = GRID.format(sweep="nocuda", cpus=1).replace(
        "{num_cpus: 1}", "{num_cpus: 1, num_gpus: 1}"
    )
    grid = write_grid(tmp_path / "g.yaml", text)
    res = tmp_path / "res"
    proc = jamsweep("submit", str(grid), "--address", cluster.address, "--results", str(res))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 4, proc.stderr[-3000:]
    assert all("asks for a GPU (resources.num_gpus = 1)" in line for line in failed)
    assert all("set resources.num_gpus: 0" in line for line in failed)
    pids = {line.split("(pid ")[1].split(",")[0] for line in failed}
    assert len(pids) == 1, pids
    status = jamsweep("status", "nocuda", "--json", "--results", str(res))
    runs = __import__("json").loads(status.stdout)["runs"]
    assert {(r["state"], r["attempts"]) for r in runs} == {("failed", 1)}
    assert not (res / "nocuda" / "metrics").exists()


BLIND_NODE = textwrap.dedent(
    """
    # A Ray worker node in a mount namespace of its own, where the results folder is an
    # empty tmpfs: a node that does not see the folder the driver writes to.
    import ctypes, subprocess, sys
    import ray._private.node, ray._private.parameter
    gcs, hidden = sys.argv[1], sys.argv[2]
    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", hidden], check=True)
    params = ray._private.parameter.RayParams(
        num_cpus=1, node_ip_address="127.0.0.1", gcs_address=gcs, include_log_monitor=False,
        node_manager_port=0, min_worker_port=0, max_worker_port=0,
        object_store_memory=150 * 1024 * 1024, resources={"blind": 1},
    )
    params.dashboard_agent_listen_port = None
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("up", node.unique_id, flush=True)
    sys.stdin.read()  # until the test closes it
    node.kill_all_processes(check_alive=False, allow_graceful=False)
    """
)


def test_a_local_results_folder_that_a_node_does_not_see_is_refused(tmp_path, cluster):
    res = tmp_path / "res"
    res.mkdir()
    grid = write_grid(tmp_path / "g.yaml", GRID.format(sweep="seen", cpus=1))
    shared = jamsweep("submit", str(grid), "--results", str(res), "--address", cluster.address)
    assert shared.returncode == 0, shared.stderr[-2000:]  # every node sees it: proved, run

    blind = subprocess.Popen(
        [sys.executable, "-c", BLIND_NODE, cluster.address, str(res)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert blind.stdout is not None
        assert blind.stdout.readline().startswith("up"), "the blind node did not start"
        wait_for(lambda: _alive_nodes(cluster) == 4, 60, "the blind node to join")
        other = write_grid(tmp_path / "h.yaml", GRID.format(sweep="unseen", cpus=1))
        started = time.monotonic()
        proc = jamsweep("submit", str(other), "--results", str(res), "--address", cluster.address)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "is not visible from every node of the cluster" in proc.stderr, proc.stderr
        assert time.monotonic() - started < 120
        assert not (res / "unseen").exists()
    finally:
        blind.communicate(timeout=60)


def _alive_nodes(cluster) -> int:  # noqa: ANN001
    import ray

    from orchestrator.cluster.backend import RayBackend

    with RayBackend(cluster.address):
        return sum(1 for n in ray.nodes() if n.get("Alive"))
