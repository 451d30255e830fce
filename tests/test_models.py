from __future__ import annotations

import math

import pytest
import torch

from schemas.grid import FCArch
from workers.models import build_fc, count_weights, normal_, orthogonal_


@pytest.mark.parametrize("width", [1.0, 2.0, 3.5, 7.2, 10.0])
def test_model_has_the_layer_widths_and_n_of_the_schema(width):
    arch = FCArch(name="a", depth=5, widths=[width])
    model = build_fc(arch, width, d_in=10, n_out=1, seed=0)
    assert [layer.out_features for layer in model.layers[:-1]] == arch.layer_widths(width)
    assert count_weights(model) == arch.n_params(width, 10, 1)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in model.layers)  # zero biases


@pytest.mark.parametrize("shape", [(4, 10), (10, 4), (6, 6)])
def test_orthogonal_init_is_orthogonal_with_sign_correction(shape):
    w = torch.empty(shape, dtype=torch.float64)
    orthogonal_(w, torch.Generator().manual_seed(5), gain=1.0)
    rows, cols = shape
    gram = w @ w.T if rows <= cols else w.T @ w
    torch.testing.assert_close(gram, torch.eye(min(shape), dtype=torch.float64))
    # With the sign correction, Q is the unique QR factor with R's diagonal > 0: the
    # Gram-Schmidt orthonormalisation of the same Gaussian draw (a hand loop here). Without
    # it, LAPACK's Householder QR flips some columns (seed 5 has negative diagonals).
    a = torch.randn(rows, cols, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = a if rows >= cols else a.T
    basis: list[torch.Tensor] = []
    for j in range(a.shape[1]):
        v = a[:, j].clone()
        for u in basis:
            v -= (u @ a[:, j]) * u
        basis.append(v / v.norm())
    q = w if rows >= cols else w.T
    torch.testing.assert_close(q, torch.stack(basis, dim=1))


def test_orthogonal_gain_scales():
    w = torch.empty(3, 8, dtype=torch.float64)
    orthogonal_(w, torch.Generator().manual_seed(0), gain=2.0)
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(3, dtype=torch.float64))


def test_normal_init_std_is_gain_over_sqrt_fan_in():
    w = torch.empty(400, 250, dtype=torch.float64)
    normal_(w, torch.Generator().manual_seed(0), gain=1.5)
    assert w.std().item() == pytest.approx(1.5 / math.sqrt(250), rel=0.02)
    assert abs(w.mean().item()) < 0.01


def test_init_depends_on_the_seed_only():
    arch = FCArch(name="a", depth=3, widths=[5])
    a, b, c = (build_fc(arch, 5, 10, 1, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
