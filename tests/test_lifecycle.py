"""A sweep's life without a cluster: rounds, heartbeats and interrupted runs, growth, one
driver per sweep, the paths a cluster may be sent. (The same on a real Ray: test_rounds.py.)"""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pytest

from orchestrator import sweep as api
from orchestrator.cluster.lease import Holder, LeaseRecord, acquire
from orchestrator.cluster.tracker import Tracker, read_records, read_status, records_table
from orchestrator.results.store import manifest_table
from schemas.errors import JamsweepError
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from schemas.run import RunRecord, RunStatus
from tests.conftest import jamsweep, write_grid
from tests.sweepfiles import write_sweep
from workers import io

GRID = """
sweep: life
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [2, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 50}
"""


def record(run_id: str, state: RunStatus = RunStatus.PENDING) -> RunRecord:
    return RunRecord(run_id=run_id, arch="a", width=2.0, seed=0, n_params=10, state=state)


# -- rounds and heartbeats ------------------------------------------------------------------


def test_a_round_s_records_replace_the_previous_round_s(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    tracker = Tracker(lay)
    tracker.register([record("old-1"), record("old-2")])
    tracker.finished([("old-1", RunStatus.FAILED, "boom")])
    tracker.register([record("new-1")])  # submit --force, or a grid that lost a width
    assert [r.run_id for r in tracker.snapshot()] == ["new-1"]
    assert [r.run_id for r in read_records(lay)] == ["new-1"]


def test_status_is_persisted_when_a_round_starts_and_ends_with_its_lease_token(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    tracker = Tracker(lay, persist_every_s=3600)
    tracker.register([record("r1"), record("r2")], token="round-1")
    persisted = read_status(lay)
    assert persisted.live and persisted.round_token == "round-1"
    tracker.finished([("r1", RunStatus.DONE, None)])
    assert read_records(lay)[0].state is RunStatus.PENDING  # throttled: not at every event
    tracker.close()
    persisted = read_status(lay)
    assert not persisted.live and persisted.round_token == "round-1"
    assert {r.run_id: r.state for r in persisted.records}["r1"] is RunStatus.DONE


def test_outcomes_are_recorded_once_and_repeating_them_changes_nothing(tmp_path):
    tracker = Tracker(SweepLayout(str(tmp_path), "sw"))
    tracker.register([record("r1"), record("r2")])
    tracker.finished([("r1", RunStatus.DONE, None), ("r2", RunStatus.FAILED, "x")])
    ended = {r.run_id: r.ended_at for r in tracker.snapshot()}
    tracker.finished([("r1", RunStatus.FAILED, "late"), ("r2", RunStatus.DONE, None)])
    assert {r.run_id: (r.state, r.ended_at) for r in tracker.snapshot()} == {
        "r1": (RunStatus.DONE, ended["r1"]),
        "r2": (RunStatus.FAILED, ended["r2"]),
    }


def test_a_restarted_tracker_is_a_new_incarnation_and_keeps_a_cancellation(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    first = Tracker(lay)
    incarnation = first.register([record("r1"), record("r2")], token="round-1")
    first.cancel()
    again = Tracker(lay)  # its node died; Ray made it again
    cancelled, now = again.heartbeat()
    assert cancelled and now != incarnation
    assert again.round() == ("round-1", True)  # the same round, still going


def lease_record(**changes: object) -> LeaseRecord:
    now = time.time()
    fields = {
        "generation": 1,
        "token": "round-1",
        "holder": Holder("somehost", 4321),
        "acquired_at": now,
        "renewed_at": now,
        "duration_s": 30.0,
    }
    return LeaseRecord(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lease", "shown"),
    [
        (lambda: lease_record(), RunStatus.RUNNING),  # a driver at work: renewed just now
        (lambda: lease_record(renewed_at=time.time() - 60), RunStatus.INTERRUPTED),  # expired
        (lambda: lease_record(released=True), RunStatus.INTERRUPTED),  # the round ended early
        (lambda: None, RunStatus.INTERRUPTED),  # no lease at all (a sweep of an older version)
    ],
    ids=["held", "expired", "released", "none"],
)
def test_running_runs_of_a_round_whose_lease_is_not_held_are_interrupted(tmp_path, lease, shown):
    write_grid(tmp_path / "g.yaml", GRID)
    lay = SweepLayout(str(tmp_path / "res"), "life")
    specs = parse_grid(GRID).expand()
    io.write_text(lay.grid_yaml, GRID)
    io.write_table(lay.manifest, manifest_table(specs))
    running = [
        RunRecord(run_id=s.run_id, arch="fc3", width=s.width, seed=s.seed, n_params=s.n_params)
        for s in specs
    ]
    running[0] = running[0].model_copy(update={"state": RunStatus.RUNNING, "attempts": 1})
    io.write_table(lay.status, records_table(running, "round-1", live=True))
    record = lease()
    if record is not None:
        io.write_bytes(f"{lay.lease_dir}/gen-000000000001.json", record.to_json())
    proc = jamsweep("status", "life", "--results", str(tmp_path / "res"), "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["counts"][shown.value] == 1 and answer["alive"] is (shown is RunStatus.RUNNING)
    assert answer["runs"][0]["state"] == shown.value
    assert set(answer["counts"]) == {s.value for s in RunStatus}  # interrupted included
    # `status --watch` of a round that is over returns at once instead of waiting forever
    if shown is RunStatus.INTERRUPTED:
        watch = jamsweep("status", "life", "--results", str(tmp_path / "res"), "--watch")
        assert watch.returncode == 0 and "interrupted 1" in watch.stdout


def test_a_second_submit_through_the_cli_names_the_running_driver(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", GRID)
    lay = SweepLayout(str(tmp_path / "res"), "life")
    io.write_text(lay.grid_yaml, GRID)
    with acquire(lay, Holder.this_process(None)):
        before = sorted(p.name for p in (tmp_path / "res" / "life").iterdir())
        proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"being run by the driver pid {os.getpid()}" in proc.stderr
        # an embedded driver stops with Ctrl-C or kill, not `jamsweep cancel`
        assert "Ctrl-C" in proc.stderr and f"kill {os.getpid()}" in proc.stderr
        assert "jamsweep cancel" not in proc.stderr
        assert sorted(p.name for p in (tmp_path / "res" / "life").iterdir()) == before


# -- growth -----------------------------------------------------------------------------


def test_a_grid_that_adds_widths_seeds_or_architectures_plans_only_the_new_runs(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    old = io.read_text(files.layout.grid_yaml)
    grown = old.replace("widths: [2, 4]", "widths: [2, 4, 8]").replace("seeds: 2", "seeds: 3")
    grown = grown.replace(
        "  - {name: fc5, depth: 5, widths: [2, 4, 8]}",
        "  - {name: fc5, depth: 5, widths: [2, 4, 8]}\n  - {name: fc3, depth: 3, widths: [4]}",
    )
    path = write_grid(tmp_path / "grown.yaml", grown)
    report = api.submit(path, results=str(tmp_path), dry_run=True)
    assert report.n_runs == 3 * 3 + 3 and report.n_already_done == 4
    planned = {(s.arch.name, s.width, s.seed) for s in report.planned}
    kept = {(s.arch.name, s.width, s.seed) for s in files.specs}
    assert not planned & kept and len(planned) == 12 - 4
    # shrinking: a grid without width 4 keeps the finished runs of width 2 only
    shrunk = write_grid(tmp_path / "shrunk.yaml", old.replace("widths: [2, 4]", "widths: [2]"))
    report = api.submit(shrunk, results=str(tmp_path), dry_run=True)
    assert (report.n_runs, report.n_already_done, report.planned) == (2, 2, [])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("max_steps: 1000", "max_steps: 2000"), "training.max_steps: 1000 -> 2000"),
        (("depth: 5", "depth: 4"), "architectures[fc5].depth: 5 -> 4"),
        (("pca_dim: 10", "pca_dim: 8"), "dataset.pca_dim: 10 -> 8"),
    ],
)
def test_changing_what_decides_results_is_refused_naming_the_fields(tmp_path, change, named):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    changed = io.read_text(files.layout.grid_yaml).replace(*change)
    path = write_grid(tmp_path / "g.yaml", changed)
    with pytest.raises(JamsweepError, match="--force") as err:
        api.submit(path, results=str(tmp_path), dry_run=True)
    assert named in str(err.value)


def test_the_cli_prints_a_changed_architecture_s_name_in_brackets(tmp_path):
    # rich markup would read "[fc5]" as a style tag and drop it from the message
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    changed = io.read_text(files.layout.grid_yaml).replace("depth: 5", "depth: 4")
    path = write_grid(tmp_path / "g.yaml", changed)
    proc = jamsweep("submit", str(path), "--results", str(tmp_path), "--dry-run")
    assert proc.returncode == 1
    assert "architectures[fc5].depth: 5 -> 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    # --dry-run --force says what --force would do to the finished runs, and does nothing
    forced = jamsweep("submit", str(path), "--results", str(tmp_path), "--dry-run", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "would be moved aside to synth.replaced-TIMESTAMP" in forced.stdout, forced.stdout
    assert not list(tmp_path.glob("synth.replaced-*"))


def test_refined_runs_stay_when_the_grid_is_submitted_again_but_not_removed_ones(tmp_path):
    from orchestrator.results.store import add_to_manifest, planned_runs

    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    grid = parse_grid(io.read_text(files.layout.grid_yaml))
    from orchestrator.cluster.refine import refined_specs

    extra = refined_specs(files.specs[0], [3.0], [0, 1])
    assert add_to_manifest(files.layout, extra) == extra
    assert add_to_manifest(files.layout, extra) == []  # once
    runs, refined = planned_runs(grid, files.layout)
    assert [s.width for s in refined] == [3.0, 3.0] and len(runs) == 4
    # a manifest row of the grid whose width the new grid drops is not planned again
    smaller = grid.model_copy(update={"architectures": [grid.architectures[0]]})
    arch = smaller.architectures[0].model_copy(update={"widths": [2.0]})
    runs, refined = planned_runs(smaller.model_copy(update={"architectures": [arch]}), files.layout)
    assert {s.width for s in runs} == {2.0} and len(refined) == 2


def test_an_old_manifest_without_origin_keeps_its_extra_runs(tmp_path):
    from orchestrator.results.store import planned_runs

    files = write_sweep(str(tmp_path), seeds=1, widths=[2, 4])
    table = io.read_table(files.layout.manifest).drop_columns(["origin"])
    io.write_table(files.layout.manifest, table)
    grid = parse_grid(io.read_text(files.layout.grid_yaml))
    arch = grid.architectures[0].model_copy(update={"widths": [2.0]})
    runs, refined = planned_runs(grid.model_copy(update={"architectures": [arch]}), files.layout)
    assert [s.width for s in runs] == [2.0] and [s.width for s in refined] == [4.0]
    assert pa.types.is_string(io.read_table(files.layout.manifest).schema.field("spec").type)


# -- paths sent to a cluster ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid_text", "args", "needles"),
    [
        (GRID, ["--results", "res"], ["results 'res' is relative"]),
        (GRID, [], ["no results location"]),
        (GRID, ["--results", "{tmp}/res"], ["is a folder of this machine", "--shared-fs"]),
        (
            GRID.replace("digits_parity_pca", "mnist_parity_pca, root: ../data"),
            ["--results", "s3://bucket/prefix"],
            ["dataset.root '../data' is relative"],
        ),
        (
            GRID + "results: out\n",
            ["--shared-fs"],
            ["results 'out' is relative"],
        ),
    ],
)
def test_a_jobs_submission_with_paths_of_this_machine_is_refused(
    tmp_path, grid_text, args, needles
):
    grid = write_grid(tmp_path / "g.yaml", grid_text)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = jamsweep("submit", str(grid), "--address", "http://127.0.0.1:9", *args, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in ["every node sees", *needles]:
        assert needle in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]  # nothing written


def test_object_store_results_and_shared_absolute_paths_pass_the_path_check(tmp_path):
    from orchestrator.jobs.executor import cluster_results

    raw = parse_grid(GRID)
    assert cluster_results(raw, "s3://bucket/prefix", False) == "s3://bucket/prefix"
    assert cluster_results(raw, "/mnt/shared/res", True) == "/mnt/shared/res"
    rooted = parse_grid(GRID.replace("digits_parity_pca", "mnist_parity_pca, root: /mnt/data"))
    with pytest.raises(JamsweepError, match="dataset.root '/mnt/data' is a folder"):
        cluster_results(rooted, "gs://bucket/res", False)
    assert cluster_results(rooted, "gs://bucket/res", True) == "gs://bucket/res"


def test_one_tracker_per_results_location_and_sweep():
    from orchestrator.cluster.backend import tracker_name

    a = tracker_name(SweepLayout("/data/a", "demo"))
    assert a == tracker_name(SweepLayout("/data/a", "demo"))
    assert a != tracker_name(SweepLayout("/data/b", "demo"))
    assert a != tracker_name(SweepLayout("/data/a", "other")) and a.startswith("tracker:demo:")
