"""A sweep's life on one long-lived cluster (a real `ray start --head` on loopback, shared by
this module): rounds that replace each other's records, trackers that go away, sweeps that
grow and shrink, Ctrl-C, and one driver per sweep."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from orchestrator.cluster.lease import LEASE_ENV, is_held
from orchestrator.cluster.tracker import read_records, read_status
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from schemas.run import RunStatus
from tests.conftest import JAMSWEEP, ROOT, RayHead, jamsweep, tracker_alive, write_grid
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
    old_files = {
        p.relative_to(a / "round"): p.read_bytes() for p in (a / "round").rglob("*") if p.is_file()
    }
    forced = submit(good, a, head, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "previous grid's results were moved to" in forced.stderr
    (replaced,) = a.glob("round.replaced-*")  # the old sweep, intact: every file, every byte
    kept = {p.relative_to(replaced): p.read_bytes() for p in replaced.rglob("*") if p.is_file()}
    assert kept == old_files and old_files
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


def jobs_named(head: RayHead, prefix: str) -> list[str]:
    from orchestrator.jobs.backend import JobsClient

    client = JobsClient(head.dashboard)
    return [j.submission_id or "" for j in client.client.list_jobs()
            if (j.submission_id or "").startswith(prefix)]  # fmt: skip


def test_ray_job_stop_interrupts_the_round_and_releases_tracker_and_lease(tmp_path, head):
    """Defect 10: `ray job stop` sends the driver SIGTERM; it used to die without closing
    its round, leaving the detached tracker behind and the runs shown running."""
    from orchestrator.jobs.backend import JobsClient

    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="stopped", widths="[1.5]", steps=200000))
    res = str(tmp_path / "res")
    first = detached_via_jobs(grid, res, head)
    assert first.returncode == 0, first.stderr
    job = first.stdout.split("Ray job ")[1].split()[0]
    layout = SweepLayout(res, "stopped")
    wait_for(lambda: any(r.state is RunStatus.RUNNING for r in read_records(layout)), 120, "a run")
    client = JobsClient(head.dashboard)
    client.stop(job)  # as `ray job stop JOB`
    wait_for(lambda: client.status(job) == "STOPPED", 60, "the job to stop")
    wait_for(lambda: not tracker_exists(head, layout), 30, "the tracker to go")
    assert not is_held(layout)  # released, not left to expire
    states = {r.state for r in read_records(layout)}
    assert RunStatus.INTERRUPTED in states and RunStatus.RUNNING not in states


def test_a_killed_driver_s_tracker_removes_itself_once_the_lease_expires(tmp_path, head):
    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="orphan", widths="[1.5]", steps=200000))
    layout = SweepLayout(str(tmp_path), "orphan")
    driver = subprocess.Popen(
        [*JAMSWEEP, "submit", str(grid), "--results", str(tmp_path), "--address", head.gcs],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, LEASE_ENV: "4"},
    )
    wait_for(lambda: any(r.state is RunStatus.RUNNING for r in read_records(layout)), 120, "a run")
    assert tracker_exists(head, layout)
    driver.kill()  # SIGKILL: no handler runs, nothing is closed
    driver.wait()
    killed = time.monotonic()
    wait_for(lambda: not tracker_exists(head, layout), 60, "the orphaned tracker to go")
    assert time.monotonic() - killed < 30  # the lease (4 s) and the tracker's looks
    st = json.loads(jamsweep("status", "orphan", "--results", str(tmp_path), "--json").stdout)
    assert st["alive"] is False and st["counts"]["running"] == 0


def test_a_tracker_made_again_still_gets_the_runs_start_reports(tmp_path, head):
    """Defect 10: tasks held the handle of the tracker the driver started them with; one
    made again after it died for good (TrackerClient.revive) never heard of their starts.
    The runs are held back (every CPU taken) until the tracker has been made again."""
    import ray

    from orchestrator.cluster.backend import NAMESPACE, RayBackend, tracker_name

    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="revived", widths="[4, 6]", steps=2000))
    layout = SweepLayout(str(tmp_path), "revived")
    name = tracker_name(layout)
    from ray.util.placement_group import placement_group, remove_placement_group

    with RayBackend(head.gcs):
        blocker = placement_group([{"CPU": 2}])  # every CPU of the cluster, held
        ray.get(blocker.ready(), timeout=60)
        driver = subprocess.Popen(
            [*JAMSWEEP, "submit", str(grid), "--results", str(tmp_path), "--address", head.gcs],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = wait_for(lambda: _actor(ray, name, NAMESPACE), 120, "the round's tracker")
        ray.kill(first, no_restart=True)  # gone for good: the driver must make it again
        wait_for(
            lambda: (
                (a := _actor(ray, name, NAMESPACE)) is not None and a._actor_id != first._actor_id
            ),
            60,
            "the tracker made again",
        )
        remove_placement_group(blocker)  # now the runs start, and report
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-2000:]
    records = read_records(layout)
    assert {r.state for r in records} == {RunStatus.DONE}
    assert all(r.attempts >= 1 and r.node for r in records), records  # every start heard


def _actor(ray, name: str, namespace: str):  # noqa: ANN001, ANN202
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def test_status_watch_through_the_jobs_api_is_one_job_not_one_per_look(tmp_path, head):
    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="watched", widths="[4, 6]", steps=3000))
    res = str(tmp_path / "res")
    assert detached_via_jobs(grid, res, head).returncode == 0
    layout = SweepLayout(res, "watched")
    wait_for(lambda: is_held(layout), 120, "the driver")
    before = jobs_named(head, "jamsweep-")
    proc = jamsweep(
        "status", "watched", "--results", res, "--address", head.dashboard,
        "--watch", "--json", "--every", "0.5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    looks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(looks) >= 2 and looks[0]["alive"] is True
    assert looks[-1]["counts"]["done"] == 4  # it ended with the runs (the driver may reduce)
    new = sorted(set(jobs_named(head, "jamsweep-")) - set(before))
    assert len(new) == 1 and new[0].startswith("jamsweep-watch-"), new


def test_of_two_submissions_started_at_once_exactly_one_trains(tmp_path, head):
    """The lease, through the CLI: two drivers of one sweep started at the same instant."""
    grid = write_grid(tmp_path / "g.yaml", grid_text(sweep="twice", widths="[6]", seeds=1))
    start = time.time() + 3
    wait_then = f"import time; time.sleep(max(0, {start!r} - time.time()))"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"{wait_then}; import runpy, sys; "
                "sys.argv = ['jamsweep', *sys.argv[1:]]; runpy.run_module('orchestrator.cli', "
                "run_name='__main__')",
                "submit",
                str(grid),
                "--results",
                str(tmp_path),
                "--address",
                head.gcs,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    assert "1 runs, 0 already done, 1 to run" in outs[winner][1]
    assert f"being run by the driver pid {procs[winner].pid}" in outs[loser][1], outs[loser][1]
    assert "Traceback" not in outs[loser][1]
