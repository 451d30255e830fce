"""The sweep on disk: what it holds (store), reading it into pandas (`open_sweep`),
reducing it to curves and N* (reduction) and drawing its figures (plots)."""

from orchestrator.results.reader import Sweep, open_sweep

__all__ = ["Sweep", "open_sweep"]
