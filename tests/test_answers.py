"""Answers that must not mislead (issue 18): an address that does not answer, a results
location that cannot be, a Jobs API that fails for a while, the runs `refine` added under
a grid whose resources changed, and the embedded Ray's token on a shared machine. Each
through the CLI in a fresh process where a user would meet it; no cluster needed."""

from __future__ import annotations

import json
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.cluster.security import protect_token, token_path
from orchestrator.results.store import ORIGIN_REFINE, add_to_manifest, planned_runs
from schemas.grid import parse_grid
from tests.conftest import jamsweep, write_grid
from tests.sweepfiles import write_sweep
from workers import io

GRID = """
sweep: answers
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [2, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 50}
"""


def fails_cleanly(proc, *needles: str) -> None:  # noqa: ANN001
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(str(tmp_path_factory.mktemp("answers")), seeds=2, widths=[2, 4])


@pytest.mark.parametrize("address", ["localhst", "ray://127.0.0.1:1", "127.0.0.1:1"])
def test_status_of_a_cluster_that_does_not_answer_is_an_error_at_once(sweep, address):
    started = time.monotonic()
    proc = jamsweep("status", sweep.layout.root, "--address", address)
    fails_cleanly(proc, "cannot reach a Ray cluster", address)
    assert time.monotonic() - started < 20  # not Ray's 30 s of client retries
    assert "warn" not in proc.stderr.lower()  # no raw warning of Ray's


def test_a_dry_run_into_a_location_that_cannot_be_written_fails(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", GRID)
    fails_cleanly(
        jamsweep("submit", str(grid), "--dry-run", "--results", "/proc/bogus"),
        "cannot write results under '/proc/bogus'",
    )
    ok = jamsweep("submit", str(grid), "--dry-run", "--results", str(tmp_path / "new" / "res"))
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / "new").exists()  # a dry run writes nothing
    assert f"Results would go to {tmp_path / 'new' / 'res' / 'answers'}" in ok.stdout


def test_ls_of_a_folder_that_does_not_exist_fails():
    fails_cleanly(jamsweep("ls", "--results", "/nonexistent/sweeps"), "does not exist")


def test_a_dry_run_says_which_finished_runs_a_smaller_grid_drops(tmp_path):
    files = write_sweep(str(tmp_path), seeds=2, widths=[2, 4])
    grid_text = io.read_text(files.layout.grid_yaml).replace("widths: [2, 4]", "widths: [4]")
    grid = write_grid(tmp_path / "smaller.yaml", grid_text)
    proc = jamsweep("submit", str(grid), "--dry-run", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 2 done, 0 would run." in proc.stdout  # no dangling colon
    assert "2 run(s) of the sweep that this grid no longer names would leave" in proc.stdout
    dropped = [s for s in files.specs if s.width == 2]
    assert all(s.run_id in proc.stdout for s in dropped)
    assert f"Results would go to {files.layout.root}" in proc.stdout.replace("\n", "")


def test_runs_added_by_refine_take_the_grid_s_resources_and_paths(tmp_path):
    files = write_sweep(str(tmp_path), seeds=1, widths=[2, 4])
    text = io.read_text(files.layout.grid_yaml)
    template = files.specs[0]
    stale = template.model_copy(
        update={
            "width": 3.0,
            "resources": template.resources.model_copy(update={"num_gpus": 1.0}),
            "checkpoint": template.checkpoint.model_copy(update={"every_steps": 7}),
        }
    )
    stale = type(template).model_validate(stale.model_dump(mode="json"))  # a fresh run id
    assert add_to_manifest(files.layout, [stale])  # as `refine` added it, on a GPU cluster
    grid = parse_grid(text + "resources: {num_cpus: 1, num_gpus: 0}\n")
    _, refined = planned_runs(grid, files.layout)
    assert [s.run_id for s in refined] == [stale.run_id]  # the same run
    assert refined[0].resources == grid.resources  # ... asking for what the grid asks now
    assert refined[0].checkpoint == grid.checkpoint
    assert ORIGIN_REFINE == "refine"


class FailingJobsAPI(BaseHTTPRequestHandler):
    """A dashboard whose job agent is not up: the version and package calls answer, every
    job submission gets Ray's 500 "No available agent to submit job" (a fake at the edge)."""

    submissions = 0

    def _answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/api/version"):
            self._answer(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"})
        elif self.path.startswith("/api/packages/"):
            self._answer(404, {})
        else:
            self._answer(200, [])

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200, {})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).submissions += 1
        data = b"No available agent to submit job"
        self.send_response(500)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_jobs_api_that_keeps_failing_is_retried_then_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("JAMSWEEP_JOBS_RETRY_S", "3")
    # Ray's client wants a token file before it dials; this one sends one that the fake
    # API ignores (without it the test passed only after another test had made one)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    protect_token()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingJobsAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        grid = write_grid(tmp_path / "g.yaml", GRID)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = ("submit", str(grid), "--address", url, "--results", str(tmp_path), "--shared-fs")
        proc = jamsweep(*args)
    finally:
        server.shutdown()
    fails_cleanly(proc, "failed to submit a job", "No available agent to submit job")
    assert FailingJobsAPI.submissions >= 2  # retried, not given up at the first 500


def test_the_embedded_ray_s_token_is_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    protect_token()
    path = token_path()
    assert path.parent == tmp_path / ".ray"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64  # 256 random bits, hex, as Ray makes them
    path.chmod(0o644)  # one that an earlier Ray wrote with the default mode
    token = path.read_text()
    protect_token()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == token


@pytest.mark.ray
def test_an_embedded_sweep_leaves_its_token_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    grid = write_grid(tmp_path / "g.yaml", GRID.replace("widths: [2, 6]", "widths: [6]"))
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"), "--num-cpus", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
