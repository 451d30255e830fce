"""Shared fixtures. Tests marked `ray` start a real Ray on loopback with pinned CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
JAMSWEEP = [sys.executable, "-m", "orchestrator.cli"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"the real MNIST is expected in {SHARED_DATA}/MNIST/raw (see ../shared/data)")
    return SHARED_DATA


def jamsweep(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run(
        [*JAMSWEEP, *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
    )


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
