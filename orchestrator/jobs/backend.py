"""The Ray Jobs API of a cluster's dashboard (http://HOST:8265): the only module of the
jobs room that imports ray (its job_submission client). Calls that fail for a reason a
retry can fix (the head's job agent not up yet, a dropped connection, a 5xx answer) are
retried within a deadline, then reported as one JamsweepError."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray 2.60 clusters require a token by default; clients then need token mode to send it.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import TypeVar  # noqa: E402

from ray.exceptions import RayError  # noqa: E402

from schemas.errors import JamsweepError, cause_line  # noqa: E402

T = TypeVar("T")


RETRY_ENV = "JAMSWEEP_JOBS_RETRY_S"  # how long a transient Jobs API error is retried


def _transient(exc: BaseException) -> bool:
    """Whether a retry can fix it: no connection (refused, reset, timed out) or a 5xx answer
    (e.g. 500 "No available agent to submit job" while the head's job agent starts). A 4xx
    (bad token, unknown job) or a bad address is not."""
    if isinstance(exc, OSError):  # requests' ConnectionError and Timeout are OSErrors
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        f"status code {code}" in text for code in range(500, 600)
    )


class JobsClient:
    """The Ray Jobs API of a cluster's dashboard (http://HOST:8265). Every call retries
    transient errors with backoff for up to $JAMSWEEP_JOBS_RETRY_S (60 s), then raises one
    JamsweepError naming the address and the last answer."""

    def __init__(self, address: str) -> None:
        import logging

        from ray.job_submission import JobSubmissionClient

        logging.getLogger("ray").setLevel(logging.WARNING)  # no "Uploading package" chatter
        self.address = address
        self.retry_s = float(os.environ.get(RETRY_ENV) or 60.0)
        try:  # not retried: no answer at all is a wrong address far more often than a blip
            self.client = JobSubmissionClient(address)
        except (OSError, RayError, RuntimeError, ValueError) as exc:
            raise JamsweepError(
                f"cannot reach the Ray Jobs API at {address!r}: {cause_line(exc)}. Check the "
                "address and port (the dashboard's, 8265 by default), that the cluster is up, "
                "and the auth token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None

    def _call(self, request: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.retry_s
        pause = 0.5
        while True:
            try:
                return request()
            except (OSError, RayError, RuntimeError, ValueError) as exc:
                if not _transient(exc) or time.monotonic() + pause > deadline:
                    raise JamsweepError(
                        f"the Ray Jobs API at {self.address!r} failed to {what}: "
                        f"{cause_line(exc)}. Check the address and port (the dashboard's, "
                        "8265 by default), that the cluster is up and its job agent running "
                        "(`ray status` on the head), and the auth token (~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN)"
                    ) from None
                time.sleep(pause)
                pause = min(2 * pause, 5.0)

    def submit(
        self, entrypoint: str, runtime_env: dict, submission_id: str, metadata: dict | None = None
    ) -> str:
        def once() -> str:
            try:
                return self.client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=runtime_env,
                    submission_id=submission_id,
                    metadata=metadata,
                )
            except RuntimeError as exc:  # an earlier try got through; its answer did not
                if "already exists" in str(exc):
                    return submission_id
                raise

        return self._call(once, "submit a job")

    def running_jobs(self, metadata: dict[str, str]) -> list[str]:
        """Submission ids of the pending or running jobs whose metadata holds `metadata`."""
        return [
            job.submission_id or job.job_id or "?"
            for job in self._call(self.client.list_jobs, "list jobs")
            if str(job.status.value) in ("PENDING", "RUNNING")
            and all((job.metadata or {}).get(k) == v for k, v in metadata.items())
        ]

    def status(self, job_id: str) -> str:
        state = self._call(lambda: self.client.get_job_status(job_id), f"get job {job_id}")
        return str(state.value)

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self.client.get_job_logs(job_id), f"get the log of {job_id}")

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
        self._call(lambda: self.client.stop_job(job_id), f"stop job {job_id}")


TERMINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
