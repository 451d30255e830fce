"""Fig. 9 and Fig. 10's measurement (workers.boundaries) on nets whose boundaries are known
in closed form: linear nets f_i(x) = w_i . x + b_i, whose boundaries are hyperplanes."""

from __future__ import annotations

import torch
from torch import nn

from workers.boundaries import ANCHORS, measure_boundaries, nearest_crossing


def linear_nets(weights: torch.Tensor, biases: torch.Tensor) -> list[nn.Module]:
    nets = []
    for w, b in zip(weights, biases, strict=True):
        net = nn.Linear(len(w), 1, dtype=torch.float64)
        with torch.no_grad():
            net.weight.copy_(w[None, :])
            net.bias.copy_(b[None])
        nets.append(net.eval())
    return nets


def test_the_nearest_zero_crossing_is_interpolated_in_its_bracket():
    t = torch.linspace(-1, 1, 5, dtype=torch.float64)  # -1, -0.5, 0, 0.5, 1
    rows = torch.stack([t - 0.3, (t + 0.8) * (t - 0.4), torch.ones(5, dtype=torch.float64)])
    found = nearest_crossing(rows, t)
    assert abs(found[0].item() - 0.3) < 1e-12  # a line: exact
    # roots -0.8 and 0.4: the one nearer 0, by the chord through (0, -0.32) and (0.5, 0.13)
    assert abs(found[1].item() - 0.5 * 0.32 / 0.45) < 1e-12
    assert torch.isnan(found[2])  # no sign change: no boundary on the line


def test_parallel_hyperplanes_are_measured_at_their_distance_and_as_predicted():
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64)
    biases = torch.tensor([0.1, -0.3, 0.5, 0.0], dtype=torch.float64)
    nets = linear_nets(w.expand(4, 6), biases)
    measured = measure_boundaries(nets, torch.randn(400, 6, dtype=torch.float64))
    # each plane lies |b_i - b_bar| / ||w|| from the average's, everywhere
    expected = ((biases - biases.mean()) / w.norm()).pow(2).mean().sqrt().item()
    assert abs(measured.distance - expected) < 1e-9 and abs(measured.delta - expected) < 1e-9
    assert measured.n_anchors == ANCHORS


def test_tilted_hyperplanes_are_crossed_where_the_line_meets_them():
    """Along u = w_bar / ||w_bar|| from x, net i's plane is met at t_i = -f_i(x) / (w_i . u),
    the average's at -f_bar(x) / ||w_bar||; delta_i = |f_i(x0)| / ||w_i|| on the average's
    plane. Computed here from those formulas, at the anchors the measurement picks."""
    torch.manual_seed(1)
    w_bar = torch.randn(5, dtype=torch.float64)
    weights = w_bar + 0.2 * torch.randn(3, 5, dtype=torch.float64)
    weights -= weights.mean(0) - w_bar  # their average is w_bar
    biases = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    x = torch.randn(300, 5, dtype=torch.float64)
    measured = measure_boundaries(linear_nets(weights, biases), x)

    f = x @ weights.T + biases  # (n, M)
    anchors = x[f.mean(1).abs().argsort()[:ANCHORS]]
    u = w_bar / w_bar.norm()
    f_at = anchors @ weights.T + biases  # (A, M)
    t_i = -f_at / (weights @ u)
    t_bar = -f_at.mean(1) / w_bar.norm()
    distance = (t_i - t_bar[:, None]).pow(2).mean().sqrt().item()
    x0 = anchors + t_bar[:, None] * u
    f0 = x0 @ weights.T + biases
    delta = ((f0 - f0.mean(1, keepdim=True)).abs() / weights.norm(dim=1)).pow(2).mean().sqrt()
    assert abs(measured.distance - distance) < 1e-9 * max(1.0, distance)
    assert abs(measured.delta - delta.item()) < 1e-9
    assert measured.distance > measured.delta  # tilted planes: the line meets them farther
