"""The active's lease where hsb/host/ha.py decides on it (docs/design.md, "One active: the lease"):
the peer's claim of the active role weighed against this host's own lease (a failover said as
such, two actives counted only while the lease is valid, a higher epoch dropping the CP link only
then, nothing done during a stop), the reason the role-change hook is given when the lease runs
out, and a run-out lease noticed with self-fencing disabled. In process on a hand-moved lease
clock; each test names a behaviour that a mutation audit of hsb/host/lease.py, ha_lease.py,
cpgen.py and the lease branches of ha.py found no test for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb import faults
from hsb.host.server import HostServer
from tests.support.unstarted import unstarted_active
from tests.test_lease_edges import Clock
from tests.test_lease_edges import clock as clock  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def active(tmp_path: Path, clock: Clock) -> AsyncIterator[HostServer]:
    """An unstarted HostServer registered as the active (epoch 3, a 2 s lease from the clock's
    now); its CP link's drops are recorded in `srv.drops`, its hook's runs in `srv.fired`."""
    srv, _ = unstarted_active(tmp_path)
    drops: list[str] = []
    fired: list[tuple[Any, ...]] = []
    srv.cp.drop = drops.append  # type: ignore[method-assign,assignment]
    srv.hook.fire = lambda *a: fired.append(a)  # type: ignore[method-assign]
    srv.drops = drops  # type: ignore[attr-defined]
    srv.fired = fired  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.ha.close()
        srv.delivery.cancel()


def _timer_due_in(srv: HostServer) -> float:
    timer = srv.ha._lease_timer
    assert timer is not None, "no lease timer armed"
    return timer.when() - asyncio.get_running_loop().time()


def _claim(srv: HostServer, epoch: int | None) -> list[Any]:
    """The peer's ACTIVE STARTUP (at `epoch`) heard by `srv`: the log events it gave."""
    msg: dict[str, Any] = {"t": "active_startup", "name": "host-b", "instance": "x"}
    if epoch is not None:
        msg["epoch"] = epoch
    with structlog.testing.capture_logs() as logs:
        srv.ha.peer_claims_active(msg)
    return logs


@pytest.mark.parametrize("peer_epoch", [None, 2, 3, 4])
async def test_a_peer_claiming_the_role_after_this_hosts_lease_ran_out_took_over(active: HostServer, clock: Clock, peer_epoch: int | None) -> None:
    """The lease ran out (the CP answered no heartbeat within it) while the CP's grant still
    stands here: the peer's claim, at any epoch, is a takeover of a host no longer serving,
    said as such (peer_took_over). Not two actives (the alert's counter), and no CP link
    dropped, even for a higher epoch: that is for an active whose lease still runs.
    (Kills the `self.lease.valid()` of either claim branch dropped.)"""
    ha = active.ha
    clock.now = ha.lease.until + 0.5
    assert ha.granted and not ha.serving
    logs = _claim(active, peer_epoch)
    assert [e["event"] for e in logs] == ["peer_took_over"], logs
    assert ha.counters["two_actives_claimed"] == 0
    assert active.drops == []  # type: ignore[attr-defined]
    assert ha.last_error is not None and "holds no lease" in ha.last_error


async def test_a_claim_while_the_lease_runs_is_two_actives_and_a_higher_epoch_drops_the_link(active: HostServer, clock: Clock) -> None:
    """The same claims with the lease still valid: at an epoch not above this host's, two
    actives (counted, said); above it, the CP link dropped for the CP to decide. (The contrast
    of the test above, on the same clock.)"""
    ha = active.ha
    assert ha.serving
    assert [e["event"] for e in _claim(active, 3)] == ["two_actives_claimed"]
    assert ha.counters["two_actives_claimed"] == 1 and active.drops == []  # type: ignore[attr-defined]
    assert [e["event"] for e in _claim(active, 4)] == ["taken_over_while_serving"]
    assert ha.counters["two_actives_claimed"] == 1 and len(active.drops) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("peer_epoch", [3, 4])
async def test_during_a_stop_a_peers_claim_is_its_takeover_and_nothing_more(active: HostServer, clock: Clock, peer_epoch: int) -> None:
    """The active is stopping (its handover granted late, the CP's `demoted` to follow) with its
    lease still valid: the peer's claim is the takeover the stop asked for. No two actives
    counted, no CP link dropped, no error left in the status. (Kills the STOPPING return
    dropped.)"""
    ha = active.ha
    ha.state = "stopping"
    assert ha.granted and ha.lease.valid()
    logs = _claim(active, peer_epoch)
    assert [e["event"] for e in logs] == ["peer_took_over"], logs
    assert ha.counters["two_actives_claimed"] == 0 and active.drops == []  # type: ignore[attr-defined]
    assert ha.last_error is None


async def test_the_hook_hears_that_the_lease_ran_out(active: HostServer, clock: Clock) -> None:
    """The lease timer finds the lease run out: the role-change hook runs with `not_serving` and a
    reason naming the lease and its length (what an operator reads in the hook's log), not a
    bare "not serving". (Kills _not_acting_why's lease branch dropped.)"""
    ha = active.ha
    ha.acting_told = True  # (the hook was told at the registration)
    clock.now = ha.lease.until + 0.25
    ha._lease_check()
    fired = active.fired  # type: ignore[attr-defined]
    assert [(f[0], f[1], f[2]) for f in fired] == [("active", "not_serving", 3)], fired
    assert fired[0][3] == "no heartbeat answered by the CP within its 2 s lease", fired


async def test_with_self_fencing_disabled_a_run_out_lease_is_not_said_lost(active: HostServer, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """HSB_TEST_DISABLE_SELF_FENCING=1 (tests only): the host ignores its lease's end, so the
    lease timer says nothing of a loss either: no lease_lost warning, no time of loss, no state
    change, status without `lost_ms_ago`. (Kills _lease_check's `if not self.lease_lost`
    dropped.)"""
    monkeypatch.setattr(faults, "SELF_FENCING", False)
    ha = active.ha
    clock.now = ha.lease.until + 0.25
    with structlog.testing.capture_logs() as logs:
        ha._lease_check()
    assert [e for e in logs if e["event"] == "lease_lost"] == []
    assert ha.lease.lapsed_at is None and ha.serving
    assert ha.lease_status()["lost_ms_ago"] is None


async def test_a_host_the_cp_demoted_hears_the_peers_claim_as_its_takeover(active: HostServer, clock: Clock) -> None:
    """The CP demoted this host (its lease's time not run out on this clock, but the CP's grant
    is gone): the peer's claim at a higher epoch is the takeover the CP made, said as such, and
    the CP link it is registered on is not dropped. (Kills the `self.granted` of the higher
    epoch branch dropped.)"""
    ha = active.ha
    ha.link_event({"t": "demoted", "epoch": 4})
    assert not ha.granted and ha.lease.valid()
    logs = _claim(active, 5)
    assert [e["event"] for e in logs] == ["peer_took_over"], logs
    assert active.drops == [] and ha.counters["two_actives_claimed"] == 0  # type: ignore[attr-defined]


async def test_a_registration_answered_late_renews_from_a_heartbeat_the_cp_acked_meanwhile(active: HostServer, clock: Clock) -> None:
    """The CP link was lost and made again: `register` went at T, the CP deferred it (the
    active of before stopping), acked a heartbeat sent at T+2.8 once this host held the role,
    and "registered" came at T+3. The lease runs from that heartbeat (valid to T+4.8), not from
    the register, a lease ago (it would be over as it began: a LEASE LOST blip at the start).
    (Kills the registration's `max(register_sent_at, answered_at)` -> `register_sent_at`.)"""
    ha = active.ha
    active._cp_down("test")  # (the lease reset: what the lost link answered no longer counts)
    ha.lease.duration = 0.0  # (as a new link's: no lease told yet)
    t = clock.now
    ha.register_sent_at = t
    n = ha.lease.beat(now=t + 2.8)
    clock.now = t + 3.0
    ha.lease_answered(n)  # acked before "registered" came
    ha.link_event({"t": "registered", "role": "active", "epoch": 4, "lease": 2.0})
    assert ha.lease.until == pytest.approx(t + 4.8)
    assert ha.serving and active.is_serving_active()


async def test_a_grant_renews_the_lease_from_the_send_time_of_the_request_it_answers(active: HostServer, clock: Clock) -> None:
    """`switch_granted` names the request it answers (`req`): the lease runs from the moment
    that request was sent, the newest frame the CP is known to have heard, not from an older
    heartbeat's answer and never from the grant's arrival (that would outlast the lease the CP
    counts, and two hosts could both hold one). (Kills the grant's renewal from `answered_at`
    alone and from the clock's now.)"""
    ha = active.ha
    clock.now += 1.0
    sent = clock.now
    ha.switch_sent = {7: sent}
    clock.now += 0.5  # the grant comes half a second after the request went
    ha.link_event({"t": "switch_granted", "epoch": 5, "req": 7, "lease": 2.0})
    assert ha.lease.until == pytest.approx(sent + 2.0)
    assert ha.epoch == 5 and ha.serving
    assert _timer_due_in(active) == pytest.approx(1.5, abs=0.05)  # (the loss said at once when it runs out)


async def test_a_grant_after_a_lapse_says_the_renewal(active: HostServer, clock: Clock) -> None:
    """The lease ran out (said: LEASE LOST) and a grant renews it: the loss is over, said as a
    state change, and whatever waited for a valid lease goes on. (Kills the grant's
    `_lease_renewed()` skipped.)"""
    ha = active.ha
    clock.now = ha.lease.until + 0.25
    ha._lease_check()
    assert ha.lease.lapsed_at is not None and not active.is_serving_active()
    ha.switch_sent = {8: clock.now}
    ha.link_event({"t": "switch_granted", "epoch": 5, "req": 8, "lease": 2.0})
    assert ha.lease.lapsed_at is None and ha.lease_status()["lost_ms_ago"] is None
    assert active.is_serving_active() and "LEASE LOST" not in ha.describe()


async def test_what_a_lost_cp_link_answered_gives_no_lease_on_the_next_one(active: HostServer, clock: Clock) -> None:
    """The CP link is lost with 1.5 s of the 2 s lease left: the status shows no lease left at
    all. The next CP (restarted with `lease` 0.5 s, its host_timeout cut to match) registers the
    host as the active: the lease runs 0.5 s from that register, not on to the end of the one
    the lost link earned, which the new CP's host_timeout no longer covers (it could grant the
    peer while this host still served). (Kills the lease's reset at the link's loss skipped.)"""
    ha = active.ha
    t = clock.now
    clock.now = t + 0.5
    active._cp_down("test")
    assert ha.lease_status()["remaining_ms"] is None and not ha.lease.valid()
    ha.register_sent_at = t + 0.6
    clock.now = t + 0.7
    ha.link_event({"t": "registered", "role": "active", "epoch": 4, "lease": 0.5})
    assert ha.serving and ha.lease.until == pytest.approx(t + 1.1)
    clock.now = t + 1.2
    assert not ha.serving and not active.is_serving_active()
