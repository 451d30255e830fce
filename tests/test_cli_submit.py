"""`jamsweep submit` as a user sees it, on a real embedded Ray: a live bar on a terminal,
plain lines on a pipe, and the exact status/reduce commands of the sweep it ran."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.conftest import jamsweep, write_grid
from tests.terminal import jamsweep_on_a_terminal

pytestmark = pytest.mark.ray

TINY = """
sweep: tiny
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [3, 6]}
seeds: 2
training: {lr_max: 0.01, max_steps: 300}
"""


def test_on_a_terminal_submit_draws_a_live_bar(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", TINY)
    results = tmp_path / "from-env"
    rc, screen = jamsweep_on_a_terminal(
        "submit", str(grid), "--num-cpus", "2", env={"JAMSWEEP_RESULTS": str(results)}
    )
    assert rc == 0, screen[-3000:]
    assert "━" in screen and "4/4" in screen, screen[-3000:]  # the bar, drawn to the end
    assert "done 4  failed 0  running 0" in screen and "runs/min" in screen and "ETA" in screen
    assert "\r\x1b[2K" in screen  # redrawn in place
    assert f"jamsweep status {results}/tiny" in screen  # $JAMSWEEP_RESULTS was the default
    status = json.loads(jamsweep("status", f"{results}/tiny", "--json").stdout)
    assert status["counts"]["done"] == 4


def test_on_a_pipe_submit_prints_plain_lines_and_the_next_commands(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", TINY)
    results = tmp_path / "res"
    proc = jamsweep("submit", str(grid), "--results", str(results), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert "[4/4] done" in proc.stderr
    assert "progress tiny: 4/4 finished (4 done, 0 failed, 0 cancelled), 0 running" in proc.stderr
    commands = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  jamsweep")]
    assert commands == [f"jamsweep status {results}/tiny", f"jamsweep reduce {results}/tiny"]
    for command in commands:  # as printed, from another folder
        again = jamsweep(*shlex.split(command)[1:], cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    assert "tiny: pending 0  running 0  done 4" in jamsweep(*shlex.split(commands[0])[1:]).stdout
