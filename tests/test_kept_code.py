"""The sweep's own copy of its module code (SWEEP/code/SHA16/): a run's net is built from it
when the file it was found in at submit is gone (another node, a later refine, a notebook),
and only while its source hash is the submitted one. Local results and a real S3 server on
loopback (moto)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from schemas.errors import JamsweepError
from schemas.grid import load_grid
from tests.conftest import jamsweep
from tests.test_user_modules import NETS, PACKAGE, module_grid, package_grid
from workers.builders import build_module, keep_code, with_kept_code, with_modules


@pytest.fixture(autouse=True)
def own_sys_path(monkeypatch):
    """Builders leave a module's folder on sys.path (imports inside it still work), and
    other test modules built nets of their own lab_nets: each test starts with none of
    those on the path or imported, and leaves the path as it found it."""
    clean = [
        p for p in sys.path if not any((Path(p) / n).exists() for n in ("lab_nets.py", "mylab"))
    ]
    monkeypatch.setattr(sys, "path", clean)
    forget("lab_nets")
    forget("mylab")


def submitted(grid: Path, code_dir: str | None):  # noqa: ANN201
    """The grid's first run as submit makes it (with the sweep's copy written, unless
    `code_dir` is None: a sweep of a version that kept none)."""
    spec = with_modules(load_grid(grid)[0], grid)
    if code_dir is not None:
        spec = with_kept_code(spec, code_dir)
        keep_code(spec)
    return spec.expand()[0]


def weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def forget(top: str) -> None:
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]


def test_a_net_is_built_from_the_sweep_s_copy_once_its_file_is_gone(tmp_path):
    grid = module_grid(tmp_path / "lab")
    run = submitted(grid, str(tmp_path / "res" / "mod" / "code"))
    (copy,) = (tmp_path / "res" / "mod" / "code").glob("*/lab_nets.py")
    assert copy.read_text() == NETS
    before = weights(build_module(run.arch, 5, 8, 1, seed=3))
    (tmp_path / "lab" / "lab_nets.py").unlink()
    forget("lab_nets")
    after = weights(build_module(run.arch, 5, 8, 1, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    # an edited copy is not the submitted code: refused, naming the copy and its hash
    copy.write_text(NETS.replace("blocks=1", "blocks=3"))
    forget("lab_nets")
    with pytest.raises(JamsweepError, match="is the code the sweep was submitted with") as err:
        build_module(run.arch, 5, 8, 1, seed=3)
    assert str(copy) in str(err.value)


def test_without_a_copy_a_missing_file_is_refused_saying_it_was_found_nowhere(tmp_path):
    grid = module_grid(tmp_path / "lab", sweep="old")
    run = submitted(grid, None)
    assert run.module_facts.kept is None
    (tmp_path / "lab" / "lab_nets.py").unlink()
    forget("lab_nets")
    with pytest.raises(JamsweepError, match="found nowhere"):
        build_module(run.arch, 5, 8, 1, seed=0)


def test_a_package_is_copied_whole_and_built_from_the_copy(tmp_path):
    grid = package_grid(tmp_path / "lab")
    run = submitted(grid, str(tmp_path / "code"))
    kept = sorted(
        p.relative_to(tmp_path / "code").as_posix() for p in (tmp_path / "code").rglob("*.py")
    )
    assert [k.split("/", 1)[1] for k in kept] == sorted(f"mylab/{n}" for n in PACKAGE)
    before = weights(build_module(run.arch, 4, 8, 1, seed=1))
    for name in PACKAGE:
        (tmp_path / "lab" / "mylab" / name).unlink()
    forget("mylab")
    after = weights(build_module(run.arch, 4, 8, 1, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.ray  # the S3 server's module fixture
def test_a_copy_on_s3_is_downloaded_once_and_used(tmp_path, s3, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    grid = module_grid(tmp_path / "lab", sweep="cloudmod")
    run = submitted(grid, "s3://sweeps/res/cloudmod/code")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sweeps")["Contents"]}
    assert any(k.startswith("res/cloudmod/code/") and k.endswith("/lab_nets.py") for k in keys)
    before = weights(build_module(run.arch, 2, 8, 1, seed=0))
    (tmp_path / "lab" / "lab_nets.py").unlink()
    forget("lab_nets")
    after = weights(build_module(run.arch, 2, 8, 1, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    (downloaded,) = (tmp_path / "tmp" / "jamsweep-code").glob("*/lab_nets.py")
    assert downloaded.read_text() == NETS


def test_a_sweep_moved_elsewhere_builds_its_nets_from_the_copy_it_carries(tmp_path):
    """rsync'd from a cluster: the copy's recorded path is the old one; the manifest's
    runs, read where the sweep is now, find the copy beside them."""
    from orchestrator.results.reader import open_sweep
    from orchestrator.results.store import manifest_table
    from schemas.layout import SweepLayout
    from workers import io

    grid = module_grid(tmp_path / "lab", sweep="moved")
    run = submitted(grid, str(tmp_path / "there" / "moved" / "code"))
    layout = SweepLayout(str(tmp_path / "there"), "moved")
    io.write_text(layout.grid_yaml, grid.read_text())
    io.write_table(layout.manifest, manifest_table([run]))
    before = weights(build_module(run.arch, 5, 8, 1, seed=2))
    (tmp_path / "there").rename(tmp_path / "here")
    (tmp_path / "lab" / "lab_nets.py").unlink()
    forget("lab_nets")
    with pytest.raises(JamsweepError, match="found nowhere"):
        build_module(run.arch, 5, 8, 1, seed=2)  # the spec as written: the old path
    (here,) = open_sweep(str(tmp_path / "here" / "moved")).runs()
    after = weights(build_module(here.arch, 5, 8, 1, seed=2))
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_a_module_that_imports_a_file_beside_it_is_refused_at_submit(tmp_path):
    """Only the builder's module is hashed, kept and shipped: an edit of helpers.py would not
    change the run ids, and a node without the folder could not import it."""
    lab = tmp_path / "lab"
    grid = module_grid(lab, nets="from helpers import mlp\n")
    (lab / "helpers.py").write_text(NETS)
    proc = jamsweep("submit", str(grid), "--results", str(tmp_path / "res"), "--dry-run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "lab_nets.py imports helpers.py from its folder" in proc.stderr, proc.stderr
    assert "Make the folder a package" in proc.stderr
    assert not (tmp_path / "res").exists()
