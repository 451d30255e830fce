"""A finished sweep read by pandas, pyarrow, polars and duckdb in a process that never
imports jamsweep, and docs/results.md naming exactly the columns each file has."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from schemas.axes import AXES
from tests.conftest import ROOT, jamsweep, write_grid

pytestmark = pytest.mark.ray

GRID = """
sweep: readers
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [1.5, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 300, snapshot_steps: [10]}
resources: {num_cpus: 1, max_retries: 1}
"""
TABLES = ("logits", "metrics", "trace")
FILES = ("manifest", "status", "curves", "ensemble", "training", "snapshots")
JAMSWEEP_MODULES = ("orchestrator", "workers", "schemas", "jamsweep")

# Runs in a fresh interpreter from an empty folder: every reader opens every file; the
# script prints what each saw, and whether anything of jamsweep got imported.
READERS = r"""
import json, sys
import duckdb, pandas as pd, polars as pl, pyarrow.dataset as ds, pyarrow.parquet as pq

root, tables, files = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
seen = {}
for t in tables:
    folder, glob = f"{root}/{t}", f"{root}/{t}/*.parquet"  # layout 2: a flat file per run
    by_pandas = pd.read_parquet(folder)
    by_arrow = ds.dataset(folder, format="parquet").to_table()
    by_polars = pl.read_parquet(glob)
    by_duckdb = duckdb.sql(f"select * from read_parquet('{glob}')")
    seen[t] = {
        "types": {  # the key and axis columns as each reader types them, without help
            "pandas": [str(by_pandas[c].dtype) for c in ("width", "seed", "train_size")],
            "pyarrow": [str(by_arrow.schema.field(c).type) for c in ("width", "seed",
                                                                      "train_size")],
            "polars": [str(by_polars[c].dtype) for c in ("width", "seed", "train_size")],
            "duckdb": [str(by_duckdb[c].types[0]) for c in ("width", "seed", "train_size")],
        },
        "widths_sorted": sorted(by_pandas["width"].unique().tolist()),
        "pandas": sorted(by_pandas.columns), "pyarrow": sorted(by_arrow.column_names),
        "polars": sorted(by_polars.columns), "duckdb": sorted(by_duckdb.columns),
        "rows": [len(by_pandas), by_arrow.num_rows, by_polars.height,
                 duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0]],
    }
    if t == "metrics":  # one number four ways: mean test error per width
        seen[t]["by_width"] = {  # no cast: width is a number in the files
            "pandas": by_pandas.groupby("width").test_error.mean().to_dict(),
            "pyarrow": by_arrow.to_pandas().groupby("width").test_error.mean().to_dict(),
            "polars": dict(by_polars.group_by("width").agg(pl.col("test_error").mean())
                .iter_rows()),
            "duckdb": dict(duckdb.sql(f"select width, avg(test_error) "
                f"from read_parquet('{glob}') group by 1").fetchall()),
        }
for f in files:
    path = f"{root}/{f}.parquet"
    seen[f] = {
        "pandas": sorted(pd.read_parquet(path).columns),
        "pyarrow": sorted(pq.read_table(path).column_names),
        "polars": sorted(pl.read_parquet(path).columns),
        "duckdb": sorted(duckdb.sql(f"select * from read_parquet('{path}')").columns),
        "rows": [len(pd.read_parquet(path)), pq.read_metadata(path).num_rows,
                 pl.read_parquet(path).height,
                 duckdb.sql(f"select count(*) from read_parquet('{path}')").fetchall()[0][0]],
    }
seen["summary"] = sorted(json.load(open(f"{root}/summary.json")))
seen["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[4].split(","))
print(json.dumps(seen, default=str))
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    grid = write_grid(root / "readers.yaml", GRID)
    proc = jamsweep("submit", str(grid), "--results", str(root / "res"), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    return root / "res" / "readers"


@pytest.fixture(scope="module")
def seen(sweep, tmp_path_factory):
    empty = tmp_path_factory.mktemp("elsewhere")  # not the repository: nothing to import
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            READERS,
            str(sweep),
            ",".join(TABLES),
            ",".join(FILES),
            ",".join(JAMSWEEP_MODULES),
        ],
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def documented_columns() -> dict[str, set[str]]:
    """The columns docs/results.md lists, per file: the first cell of each table row under
    the file's heading (a cell may name several, `a`, `b`); the key and axis columns go to
    every run table."""
    doc = (ROOT / "docs" / "results.md").read_text()
    found: dict[str, set[str]] = {}
    for part in re.split(r"^#+ ", doc, flags=re.M)[1:]:
        heading, body = part.split("\n", 1)
        names = set()
        for row in re.findall(r"^\| (`[^|]+) \|", body, flags=re.M):
            names |= set(re.findall(r"`(\w+)`", row))
        for file in (*TABLES, *FILES, "partition", "summary"):
            if f"`{file}" in heading or (file == "partition" and "Run tables" in heading):
                found[file] = names
    return found


def test_no_reader_imported_jamsweep(seen):
    assert seen["imported"] == []


@pytest.mark.parametrize("name", TABLES + FILES)
def test_four_readers_see_the_same_columns_and_rows(seen, name):
    got = seen[name]
    assert got["pandas"] == got["pyarrow"] == got["polars"] == got["duckdb"]
    assert len(set(got["rows"])) == 1 and got["rows"][0] > 0, got["rows"]
    if name in TABLES:
        assert {"arch", "width", "seed", "train_size"} <= set(got["pandas"])  # in the files


@pytest.mark.parametrize("name", TABLES)
def test_every_reader_types_width_seed_and_axes_as_numbers(seen, name):
    """Issue 15: not text categories that sort [12, 16, 3, ...]."""
    types = seen[name]["types"]
    assert types["pandas"] == ["float64", "int64", "int64"]
    assert types["pyarrow"] == ["double", "int64", "int64"]
    assert types["polars"] == ["Float64", "Int64", "Int64"]
    assert types["duckdb"] == ["DOUBLE", "BIGINT", "BIGINT"]
    assert seen[name]["widths_sorted"] == [1.5, 6.0]


def test_four_readers_agree_on_a_number(seen, sweep):
    by_width = seen["metrics"]["by_width"]
    reference = {float(k): v for k, v in by_width["pandas"].items()}
    assert sorted(reference) == [1.5, 6.0]
    for reader in ("pyarrow", "polars", "duckdb"):
        got = {float(k): v for k, v in by_width[reader].items()}
        assert got == pytest.approx(reference), reader


def test_docs_results_md_names_every_column_of_every_file(seen):
    documented = documented_columns()
    partition = documented["partition"]
    assert partition == {"arch", "width", "seed", *AXES}
    for name in TABLES + FILES:
        actual = set(seen[name]["pandas"])
        expected = documented[name] | (partition if name in TABLES else set())
        assert actual == expected, (name, actual ^ expected)
    assert set(seen["summary"]) == documented["summary"]
