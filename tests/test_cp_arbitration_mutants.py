"""Tests from a mutation audit of hsb/cp/arbitration.py: who may ask for the active role and
when the operator's pause refuses it (docs/design.md, SPEC §5.4: "paused: no automatic failover;
a planned switchover and a promote still work")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


async def test_only_the_registered_standby_may_ask_for_the_role(tmp_path: Path) -> None:
    """A host that is not the registered standby (one not registered at all, or the active itself)
    is refused, and nothing changes: the active stays, no new epoch."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    fake_host(cp, "host-b", "standby")
    c = fake_host(cp, "host-c", record=True)
    epoch = cp.epoch
    for h in (c, a):
        cp.host_switchover(h, "test", False, "failover", peer_closed=True)
        [refusal] = _said(h, "switch_refused")
        assert refusal["reason"] == "only the registered standby host may ask for a switchover"
        assert not _said(h, "switch_granted")
    assert cp.active is a and cp.epoch == epoch


async def test_paused_refuses_an_automatic_failover_only(tmp_path: Path) -> None:
    """Paused by the operator: the standby's failover request after the active's loss is refused;
    a planned switchover the active released, and a promote, are still granted."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    a.connection_lost(None)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    [refusal] = _said(b, "switch_refused")
    assert refusal["reason"].startswith("paused by the operator")
    assert cp.active is not b and not _said(b, "switch_granted")

    (tmp_path / "planned").mkdir()
    cp = cp_core(tmp_path / "planned", 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    cp.host_release(a)
    cp.host_switchover(b, "planned", True, "failover")
    assert cp.active is b and _said(b, "switch_granted") and not _said(b, "switch_refused")

    (tmp_path / "promote").mkdir()
    cp = cp_core(tmp_path / "promote", 2)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    cp.host_switchover(b, "operator", False, "promote")
    assert cp.active is b and _said(b, "switch_granted") and not _said(b, "switch_refused")


async def test_after_a_restart_the_role_waits_for_the_recorded_actives_lease(tmp_path: Path) -> None:
    """A CP restarted on a journal that names host-a the active: host-b, the standby, asks for the
    role before host-a registered again. A lease the CP before renewed may still run, so the
    request is deferred (neither granted nor refused) until the restart's wait is over."""
    from hsb.cp.journal.recovery import Recovered, apply

    cp = cp_core(tmp_path, 2)
    r = Recovered()
    apply(r, ["ck", 3, "host-a", 1, {}, {}], 1)
    cp.restore(r)
    b = fake_host(cp, "host-b", "standby", record=True)
    assert cp.restart_lease_left(b) > 0
    try:
        cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
        assert cp.active is None and cp.epoch == 3 and cp.deferred_grant is not None
        assert not _said(b, "switch_granted") and not _said(b, "switch_refused")
    finally:
        cp.cancel_deferred_grant()


async def test_an_active_silent_for_less_than_host_timeout_keeps_the_role(tmp_path: Path) -> None:
    """The active's lease has surely run out only once it has been silent for host_timeout: a
    standby asking while it was heard three quarters of that ago is refused, the active kept."""
    import time

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    a.last_rx = time.monotonic() - 0.75 * cp.host_timeout
    cp.host_switchover(b, "active silent", False, "failover", peer_closed=True)
    [refusal] = _said(b, "switch_refused")
    assert "it is alive on its host link" in refusal["reason"]
    assert cp.active is a and not a.fenced and not _said(b, "switch_granted")


async def test_a_release_lets_only_a_planned_request_through(tmp_path: Path) -> None:
    """The active released the role for a planned switchover: the standby's unplanned failover
    request meanwhile is refused (the active is alive), not granted as if planned."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_release(a)
    cp.host_switchover(b, "not planned", False, "failover", peer_closed=True)
    [refusal] = _said(b, "switch_refused")
    assert "it is alive on its host link" in refusal["reason"]
    assert cp.active is a and not a.fenced and not _said(b, "switch_granted")


def _restarted(tmp_path: Path) -> Any:
    """A CP restarted on a journal naming host-a the active at epoch 3 (not registered again)."""
    from hsb.cp.journal.recovery import Recovered, apply

    cp = cp_core(tmp_path, 2)
    r = Recovered()
    apply(r, ["ck", 3, "host-a", 1, {}, {}], 1)
    cp.restore(r)
    return cp


async def test_a_request_right_after_a_tick_that_saw_the_cp_stalled_is_judged_again(tmp_path: Path) -> None:
    """tick() just found this process stalled (its own last tick long ago) and left the hosts'
    silence to be judged after a read. A standby's request met in that same pass, the active
    looking silent only because its heartbeats are unread, is deferred, not granted: the last
    tick is recent now, only the skipped judgement says the CP stalled."""
    import time

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    now = time.monotonic()
    a.last_rx = now - 2 * cp.host_timeout  # (its heartbeats wait unread)
    cp._last_tick = now - 2 * cp.host_timeout  # the loop did not run for that long
    cp.tick()
    assert cp._tick_skipped and cp.active is a
    try:
        cp.host_switchover(b, "peer lost", False, "failover", peer_closed=True)
        assert cp.active is a and not a.fenced and cp.epoch == 1 and cp.deferred_grant is not None
        assert not _said(b, "switch_granted") and not _said(b, "switch_refused")
    finally:
        cp.cancel_deferred_grant()


async def test_the_recorded_active_itself_asking_after_a_restart_does_not_wait_for_its_own_lease(tmp_path: Path) -> None:
    """After a CP restart the role waits for the recorded active's lease only when another host
    asks: host-a, the recorded active, back as the standby and asking for the role (its own
    lease is no rival), is granted at once."""
    cp = _restarted(tmp_path)
    a = fake_host(cp, "host-a", "standby", record=True)
    assert cp.standby is a and cp.restart_lease_left(a) == 0.0
    try:
        cp.host_switchover(a, "operator", False, "promote")
        assert cp.active is a and cp.deferred_grant is None and cp.epoch == 4
    finally:
        cp.cancel_deferred_grant()


async def test_a_deferred_request_is_not_run_for_another_standby(tmp_path: Path) -> None:
    """host-b's request, deferred by the restart's wait, comes due after host-b was lost and
    host-c registered as the standby: host-c never asked (it may not be ready to serve), so
    nobody is granted the role."""
    import time

    cp = _restarted(tmp_path)
    b = fake_host(cp, "host-b", "standby")
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.deferred_grant is not None
    b.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    assert cp.standby is c
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1  # the wait is over
    cp.deferred_grant.cancel()
    cp._deferred_switchover()  # (what the timer runs)
    assert cp.active is None and cp.epoch == 3 and not _said(c, "switch_granted")


async def test_a_deferred_standby_granted_the_role_is_not_told_its_request_is_moot(tmp_path: Path) -> None:
    """host-b's request, deferred by the restart's wait, is asked again once the wait is over and
    granted: the deferred one is moot, but host-b, now the active, is not sent a refusal for it
    (only a standby that is not the new holder is)."""
    import time

    cp = _restarted(tmp_path)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.deferred_grant is not None
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1  # the wait is over
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.active is b and cp.deferred_grant is None and cp.deferred_ask is None
    assert not _said(b, "switch_refused")


def _granted_after_a_loss(tmp_path: Path) -> tuple[Any, Any, Any]:
    """host-a, the active, lost; host-b, the standby, granted the role, that epoch's record held
    (not durable yet): (cp, the held journal, host-b)."""
    from tests.support.cpcore import HeldJournal

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    held = HeldJournal(cp)
    a.connection_lost(None)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.granting is b
    return cp, held, b


async def test_a_superseded_grant_leaves_the_newer_pending_grant_its_grantee(tmp_path: Path) -> None:
    """host-a's link closed, host-b was granted the role and lost before that epoch was durable;
    host-c, the next standby, asked and was granted a newer epoch. host-b's grant, durable
    first, is superseded: host-c is still the host the pending grant names, and a standby
    session it opens meanwhile (it reads the ring until it hears of its grant) is taken."""
    cp, held, b = _granted_after_a_loss(tmp_path)
    b.connection_lost(None)  # lost before its grant took effect
    c = fake_host(cp, "host-c", "standby", record=True)
    cp.host_switchover(c, "active lost", False, "failover", peer_closed=True)
    assert cp.granting is c and cp.epoch == 3
    held.release_one()  # host-b's epoch durable: superseded
    assert cp.granting is c
    cp.host_open(c, "T00001", "standby", {})
    assert _said(c, "opened") and not _said(c, "open_failed")
    assert cp.terms["T00001"].standby is not None and cp.terms["T00001"].standby.host is c


async def test_an_active_demoted_by_a_planned_switchover_is_given_work_when_it_takes_the_role_back(tmp_path: Path) -> None:
    """host-a released the role for a planned switchover and became the standby; host-b, the new
    active, is lost and host-a takes the role back by a failover: its release was of the role
    before, so a terminal's message is delivered to it (a releasing active gets no new work)."""
    from tests.support.cpcore import recording_terminal

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby")
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    cp.settle_flip()
    assert cp.active is b and cp.standby is a
    b.connection_lost(None)
    cp.host_switchover(a, "active lost", False, "failover", peer_closed=True)
    cp.settle_flip()
    assert cp.active is a and cp.announced
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.terminal_msg(cp.terms["T00001"], 1, b"one")
    assert [f["id"] for f in _said(a, "deliver")] == [1]


async def test_a_grant_names_the_request_it_answers(tmp_path: Path) -> None:
    """The standby's request carries its number (`req`); the grant echoes it, so that the new
    active's lease runs from when it sent that request (hsb.host.ha_cp), not from when the grant
    came. A request without one gets a grant without one."""
    for req in (7, None):
        d = tmp_path / str(req)
        d.mkdir()
        cp = cp_core(d, 2)
        a = fake_host(cp, "host-a", "active")
        b = fake_host(cp, "host-b", "standby", record=True)
        cp.host_release(a)
        cp.host_switchover(b, "planned", True, "failover", req=req)
        [grant] = _said(b, "switch_granted")
        assert cp.active is b and grant.get("req") == req, grant


async def test_a_standby_that_registered_while_a_grant_was_pending_hears_the_grantee_was_lost(tmp_path: Path) -> None:
    """host-a lost, host-b granted the role and lost before that epoch was durable; host-c
    registered as the standby meanwhile, without asking (it heard of no loss: a grant was on its
    way). When host-b's epoch is durable nobody serves, and host-c is told the active (host-b)
    was lost, so that it takes over."""
    cp, held, b = _granted_after_a_loss(tmp_path)
    b.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    before = [m["host"] for m in _said(c, "active_lost")]
    held.release()  # host-b's epoch durable: its grantee is gone
    after = [m["host"] for m in _said(c, "active_lost")]
    assert after[len(before) :] == ["host-b"], (before, after)


async def test_a_failover_from_a_silent_active_still_connected_records_its_fence(tmp_path: Path) -> None:
    """The active, connected but silent past host_timeout, loses the role to the standby's
    failover: it is told it is fenced, and the switch history has the failover and then a
    "fence" entry naming it, at the new epoch (what `hsbctl history` shows)."""
    import time

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp.host_switchover(b, "active silent", False, "failover", peer_closed=True)
    cp.settle_flip()
    [grant] = _said(b, "switch_granted")
    assert cp.active is b and a.fenced and _said(a, "fenced")
    kinds = [(e["kind"], e.get("host"), e["epoch"]) for e in cp.history.entries]
    assert kinds == [("failover", None, grant["epoch"]), ("fence", "host-a", grant["epoch"])], cp.history.entries


async def test_the_role_taken_after_the_actives_normal_stop_is_a_promote(tmp_path: Path) -> None:
    """The active stopped normally (SPEC §5.3, no switch) and its lease has run out: the
    standby's request is granted, and recorded as a promote after a normal stop, not as a failover
    (nothing failed; `hsbctl history` and the failover counters say so)."""
    import time

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_stopping(a)
    cp.stopped_at = time.monotonic() - 10 * cp.host_timeout  # (its lease long over)
    assert cp.stop_lease_left() <= 0
    cp.host_switchover(b, "operator", False, "failover", peer_closed=True)
    cp.settle_flip()
    assert cp.active is b and _said(b, "switch_granted")
    [entry] = cp.history.entries
    assert (entry["kind"], entry["why"]) == ("promote", "promote after normal stop"), entry
    # the host that had stopped normally is named: `from` is nobody (no active at the grant)
    assert (entry["from"], entry["stopped"]) == (None, "host-a"), entry
    assert (cp.switchovers[-1]["from"], cp.switchovers[-1]["stopped"]) == (None, "host-a"), cp.switchovers[-1]


async def test_a_failover_after_a_release_is_timed_from_the_loss_not_the_release(tmp_path: Path) -> None:
    """The active released the role for a planned switchover and then its link closed: the
    standby's failover is no planned switchover, and its record has no release-to-grant time (the
    release was of a switchover that never came) but the loss's."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_release(a)
    a.connection_lost(None)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    cp.settle_flip()
    assert cp.active is b and _said(b, "switch_granted")
    rec = cp.switchovers[-1]
    assert rec["planned"] is False and rec["release_to_grant_ms"] is None, rec
    assert rec["loss_to_grant_ms"] is not None, rec


async def test_a_request_asked_again_during_the_restart_wait_is_deferred_once(tmp_path: Path) -> None:
    """The standby asks again (once a second, as hsbd does) while the restart's wait runs: the
    latest request is the one taken when the wait is over, under the one timer and the one
    `switchover_deferred` line of the first, not a timer and a line per request."""
    import structlog.testing

    from hsb.cp.journal.recovery import Recovered, apply

    cp = cp_core(tmp_path, 2)
    r = Recovered()
    apply(r, ["ck", 3, "host-a", 1, {}, {}], 1)
    cp.restore(r)
    b = fake_host(cp, "host-b", "standby", record=True)
    try:
        with structlog.testing.capture_logs() as logs:
            cp.host_switchover(b, "active lost", False, "failover", req=1, peer_closed=True)
            timer = cp.deferred_grant
            cp.host_switchover(b, "active lost", False, "failover", req=2, peer_closed=True)
        assert timer is not None and cp.deferred_grant is timer
        assert [e["event"] for e in logs].count("switchover_deferred") == 1, logs
        assert cp.deferred_ask is not None and cp.deferred_ask[-1] == 2
    finally:
        cp.cancel_deferred_grant()


@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_a_closed_active_link_alone_waits_out_its_lease_and_a_closed_peer_link_grants_at_once(tmp_path: Path, how: str) -> None:
    """Found by the slow-links walk-through (docs/design.md §6, "A closed link needs a second
    witness"): the active's link closed by its end may be a middlebox's reset the host never saw,
    so the standby's request is granted only once the lease the active may hold has surely run out
    (its last frame + host_lease + the margin), unless the request says the standby's peer link
    from it closed too; then at once. A request of an older hsbd, which says nothing, waits."""
    import asyncio
    import time

    from hsb.cp.config import LEASE_MARGIN
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    a.connection_lost(None if how == "eof" else ConnectionResetError(104, "Connection reset by peer"))
    b.data_received(encode({"t": "switchover", "reason": "active lost", "planned": False, "req": 1}))  # (no peer_closed)
    assert cp.active is a and cp.deferred_grant is not None and not _said(b, "switch_granted") and not _said(b, "switch_refused")
    b.data_received(encode({"t": "switchover", "reason": "peer link lost: eof", "planned": False, "req": 2, "peer_closed": True}))
    assert cp.active is b and cp.deferred_grant is None  # at once: both of host-a's links closed
    assert [g["req"] for g in _said(b, "switch_granted")] == [2]
    # the same loss without the second witness: granted by the deferred request, once the lease ran out
    (tmp_path / "2").mkdir()
    cp2 = cp_core(tmp_path / "2", 2)
    a2 = fake_host(cp2, "host-a", "active")
    b2 = fake_host(cp2, "host-b", "standby", record=True)
    a2.connection_lost(None)
    cp2.host_switchover(b2, "active lost", False, "failover")
    assert cp2.active is a2 and cp2.deferred_grant is not None
    t0 = time.monotonic()
    while cp2.active is not b2 and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.01)
    assert cp2.active is b2, "the deferred request was never granted"
    assert time.monotonic() >= a2.last_rx + cp2.host_lease + LEASE_MARGIN - 0.005  # (not before the lease surely ran out)


async def test_a_released_active_whose_link_closed_is_granted_away_at_once_to_a_planned_request(tmp_path: Path) -> None:
    """A planned switchover: the active released the role (nothing more is delivered to it), then
    its link closed. The standby's planned request is granted at once, as for a released active
    whose link is still open: no lease of a role given up is waited out."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_release(a)
    a.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    cp.host_switchover(b, "planned", True, "failover")
    assert cp.active is b and cp.deferred_grant is None and _said(b, "switch_granted")


async def test_a_host_registering_as_the_active_while_the_old_lease_may_run_is_refused(tmp_path: Path) -> None:
    """Found by review (session 67): a reset of the active's link by something in between left
    the role free to a host registering as the active (hsbd@active started again on the other
    machine, a rolling upgrade), past the lease the old active may still serve on. It is refused
    (`active_exists`: it rejoins as the standby and asks as one) until that lease has surely run
    out, and then takes the role."""
    import asyncio
    import time

    from hsb.cp.config import LEASE_MARGIN

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    a.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    b = fake_host(cp, "host-b", "active", record=True)
    [refusal] = [m for m in b.transport.frames() if m["t"] == "error"]
    assert refusal["code"] == "active_exists" and cp.active is a, refusal
    while time.monotonic() < a.last_rx + cp.host_lease + LEASE_MARGIN:
        await asyncio.sleep(0.02)
    c = fake_host(cp, "host-b", "active", record=True)
    assert cp.active is c and not [m for m in c.transport.frames() if m["t"] == "error"]


async def test_a_standbys_peer_closed_refused_before_the_cp_saw_the_close_still_counts_soon_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review (session 67): the standby heard its peer link close first and asked with
    `peer_closed`, refused (the active's host link still open here: the CP hears of its close
    later, its loop busy or the close queued behind replies); its request after the CP's notice,
    more than a second later, no longer says it. The refused word counts for PEER_CLAIM_S: the
    grant is at once, not after the lease; past that it no longer counts."""
    from hsb.cp import arbitration

    for late, at_once in ((False, True), (True, False)):
        d = tmp_path / str(late)
        d.mkdir()
        cp = cp_core(d, 2)
        a = fake_host(cp, "host-a", "active")
        b = fake_host(cp, "host-b", "standby", record=True)
        cp.host_switchover(b, "peer link lost: eof", False, "failover", peer_closed=True)
        assert _said(b, "switch_refused") and cp.active is a
        if late:
            monkeypatch.setattr(arbitration, "PEER_CLAIM_S", 0.0)
        a.connection_lost(None)
        cp.host_switchover(b, "active lost (eof, told by the cp)", False, "failover")
        assert (cp.active is b) == at_once and (cp.deferred_grant is None) == at_once, late
        cp.cancel_deferred_grant()
