"""Where the nets of one width draw their decision boundaries (paper Fig. 9 and Fig. 10),
from the trained nets themselves. Tensors in, tensors out; no files.

For M nets f_1..f_M of one width (one output) and their average f_bar:
  - anchors: the test points closest to f_bar's boundary (smallest |f_bar|), and at each the
    unit direction u = grad f_bar / ||grad f_bar||;
  - along the line x + t u, the crossing t_bar of f_bar and t_i of each net (the zero
    crossing nearest t = 0, by a scan of S points and linear interpolation in the bracket);
  - measured: the distance |t_i - t_bar| between net i's boundary and the average's;
  - predicted (linear): delta_i = |f_i(x0) - f_bar(x0)| / ||grad f_i(x0)|| at the point
    x0 = x + t_bar u of f_bar's boundary (f_bar(x0) = 0), the paper's delta.
If the boundaries fluctuate as the linear picture says, distance = delta (Fig. 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ANCHORS = 32  # test points the distances are measured at, per width
CANDIDATES = 2000  # test points the anchors are chosen from (bounds the cost of a wide net)
SCAN = 401  # points of each line scan
REACH = 4.0  # a line scan spans +-REACH times the largest linear distance to a boundary


@dataclass
class Boundaries:
    """One width's measurement: RMS over nets and anchors of the measured distance and of
    the linear prediction delta, the anchors used, and the Fig. 9 profile at the first
    anchor: t (S,) and f (M, S) of each net along its line."""

    distance: float
    delta: float
    n_anchors: int
    t: torch.Tensor
    f: torch.Tensor


def _outputs(nets: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """f_i(x) of every net (M, n), without a graph."""
    with torch.no_grad():
        return torch.stack([net(x)[:, 0] for net in nets])


def _gradients(nets: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """grad_x f_i(x) of every net (M, n, *x.shape[1:]); samples are independent (eval mode),
    so the gradient of sum_mu f_i(x_mu) holds every row at once."""
    grads = []
    for net in nets:
        xs = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(xs)[:, 0].sum(), xs)
        grads.append(grad)
    return torch.stack(grads)


def nearest_crossing(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The zero crossing nearest t = 0 of each row of `values` (..., S) sampled at t (S,),
    linearly interpolated inside its bracket; NaN where a row does not change sign."""
    a, b = values[..., :-1], values[..., 1:]
    bracket = (a == 0) | (a * b < 0)  # (..., S-1)
    frac = torch.where(a == b, torch.zeros_like(a), a / (a - b))
    roots = t[:-1] + frac * (t[1:] - t[:-1])  # (..., S-1)
    far = torch.where(bracket, roots.abs(), torch.full_like(roots, torch.inf))
    best = far.argmin(-1, keepdim=True)
    found = torch.gather(roots, -1, best)[..., 0]
    return torch.where(torch.isfinite(torch.gather(far, -1, best)[..., 0]), found, torch.nan)


def measure_boundaries(nets: list[nn.Module], x_test: torch.Tensor) -> Boundaries:
    """The boundary distances of `nets` (eval mode, one output, >= 2) on test inputs x."""
    x = x_test[:CANDIDATES]
    f = _outputs(nets, x)  # (M, n)
    closest = f.mean(0).abs().argsort()[:ANCHORS]
    x = x[closest]  # (A, ...)
    grads = _gradients(nets, x)  # (M, A, ...)
    mean_grad = grads.mean(0).flatten(1)  # grad f_bar (A, D)
    u = mean_grad / mean_grad.norm(dim=1, keepdim=True)  # (A, D)
    f_here = f[:, closest]  # (M, A)
    linear = f_here.abs() / grads.flatten(2).norm(dim=2)  # each net's distance to its boundary
    reach = REACH * torch.cat([linear, (f_here.mean(0).abs() / mean_grad.norm(dim=1))[None]])
    span = reach.amax(0).clamp_min(1e-9)  # (A,)
    s = torch.linspace(-1.0, 1.0, SCAN, dtype=x.dtype)  # t = s * span, per anchor
    flat = x.flatten(1)  # (A, D)
    line = flat[:, None, :] + (s[None, :, None] * span[:, None, None]) * u[:, None, :]
    along = _outputs(nets, line.reshape(-1, *x.shape[1:])).view(len(nets), len(x), SCAN)
    t_nets = nearest_crossing(along, s) * span  # (M, A)
    t_bar = nearest_crossing(along.mean(0), s) * span  # (A,)
    x0 = flat + torch.nan_to_num(t_bar)[:, None] * u  # on f_bar's boundary
    x0 = x0.view_as(x)
    f0, g0 = _outputs(nets, x0), _gradients(nets, x0).flatten(2).norm(dim=2)  # (M, A)
    delta = (f0 - f0.mean(0)).abs() / g0
    measured = (t_nets - t_bar).abs()
    # a net flat at x0 (every ReLU off there: ||grad f|| = 0) has no linear prediction
    ok = torch.isfinite(measured) & torch.isfinite(delta) & torch.isfinite(t_bar)[None, :]
    return Boundaries(
        distance=measured[ok].pow(2).mean().sqrt().item() if ok.any() else float("nan"),
        delta=delta[ok].pow(2).mean().sqrt().item() if ok.any() else float("nan"),
        n_anchors=int(ok.any(0).sum().item()),
        t=s * span[0],
        f=along[:, 0, :],
    )
