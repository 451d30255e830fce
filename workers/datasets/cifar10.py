"""CIFAR-10 for the paper's CNN runs, from either of its two usual layouts under `root`:

- torchvision's: root/cifar-10-batches-py/{data_batch_1..5, test_batch} (pickled batches);
- ImageFolder's: root/{train,test}/<class>/<image> (e.g. ../shared/data/cifar10-jpeg), whose
  class folders sort into CIFAR-10's class order (airplane ... truck).

Pipeline: pool (the 50k train images, then the 10k test ones) -> balanced split by
`data_seed` (`balanced_order`: one randperm per class, interleaved, so every P and test set
is class-balanced) -> x / 255, standardised per channel with the mean and std of the P
training images -> x (n, 3, 32, 32) float64, y = class ids 0..9 (int64); `label_noise`
moves a fraction of the training labels to another class (split.noisy_labels).
The standardisation statistics come from the training set, not the whole pool, so nothing of
the test set leaks into the inputs, and only the images a split uses are ever decoded (the
balanced order needs only the labels, which an ImageFolder gives by its folder names).
The result is cached per worker process.

Within a class both layouts list the images in the same order (train, then test), so one
data_seed selects the same images in both; the `index` of a sample is its place in the pool
of the layout read (torchvision: 0..49999 train, 50000..59999 test; ImageFolder: train
classes in folder order, then test).
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.datasets import IMAGE_SHAPES
from schemas.errors import JamsweepError
from schemas.specs import DatasetSpec
from workers.datasets.split import Dataset, Split, balanced_order, noisy_labels, split_indices

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
CHANNELS, SIDE, _ = IMAGE_SHAPES["cifar10"]
N_CLASSES = 10


@dataclass(frozen=True)
class ImagePool:
    """Every image available, before the split: class ids (n,) and a reader that returns the
    uint8 images (m, 3, 32, 32) at any pooled indices (m,)."""

    classes: np.ndarray
    read: Callable[[np.ndarray], np.ndarray]
    layout: str  # "torchvision" or "imagefolder", for messages


# -- torchvision's pickled batches -------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of strings, lists and numpy arrays) and nothing
    else: a data folder is not trusted code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (n, 3, 32, 32) uint8 (rows are the R, G, B planes of 32x32
    pixels) and labels (n,) int64."""
    try:
        with path.open("rb") as f:
            raw = _BatchUnpickler(f, encoding="latin1").load()  # the batches are Python 2 pickles
        raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        data = np.asarray(raw["data"], dtype=np.uint8).reshape(-1, CHANNELS, SIDE, SIDE)
        labels = np.asarray(raw["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError) as exc:
        raise JamsweepError(
            f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); "
            "replace it with torchvision's file, or set download: true"
        ) from None
    if len(data) != len(labels):
        raise JamsweepError(f"{path} holds {len(data)} images but {len(labels)} labels")
    return data, labels


def torchvision_pool(folder: Path) -> ImagePool:
    parts = [_read_batch(folder / name) for name in (*TRAIN_BATCHES, TEST_BATCH)]
    images = np.concatenate([x for x, _ in parts])
    classes = np.concatenate([y for _, y in parts])
    return ImagePool(classes, lambda idx: images[idx], "torchvision")


# -- ImageFolder layout ------------------------------------------------------------------


def _image_files(split_dir: Path, class_names: list[str]) -> list[tuple[str, int]]:
    """(path, class id) of every image of one split, classes in order, files sorted by name
    (ImageFolder's order)."""
    files = []
    for label, name in enumerate(class_names):
        folder = os.path.join(split_dir, name)  # str joins: pathlib is slow over 60k files
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS))
        files += [(os.path.join(folder, n), label) for n in names]
    return files


def imagefolder_pool(root: Path) -> ImagePool:
    class_names = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    test_names = sorted(e.name for e in os.scandir(root / "test") if e.is_dir())
    if class_names != test_names or len(class_names) != N_CLASSES:
        raise JamsweepError(
            f"dataset.root {str(root)!r}: train/ and test/ must hold the same {N_CLASSES} class "
            f"folders; found {class_names} and {test_names}"
        )
    files = _image_files(root / "train", class_names) + _image_files(root / "test", class_names)
    paths = [p for p, _ in files]
    classes = np.array([c for _, c in files], dtype=np.int64)

    def read(idx: np.ndarray) -> np.ndarray:
        return (
            np.stack([_decode(paths[i]) for i in idx.tolist()])
            if len(idx)
            else np.zeros((0, CHANNELS, SIDE, SIDE), dtype=np.uint8)
        )

    return ImagePool(classes, read, "imagefolder")


def _decode(path: str) -> np.ndarray:
    """One image file as (3, 32, 32) uint8 RGB, decoded by PIL as ImageFolder does."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))  # (height, width, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise JamsweepError(f"cannot decode image {path} ({exc}); replace or remove it") from None
    if rgb.shape != (SIDE, SIDE, CHANNELS):
        raise JamsweepError(
            f"image {path} is {rgb.shape[:2]} pixels; CIFAR-10 images are {SIDE}x{SIDE}"
        )
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


# -- the data set ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cifar10_pool(root: str, download: bool) -> ImagePool:
    """The pool under `root` in whichever layout it holds (torchvision's first)."""
    base = Path(root)
    for folder in (base / BATCHES_DIR, base):  # root, or root/cifar-10-batches-py itself
        if (folder / TRAIN_BATCHES[0]).is_file():
            return torchvision_pool(folder)
    if (base / "train").is_dir() and (base / "test").is_dir():
        return imagefolder_pool(base)
    if download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(root, train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise JamsweepError(f"downloading CIFAR-10 into {root!r} failed ({exc})") from None
        return torchvision_pool(base / BATCHES_DIR)
    raise JamsweepError(
        f"dataset.root {root!r} holds no CIFAR-10: expected {BATCHES_DIR}/ (torchvision's "
        "format) or train/<class>/*.jpg and test/<class>/*.jpg (ImageFolder layout) in it; "
        "point root at the folder that holds one of them, or set download: true where a "
        "network is reachable"
    )


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels / 255, minus the training images' mean, over their std, per channel:
    x (n, 3, 32, 32) uint8 -> float64."""
    train, test = train.to(torch.float64) / 255.0, test.to(torch.float64) / 255.0
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    std = std.clamp_min(torch.finfo(torch.float64).eps)  # a constant channel stays finite
    return (train - mean) / std, (test - mean) / std


@functools.lru_cache(maxsize=4)
def _cifar10(spec_json: str) -> Dataset:
    spec = DatasetSpec.model_validate_json(spec_json)
    pool = cifar10_pool(spec.root or "", spec.download)
    order = balanced_order(torch.from_numpy(pool.classes), spec.data_seed)
    train_idx, test_idx = split_indices(order, spec)
    # Contiguous: the statistics then do not depend on how a layout stores the pixels.
    x_train, x_test = (
        torch.from_numpy(np.ascontiguousarray(pool.read(idx.numpy())))
        for idx in (train_idx, test_idx)
    )
    x_train, x_test = standardise(x_train, x_test)
    labels = torch.from_numpy(pool.classes)
    noisy = noisy_labels(labels[train_idx], spec.label_noise, spec.data_seed, N_CLASSES)
    return Dataset(
        train=Split(x_train, noisy, train_idx),
        test=Split(x_test, labels[test_idx], test_idx),
    )


def load_cifar10(spec: DatasetSpec) -> Dataset:
    """The CIFAR-10 split of `spec` (x float64 on the CPU), built once per process."""
    return _cifar10(spec.model_dump_json())


def check_cifar10(spec: DatasetSpec) -> None:
    """Raise JamsweepError if `spec` cannot be loaded: the layout, the split sizes and one
    image are checked; the other images are left for the workers to decode."""
    pool = cifar10_pool(spec.root or "", spec.download)
    order = balanced_order(torch.from_numpy(pool.classes), spec.data_seed)
    split_indices(order, spec)
    pool.read(order[:1].numpy())
