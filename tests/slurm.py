"""A real single-node SLURM on this machine, for tests: munged, slurmctld and slurmd.

Everything lives in one folder (keys, sockets, state, logs, slurm.conf), every daemon
talks over loopback or a unix socket, and `stop()` ends what it started, by pid: the
daemons, and the job processes (slurmstepd and whatever a job ran), which SLURM reparents
away from slurmd, found by a marker in their environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# What Debian's slurm-wlm and munge packages bring; `make test-slurm` installs them.
COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
MARKER = "JAMSWEEP_TEST_SLURM"  # in the environment of every process this cluster starts


class SlurmError(RuntimeError):
    pass


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p}:\n{_tail(p)}" for p in logs)
    raise SlurmError(f"{what} did not happen within {timeout:.0f} s\n{tails}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no file)"


def _group(pgid: int) -> set[int]:
    """The processes of process group `pgid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit():
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    found.add(int(entry.name))
    return found


class SingleNodeSlurm:
    """`with SingleNodeSlurm(folder) as slurm: job = slurm.sbatch(script, ...)`."""

    def __init__(self, root: Path, *, cpus: int = 2) -> None:
        self.root = root.resolve()
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.daemons: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(self.root)}

    # -- start -------------------------------------------------------------------------
    def __enter__(self) -> SingleNodeSlurm:
        missing = missing_commands()
        if missing:
            raise SlurmError(
                f"SLURM/munge commands not found: {', '.join(missing)}. `make test-slurm` "
                "installs them (apt-get install slurm-wlm munge)"
            )
        try:
            self._start_munge()
            self._write_conf()
            self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
            _wait(self._node_idle, 60, "the node going idle", self._logs())
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        folder = self.root / "munge"
        folder.mkdir(parents=True, mode=0o700)
        key = folder / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, env=self.env)
        key.chmod(0o600)
        self._start(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # as root, in a folder of ours
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
        )
        _wait(self.munge_socket.exists, 20, "munged's socket", [folder / "munged.log"])

    def _write_conf(self) -> None:
        state, spool = self.root / "state", self.root / "spool"
        state.mkdir()
        spool.mkdir()
        lines = {
            "ClusterName": "jamsweeptest",
            "SlurmctldHost": f"{self.host}(127.0.0.1)",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": state,
            "SlurmdSpoolDir": spool,
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "slurmctld.log",
            "SlurmdLogFile": self.root / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "SwitchType": "switch/none",
            "MpiDefault": "none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "ReturnToService": 2,
            "MinJobAge": 600,  # keep finished jobs visible to `scontrol show job`
            "SlurmdTimeout": 60,
            "InactiveLimit": 0,
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN\n"
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP\n"
        )
        self.conf.write_text(text)

    def _start(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.stdout").open("w")
        self.daemons[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _logs(self) -> list[Path]:
        return [self.root / f for f in ("slurmctld.log", "slurmd.log", "slurmd.stdout")]

    def _node_idle(self) -> bool:
        for name, proc in self.daemons.items():
            if proc.poll() is not None:
                raise SlurmError(f"{name} exited with {proc.returncode}\n{_tail(self._logs()[0])}")
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        return out == "idle"

    # -- use -----------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, env: dict | None = None):  # noqa: ANN201
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=60
        )
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        """Submit a batch job; returns its id."""
        out = self.run("sbatch", "--parsable", *args, env=env).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait(self, job_id: str, timeout: float, on_poll=None) -> dict[str, str]:  # noqa: ANN001
        """Wait for the job to end; `on_poll()` is called while it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return info
            if on_poll is not None and info["JobState"] == "RUNNING":
                on_poll()
            time.sleep(1)
        raise SlurmError(f"job {job_id} still {self.job(job_id)['JobState']} after {timeout} s")

    def job_pids(self) -> set[int]:
        """Processes of this cluster's jobs (steps and what they ran), by their environment."""
        daemons = {p.pid for p in self.daemons.values()}
        helpers = set().union(*(_group(pid) for pid in daemons))  # slurmctld's slurmscriptd
        marker = f"{MARKER}={self.root}".encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemons | helpers:
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
        found.discard(os.getpid())
        return found

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, end the processes they left, then the daemons (all by pid)."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--partition=test", check=False)
            with contextlib.suppress(SlurmError):
                _wait(
                    lambda: not self.run("squeue", "-h", check=False).stdout.strip(),
                    30,
                    "jobs ending",
                    [],
                )
        self._kill(self.job_pids())
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
            if proc is not None:  # and its helpers (slurmctld's slurmscriptd): its group
                self._kill(_group(proc.pid))
        self._kill(self.job_pids())

    @staticmethod
    def _kill(pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while pids and time.monotonic() < deadline:  # gone (reaped by whoever is their parent)
            pids = {p for p in pids if Path(f"/proc/{p}").exists()}
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.stop()
