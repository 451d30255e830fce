"""Who drives a sweep: one lease per sweep, as etcd and Kubernetes leader election do it.

A driver (a `submit` or `refine` at work) holds the sweep's lease for its whole round: it
takes it atomically before anything runs, renews it every RENEW_S from a thread of its own,
and releases it when it ends (Ctrl-C, SIGTERM and errors included). A lease not renewed
for LEASE_S has expired: its driver is gone (SIGKILL, a dead node, a lost network), the
round is over and the runs it recorded as running are interrupted. Nothing else decides
whether a round is alive: no process ids, no host names, no heartbeat in status.parquet.

The record lives beside the results, under RESULTS/.leases/SWEEP/ (not in the sweep's own
folder, which `--force` moves aside), as numbered generations: gen-000000000001.json, ...
The current lease is the highest generation. Taking the sweep means creating the next
generation's file with an exclusive create (`workers.io.create_exclusive`: a hard link on
a local or NFS folder, a conditional PUT on S3), which exactly one contender wins; the
holder renews by rewriting its own generation's file (whole, atomically). A holder that
finds a newer generation, or that could not renew for LEASE_S, has lost the lease and
stops its round.

Expiry compares the record's renewal time with this machine's clock: drivers on several
machines need clocks within a few seconds of each other (NTP), as for any lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from schemas.errors import JamsweepError
from schemas.layout import SweepLayout
from workers import io

LEASE_ENV = "JAMSWEEP_LEASE_S"  # the lease's duration in seconds (tests shorten it)


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV) or 30.0)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the driver's process, the Ray job it is (if any) and the cluster
    it drives (None: an embedded Ray inside that process)."""

    host: str
    pid: int
    job: str | None = None
    address: str | None = None

    @classmethod
    def this_process(cls, address: str | None) -> Holder:
        return cls(socket.gethostname(), os.getpid(), os.environ.get("JAMSWEEP_JOB_ID"), address)

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}"
        return f"Ray job {self.job} ({where})" if self.job else f"the driver {where}"

    def how_to_stop(self, sweep: str, results: str) -> str:
        """What stops this driver, said as a user would do it."""
        if self.job:
            return f"`ray job stop {self.job}` on its cluster, or jamsweep cancel {sweep}"
        if self.address is None:  # an embedded Ray: only that process can stop it
            return f"Ctrl-C in the terminal that runs it, or `kill {self.pid}` on {self.host}"
        return f"jamsweep cancel {sweep} --address {self.address} --results {results}"


@dataclass(frozen=True)
class LeaseRecord:
    """One generation of a sweep's lease, as stored."""

    generation: int
    token: str  # the holder's secret: which round this is
    holder: Holder
    acquired_at: float
    renewed_at: float
    duration_s: float
    released: bool = False

    def expired(self, now: float | None = None) -> bool:
        return self.released or (now or time.time()) - self.renewed_at > self.duration_s

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LeaseRecord:
        data = json.loads(raw)
        return cls(**{**data, "holder": Holder(**data["holder"])})


class SweepTaken(JamsweepError):
    """Another driver holds the sweep's lease."""

    def __init__(self, layout: SweepLayout, record: LeaseRecord) -> None:
        self.record = record
        left = max(0.0, record.renewed_at + record.duration_s - time.time())
        super().__init__(
            f"sweep {layout.sweep!r} in {layout.results} is being run by "
            f"{record.holder.describe()}; wait for it to end (jamsweep status "
            f"{layout.sweep} --results {layout.results}) or stop it "
            f"({record.holder.how_to_stop(layout.sweep, layout.results)}). A driver that "
            f"was killed frees the sweep when its lease expires (at most {left:.0f} s from now)"
        )


def _generation_file(layout: SweepLayout, generation: int) -> str:
    return f"{layout.lease_dir}/gen-{generation:012d}.json"


def _generations(layout: SweepLayout) -> list[int]:
    names = [path.rsplit("/", 1)[-1] for path in io.list_files(layout.lease_dir, ".json")]
    return sorted(int(n[4:-5]) for n in names if n.startswith("gen-") and n[4:-5].isdigit())


def _newest(layout: SweepLayout) -> tuple[list[int], LeaseRecord | None]:
    """The generations there are, and the newest one's record (None: no lease yet, or a
    file that cannot be read), from ONE listing: a contender must decide whether the sweep
    is free and which generation to take from the same look, or it could take the next
    generation over a lease that appeared between two looks."""
    generations = _generations(layout)
    if not generations:
        return [], None
    try:
        raw = io.read_bytes(_generation_file(layout, generations[-1]))
        return generations, LeaseRecord.from_json(raw)
    except (OSError, ValueError, TypeError, KeyError):
        return generations, None  # a foreign file: no one can be shown to hold the sweep


def current(layout: SweepLayout) -> LeaseRecord | None:
    """The sweep's newest lease record (held, expired or released), or None."""
    return _newest(layout)[1]


def refuse_if_held(layout: SweepLayout) -> None:
    """Raise SweepTaken if a driver holds the sweep (a check, not a claim: `acquire` claims)."""
    record = current(layout)
    if record is not None and not record.expired():
        raise SweepTaken(layout, record)


def is_held(layout: SweepLayout) -> bool:
    """Whether a driver holds the sweep now (its lease is neither released nor expired)."""
    record = current(layout)
    return record is not None and not record.expired()


@dataclass
class Lease:
    """A lease this process holds; renewed by a thread until `release`."""

    layout: SweepLayout
    record: LeaseRecord
    renew_every_s: float
    lost_reason: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last_renewal: float = field(default_factory=time.monotonic)

    @property
    def token(self) -> str:
        return self.record.token

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def check(self) -> None:
        """Raise JamsweepError if the lease was lost (the round must stop)."""
        if self.lost_reason is not None:
            raise JamsweepError(
                f"sweep {self.layout.sweep!r}: this driver lost the sweep's lease "
                f"({self.lost_reason}); its runs are interrupted. Submit the grid again to "
                "resume them once no other driver runs it"
            )

    def renew(self) -> None:
        """Extend the lease by its duration; marks it lost when another generation took it."""
        newest = _generations(self.layout)
        if newest and newest[-1] != self.record.generation:
            self.lost_reason = f"generation {newest[-1]} took over from {self.record.generation}"
            return
        renewed = _replace(self.record, renewed_at=time.time())
        io.write_bytes(_generation_file(self.layout, renewed.generation), renewed.to_json())
        self.record = renewed
        self._last_renewal = time.monotonic()

    def _keep_renewing(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew()
            except Exception as exc:  # storage unreachable: try again until the lease runs out
                if time.monotonic() - self._last_renewal > self.record.duration_s:
                    self.lost_reason = (
                        f"it could not be renewed for {self.record.duration_s:g} s: {exc}"
                    )
            if self.lost_reason is not None:
                return

    def start(self) -> Lease:
        self._thread = threading.Thread(
            target=self._keep_renewing, name="jamsweep-lease", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """End the lease now (idempotent): the sweep is free for the next driver."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.lost_reason is not None or self.record.released:
            return
        newest = _generations(self.layout)
        if newest and newest[-1] != self.record.generation:
            return  # another driver's now
        released = _replace(self.record, released=True, renewed_at=time.time())
        io.write_bytes(_generation_file(self.layout, released.generation), released.to_json())
        self.record = released

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _replace(record: LeaseRecord, **changes: object) -> LeaseRecord:
    return LeaseRecord(**{**asdict(record), "holder": record.holder, **changes})


def acquire(layout: SweepLayout, holder: Holder, duration_s: float | None = None) -> Lease:
    """Take the sweep's lease for `holder` and start renewing it, or raise SweepTaken naming
    the driver that holds it. Exactly one of several contenders wins a generation."""
    duration = duration_s if duration_s is not None else lease_seconds()
    generations, newest = _newest(layout)
    if newest is not None and not newest.expired():
        raise SweepTaken(layout, newest)
    generation = (generations[-1] if generations else 0) + 1
    now = time.time()
    record = LeaseRecord(generation, uuid.uuid4().hex, holder, now, now, duration)
    if not io.create_exclusive(_generation_file(layout, generation), record.to_json()):
        winner = current(layout)  # someone took this generation first
        if winner is None:
            raise JamsweepError(
                f"sweep {layout.sweep!r}: another driver is taking the sweep right now; "
                "submit again in a few seconds"
            )
        raise SweepTaken(layout, winner)
    for old in generations[:-1]:  # keep the previous generation (who ran last), drop older
        with contextlib.suppress(OSError):
            io.delete(_generation_file(layout, old))
    return Lease(layout, record, renew_every_s=max(0.2, duration / 6)).start()
