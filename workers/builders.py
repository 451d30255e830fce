"""User code enters here, and only here: a `kind: module` architecture's `builder:
MODULE:FUNCTION` found, hashed, imported, called and probed (STYLE 13: one named seam).

Where MODULE is looked for, in order: at submit, the grid file's folder, then the Python
path; to build a run's net, the folder it was found in at submit, the sweep's own copy
(SWEEP/code/, `workers.kept_code`), then the Python path, taking the first whose source
hash is the submitted one. A package
(`mylab.nets:build`) is found by its top-level name. Its source hash covers the file, or
every .py file of the top-level package, so editing any of it changes the run ids.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.util
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from schemas.datasets import IMAGE_SHAPES
from schemas.errors import JamsweepError
from schemas.grid import GridSpec
from schemas.modules import ModuleArch, ModuleFacts, width_key
from schemas.run import RunSpec
from workers.kept_code import kept_at, kept_folder, source_files, write_kept

# Modules whose train-mode output for one sample depends on the others (batch statistics) or
# on a random draw per forward: with them a violator-only step is not the full-batch step.
BATCH_MIXING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
PROBE_ROWS = 8  # samples of the numerical probe


@dataclass(frozen=True)
class Found:
    """Where MODULE's top-level file or package is, and how it was found."""

    location: Path  # .../lab_nets.py or .../mylab (a package folder)
    where: str  # "beside the grid file" or "on the Python path"

    @property
    def folder(self) -> Path:
        """The folder that holds it: what goes on sys.path to import it."""
        return self.location.parent


def find_module(arch: ModuleArch, folder: Path | None) -> Found:
    """MODULE's top-level file or package: in `folder` first, then on the Python path.
    Raises JamsweepError naming the module and every place looked in."""
    top = arch.module_name.split(".")[0]
    found = _in_folder(arch, folder, f"in {folder}") if folder is not None else None
    found = found or _on_path(arch)
    if found is not None:
        return found
    places = ([str(folder)] if folder is not None else []) + [p or "." for p in sys.path]
    raise JamsweepError(
        f"architecture {arch.name!r}: builder {arch.builder!r}: module {top!r} not found; "
        f"looked for {top}.py or {top}/__init__.py in: {', '.join(places)}. Put the file "
        "beside the grid file, or install it on the Python path"
    )


def _in_folder(arch: ModuleArch, folder: Path, where: str) -> Found | None:
    top = arch.module_name.split(".")[0]
    if (folder / f"{top}.py").is_file():
        return Found(folder / f"{top}.py", where)
    if (folder / top / "__init__.py").is_file():
        return Found(folder / top, where)
    return None


def _on_path(arch: ModuleArch) -> Found | None:
    top = arch.module_name.split(".")[0]
    spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    origin = getattr(spec, "origin", None) if spec is not None else None
    if spec is None or origin in (None, "built-in", "frozen"):
        return None
    path = Path(str(origin))
    return Found(path.parent if path.name == "__init__.py" else path, "on the Python path")


def source_sha256(location: Path) -> str:
    """sha256 of a module file, or of every .py file of a package (by relative path)."""
    digest = hashlib.sha256()
    for rel, path in source_files(location).items():
        digest.update(rel.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def import_builder(arch: ModuleArch, found: Found) -> Callable[..., nn.Module]:
    """FUNCTION of MODULE, imported from `found` (fresh: a module imported before from
    elsewhere, or edited since, is imported again)."""
    name, top = arch.module_name, arch.module_name.split(".")[0]
    loaded = sys.modules.get(top)
    current = source_sha256(found.location)
    if loaded is not None and (
        _origin(loaded) != found.location or getattr(loaded, "__jamsweep_sha256__", None) != current
    ):
        _forget(top)
    sys.path.insert(0, str(found.folder))
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise JamsweepError(
            f"architecture {arch.name!r}: builder {arch.builder!r}: cannot import {name!r} "
            f"from {found.location}: {exc}"
        ) from None
    except Exception as exc:  # the user's module raised while being imported
        raise JamsweepError(
            f"architecture {arch.name!r}: importing {name!r} ({found.location}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:  # kept, last: imports inside the builder's functions still find its folder
        sys.path.remove(str(found.folder))
        if str(found.folder) not in sys.path:
            sys.path.append(str(found.folder))
    top_module = sys.modules[top]
    top_module.__jamsweep_sha256__ = current  # type: ignore[attr-defined]
    function = getattr(module, arch.function_name, None)
    if function is None:
        raise JamsweepError(
            f"architecture {arch.name!r}: module {name!r} ({found.location}) has no "
            f"attribute {arch.function_name!r}; it has: {', '.join(_public(module)) or 'none'}"
        )
    if not callable(function):
        raise JamsweepError(
            f"architecture {arch.name!r}: {arch.builder} is a {type(function).__name__}, "
            "not a function"
        )
    return function  # type: ignore[no-any-return]


def _origin(module: object) -> Path | None:
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file)
    return path.parent if path.name == "__init__.py" else path


def _forget(top: str) -> None:
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]


def _public(module: object) -> list[str]:
    return sorted(n for n in vars(module) if not n.startswith("_"))[:20]


def width_argument(width: float) -> int | float:
    """The width as the builder gets it: an int when integral (nn.Linear(d, 4.0) fails)."""
    return int(width) if float(width).is_integer() else float(width)


def call_builder(
    arch: ModuleArch,
    builder: Callable[..., nn.Module],
    width: float,
    d_in: int,
    n_out: int,
    seed: int,
) -> nn.Module:
    """builder(width, d_in, n_out, **options) with torch's, numpy's and Python's RNGs
    seeded from `seed` (restored afterwards), so the init is the builder's own and the same
    for a seed wherever it runs; float64 on the CPU, like the built-in nets."""
    with torch.random.fork_rng(devices=[]):
        np_state, py_state = np.random.get_state(), random.getstate()
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            net = builder(width_argument(width), d_in, n_out, **arch.options)
        except Exception as exc:
            raise JamsweepError(
                f"architecture {arch.name!r}: {arch.builder}({width_argument(width)!r}, {d_in}, "
                f"{n_out}, **{arch.options!r}) raised {type(exc).__name__}: {exc}"
            ) from None
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    if not isinstance(net, nn.Module):
        raise JamsweepError(
            f"architecture {arch.name!r}: {arch.builder} returned {type(net).__name__}, "
            "not a torch.nn.Module"
        )
    return net.to(dtype=torch.float64)


def count_params(net: nn.Module, count: str) -> int:
    """N: parameters with ndim >= 2 (the weights, as the paper counts), or all of them."""
    return sum(p.numel() for p in net.parameters() if count == "all" or p.ndim >= 2)


def batch_mixing(net: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why `net`'s train-mode output for a sample depends on the rest of its batch, or None.

    Two tests: a module known to mix samples or draw at random (BatchNorm, Dropout), and,
    for anything else a user writes, the numbers: in train mode, on a copy (running
    statistics untouched), the outputs of the first 3 of 8 random samples computed alone
    must equal theirs in the batch, and a second forward must repeat the first."""
    for name, module in net.named_modules():
        if isinstance(module, BATCH_MIXING):
            return f"{type(module).__name__} at {name or 'the top'}"
    probe = copy.deepcopy(net).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_ROWS, *input_shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        try:
            whole, alone, again = probe(x), probe(x[:3]), probe(x)
        except Exception as exc:
            return f"the probe's forward failed ({type(exc).__name__}: {exc})"
    if not torch.equal(whole, again):
        return "two forwards of the same batch differ in train mode (a random draw)"
    if not torch.allclose(whole[:3], alone, rtol=1e-9, atol=1e-12):
        return "a sample's output changes with the rest of the batch (numerical probe)"
    return None


def with_modules(spec: GridSpec, grid: str | Path) -> GridSpec:
    """`spec` with its `kind: module` architectures' facts (N per width, source hash), each
    module found beside the grid file or on the Python path; refused, naming the module and
    where it was looked for, if one cannot be found, imported or built."""
    if not any(isinstance(a, ModuleArch) for a in spec.architectures):
        return spec
    return spec.with_models(resolve_modules(spec, Path(grid).resolve().parent))


def with_kept_code(spec: GridSpec, code_dir: str) -> GridSpec:
    """`spec` with each module's facts naming where the sweep keeps a copy of its code
    (`workers.kept_code.kept_at`); `write_kept` writes it when the sweep is written."""
    facts = {
        a.name: a.resolved.model_copy(update={"kept": kept_at(code_dir, a.resolved)})
        for a in spec.architectures
        if isinstance(a, ModuleArch) and a.resolved is not None
    }
    return spec.with_models(facts)


def keep_code(spec: GridSpec) -> None:
    """Write the sweep's copy of each module's code (`with_kept_code` named where)."""
    for arch in spec.architectures:
        if isinstance(arch, ModuleArch) and arch.resolved is not None:
            write_kept(arch.resolved)


def resolve_modules(grid: GridSpec, folder: Path | None) -> dict[str, ModuleFacts]:
    """The facts of every `kind: module` architecture of `grid` (its files dataset already
    resolved: d_in and the outputs come from the data), by name. `folder`: the grid file's."""
    facts = {}
    for arch in grid.architectures:
        if not isinstance(arch, ModuleArch):
            continue
        run = next(s for s in grid.expand() if s.arch.name == arch.name)
        shape = IMAGE_SHAPES.get(run.dataset.name, (run.d_in,))
        facts[arch.name] = resolve_module(arch, folder, run.d_in, run.n_outputs, tuple(shape))
    return facts


def resolve_module(
    arch: ModuleArch, folder: Path | None, d_in: int, n_out: int, input_shape: tuple[int, ...]
) -> ModuleFacts:
    """The facts of `arch` (found from `folder`): every width built once (seed 0) to count
    N and check that it is a module that takes (n, *input_shape) inputs to (n, n_out)."""
    found = find_module(arch, folder)
    loaded_before = set(sys.modules)
    builder = import_builder(arch, found)
    counts, mixing = {}, None
    for width in arch.widths:
        net = call_builder(arch, builder, width, d_in, n_out, seed=0)
        if not any(p.requires_grad for p in net.parameters()):
            raise JamsweepError(
                f"architecture {arch.name!r} (width {width:g}): {arch.builder} builds a net "
                "without trainable parameters: there is nothing to train"
            )
        counts[width_key(width)] = count_params(net, arch.count)
        if width == min(arch.widths):
            _check_output(arch, net, width, input_shape, n_out)
            mixing = batch_mixing(net, input_shape)
    _refuse_siblings(arch, found, set(sys.modules) - loaded_before)
    return ModuleFacts(
        location=str(found.location),
        source_sha256=source_sha256(found.location),
        n_params=counts,
        batch_mixing=mixing,
    )


def _refuse_siblings(arch: ModuleArch, found: Found, loaded: set[str]) -> None:
    """Refuse a module that imports other files of its folder: only the module's own file
    (or package) is hashed, copied and shipped, so an edit of a sibling would not change
    the run ids and a node without the folder could not import it."""
    if {"site-packages", "dist-packages"} & set(found.folder.parts):
        return  # installed code: the hash check on every node covers the module only
    own = {p.resolve() for p in source_files(found.location).values()}
    folder = found.folder.resolve()
    siblings = sorted(
        Path(file).name
        for name in loaded
        if (file := getattr(sys.modules.get(name), "__file__", None)) is not None
        and Path(file).resolve().parent == folder
        and Path(file).resolve() not in own
    )
    if siblings:
        raise JamsweepError(
            f"architecture {arch.name!r}: {found.location.name} imports {', '.join(siblings)} "
            f"from its folder ({found.folder}); jamsweep hashes, keeps and ships the builder's "
            "module only. Make the folder a package (NAME/__init__.py, builder: NAME.module:"
            "function) or put those files in the module"
        )


def _check_output(
    arch: ModuleArch, net: nn.Module, width: float, shape: tuple[int, ...], n_out: int
) -> None:
    x = torch.zeros(2, *shape, dtype=torch.float64)
    try:
        with torch.no_grad():
            out = copy.deepcopy(net).eval()(x)
    except Exception as exc:
        raise JamsweepError(
            f"architecture {arch.name!r} (width {width:g}): the module's forward on inputs of "
            f"shape {tuple(x.shape)} raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_out):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise JamsweepError(
            f"architecture {arch.name!r} (width {width:g}): the module maps inputs of shape "
            f"{tuple(x.shape)} to {got}; it must return (n, {n_out}) (n_out = {n_out})"
        )


def build_module(arch: ModuleArch, width: float, d_in: int, n_out: int, seed: int) -> nn.Module:
    """The run's net on a worker (or in a notebook), built by the code it was submitted
    with (`submitted_code`)."""
    found = submitted_code(arch)
    return call_builder(arch, import_builder(arch, found), width, d_in, n_out, seed)


def submitted_code(arch: ModuleArch) -> Found:
    """The module whose source is the one `arch` was submitted with (its hash): where it
    was found at submit, else the sweep's own copy (`workers.kept_code`), else on the
    Python path. Refused, naming each place and the hash found there, if none is."""
    facts = arch.resolved
    if facts is None:
        raise JamsweepError(f"architecture {arch.name!r} was not resolved at submit")
    kept = kept_folder(facts)
    places = [(Path(facts.location).parent, "where it was found at submit")]
    places += [(kept, "in the sweep's copy")] if kept is not None else []
    seen = []
    for folder, where in places:
        found = _in_folder(arch, folder, where)
        if found is not None:
            if source_sha256(found.location) == facts.source_sha256:
                return found
            seen.append(f"{found.location} (sha256 {source_sha256(found.location)[:12]})")
    found = _on_path(arch)
    if found is not None and source_sha256(found.location) == facts.source_sha256:
        return found
    if found is not None:
        seen.append(f"{found.location} (sha256 {source_sha256(found.location)[:12]})")
    what = "; found " + ", ".join(seen) if seen else "; it was found nowhere"
    raise JamsweepError(
        f"architecture {arch.name!r}: no module {arch.module_name!r} here is the code the "
        f"sweep was submitted with (source sha256 {facts.source_sha256[:12]}){what}. Give "
        "every node the same code, or submit the edited grid as a new sweep"
    )


@functools.lru_cache(maxsize=256)
def _count_at(arch_json: str, width: float, d_in: int, n_out: int) -> int:
    arch = ModuleArch.model_validate_json(arch_json)
    return count_params(build_module(arch, width, d_in, n_out, seed=0), arch.count)


def count_at(spec: RunSpec, width: float) -> int:
    """N of `spec`'s module at another width (`refine` looks for widths between two)."""
    if width_key(width) in spec.module_facts.n_params:
        return spec.module_facts.n_params[width_key(width)]
    return _count_at(spec.arch.model_dump_json(), width, spec.d_in, spec.n_outputs)
