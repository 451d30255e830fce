"""The nets of the paper and their initialisations."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from schemas.grid import CNNArch, FCArch


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
            nn.Linear(a, b, dtype=torch.float64)
            for a, b in zip(sizes[:-1], sizes[1:], strict=False)
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
        assert isinstance(layer, nn.Linear)
        init(layer.weight, generator, arch.init_gain)
        nn.init.zeros_(layer.bias)
    return model


def xavier_(
    weight: torch.Tensor, generator: torch.Generator, gain: float = 1.0, *, uniform: bool = True
) -> None:
    """Xavier/Glorot init of a linear (out, in) or conv (out, in, k, k) weight, with torch's
    fans (fan_in = in * k * k, fan_out = out * k * k): variance gain^2 * 2 / (fan_in + fan_out),
    uniform on [-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)) or normal."""
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    if uniform:
        draw = torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1
        draw *= math.sqrt(3.0) * std  # U[-a, a] has std a / sqrt(3)
    else:
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * std
    with torch.no_grad():
        weight.copy_(draw)


class CNN(nn.Module):
    """`depth` ReLU convolutions with f channels, then one linear read-out:
    (n, c, s, s) -> (n, f, s', s') -> ... -> flatten (n, f * side^2) -> (n, n_out).

    Without gradients (measurements, evaluation) the samples go through in slices of
    `eval_rows`: the activations of a whole set for wide nets (P = 50k, f = 2048) would not fit
    in memory. Samples are independent, so slicing changes no value. With gradients
    (training steps) the batch goes through at once."""

    def __init__(
        self,
        arch: CNNArch,
        f: int,
        in_channels: int,
        n_out: int,
        image_size: int,
        eval_rows: int = 1000,
    ) -> None:
        super().__init__()
        channels = [in_channels] + [f] * arch.depth
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, arch.kernel_size, arch.stride, arch.padding, dtype=torch.float64)
            for a, b in zip(channels[:-1], channels[1:], strict=False)
        )
        self.readout = nn.Linear(f * arch.feature_size(image_size) ** 2, n_out, dtype=torch.float64)
        self.eval_rows = eval_rows

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or len(x) <= self.eval_rows:
            return self.readout(self.features(x))
        return torch.cat([self.readout(self.features(part)) for part in x.split(self.eval_rows)])


def build_cnn(
    arch: CNNArch, f: float, in_channels: int, n_out: int, seed: int, image_size: int = 32
) -> CNN:
    """The CNN with f channels, Xavier-initialised from `seed` (in float64 on the CPU, like
    `build_fc`), zero biases."""
    model = CNN(arch, int(f), in_channels, n_out, image_size)
    generator = torch.Generator().manual_seed(seed)
    for layer in [*model.convs, model.readout]:
        xavier_(layer.weight, generator, arch.init_gain, uniform=arch.init == "xavier_uniform")
        nn.init.zeros_(layer.bias)
    return model


def count_weights(model: nn.Module) -> int:
    """N: parameters that are weights (biases excluded)."""
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Restore the model's buffers on exit (the built-in nets have none: nothing copied)."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside (what outputs are stored in: batch norm uses its running
    statistics, dropout is off), the previous mode after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)
