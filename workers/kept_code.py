"""The sweep's own copy of its `kind: module` code: SWEEP/code/SHA16/ holds the module file
(or top-level package) as it was at submit, so that a worker whose node cannot see the
folder it was found in, a later `refine` (through the Jobs API too) or a notebook after the
file was edited or deleted, still builds the net the runs were trained with. Which copy a
net is built from is decided in `workers.builders` (by source hash, never by path alone).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from schemas.modules import ModuleArch, ModuleFacts
from schemas.run import RunSpec
from workers import io


def kept_at(code_dir: str, facts: ModuleFacts) -> str:
    """Where the sweep keeps the code of `facts`: CODE_DIR/SHA16 (one folder per source)."""
    return f"{code_dir.rstrip('/')}/{facts.source_sha256[:16]}"


def kept_here(spec: RunSpec, code_dir: str) -> RunSpec:
    """`spec` as read from the manifest of a sweep whose code folder is `code_dir` now: a
    sweep moved or copied elsewhere (rsync'd from a cluster) finds its copy where it is."""
    arch = spec.arch
    if not isinstance(arch, ModuleArch) or arch.resolved is None or arch.resolved.kept is None:
        return spec
    facts = arch.resolved.model_copy(update={"kept": kept_at(code_dir, arch.resolved)})
    return spec.model_copy(update={"arch": arch.model_copy(update={"resolved": facts})})


def source_files(location: Path) -> dict[str, Path]:
    """The module's .py files by path relative to the folder that holds it."""
    files = [location] if location.is_file() else sorted(location.rglob("*.py"))
    return {str(p.relative_to(location.parent)): p for p in files if "__pycache__" not in p.parts}


def write_kept(facts: ModuleFacts) -> None:
    """Copy the module found at submit (`facts.location`) to `facts.kept`, unless a whole
    copy of that source is there already. Each file is written whole or not at all; a copy
    left short by a crash hashes differently and is not used (builders checks the hash)."""
    if facts.kept is None:
        return
    for rel, path in source_files(Path(facts.location)).items():
        target = f"{facts.kept}/{rel}"
        data = path.read_bytes()
        if not io.exists(target) or io.read_bytes(target) != data:
            io.write_bytes(target, data)


def kept_folder(facts: ModuleFacts) -> Path | None:
    """A local folder that holds the sweep's copy (the copy itself when the results are on
    a file system; else a download of it into this machine's temp folder), or None when
    the sweep keeps none (submitted before it did, or its copy is gone)."""
    if facts.kept is None:
        return None
    if io.is_local(facts.kept):
        folder = Path(facts.kept.removeprefix("file://"))
        return folder if folder.is_dir() else None
    cache = Path(tempfile.gettempdir()) / "jamsweep-code" / _name(facts.kept)
    if cache.is_dir():
        return cache
    files = io.list_files(facts.kept, suffix=".py")
    if not files:
        return None
    staging = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:8]}")
    try:
        for file in files:
            target = staging / file[len(facts.kept.rstrip("/")) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(io.read_bytes(file))
        os.replace(staging, cache)  # whole or not at all; another process may have won
    except OSError:
        if not cache.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def _name(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]
