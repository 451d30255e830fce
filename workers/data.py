"""Datasets as the paper's authors build them (DESIGN.md section 1).

Pipeline for the *_parity_pca sets:
  pool (train images then test images) -> PCA fitted on the training pool, whitened to d
  components -> parity labels +-1 -> balanced split by `data_seed` -> each set centred on
  its own mean, every sample rescaled to norm sqrt(d).
Loaded sets are cached per worker process, so a worker that trains many runs loads once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.errors import JamsweepError
from schemas.grid import DatasetSpec


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
    """Every sample available, before the split: x (n, ...) float64, class ids (n,)."""

    x: np.ndarray
    classes: np.ndarray
    n_fit: int  # the first n_fit samples form the training pool the PCA is fitted on


def pca_whiten(x: np.ndarray, n_fit: int, d: int) -> np.ndarray:
    """z = (x - m) v[:, :d] / sqrt(e[:d]) with m, e, v from the first n_fit rows of x (n, D).

    Eigenvectors get a fixed sign (largest entry positive) so z does not depend on LAPACK.
    """
    fit = x[:n_fit]
    mean = fit.mean(axis=0)
    centred = fit - mean
    cov = centred.T @ centred / n_fit  # (D, D)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigval)[::-1][:d]
    e, v = eigval[order], eigvec[:, order]
    v = v * np.sign(v[np.abs(v).argmax(axis=0), np.arange(d)])
    return (x - mean) @ v / np.sqrt(e)


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
    x = torch.from_numpy(pool.x)

    def subset(idx: torch.Tensor) -> Split:
        return Split(normalise(x[idx]), labels[idx], idx)

    return Dataset(train=subset(train_idx), test=subset(test_idx))


def parity_labels(classes: np.ndarray) -> torch.Tensor:
    """+1 for odd digits, -1 for even ones."""
    return torch.from_numpy(np.where(classes % 2 == 1, 1.0, -1.0))


def digits_pool() -> Pool:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1797 images 8x8, values 0..16, bundled with scikit-learn
    # No official train/test split: the whole set is the training pool for the PCA.
    return Pool(digits.data / 16.0, digits.target.astype(np.int64), len(digits.target))


def mnist_pool(root: str, download: bool) -> Pool:
    from torchvision.datasets import MNIST

    parts = []
    for train in (True, False):
        try:
            parts.append(MNIST(root, train=train, download=download))
        except (RuntimeError, OSError) as exc:
            raise JamsweepError(
                f"dataset.root {root!r} has no readable MNIST ({exc}); point root at the folder "
                "that holds MNIST/raw/, or set download: true where a network is reachable"
            ) from None
    x = torch.cat([p.data for p in parts]).flatten(1).to(torch.float64) / 255.0
    y = torch.cat([p.targets for p in parts])
    return Pool(x.numpy(), y.numpy().astype(np.int64), len(parts[0].targets))


@functools.lru_cache(maxsize=4)
def _parity_pca(spec_json: str) -> Dataset:
    spec = DatasetSpec.model_validate_json(spec_json)
    pool = (
        digits_pool()
        if spec.name == "digits_parity_pca"
        else mnist_pool(spec.root or "", spec.download)
    )
    if spec.pca_dim > pool.x.shape[1]:
        raise JamsweepError(
            f"dataset.pca_dim = {spec.pca_dim} exceeds the {pool.x.shape[1]} input dimensions "
            f"of {spec.name}; lower pca_dim"
        )
    z = pca_whiten(pool.x, pool.n_fit, spec.pca_dim)
    return split_pool(Pool(z, pool.classes, pool.n_fit), spec, parity_labels(pool.classes))


def load_dataset(spec: DatasetSpec) -> Dataset:
    """The dataset of `spec` (float64, CPU), built once per process and cached."""
    if spec.name in ("digits_parity_pca", "mnist_parity_pca"):
        return _parity_pca(spec.model_dump_json())
    if spec.name == "cifar10":
        from workers.cifar10 import load_cifar10  # it builds on this module

        return load_cifar10(spec)
    raise JamsweepError(f"dataset {spec.name!r} is not available yet")


def check_dataset(spec: DatasetSpec) -> None:
    """Raise JamsweepError now, before anything is written, if `spec` cannot be loaded."""
    local_root = spec.root is not None and "://" not in spec.root and not spec.download
    if local_root and not Path(spec.root or "").is_dir():
        raise JamsweepError(
            f"dataset.root {spec.root!r} is not a readable folder; point it at the data "
            "(relative paths are taken from the grid file's folder)"
        )
    if spec.name == "cifar10":
        from workers.cifar10 import check_cifar10

        check_cifar10(spec)  # without decoding the 60k images
        return
    load_dataset(spec)
