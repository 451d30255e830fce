"""A sweep's life on one long-lived cluster (a real `ray start --head` on loopback, shared by
this module): rounds that replace each other's records, trackers that go away, sweeps that
grow and shrink, Ctrl-C, and one driver per sweep."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pandas as pd
import pytest

from orchestrator.cluster.lease import is_held
from orchestrator.cluster.tracker import read_records, read_status
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from schemas.run import RunStatus
from tests.conftest import JAMSWEEP, RayHead, jamsweep, tracker_alive, write_grid
from tests.test_faults import wait_for

pytestmark = pytest.mark.ray

GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}}
architectures:
  - {{name: fc3, depth: 3, widths: {widths}}}
seeds: {seeds}
training: {{lr_max: {lr}, max_steps: {steps}}}
resources: {{num_cpus: 1, max_retries: 1}}
checkpoint: {{every_steps: 200}}
"""


def grid_text(sweep="round", widths="[6]", seeds=2, lr="0.01", steps=300) -> str:
    return GRID.format(sweep=sweep, widths=widths, seeds=seeds, lr=lr, steps=steps)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = RayHead(num_cpus=2, log=tmp_path_factory.mktemp("head") / "head.log")
    yield cluster
    cluster.kill()


def submit(grid, results, head, *extra: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    return jamsweep("submit", str(grid), "--results", str(results), "--address", head.gcs, *extra)


def detached_via_jobs(grid, res: str, head: RayHead) -> subprocess.CompletedProcess:  # noqa: ANN001
    return jamsweep(
        "submit",
        str(grid),
        "--address",
        head.dashboard,
        "--results",
        res,
        "--shared-fs",
        "--detach",
    )


def tracker_exists(head: RayHead, layout: SweepLayout) -> bool:
    from orchestrator.cluster.backend import RayBackend

    with RayBackend(head.gcs):
        return tracker_alive(layout)


def test_each_round_has_its_own_records_and_its_tracker_goes_away(tmp_path, head):
    diverging = write_grid(tmp_path / "bad.yaml", grid_text(lr="1.0e+200, lr0: 1.0e+200", seeds=1))
    good = write_grid(tmp_path / "good.yaml", grid_text(widths="[6, 8]"))
    a, b = tmp_path / "a", tmp_path / "b"
    first = submit(diverging, a, head)
    assert first.returncode == 1 and "FloatingPointError" in first.stderr
    layout_a = SweepLayout(str(a), "round")
    assert not tracker_exists(head, layout_a)  # gone with its round
    # the same sweep name under another results location is another sweep
    second = submit(good, b, head)
    assert second.returncode == 0, second.stderr
    specs = parse_grid(grid_text(widths="[6, 8]")).expand()
    on_disk = read_records(SweepLayout(str(b), "round"))
    assert sorted(r.run_id for r in on_disk) == sorted(s.run_id for s in specs)
    assert {r.state for r in on_disk} == {RunStatus.DONE}
    # --force: the old grid's failed run does not come back to block the new round
    forced = submit(good, a, head, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "previous grid's results were moved to" in forced.stderr
    assert sorted(r.run_id for r in read_records(layout_a)) == sorted(s.run_id for s in specs)
    assert not read_status(layout_a).live and not is_held(layout_a)


def test_a_sweep_grows_and_shrinks_keeping_finished_runs(tmp_path, head):
    text = grid_text(sweep="grow", widths="[4, 6]")
    grid = write_grid(tmp_path / "g.yaml", text)
    assert submit(grid, tmp_path, head).returncode == 0
    layout = SweepLayout(str(tmp_path), "grow")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "grow" / "metrics").rglob("*.parquet")}
    grown = write_grid(
        tmp_path / "g.yaml", text.replace("[4, 6]", "[4, 6, 9]").replace("seeds: 2", "seeds: 3")
    )
    proc = submit(grown, tmp_path, head)
    assert proc.returncode == 0, proc.stderr
    assert "9 runs, 4 already done, 5 to run" in proc.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not retrained
    curves = pd.read_parquet(layout.curves)
    assert sorted(curves.width) == [4, 6, 9] and set(curves.n_seeds) == {3}
    shrunk = write_grid(tmp_path / "g.yaml", text.replace("[4, 6]", "[6, 9]"))
    proc = submit(shrunk, tmp_path, head)
    assert proc.returncode == 0 and "all 4 runs already done" in proc.stderr, proc.stderr
    assert sorted(pd.read_parquet(layout.curves).width) == [6, 9]
    assert sorted(pd.read_parquet(layout.manifest).width) == [6, 6, 9, 9]
    assert len(list((tmp_path / "grow" / "metrics").rglob("*.parquet"))) == 9  # nothing lost


def test_ctrl_c_records_running_runs_interrupted_at_once(tmp_path, head):
    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="stop", widths="[1.5]", steps=200000))
    layout = SweepLayout(str(tmp_path), "stop")
    driver = subprocess.Popen(
        [*JAMSWEEP, "submit", str(grid), "--results", str(tmp_path), "--address", head.gcs],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as on a terminal: a suite started in the background of a non-interactive shell
        # hands SIG_IGN for SIGINT down to its children, and Python then ignores Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(lambda: any(r.state is RunStatus.RUNNING for r in read_records(layout)), 120, "a run")
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)  # read while waiting: a full pipe would block
    assert driver.returncode == 130 and "interrupted" in stderr
    proc = jamsweep("status", "stop", "--results", str(tmp_path), "--json")
    st = json.loads(proc.stdout)
    assert st["counts"]["interrupted"] >= 1 and st["counts"]["running"] == 0
    assert st["alive"] is False
    assert not tracker_exists(head, layout)


def test_a_second_driver_of_a_running_sweep_is_refused(tmp_path, head):
    text = grid_text(sweep="busy", widths="[1.5]", seeds=1, steps=200000)
    grid = write_grid(tmp_path / "g.yaml", text)
    res = str(tmp_path / "res")
    first = detached_via_jobs(grid, res, head)
    assert first.returncode == 0, first.stderr
    job = first.stdout.split("Ray job ")[1].split()[0]
    layout = SweepLayout(res, "busy")
    try:
        wait_for(lambda: is_held(layout), 120, "the first driver")
        via_jobs = detached_via_jobs(grid, res, head)
        assert via_jobs.returncode == 1 and f"Ray job {job}" in via_jobs.stderr, via_jobs.stderr
        direct = submit(grid, res, head)
        assert direct.returncode == 1 and f"being run by Ray job {job}" in direct.stderr
        assert "Traceback" not in via_jobs.stderr + direct.stderr
    finally:
        jamsweep("cancel", "busy", "--address", head.gcs, "--results", res)
    wait_for(lambda: not is_held(layout), 60, "the first round to end")
    assert {r.state for r in read_records(layout)} == {RunStatus.CANCELLED}


def test_a_followed_jobs_submission_streams_the_drivers_log_until_the_job_ends(tmp_path, head):
    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="followed"))
    res = str(tmp_path / "res")
    proc = jamsweep(
        "submit", str(grid), "--address", head.dashboard, "--results", res, "--shared-fs"
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Ray job jamsweep-followed-\w+ is SUCCEEDED\.", proc.stdout), proc.stdout
    # the job's own driver printed these on the cluster; they came back through the stream
    assert "sweep followed: 2 done." in proc.stderr, proc.stderr
    assert proc.stderr.count("sweep followed: 2 done.") == 1  # each line once
    assert len(read_records(SweepLayout(res, "followed"))) == 2
