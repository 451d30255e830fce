"""The nets of the paper and their initialisations."""

from __future__ import annotations

import math

import torch
from torch import nn

from schemas.grid import FCArch


def orthogonal_(weight: torch.Tensor, generator: torch.Generator, gain: float = 1.0) -> None:
    """Fill weight (out, in) with a random orthogonal matrix: QR of a Gaussian matrix, with
    the signs of R's diagonal moved into Q so that Q is Haar-distributed (as torch's
    nn.init.orthogonal_ does)."""
    rows, cols = weight.shape
    flat = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    if rows < cols:
        flat = flat.T  # QR needs a tall matrix
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r))
    if rows < cols:
        q = q.T
    with torch.no_grad():
        weight.copy_(gain * q)


def normal_(weight: torch.Tensor, generator: torch.Generator, gain: float = 1.0) -> None:
    """Gaussian weights with std = gain / sqrt(fan_in)."""
    fan_in = weight.shape[1]
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64))
        weight.mul_(gain / math.sqrt(fan_in))


INITS = {"orthogonal": orthogonal_, "normal": normal_}


class FC(nn.Module):
    """L hidden ReLU layers with biases and one linear read-out: (n, d) -> (n, n_out)."""

    def __init__(self, d_in: int, hidden: list[int], n_out: int) -> None:
        super().__init__()
        sizes = [d_in, *hidden, n_out]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, dtype=torch.float64) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def build_fc(arch: FCArch, width: float, d_in: int, n_out: int, seed: int) -> FC:
    """The FC net of width h, initialised from `seed` (in float64 on the CPU, so float32 and
    float64 runs of one seed start from the same weights)."""
    model = FC(d_in, arch.layer_widths(width), n_out)
    generator = torch.Generator().manual_seed(seed)
    init = INITS[arch.init]
    for layer in model.layers:
        init(layer.weight, generator, arch.init_gain)
        nn.init.zeros_(layer.bias)
    return model


def count_weights(model: nn.Module) -> int:
    """N: parameters that are weights (biases excluded)."""
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
