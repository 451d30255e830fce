"""The authors' split, shared by every dataset: one `randperm` per class after
`torch.manual_seed(data_seed)`, interleaved, train = the first P, test = the rest (or its
first test_size); label noise on the training labels (`noisy_labels`); and the containers a
worker trains on (`Split`, `Dataset`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from schemas.errors import JamsweepError
from schemas.specs import DatasetSpec


@dataclass(frozen=True)
class Split:
    """One set of samples: inputs x (n, ...), labels y (n,), pooled indices (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Split:
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device), self.index)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split


@dataclass(frozen=True)
class Pool:
    """Every sample available, before the split: inputs x / divisor (n, ...), class ids (n,).

    x may be stored raw (MNIST's uint8 pixels, divisor 255): 55 MB where float64 would be
    440 MB, converted a chunk at a time where it is used."""

    x: np.ndarray
    classes: np.ndarray
    n_fit: int  # the first n_fit samples form the training pool the PCA is fitted on
    divisor: float = 1.0


def balanced_order(classes: torch.Tensor, data_seed: int) -> torch.Tensor:
    """Pooled indices in the authors' order: one randperm per class (in class order) after
    torch.manual_seed(data_seed), then interleaved c0, c1, ..., c0, c1, ... stopping at the
    shortest class."""
    torch.manual_seed(data_seed)
    members = [torch.nonzero(classes == c).flatten() for c in torch.unique(classes)]
    perms = [m[torch.randperm(len(m))] for m in members]
    n = min(len(p) for p in perms)
    return torch.stack([p[:n] for p in perms], dim=1).flatten()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Centre the set on its own mean, then rescale every sample to norm sqrt(d)."""
    x = x - x.mean(dim=0)
    flat = x.flatten(1)
    return (flat * math.sqrt(flat.shape[1]) / flat.norm(dim=1, keepdim=True)).view_as(x)


def split_indices(order: torch.Tensor, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Train = the first P pooled indices of the balanced order, test = the rest (or its
    first test_size)."""
    if spec.train_size >= len(order):
        raise JamsweepError(
            f"dataset.train_size = {spec.train_size} leaves no test samples: {spec.name} has "
            f"{len(order)} samples once balanced; lower train_size"
        )
    train_idx = order[: spec.train_size]
    test_idx = order[spec.train_size :]
    if spec.test_size is not None:
        test_idx = test_idx[: spec.test_size]
    return train_idx, test_idx


def split_pool(pool: Pool, spec: DatasetSpec, labels: torch.Tensor) -> Dataset:
    # Balanced over the labels the net learns (even -1 first, then odd +1; or class ids).
    order = balanced_order(labels, spec.data_seed)
    train_idx, test_idx = split_indices(order, spec)
    x = torch.from_numpy(pool.x / pool.divisor if pool.divisor != 1.0 else pool.x)
    noisy = noisy_labels(labels[train_idx], spec.label_noise, spec.data_seed, n_classes=2)
    return Dataset(
        train=Split(normalise(x[train_idx]), noisy, train_idx),
        test=Split(normalise(x[test_idx]), labels[test_idx], test_idx),
    )


# Label noise draws from its own stream of data_seed: the split's randperms (torch's global
# generator after manual_seed(data_seed)) and the noise never share random numbers.
NOISE_STREAM = 1


def noisy_labels(y: torch.Tensor, q: float, data_seed: int, n_classes: int) -> torch.Tensor:
    """The training labels y (P,) with round(q P) of them, drawn without replacement by
    `data_seed`, replaced by another class: +-1 labels (float) flipped, class ids (int,
    0..n_classes-1) moved to one of the n_classes - 1 others, uniformly. q = 0: y itself."""
    n = round(q * len(y))
    if n == 0:
        return y
    rng = np.random.default_rng([data_seed, NOISE_STREAM])
    pick = torch.from_numpy(rng.choice(len(y), size=n, replace=False))
    out = y.clone()
    if y.is_floating_point():
        out[pick] = -y[pick]
    else:  # a shift of 1..K-1 classes, mod K: every other class equally likely
        shift = torch.from_numpy(rng.integers(1, n_classes, size=n)).to(y.dtype)
        out[pick] = (y[pick] + shift) % n_classes
    return out
