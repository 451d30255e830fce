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
import hashlib  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
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

from orchestrator.cluster.tracker import Tracker  # noqa: E402
from schemas.errors import JamsweepError  # noqa: E402
from schemas.grid import ResourceSpec  # noqa: E402
from schemas.layout import SweepLayout  # noqa: E402
from schemas.run import RunSpec, RunStatus  # noqa: E402
from workers.pack_plan import plan_tasks  # noqa: E402

NAMESPACE = "jamsweep"


TRACKER_DEADLINE_S = 300.0  # how long the driver waits for a restarting tracker
START_REPORT_WAIT_S = 120.0  # how long a task's end waits for its start to be recorded


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


def _run_task(spec: RunSpec, layout: SweepLayout, tracker: Any) -> dict:
    """Body of one run's Ray task: tell the tracker, then train and write (workers.execute).

    The tracker is told without waiting for its answer before training: a task blocked in
    ray.get gives its CPU back to Ray, which would start another run on it
    (oversubscription). A cancelled sweep needs no answer either: the driver cancels every
    unfinished task. The answer is awaited at the end, so that a run's start is always
    recorded before its end.
    """
    from workers.execute import execute

    report = tracker.started.remote(spec.run_id, ray.get_runtime_context().get_node_id()[:12])
    try:
        return execute(spec, layout)
    finally:
        _await_start_reports([report])


def _pack_task(specs: list[RunSpec], layout: SweepLayout, tracker: Any) -> list[dict]:
    """Body of a pack's Ray task: tell the tracker each run started, then train them as
    one pack (workers.execute.execute_pack): one row per run, its metrics or its error."""
    from workers.execute import execute_pack

    node = ray.get_runtime_context().get_node_id()[:12]
    reports = [tracker.started.remote(spec.run_id, node) for spec in specs]
    try:
        return execute_pack(specs, layout)
    finally:
        _await_start_reports(reports)


def _await_start_reports(reports: list[Any]) -> None:
    """Return from a task only once the tracker has its start reports. Sent while the
    tracker restarts (its node died), a report waits for it, and a retried run resuming from
    a checkpoint can end first: its end would then be recorded before its start, and the
    start (the new attempt, the new node) lost when the round closes. Normally the reports
    were answered long ago and this returns at once."""
    # A tracker gone for good or a round already over: the result files tell what finished.
    with contextlib.suppress(RayActorError, GetTimeoutError):
        ray.get(reports, timeout=START_REPORT_WAIT_S)


# Each made once. Every ray.remote() call is a new function to Ray (its own id, exported to
# the GCS, its own scheduling class): one per task had the raylet juggle 10,000 scheduling
# classes, and a 10,000-run sweep finished 60 runs in 9 minutes (bench/bench_scale.py).
RUN_TASK = ray.remote(_run_task)
PACK_TASK = ray.remote(_pack_task)
TRACKER_ACTOR = ray.remote(Tracker)


class TrackerClient:
    """Synchronous calls to the tracker actor, with the Tracker's method names.

    The tracker restarts when its node dies (max_restarts=-1); while it does, calls fail.
    Each call is retried with backoff until TRACKER_DEADLINE_S; an actor gone for good is
    made again by `revive` (it starts from status.parquet, like a restarted one)."""

    def __init__(self, handle: Any, revive: Callable[[], Any] | None = None) -> None:
        self.handle = handle
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
                        f"({_last_line(exc)}); check the cluster (ray status), then submit "
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

        return TrackerClient(create(), revive=create)

    def existing_tracker(self, layout: SweepLayout) -> TrackerClient | None:
        """The live tracker of the sweep, or None. A tracker whose round is over (its driver
        stopped beating or is gone) is removed here: nothing will ask it again."""
        try:
            handle = ray.get_actor(tracker_name(layout), namespace=NAMESPACE)
        except ValueError:
            return None
        tracker = TrackerClient(handle)
        if not tracker.round_state().is_alive():
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
        """One task per run, or per pack of runs where `resources.pack` asks for packs."""
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
            if len(task_specs) == 1 and first.resources.pack == 1:
                single = RUN_TASK.options(name=name, **options)
                handles.append(RunHandle(first, single.remote(first, layout, tracker.handle)))
            else:
                seeds = ",".join(str(s.seed) for s in task_specs)
                named = f"{name[: name.rfind('/')]}/s{seeds}"
                packed = PACK_TASK.options(name=named, **options)
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

    def submit(
        self, entrypoint: str, runtime_env: dict, submission_id: str, metadata: dict | None = None
    ) -> str:
        return self.client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=submission_id,
            metadata=metadata,
        )

    def running_jobs(self, metadata: dict[str, str]) -> list[str]:
        """Submission ids of the pending or running jobs whose metadata holds `metadata`."""
        return [
            job.submission_id or job.job_id or "?"
            for job in self.client.list_jobs()
            if str(job.status.value) in ("PENDING", "RUNNING")
            and all((job.metadata or {}).get(k) == v for k, v in metadata.items())
        ]

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def tail(self, job_id: str, echo: Callable[[str], None]) -> None:
        """Echo the job's log line by line as its driver writes it (Ray's websocket stream,
        `tail_job_logs`), until the job ends. Raises RuntimeError if there is no stream
        (inside a running event loop, e.g. a notebook's) or it breaks; the lines echoed
        until then are whole lines of the log."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # none: asyncio.run below may start one
        else:
            raise RuntimeError("an event loop is running in this thread")

        async def pump() -> None:
            partial = ""  # a chunk may end inside a line
            async for chunk in self.client.tail_job_logs(job_id):
                *lines, partial = (partial + chunk).split("\n")
                for line in lines:
                    echo(line)
            if partial:
                echo(partial)

        try:
            asyncio.run(pump())
        except Exception as exc:  # aiohttp's handshake and connection errors, Ray's own
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc

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
