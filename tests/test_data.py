from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from schemas.errors import JamsweepError
from schemas.grid import DatasetSpec
from workers.data import balanced_order, check_dataset, load_dataset, mnist_pool, pca_whiten


def test_pca_whitening_is_fitted_on_the_training_pool_only():
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    other = rng.normal(loc=5.0, size=(100, 6))  # very different: must not move m, e or v
    z = pca_whiten(np.vstack([fit, other]), n_fit=500, d=3)
    zf = z[:500]
    np.testing.assert_allclose(zf.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(zf.T @ zf / 500, np.eye(3), atol=1e-10)  # whitened
    # the same projection, computed by hand from the fit rows only
    c = fit - fit.mean(axis=0)
    e, v = np.linalg.eigh(c.T @ c / 500)
    top = v[:, ::-1][:, :3]
    hand = (np.vstack([fit, other]) - fit.mean(axis=0)) @ top / np.sqrt(e[::-1][:3])
    np.testing.assert_allclose(np.abs(z), np.abs(hand), atol=1e-9)  # equal up to each sign


def test_pca_whitening_of_raw_pixels_in_chunks_equals_the_float64_whole(monkeypatch):
    from workers.datasets import parity

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(700, 12), dtype=np.uint8)
    whole = pca_whiten(raw / 255.0, n_fit=500, d=4)  # one float64 matrix, one chunk
    monkeypatch.setattr(parity, "PCA_CHUNK", 64)
    chunked = pca_whiten(raw, n_fit=500, d=4, divisor=255.0)
    assert chunked.shape == (700, 4)
    np.testing.assert_array_equal(chunked, whole)


def test_balanced_order_is_the_authors_interleaving():
    classes = torch.tensor([0, 1, 1, 0, 1, 0, 1, 1])  # 3 of class 0, 5 of class 1
    order = balanced_order(classes, data_seed=3)
    # by hand: manual_seed, one randperm per class (class order), interleave, cut at 3 pairs
    torch.manual_seed(3)
    zeros, ones = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4, 6, 7])
    p0, p1 = zeros[torch.randperm(3)], ones[torch.randperm(5)]
    assert order.tolist() == [p0[0], p1[0], p0[1], p1[1], p0[2], p1[2]]
    assert balanced_order(classes, data_seed=3).tolist() == order.tolist()
    assert balanced_order(classes, data_seed=4).tolist() != order.tolist()


def digits(**kw) -> DatasetSpec:
    return DatasetSpec(name="digits_parity_pca", train_size=kw.pop("train_size", 200), **kw)


def test_digits_pool_is_scikit_learns_digits_read_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from workers.data import digits_pool

    pool, reference = digits_pool(), load_digits()
    np.testing.assert_array_equal(pool.x, reference.data / 16.0)
    np.testing.assert_array_equal(pool.classes, reference.target)
    assert pool.n_fit == 1797
    probe = "import sys; from workers.data import digits_pool; digits_pool(); "
    probe += "print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a worker does not pay scikit-learn's import


def test_digits_sets_are_balanced_centred_and_normalised():
    from workers.data import digits_pool

    pool = digits_pool()
    data = load_dataset(digits(pca_dim=10, test_size=300))
    assert data.train.x.shape == (200, 10) and data.test.x.shape == (300, 10)
    for part in (data.train, data.test):
        assert set(part.y.tolist()) == {-1.0, 1.0}
        assert part.y.sum().item() == 0  # interleaved even, odd: exactly balanced (even sizes)
        norms = part.x.norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(10)))
        # centred on the set's own mean, then each sample rescaled: by hand from the PCA output
        raw = pca_whiten(pool.x, pool.n_fit, 10)[part.index.numpy()]
        centred = raw - raw.mean(axis=0)
        hand = centred * math.sqrt(10) / np.linalg.norm(centred, axis=1, keepdims=True)
        np.testing.assert_allclose(part.x.numpy(), hand, atol=1e-12)
    assert not set(data.train.index.tolist()) & set(data.test.index.tolist())


def test_digits_labels_are_parity_of_the_digit():
    from sklearn.datasets import load_digits

    target = load_digits().target
    data = load_dataset(digits())
    expected = np.where(target[data.train.index.numpy()] % 2 == 1, 1.0, -1.0)
    np.testing.assert_array_equal(data.train.y.numpy(), expected)


def test_data_seed_changes_the_split_and_is_reproducible():
    a, b = load_dataset(digits(data_seed=1)), load_dataset(digits(data_seed=2))
    assert a.train.index.tolist() != b.train.index.tolist()
    again = load_dataset(digits(data_seed=1))
    assert again.train.index.tolist() == a.train.index.tolist()


def test_train_size_too_large_is_a_clear_error():
    with pytest.raises(JamsweepError, match="train_size = 5000"):
        load_dataset(digits(train_size=5000))


def test_real_mnist_parity_pca(mnist_root):
    spec = DatasetSpec(
        name="mnist_parity_pca",
        root=str(mnist_root),
        train_size=1000,
        test_size=2000,
        pca_dim=10,
        data_seed=0,
    )
    data = load_dataset(spec)
    assert data.train.x.shape == (1000, 10) and data.test.x.shape == (2000, 10)
    assert data.train.x.dtype == torch.float64
    torch.testing.assert_close(
        data.train.x.norm(dim=1), torch.full((1000,), math.sqrt(10), dtype=torch.float64)
    )
    assert data.train.y.sum().item() == 0
    pool = mnist_pool(str(mnist_root), download=False)
    assert pool.x.shape == (70000, 784) and pool.n_fit == 60000
    pixels = pool.x / pool.divisor  # kept as uint8 (55 MB, not 440 MB in float64)
    assert pool.x.dtype == np.uint8 and pixels.min() == 0.0 and pixels.max() == 1.0
    labels = pool.classes[data.test.index.numpy()]
    np.testing.assert_array_equal(data.test.y.numpy(), np.where(labels % 2 == 1, 1.0, -1.0))
    # the authors' split: manual_seed(data_seed), randperm of evens then of odds, interleaved
    torch.manual_seed(0)
    even = np.flatnonzero(pool.classes % 2 == 0)
    odd = np.flatnonzero(pool.classes % 2 == 1)
    pe, po = torch.randperm(len(even)), torch.randperm(len(odd))
    assert data.train.index[:4].tolist() == [even[pe[0]], odd[po[0]], even[pe[1]], odd[po[1]]]


def test_missing_data_root_is_a_clear_error(tmp_path):
    spec = DatasetSpec(name="mnist_parity_pca", root=str(tmp_path / "nowhere"), train_size=10)
    with pytest.raises(JamsweepError, match="not a readable folder"):
        check_dataset(spec)
    empty = DatasetSpec(name="mnist_parity_pca", root=str(tmp_path), train_size=10)
    with pytest.raises(JamsweepError, match="no readable MNIST"):
        check_dataset(empty)
