"""examples/fig2_by_hand.py, the notebook that rebuilds Fig. 2 from a finished sweep, runs
as a script on a reduced sweep and finds by hand what `jamsweep reduce` found (its last cell
asserts it: the mean and spread of the test error, the ensemble's error and N*)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sweepfiles import write_sweep

from orchestrator import sweep as api
from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "fig2_by_hand.py"


@pytest.mark.parametrize("n_outputs", [1, 10])
def test_the_notebook_rebuilds_fig2_and_agrees_with_the_reducer(tmp_path, n_outputs):
    files = write_sweep(
        str(tmp_path / "results"), widths=[2, 4, 8, 16], seeds=3, n_outputs=n_outputs
    )
    api.reduce("synth", results=files.layout.results, figures=False)
    figure = tmp_path / "fig2.png"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAMSWEEP_RESULTS": files.layout.results,
        "JAMSWEEP_SWEEP": "synth",  # by name, as a notebook user would
        "JAMSWEEP_FIGURE": str(figure),
    }
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOK)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "by hand == jamsweep reduce, for 4 widths" in proc.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
