"""Bad files datasets through the CLI, as a user meets them: one message naming the file and
the column, exit code != 0, no traceback, nothing written, before any run starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas.errors import GridError
from schemas.grid import parse_grid
from tests.conftest import jamsweep, write_grid
from tests.test_bad_input import fails_cleanly

GRID = """
sweep: mine
dataset: {{name: files, train: {train}, label: diagnosis, train_size: 40{extra}}}
architectures: [{{name: fc3, depth: 3, widths: [2]}}]
seeds: 1
training: {{max_steps: 5}}
"""


def pool(n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["radius", "texture", "area"])
    frame["diagnosis"] = ["M", "B"] * (n // 2)
    return frame


def constant(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(diagnosis="B")


def text_feature(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(texture=["rough"] * len(f))


def nan_feature(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[7, "area"] = np.nan
    return f


def missing_label(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "diagnosis"] = None
    return f


CASES = {  # what is wrong: (how the pool is spoilt, grid extra, file name, the message's needles)
    "missing file": (
        None,
        "",
        "nowhere.parquet",
        ["dataset.train", "nowhere.parquet", "no such file"],
    ),
    "no label column": (
        lambda f: f.rename(columns={"diagnosis": "dx"}),
        "",
        "pool.parquet",
        ["pool.parquet", "no column 'diagnosis'", "radius, texture, area, dx"],
    ),
    "constant label": (constant, "", "pool.csv", ["pool.csv", "'diagnosis' is constant", "'B'"]),
    "non-numeric feature": (
        text_feature,
        ", features: [radius, texture]",
        "pool.parquet",
        ["pool.parquet", "feature column(s) texture (", "are not numeric"],
    ),
    "NaN in a feature": (nan_feature, "", "pool.parquet", ["pool.parquet", "'area'", "row 7"]),
    "missing label": (missing_label, "", "pool.csv", ["pool.csv", "'diagnosis'", "row 3"]),
    "fewer rows than train_size": (
        lambda f: f.head(30),
        "",
        "pool.parquet",
        ["dataset.train_size = 40", "29 rows", "pool.parquet", "'diagnosis'"],
    ),
    "pca_dim above the features": (
        None,
        ", pca_dim: 5",
        "pool.parquet",
        ["dataset.pca_dim = 5", "3 feature columns", "pool.parquet"],
    ),
    "unknown feature": (
        None,
        ", features: [radius, volume]",
        "pool.parquet",
        ["pool.parquet", "lacks the feature column(s) ['volume']"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_pools_are_refused_before_anything_is_written(tmp_path, case):
    spoil, extra, name, needles = CASES[case]
    if case != "missing file":
        frame = spoil(pool()) if spoil is not None else pool()
        path = tmp_path / name
        frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    grid = write_grid(tmp_path / "g.yaml", GRID.format(train=name, extra=extra))
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
    fails_cleanly(proc, *needles)
    assert not (tmp_path / "res").exists()


def test_a_test_file_without_the_pools_columns_is_refused(tmp_path):
    pool().to_parquet(tmp_path / "pool.parquet")
    pool(20).drop(columns=["area"]).to_csv(tmp_path / "test.csv", index=False)
    grid = write_grid(
        tmp_path / "g.yaml", GRID.format(train="pool.parquet", extra=", test: test.csv")
    )
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
    fails_cleanly(proc, "dataset.test", "test.csv", "lacks the feature column(s) ['area']")
    assert not (tmp_path / "res").exists()


def test_a_test_file_with_a_label_the_pool_lacks_is_refused(tmp_path):
    pool().to_parquet(tmp_path / "pool.parquet")
    pool(20).assign(diagnosis="X").to_parquet(tmp_path / "test.parquet")
    grid = write_grid(
        tmp_path / "g.yaml", GRID.format(train="pool.parquet", extra=", test: test.parquet")
    )
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
    fails_cleanly(proc, "test.parquet", "'diagnosis'", "['X']", "training pool lacks")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    ("dataset", "needles"),
    [
        ("{name: files, train_size: 40}", ["needs `train`"]),
        ("{name: files, train: p.parquet, train_size: 40}", ["needs `label`"]),
        ("{name: files, train: p.xlsx, label: y, train_size: 40}", ["'p.xlsx' is not a"]),
        ("{name: files, train: p.npz, label: y, train_size: 40}", ["leave out `label`"]),
        ("{name: files, train: p.csv, label: y, root: d, train_size: 40}", ["not `root`"]),
        ("{name: digits_parity_pca, train: p.csv, train_size: 40}", ["train apply to"]),
        (
            "{name: files, train: p.csv, label: y, train_size: 40, resolved: {}}",
            ["dataset.resolved is set by jamsweep"],
        ),
        (
            "{name: files, train: a.csv, test: b.csv, test_size: 9, label: y, train_size: 40}",
            ["test_size draws the test set from `train`"],
        ),
    ],
)
def test_files_grid_errors_name_the_field(dataset, needles):
    """Checked by the grid's schema, without reading a file (the CLI's path for a grid error
    is tests/test_bad_input.py's)."""
    text = f"sweep: g\ndataset: {dataset}\narchitectures: [{{name: a, widths: [2]}}]\nseeds: 1\n"
    with pytest.raises(GridError) as caught:
        parse_grid(text)
    for needle in needles:
        assert needle in str(caught.value)


def test_a_cnn_is_refused_for_files():
    text = (
        "sweep: g\ndataset: {name: files, train: p.csv, label: y, train_size: 4}\n"
        "architectures: [{kind: cnn, name: c, widths: [2]}]\nseeds: 1\n"
    )
    with pytest.raises(GridError, match="'c' \\(kind cnn\\) needs an image dataset"):
        parse_grid(text)


@pytest.mark.parametrize(
    ("train", "shared", "needles"),
    [
        ("pool.parquet", [], ["dataset.train 'pool.parquet' is relative"]),
        ("ABS", [], ["dataset.train", "is a folder of this machine", "--shared-fs"]),
        # declared shared, and visible here: read here, before the cluster is contacted
        ("ABS", ["--shared-fs"], ["pool.parquet", "'diagnosis' is constant"]),
    ],
)
def test_a_jobs_submission_refuses_files_the_cluster_cannot_see(tmp_path, train, shared, needles):
    constant(pool()).to_parquet(tmp_path / "pool.parquet")
    train = str(tmp_path / "pool.parquet") if train == "ABS" else train
    grid = write_grid(tmp_path / "g.yaml", GRID.format(train=train, extra=""))
    proc = jamsweep(
        "submit", str(grid), "--address", "http://127.0.0.1:9", "--results", "s3://b/p", *shared
    )
    fails_cleanly(proc, *needles)


def test_a_jobs_dry_run_with_files_only_the_cluster_sees_lists_the_runs(tmp_path):
    """Declared shared but not mounted here: nothing to read, so N is left to the cluster."""
    grid = write_grid(
        tmp_path / "g.yaml", GRID.format(train="/mnt/cluster-only/pool.parquet", extra="")
    )
    proc = jamsweep(
        "submit",
        str(grid),
        "--address",
        "http://127.0.0.1:9",
        "--results",
        "s3://b/p",
        "--shared-fs",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 would run" in proc.stdout and "N=? (read on the cluster)" in proc.stdout
