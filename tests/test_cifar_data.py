"""CIFAR-10 loading: both layouts, the balanced split, labels, standardisation, laziness."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from schemas.errors import JamsweepError
from schemas.grid import DatasetSpec
from tests.conftest import SHARED_DATA
from workers.data import check_dataset, load_dataset
from workers.datasets import cifar10

JPEG_ROOT = SHARED_DATA / "cifar10-jpeg"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def fresh_caches():
    """Loaded sets are cached per process; every test starts from the files."""
    cifar10.cifar10_pool.cache_clear()
    cifar10._cifar10.cache_clear()
    yield
    cifar10.cifar10_pool.cache_clear()
    cifar10._cifar10.cache_clear()


@pytest.fixture(scope="module")
def jpeg_root() -> Path:
    if not (JPEG_ROOT / "train" / "truck").is_dir():
        pytest.fail(f"the real CIFAR-10 JPEGs are expected in {JPEG_ROOT} (see ../shared/data)")
    return JPEG_ROOT


def spec(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name="cifar10", root=str(root), **{"train_size": 20, "test_size": 30, **kw})


def jpeg_files(root: Path) -> list[tuple[Path, int]]:
    """The pool as the README describes it, listed independently: train then test, classes
    in CIFAR-10 order, files by name."""
    return [
        (path, label)
        for split in ("train", "test")
        for label, name in enumerate(CLASSES)
        for path in sorted((root / split / name).iterdir())
    ]


def destandardise(x: torch.Tensor, raw_train: torch.Tensor) -> torch.Tensor:
    """Undo a standardisation by the per-channel mean and std of the raw training pixels."""
    mean = raw_train.mean(dim=(0, 2, 3), keepdim=True)
    std = raw_train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return x * std + mean


def pil_pixels(path: Path) -> torch.Tensor:
    """(3, 32, 32) in [0, 1], decoded with PIL (what torchvision's ImageFolder uses)."""
    rgb = np.array(Image.open(path).convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float64) / 255


# -- the real JPEGs of ../shared/data -----------------------------------------------------


def test_jpeg_split_is_class_balanced_with_cifar_labels_and_the_files_pixels(jpeg_root):
    data = load_dataset(spec(jpeg_root))
    train, test = data.train, data.test
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (30, 3, 32, 32)
    assert train.x.dtype == torch.float64 and train.y.dtype == torch.int64
    # balanced_order interleaves the classes: 0, 1, ..., 9, 0, 1, ...
    assert train.y.tolist() == list(range(10)) * 2
    assert test.y.tolist() == list(range(10)) * 3
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    # each sample is the file at its pooled index, labelled by that file's class folder
    files = jpeg_files(jpeg_root)
    raw = torch.stack([pil_pixels(files[i][0]) for i in train.index.tolist()])
    assert [files[i][1] for i in train.index.tolist()] == train.y.tolist()
    torch.testing.assert_close(destandardise(train.x, raw), raw)
    # standardised per channel with the training images' statistics, applied to both sets
    torch.testing.assert_close(train.x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        train.x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64)
    )
    raw_test = torch.stack([pil_pixels(files[i][0]) for i in test.index.tolist()])
    assert [files[i][1] for i in test.index.tolist()] == test.y.tolist()
    torch.testing.assert_close(destandardise(test.x, raw), raw_test)


def test_jpeg_loading_decodes_only_the_images_of_the_split(jpeg_root, monkeypatch):
    decoded = []
    real = cifar10._decode
    monkeypatch.setattr(cifar10, "_decode", lambda path: decoded.append(path) or real(path))
    data = load_dataset(spec(jpeg_root, train_size=20, test_size=30))
    assert len(decoded) == 50 == len(data.train) + len(data.test)
    load_dataset(spec(jpeg_root, train_size=20, test_size=30))
    assert len(decoded) == 50  # cached per process: the second run decodes nothing
    check_dataset(spec(jpeg_root, train_size=100))
    assert len(decoded) == 51  # the submit-time check decodes a single image


def test_data_seed_fixes_the_split_and_p_grows_by_prefix(jpeg_root):
    a = load_dataset(spec(jpeg_root, data_seed=1))
    b = load_dataset(spec(jpeg_root, data_seed=1, train_size=10))
    c = load_dataset(spec(jpeg_root, data_seed=2))
    assert b.train.index.tolist() == a.train.index.tolist()[:10]
    assert a.train.index.tolist() != c.train.index.tolist()


# -- torchvision's pickled batches, faked small in tmp_path ------------------------------


def fake_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """72 random images (60 'train', 12 'test') with labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(72, 3, 32, 32), dtype=np.uint8)
    labels = (np.arange(72) * 7 + 3) % 10
    return images, labels


def write_batches(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """torchvision's layout: 5 train batches of 12 and a test batch of 12; each row holds the
    R, G and B planes of 32 x 32 pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        part = slice(12 * k, 12 * (k + 1))
        batch = {"data": images[part].reshape(12, 3072), "labels": labels[part].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The same images as lossless PNGs in ImageFolder layout, in pool order within a class."""
    for split, part in (("train", range(60)), ("test", range(60, 72))):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
        for n, i in enumerate(part):
            path = root / split / CLASSES[labels[i]] / f"{n:04d}.png"
            Image.fromarray(images[i].transpose(1, 2, 0)).save(path)


def test_torchvision_batches_give_labels_and_channel_planes(tmp_path):
    images, labels = fake_pool()
    write_batches(tmp_path, images, labels)
    data = load_dataset(spec(tmp_path, train_size=10, test_size=20))
    assert data.train.x.shape == (10, 3, 32, 32) and data.train.y.dtype == torch.int64
    idx = data.train.index.numpy()
    assert data.train.y.tolist() == labels[idx].tolist() == list(range(10))
    raw = torch.from_numpy(images[idx]).to(torch.float64) / 255
    torch.testing.assert_close(destandardise(data.train.x, raw), raw)  # planes -> channels
    assert data.test.y.tolist() == labels[data.test.index.numpy()].tolist()
    # the balanced split, by hand: manual_seed, one randperm per class, interleaved
    torch.manual_seed(0)
    members = [np.flatnonzero(labels == c) for c in range(10)]
    perms = [m[torch.randperm(len(m)).numpy()] for m in members]
    n = min(len(p) for p in perms)
    order = np.stack([p[:n] for p in perms], axis=1).flatten()
    assert idx.tolist() == order[:10].tolist()
    assert data.test.index.tolist() == order[10:30].tolist()


def test_both_layouts_give_the_same_split(tmp_path):
    images, labels = fake_pool(seed=1)
    write_batches(tmp_path / "tv", images, labels)
    write_image_folder(tmp_path / "folder", images, labels)
    a = load_dataset(spec(tmp_path / "tv", train_size=20, data_seed=5))
    b = load_dataset(spec(tmp_path / "folder", train_size=20, data_seed=5))
    torch.testing.assert_close(a.train.x, b.train.x, rtol=0, atol=0)
    torch.testing.assert_close(a.test.x, b.test.x, rtol=0, atol=0)
    assert a.train.y.tolist() == b.train.y.tolist() and a.test.y.tolist() == b.test.y.tolist()


def test_a_batch_that_unpickles_code_is_refused_and_not_run(tmp_path):
    images, labels = fake_pool()
    folder = write_batches(tmp_path, images, labels)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(JamsweepError, match="data_batch_3"):
        load_dataset(spec(tmp_path))
    assert not marker.exists()


# -- what a user gets wrong --------------------------------------------------------------


def test_a_root_without_cifar10_is_a_clear_error(tmp_path):
    with pytest.raises(JamsweepError, match=r"holds no CIFAR-10.*cifar-10-batches-py.*train/"):
        check_dataset(spec(tmp_path))
    with pytest.raises(JamsweepError, match="not a readable folder"):
        check_dataset(spec(tmp_path / "missing"))


def test_image_folder_problems_name_what_to_fix(tmp_path):
    images, labels = fake_pool()
    write_image_folder(tmp_path, images, labels)
    with pytest.raises(JamsweepError, match="leaves no test samples"):
        check_dataset(spec(tmp_path, train_size=70, test_size=None))
    bad = tmp_path / "train" / "cat" / "0000.png"
    Image.new("RGB", (28, 28)).save(bad)
    with pytest.raises(JamsweepError, match=r"0000\.png is \(28, 28\) pixels"):
        load_dataset(spec(tmp_path, train_size=60, test_size=None))
    (tmp_path / "test" / "truck").rename(tmp_path / "test" / "lorry")
    cifar10.cifar10_pool.cache_clear()  # the listing is cached per process
    with pytest.raises(JamsweepError, match="same 10 class folders"):
        check_dataset(spec(tmp_path))
