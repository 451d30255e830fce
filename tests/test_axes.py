"""Sweep axes in the grid: lists of train_size, label_noise, data_seed and numeric training
fields make the product of runs; grids without lists keep their run ids; --max-runs."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from schemas.errors import GridError
from schemas.grid import parse_grid
from tests.conftest import ROOT, jamsweep

# sha256 of the comma-joined run ids of every shipped example, computed on main before
# sweep axes existed (commit 0c0c6f2): adding axes must not move a single id.
MAIN_IDS = {
    "breast_cancer": (24, "ed33543d5292ce34"),
    "cifar10_cnn": (420, "f49218f52d6ee72e"),
    "cifar10_cnn_small": (24, "c34e4c2794ba318a"),
    "demo": (32, "44795e8c3364deb5"),
    "mnist_fc_fig2": (440, "8b1861be96d5c73e"),
    "mnist_fc_p1000": (32, "0cb070624102e901"),
    "mnist_fc_small": (27, "d3372ba0bc6d2360"),
}

BASE = """
sweep: ax
dataset: {{name: digits_parity_pca, train_size: {p}}}
architectures: [{{name: fc, widths: [2, 4]}}]
seeds: 2
training: {{max_steps: 10{training}}}
"""


def grid(p: str = "100", training: str = ""):
    return parse_grid(BASE.format(p=p, training=training))


@pytest.mark.parametrize("name", sorted(MAIN_IDS))
def test_run_ids_of_the_shipped_examples_are_those_of_main(name):
    from schemas.grid import load_grid

    spec, _ = load_grid(ROOT / "examples" / f"{name}.yaml")
    ids = [s.run_id for s in spec.expand()]
    assert (len(ids), hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]) == MAIN_IDS[name]


def test_lists_make_the_product_with_widths_and_seeds():
    spec = grid("[100, 200, 300]", ", lr_max: [0.001, 0.01]")
    runs = spec.expand()
    got = [(r.dataset.train_size, r.training.lr_max, r.width, r.seed) for r in runs]
    want = list(itertools.product([100, 200, 300], [0.001, 0.01], [2.0, 4.0], [0, 1]))
    assert sorted(got) == sorted(want) and len(got) == 24 == spec.n_runs
    assert len({r.run_id for r in runs}) == 24
    assert spec.axes == {"train_size": [100, 200, 300], "lr_max": [0.001, 0.01]}
    # every RunSpec is scalar: what a worker trains with
    assert all(isinstance(r.dataset.train_size, int) for r in runs)


def test_a_point_of_a_list_is_the_run_of_the_same_scalar_grid():
    """Growth: the runs at P=100 of a grid with P in [100, 200] are the runs of P = 100."""
    scalar = {r.run_id for r in grid("100", ", lr_max: 0.01").expand()}
    listed = grid("[100, 200]", ", lr_max: [0.01, 0.02]").expand()
    at_100 = {r.run_id for r in listed if r.dataset.train_size == 100 and r.training.lr_max == 0.01}
    assert at_100 == scalar and len(scalar) == 4


def test_data_seed_label_noise_and_int_training_fields_are_axes():
    spec = parse_grid(
        BASE.format(p="100", training=", max_steps: [5, 10], batch_size: [10, 20]").replace(
            "train_size: 100", "train_size: 100, data_seed: [0, 1], label_noise: [0, 0.25]"
        )
    )
    assert set(spec.axes) == {"data_seed", "label_noise", "max_steps", "batch_size"}
    runs = spec.expand()
    assert len(runs) == 2 * 2 * 2 * 2 * 2 * 2
    assert {r.dataset.label_noise for r in runs} == {0.0, 0.25}
    assert {r.training.batch_size for r in runs} == {10, 20}


@pytest.mark.parametrize(
    ("p", "training", "message"),
    [
        ("[]", "", "train_size is an empty list"),
        ("[100, 0]", "", "train_size value 0: Input should be greater than or equal to 1"),
        ("[100, 100]", "", "train_size repeats [100]"),
        ("100", ", lr_max: [0.01, -1]", "lr_max value -1: Input should be greater than 0"),
        ("100", ", dtype: [float32, float64]", "training.dtype"),  # not a numeric field
    ],
)
def test_bad_lists_are_refused_with_the_value_named(p, training, message):
    with pytest.raises(GridError) as info:
        grid(p, training)
    assert message in str(info.value)


def test_growing_along_an_axis_is_no_change_of_experiment():
    old = grid("100", ", lr_max: 0.01")
    assert grid("[100, 200]", ", lr_max: 0.01").result_differences(old) == []
    assert grid("100", ", lr_max: [0.01, 0.02]").result_differences(old) == []
    assert old.result_differences(grid("[100, 200]", ", lr_max: 0.01")) == []  # shrinking
    # a field that is one value in both grids and changes is another experiment, as before
    assert grid("100", ", lr_max: 0.02").result_differences(old) == [
        "training.lr_max: 0.01 -> 0.02"
    ]


def test_dry_run_prints_the_size_of_the_product(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(BASE.format(p="[100, 200]", training=", lr_max: [0.001, 0.01]"))
    proc = jamsweep("submit", str(path), "--dry-run", "--results", str(tmp_path / "res"))
    assert proc.returncode == 0, proc.stderr
    assert (
        "2 width(s) x 4 point(s) (train_size: 100, 200; lr_max: 0.001, 0.01) x 2 seed(s) = 16"
        in (proc.stdout.replace("\n", " "))
    )
    assert proc.stdout.count("train_size=200 lr_max=0.01  h=4") == 2  # two seeds
    assert not (tmp_path / "res").exists()


def test_a_grid_over_max_runs_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "g.yaml"
    big = ", lr_max: " + json.dumps([0.001 * (i + 1) for i in range(3000)])
    path.write_text(BASE.format(p="[100, 200]", training=big))  # 2 x 3000 x 2 x 2 = 24000
    for extra in ([], ["--dry-run"]):
        proc = jamsweep("submit", str(path), "--results", str(tmp_path / "res"), *extra)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "makes 24000 runs" in proc.stderr and "--max-runs 5000" in proc.stderr
    assert not (tmp_path / "res").exists()
    proc = jamsweep(
        "submit", str(path), "--dry-run", "--results", str(tmp_path / "res"), "--max-runs", "30000"
    )
    assert proc.returncode == 0 and "24000 runs" in proc.stdout


def test_a_sweep_of_layout_1_takes_no_lists_but_a_new_sweep_does(tmp_path):
    """A sweep made before sweep axes (no layout.json) keeps a file per (arch, width, seed):
    a grid with lists would make two points share one, so it is refused there."""
    from orchestrator import sweep as api
    from schemas.errors import JamsweepError
    from schemas.layout import FLAT, HIVE, SweepLayout

    res = tmp_path / "res"
    old = res / "ax"
    old.mkdir(parents=True)
    (old / "grid.yaml").write_text(BASE.format(p="100", training=""))  # as an old version left it
    assert SweepLayout(str(res), "ax").tables_layout == HIVE
    path = tmp_path / "g.yaml"
    path.write_text(BASE.format(p="[100, 200]", training=""))
    with pytest.raises(JamsweepError, match="layout 1"):
        api.submit(path, results=str(res), dry_run=True)
    # a Jobs API submission is refused on this machine too, before any job starts
    from orchestrator.jobs.executor import _checks_that_can_run_here
    from schemas.grid import load_grid

    with pytest.raises(JamsweepError, match="layout 1"):
        _checks_that_can_run_here(load_grid(path)[0], path, SweepLayout(str(res), "ax"), False)
    report = api.submit(path, results=str(tmp_path / "fresh"), dry_run=True)
    assert len(report.planned) == 8
    assert SweepLayout(str(tmp_path / "fresh"), "ax").settled(new_sweep=True).tables_layout == FLAT
    assert not (tmp_path / "fresh").exists()  # a dry run writes nothing, not even layout.json


def test_series_are_per_point_sorted_as_numbers_and_old_tables_have_one_per_arch():
    import pandas as pd

    from workers.reduce import series_of

    table = pd.DataFrame(
        {
            "arch": ["fc"] * 3,
            "point": ["train_size=1000", "train_size=500", "train_size=500"],
            "train_size": [1000, 500, 500],
            "n_params": [1, 2, 3],
        }
    )
    found = [(name, len(rows)) for name, rows in series_of(table)]
    assert found == [("fc train_size=500", 2), ("fc train_size=1000", 1)]  # not as text
    reduced_before_axes = pd.DataFrame({"arch": ["b", "a"], "n_params": [1, 2]})  # no point
    assert [name for name, _ in series_of(reduced_before_axes)] == ["a", "b"]


def test_two_values_of_an_axis_never_share_a_point_label():
    from schemas.axes import point_label

    # 6 significant digits would write both as lr_max=0.001: one curve of two points' runs
    close = [point_label({"lr_max": v}) for v in (0.001, 0.0010000004)]
    assert close[0] == "lr_max=0.001" and close[0] != close[1]
    assert point_label({"train_size": 500, "adam_eps": 1e-08}) == "train_size=500 adam_eps=1e-08"
