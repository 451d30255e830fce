"""How runs reach Ray: the only module that imports ray.

The rest of jamsweep talks to a `RayBackend` (connect, tracker, start/wait/cancel runs)
with plain data, so it can be read and tested without a cluster.
"""

from __future__ import annotations

import os

# Before ray is imported: no usage report, and (verified with `ss -ltnp` in
# tests/test_ray_e2e.py) every port of an embedded Ray bound to 127.0.0.1.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray 2.60 clusters require a token by default; clients then need token mode to send it
# (the token comes from ~/.ray/auth_token or RAY_AUTH_TOKEN).
os.environ.setdefault("RAY_AUTH_MODE", "token")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from orchestrator.tracker import Tracker  # noqa: E402
from schemas.errors import JamsweepError  # noqa: E402
from schemas.grid import ResourceSpec  # noqa: E402
from schemas.layout import SweepLayout  # noqa: E402
from schemas.run import RunSpec, RunStatus  # noqa: E402
from workers.pack import plan_tasks  # noqa: E402

NAMESPACE = "jamsweep"


def tracker_name(sweep: str) -> str:
    return f"tracker:{sweep}"


@dataclass
class RunHandle:
    """One Ray task: one run, or a pack of runs (`pack`, in the order the task returns
    them). `spec` is the task's first run, by which drive() retires the handle: every
    outcome of a pack comes back in the same wait()."""

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


def _run_task(spec: RunSpec, layout: SweepLayout, tracker: Any) -> dict:
    """Body of one run's Ray task: tell the tracker, then train and write (workers.run).

    The tracker is told without waiting for its answer: a task blocked in ray.get gives
    its CPU back to Ray, which would start another run on it (oversubscription). A
    cancelled sweep needs no answer either: the driver cancels every unfinished task.
    """
    from workers.run import execute

    tracker.started.remote(spec.run_id, ray.get_runtime_context().get_node_id()[:12])
    return execute(spec, layout)


def _pack_task(specs: list[RunSpec], layout: SweepLayout, tracker: Any) -> list[dict]:
    """Body of a pack's Ray task: tell the tracker each run started, then train them as
    one pack (workers.run.execute_pack): one row per run, its metrics or its error."""
    from workers.run import execute_pack

    node = ray.get_runtime_context().get_node_id()[:12]
    for spec in specs:
        tracker.started.remote(spec.run_id, node)
    return execute_pack(specs, layout)


class TrackerClient:
    """Synchronous calls to the tracker actor, with the Tracker's method names."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __getattr__(self, method: str) -> Any:
        remote = getattr(self.handle, method)
        return lambda *args, **kwargs: ray.get(remote.remote(*args, **kwargs), timeout=60)


class RayBackend:
    """A connection to Ray: an embedded single-machine Ray when `address` is None (every
    port on loopback), else the cluster at `address` ('auto', 'ray://HOST:10001')."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.embedded = address is None

    def __enter__(self) -> RayBackend:
        kwargs: dict[str, Any] = {
            "namespace": NAMESPACE,
            "log_to_driver": False,
            "logging_level": "error",
        }
        try:
            if self.embedded:
                ray.init(
                    address="local",  # a new Ray, even if another runs on this machine
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **kwargs,
                )
            else:
                ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JamsweepError(
                f"cannot reach a Ray cluster at {self.address!r}: {exc}. Check the address "
                "(auto, ray://HOST:10001, http://HOST:8265) and that the cluster is up"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        ray.shutdown()

    def check_resources(self, resources: ResourceSpec | None) -> None:
        """Refuse runs that no node of the cluster could ever hold (they would wait forever)."""
        if resources is None:
            return
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        problems = []
        if resources.num_cpus > most_cpus:
            problems.append(
                f"resources.num_cpus = {resources.num_cpus:g} but the largest node has "
                f"{most_cpus:g} CPUs"
            )
        if resources.num_gpus > most_gpus:
            problems.append(
                f"resources.num_gpus = {resources.num_gpus:g} but the largest node has "
                f"{most_gpus:g} GPUs"
            )
        if problems:
            raise JamsweepError(
                "; ".join(problems) + ": lower them in the grid, or add larger nodes"
            )

    # -- tracker ---------------------------------------------------------------------
    def tracker(self, layout: SweepLayout) -> TrackerClient:
        """The sweep's named, detached tracker actor (created if it does not exist)."""
        # On the driver's node (the head, for a Ray job) while it lives: worker nodes come
        # and go. Should that node die anyway, the actor restarts from status.parquet.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        actor = ray.remote(Tracker).options(
            name=tracker_name(layout.sweep),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=3,
            scheduling_strategy=here,
        )
        return TrackerClient(actor.remote(layout))

    def existing_tracker(self, sweep: str) -> TrackerClient | None:
        try:
            return TrackerClient(ray.get_actor(tracker_name(sweep), namespace=NAMESPACE))
        except ValueError:
            return None

    # -- runs ------------------------------------------------------------------------
    def start(
        self, specs: list[RunSpec], layout: SweepLayout, tracker: TrackerClient
    ) -> list[RunHandle]:
        """One task per run, or per pack of runs where `resources.pack` asks for packs."""
        handles = []
        for task_specs in plan_tasks(specs, self._slots(specs)):
            first, r = task_specs[0], task_specs[0].resources
            name = f"{first.sweep}/{first.arch.name}/w{first.width:g}/s{first.seed}"
            options = {
                "num_cpus": r.num_cpus,
                "num_gpus": r.num_gpus,
                "max_retries": r.max_retries,
                "retry_exceptions": True,
            }
            if len(task_specs) == 1 and first.resources.pack == 1:
                single = ray.remote(_run_task).options(name=name, **options)
                handles.append(RunHandle(first, single.remote(first, layout, tracker.handle)))
            else:
                seeds = ",".join(str(s.seed) for s in task_specs)
                named = f"{name[: name.rfind('/')]}/s{seeds}"
                packed = ray.remote(_pack_task).options(name=named, **options)
                ref = packed.remote(task_specs, layout, tracker.handle)
                handles.append(RunHandle(first, ref, pack=task_specs))
        return handles

    @staticmethod
    def _slots(specs: list[RunSpec]) -> int:
        """How many tasks of these runs the cluster holds at once (for 'auto' packs)."""
        if not specs:
            return 1
        r, total = specs[0].resources, ray.cluster_resources()
        if r.num_gpus > 0:
            return max(1, int(total.get("GPU", 0) / r.num_gpus))
        return max(1, int(total.get("CPU", 1) / r.num_cpus))

    def wait(self, handles: list[RunHandle], timeout_s: float) -> list[Outcome]:
        """Outcomes of the runs whose tasks ended within `timeout_s` (maybe none): one per
        run, so a pack's task gives one per run of the pack."""
        if not handles:
            return []
        by_ref = {h.ref: h for h in handles}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s)
        return [outcome for ref in ready for outcome in self._outcomes(by_ref[ref])]

    def cancel(self, handles: list[RunHandle]) -> None:
        for h in handles:
            ray.cancel(h.ref, force=True)

    @staticmethod
    def _outcomes(handle: RunHandle) -> list[Outcome]:
        try:
            value = ray.get(handle.ref, timeout=10)
        except TaskCancelledError:
            return [Outcome(spec, RunStatus.CANCELLED) for spec in handle.specs]
        except (RayError, GetTimeoutError) as exc:
            return [Outcome(s, RunStatus.FAILED, error=_last_line(exc)) for s in handle.specs]
        if handle.pack is None:
            return [Outcome(handle.spec, RunStatus.DONE, metrics=value)]
        return [
            Outcome(spec, RunStatus.FAILED, error=row["error"])
            if "error" in row
            else Outcome(spec, RunStatus.DONE, metrics=row)
            for spec, row in zip(handle.pack, value, strict=True)
        ]


class JobsClient:
    """The Ray Jobs API of a cluster's dashboard (http://HOST:8265)."""

    def __init__(self, address: str) -> None:
        import logging

        from ray.job_submission import JobSubmissionClient

        logging.getLogger("ray").setLevel(logging.WARNING)  # no "Uploading package" chatter
        try:
            self.client = JobSubmissionClient(address)
        except (ConnectionError, RayError, RuntimeError, ValueError) as exc:
            raise JamsweepError(
                f"cannot reach the Ray Jobs API at {address!r}: {_last_line(exc)}. Check the "
                "address and port (the dashboard's, 8265 by default), that the cluster is up, "
                "and the auth token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None

    def submit(self, entrypoint: str, runtime_env: dict, submission_id: str) -> str:
        return self.client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id
        )

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> None:
        self.client.stop_job(job_id)


TERMINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


def _last_line(exc: BaseException) -> str:
    """The cause of a task's failure, without Ray's traceback framing."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"[:2000]
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:2000]
