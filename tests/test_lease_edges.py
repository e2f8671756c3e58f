"""The active's lease at its edges (hsb/host/lease.py `Lease`, hsb/host/ha_lease.py `LeaseSide`),
in process on a controllable lease clock: which heartbeats an answer may renew from, what a reset
forgets, when the lease timer is due and what it does when it fires (early, late, again, after a
close), and what status says. A mutation audit of the two files found no fast test failing when
each of these was broken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hsb import faults
from hsb.bootclock import boot_now
from hsb.host import ha_lease
from hsb.host import lease as lease_mod
from hsb.host.lease import Lease
from hsb.host.server import HostServer
from tests.test_host_ha_decisions import _unstarted_active

pytestmark = pytest.mark.timeout(10)


class Clock:
    """The lease's clock, moved by hand (starting at the real boot clock's reading)."""

    def __init__(self) -> None:
        self.now = boot_now()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(lease_mod, "clock", c)
    monkeypatch.setattr(ha_lease, "lease_clock", c)
    return c


@pytest.fixture
async def active(tmp_path: Path, clock: Clock) -> AsyncIterator[HostServer]:
    """An unstarted HostServer registered as the active with a 2 s lease from the clock's now;
    its on_state_change calls are recorded in `srv.state_changes`."""
    srv, _ = _unstarted_active(tmp_path)
    changes: list[str] = []
    real = srv.on_state_change

    def on_state_change() -> None:
        changes.append(srv.ha.describe())
        real()

    srv.on_state_change = on_state_change  # type: ignore[method-assign]
    srv.state_changes = changes  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.ha.close()
        srv.delivery.cancel()


def _renew(srv: HostServer, sent_at: float) -> None:
    """A heartbeat sent at `sent_at` (the lease clock), answered by the CP now."""
    srv.ha.lease_answered(srv.ha.lease.beat(now=sent_at))


def _timer_due_in(srv: HostServer) -> float:
    timer = srv.ha._lease_timer
    assert timer is not None, "no lease timer armed"
    return timer.when() - asyncio.get_running_loop().time()


# ---------------------------------------------------------------------- Lease


def test_an_answer_renews_from_any_of_the_last_keep_heartbeats_unanswered() -> None:
    """A CP slow to answer: the newest 256 heartbeats sent are remembered (KEEP), the oldest
    beyond them forgotten; an answer to any remembered one, the newest included, renews the lease.
    (Kills `> KEEP` -> `>= KEEP`, KEEP 256 -> 2, and dropping the newest instead of the oldest.)"""
    lease = Lease()
    lease.duration = 1.0
    ns = [lease.beat(now=10.0 + i * 0.01) for i in range(257)]  # 257 unanswered: a CP long silent
    assert lease.answered(ns[1]) and lease.until == pytest.approx(10.01 + 1.0)
    assert lease.answered(ns[-1]) and lease.until == pytest.approx(10.0 + 256 * 0.01 + 1.0)
    bounded = Lease()  # (memory: the oldest beyond KEEP is forgotten)
    bounded.duration = 1.0
    ns = [bounded.beat(now=float(i)) for i in range(Lease.KEEP + 1)]
    assert not bounded.answered(ns[0]) and bounded.answered(ns[1])


def test_answered_says_true_only_when_the_expiry_moved() -> None:
    """Two heartbeats sent at the same instant: the second's answer renews to the same expiry,
    and `answered` says it did not move (the HA side acts on a renewal only).
    (Kills `return self.extend(t)` -> `... or True`.)"""
    lease = Lease()
    lease.duration = 0.35
    n1, n2 = lease.beat(now=5.0), lease.beat(now=5.0)
    assert lease.answered(n1) is True
    assert lease.answered(n2) is False
    assert lease.until == pytest.approx(5.35)


def test_a_frame_sent_before_the_newest_answered_heartbeat_never_shortens_the_lease() -> None:
    """A registration's or grant's own send time may be older than the heartbeat the CP last
    answered: renewing from it leaves the later expiry. (Kills extend's `until <= self.until`
    check dropped.)"""
    lease = Lease()
    lease.duration = 0.35
    assert lease.extend(10.0) and lease.until == pytest.approx(10.35)
    assert not lease.extend(9.9)
    assert lease.until == pytest.approx(10.35) and lease.valid(now=10.3)


def test_a_reset_forgets_the_heartbeats_the_lost_link_carried() -> None:
    """After the CP link is lost, an answer to a heartbeat it carried renews nothing: whatever
    the old link answered no longer counts. (Kills reset's `_sent.clear()` dropped.)"""
    lease = Lease()
    lease.duration = 0.35
    n = lease.beat(now=10.0)
    lease.reset()
    assert not lease.answered(n)
    assert not lease.valid(now=10.1) and lease.until == 0.0


# ---------------------------------------------------------------------- serving and lease_lost


async def test_with_self_fencing_disabled_a_run_out_lease_does_not_stop_serving(
    active: HostServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HSB_TEST_DISABLE_SELF_FENCING=1 (tests only): the host ignores every reason to stop
    serving, its lease's end among them. (Kills `or not faults.SELF_FENCING` dropped.)"""
    ha = active.ha
    clock.now = ha.lease.until + 1.0
    assert not ha.serving and ha.lease_lost  # (self-fencing on: not serving)
    monkeypatch.setattr(faults, "SELF_FENCING", False)
    assert ha.serving and not ha.lease_lost


async def test_lease_lost_only_for_the_granted_host_whose_lease_ran_out(active: HostServer, clock: Clock) -> None:
    """LEASE LOST is said by the active whose lease ran out: not while the lease is valid, and
    not by a host the CP no longer made active. (Kills each of lease_lost's three conditions
    dropped or its `and` made `or`.)"""
    ha = active.ha
    assert ha.serving and not ha.lease_lost
    assert "LEASE LOST" not in ha.describe()
    clock.now = ha.lease.until + 0.5
    assert ha.lease_lost and "LEASE LOST" in ha.describe()
    ha.granted = False  # (its CP link lost: the CP's word on its role is gone)
    assert not ha.lease_lost


async def test_status_tells_the_lease_left_and_none_without_a_lease(active: HostServer, clock: Clock) -> None:
    """lease_status: its duration, what is left in ms, and no `remaining_ms` while the host holds
    no lease at all (its link lost). (Kills the `if self.lease.until` test, the ms scale, the
    duration.)"""
    ha = active.ha
    clock.now = ha.lease.until - 1.5
    status = ha.lease_status()
    assert status == {"valid": True, "duration_s": 2.0, "remaining_ms": pytest.approx(1500.0, abs=0.2), "lost_ms_ago": None}
    ha.lease.reset()
    assert ha.lease_status()["remaining_ms"] is None and ha.lease_status()["valid"] is False
