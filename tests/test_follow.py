"""Following a Ray job's log (`jamsweep submit --address http://...` without --detach): the
stream's chunks become whole lines, and where the stream breaks or cannot run (a notebook's
event loop), the rest of the log is polled and printed from where the stream stopped, each
line once. Ray's JobSubmissionClient is replaced at the edge; the Ray test of a followed
job is in tests/test_rounds.py."""

from __future__ import annotations

import asyncio
import enum

from orchestrator.jobs.backend import JobsClient
from orchestrator.jobs.executor import follow

LOG = "sweep s: 4 runs\nrun a done\nrun b done\nsweep s: 4 done.\n"


class State(enum.Enum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"


class FakeJobSubmission:
    """The calls JobsClient makes of Ray's JobSubmissionClient."""

    def __init__(self, chunks: list[str], *, breaks: bool = False) -> None:
        self.chunks, self.breaks = chunks, breaks
        self.states = [State.RUNNING, State.SUCCEEDED]

    async def tail_job_logs(self, job_id: str):  # noqa: ANN201
        for chunk in self.chunks:
            yield chunk
        if self.breaks:
            raise ConnectionResetError("the dashboard went away")

    def get_job_status(self, job_id: str) -> State:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def get_job_logs(self, job_id: str) -> str:
        return LOG


def client(fake: FakeJobSubmission) -> JobsClient:
    jobs = JobsClient.__new__(JobsClient)  # no dashboard to connect to
    jobs.client, jobs.address, jobs.retry_s = fake, "http://fake:8265", 0.0
    return jobs


def test_chunks_that_cut_lines_are_printed_as_whole_lines_once():
    chunks = ["sweep s: 4 runs\nrun a", " done\nrun b done\nsweep", " s: 4 done.\n"]
    printed: list[str] = []
    state = follow(client(FakeJobSubmission(chunks)), "job", printed.append, poll_s=0)
    assert state == "SUCCEEDED"
    assert printed == LOG.splitlines()


def test_a_broken_stream_goes_on_from_where_it_stopped_by_polling():
    printed: list[str] = []
    fake = FakeJobSubmission(["sweep s: 4 runs\nrun a do"], breaks=True)
    assert follow(client(fake), "job", printed.append, poll_s=0) == "SUCCEEDED"
    assert printed == LOG.splitlines()  # "run a done" from the poll, not half from each


def test_inside_a_running_event_loop_the_log_is_polled():
    printed: list[str] = []

    async def notebook_cell() -> str:
        return follow(client(FakeJobSubmission(["never streamed\n"])), "job", printed.append, 0)

    assert asyncio.run(notebook_cell()) == "SUCCEEDED"
    assert printed == LOG.splitlines()
