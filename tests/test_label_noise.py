"""label_noise: a seeded fraction q of the training labels replaced by another class, on every
dataset; the split and the test set untouched; q = 0 keeps every run id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from schemas.grid import DatasetSpec, parse_grid
from tests.conftest import SHARED_DATA
from workers.data import check_dataset, load_dataset
from workers.datasets.split import noisy_labels


def test_exactly_round_q_p_binary_labels_flip_reproducibly():
    y = torch.tensor([1.0, -1.0] * 50)  # P = 100
    for q, expected in ((0.1, 10), (0.25, 25), (0.333, 33), (1.0, 100)):
        noisy = noisy_labels(y, q, data_seed=4, n_classes=2)
        changed = noisy != y
        assert int(changed.sum()) == expected
        assert torch.equal(noisy[changed], -y[changed])  # flipped, nothing else
        assert torch.equal(noisy, noisy_labels(y, q, data_seed=4, n_classes=2))
    assert not torch.equal(noisy_labels(y, 0.1, 4, 2), noisy_labels(y, 0.1, 5, 2))
    assert noisy_labels(y, 0.0, 4, 2) is y
    assert torch.equal(y, torch.tensor([1.0, -1.0] * 50))  # the input is not modified


def test_class_labels_move_to_every_other_class_uniformly():
    y = torch.arange(5).repeat(4000)  # K = 5, P = 20,000
    noisy = noisy_labels(y, 0.5, data_seed=0, n_classes=5)
    changed = noisy != y
    assert int(changed.sum()) == 10_000
    assert noisy.dtype == torch.int64 and noisy.min() >= 0 and noisy.max() <= 4
    # each class's corrupted labels spread over the 4 others, ~1/4 each (binomial sd ~ 0.01)
    for c in range(5):
        moved = noisy[changed & (y == c)]
        shares = torch.bincount(moved, minlength=5).double() / len(moved)
        assert shares[c] == 0
        np.testing.assert_allclose(shares[torch.arange(5) != c].numpy(), 0.25, atol=0.04)


def digits(**kw) -> DatasetSpec:
    return DatasetSpec(name="digits_parity_pca", train_size=200, test_size=300, **kw)


def test_digits_parity_noise_leaves_the_split_and_the_test_set_alone():
    clean, noisy = load_dataset(digits()), load_dataset(digits(label_noise=0.15))
    assert torch.equal(clean.train.index, noisy.train.index)  # the same balanced split
    assert torch.equal(clean.train.x, noisy.train.x)
    assert torch.equal(clean.test.index, noisy.test.index)
    assert torch.equal(clean.test.y, noisy.test.y)  # clean test labels
    differ = clean.train.y != noisy.train.y
    assert int(differ.sum()) == 30  # round(0.15 * 200)
    assert torch.equal(noisy.train.y[differ], -clean.train.y[differ])
    again = load_dataset(digits(label_noise=0.15, pca_dim=9)).train.y  # another load
    assert torch.equal(again != clean.train.y, differ)  # the same labels: seeded by data_seed
    other_seed = load_dataset(digits(label_noise=0.15, data_seed=1))
    assert not torch.equal(other_seed.train.index, clean.train.index)


def test_files_dataset_noise_with_three_classes(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd"))
    frame["kind"] = np.repeat(["x", "y", "z"], 100)
    frame.to_parquet(tmp_path / "pool.parquet")

    def spec(q: float) -> DatasetSpec:
        raw = DatasetSpec(
            name="files",
            train=str(tmp_path / "pool.parquet"),
            label="kind",
            train_size=150,
            label_noise=q,
        )
        return raw.model_copy(update={"resolved": check_dataset(raw)})

    clean, noisy = load_dataset(spec(0.0)), load_dataset(spec(0.2))
    assert torch.equal(clean.train.index, noisy.train.index)
    assert torch.equal(clean.test.y, noisy.test.y)
    differ = clean.train.y != noisy.train.y
    assert int(differ.sum()) == 30
    truth = torch.tensor(pd.factorize(frame["kind"], sort=True)[0])  # x, y, z -> 0, 1, 2
    assert torch.equal(clean.train.y, truth[clean.train.index])
    assert torch.equal(clean.test.y, truth[clean.test.index])


JPEG_ROOT = SHARED_DATA / "cifar10-jpeg"


def test_cifar10_noise_moves_training_classes_only():
    if not (JPEG_ROOT / "train" / "truck").is_dir():
        pytest.fail(f"the real CIFAR-10 JPEGs are expected in {JPEG_ROOT} (see ../shared/data)")
    base = {"name": "cifar10", "root": str(JPEG_ROOT), "train_size": 40, "test_size": 20}
    clean = load_dataset(DatasetSpec(**base))
    noisy = load_dataset(DatasetSpec(**base, label_noise=0.25))
    assert torch.equal(clean.train.index, noisy.train.index)
    assert torch.equal(clean.test.y, noisy.test.y)
    differ = clean.train.y != noisy.train.y
    assert int(differ.sum()) == 10
    assert noisy.train.y.min() >= 0 and noisy.train.y.max() <= 9


GRID = """
sweep: n
dataset: {{name: digits_parity_pca, train_size: 60{extra}}}
architectures: [{{name: fc3, depth: 3, widths: [2]}}]
seeds: 1
"""


def test_label_noise_enters_the_run_id_only_when_set():
    (plain,) = parse_grid(GRID.format(extra="")).expand()
    (zero,) = parse_grid(GRID.format(extra=", label_noise: 0")).expand()
    (some,) = parse_grid(GRID.format(extra=", label_noise: 0.1")).expand()
    assert plain.run_id == zero.run_id != some.run_id
