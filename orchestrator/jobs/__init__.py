"""The Ray Jobs path (`--address http://HOST:8265`): the sweep's driver submitted as a Ray
job that goes on without this process (executor), through the Jobs API client (backend,
the only module here that imports ray)."""
