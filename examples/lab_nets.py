"""Your own nets for jamsweep (examples/user_model.yaml): a builder is a function
`build(width, d_in, n_out, **options) -> torch.nn.Module`. jamsweep seeds torch's RNG from
the run's seed before calling it (so the init here is reproducible per seed), casts the
module to the grid's dtype, and counts N from its parameters (weights: ndim >= 2)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """x (n, d_in) -> Linear -> `blocks` residual blocks h + relu(W h + b) -> Linear (n, n_out)."""

    def __init__(self, width: int, d_in: int, n_out: int, blocks: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.readout = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.readout(h)


def resmlp(width: int, d_in: int, n_out: int, blocks: int = 2) -> nn.Module:
    """N = d_in * width + blocks * width^2 + width * n_out weights."""
    return ResidualMLP(width, d_in, n_out, blocks)


def bn_mlp(width: int, d_in: int, n_out: int) -> nn.Module:
    """One hidden layer with batch norm: its train-mode output for a sample depends on the
    rest of the batch, so jamsweep trains it with plain full-batch steps (no violator-only
    steps, no packs) and stores its outputs in eval mode (running statistics)."""
    return nn.Sequential(
        nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, n_out)
    )
