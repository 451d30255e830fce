"""Whether a cluster can ever hold a sweep's runs: pure decisions over the resources of its
nodes (no ray here: orchestrator.cluster.backend gathers them).

A run that no node could hold would wait forever, so it is refused before anything is
written. Where an autoscaler runs, a run is judged against the node types it can launch
as well as the nodes alive now: the shipped cluster configs (deploy/) have a head with no
CPUs and no worker until a run asks for one, and refusing those sweeps would keep the
autoscaler from ever seeing the demand.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.specs import ResourceSpec


@dataclass(frozen=True)
class NodeType:
    """What one kind of node offers: `name` (an alive node's id, or an autoscaler node
    type), its resources (CPU, GPU, ...) and how many of it there are or may be."""

    name: str
    resources: dict[str, float]
    launchable: bool = False  # an autoscaler node type (not yet a node)

    def holds(self, r: ResourceSpec) -> bool:
        return self.resources.get("CPU", 0) >= r.num_cpus and self.resources.get("GPU", 0) >= (
            r.num_gpus
        )

    def describe(self) -> str:
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        what = "node type" if self.launchable else "node"
        return f"{what} {self.name}: {cpus:g} CPUs, {gpus:g} GPUs"


def refusal(demands: list[ResourceSpec], nodes: list[NodeType]) -> str | None:
    """Why some of `demands` (one per run) could never run on `nodes` (alive ones and the
    autoscaler's types), or None when every run fits on one of them."""
    unfit = sorted(
        {(r.num_cpus, r.num_gpus) for r in demands if not any(n.holds(r) for n in nodes)}
    )
    if not unfit:
        return None
    asked = "; ".join(f"resources.num_cpus = {c:g}, resources.num_gpus = {g:g}" for c, g in unfit)
    offered = "; ".join(n.describe() for n in nodes) or "no node and no autoscaler node type"
    return (
        f"no node of the cluster can hold a run that asks for {asked} (it would wait forever). "
        f"The cluster offers: {offered}. Lower the grid's resources, or add larger nodes "
        "(or node types to the autoscaler)"
    )
