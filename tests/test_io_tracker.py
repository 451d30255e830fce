from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from orchestrator.cluster.tracker import Tracker, read_records
from schemas.errors import JamsweepError
from schemas.layout import FLAT, HIVE, SweepLayout, format_width
from schemas.run import InvalidTransition, RunRecord, RunStatus
from workers import io


def test_atomic_write_leaves_only_the_whole_file(tmp_path):
    target = str(tmp_path / "a" / "b" / "t.parquet")
    io.write_table(target, pa.table({"x": [1, 2, 3]}))
    assert os.listdir(tmp_path / "a" / "b") == ["t.parquet"]
    assert io.read_table(target).column("x").to_pylist() == [1, 2, 3]


def test_hidden_partial_files_are_never_listed_as_results(tmp_path):
    folder = tmp_path / "metrics" / "arch=a" / "width=2" / "seed=0"
    folder.mkdir(parents=True)
    (folder / ".part-0.parquet.tmp-1234").write_bytes(b"PAR1 half written")
    assert io.list_files(str(tmp_path / "metrics")) == []
    io.write_table(str(folder / "part-0.parquet"), pa.table({"x": [1]}))
    assert io.list_files(str(tmp_path / "metrics")) == [str(folder / "part-0.parquet")]


def test_a_torn_checkpoint_is_no_checkpoint(tmp_path):
    path = str(tmp_path / "c.pt")
    io.save_checkpoint(path, {"step": 3})
    assert io.load_checkpoint(path) == {"step": 3}
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    assert io.load_checkpoint(path) is None
    assert io.load_checkpoint(str(tmp_path / "none.pt")) is None


def test_unwritable_results_location_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a file
            target = str(tmp_path / "file")
            open(target, "w").close()
            ro_target = target + "/sub"
        else:
            ro_target = str(ro)
        with pytest.raises(JamsweepError, match="cannot write results"):
            io.check_writable(ro_target)
    finally:
        ro.chmod(0o700)


def test_layout_paths():
    lay = SweepLayout("s3://bucket/res/", "sw", version=HIVE)  # a sweep of layout 1
    assert (
        lay.logits("fc5", 3.5, 2)
        == "s3://bucket/res/sw/logits/arch=fc5/width=3.5/seed=2/part-0.parquet"
    )
    assert lay.metrics("fc5", 12.0, 0).endswith("metrics/arch=fc5/width=12/seed=0/part-0.parquet")
    assert format_width(7.0) == "7" and format_width(0.25) == "0.25"
    flat = SweepLayout("s3://bucket/res/", "sw", version=FLAT)  # layout 2: a file per run id
    assert flat.file("metrics", "abc", "fc5", 3.5, 2) == "s3://bucket/res/sw/metrics/abc.parquet"
    with pytest.raises(ValueError, match="layout 2"):
        flat.metrics("fc5", 3.5, 2)


def record(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, arch="a", width=2.0, seed=0, n_params=10)


def test_status_enum_has_behaviour():
    assert RunStatus.DONE.is_terminal() and RunStatus.FAILED.is_terminal()
    assert RunStatus.CANCELLED.is_terminal() and not RunStatus.RUNNING.is_terminal()
    with pytest.raises(InvalidTransition):
        record("x").moved_to(RunStatus.DONE).moved_to(RunStatus.RUNNING)


def test_tracker_records_attempts_and_persists_when_the_round_closes(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    tracker = Tracker(lay, persist_every_s=3600)
    tracker.register([record("r1"), record("r2")])
    assert tracker.started("r1", "node-a")
    assert tracker.started("r1", "node-b")  # a retry
    tracker.finished([("r1", RunStatus.DONE, None), ("r2", RunStatus.FAILED, "ValueError: boom")])
    tracker.close()
    on_disk = {r.run_id: r for r in read_records(lay)}
    assert on_disk["r1"].state is RunStatus.DONE and on_disk["r1"].attempts == 2
    assert on_disk["r1"].node == "node-b"
    assert on_disk["r2"].state is RunStatus.FAILED and on_disk["r2"].error == "ValueError: boom"
    assert tracker.counts() == {"done": 1, "failed": 1}


def test_cancel_closes_open_runs_and_stops_new_starts(tmp_path):
    tracker = Tracker(SweepLayout(str(tmp_path), "sw"))
    tracker.register([record("r1"), record("r2")])
    tracker.finished([("r1", RunStatus.DONE, None)])
    assert tracker.cancel() == ["r2"]
    assert not tracker.started("r2", "n")
    tracker.finished([("r2", RunStatus.DONE, None)])  # a late report does not reopen it
    assert {r.run_id: r.state for r in tracker.snapshot()} == {
        "r1": RunStatus.DONE,
        "r2": RunStatus.CANCELLED,
    }


def test_starts_reach_the_file_within_the_throttle_through_heartbeats(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    now = [100.0]
    tracker = Tracker(lay, persist_every_s=2.0, clock=lambda: now[0])
    tracker.register([record("r1")])
    tracker.started("r1", "n")  # within the throttle: not written yet
    now[0] += 1.9
    assert tracker.heartbeat()[0] is False
    assert read_records(lay)[0].state is RunStatus.PENDING
    now[0] += 0.2  # the throttle window has passed: the next beat writes it
    assert tracker.heartbeat()[0] is False
    assert read_records(lay)[0].state is RunStatus.RUNNING


def test_a_status_file_that_cannot_be_written_ends_nothing_and_is_written_later(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    now = [100.0]
    tracker = Tracker(lay, persist_every_s=2.0, clock=lambda: now[0])
    tracker.register([record("r1"), record("r2")])
    status = tmp_path / "sw" / "status.parquet"
    status.unlink()
    status.mkdir()  # a write now fails as on a full disk or a storage hiccup (EISDIR)
    (status / "keep").write_text("")
    tracker.started("r1", "n")
    tracker.finished([("r2", RunStatus.DONE, None)])
    now[0] += 5
    assert tracker.heartbeat() == (False, tracker.incarnation)  # no exception: the round goes on
    assert tracker.persist(force=True) is False
    (status / "keep").unlink()
    status.rmdir()
    now[0] += 5
    tracker.heartbeat()  # the next beat writes what the failed ones could not
    assert {r.run_id: r.state for r in read_records(lay)} == {
        "r1": RunStatus.RUNNING,
        "r2": RunStatus.DONE,
    }


def test_a_new_round_forgets_an_earlier_cancellation(tmp_path):
    tracker = Tracker(SweepLayout(str(tmp_path), "sw"))
    tracker.register([record("r1")])
    tracker.cancel()
    assert tracker.heartbeat()[0] is True
    other = SweepLayout(str(tmp_path / "elsewhere"), "sw")
    tracker.register([record("r1")], other)
    assert tracker.heartbeat()[0] is False and tracker.started("r1", "n")
    assert read_records(other)[0].run_id == "r1"


def test_a_restarted_tracker_resumes_from_its_file_and_takes_the_driver_s_replay(tmp_path):
    lay = SweepLayout(str(tmp_path), "sw")
    first = Tracker(lay)
    incarnation = first.register([record("r1"), record("r2")])
    first.finished([("r1", RunStatus.DONE, None)])  # within the throttle: not on disk yet
    again = Tracker(lay)  # as after its node died
    assert {r.run_id: r.state for r in again.snapshot()} == {
        "r1": RunStatus.PENDING,
        "r2": RunStatus.PENDING,
    }
    assert again.heartbeat()[1] != incarnation  # the driver learns it must repeat
    again.finished([("r1", RunStatus.DONE, None), ("unknown", RunStatus.DONE, None)])
    assert {r.run_id: r.state for r in again.snapshot()} == {
        "r1": RunStatus.DONE,
        "r2": RunStatus.PENDING,
    }  # a report it cannot place changes nothing
