"""The notebook API (`open_sweep`) on result files written directly (no Ray): paths or names,
filters pushed down to pyarrow and checked, typed columns, datetimes, errors that say what
was wrong, and a docstring with an example on every method."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sweepfiles import write_sweep

from orchestrator import sweep as api
from orchestrator.cluster.tracker import records_table
from orchestrator.results import Sweep, open_sweep
from schemas.errors import JamsweepError
from schemas.run import RunRecord, RunStatus
from workers import io

WIDTHS = [2, 4, 8, 24]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_sweep(str(tmp_path_factory.mktemp("r") / "results"), widths=WIDTHS, seeds=3)


@pytest.fixture(scope="module")
def sweep(files) -> Sweep:
    return open_sweep(files.layout.root)


def everything(sweep: Sweep, table: str) -> pd.DataFrame:
    """The whole table read by pandas alone, partition columns cast by hand."""
    frame = pd.read_parquet(f"{sweep.layout.root}/{table}")
    return frame.astype({"arch": str, "width": float, "seed": int})


def test_a_sweep_opens_by_path_str_or_pathlib_and_by_name(files, monkeypatch):
    root = Path(files.layout.root)
    assert open_sweep(root).layout.root == str(root)
    assert open_sweep(str(root) + "/").layout.root == str(root)
    monkeypatch.setenv("JAMSWEEP_RESULTS", str(root.parent))
    assert open_sweep("synth").layout.root == str(root)
    monkeypatch.delenv("JAMSWEEP_RESULTS")
    monkeypatch.chdir(root.parent.parent)  # ./results/synth, as the CLI looks it up
    assert open_sweep("synth").layout.root == str(root)
    assert open_sweep("synth", results=str(root.parent)).layout.root == str(root)


def test_a_sweep_that_is_not_there_is_named_with_those_that_are(files, tmp_path):
    results = str(Path(files.layout.root).parent)
    with pytest.raises(JamsweepError, match="no sweep 'synthh' .* sweeps there: synth"):
        open_sweep("synthh", results=results)
    with pytest.raises(JamsweepError, match="not int"):
        open_sweep(42)  # type: ignore[arg-type]
    with pytest.raises(JamsweepError, match="no sweep 'nothing'"):
        open_sweep(tmp_path / "nothing")


def test_an_unknown_split_is_an_error_naming_the_splits(sweep):
    with pytest.raises(JamsweepError, match="split='valid' .* 'train', 'test' or None"):
        sweep.logits(split="valid")
    with pytest.raises(JamsweepError, match="'train' or 'test'"):
        sweep.inputs(split="valid")


def test_filters_return_what_pandas_filtering_of_everything_returns(sweep):
    full = everything(sweep, "logits")
    got = sweep.logits(split="test", width=[2, 8], seed=1, step=[0])
    want = full[
        (full.split == "test") & full.width.isin([2.0, 8.0]) & (full.seed == 1) & (full.step == 0)
    ]
    assert len(got) == len(want) > 0
    key = ["width", "sample"]
    got, want = got.sort_values(key), want.sort_values(key)
    np.testing.assert_array_equal(got["f"].to_numpy(), want["f"].to_numpy())
    picked = sweep.logits(split="train", arch="fc5", width=4, columns=["seed", "sample", "f"])
    assert list(picked.columns) == ["seed", "sample", "f"]
    assert len(picked) == len(full[(full.split == "train") & (full.width == 4.0)])
    metrics = sweep.metrics(converged=True)
    assert len(metrics) == int(everything(sweep, "metrics").converged.sum())


def test_step_final_is_each_runs_last_step(sweep, files):
    final = sweep.logits(split="test", step="final")
    assert len(final) > 0
    steps = final.groupby("run_id").step.unique()
    assert {rid: list(s) for rid, s in steps.items()} == {
        rid: [step] for rid, step in files.final_step.items()
    }
    narrow = sweep.logits(split="test", step="final", width=8, columns=["seed", "f"])
    assert list(narrow.columns) == ["seed", "f"] and len(narrow) == 3 * 300


def test_a_partition_filter_opens_only_the_files_it_names(files, tmp_path):
    """The widest width's logits file is spoilt: reading it fails, the other widths read."""
    copy = write_sweep(str(tmp_path / "results"), widths=WIDTHS, seeds=2)
    io.write_bytes(copy.layout.logits("fc5", 24, 0), b"not parquet at all")
    sweep = open_sweep(copy.layout.root)
    assert len(sweep.logits(width=[2, 4], seed=0)) > 0
    with pytest.raises(Exception, match="(?i)parquet"):
        sweep.logits(seed=0)


def test_partition_columns_are_typed(sweep):
    frame = sweep.logits(split="test", width=2)
    assert frame["width"].dtype == np.float64 and frame["seed"].dtype == np.int64
    assert isinstance(frame["arch"].iloc[0], str) and frame["sample"].dtype == np.int64
    assert sweep.manifest()["width"].dtype == np.float64


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"depth": 3}, "logits has no column 'depth': filter or select among .*width"),
        ({"width": 7}, r"width=7: no run of sweep 'synth' has it; its width values: 2\.0, 4\.0"),
        ({"seed": "one"}, r"seed='one': the column 'seed' holds int64 values"),
        ({"arch": "fc9"}, r"arch='fc9': no run .* values: fc5"),
        ({"columns": ["fx"]}, "no column 'fx'"),
        ({"width": []}, "at least one value"),
    ],
)
def test_bad_filters_say_what_was_wrong(sweep, where, message):
    with pytest.raises(JamsweepError, match=message):
        sweep.logits(**where)


def test_status_timestamps_are_utc_datetimes(files):
    layout = files.layout
    started = 1_764_640_000.0  # 2025-12-02 01:46:40 UTC
    records = [
        RunRecord(
            run_id=s.run_id,
            arch=s.arch.name,
            width=s.width,
            seed=s.seed,
            n_params=s.n_params,
            state=RunStatus.DONE,
            submitted_at=started - 5,
            started_at=started,
            ended_at=started + 90.5,
        )
        for s in files.specs
    ]
    io.write_table(layout.status, records_table(records))
    status = open_sweep(layout.root).status()
    assert str(status["started_at"].dtype) in ("datetime64[ns, UTC]", "datetime64[us, UTC]")
    assert status["started_at"].iloc[0] == pd.Timestamp("2025-12-02 01:46:40", tz="UTC")
    assert (status["ended_at"] - status["started_at"]).dt.total_seconds().eq(90.5).all()


def test_reduced_files_before_a_reduce_say_how_to_make_them(tmp_path):
    files = write_sweep(str(tmp_path), widths=[2, 4], seeds=2)
    sweep = open_sweep(files.layout.root)
    for read in (sweep.curves, sweep.ensemble, sweep.summary):
        with pytest.raises(JamsweepError, match="not reduced yet .*jamsweep reduce"):
            read()
    api.reduce("synth", results=str(tmp_path), figures=False)
    assert sorted(sweep.curves().width) == [2.0, 4.0]


def test_a_sweep_without_finished_runs_gives_empty_typed_frames(tmp_path):
    files = write_sweep(str(tmp_path), widths=[2], seeds=1)
    for folder in ("logits", "metrics"):
        for path in io.list_files(f"{files.layout.root}/{folder}"):
            io.delete(path)
        Path(files.layout.root, folder).rename(Path(files.layout.root, f"gone-{folder}"))
    sweep = open_sweep(files.layout.root)
    empty = sweep.logits(split="test", width=2)
    assert empty.empty and {"run_id", "width", "f", "sample"} <= set(empty.columns)
    assert sweep.metrics().empty


def test_every_public_method_has_a_docstring_with_an_example():
    public = [open_sweep] + [
        member
        for name, member in inspect.getmembers(Sweep, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert len(public) >= 10
    missing = [f.__name__ for f in public if ">>>" not in (f.__doc__ or "")]
    assert not missing, missing
