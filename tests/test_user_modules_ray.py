"""A user's module end to end on real Rays (the issue's done-when): the CLI's embedded Ray
and the Jobs API of a real local Ray, the module shipped with the job. Every finished run
keeps its weights, and `open_sweep(path).model(run_id)` reproduces its stored logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.jobs.backend import JobsClient
from orchestrator.results.boundaries import boundary_tables
from orchestrator.results.plots import render_figures
from orchestrator.results.reader import open_sweep
from orchestrator.results.reduced import read_reduced
from schemas.errors import JamsweepError
from schemas.layout import SweepLayout
from tests.conftest import RayHead, jamsweep
from tests.test_faults import wait_for
from tests.test_user_modules import NETS

pytestmark = pytest.mark.ray

GRID = """
sweep: {sweep}
dataset: {{name: digits_parity_pca, train_size: 60, test_size: 100, pca_dim: 8}}
architectures:
  - {{name: mlp, kind: module, builder: "lab_nets:mlp", options: {{blocks: 2}}, widths: [2, 6]}}
  - {{name: bn, kind: module, builder: "lab_nets:bn", widths: [4]}}
  - {{name: fc, depth: 2, widths: [3]}}
seeds: 2
training: {{lr_max: 0.01, max_steps: 150}}
resources: {{num_cpus: 1, pack: {pack}}}
checkpoint: {{keep_models: {keep}}}
"""


def module_sweep(folder: Path, sweep: str, *, keep: bool = True, pack: str = "1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab_nets.py").write_text(NETS)
    grid = folder / "grid.yaml"
    grid.write_text(GRID.format(sweep=sweep, keep=str(keep).lower(), pack=pack))
    return grid


def assert_models_reproduce_the_logits(root: Path) -> None:
    """Every run's kept net, on the sweep's inputs, gives its stored final logits."""
    sweep = open_sweep(root)
    manifest = sweep.manifest()
    assert len(manifest) == 8
    inputs = {split: sweep.inputs(split=split) for split in ("train", "test")}
    for run_id in manifest.run_id:
        net = sweep.model(run_id)
        assert not net.training
        for split, x in inputs.items():
            rows = sweep.logits(split=split, step="final", run_id=run_id).sort_values("sample")
            with torch.no_grad():
                f = net(x)[:, 0]
            stored = torch.tensor(rows.f.to_numpy(), dtype=torch.float64)
            assert f.dtype == torch.float64 and len(f) == len(stored)
            assert torch.allclose(f, stored, rtol=0, atol=1e-10), (run_id, split)


def test_a_module_sweep_end_to_end_on_the_embedded_ray(tmp_path):
    grid = module_sweep(tmp_path / "lab", "mods", pack="auto")  # the FC packs, modules not
    res = tmp_path / "res"
    proc = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 done." in proc.stdout, proc.stdout[-2000:]
    root = res / "mods"
    manifest = open_sweep(root).manifest()
    n = dict(zip(manifest.arch + manifest.width.astype(str), manifest.n_params, strict=True))
    # d = 8; mlp: 8w + w^2 + w; bn: 8*4 + 4 (the batch norm's scale is no weight); fc: 2 layers of 3
    assert n == {"mlp2.0": 22, "mlp6.0": 90, "bn4.0": 36, "fc3.0": 8 * 3 + 3 * 3 + 3 * 1}
    assert len(list((root / "models").rglob("*.pt"))) == 8
    state = torch.load(next((root / "models").rglob("*.pt")), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert_models_reproduce_the_logits(root)
    assert (root / "curves.parquet").exists()  # reduced like any sweep
    for name in ("fig9_boundary_profile", "fig10_boundary_distance"):  # from the kept nets
        assert (root / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    profile, distances = boundary_tables(SweepLayout(str(res), "mods"))
    assert set(distances.arch) == {"mlp", "bn", "fc"} and (distances.n_nets == 2).all()
    assert set(profile.seed) == {0, 1} and set(profile.width) == {6.0}  # the largest N
    # a torn weights file is never read as a net: model() says so; the figures leave it out
    bn_run = manifest[manifest.arch == "bn"].run_id.iloc[0]
    torn = root / "models" / f"{bn_run}.pt"
    kept = torn.read_bytes()
    torn.write_bytes(kept[: len(kept) // 2])
    with pytest.raises(JamsweepError, match="cannot be read"):
        open_sweep(root).model(bn_run)
    _, distances = boundary_tables(SweepLayout(str(res), "mods"))
    assert set(distances.arch) == {"mlp", "fc"}  # bn's width has one readable net left
    replotted = jamsweep("plot", str(root))
    assert replotted.returncode == 0 and "Traceback" not in replotted.stderr, replotted.stderr
    assert "fig10_boundary_distance.png" in replotted.stdout
    torn.write_bytes(kept)

    shown = jamsweep("show", str(root))
    assert shown.returncode == 0, shown.stderr
    assert f"mlp: lab_nets:mlp ({tmp_path / 'lab' / 'lab_nets.py'}, source" in shown.stdout
    assert "bn: lab_nets:bn" in shown.stdout and "full-batch steps (BatchNorm1d" in shown.stdout

    again = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert again.returncode == 0 and "all 8 runs already done" in again.stderr, again.stderr

    (tmp_path / "lab" / "lab_nets.py").write_text(NETS + "\n# the model, edited\n")
    edited = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert edited.returncode == 1 and "Traceback" not in edited.stderr
    assert "architecture 'mlp': the code of lab_nets:mlp" in edited.stderr, edited.stderr
    assert "--force" in edited.stderr
    (tmp_path / "lab" / "lab_nets.py").write_text(NETS)  # the code back, other options
    grid.write_text(grid.read_text().replace("{blocks: 2}", "{blocks: 3}"))
    options = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert options.returncode == 1 and "options.blocks: 2 -> 3" in options.stderr

    (tmp_path / "lab" / "lab_nets.py").unlink()  # the file gone: the sweep's copy draws
    plotted = jamsweep("plot", str(root))
    assert plotted.returncode == 0, plotted.stderr
    assert "fig9_boundary_profile.png" in plotted.stdout, plotted.stdout + plotted.stderr
    shutil.rmtree(root / "code")  # no code anywhere: those two are not drawn, the others are
    plotted = jamsweep("plot", str(root))
    assert plotted.returncode == 0, plotted.stderr
    assert "fig9_boundary_profile: architecture" in plotted.stdout + plotted.stderr
    assert "it was found nowhere" in plotted.stdout + plotted.stderr
    assert "fig2_test_error.png" in plotted.stdout


def test_keep_models_false_stores_no_weights_and_says_so(tmp_path):
    grid = module_sweep(tmp_path / "lab", "bare", keep=False)
    res = tmp_path / "res"
    proc = jamsweep("submit", str(grid), "--results", str(res), "--num-cpus", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (res / "bare" / "models").exists()
    sweep = open_sweep(res / "bare")
    with pytest.raises(JamsweepError, match="keep_models: false"):
        sweep.model(sweep.manifest().run_id[0])
    layout, reduced = read_reduced("bare", str(res))
    missing = render_figures(reduced, layout).missing
    assert "keep_models: false" in missing["fig9_boundary_profile"]
    assert not (res / "bare" / "figures" / "fig10_boundary_distance.png").exists()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = RayHead(num_cpus=2, log=tmp_path_factory.mktemp("head") / "head.log")
    yield cluster
    cluster.kill()


def test_a_module_sweep_through_the_jobs_api_ships_the_module_with_the_job(tmp_path, head):
    lab = tmp_path / "lab"
    grid = module_sweep(lab, "jobmods")
    res = tmp_path / "res"
    proc = jamsweep(
        "submit", str(grid), "--address", head.dashboard, "--results", str(res),
        "--shared-fs", "--detach",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.split("Ray job ")[1].split()[0]
    # The module leaves this folder at once: what trains is the copy the job carries.
    (lab / "lab_nets.py").unlink()
    client = JobsClient(head.dashboard)
    wait_for(lambda: client.status(job) in ("SUCCEEDED", "FAILED", "STOPPED"), 300, "the job")
    assert client.status(job) == "SUCCEEDED", client.logs(job)[-3000:]
    runs = open_sweep(res / "jobmods").runs()
    locations = {r.arch.resolved.location for r in runs if r.arch.kind == "module"}
    (location,) = locations
    assert not location.startswith(str(lab))
    # The job's own folder goes too: the nets are rebuilt from the sweep's copy of the code.
    shutil.rmtree(Path(location).parent)
    assert [p.name for p in (res / "jobmods" / "code").glob("*/*")] == ["lab_nets.py"]
    assert_models_reproduce_the_logits(res / "jobmods")
    # reduced on the cluster: curves, N*, figures (Fig. 9 and 10 from the nets), a report
    root = res / "jobmods"
    assert (root / "curves.parquet").exists() and (root / "summary.json").exists()
    assert (root / "figures" / "fig10_boundary_distance.png").exists()
    report = jamsweep("report", str(root))
    assert report.returncode == 0, report.stderr
    page = (root / "report.html").read_text()
    assert 'alt="fig9_boundary_profile"' in page and 'alt="fig10_boundary_distance"' in page


def test_a_module_sweep_driven_from_here_on_a_running_cluster(tmp_path, head):
    """`--address HOST:PORT` (as `auto` on a node): this process drives, the cluster's own
    workers import the module from where it was found."""
    grid = module_sweep(tmp_path / "lab", "drive")
    res = tmp_path / "res"
    proc = jamsweep("submit", str(grid), "--results", str(res), "--address", head.gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 done." in proc.stdout
    assert_models_reproduce_the_logits(res / "drive")
