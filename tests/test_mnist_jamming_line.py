"""A small jamming line on the real MNIST (../shared/data), trained for real on an embedded
Ray through the CLI, as README's "The jamming line" runs examples/mnist_jamming_line.yaml:
N* grows with P. P in {50, 150, 450} (a factor 3 apart, so that N* moves by more than a
width of the grid), 2 seeds, 3,000 steps.

What is robust here (measured on three runs, each giving the same table: the training is
float64 on CPUs and seeded): a stuck seed at a width above N* (it happens at P = 50, h = 6)
moves N* up, so N* of neighbouring P can tie; N* of the largest P is still two widths
above that of the smallest (708 against 344), and the N at which half the runs reach zero
loss grows at every step of P (69, 155, 210)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import jamsweep, write_grid

pytestmark = pytest.mark.ray

PS = [50, 150, 450]
GRID = """
sweep: small_line
dataset:
  name: mnist_parity_pca
  root: {root}
  pca_dim: 10
  train_size: {ps}
  test_size: 300
architectures: [{{name: fc5, depth: 5, widths: [2, 3, 4, 5, 6, 8, 10, 12]}}]
seeds: 2
training: {{loss: square_hinge, optimizer: adam, lr0: 0.1, lr_exponent: -1.5, lr_max: 0.005,
           max_steps: 3000, dtype: float64, delta_tol: 1.0e-12}}
checkpoint: {{keep_models: false}}
resources: {{num_cpus: 1, max_retries: 0, pack: auto}}
"""


@pytest.fixture(scope="module")
def line(tmp_path_factory, mnist_root):
    root = tmp_path_factory.mktemp("mnist_line")
    grid = write_grid(root / "line.yaml", GRID.format(root=mnist_root, ps=PS))
    res = root / "res"
    proc = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return res / "small_line", proc


def test_n_star_grows_with_p_on_real_mnist(line):
    sweep, _ = line
    summary = json.loads((sweep / "summary.json").read_text())
    points = summary["jamming_line"]["fc5"]["points"]
    assert [q["train_size"] for q in points] == PS
    n_star = [q["n_star"] for q in points]
    half = [q["n_star_half"] for q in points]
    assert all(n is not None for n in n_star), points  # every N* inside the widths
    assert n_star[0] <= n_star[1] <= n_star[2] and n_star[2] > n_star[0], points
    assert all(h is not None for h in half) and half[0] < half[1] < half[2], points
    fit = summary["jamming_line"]["fc5"]["fit"]
    assert fit["n_points"] == 3 and fit["params"]["a"] > 0, fit
    shown = jamsweep("show", str(sweep)).stdout
    assert "fc5: jamming line N*(P)" in shown and "fit jamming_line: N* = c P^a" in shown
    assert (sweep / "figures" / "nstar_vs_p.png").stat().st_size > 10_000
