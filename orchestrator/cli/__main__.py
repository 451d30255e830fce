"""`python -m orchestrator.cli ...`: the `jamsweep` command (what a Ray job runs)."""

from orchestrator.cli.app import main

main()
