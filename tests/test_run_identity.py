"""Run ids of grids that do not read files are pinned: existing sweeps stay valid when the
dataset gains fields (files, label_noise, preprocessing). The expected ids were computed
with the code of commit ac669f2, before those fields existed."""

from __future__ import annotations

import pytest

from schemas.grid import parse_grid

DIGITS = """
sweep: a
dataset: {name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 10}
architectures:
  - {name: fc3, depth: 3, widths: [2, 6.5]}
seeds: [0, 3]
training: {lr_max: 0.01, max_steps: 50}
"""
MNIST = """
sweep: b
dataset: {name: mnist_parity_pca, root: /data, train_size: 1000, pca_dim: 12, data_seed: 3}
architectures:
  - {name: fc5, widths: [4], init: normal, init_gain: 2.0}
seeds: 1
training: {loss: hinge, delta_tol: 0, snapshot_steps: [0, 10]}
"""
CIFAR = """
sweep: c
dataset: {name: cifar10, root: /data, train_size: 500, test_size: 200}
architectures:
  - {kind: cnn, name: cnn3, widths: [4], stride: 1}
seeds: 1
training: {loss: hinge, optimizer: sgd, batch_size: 250, dtype: float32}
"""


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        (
            DIGITS,
            [
                (2.0, 0, "7aa6d635c7ceeed9", 30),
                (2.0, 3, "614b2c41647aaab9", 30),
                (6.5, 0, "1055c5b756cffb4e", 154),
                (6.5, 3, "f22a804b80f773c4", 154),
            ],
        ),
        (MNIST, [(4.0, 0, "f566297766fb2397", 116)]),
        (CIFAR, [(4.0, 0, "578c1c5610cc519c", 41356)]),
    ],
)
def test_run_ids_of_builtin_datasets_are_unchanged(grid, expected):
    runs = parse_grid(grid).expand()
    assert [(s.width, s.seed, s.run_id, s.n_params) for s in runs] == expected
