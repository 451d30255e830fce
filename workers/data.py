"""Datasets by name: the one table from a grid's `dataset.name` to its loader (DESIGN.md
section 1). The loaders live in workers/datasets/: `parity` (MNIST and digits parity, PCA
whitened), `cifar10`, `files` (a user's Parquet, CSV or NPZ; `tables` reads them), and
`split` (the authors' balanced split and the label noise, shared by all). Loaded sets are
cached per worker process, so a worker that trains many runs loads once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas.axes import DatasetGrid, points
from schemas.datasets import DataFacts
from schemas.errors import JamsweepError
from schemas.specs import DatasetSpec
from workers.datasets.files import check_files, load_files
from workers.datasets.parity import (
    check_parity,
    digits_pool,
    mnist_pool,
    parity_pca,
    pca_whiten,
)
from workers.datasets.split import Dataset, Pool, Split, balanced_order, split_indices

__all__ = [
    "Dataset",
    "Pool",
    "Split",
    "balanced_order",
    "check_dataset",
    "digits_pool",
    "load_dataset",
    "mnist_pool",
    "pca_whiten",
    "split_indices",
]


def _parity(spec: DatasetSpec) -> Dataset:
    return parity_pca(spec.model_dump_json())


def _cifar10(spec: DatasetSpec) -> Dataset:
    from workers.datasets.cifar10 import load_cifar10  # decodes images: only when asked

    return load_cifar10(spec)


LOADERS: dict[str, Callable[[DatasetSpec], Dataset]] = {
    "digits_parity_pca": _parity,
    "mnist_parity_pca": _parity,
    "cifar10": _cifar10,
    "files": load_files,
}


def _check_cifar10(spec: DatasetSpec) -> None:
    from workers.datasets.cifar10 import check_cifar10  # without decoding the 60k images

    check_cifar10(spec)


# What `submit` runs before anything is written: each as strict as its loader, but cheap.
# A files dataset's check returns the facts its runs carry (d_in, labels, fingerprint).
CHECKS: dict[str, Callable[[DatasetSpec], DataFacts | None]] = {
    "digits_parity_pca": check_parity,  # without the PCA
    "mnist_parity_pca": check_parity,
    "cifar10": _check_cifar10,
    "files": check_files,  # reads the used columns whole: NaNs, labels, sizes
}


def load_dataset(spec: DatasetSpec) -> Dataset:
    """The dataset of `spec` (float64, CPU), built once per process and cached."""
    loader = LOADERS.get(spec.name)
    if loader is None:
        raise JamsweepError(f"dataset {spec.name!r} is not available yet")
    return loader(spec)


def check_dataset(spec: DatasetSpec) -> DataFacts | None:
    """Raise JamsweepError now, before anything is written, if `spec` cannot be loaded.
    Returns the facts of a files dataset (`GridSpec.with_data` puts them in its runs),
    None for the built-in sets, whose facts are known from their name. A grid's dataset
    with lists (sweep axes) is checked at each of its points (a train_size too large for
    the data is found now); the facts do not depend on the point."""
    if isinstance(spec, DatasetGrid):
        facts = [check_dataset(spec.at(point)) for point in points(spec.axes())]
        return facts[0]
    local_root = spec.root is not None and "://" not in spec.root and not spec.download
    if local_root and not Path(spec.root or "").is_dir():
        raise JamsweepError(
            f"dataset.root {spec.root!r} is not a readable folder; point it at the data "
            "(relative paths are taken from the grid file's folder)"
        )
    check = CHECKS.get(spec.name)
    if check is None:
        load_dataset(spec)  # an unknown name: load_dataset says so
        return None
    return check(spec)
