"""The *_parity_pca sets as the paper's authors build them (DESIGN.md section 1):
pool (train images then test images) -> PCA fitted on the training pool, whitened to d
components -> parity labels +-1 -> balanced split by `data_seed` -> each set centred on
its own mean, every sample rescaled to norm sqrt(d); with `label_noise` a fraction of the
training labels flipped (split.noisy_labels). Cached per worker process."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from schemas.errors import JamsweepError
from schemas.specs import DatasetSpec
from workers.datasets.split import Dataset, Pool, balanced_order, split_indices, split_pool

PCA_CHUNK = 8192  # rows projected at a time


def pca_whiten(x: np.ndarray, n_fit: int, d: int, divisor: float = 1.0) -> np.ndarray:
    """z = (u - m) v[:, :d] / sqrt(e[:d]) for u = x / divisor (n, D), with m, e, v from the
    first n_fit rows of u.

    x may be raw pixels (uint8): only the fitted rows are held in float64 at once, centred
    in place, and the rest is projected a chunk at a time (MNIST: 376 MB instead of 1.3 GB,
    every value bit for bit as with the whole float64 matrix). Eigenvectors get a fixed
    sign (largest entry positive) so z does not depend on LAPACK.
    """
    return pca_project(x, pca_basis(x[:n_fit], d, divisor), divisor)


def pca_basis(
    fit: np.ndarray, d: int, divisor: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m (D,), e (d,), v (D, d)): the mean of the rows u = fit / divisor, the d largest
    eigenvalues of their covariance, and its eigenvectors (largest entry positive)."""
    centred = fit.astype(np.float64)
    centred /= divisor
    mean = centred.mean(axis=0)
    centred -= mean
    cov = centred.T @ centred / len(fit)  # (D, D)
    del centred
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigval)[::-1][:d]
    e, v = eigval[order], eigvec[:, order]
    v = v * np.sign(v[np.abs(v).argmax(axis=0), np.arange(d)])
    return mean, e, v


def pca_project(
    x: np.ndarray, basis: tuple[np.ndarray, np.ndarray, np.ndarray], divisor: float = 1.0
) -> np.ndarray:
    """(x / divisor - m) v / sqrt(e), (n, d), a chunk of PCA_CHUNK rows at a time."""
    mean, e, v = basis
    chunks = range(0, len(x), PCA_CHUNK)
    return np.concatenate(
        [
            (x[a : a + PCA_CHUNK].astype(np.float64) / divisor - mean) @ v / np.sqrt(e)
            for a in chunks
        ]
    )


def parity_labels(classes: np.ndarray) -> torch.Tensor:
    """+1 for odd digits, -1 for even ones."""
    return torch.from_numpy(np.where(classes % 2 == 1, 1.0, -1.0))


def digits_pool() -> Pool:
    """scikit-learn's bundled digits (1797 images 8x8, values 0..16), read from its file
    as `sklearn.datasets.load_digits` reads it, without importing scikit-learn (1-2 s in
    every worker). No official train/test split: the whole set is the training pool."""
    found = importlib.util.find_spec("sklearn")
    if found is None or found.origin is None:
        raise JamsweepError("digits_parity_pca needs scikit-learn: pip install scikit-learn")
    path = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    classes = data[:, -1].astype(np.int64)
    return Pool(data[:, :-1] / 16.0, classes, len(classes))


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
    x = torch.cat([p.data for p in parts]).flatten(1)  # uint8 pixels, 55 MB
    y = torch.cat([p.targets for p in parts])
    return Pool(x.numpy(), y.numpy().astype(np.int64), len(parts[0].targets), divisor=255.0)


def parity_pool(spec: DatasetSpec) -> Pool:
    """The raw pool of a *_parity_pca spec, its pca_dim checked against the inputs."""
    pool = (
        digits_pool()
        if spec.name == "digits_parity_pca"
        else mnist_pool(spec.root or "", spec.download)
    )
    assert spec.pca_dim is not None  # DatasetSpec requires it for the *_pca sets
    if spec.pca_dim > pool.x.shape[1]:
        raise JamsweepError(
            f"dataset.pca_dim = {spec.pca_dim} exceeds the {pool.x.shape[1]} input dimensions "
            f"of {spec.name}; lower pca_dim"
        )
    return pool


def check_parity(spec: DatasetSpec) -> None:
    """Raise JamsweepError if `spec` cannot be loaded: the files, pca_dim and the split
    sizes are checked; the PCA (seconds, 1 GiB for MNIST) is left for the workers."""
    pool = parity_pool(spec)
    split_indices(balanced_order(parity_labels(pool.classes), spec.data_seed), spec)


@functools.lru_cache(maxsize=4)
def parity_pca(spec_json: str) -> Dataset:
    spec = DatasetSpec.model_validate_json(spec_json)
    pool = parity_pool(spec)
    z = pca_whiten(pool.x, pool.n_fit, spec.pca_dim or 0, pool.divisor)
    return split_pool(Pool(z, pool.classes, pool.n_fit), spec, parity_labels(pool.classes))
