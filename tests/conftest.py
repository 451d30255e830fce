"""Shared fixtures. Tests marked `ray` start a real Ray on loopback with pinned CPUs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
JAMSWEEP = [sys.executable, "-m", "orchestrator.cli"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"the real MNIST is expected in {SHARED_DATA}/MNIST/raw (see ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """As in a Ray worker (num_cpus: 1): tiny nets on two threads of a busy machine crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def jamsweep(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run(
        [*JAMSWEEP, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tracker_alive(layout) -> bool:  # noqa: ANN001  (a SweepLayout)
    """Whether the sweep's tracker actor exists, on the Ray this process is connected to."""
    import ray

    from orchestrator.cluster.backend import NAMESPACE, tracker_name

    try:
        ray.get_actor(tracker_name(layout), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _EarlyExit(RuntimeError):
    """`ray start` ended before its head answered (a port taken, most often)."""


class RayHead:
    """A real `ray start --head --block` on loopback, in its own process group; `kill()`
    ends every process of it (the whole cluster dies), by their ids."""

    def __init__(self, num_cpus: int, log: Path, attempts: int = 3) -> None:
        # Free ports are found by binding and closing, so another process may take one
        # before `ray start` binds it: a head that exits at once is started again on
        # fresh ports (a port taken shows as an early exit, never as a wrong cluster).
        for attempt in range(attempts):
            try:
                self._start(num_cpus, log)
                return
            except _EarlyExit:
                with contextlib.suppress(ProcessLookupError):  # what it may have left
                    os.killpg(self.proc.pid, 9)
                if attempt + 1 == attempts:
                    raise

    def _start(self, num_cpus: int, log: Path) -> None:
        self.gcs_port, self.dash_port = free_port(), free_port()
        ports = {
            "--port": self.gcs_port,
            "--dashboard-port": self.dash_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        bin_dir = Path(sys.executable).parent
        cmd = [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={num_cpus}",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _EarlyExit(f"ray start exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without the auth token): it is up
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError("the Ray head did not come up")

    def kill(self) -> None:
        """SIGKILL every process of this head (and of the jobs and workers it started)."""
        import signal

        killed = _descendants(self.proc.pid)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # what left the tree but not the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # dead means exited (a zombie at most), not dying
        while any(_running(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.05)


EXITED = ("Z", "X")  # process states of one that has exited (a zombie: not yet reaped)


def process_state(pid: int) -> str | None:
    """The process's state letter from Linux /proc (R, S, Z, ...); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]  # after "(comm)": the state


def _running(pid: int) -> bool:
    return process_state(pid) not in (None, *EXITED)


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found.update(kids)
        frontier.extend(kids)
    return found


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (its own free port, bound once: no race for it) with
    one bucket, "sweeps"; the AWS_* variables point every process started from here (the
    CLI, Ray's workers) at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="sweeps")
        yield client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
