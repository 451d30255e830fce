"""A pack: several runs of one FC arch as one batched model, with a hand-written backward.

Small nets waste the machine: a step of a width-8 net is a few dozen tiny kernels. A pack
stacks the weights of R runs (seeds, and widths of one arch) along a leading run dimension
and steps them together with batched matmuls, so one kernel does the work of R. A narrower
run sits zero-padded in the widest one's shapes: a padded unit's weights and bias are 0, so
its ReLU is 0, its gradient is exactly 0 and Adam leaves it at 0 (m = v = 0). Everything a
run owns stays its own:
  - its init (each run's net is built by `build_model`, exactly as when trained alone),
  - its Adam state and learning rate (moments, step count and lr per run, Adam's math
    vectorised over runs),
  - its stop: a run that meets the stop rule leaves the batch (the batch is compacted at
    that boundary), so its weights and Adam moments never change again,
  - its checkpoint, trace, snapshots and result, in the formats of `workers.train`, so a
    run's checkpoint resumes in a pack or alone.
The loop, the stop rule and the kind of step are `workers.loop`'s, as for a run alone.

Why by hand: on a CPU the step of a small pack is per-op overhead, not arithmetic. The
params, their gradients and Adam's moments each live in one flat buffer (the per-layer
tensors are views into it), so Adam is a dozen elementwise ops for every tensor of every
run, and the FC stack's backward is written out: per layer two bmm and one sum, written
into the gradient buffer, with no autograd graph (tests check it against autograd).

Packs are for FC nets trained full batch (`packable`); CNNs and mini-batch runs train alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from schemas.grid import FCArch
from schemas.run import RunSpec
from workers.data import Dataset
from workers.loop import Callbacks, Member, Plan, member, resumed_plan, run_loop, take_violators
from workers.models import FC
from workers.train import (
    RunResult,
    TrainState,
    build_model,
    errors,
    make_optimizer,
    measure_outputs,
)

BETA1, BETA2 = 0.9, 0.999  # torch.optim.Adam's defaults, which make_optimizer uses


def packable(spec: RunSpec) -> bool:
    """FC nets with one output trained full batch, without a frozen init copy: what
    `train_pack` handles (the paper's FC setup)."""
    t = spec.training
    full_batch = t.batch_size is None or t.batch_size >= spec.dataset.train_size
    return (
        spec.arch.kind == "fc"
        and spec.n_outputs == 1
        and full_batch
        and not t.subtract_init
        and t.loss != "cross_entropy"
    )


def pack_key(spec: RunSpec) -> str:
    """Runs with the same key may share a pack: they differ by their width and seed only."""
    return spec.model_dump_json(exclude={"seed", "width"})


class Flat:
    """Tensors of shapes (R, ...) as views of one contiguous buffer, one after the other."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        sizes = [t.numel() for t in tensors]
        self.buffer = torch.cat([t.reshape(-1) for t in tensors])
        self.views = [
            part.view(t.shape) for part, t in zip(self.buffer.split(sizes), tensors, strict=True)
        ]


class Pack:
    """The stacked state of the runs still training: params [W0, b0, W1, b1, ...] with
    W_l (R, out, in) and b_l (R, out) in the widest run's shapes (narrower runs
    zero-padded), their gradients and Adam moments of the same shapes, Adam's steps t (R,)
    and learning rates (R,); `train` the full-batch training set."""

    def __init__(
        self, members: list[Member], params: list[torch.Tensor], adam: dict, data: Dataset
    ) -> None:
        self.members = members
        self.data = data
        self.y = data.train.y.to(data.train.x.dtype)  # labels +-1 in the params' dtype
        self._load(params, adam["exp_avg"], adam["exp_avg_sq"])
        device = params[0].device
        self.adam_steps: torch.Tensor = adam["step"].to(device)  # (R,) float64
        self.lr = torch.tensor(
            [m.spec.training.learning_rate(m.spec.width) for m in members],
            dtype=torch.float64,
            device=device,
        )

    def _load(self, params: list[torch.Tensor], exp_avg: list, exp_avg_sq: list) -> None:
        self.flat, self.grad_flat = Flat(params), Flat([torch.zeros_like(p) for p in params])
        self.m_flat, self.v_flat = Flat(exp_avg), Flat(exp_avg_sq)
        self.params, self.grads = self.flat.views, self.grad_flat.views
        self.exp_avg, self.exp_avg_sq = self.m_flat.views, self.v_flat.views
        # the run of every element of the flat buffers (T,): per-run values to elements
        r = len(self.members)
        self.run_of = torch.cat(
            [torch.arange(r, device=p.device).repeat_interleave(p[0].numel()) for p in params]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """f of every run (R, n) and each layer's input (what the backward needs): x (n, d)
        shared by the runs, or (R, n, d) per run."""
        h = x.expand(len(self.members), *x.shape) if x.ndim == 2 else x
        inputs = []
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            inputs.append(h)
            weight, bias = self.params[2 * i], self.params[2 * i + 1]
            h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))  # (R, n, out)
            if i + 1 < n_layers:
                h = h.relu_()
        return h[..., 0], inputs  # one output

    def backward(self, grad_f: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        """Gradients of a loss with d loss / d f = grad_f (R, n) into `grads`, by hand:
        layer l's weight gets g^T h_l, its bias sum_n g, and g flows on as g W_l, zero
        where the ReLU was (h_l = relu(...) <= 0)."""
        g = grad_f[:, :, None]  # (R, n, 1): d loss / d of the last layer's output
        for i in reversed(range(len(inputs))):
            torch.bmm(g.transpose(1, 2), inputs[i], out=self.grads[2 * i])  # (R, out, in)
            torch.sum(g, 1, out=self.grads[2 * i + 1])  # (R, out)
            if i:
                g = torch.bmm(g, self.params[2 * i])  # (R, n, in)
                g = torch.ops.aten.threshold_backward(g, inputs[i], 0)

    def step(self, plan: Plan) -> torch.Tensor:
        """One full-batch hinge step of every run (see `workers.loop`)."""
        counts = self.gradients(plan)
        self.update()
        return counts

    def gradients(self, plan: Plan) -> torch.Tensor:
        """Every run's gradient into `grads`: the loss of a run is (1/P) sum of its hinge
        terms, so its gradient is the run's own. Returns the violator counts (R,) at
        these weights."""
        t = self.members[0].spec.training
        x, y, n = self.data.train.x, self.y, len(self.data.train)
        if plan.capacity is None:
            f, inputs = self.forward(x)
            delta = t.margin - y * f  # (R, P)
            counts = (delta > 0).sum(1)
            grad_f = _hinge_grad(t.loss, delta, y) / n
        else:
            violated = t.margin - y * self.forward(x)[0] > 0  # (R, P)
            order, real, counts = take_violators(violated, plan.capacity)
            y_v = y[order]  # (R, C)
            f, inputs = self.forward(x[order])
            grad_f = _hinge_grad(t.loss, t.margin - y_v * f, y_v) * real / n
        self.backward(grad_f, inputs)
        return counts

    def update(self) -> None:
        """One optimizer step of every run on the flat buffers: torch.optim.Adam's math
        (single-tensor form) with each run's own step count and learning rate, or SGD."""
        t = self.members[0].spec.training
        p, g = self.flat.buffer, self.grad_flat.buffer
        if t.optimizer == "sgd":
            p.sub_(g * self.lr[self.run_of].to(p))
            return
        self.adam_steps += 1
        step_size = (self.lr / (1 - BETA1**self.adam_steps))[self.run_of].to(p)  # (T,)
        bias2_sqrt = (1 - BETA2**self.adam_steps).sqrt()[self.run_of].to(p)
        m, v = self.m_flat.buffer, self.v_flat.buffer
        m.lerp_(g, 1 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = (v.sqrt() / bias2_sqrt).add_(t.adam_eps)
        p.sub_(step_size * (m / denom))

    def measure(self, data: Dataset) -> list[dict[str, float]]:
        f, f_test = outputs(self, data.train.x), outputs(self, data.test.x)
        return [
            {
                **measure_outputs(f[row], data.train.y, m.spec),
                "test_error": errors(f_test[row], data.test.y).mean().item(),
            }
            for row, m in enumerate(self.members)
        ]

    def model(self, row: int) -> FC:
        return run_model(self, row, self.data.train.x.shape[1])

    def state(self, row: int, wall_s: float, plan: Plan) -> TrainState:
        return run_state(self, row, self.data.train.x.shape[1], wall_s, plan)

    def save_point(self) -> list[torch.Tensor]:
        return [b.buffer.clone() for b in (self.flat, self.m_flat, self.v_flat)] + [
            self.adam_steps.clone()
        ]

    def roll_back(self, point: list[torch.Tensor]) -> None:
        for b, saved in zip((self.flat, self.m_flat, self.v_flat), point, strict=False):
            b.buffer.copy_(saved)
        self.adam_steps.copy_(point[3])

    def keep(self, rows: list[int]) -> None:
        """Compact the batch to the runs at `rows` (the others have stopped), in the shapes
        of the widest run left (what is cut off is padding: zeros)."""
        self.members = [self.members[i] for i in rows]
        if not self.members:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.params[0].device)
        cuts = [(slice(None), *_block(shape)) for shape in _widest(self.members)]

        def kept(stacked: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t[index][cut] for t, cut in zip(stacked, cuts, strict=True)]

        self._load(kept(self.params), kept(self.exp_avg), kept(self.exp_avg_sq))
        self.adam_steps = self.adam_steps[index]
        self.lr = self.lr[index]


def _hinge_grad(loss: str, delta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/df of the per-sample hinge terms (`workers.train.hinge_terms`), delta = margin - y f:
    -y where delta > 0 (hinge), -y relu(delta) (square hinge)."""
    if loss == "hinge":
        return torch.where(delta > 0, -y, 0.0)
    return -y * torch.relu(delta)


def _block(shape: torch.Size) -> tuple[slice, ...]:
    """The slices of a padded tensor that hold a tensor of `shape` (its top-left block)."""
    return tuple(slice(0, n) for n in shape)


def _widest(members: list[Member]) -> list[torch.Size]:
    """Per param, the shape that holds every member's (the elementwise largest)."""
    return [
        torch.Size(max(sizes) for sizes in zip(*shapes, strict=True))
        for shapes in zip(*(m.shapes for m in members), strict=True)
    ]


def stack_runs(members: list[Member], resumes: list[TrainState | None], data: Dataset) -> Pack:
    """The pack of `members`, each built by `build_model` from its seed (or from its
    checkpoint, loaded through a real model and optimizer so the formats stay torch's)."""
    device, dtype = data.train.x.device, data.train.x.dtype
    params, exp_avg, exp_avg_sq, steps = [], [], [], []
    for m, resume in zip(members, resumes, strict=True):
        model = build_model(m.spec, data.train.x.shape[1]).to(device=device, dtype=dtype)
        optimizer = make_optimizer(m.spec, model)
        if resume is not None:
            model.load_state_dict(resume.model)
            optimizer.load_state_dict(resume.optimizer)
        run_params = list(model.parameters())
        m.shapes = [p.shape for p in run_params]
        params.append([p.detach() for p in run_params])
        state = [optimizer.state.get(p, {}) for p in run_params]  # {} before a first step
        exp_avg.append(
            [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(state, run_params, strict=True)]
        )
        exp_avg_sq.append(
            [
                s.get("exp_avg_sq", torch.zeros_like(p))
                for s, p in zip(state, run_params, strict=True)
            ]
        )
        steps.append(float(state[0]["step"]) if "step" in state[0] else 0.0)

    shapes = _widest(members)

    def stacked(per_run: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Per param, the runs' tensors in one (R, *widest) tensor, zero-padded."""
        out = []
        for shape, tensors in zip(shapes, zip(*per_run, strict=True), strict=True):
            big = tensors[0].new_zeros((len(tensors), *shape))
            for row, tensor in enumerate(tensors):
                big[(row, *_block(tensor.shape))] = tensor
            out.append(big)
        return out

    adam = {
        "exp_avg": stacked(exp_avg),
        "exp_avg_sq": stacked(exp_avg_sq),
        "step": torch.tensor(steps, dtype=torch.float64),
    }
    return Pack(members, stacked(params), adam, data)


def run_model(pack: Pack, row: int, d_in: int) -> FC:
    """The net of the run at `row`, as a plain FC module holding a copy of its weights."""
    spec = pack.members[row].spec
    assert isinstance(spec.arch, FCArch)  # packable
    model = FC(d_in, spec.arch.layer_widths(spec.width), spec.n_outputs)
    model = model.to(device=pack.params[0].device, dtype=pack.params[0].dtype)
    with torch.no_grad():
        for mine, stacked in zip(model.parameters(), pack.params, strict=True):
            mine.copy_(stacked[row][_block(mine.shape)])
    return model


def run_state(pack: Pack, row: int, d_in: int, wall_s: float, plan: Plan) -> TrainState:
    """The checkpoint of the run at `row`, exactly as a run alone saves one (`plan`: the
    next interval's kind of step)."""
    m = pack.members[row]
    model = run_model(pack, row, d_in)
    optimizer = make_optimizer(m.spec, model)
    t_row = float(pack.adam_steps[row])
    if m.spec.training.optimizer == "adam" and t_row > 0:
        for i, p in enumerate(model.parameters()):
            optimizer.state[p] = {
                # fused Adam keeps its step as a float32 tensor on the param's device
                "step": torch.tensor(t_row, dtype=torch.float32, device=p.device),
                "exp_avg": pack.exp_avg[i][row][_block(p.shape)].clone(),
                "exp_avg_sq": pack.exp_avg_sq[i][row][_block(p.shape)].clone(),
            }
    return TrainState(
        m.step,
        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),
        m.rng if m.rng is not None else torch.Generator().get_state(),
        [dict(t) for t in m.trace],
        list(m.snapshots),
        wall_s,
        plan.dense,
        plan.capacity,
    )


def outputs(pack: Pack, x: torch.Tensor) -> torch.Tensor:
    """f (R, n) of every run (no autograd graph: the pack's params do not record one)."""
    return pack.forward(x)[0]


def train_pack(
    specs: list[RunSpec],
    data: Dataset,
    *,
    device: torch.device | str = "cpu",
    resumes: list[TrainState | None] | None = None,
    save: Callable[[RunSpec, TrainState], None] | None = None,
    done: Callable[[RunSpec, RunResult], None] | None = None,
    failed: Callable[[RunSpec, Exception], None] | None = None,
) -> None:
    """Train `specs` (one pack_key, packable) together to each run's stop rule. Each run
    is handed to `done` as it stops (or to `failed` if it diverges) and to `save` as its
    checkpoints fall due: the same results and states as a run alone, run by run."""
    first = specs[0]
    assert all(packable(s) and pack_key(s) == pack_key(first) for s in specs), "not one pack"
    resumes = resumes if resumes is not None else [None] * len(specs)
    members = [member(s, r) for s, r in zip(specs, resumes, strict=True)]
    pack = stack_runs(members, resumes, data)
    plan = resumed_plan(resumes, len(data.train))
    run_loop(pack, data, plan, str(device), Callbacks(save, done, failed))
