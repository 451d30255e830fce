"""Everyday use of the CLI, without a cluster: sweeps named by path or by name (and
$JAMSWEEP_RESULTS), status filters, one run, the in-place --watch, show, init, examples in
every --help, and options that do not apply refused. Sweeps are written by
tests/sweepfiles.py (no Ray); the CLI runs in a fresh process, or on a pseudo-terminal."""

from __future__ import annotations

import json
import re
from io import StringIO

import pyarrow as pa
import pytest
from rich.console import Console

from orchestrator.cli.console import SubmitProgress
from orchestrator.cli.starter import write_starter
from orchestrator.cluster.lease import Holder, acquire
from orchestrator.cluster.progress import Progress
from orchestrator.cluster.tracker import records_table
from orchestrator.results.formats import MISSING
from orchestrator.sweep import reduce
from schemas.errors import JamsweepError
from schemas.run import RunRecord, RunStatus
from tests.conftest import ROOT, SHARED_DATA, jamsweep
from tests.sweepfiles import write_sweep
from tests.terminal import jamsweep_on_a_terminal
from workers import io

COMMANDS = [
    "submit",
    "status",
    "cancel",
    "reduce",
    "plot",
    "report",
    "refine",
    "ls",
    "init",
    "show",
]


def fails_cleanly(proc, *needles: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished, reduced synthetic sweep whose status says: 2 failed (one with an error
    text), the rest done; one run has a trace file."""
    res = tmp_path_factory.mktemp("cli") / "res"
    files = write_sweep(str(res), sweep="synth", widths=[2, 4, 8, 16], seeds=2)
    reduce("synth", results=str(res), figures=True)
    records = []
    for k, spec in enumerate(files.specs):
        failed = k in (1, 4)
        records.append(
            RunRecord(
                run_id=spec.run_id,
                arch=spec.arch.name,
                width=spec.width,
                seed=spec.seed,
                n_params=spec.n_params,
                state=RunStatus.FAILED if failed else RunStatus.DONE,
                attempts=1,
                node="node-a",
                error="loss became nan at step 812" if failed else None,
            )
        )
    for spec in files.specs[1::3]:  # failed runs leave no metrics file
        io.delete(files.layout.metrics(*spec.key))
    io.write_table(files.layout.status, records_table(records))
    traced = files.specs[0]
    trace = [{"run_id": traced.run_id, "step": s, "loss": 1.0 / (s + 1), "n_unsat": 40 - s // 10}
             for s in range(0, 400, 10)]  # fmt: skip
    io.write_table(files.layout.trace(*traced.key), pa.Table.from_pylist(trace))
    return files


def test_every_help_ends_with_an_example():
    for command in [None, *COMMANDS]:
        proc = jamsweep(*([command] if command else []), "--help")
        assert proc.returncode == 0, proc.stderr
        lines = [line.strip(" │") for line in proc.stdout.splitlines() if line.strip(" │")]
        assert "jamsweep " in lines[-1], lines[-1]
        assert any(line.startswith(("Example", "Examples")) for line in lines[-4:]), lines[-4:]


def test_a_sweep_by_path_by_name_and_by_environment(sweep, tmp_path, monkeypatch):
    path = sweep.layout.root
    by_path = json.loads(jamsweep("status", path, "--json", cwd=tmp_path).stdout)
    by_name = jamsweep("status", "synth", "--json", "--results", sweep.layout.results, cwd=tmp_path)
    assert json.loads(by_name.stdout)["counts"] == by_path["counts"]
    assert by_path["counts"]["failed"] == 2 and by_path["counts"]["done"] == 6
    monkeypatch.setenv("JAMSWEEP_RESULTS", sweep.layout.results)
    from_env = jamsweep("status", "synth", "--json", cwd=tmp_path)
    assert json.loads(from_env.stdout)["counts"] == by_path["counts"]
    assert "synth: pending 0" in jamsweep("ls", cwd=tmp_path).stdout
    for command in ("show", "plot", "report", "reduce"):
        assert jamsweep(command, "synth", cwd=tmp_path).returncode == 0, command
    monkeypatch.delenv("JAMSWEEP_RESULTS")
    fails_cleanly(jamsweep("status", "synth", cwd=tmp_path), "no sweep 'synth' under")
    fails_cleanly(
        jamsweep("status", path, "--results", str(tmp_path), cwd=tmp_path),
        "--results names another one",
    )


def test_status_filters_by_state(sweep):
    failed = jamsweep("status", sweep.layout.root, "--state", "failed")
    assert failed.returncode == 0, failed.stderr
    shown = {r.run_id for r in sweep.specs if r.run_id in failed.stdout}
    assert shown == {sweep.specs[1].run_id, sweep.specs[4].run_id}
    assert "loss became nan at step 812" in failed.stdout
    both = json.loads(
        jamsweep("status", sweep.layout.root, "--json", "--state", "failed,done").stdout
    )
    assert len(both["runs"]) == 8
    only = json.loads(jamsweep("status", sweep.layout.root, "--json", "--state", "failed").stdout)
    assert {r["state"] for r in only["runs"]} == {"failed"} and only["counts"]["done"] == 6
    none = jamsweep("status", sweep.layout.root, "--state", "running")
    assert "no run is running" in none.stdout
    fails_cleanly(jamsweep("status", sweep.layout.root, "--state", "broken"), "no such state")


def test_status_of_one_run(sweep):
    failed = sweep.specs[1]
    proc = jamsweep("status", sweep.layout.root, "--run", failed.run_id[:6])
    assert proc.returncode == 0, proc.stderr
    assert f"run {failed.run_id}" in proc.stdout and "failed (attempts 1" in proc.stdout
    assert "loss became nan at step 812" in proc.stdout
    assert "no per-run log file" in proc.stdout
    traced = jamsweep("status", sweep.layout.root, "--run", sweep.specs[0].run_id)
    assert "the last 10 rows of its" in traced.stdout, traced.stdout
    assert " 390 " in traced.stdout and " 300 " in traced.stdout and " 290 " not in traced.stdout
    assert "test error" in traced.stdout and "metrics" in traced.stdout
    fails_cleanly(jamsweep("status", sweep.layout.root, "--run", "zzzz"), "no run whose id")


def test_show_prints_grid_n_star_fits_and_files(sweep):
    proc = jamsweep("show", sweep.layout.root)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(io.read_text(sweep.layout.summary))
    assert "grid.yaml:" in proc.stdout and "widths: [2, 4, 8, 16]" in proc.stdout
    n_star = summary["n_star"]["fc5"]
    assert f"fc5: N* = {MISSING if n_star is None else n_star}" in proc.stdout
    assert "fit " in proc.stdout
    assert "converged" in proc.stdout and re.search(r"│ [012]/2 ", proc.stdout)  # k/n
    assert sweep.layout.figure("fig2_test_error") in proc.stdout.replace("\n", "")
    assert "report:   none yet" in proc.stdout or sweep.layout.report in proc.stdout


def test_watch_redraws_in_place_until_the_round_ends(sweep, tmp_path):
    layout = sweep.layout.__class__(str(tmp_path), "synth")
    for name in ("grid_yaml", "manifest"):
        io.write_bytes(getattr(layout, name), io.read_bytes(getattr(sweep.layout, name)))
    records = [
        RunRecord(run_id=s.run_id, arch=s.arch.name, width=s.width, seed=s.seed,
                  n_params=s.n_params, state=RunStatus.RUNNING, node="node-a")
        for s in sweep.specs
    ]  # fmt: skip
    held = acquire(layout, Holder.this_process(None))  # a driver at work on the sweep
    io.write_table(layout.status, records_table(records, held.token, live=True))

    ended = []

    def end_the_round_once_seen_running(screen: bytes) -> None:
        # end the round once the table was drawn twice while running: a redraw, seen
        if not ended and screen.count(b"running 8") >= 2:
            done = [r.model_copy(update={"state": RunStatus.DONE}) for r in records]
            io.write_table(layout.status, records_table(done, held.token))
            held.release()
            ended.append(True)

    rc, screen = jamsweep_on_a_terminal(
        "status", layout.root, "--watch", timeout=120, while_running=end_the_round_once_seen_running
    )
    assert rc == 0, screen
    assert "running 8" in screen and "done 8" in screen, screen
    assert "\x1b[2K" in screen or "\x1b[1A" in screen, "no in-place redraw"  # rich Live's erase
    assert screen.count("┏") >= 2  # the table drawn again, not printed once


def test_watch_on_a_pipe_prints_plain_lines(sweep):
    proc = jamsweep("status", sweep.layout.root, "--watch")
    assert proc.returncode == 0 and "\x1b[" not in proc.stdout
    assert proc.stdout.startswith("synth: pending 0  running 0  done 6  failed 2")


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    def progress(finished: int, running: int, elapsed_s: float) -> Progress:
        return Progress("s", 10, 2, finished, 0, 0, running, elapsed_s)

    terminal = Console(file=StringIO(), force_terminal=True, width=150)
    with SubmitProgress(terminal) as bar:
        bar.update(progress(2, 2, 1.0))
        bar.echo("[3/10] done      fc5 h=4 seed=0")
        bar.update(progress(6, 2, 60.0))
    shown = terminal.file.getvalue()
    assert "6/10" in shown and "done 6  failed 0  running 2" in shown
    assert "4.0 runs/min" in shown and "ETA 1m00s" in shown and "[3/10] done" in shown
    plain = Console(file=StringIO(), force_terminal=False, width=150)
    with SubmitProgress(plain, plain_every_s=3600) as bar:
        for finished in range(2, 11):
            bar.update(progress(finished, 1, 15.0 * (finished - 2)))
    lines = plain.file.getvalue().splitlines()
    assert "\x1b[" not in plain.file.getvalue()
    assert (
        lines[0]
        == "progress s: 2/10 finished (2 done, 0 failed, 0 cancelled), 1 running, - runs/min, ETA -"
    )
    assert (
        lines[-1].startswith("progress s: 10/10 finished") and "4.0 runs/min, ETA 0s" in lines[-1]
    )
    assert len(lines) == 2  # at most one line per plain_every_s, and the last one


def test_progress_rate_and_eta():
    p = Progress("s", total=100, already_done=20, done=50, failed=10, cancelled=0, running=4,
                 elapsed_s=120.0)  # fmt: skip
    assert p.finished == 60 and p.remaining == 40
    assert p.rate_per_min == pytest.approx(20.0)  # 40 runs of this round in 2 minutes
    assert p.eta_s == pytest.approx(120.0)


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10"])
def test_init_writes_a_commented_grid_that_validates(tmp_path, dataset):
    root = {"mnist": [str(SHARED_DATA)], "cifar10": [str(SHARED_DATA / "cifar10-jpeg")]}
    args = ["init", str(tmp_path / "g.yaml"), "--dataset", dataset]
    proc = jamsweep(*args, *(["--root", *root[dataset]] if dataset in root else []))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "g.yaml").read_text()
    assert text.count("#") > 10 and "sweep: g" in text
    dry = jamsweep("submit", str(tmp_path / "g.yaml"), "--dry-run", "--results", str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert "sweep g: 24 runs, 0 done, 24 would run" in dry.stdout
    fails_cleanly(jamsweep(*args), "exists", "--force")
    assert (
        jamsweep(
            *args, "--force", *(["--root", *root[dataset]] if dataset in root else [])
        ).returncode
        == 0
    )


def test_init_root_relative_to_here_is_written_relative_to_the_grid(tmp_path):
    (tmp_path / "grids").mkdir()
    proc = jamsweep(
        "init", "grids/m.yaml", "--dataset", "mnist", "--root", str(SHARED_DATA), cwd=tmp_path
    )
    assert proc.returncode == 0
    relative = jamsweep(
        "init", "grids/r.yaml", "--dataset", "mnist", "--root", "../shared/data", cwd=ROOT
    )
    assert relative.returncode == 0
    try:
        assert "root: ../../shared/data" in (ROOT / "grids" / "r.yaml").read_text()
    finally:
        (ROOT / "grids" / "r.yaml").unlink()
        (ROOT / "grids").rmdir()
    fails_cleanly(
        jamsweep("init", str(tmp_path / "d.yaml"), "--root", "x"), "does not apply to digits"
    )
    usage = jamsweep("init", str(tmp_path / "d.yaml"), "--dataset", "imagenet")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr  # a usage error
    assert "'imagenet' is not one of" in usage.stderr and not (tmp_path / "d.yaml").exists()
    with pytest.raises(JamsweepError, match="no starter grid for 'imagenet'; there are: mnist"):
        write_starter(str(tmp_path / "d.yaml"), dataset="imagenet", force=False)  # the API
    assert not (tmp_path / "d.yaml").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "examples/demo.yaml", "--detach"], "--detach needs an http:// address"),
        (["submit", "examples/demo.yaml", "--shared-fs"], "--shared-fs needs an http:// address"),
        (["submit", "examples/demo.yaml", "--address", "ray://127.0.0.1:9", "--num-cpus", "2"],
         "--num-cpus applies to this machine's Ray"),
        (["refine", "synth", "--address", "auto", "--num-cpus", "1"], "--num-cpus applies"),
        (["refine", "synth", "--address", "http://127.0.0.1:9"], "drives its runs from"),
        (["status", "synth", "--run", "ab", "--state", "done"], "--run shows one run"),
        (["status", "--state", "done"], "--state needs a SWEEP"),
        (["reduce", "synth", "--address", "auto"], "No such option: --address"),
        (["reduce", "synth", "--ensemble-over", "some"], "'some' is not one of"),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused(tmp_path, args, needle):
    proc = jamsweep(*args, "--results", str(tmp_path), cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    proc = jamsweep("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"jamsweep {version('jamsweep')}"


def test_watch_as_json_prints_one_object_per_look_and_ends_with_the_round(sweep):
    proc = jamsweep("status", sweep.layout.root, "--watch", "--json", "--every", "0.2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # no driver at work: one look, then the watch is over
    answer = json.loads(lines[0])
    assert answer["alive"] is False and sum(answer["counts"].values()) == len(sweep.specs)
