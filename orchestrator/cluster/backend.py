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

import contextlib  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
from ray.exceptions import (  # noqa: E402
    ActorDiedError,
    GetTimeoutError,
    RayActorError,
    RayError,
    TaskCancelledError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from orchestrator.cluster import lease  # noqa: E402
from orchestrator.cluster.capacity import NodeType, refusal  # noqa: E402
from orchestrator.cluster.handles import (  # noqa: E402
    Outcome,
    RunHandle,
    refuse_unreachable,
    tracker_name,
)
from orchestrator.cluster.security import protect_token  # noqa: E402
from orchestrator.cluster.tracker import Tracker  # noqa: E402
from schemas.errors import JamsweepError, cause_line  # noqa: E402
from schemas.grid import ResourceSpec  # noqa: E402
from schemas.layout import SweepLayout  # noqa: E402
from schemas.run import RunSpec, RunStatus  # noqa: E402
from workers import io  # noqa: E402
from workers.pack_plan import plan_tasks  # noqa: E402

NAMESPACE = "jamsweep"


_UNKNOWN = object()  # RayBackend._outcomes: a task's value, to be fetched there
TRACKER_DEADLINE_S = 300.0  # how long the driver waits for a restarting tracker
START_REPORT_WAIT_S = 120.0  # how long a task's end waits for its start to be recorded


def _run_task(spec: RunSpec, layout: SweepLayout, tracker: str) -> dict:
    """Body of one run's Ray task: tell the tracker, then train and write (workers.execute).

    The tracker is told without waiting for its answer before training: a task blocked in
    ray.get gives its CPU back to Ray, which would start another run on it
    (oversubscription). A cancelled sweep needs no answer either: the driver cancels every
    unfinished task. The answer is awaited at the end, so that a run's start is always
    recorded before its end.
    """
    from workers.execute import execute

    _check_sweep_visible(layout)
    reports = _StartReports(tracker, [spec.run_id])
    try:
        return execute(spec, layout)
    finally:
        reports.wait()


def _pack_task(specs: list[RunSpec], layout: SweepLayout, tracker: str) -> list[dict]:
    """Body of a pack's Ray task: tell the tracker each run started, then train them as
    one pack (workers.execute.execute_pack): one row per run, its metrics or its error."""
    from workers.execute import execute_pack

    _check_sweep_visible(layout)
    reports = _StartReports(tracker, [spec.run_id for spec in specs])
    try:
        return execute_pack(specs, layout)
    finally:
        reports.wait()


def _check_sweep_visible(layout: SweepLayout) -> None:
    """A node that joined after the driver proved the results folder shared (an autoscaled
    one) must see it too: the sweep's grid.yaml is written before any run starts. Fails the
    run at once (not retried), instead of writing it to this node's own disk."""
    if io.is_local(layout.results) and not io.exists(layout.grid_yaml):
        node = ray.get_runtime_context().get_node_id()[:12]
        raise JamsweepError(
            f"node {node} does not see the sweep's folder {layout.root} (no grid.yaml there): "
            "results must be on a filesystem every node mounts at the same path, or on an "
            "object store (--results s3://BUCKET/PREFIX)"
        )


class _StartReports:
    """A task's reports to the tracker that its runs started, sent at once, awaited at the
    task's end. The tracker is found by its name, not by a handle the driver passed: a
    tracker gone for good is made again under the same name (TrackerClient.revive), and a
    handle to the old one would lose the reports."""

    def __init__(self, tracker: str, run_ids: list[str]) -> None:
        self.tracker, self.run_ids = tracker, run_ids
        self.node = ray.get_runtime_context().get_node_id()[:12]
        self.refs = self._send()

    def _send(self) -> list[Any]:
        try:
            handle = ray.get_actor(self.tracker, namespace=NAMESPACE)
        except ValueError:  # no tracker (a round already over): the result files tell
            return []
        return [handle.started.remote(run_id, self.node) for run_id in self.run_ids]

    def wait(self) -> None:
        """Return once the tracker has the reports. Sent while the tracker restarts (its
        node died), a report waits for it, and a retried run resuming from a checkpoint can
        end first: its end would then be recorded before its start, and the start (the new
        attempt, the new node) lost when the round closes. Normally the reports were
        answered long ago and this returns at once."""
        if not self.refs:  # no tracker when the task began: try once more before the end
            self.refs = self._send()
        for attempt in range(2):
            try:
                ray.get(self.refs, timeout=START_REPORT_WAIT_S)
                return
            except ActorDiedError:
                if attempt == 0:
                    self.refs = self._send()  # a revived tracker, under the same name
            except (RayActorError, GetTimeoutError):
                return  # gone for good, or a round already over: the result files tell


def _answer(ref: Any) -> bool | None:
    """A probe task's answer; None from a node that died or left meanwhile (nothing of the
    sweep will run there)."""
    try:
        return bool(ray.get(ref, timeout=120))
    except (RayError, GetTimeoutError):
        return None


def _sees(path: str) -> bool:
    """Body of the probe task of check_results_shared: whether this node sees `path`."""
    return io.exists(path)


class _TrackerActor(Tracker):
    """The tracker as Ray runs it (a detached actor, which outlives its driver): it also
    removes itself once its round is over and nobody closed it (the driver was killed with
    SIGKILL, or its node died with it): when the sweep's lease is no longer the round's.
    It looks every third of the lease's duration; before its first round it waits."""

    def __init__(self, layout: SweepLayout, persist_every_s: float = 2.0) -> None:
        super().__init__(layout, persist_every_s)
        threading.Thread(target=self._watch_lease, name="jamsweep-orphan", daemon=True).start()

    def _watch_lease(self) -> None:
        every = lease.lease_seconds() / 3
        while True:
            time.sleep(every)
            if self.round_token is None:
                continue
            try:
                held = lease.current(self.layout)
            except OSError:
                continue  # storage unreachable: look again later
            if held is not None:
                every = held.duration_s / 3  # the round's lease, whatever this node's setting
            if held is None or held.expired() or held.token != self.round_token:
                if self.live:
                    self.close(interrupted=True)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


def _launchable_node_types() -> list[NodeType]:
    """The node types the cluster's autoscaler can launch (what it reports to the GCS as
    its cluster config; none without an autoscaler)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # no such record, or an older GCS: judge by the alive nodes only
        return []
    if config is None:
        return []
    return [
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, launchable=True)
        for g in config.node_group_configs
        if g.max_count != 0
    ]


# Each made once. Every ray.remote() call is a new function to Ray (its own id, exported to
# the GCS, its own scheduling class): one per task had the raylet juggle 10,000 scheduling
# classes, and a 10,000-run sweep finished 60 runs in 9 minutes (bench/bench_scale.py).
# max_calls=0: a worker process trains task after task. Ray's default for a function
# declared with GPUs is one task per process (a new process and CUDA context per run);
# the GPUs are given per task with .options(), so say it here, not by that accident.
RUN_TASK = ray.remote(max_calls=0)(_run_task)
PACK_TASK = ray.remote(max_calls=0)(_pack_task)
TRACKER_ACTOR = ray.remote(_TrackerActor)
SEES_TASK = ray.remote(num_cpus=0)(_sees)


class TrackerClient:
    """Synchronous calls to the tracker actor, with the Tracker's method names.

    The tracker restarts when its node dies (max_restarts=-1); while it does, calls fail.
    Each call is retried with backoff until TRACKER_DEADLINE_S; an actor gone for good is
    made again by `revive` (it starts from status.parquet, like a restarted one)."""

    def __init__(self, handle: Any, name: str, revive: Callable[[], Any] | None = None) -> None:
        self.handle = handle
        self.name = name  # what the tasks look it up by
        self.revive = revive
        self.deadline_s = TRACKER_DEADLINE_S

    def __getattr__(self, method: str) -> Any:
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.deadline_s
        pause = 0.2
        while True:
            try:
                remote = getattr(self.handle, method)
                # each try waits at most the deadline (5 s on the way out after Ctrl-C)
                timeout = min(30.0, self.deadline_s)
                return ray.get(remote.remote(*args, **kwargs), timeout=timeout)
            except (RayActorError, GetTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise JamsweepError(
                        f"the sweep's tracker has not answered for {self.deadline_s:.0f} s "
                        f"({cause_line(exc)}); check the cluster (ray status), then submit "
                        "the grid again: finished runs are kept"
                    ) from None
                if isinstance(exc, ActorDiedError) and self.revive is not None:
                    self.handle = self.revive()
                time.sleep(pause)
                pause = min(2 * pause, 5.0)


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
                with contextlib.suppress(FileExistsError):  # another process made it just now
                    protect_token()
                ray.init(
                    address="local",  # a new Ray, even if another runs on this machine
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **kwargs,
                )
            else:
                refuse_unreachable(self.address)
                ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JamsweepError(
                f"cannot reach a Ray cluster at {self.address!r}: {exc}. Check the address "
                "(auto, ray://HOST:10001, http://HOST:8265) and that the cluster is up"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        ray.shutdown()

    def check_resources(self, demands: list[ResourceSpec]) -> None:
        """Refuse runs that no node of the cluster could ever hold (they would wait forever):
        judged against the nodes alive now and, where an autoscaler runs, the node types it
        can launch (as it reports them to the GCS)."""
        alive = [NodeType(n["NodeID"][:12], n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        problem = refusal(demands, alive + _launchable_node_types())
        if problem is not None:
            raise JamsweepError(problem)

    def check_results_shared(self, layout: SweepLayout) -> None:
        """Refuse a local results folder that some node of the cluster does not see (files
        would be scattered over the nodes' disks). Proved, not guessed: a probe file is
        written here and looked for from a task on every alive node. A node that joins later
        is checked by each run (workers.execute: the sweep's grid.yaml must be there)."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if not io.is_local(layout.results) or len(nodes) < 2:
            return
        probe = f"{layout.results.rstrip('/')}/.jamsweep-shared-{uuid.uuid4().hex[:8]}"
        io.write_bytes(probe, b"")
        try:
            looks = {
                f"node {n['NodeID'][:12]} ({n['NodeManagerAddress']})": SEES_TASK.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(probe)
                for n in nodes
            }
            blind = [where for where, ref in looks.items() if _answer(ref) is False]
        finally:
            io.delete(probe)
        if blind:
            raise JamsweepError(
                f"the results folder {layout.results} is not visible from every node of the "
                f"cluster (not from {', '.join(sorted(blind))}): each node would write its "
                "runs to its own disk. Use a folder on a filesystem every node mounts at the "
                "same path, or an object store (--results s3://BUCKET/PREFIX)"
            )

    # -- tracker ---------------------------------------------------------------------
    def tracker(self, layout: SweepLayout, node_id: str | None = None) -> TrackerClient:
        """The sweep's named, detached tracker actor (created if it does not exist), on
        `node_id` if given, else on this driver's node."""

        def create() -> Any:
            # On the driver's node (the head, for a Ray job) while it lives: worker nodes
            # come and go. Should that node die anyway, the actor restarts elsewhere from
            # status.parquet (soft affinity).
            node = node_id or ray.get_runtime_context().get_node_id()
            actor = TRACKER_ACTOR.options(
                name=tracker_name(layout),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=-1,  # calls wait for a restarting tracker (a start report too)
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
            )
            return actor.remote(layout)

        return TrackerClient(create(), tracker_name(layout), revive=create)

    def existing_tracker(self, layout: SweepLayout) -> TrackerClient | None:
        """The live tracker of the sweep, or None. A tracker whose round is over (the
        sweep's lease is not held by that round) is removed here: nothing will ask it again."""
        try:
            handle = ray.get_actor(tracker_name(layout), namespace=NAMESPACE)
        except ValueError:
            return None
        tracker = TrackerClient(handle, tracker_name(layout))
        token, live = tracker.round()
        held = lease.current(layout)
        if not live or held is None or held.expired() or held.token != token:
            self.release_tracker(tracker)
            return None
        return tracker

    def release_tracker(self, tracker: TrackerClient) -> None:
        """Remove the tracker actor for good (its round ended; status.parquet holds all)."""
        ray.kill(tracker.handle, no_restart=True)

    # -- runs ------------------------------------------------------------------------
    def start(
        self, specs: list[RunSpec], layout: SweepLayout, tracker: TrackerClient
    ) -> list[RunHandle]:
        """One task per run, or per pack of runs where `resources.pack` asks for packs. A
        run that its plan leaves alone (a CNN, or `auto` at a large P * h) is a run task,
        trained as with `pack: 1`: packs are for two runs or more."""
        handles = []
        for task_specs in plan_tasks(specs, self._slots(specs)):
            first, r = task_specs[0], task_specs[0].resources
            name = f"{first.sweep}/{first.arch.name}/w{first.width:g}/s{first.seed}"
            options = {
                "num_cpus": r.num_cpus,
                "num_gpus": r.num_gpus,
                "max_retries": r.max_retries,
                # Retry what a retry can fix: a dead worker or node (always retried by Ray)
                # and I/O errors. A diverged run or a JamsweepError would fail again.
                "retry_exceptions": [OSError],
            }
            if len(task_specs) == 1:  # alone, whatever `pack` says: the one-run loop
                single = RUN_TASK.options(name=name, **options)
                handles.append(RunHandle(first, single.remote(first, layout, tracker.name)))
            else:
                seeds = ",".join(str(s.seed) for s in task_specs)
                named = f"{name[: name.rfind('/')]}/s{seeds}"
                packed = PACK_TASK.options(name=named, **options)
                ref = packed.remote(task_specs, layout, tracker.name)
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
        try:  # one call for all of them (a sweep of short runs ends hundreds a second)
            values = ray.get(ready, timeout=10)
        except (RayError, GetTimeoutError):  # one failed or was cancelled: each on its own
            return [outcome for ref in ready for outcome in self._outcomes(by_ref[ref])]
        return [
            outcome
            for ref, value in zip(ready, values, strict=True)
            for outcome in self._outcomes(by_ref[ref], value)
        ]

    def cancel(self, handles: list[RunHandle]) -> None:
        for h in handles:
            ray.cancel(h.ref, force=True)

    @staticmethod
    def _outcomes(handle: RunHandle, value: Any = _UNKNOWN) -> list[Outcome]:
        try:
            if value is _UNKNOWN:
                value = ray.get(handle.ref, timeout=10)
        except TaskCancelledError:
            return [Outcome(spec, RunStatus.CANCELLED) for spec in handle.specs]
        except (RayError, GetTimeoutError) as exc:
            return [Outcome(s, RunStatus.FAILED, error=cause_line(exc)) for s in handle.specs]
        if handle.pack is None:
            return [Outcome(handle.spec, RunStatus.DONE, metrics=value)]
        return [
            Outcome(spec, RunStatus.FAILED, error=row["error"])
            if "error" in row
            else Outcome(spec, RunStatus.DONE, metrics=row)
            for spec, row in zip(handle.pack, value, strict=True)
        ]
