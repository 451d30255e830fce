"""refine: widths proposed inside the bracket of N*, and the runs it would add (no Ray)."""

from __future__ import annotations

import pytest
from sweepfiles import default_converged, write_sweep
from typer.testing import CliRunner

from orchestrator import sweep as api
from orchestrator.cli.app import app
from orchestrator.cluster.refine import candidate_widths, propose_widths, refined_specs, width_step
from schemas.errors import JamsweepError
from schemas.grid import FCArch

FC5 = FCArch(name="fc5", depth=5, widths=[6, 8])


def fc_n(width: float) -> int:
    return FC5.n_params(width, 10, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9, 20])
def test_proposed_widths_lie_inside_the_bracket_with_new_distinct_n(k):
    widths = propose_widths(6, 8, k, step=0.2, n_params=fc_n, existing={fc_n(6), fc_n(8)})
    assert 1 <= len(widths) <= k and widths == sorted(widths)
    assert all(6 < w < 8 for w in widths)
    ns = [fc_n(w) for w in widths]
    assert len(set(ns)) == len(ns) and fc_n(6) not in ns and fc_n(8) not in ns
    assert len(widths) == min(k, 9)  # h = 6.2 ... 7.8: nine widths, each with its own N


def test_one_width_bisects_the_bracket_and_several_spread_evenly():
    assert propose_widths(6, 8, 1, step=0.2, n_params=fc_n) == [7.0]
    assert propose_widths(6, 8, 3, step=0.2, n_params=fc_n) == [6.4, 7.0, 7.4]
    assert propose_widths(16, 32, 3, step=1.0, n_params=lambda w: int(w) ** 2) == [20, 24, 28]


def test_widths_whose_n_the_sweep_has_are_skipped():
    taken = {fc_n(7.0), fc_n(6.8)}
    widths = propose_widths(6, 8, 1, step=0.2, n_params=fc_n, existing=taken)
    assert widths == [7.2]  # the nearest free width to the middle
    assert not taken & {fc_n(w) for w in widths}


def test_candidates_are_the_first_width_of_each_new_n():
    cands = candidate_widths(6, 7, 0.1, fc_n)  # N changes only at multiples of 1/5
    assert sorted(cands.values()) == [6.2, 6.4, 6.6, 6.8]


def test_a_bracket_without_new_n_is_an_error_that_says_what_to_do():
    with pytest.raises(JamsweepError, match="add seeds"):
        propose_widths(6, 6.2, 2, step=0.2, n_params=fc_n)
    with pytest.raises(JamsweepError, match="lo < hi"):
        propose_widths(8, 6, 2, step=0.2, n_params=fc_n)


def test_refined_specs_change_width_seed_run_id_and_n(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    template = files.specs[0]
    new = refined_specs(template, [2.4, 3.0], [0, 5])
    assert [(s.width, s.seed) for s in new] == [(2.4, 0), (2.4, 5), (3.0, 0), (3.0, 5)]
    assert [s.n_params for s in new] == [fc_n(2.4)] * 2 + [fc_n(3.0)] * 2
    ids = {s.run_id for s in new} | {s.run_id for s in files.specs}
    assert len(ids) == len(new) + len(files.specs)
    assert all(s.training == template.training and s.dataset == template.dataset for s in new)
    assert width_step(template) == 0.2


def test_refine_dry_run_plans_runs_inside_the_bracket_and_writes_nothing(tmp_path):
    files = write_sweep(
        str(tmp_path), seeds=3, widths=[2, 4, 8, 16], converged=default_converged(2)
    )  # N* at h = 8, half of the seeds at 4
    before = (tmp_path / "synth" / "manifest.parquet").read_bytes()
    report = api.refine("synth", results=str(tmp_path), n_widths=2, seeds=5, dry_run=True)
    assert report.brackets == {"fc5": (4.0, 8.0)}
    assert len(report.widths["fc5"]) == 2 and all(4 < w < 8 for w in report.widths["fc5"])
    assert len(report.planned) == 10 and {s.seed for s in report.planned} == set(range(5))
    assert all(s.arch.name == "fc5" and s.sweep == "synth" for s in report.planned)
    assert not {s.run_id for s in report.planned} & {s.run_id for s in files.specs}
    assert (tmp_path / "synth" / "manifest.parquet").read_bytes() == before
    assert report.status is None


def test_refine_without_a_bracket_says_which_widths_to_add(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 4], converged=lambda k, seed: False)
    with pytest.raises(JamsweepError, match="add larger widths"):
        api.refine("synth", results=str(tmp_path), dry_run=True)
    with pytest.raises(JamsweepError, match="no architecture 'nope'"):
        api.refine("synth", results=str(tmp_path), arch="nope", dry_run=True)


def test_refine_command_lists_the_planned_runs(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 4, 8], converged=default_converged(2))
    result = CliRunner().invoke(
        app, ["refine", "synth", "--results", str(tmp_path), "--n-widths", "1", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "2 run(s) would be added" in result.output and "h=6" in result.output
    bad = CliRunner().invoke(app, ["refine", "nope", "--results", str(tmp_path), "--dry-run"])
    assert bad.exit_code == 1 and "no sweep 'nope'" in bad.output


def test_refine_appends_the_new_runs_runs_them_and_reduces(tmp_path, monkeypatch):
    """The whole refine without Ray: the backend is replaced by one that writes each new
    run's result files, as a worker would."""
    import numpy as np
    import pyarrow.parquet as pq
    from sweepfiles import write_run

    files = write_sweep(
        str(tmp_path), seeds=2, widths=[2, 4, 8, 16], converged=default_converged(2)
    )
    before = pq.read_table(files.layout.manifest)
    ran = {}

    def fake_run_on_ray(layout, specs, todo, held, *, address, num_cpus, echo, progress=None):
        ran.update(specs=specs, todo=todo)
        labels = np.where(np.arange(350) % 2 == 0, 1, -1)
        for spec in todo:
            f = np.random.default_rng(spec.seed).normal(size=(350, 1)) + labels[:, None]
            write_run(layout, spec, f, labels, 50, 77, converged=True)
        return api.status("synth", results=str(tmp_path))

    from orchestrator.cluster import refine as refine_module

    monkeypatch.setattr(refine_module, "run_on_ray", fake_run_on_ray)
    report = api.refine("synth", results=str(tmp_path), n_widths=1)
    assert report.widths == {"fc5": [6.0]} and len(ran["todo"]) == 2
    after = pq.read_table(files.layout.manifest)
    assert after.slice(0, before.num_rows).equals(before)  # old rows kept as stored
    assert after.num_rows == before.num_rows + 2
    assert {s.run_id for s in ran["specs"]} >= set(after.column("run_id").to_pylist())
    assert not report.status.failed
    assert report.curves["width"].tolist() == [2.0, 4.0, 6.0, 8.0, 16.0]  # the new width too
    assert report.curves.loc[report.curves["width"] == 6.0, "n_seeds"].item() == 2


def test_refine_sees_a_largest_width_whose_runs_all_failed(tmp_path):
    """Issue 18, defect 3: with the widest width failed (no metrics), N* is above the sweep;
    refine must say so rather than add widths in the bracket below it."""
    from workers import io

    files = write_sweep(
        str(tmp_path), seeds=2, widths=[2, 4, 8, 16], converged=default_converged(2)
    )
    for spec in files.specs:
        if spec.width == 16:
            io.delete(files.layout.metrics(*spec.key))
    with pytest.raises(JamsweepError, match=r"h=16\) has 0 of 2 runs.*above the sweep"):
        api.refine("synth", results=str(tmp_path), dry_run=True)


def test_refine_is_refused_while_another_driver_holds_the_sweep(tmp_path):
    from orchestrator.cluster.lease import Holder, acquire
    from tests.conftest import jamsweep

    files = write_sweep(
        str(tmp_path), seeds=2, widths=[2, 4, 8, 16], converged=default_converged(2)
    )
    before = sorted(p.name for p in (tmp_path / "synth").rglob("*"))
    with acquire(files.layout, Holder("node-7", 99, job="jamsweep-synth-00000000")):
        proc = jamsweep("refine", files.layout.root, "--n-widths", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "being run by Ray job jamsweep-synth-00000000" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "synth").rglob("*")) == before  # nothing added


def test_runs_refined_into_a_manifest_older_than_the_axes_get_every_column(tmp_path):
    """A manifest written before sweep axes has no axis columns: the refined rows are
    appended, and the stored rows get their values from their own specs."""
    from orchestrator.results.store import add_to_manifest
    from schemas.axes import AXES
    from workers import io

    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    old = io.read_table(files.layout.manifest)
    old = old.select([c for c in old.column_names if c not in AXES])
    io.write_table(files.layout.manifest, old)
    (added,) = add_to_manifest(files.layout, refined_specs(files.specs[0], [3.0], [0]))
    table = io.read_table(files.layout.manifest).to_pylist()
    assert [r["run_id"] for r in table] == [*old.column("run_id").to_pylist(), added.run_id]
    train_size = files.specs[0].dataset.train_size
    assert {r["train_size"] for r in table} == {train_size}
    assert {r["lr_max"] for r in table} == {files.specs[0].training.lr_max}


def test_a_point_whose_bracket_holds_no_new_n_is_left_as_it_is_and_the_others_refined(tmp_path):
    """train_size an axis: at P = 40 N* is bracketed by h = 2 and 2.2, between which no
    width of a depth-5 net gives a new N; P = 80's bracket (2.2, 4) is refined."""
    write_sweep(
        str(tmp_path), seeds=2, widths=[2, 2.2, 4], n_train=[40, 80],
        jammed=lambda s: s.width >= (2.2 if s.dataset.train_size == 40 else 4),
    )  # fmt: skip
    said: list[str] = []
    report = api.refine("synth", results=str(tmp_path), dry_run=True, echo=said.append)
    assert list(report.widths) == ["fc5 train_size=80"]
    assert {s.dataset.train_size for s in report.planned} == {80}
    assert all(2.2 < s.width < 4 for s in report.planned)
    left = "left as it is: fc5 train_size=40: no width between 2 and 2.2 gives a new number"
    assert any(line.startswith(left) for line in said), said


def test_show_says_plainly_when_no_width_has_n_star(tmp_path):
    write_sweep(str(tmp_path), seeds=2, widths=[2, 4], converged=lambda k, seed: False)
    api.reduce("synth", results=str(tmp_path), figures=False)
    shown = CliRunner().invoke(app, ["show", "synth", "--results", str(tmp_path)]).output
    assert "fc5: N* = — (no width where every run fits the training set)" in shown, shown
