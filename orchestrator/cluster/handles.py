"""What the driver holds of its Ray tasks and actors, as plain data (no ray here): the
handle of a task and the outcomes it gives, the tracker's name, and the check that an
address answers at all before Ray spends 30 s finding out."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from typing import Any

from schemas.layout import SweepLayout
from schemas.run import RunSpec, RunStatus


def tracker_name(layout: SweepLayout) -> str:
    """One tracker per (results location, sweep): the same sweep name under two results
    locations is two sweeps."""
    digest = hashlib.sha256(layout.results.encode()).hexdigest()[:10]
    return f"tracker:{layout.sweep}:{digest}"


@dataclass
class RunHandle:
    """One Ray task: one run, or a pack of runs (`pack`, in the order the task returns
    them); `spec` is its first run. drive() maps every run of `specs` to its task: all the
    outcomes of a pack come back in the same wait()."""

    spec: RunSpec
    ref: Any  # ray.ObjectRef
    pack: list[RunSpec] | None = None

    @property
    def specs(self) -> list[RunSpec]:
        return self.pack if self.pack is not None else [self.spec]


@dataclass
class Outcome:
    spec: RunSpec
    state: RunStatus
    metrics: dict | None = None
    error: str | None = None


def refuse_unreachable(address: str | None) -> None:
    """Fail at once, not after Ray's 30 s of retries, when nothing listens at HOST:PORT (a
    ray:// client address or a GCS address); `auto` and a bad format are Ray's to judge."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None
