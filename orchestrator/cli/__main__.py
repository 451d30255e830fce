"""`python -m orchestrator.cli ...`: the `jamsweep` command (what a Ray job runs).

In a Ray job (JAMSWEEP_JOB_ID set) every module of the project is imported first: the code
came with the job (runtime_env py_modules) into folders that Ray owns and may unpack again
while the job runs; a driver that imported a module only when it needed it (the figures,
at the end) could then find its folder gone."""

import importlib
import os
import pkgutil

if os.environ.get("JAMSWEEP_JOB_ID"):
    import orchestrator
    import schemas
    import workers

    for package in (schemas, workers, orchestrator):
        for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not found.name.endswith("__main__"):
                importlib.import_module(found.name)

from orchestrator.cli.app import main  # noqa: E402

main()
