"""The one project exception: raised anywhere, caught once by the CLI."""

from __future__ import annotations


class JamsweepError(Exception):
    """A problem the user can fix; the message says what it is and what to do."""


class GridError(JamsweepError):
    """The grid file is malformed; the message lists every problem at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the grid:\n{lines}\n"
            "Fix the grid file and submit again (see examples/demo.yaml)."
        )


def cause_line(exc: BaseException) -> str:
    """The cause of a failure in one line, without a framework's traceback framing (Ray
    wraps a task's exception: its `cause` is the task's own)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"[:2000]
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:2000]
