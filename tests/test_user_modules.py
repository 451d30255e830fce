"""`kind: module`: a user's own torch.nn.Module, built by `builder: MODULE:FUNCTION` (DESIGN.md
section 6). No cluster here: the grid's checks, N, the run identity, the refusals, the
batch-mixing decision and the training loop on such modules; end to end on Ray in
test_user_modules_ray.py."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator import sweep as api
from schemas.errors import JamsweepError
from schemas.grid import load_grid
from tests.conftest import ROOT, jamsweep
from workers.builders import batch_mixing, build_module, with_modules
from workers.data import load_dataset
from workers.train import TrainState, loss_value, squeeze_output, violator_only
from workers.trainer import train

NETS = """
import torch
from torch import nn


def mlp(width, d_in, n_out, blocks=1):
    layers = [nn.Linear(d_in, width), nn.ReLU()]
    for _ in range(blocks - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def bn(width, d_in, n_out):
    return nn.Sequential(
        nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, n_out)
    )


def not_a_module(width, d_in, n_out, **options):
    return 3


def wrong_outputs(width, d_in, n_out, **options):
    return nn.Linear(d_in, n_out + 1)


def frozen(width, d_in, n_out, **options):
    return nn.Linear(d_in, n_out).requires_grad_(False)
"""

GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 8}}
architectures:
  - {{name: net, kind: module, builder: "{builder}", options: {options}, widths: [2, 5]{extra}}}
seeds: 2
training: {{lr_max: 0.01, max_steps: {steps}}}
"""


def module_grid(
    folder: Path,
    *,
    builder: str = "lab_nets:mlp",
    options: str = "{blocks: 2}",
    extra: str = "",
    sweep: str = "mod",
    steps: int = 200,
    nets: str | None = NETS,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if nets is not None:
        (folder / "lab_nets.py").write_text(nets)
    grid = folder / "grid.yaml"
    grid.write_text(
        GRID.format(sweep=sweep, builder=builder, options=options, extra=extra, steps=steps)
    )
    return grid


def planned(grid: Path, results: Path):  # noqa: ANN201
    return api.submit(grid, results=str(results), dry_run=True).planned


def test_n_is_counted_from_the_built_module_before_anything_trains(tmp_path):
    runs = planned(module_grid(tmp_path / "g"), tmp_path / "res")
    # d = 8 inputs, width w, blocks = 2 (two hidden layers), one output: the weights only
    assert {r.width: r.n_params for r in runs} == {2: 8 * 2 + 2 * 2 + 2, 5: 8 * 5 + 5 * 5 + 5}
    everything = planned(module_grid(tmp_path / "a", extra=", count: all"), tmp_path / "res")
    # plus a bias per unit and the output's
    assert {r.width: r.n_params for r in everything} == {2: 22 + 2 + 2 + 1, 5: 70 + 5 + 5 + 1}
    assert not (tmp_path / "res").exists()


def test_the_run_id_follows_builder_options_and_source_not_where_the_file_is(tmp_path):
    ids = {r.run_id for r in planned(module_grid(tmp_path / "a"), tmp_path / "r")}
    moved = {r.run_id for r in planned(module_grid(tmp_path / "b"), tmp_path / "r")}
    assert ids == moved  # the same code elsewhere: the same runs
    options = {r.run_id for r in planned(module_grid(tmp_path / "c", options="{}"), tmp_path)}
    edited = module_grid(tmp_path / "d", nets=NETS + "\n# a comment\n")
    assert not ids & options and not ids & {r.run_id for r in planned(edited, tmp_path / "r")}


@pytest.mark.parametrize(
    ("builder", "nets", "expected"),
    [
        ("absent_nets:mlp", NETS, ["module 'absent_nets' not found", "beside the grid file"]),
        ("lab_nets:nope", NETS, ["has no attribute 'nope'", "mlp"]),
        ("lab_nets:not_a_module", NETS, ["returned int, not a torch.nn.Module"]),
        ("lab_nets:wrong_outputs", NETS, ["must return (n, 1)"]),
        ("lab_nets:mlp", "import no_such_package\n", ["cannot import 'lab_nets'"]),
        ("lab_nets", NETS, ["is not MODULE:FUNCTION"]),
        ("workers.models:build_fc", NETS, ["would shadow jamsweep's own package"]),
        ("lab_nets:mlp_typo", NETS, ["has no attribute 'mlp_typo'"]),
        ("lab_nets:bn", NETS, ["lab_nets:bn(2, 8, 1, **{'blocks': 2}) raised TypeError"]),
        ("lab_nets:frozen", NETS, ["builds a net without trainable parameters"]),
    ],
)
def test_a_builder_that_cannot_be_used_is_refused_before_anything_is_written(
    tmp_path, builder, nets, expected
):
    grid = module_grid(tmp_path / "g", builder=builder, nets=nets)
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    if "not found" in expected[0]:
        assert str(tmp_path / "g") in proc.stderr  # where it looked
    assert not (tmp_path / "res").exists()


class MeanCentred(nn.Module):
    """Mixes samples without any batch-norm class: subtracts the batch's mean."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x - x.mean(0))


@pytest.mark.parametrize(
    ("net", "mixing"),
    [
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)), None),
        (nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1)), None),  # per sample
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)), "BatchNorm1d"),
        (nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 1)), "Dropout"),
        (MeanCentred(4), "changes with the rest of the batch"),
    ],
)
def test_which_modules_mix_the_samples_of_a_batch(net, mixing):
    found = batch_mixing(net.double(), (4,))
    assert found is None if mixing is None else mixing in found


def resolved_runs(tmp_path: Path, builder: str, **grid):  # noqa: ANN003, ANN201
    path = module_grid(tmp_path / "g", builder=builder, **grid)
    spec = with_modules(load_grid(path)[0], path)
    return spec.expand(), load_dataset(spec.dataset)


def plain_full_batch_loop(run, data, steps: int) -> nn.Module:  # noqa: ANN001
    """The obvious loop: the same init, Adam on the loss of every training point, each step."""
    net = build_module(run.arch, run.width, run.d_in, run.n_outputs, run.seed)
    t = run.training
    opt = torch.optim.Adam(net.parameters(), lr=t.learning_rate(run.width), eps=t.adam_eps)
    for _ in range(steps):
        loss = loss_value(t.loss, squeeze_output(net, data.train.x), data.train.y, t.margin)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_a_batch_norm_module_trains_with_full_batch_steps_as_the_plain_loop(tmp_path):
    runs, data = resolved_runs(tmp_path, "lab_nets:bn", steps=40, options="{}")
    run = runs[0]
    assert "BatchNorm1d" in run.module_facts.batch_mixing and not violator_only(run, 60)
    result = train(run, data)
    plain = plain_full_batch_loop(run, data, result.metrics["steps"])
    assert result.metrics["steps"] == 40
    mine = result.weights
    assert mine is not None and mine.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():  # running statistics included
        assert torch.allclose(mine[name].double(), value.double(), rtol=0, atol=1e-10), name
    # and its stored outputs are the eval-mode net's (running statistics)
    with torch.no_grad():
        f = plain.eval()(data.test.x)[:, 0]
    assert torch.allclose(result.outputs[-1].f, f, rtol=0, atol=1e-10)


def test_violator_only_steps_would_be_wrong_for_batch_norm(tmp_path):
    """Why the decision matters: for a BN net, the gradient of the violators' loss alone is
    not the full-batch gradient (for a per-sample net it is: test_violators.py)."""
    runs, data = resolved_runs(tmp_path, "lab_nets:bn", options="{}")
    run = runs[0]
    net = build_module(run.arch, run.width, run.d_in, run.n_outputs, run.seed)
    x, y, t = data.train.x, data.train.y, run.training
    f = squeeze_output(net, x)
    margin = (y * f.detach()).median().item()  # about half the points violated
    full = torch.autograd.grad(loss_value(t.loss, f, y, margin), list(net.parameters()))
    violated = (margin - y * f.detach()) > 0
    assert 0 < violated.sum() < len(y)
    part = squeeze_output(net, x[violated])
    only = 0.5 * torch.relu(margin - y[violated] * part).pow(2).sum() / len(y)
    sparse = torch.autograd.grad(only, list(net.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(full, sparse, strict=True))


def test_a_per_sample_module_trains_violator_only_and_matches_the_plain_loop(tmp_path):
    runs, data = resolved_runs(tmp_path, "lab_nets:mlp", steps=60)
    run = runs[0]
    assert run.module_facts.batch_mixing is None and violator_only(run, 60)
    result = train(run, data)
    plain = plain_full_batch_loop(run, data, result.metrics["steps"])
    assert result.weights is not None
    for name, value in plain.state_dict().items():
        assert torch.allclose(result.weights[name], value, rtol=0, atol=1e-9), name


def test_the_builder_is_seeded_per_run_and_leaves_the_callers_rngs_alone(tmp_path):
    runs, _ = resolved_runs(tmp_path, "lab_nets:mlp")
    run0, run1 = (r for r in runs if r.width == 2)
    torch.manual_seed(123), np.random.seed(5), random.seed(7)
    before = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(7)
    a = build_module(run0.arch, 2, 8, 1, run0.seed).state_dict()
    after = (torch.rand(1), np.random.rand(), random.random())
    assert before == after
    again = build_module(run0.arch, 2, 8, 1, run0.seed).state_dict()
    other = build_module(run1.arch, 2, 8, 1, run1.seed).state_dict()
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)
    assert all(v.dtype == torch.float64 for v in a.values())


def test_a_batch_norm_run_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    runs, data = resolved_runs(tmp_path, "lab_nets:bn", steps=50, options="{}")
    run = runs[0].model_copy(
        update={"checkpoint": runs[0].checkpoint.model_copy(update={"every_steps": 20})}
    )
    saved: list[TrainState] = []
    whole = train(run, data, save=saved.append)
    at_20 = next(s for s in saved if s.step == 20)
    resumed = train(run, data, resume=TrainState.from_dict(at_20.to_dict()))
    assert whole.weights is not None and resumed.weights is not None
    assert all(torch.equal(whole.weights[k], resumed.weights[k]) for k in whole.weights)
    assert resumed.metrics["resumed_from"] == 20


def test_a_worker_refuses_code_that_is_not_the_submitted_code(tmp_path):
    runs, _ = resolved_runs(tmp_path, "lab_nets:mlp")
    (tmp_path / "g" / "lab_nets.py").write_text(NETS.replace("blocks=1", "blocks=3"))
    with pytest.raises(JamsweepError, match="is the code the sweep was submitted with"):
        build_module(runs[0].arch, 2, 8, 1, 0)


def test_the_example_module_grid_plans_with_the_n_of_its_docstring():
    grid = Path(__file__).resolve().parents[1] / "examples" / "user_model.yaml"
    runs = api.submit(grid, dry_run=True).planned
    assert {r.width: r.n_params for r in runs} == {
        h: 30 * h + 2 * h * h + h for h in (1, 2, 3, 4, 6, 8, 12)
    }


def test_refine_counts_n_at_its_new_widths_from_the_builder(tmp_path):
    from orchestrator.cluster.refine import _n_params_at, refined_specs

    runs, _ = resolved_runs(tmp_path, "lab_nets:mlp")
    template = runs[0]
    assert _n_params_at(template, 3) == 8 * 3 + 3 * 3 + 3  # width 3 is not in the grid
    (new,) = refined_specs(template, [4], [7])
    assert (new.width, new.seed, new.n_params) == (4, 7, 8 * 4 + 4 * 4 + 4)
    assert new.module_facts.n_params["2"] == template.n_params  # the grid's widths kept
    assert new.run_id not in {r.run_id for r in runs}


PACKAGE = {
    "__init__.py": "",
    "layers.py": "from torch import nn\n\n\ndef hidden(a, b):\n    return nn.Linear(a, b)\n",
    "nets.py": (
        "from torch import nn\n\nfrom mylab.layers import hidden\n\n\n"
        "def build(width, d_in, n_out):\n"
        "    return nn.Sequential(hidden(d_in, width), nn.ReLU(), nn.Linear(width, n_out))\n"
    ),
}


def package_grid(folder: Path) -> Path:
    (folder / "mylab").mkdir(parents=True, exist_ok=True)
    for name, text in PACKAGE.items():
        (folder / "mylab" / name).write_text(text)
    return module_grid(folder, builder="mylab.nets:build", options="{}", nets=None)


def test_a_package_s_module_is_found_and_every_file_of_the_package_is_in_the_run_id(tmp_path):
    runs = planned(package_grid(tmp_path / "g"), tmp_path / "res")
    assert {r.width: r.n_params for r in runs} == {2: 8 * 2 + 2, 5: 8 * 5 + 5}
    layers = tmp_path / "g" / "mylab" / "layers.py"
    layers.write_text(layers.read_text() + "# a helper, edited\n")
    edited = planned(tmp_path / "g" / "grid.yaml", tmp_path / "res")
    assert not {r.run_id for r in runs} & {r.run_id for r in edited}


def test_a_module_on_the_python_path_is_found_there(tmp_path):
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    (elsewhere / "path_nets.py").write_text(NETS)
    grid = module_grid(tmp_path / "g", builder="path_nets:mlp", nets=None)
    env_cli = ["submit", str(grid), "--dry-run", "--results", str(tmp_path / "res")]
    refused = jamsweep(*env_cli)
    assert refused.returncode == 1 and "module 'path_nets' not found" in refused.stderr
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{elsewhere}"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *env_cli], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "N=22" in proc.stdout and "N=70" in proc.stdout


def test_a_jobs_submission_stages_the_module_file_or_the_whole_package(tmp_path):
    from orchestrator.jobs.executor import ship_modules

    for grid, shipped in (
        (module_grid(tmp_path / "a"), ["lab_nets.py"]),
        (package_grid(tmp_path / "b"), [f"mylab/{n}" for n in PACKAGE]),
    ):
        staging = tmp_path / f"staging-{grid.parent.name}"
        staging.mkdir()
        ship_modules(load_grid(grid)[0], grid, staging)
        found = sorted(str(p.relative_to(staging)) for p in staging.rglob("*.py"))
        assert found == sorted(shipped)
        for name in shipped:
            assert (staging / name).read_bytes() == (grid.parent / name).read_bytes()


def test_a_net_trained_minus_its_init_is_kept_whole_and_rebuilt(tmp_path):
    """subtract_init: the kept state holds the frozen init copy too; the rebuilt net
    gives the stored outputs."""
    from workers.train import build_model

    runs, data = resolved_runs(tmp_path, "lab_nets:mlp", steps=30)
    run = runs[0].model_copy(
        update={"training": runs[0].training.model_copy(update={"subtract_init": True})}
    )
    result = train(run, data)
    assert result.weights is not None and any(k.startswith("init.") for k in result.weights)
    net = build_model(run, run.d_in)
    net.load_state_dict(result.weights)
    with torch.no_grad():
        f = net.eval()(data.test.x)[:, 0]
    assert torch.allclose(f, result.outputs[-1].f, rtol=0, atol=1e-12)
