"""The paper's CIFAR-10 CNN: its N, its init, its loss, and a run that reaches zero loss."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from schemas.errors import GridError
from schemas.grid import CNNArch, parse_grid
from schemas.run import RunSpec
from tests.conftest import SHARED_DATA
from workers.data import Dataset, Split
from workers.execute import logits_table
from workers.models import CNN, FC, build_cnn, count_weights
from workers.train import build_model, errors, loss_value, measure
from workers.trainer import train

JPEG_ROOT = SHARED_DATA / "cifar10-jpeg"

GRID = """
sweep: t
dataset: {{name: cifar10, root: {root}, train_size: 20, test_size: 30}}
architectures: [{{kind: cnn, name: cnn, widths: [{f}]{arch}}}]
seeds: 1
training: {{loss: hinge, optimizer: sgd, lr0: 1, lr_exponent: -1, lr_max: 0.05,
            batch_size: {batch}, max_steps: {steps}}}
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cnn_spec(f: int = 8, arch: str = "", batch: int = 250, steps: int = 2000) -> RunSpec:
    text = GRID.format(root=JPEG_ROOT, f=f, arch=arch, batch=batch, steps=steps)
    return parse_grid(text).expand()[0]


# -- N and the layers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "arch", "hand"),
    [
        # 3x3 kernels, stride 2, padding 1: 32 -> 16 -> 8 -> 4; read-out from f * 4 * 4
        (2, "", 3 * 2 * 9 + 2 * (2 * 2 * 9) + 2 * 16 * 10),
        (64, "", 3 * 64 * 9 + 2 * (64 * 64 * 9) + 64 * 16 * 10),
        # 5x5, stride 1, no padding, 2 layers: 32 -> 28 -> 24
        (
            3,
            ", kernel_size: 5, stride: 1, padding: 0, depth: 2",
            3 * 3 * 25 + 3 * 3 * 25 + 3 * 24 * 24 * 10,
        ),
    ],
)
def test_n_counts_the_weights_of_the_built_net_and_not_its_biases(f, arch, hand):
    spec = cnn_spec(f, arch)
    model = build_model(spec, 3)
    assert isinstance(model, CNN)
    assert spec.n_params == hand == count_weights(model)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    assert biases == spec.arch.depth * f + 10
    assert sum(p.numel() for p in model.parameters()) == hand + biases
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)


def test_run_spec_sizes_fc_on_pca_and_cnn_on_cifar():
    cnn = cnn_spec(4)
    assert cnn.n_outputs == 10
    fc = parse_grid(
        "sweep: t\ndataset: {name: digits_parity_pca, train_size: 50, pca_dim: 7}\n"
        "architectures: [{name: fc, depth: 2, widths: [3]}]\nseeds: 1\n"
    ).expand()[0]
    assert fc.n_outputs == 1 and fc.n_params == 7 * 3 + 3 * 3 + 3 * 1
    assert isinstance(build_model(fc, 7), FC)


# -- Xavier init --------------------------------------------------------------------------


def test_xavier_uniform_init_has_glorot_variance_and_bound_and_zero_biases():
    arch = CNNArch(kind="cnn", name="c", widths=[64])
    model = build_cnn(arch, 64, 3, 10, seed=0)
    for layer in [*model.convs, model.readout]:
        w = layer.weight.detach()
        receptive = w[0, 0].numel()
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        var = 2 / (fan_in + fan_out)
        bound = math.sqrt(3 * var)
        assert w.dtype == torch.float64
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.95 * bound  # uniform: it reaches the bound
        n = w.numel()
        assert w.mean().item() == pytest.approx(0, abs=5 * math.sqrt(var / n))
        # Var of a variance estimate over n uniform draws: (9/5 - 1) var^2 / n
        assert w.var().item() == pytest.approx(var, abs=5 * var * math.sqrt(0.8 / n))
        assert torch.count_nonzero(layer.bias) == 0
    again = build_cnn(arch, 64, 3, 10, seed=0)
    other = build_cnn(arch, 64, 3, 10, seed=1)
    assert torch.equal(again.convs[1].weight, model.convs[1].weight)
    assert not torch.equal(other.convs[1].weight, model.convs[1].weight)


def test_xavier_normal_init_is_gaussian_with_glorot_variance():
    arch = CNNArch(kind="cnn", name="c", widths=[64], init="xavier_normal", init_gain=2.0)
    w = build_cnn(arch, 64, 3, 10, seed=0).convs[1].weight.detach()  # fans 576 and 576
    var = 4.0 * 2 / (576 + 576)
    assert w.var().item() == pytest.approx(var, rel=0.03)
    kurtosis = ((w - w.mean()) ** 4).mean().item() / w.var().item() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.1)  # Gaussian 3; uniform would be 1.8


def test_evaluating_in_slices_gives_the_one_pass_outputs():
    arch = CNNArch(kind="cnn", name="c", widths=[4])
    model = build_cnn(arch, 4, 3, 10, seed=0)
    model.eval_rows = 3
    x = torch.randn(10, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sliced = model(x)
    torch.testing.assert_close(sliced, model(x).detach())


# -- the loss -----------------------------------------------------------------------------


def test_multiclass_hinge_loss_unsat_count_and_error_match_a_hand_loop():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(7, 10, dtype=torch.float64, generator=gen) * 2
    y = torch.randint(0, 10, (7,), generator=gen)
    margin = 1.5
    total, unsat, wrong = 0.0, 0, 0
    for i in range(7):
        yi = int(y[i])
        for c in range(10):
            if c != yi:
                delta = margin - (f[i, yi].item() - f[i, c].item())
                total += max(0.0, delta)
                unsat += delta > 0
        wrong += max(range(10), key=lambda c, i=i: f[i, c].item()) != yi
    assert loss_value("hinge", f, y, margin).item() == pytest.approx(total / 7)
    assert errors(f, y).sum().item() == wrong

    class Fixed(torch.nn.Module):  # a "net" whose outputs are f
        def forward(self, x):
            return f[x[:, 0].long()]

    base = cnn_spec()
    training = base.training.model_copy(update={"margin": margin, "delta_tol": 0.0})
    spec = base.model_copy(update={"training": training})
    data = Split(torch.arange(7, dtype=torch.float64)[:, None], y, torch.arange(7))
    got = measure(Fixed(), data, spec)
    assert got["loss"] == pytest.approx(total / 7)
    assert got["n_unsat"] == unsat and got["train_error"] == pytest.approx(wrong / 7)


# -- a run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handful() -> Dataset:
    """20 real CIFAR-10 training images (2 per class) and 30 test images."""
    if not (JPEG_ROOT / "train").is_dir():
        pytest.fail(f"the real CIFAR-10 JPEGs are expected in {JPEG_ROOT} (see ../shared/data)")
    from workers.data import load_dataset

    return load_dataset(cnn_spec().dataset)


def test_a_small_cnn_trains_with_minibatch_sgd_to_zero_hinge_loss(handful):
    spec = cnn_spec(f=8, batch=5, steps=3000)  # 4 mini-batches per epoch
    result = train(spec, handful)
    m = result.metrics
    assert m["converged"] and m["n_unsat"] == 0 and m["train_loss"] == 0.0
    assert m["steps"] < 3000 and m["lr"] == pytest.approx(0.05)
    # the stop rule: it stopped at the first measurement with every constraint satisfied
    assert result.trace[-1]["step"] == m["steps"] and result.trace[-1]["n_unsat"] == 0
    assert all(t["n_unsat"] > 0 for t in result.trace[:-1])
    train_out, test_out = result.outputs[-2], result.outputs[-1]
    assert train_out.f.shape == (20, 10) and test_out.f.shape == (30, 10)
    gaps = train_out.f.gather(1, handful.train.y[:, None]) - train_out.f  # f_y - f_c
    gaps[torch.arange(20), handful.train.y] = math.inf
    assert gaps.min().item() >= 1.0 - spec.training.delta_tol  # every margin is met
    wrong = (test_out.f.argmax(1) != handful.test.y).double().mean().item()
    assert m["test_error"] == pytest.approx(wrong)
    # logits.f is a list of 10 floats per sample, labels the class ids
    table = logits_table(spec, handful, result)
    assert table.schema.field("f").type == pa.list_(pa.float64())
    assert {len(v) for v in table.column("f").to_pylist()} == {10}
    assert table.column("label").to_pylist()[:20] == handful.train.y.tolist()


def test_a_run_with_constraints_left_stops_at_the_step_budget(handful):
    m = train(cnn_spec(f=2, steps=7), handful).metrics
    assert m["steps"] == 7 and not m["converged"] and m["n_unsat"] > 0 and m["train_loss"] > 0


# -- the grid -----------------------------------------------------------------------------


def grid_problems(text: str) -> str:
    with pytest.raises(GridError) as info:
        parse_grid(text)
    return str(info.value)


def test_grid_ties_cnns_to_images_and_fc_nets_to_pca_sets():
    both = grid_problems(
        "sweep: t\ndataset: {name: digits_parity_pca, train_size: 50}\nseeds: 1\n"
        "architectures: [{kind: cnn, name: c1, widths: [2]}, {name: f1, widths: [2]},\n"
        "                {kind: cnn, name: c2, widths: [4]}]\n"
    )
    assert "architectures.0: architecture 'c1' (kind cnn) needs an image dataset" in both
    assert "architectures.2: architecture 'c2'" in both and "'digits_parity_pca'" in both
    assert "'f1'" not in both
    fc = grid_problems(
        "sweep: t\ndataset: {name: cifar10, root: x, train_size: 50}\nseeds: 1\n"
        "architectures: [{name: f1, widths: [2]}]\n"
    )
    assert "'f1' (kind fc) needs flat inputs (digits_parity_pca, mnist_parity_pca, files)" in fc
    assert "'cifar10'" in fc


def test_grid_rejects_fractional_channels_and_a_cnn_that_erases_the_image():
    bad = grid_problems(
        "sweep: t\ndataset: {name: cifar10, root: x, train_size: 50}\nseeds: 1\n"
        "architectures: [{kind: cnn, name: c, widths: [2.5]}]\n"
    )
    assert "architectures.0.widths.0" in bad and "2.5" in bad
    shrink = grid_problems(
        "sweep: t\ndataset: {name: cifar10, root: x, train_size: 50}\nseeds: 1\n"
        "architectures: [{kind: cnn, name: d, widths: [2], kernel_size: 9, stride: 4,\n"
        "                 padding: 0}]\n"
    )
    assert "architectures.0: architecture 'd'" in shrink and "to nothing" in shrink
    kind = grid_problems(
        "sweep: t\ndataset: {name: cifar10, root: x, train_size: 50}\nseeds: 1\n"
        "architectures: [{kind: rnn, name: r, widths: [2]}]\n"
    )
    assert "kind must be 'fc' (fully-connected), 'cnn' (convolutional) or 'module'" in kind
