"""An active whose CP link was reset on the CP's side alone (a middlebox's reset: the CP takes
it for the host's close and grants the standby at once) stops serving as soon as the new
active's ACTIVE STARTUP tells it a higher epoch, not when its lease runs out: it drops its CP
link and registers again, and the CP, which has the other host active, refuses it. A claim
whose higher epoch is stale (a CP journal set aside starts again from epoch 0) costs the real
active only a registration again. It stops serving in that moment: nothing queued goes to its
service after the claim. hsbcpd and both hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.host.ha import HA
from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


async def test_an_active_reset_at_the_cp_alone_is_granted_away_only_once_its_lease_ran_out(tmp_path: Path) -> None:
    """Found by the slow-links walk-through: a reset of the CP's end of the active's link alone
    (a middlebox that lost its state) was taken for the host's close and the standby granted at
    once, while host-a, alive and never told, served on its lease: both hosts answered /active
    for 143 ms. Now, with the standby's peer link from host-a still up, the CP waits out the lease
    host-a may hold before it grants; host-a then stops on the new active's word."""
    from hsb.host.lease import clock as lease_clock

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        assert core is not None and core.active is not None and a.ha.serving
        link = core.active
        assert link.transport is not None
        epoch_a = a.ha.epoch
        lease_left: list[float] = []  # host-a's lease left at the grant (on its own clock)
        real_grant = core._grant

        def grant(*args: Any, **kw: Any) -> None:
            lease_left.append(a.ha.lease.until - lease_clock())
            real_grant(*args, **kw)

        core._grant = grant  # type: ignore[method-assign]
        # nothing more is read from host-a at the CP (its heartbeats go unanswered there), and the
        # CP's end of the link meets a reset that host-a's end never sees
        link.transport.pause_reading()
        reset_at = time.monotonic()
        link.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        try:
            await until(lambda: b.ha.serving, "host-b granted and serving")
            assert b.ha.epoch > epoch_a
            assert len(lease_left) == 1 and lease_left[0] <= 0, (lease_left, time.monotonic() - reset_at)  # never two actives
            await until(lambda: a.ha.state == "fenced", "host-a stopped", timeout=5)
            assert not a.is_serving_active()
            assert a.ha.counters["two_actives_claimed"] == 0
            assert a.ha.exit is not None and "active" in a.ha.exit.msg, a.ha.exit  # the CP's refusal: another host is active
        finally:
            link.transport.abort()


@pytest.mark.parametrize("first", ["peer link", "host link"])
async def test_an_active_whose_links_both_closed_is_granted_away_at_once(tmp_path: Path, first: str) -> None:
    """The active's process gone (its kernel closes both its links): the standby's request says
    its peer link from it closed too, and the CP grants at once, without waiting out a lease that
    nobody holds any more: the crash failover stays as fast as before. Whichever end the standby
    hears of first: a request already deferred (the CP's word came first) is sent again once the
    peer link closes."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None and core.active is not None and a.ha.serving
        real_grant = core._grant
        granted_at: list[float] = []

        def grant(*args: Any, **kw: Any) -> None:
            granted_at.append(time.monotonic())
            real_grant(*args, **kw)

        core._grant = grant  # type: ignore[method-assign]
        link = core.active
        inbound = b.peer.inbound
        assert link.transport is not None and inbound is not None and inbound.transport is not None
        link.transport.pause_reading()
        inbound.transport.pause_reading()

        def close_peer() -> None:  # (at the standby, by host-a's end)
            inbound.connection_lost(ConnectionResetError(104, "Connection reset by peer"))

        try:
            if first == "peer link":
                t0 = time.monotonic()
                close_peer()
                link.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
            else:
                link.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
                await until(lambda: core.deferred_grant is not None, "the standby's request deferred: its peer link still up")
                t0 = time.monotonic()
                close_peer()
            await until(lambda: b.ha.serving, "host-b granted and serving")
            assert granted_at and granted_at[0] - t0 < core.host_lease / 3, granted_at[0] - t0
        finally:
            link.transport.abort()


async def test_a_stale_claim_of_a_higher_epoch_costs_the_active_only_a_registration(tmp_path: Path) -> None:
    """The peer claims the active role at an epoch above this active's, but the CP still has
    this host as its active (the claim is stale: epochs of a journal set aside began again at
    0). The active drops its CP link and registers again; the CP gives it the role back, and
    it serves on, not fenced."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.paused = True  # (the link it drops is no failover: the standby is not made active)
        links = a.cp.connects
        a.ha.post("peer_frame", msg={"t": "active_startup", "name": "host-b", "instance": "stale", "epoch": a.ha.epoch + 40})
        await until(lambda: a.cp.connects > links, "host-a's CP link made again")
        await until(lambda: a.is_serving_active(), "host-a the active again")
        assert a.ha.exit is None and a.ha.state != "fenced"
        assert core.active is not None and core.active.name == "host-a"


async def test_an_active_that_hears_a_higher_epoch_hands_nothing_more_to_its_service(tmp_path: Path) -> None:
    """The peer's claim of a higher epoch drops the CP link: the host stops serving there and
    then, not when its read loop sees the link's end (a few turns of the loop later, or, with
    unsent replies buffered, not before they went). A message queued behind one in the service
    is not handed over after the drop, nor is the one in the service answered."""
    hold = asyncio.Event()
    started: list[int] = []

    class Slow(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if self.host == "host-a":
                started.append(message_id)
                if message_id == 1:
                    await hold.wait()
            return data

    async with pair_in_hot_standby(tmp_path, Slow) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.paused = True  # (the link it drops is no failover: the standby is not made active)
        sent: list[dict[str, Any]] = []
        real_send = a.cp.send

        def send(msg: dict[str, Any]) -> bool:
            sent.append(msg)
            return real_send(msg)

        a.cp.send = send  # type: ignore[method-assign]  # (what host-a sends noted on the way)
        a.delivery.deliver("T00002", 1, "x", False)
        a.delivery.deliver("T00002", 2, "y", False)
        await until(lambda: started == [1], "1 in the service, 2 queued behind it")
        links = a.cp.connects
        hold.set()  # 1 ends in the same turn of the loop as the claim
        a.ha.peer_claims_active({"t": "active_startup", "name": "host-b", "instance": "x", "epoch": a.ha.epoch + 1})
        at_once = (a.ha.serving, dict(a.delivery.workers), dict(a.delivery.queues))
        await until(lambda: a.cp.connects > links and a.is_serving_active(), "host-a registered again, the active")
        assert started == [1], started  # 2 never reached host-a's service on that link
        assert at_once == (False, {}, {}), at_once  # it stopped serving there and then
        assert [m for m in sent if m["t"] == "reply"] == [], sent


def test_a_peer_without_an_epoch_or_with_the_same_one_is_only_counted(tmp_path: Path) -> None:
    """A peer of an older version (no epoch) or one claiming this host's own epoch does not stop
    the active: the claim is counted, as before. One claiming an older epoch is not counted
    (tests/test_two_actives_claimed_stale.py)."""
    for peer_epoch in (None, 3):
        ha = HA.__new__(HA)
        calls: list[str] = []
        ha.granted, ha.epoch, ha.state = True, 3, "established"
        ha.counters = {"two_actives_claimed": 0}
        ha.last_error = None
        ha.lease = type("L", (), {"valid": lambda self: True, "remaining": lambda self: 0.2})()
        ha.fenced = lambda why: calls.append(why)  # type: ignore[method-assign]
        ha.srv = type("S", (), {"cp": type("C", (), {"drop": lambda self, why: calls.append(why)})()})()
        msg: dict[str, Any] = {"t": "active_startup", "name": "host-b", "instance": "x"}
        if peer_epoch is not None:
            msg["epoch"] = peer_epoch
        ha.peer_claims_active(msg)
        assert calls == [] and ha.counters["two_actives_claimed"] == 1, peer_epoch


async def test_a_registration_telling_a_lease_above_the_heartbeat_timeout_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow-links walk-through's second finding, at the registration that tells the lease
    (tests/test_host_cp_link_edges.py has the rule's cases)."""
    from hsb.host import ha_cp
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        monkeypatch.setattr(ha_cp, "log", rec)
        a.cfg.host.heartbeat_timeout = core.host_lease / 2  # (as a reload to a value below the lease would)
        core.paused = True  # (the link it drops is no failover)
        links = a.cp.connects
        a.ha.post("peer_frame", msg={"t": "active_startup", "name": "host-b", "instance": "stale", "epoch": a.ha.epoch + 40})
        await until(lambda: a.cp.connects > links and a.is_serving_active(), "host-a registered again, the active")
        [said] = rec.events("heartbeat_timeout_below_lease")
        assert said["lease"] == core.host_lease and said["heartbeat_timeout"] == core.host_lease / 2, said


async def test_a_standby_whose_request_is_out_in_another_state_sends_it_again_when_its_peer_link_closes(tmp_path: Path) -> None:
    """Found by review (session 67): the standby heard of the active's loss from the CP first, in
    a state whose peer-link loss asks nothing by itself (waiting for the active, the active
    stopped): its request, without `peer_closed`, waited out the lease at the CP. A request out is
    sent again with it when the peer link closes, and the grant is at once."""
    from hsb.host.states import WAITING

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None and core.active is not None
        link = core.active
        inbound = b.peer.inbound
        assert link.transport is not None and inbound is not None and inbound.transport is not None
        link.transport.pause_reading()
        inbound.transport.pause_reading()
        try:
            b.ha.state = WAITING  # (as a standby that follows no active yet would be)
            link.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
            await until(lambda: core.deferred_grant is not None, "the standby's request deferred: its peer link still up")
            t0 = time.monotonic()
            inbound.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
            await until(lambda: core.active is not link, "granted")
            assert time.monotonic() - t0 < core.host_lease / 3, time.monotonic() - t0
        finally:
            link.transport.abort()
