"""One lease per sweep (orchestrator.cluster.lease): taken atomically by exactly one of
several contenders, renewed while its holder lives, free again once released or expired,
and lost by a holder that was paused past its duration. Real processes, real files, and a
real S3 server (moto) for the conditional put."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator.cluster.lease import (
    Holder,
    SweepTaken,
    acquire,
    current,
    is_held,
    refuse_if_held,
)
from schemas.layout import SweepLayout
from tests.conftest import ROOT
from tests.test_faults import wait_for
from workers import io

JOB = Holder("head-node", 4321, job="jamsweep-sw-1234abcd", address="auto")


def test_a_second_driver_is_refused_naming_the_first_until_it_releases(tmp_path):
    layout = SweepLayout(str(tmp_path), "sw")
    first = acquire(layout, JOB)
    with pytest.raises(SweepTaken, match="being run by Ray job jamsweep-sw-1234abcd") as err:
        acquire(layout, Holder.this_process(None))
    assert "ray job stop jamsweep-sw-1234abcd" in str(err.value)
    with pytest.raises(SweepTaken):
        refuse_if_held(layout)
    first.release()
    assert not is_held(layout)
    second = acquire(layout, Holder.this_process(None))
    assert second.record.generation == 2 and current(layout) == second.record
    second.release()
    third = acquire(layout, Holder.this_process(None))
    # the previous generation stays (who ran last), older ones go
    names = sorted(p.name for p in (tmp_path / ".leases" / "sw").iterdir())
    assert names == ["gen-000000000002.json", "gen-000000000003.json"]
    third.release()


def test_the_lease_lives_beside_the_sweep_not_in_its_folder(tmp_path):
    layout = SweepLayout(str(tmp_path), "sw")
    with acquire(layout, JOB):
        assert (tmp_path / ".leases" / "sw").is_dir() and not (tmp_path / "sw").exists()


def test_a_holder_renews_its_lease_past_its_duration(tmp_path):
    layout = SweepLayout(str(tmp_path), "sw")
    with acquire(layout, JOB, duration_s=0.6) as held:
        taken = held.record.acquired_at
        # renewed (by its thread) at least 2.5 durations after it was taken: it would have
        # expired long before without renewals, and it is still this holder's
        wait_for(lambda: current(layout).renewed_at > taken + 1.5, 30, "renewals", poll=0.05)
        assert current(layout).token == held.token and not held.lost
    assert not is_held(layout)  # released on the way out


HOLD = textwrap.dedent(
    """
    import sys, time
    from orchestrator.cluster.lease import Holder, acquire
    from schemas.layout import SweepLayout
    held = acquire(SweepLayout(sys.argv[1], "sw"), Holder.this_process(None), float(sys.argv[2]))
    print("held", flush=True)
    while not held.lost:
        time.sleep(0.05)
    print("lost:", held.lost_reason, flush=True)
    """
)


def holder_process(results: str, duration_s: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, results, str(duration_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_frees_the_sweep_within_the_lease_time(tmp_path):
    layout = SweepLayout(str(tmp_path), "sw")
    proc = holder_process(str(tmp_path), 2.0)
    with pytest.raises(SweepTaken, match=f"pid {proc.pid}"):
        acquire(layout, JOB)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    wait_for(lambda: not is_held(layout), 10, "the lease to expire", poll=0.05)
    assert time.monotonic() - killed <= 2.0 + 0.5  # the lease time (and a poll)
    acquire(layout, JOB).release()


def test_a_holder_paused_past_its_lease_loses_it_to_the_next_driver(tmp_path):
    layout = SweepLayout(str(tmp_path), "sw")
    proc = holder_process(str(tmp_path), 1.0)
    os.kill(proc.pid, signal.SIGSTOP)  # as a laptop put to sleep, or a stalled node
    try:
        wait_for(lambda: not is_held(layout), 10, "the paused holder's lease to expire")
        taker = acquire(layout, JOB)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("lost: generation 2 took over from 1")
    assert proc.wait(timeout=30) == 0
    assert current(layout) == taker.record  # the old holder wrote nothing after it lost
    taker.release()


RACE = textwrap.dedent(
    """
    import json, sys, time
    from orchestrator.cluster.lease import Holder, SweepTaken, acquire
    from schemas.layout import SweepLayout
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        held = acquire(SweepLayout(sys.argv[1], "sw"), Holder.this_process(None), 30.0)
    except SweepTaken as exc:
        print(json.dumps({"won": False, "holder": exc.record.holder.pid}))
    else:
        print(json.dumps({"won": True, "generation": held.record.generation}), flush=True)
        sys.stdin.read()  # hold the sweep until the test has every answer
        held.release()
    """
)


@pytest.mark.parametrize("round_", range(5))
def test_of_contenders_started_at_the_same_instant_exactly_one_takes_the_sweep(tmp_path, round_):
    start = time.time() + 1.5  # every contender's interpreter is up by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tmp_path), repr(start)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    answers = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.communicate(timeout=60)  # the winner releases once its stdin closes
    winners = [p.pid for p, a in zip(procs, answers, strict=True) if a["won"]]
    assert len(winners) == 1, answers
    assert all(a["holder"] == winners[0] for a in answers if not a["won"]), answers


def test_the_lease_is_taken_with_a_conditional_put_on_s3(s3):
    layout = SweepLayout("s3://sweeps/leases", "sw")
    first = acquire(layout, JOB)
    record = current(layout)
    assert record == first.record
    with pytest.raises(SweepTaken, match="jamsweep-sw-1234abcd"):
        acquire(layout, Holder.this_process(None))
    # the primitive itself: a second create of the same object is refused, the first kept
    assert io.create_exclusive("s3://sweeps/once.txt", b"first")
    assert not io.create_exclusive("s3://sweeps/once.txt", b"second")
    assert io.read_bytes("s3://sweeps/once.txt") == b"first"
    first.release()
    assert not is_held(layout)
    acquire(layout, Holder.this_process(None)).release()
