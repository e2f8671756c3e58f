"""The active's lease (hsb/host/lease.py) and the CP's side of it: heartbeats answered by number,
the lease rule at the grant (tests/netns/test_lease.py proves it end to end)."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.host.lease import Lease
from tests.support.hostclient import FakeHost
from tests.support.procs import Proc, start_cp

pytestmark = pytest.mark.timeout(60)


def test_lease_runs_from_the_send_time_of_the_answered_heartbeat() -> None:
    lease = Lease()
    lease.duration = 0.35
    n1 = lease.beat(now=10.0)
    n2 = lease.beat(now=10.1)
    assert not lease.valid(now=10.0)  # nothing answered yet
    assert lease.answered(n2)  # answered at any later time: valid from 10.1, not from the answer
    assert lease.until == pytest.approx(10.45)
    assert lease.valid(now=10.44) and not lease.valid(now=10.45)
    assert not lease.answered(n1)  # an older heartbeat's answer, late: never moves the expiry back or on
    assert lease.until == pytest.approx(10.45)
    assert not lease.answered(999)  # never sent
    lease.reset()
    assert not lease.valid(now=10.2)


def test_a_registration_answered_late_renews_from_the_heartbeats_acked_meanwhile() -> None:
    """The CP defers a registration as the active (the active of before stopped normally a moment
    ago) by more than a lease: renewed only from the register's send time, the lease was over as
    it began (a LEASE-LOST blip at every such start). The CP acks heartbeats once the host holds
    the role, before its "registered" comes: the lease runs from the newest of those too."""
    lease = Lease()
    register_sent_at = 10.0
    n = lease.beat(now=10.4)  # acked: the CP made it the active, its epoch being written
    assert lease.answered(n) is True or lease.until <= 10.4  # (no duration yet: no lease)
    assert lease.answered_at == pytest.approx(10.4)
    lease.duration = 0.35  # "registered" comes at 10.45
    lease.extend(max(register_sent_at, lease.answered_at))
    assert lease.valid(now=10.5) and lease.until == pytest.approx(10.75)
    lease.reset()
    assert lease.answered_at == 0.0  # (a link lost: what it answered counts no more)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 0.3), st.booleans()), min_size=1, max_size=40))
def test_lease_never_outlives_the_last_answered_send_plus_duration(beats: list[tuple[float, bool]]) -> None:
    """Whatever is answered, in whatever order, the lease ends `duration` after the send time of
    the newest answered heartbeat: the rule that makes it run out before the CP can grant."""
    lease = Lease()
    lease.duration = 0.35
    t = 0.0
    sent: list[tuple[int, float]] = []
    for gap, _ in beats:
        t += gap
        sent.append((lease.beat(now=t), t))
    newest = None
    for (n, at), (_, answer) in reversed(list(zip(sent, beats, strict=False))):  # answers may come in any order
        if answer:
            lease.answered(n)
            newest = at if newest is None else max(newest, at)
    if newest is None:
        assert lease.until == 0.0
    else:
        assert lease.until <= newest + 0.35 + 1e-9


@pytest.fixture
def cp(tmp_path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=4, host_timeout=0.5)
    yield proc
    proc.stop()


async def test_cp_answers_heartbeats_by_number_and_tells_the_lease(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", heartbeat=None)
    try:
        a.send({"t": "hb", "n": 1})  # not registered yet: no answer
        reg = await a.register("active")
        assert reg["t"] == "registered" and reg["lease"] == 0.35
        a.send({"t": "hb", "n": 7})
        # FakeHost drops plain heartbeats from its inbox; the answer carries "ack"
        await a.wait(lambda m: m["t"] == "hb" and m.get("ack") == 7, timeout=5)
        assert not [m for m in a.inbox if m.get("ack") == 1], "a heartbeat before registration renewed a lease"
    finally:
        await a.close()


async def test_cp_does_not_grant_early_after_closing_the_actives_link_itself(cp: Proc) -> None:
    """A link the CP closed (a protocol error of the active, say) tells the host nothing yet:
    its lease may still run, so the CP grants only after host_timeout of silence."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    try:
        a.send({"t": "open", "terminal": "T00001", "kind": "bogus"})  # the CP closes a's link
        await asyncio.sleep(0)
        await a.wait(lambda m: m["t"] == "error")
        b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
        first = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
        assert first["t"] == "switch_refused" and "lease" in first["reason"], first
        lost = await b.wait(lambda m: m["t"] == "active_lost", timeout=5)  # after host_timeout of silence
        assert lost["why"] == "silent"
        b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
        granted = await b.wait(lambda m: m["t"] == "switch_granted", timeout=5)
        assert granted["lease"] == 0.35
    finally:
        await a.close()
        await b.close()


def test_the_lease_runs_on_through_a_suspend_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A suspend (a laptop lid, a VM paused by its host with its clock kept) stops
    CLOCK_MONOTONIC but not CLOCK_BOOTTIME. An active resumed after a suspend longer than its
    lease must find the lease run out at once, not still running for what was left of it
    while the CP has already given the role away."""
    from hsb.host import lease as lease_mod

    assert abs(lease_mod.clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 0.05
    boot = [100.0]
    monkeypatch.setattr(lease_mod, "clock", lambda: boot[0])
    lease = lease_mod.Lease()
    lease.duration = 0.35
    assert lease.answered(lease.beat()) and lease.valid()
    boot[0] += 10.0  # suspended 10 s
    assert not lease.valid() and lease.remaining() < 0
