"""The active's lease at its edges (hsb/host/lease.py `Lease`, hsb/host/ha_lease.py `LeaseSide`),
in process on a controllable lease clock: which heartbeats an answer may renew from, what a reset
forgets, when the lease timer is due and what it does when it fires (early, late, again, after a
close), and what status says. A mutation audit of the two files found no fast test failing when
each of these was broken."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from hsb import faults
from hsb.bootclock import boot_now
from hsb.host import ha_lease
from hsb.host import lease as lease_mod
from hsb.host.lease import Lease
from hsb.host.server import HostServer
from tests.support.unstarted import unstarted_active

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
    srv, _ = unstarted_active(tmp_path)
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


# ---------------------------------------------------------------------- the lease timer


async def test_the_lease_timer_is_due_when_the_lease_runs_out(active: HostServer, clock: Clock) -> None:
    """A renewal arms the timer for what is left of the lease (+1 ms), not for a whole lease and
    not later: the loss is said at once. (Kills the timer not re-armed at a renewal, its delay
    being the lease's duration, and +1 ms -> +200 ms.)"""
    ha = active.ha
    ha.lease.duration = 10.0  # (a grant that told a longer lease)
    n = ha.lease.beat(now=clock.now)
    clock.now += 3.0  # the answer came 3 s after the heartbeat went
    ha.lease_answered(n)
    assert ha.lease.remaining() == pytest.approx(7.0)
    assert _timer_due_in(active) == pytest.approx(7.0, abs=0.05)


async def test_a_renewal_replaces_the_pending_lease_timer(active: HostServer, clock: Clock) -> None:
    """One lease timer at a time: a renewal cancels the one pending, which a close could no
    longer cancel. (Kills the cancel of the old timer skipped.)"""
    ha = active.ha
    first = ha._lease_timer
    assert first is not None
    clock.now += 0.5
    _renew(active, clock.now)
    assert first.cancelled() and ha._lease_timer is not first and ha._lease_timer is not None


async def test_after_a_close_a_renewal_arms_no_lease_timer(active: HostServer, clock: Clock) -> None:
    """The process is ending: nothing of the state machine runs on, and no lease is said lost
    while it closes. (Kills `if self.closed: return` dropped.)"""
    ha = active.ha
    ha.close()
    clock.now += 0.5
    _renew(active, clock.now)
    assert ha.lease.valid() and ha._lease_timer is None


async def test_a_lease_timer_that_fires_early_waits_again_for_the_rest(active: HostServer, clock: Clock) -> None:
    """The loop's clock is coarser than the lease's: a timer that fires with the lease still
    valid says nothing and is armed again for what is left. (Kills the re-arm skipped and
    `if self.lease.valid()` negated.)"""
    ha = active.ha
    clock.now = ha.lease.until - 0.25
    ha._lease_check()
    assert ha.lease.lapsed_at is None and active.state_changes == []  # type: ignore[attr-defined]
    assert _timer_due_in(active) == pytest.approx(0.25, abs=0.05)


async def test_the_lease_timer_says_at_once_that_the_lease_ran_out(active: HostServer, clock: Clock) -> None:
    """The timer fires with the lease run out: the loss is noted (status, describe) and said
    (a lease_lost warning with the wall time it expired, a state change), once; a later firing
    leaves the time of the loss as it was. (Kills `if not self.lease_lost` negated, lapsed_at not
    set, the state change skipped, the lapsed_at check dropped, the status's lost_ms_ago sign.)"""

    ha = active.ha
    until = ha.lease.until
    clock.now = until + 0.25
    with structlog.testing.capture_logs() as logs:
        ha._lease_check()
    lost = [e for e in logs if e["event"] == "lease_lost"]
    assert len(lost) == 1, logs
    assert lost[0]["expired_at"] == pytest.approx(time.time() - 0.25, abs=0.1)
    assert lost[0]["noticed_ms_late"] == pytest.approx(250.0, abs=1.0)
    assert ha.lease.lapsed_at == clock.now
    assert len(active.state_changes) == 1 and "LEASE LOST" in active.state_changes[0]  # type: ignore[attr-defined]
    assert not active.is_serving_active()
    clock.now += 1.0
    with structlog.testing.capture_logs() as logs:
        ha._lease_check()  # (a timer armed again meanwhile, the lease still run out)
    assert [e for e in logs if e["event"] == "lease_lost"] == []
    assert ha.lease.lapsed_at == until + 0.25 and len(active.state_changes) == 1  # type: ignore[attr-defined]
    status = ha.lease_status()
    assert status["valid"] is False and status["lost_ms_ago"] == pytest.approx(1000.0, abs=1.0)


async def test_a_late_answer_that_leaves_the_lease_run_out_is_no_renewal(active: HostServer, clock: Clock) -> None:
    """The lease ran out; the CP's answer to a heartbeat sent long ago moves the expiry on but
    not past now: still LEASE LOST, its time of loss kept, nothing said renewed.
    (Kills `if self.lease.valid(now)` in _lease_renewed -> `if True`.)"""
    ha = active.ha
    old = clock.now
    n = ha.lease.beat(now=old + 0.5)
    clock.now = ha.lease.until + 0.25
    ha._lease_check()
    lapsed_at = ha.lease.lapsed_at
    assert lapsed_at is not None
    clock.now += 5.0
    with structlog.testing.capture_logs() as logs:
        ha.lease_answered(n)  # until = old + 2.5: later than before, still past
    assert ha.lease.until == pytest.approx(old + 2.5) and not ha.lease.valid()
    assert [e for e in logs if e["event"] == "lease_renewed"] == []
    assert ha.lease.lapsed_at == lapsed_at and ha.lease_lost and not ha.serving
    assert ha.lease_status()["lost_ms_ago"] is not None


async def test_a_renewal_after_a_loss_is_a_state_change(active: HostServer, clock: Clock) -> None:
    """The lease ran out and is renewed: status and the service manager hear of it (a state
    change, describe no longer saying LEASE LOST). (Kills the renewal's on_state_change skipped.)"""
    ha = active.ha
    clock.now = ha.lease.until + 0.25
    ha._lease_check()
    assert len(active.state_changes) == 1  # type: ignore[attr-defined]
    _renew(active, clock.now)
    assert ha.serving and ha.lease.lapsed_at is None
    assert len(active.state_changes) == 2 and "LEASE LOST" not in active.state_changes[1]  # type: ignore[attr-defined]
    assert ha.lease_status()["lost_ms_ago"] is None


async def test_registered_again_after_a_lost_cp_link_the_hook_hears_it_acts_again(active: HostServer, clock: Clock) -> None:
    """The CP link was lost (the hook was told not_serving), then the host registered again as
    the active with no lease lost meanwhile: the role-change hook hears it acts as the active
    again. (Kills the hook_acting of _lease_renewed skipped.)"""
    ha = active.ha
    fired: list[tuple[str, str, int, str]] = []
    active.hook.fire = lambda *a: fired.append(a)  # type: ignore[method-assign]
    ha.acting_told = True  # (the hook was told at the registration)
    active._cp_down("test")
    active.on_state_change()  # (the HA loop's state change for the lost link)
    assert [f[1] for f in fired] == ["not_serving"], fired
    ha.register_sent_at = clock.now
    ha.link_event({"t": "registered", "role": "active", "epoch": 4, "lease": 2.0})
    assert ha.lease.lapsed_at is None and active.is_serving_active()
    assert [f[3] for f in fired][1:] == ["acting as the active again"], fired


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
