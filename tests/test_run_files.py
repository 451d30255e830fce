"""A finished run's files, written together (workers.io.write_run_files): each whole or
absent after a crash, and the metrics file (the run's marker) only once the others are
durable. Real files, real processes killed with SIGKILL; no Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.results.store import finished_run_ids
from schemas.grid import parse_grid
from schemas.layout import FLAT, SweepLayout
from workers import io

ROOT = Path(__file__).resolve().parents[1]
GRID = """
sweep: crash
dataset: {name: digits_parity_pca, train_size: 20, test_size: 20, pca_dim: 10}
architectures: [{name: fc2, depth: 2, widths: [3]}]
seeds: 1
training: {max_steps: 1}
"""


def _spec():
    return parse_grid(GRID).expand()[0]


def _visible(root: Path) -> list[str]:
    """Every file a reader of the folder could open (hidden temporaries excluded)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def test_every_temporary_is_durable_before_any_rename_and_the_rest_before_the_marker(
    tmp_path, monkeypatch
):
    """The power-loss argument, as the order of the system calls: no name is given to a
    file whose bytes are not fsync'd, and the other files' renames are made durable (their
    folders fsync'd) before the marker is renamed into place."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:  # the fsyncs run on threads
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        events.append(("rename", f"{src} -> {dst}"))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files = [
        (str(tmp_path / "logits" / "r.parquet"), b"L" * 100),
        (str(tmp_path / "trace" / "r.parquet"), b"T" * 10),
        (str(tmp_path / "models" / "r.pt"), b"M" * 7),
        (str(tmp_path / "metrics" / "r.parquet"), b"X" * 3),
    ]
    io.write_run_files(files)

    for path, data in files:
        assert Path(path).read_bytes() == data
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == 4
    synced = {what for kind, what in events[: renames[0]] if kind == "fsync"}
    for path, _ in files:  # each file's temporary, fsync'd before the first rename
        name = os.path.basename(path)
        assert any(os.path.basename(s).startswith(f".{name}.tmp-") for s in synced), name
    assert str(tmp_path) in synced  # the new folders made durable in it, before any rename
    marker = renames[-1]
    assert events[marker][1].endswith(str(tmp_path / "metrics" / "r.parquet"))
    between = {what for kind, what in events[renames[2] : marker] if kind == "fsync"}
    assert between == {str(tmp_path / d) for d in ("logits", "trace", "models")}
    assert _visible(tmp_path) == [
        "logits/r.parquet",
        "metrics/r.parquet",
        "models/r.pt",
        "trace/r.parquet",
    ]


def test_an_error_before_the_marker_leaves_the_run_unfinished_and_no_temporaries(
    tmp_path, monkeypatch
):
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if dst.endswith("metrics.parquet"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    files = [(str(tmp_path / "logits.parquet"), b"L"), (str(tmp_path / "metrics.parquet"), b"X")]
    with pytest.raises(OSError, match="No space"):
        io.write_run_files(files)
    assert sorted(os.listdir(tmp_path)) == ["logits.parquet"]  # no marker, no temporary


# A worker that trains the run and blocks (forever) in one step of writing its files, so
# that the test kills it there with SIGKILL, as a dead node or the OOM killer would.
_WORKER = """
import os, stat, sys, time
sys.path.insert(0, {root!r})
from schemas.grid import parse_grid
from schemas.layout import SweepLayout
from workers import execute, io
spec = parse_grid({grid!r}).expand()[0]
layout = SweepLayout({results!r}, "crash", 2)
io.write_text(layout.grid_yaml, {grid!r})

def block(*args):
    open({ready!r}, "w").close()
    time.sleep(600)

for table in ("logits", "trace", "models", "metrics"):  # made here: a new folder's fsync
    os.makedirs(os.path.join(layout.root, table), exist_ok=True)  # is not the one to block
real_fsync = os.fsync

def fsync_of_files(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):  # a folder's fsync (a new folder's) goes on
        block()
    real_fsync(fd)

if {where!r} == "data":
    os.fsync = fsync_of_files  # the first round: temporaries written, not yet durable
else:
    io._fsync_dir = block  # the second: logits, trace and model renamed, metrics not yet
execute.execute(spec, layout)
"""


def _kill_while_writing(tmp_path: Path, where: str) -> SweepLayout:
    ready = tmp_path / f"ready-{where}"
    code = _WORKER.format(
        root=str(ROOT), grid=GRID, results=str(tmp_path / "results"), ready=str(ready), where=where
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the worker never reached its write"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return SweepLayout(str(tmp_path / "results"), "crash", 2)


def test_a_worker_killed_before_its_files_are_durable_leaves_no_result(tmp_path):
    layout = _kill_while_writing(tmp_path, "data")
    spec = _spec()
    assert layout.tables_layout == FLAT
    root = Path(layout.root)
    assert _visible(root) == ["grid.yaml"]  # only hidden temporaries beside it
    assert any(p.name.startswith(".") for p in root.rglob("*.tmp-*"))
    assert io.list_files(layout.metrics_dir) == []
    assert finished_run_ids(layout, [spec]) == set()


def test_a_worker_killed_before_its_marker_leaves_an_unfinished_run_trained_once_again(
    tmp_path, one_torch_thread
):
    from workers.execute import execute

    layout = _kill_while_writing(tmp_path, "dirs")
    spec = _spec()
    root = Path(layout.root)
    visible = _visible(root)
    assert not any(v.startswith("metrics/") for v in visible), visible
    for table in ("logits", "trace"):  # there, and whole
        path = layout.file(table, spec.run_id, *spec.key)
        assert pq.read_table(path).num_rows > 0
    assert finished_run_ids(layout, [spec]) == set()  # no marker: not a result

    row = execute(spec, layout)  # the retry
    assert finished_run_ids(layout, [spec]) == {spec.run_id}
    metrics = pq.read_table(layout.metrics_dir)
    assert metrics.column("run_id").to_pylist() == [spec.run_id]  # once, not twice
    assert row["test_error"] == pytest.approx(metrics.column("test_error")[0].as_py())
    logits = pq.read_table(layout.logits_dir)
    assert set(logits.column("run_id").to_pylist()) == {spec.run_id}
    assert logits.num_rows == pq.read_table(layout.file("logits", spec.run_id, *spec.key)).num_rows


def test_small_tables_are_snappy_large_ones_zstd_and_both_read_back(tmp_path):
    small = pa.table({"x": list(range(10))})
    large = pa.table({"x": list(range(100_000))})
    for name, table, codec in (("s", small, "SNAPPY"), ("l", large, "ZSTD")):
        path = str(tmp_path / f"{name}.parquet")
        io.write_table(path, table)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == codec
        assert pq.read_table(path).equals(table)


def test_on_an_object_store_each_file_is_one_upload_the_marker_last(s3, monkeypatch):
    """An object is visible once its upload completes: the metrics file is put after the
    others have landed (a real S3 server on loopback, moto)."""
    uploads: list[str] = []
    real_write = io.write_bytes

    def write_bytes(location: str, data: bytes) -> None:
        real_write(location, data)
        head = s3.head_object(Bucket="sweeps", Key=location.removeprefix("s3://sweeps/"))
        uploads.append(location if head["ContentLength"] == len(data) else "torn")

    monkeypatch.setattr(io, "write_bytes", write_bytes)
    files = [
        ("s3://sweeps/lab/logits/r.parquet", b"L" * 100),
        ("s3://sweeps/lab/trace/r.parquet", b"T" * 10),
        ("s3://sweeps/lab/metrics/r.parquet", b"X" * 3),
    ]
    io.write_run_files(files)
    assert uploads == [location for location, _ in files]  # in order, the marker last
    for location, data in files:
        assert io.read_bytes(location) == data
