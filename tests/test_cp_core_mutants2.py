"""Tests from the second part of a mutation audit of hsb/cp/core.py (after
tests/test_cp_core_mutants.py): a stopping frame from a host that is not the active, a planned
switchover's wait ended by the active's stop or loss, the grant's host lost before it took
effect, a registration made durable for a link already closed, the recorded active not back
after a restart, and the tick (its own stalls, a silence heard again). Each test names a
behaviour no other test pinned (docs/design.md, docs/protocol.md, SPEC §5.3-§5.5)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import HeldJournal, cp_core, fake_host, pair_with_sessions, recording_terminal

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    """The frames of type `t` the CP wrote to the recording connection `h`."""
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


def _pair(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """`pair_with_sessions`, its host_timeout 30 s: a loaded machine's delay between a test's
    steps is no silence of a host."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_timeout = 30.0
    return cp, a, b, p


def _tick_now(cp: Any) -> None:
    """A tick with no stall of the CP's own before it."""
    cp._last_tick = time.monotonic()
    cp.tick()


async def test_a_stopping_frame_from_the_standby_changes_nothing(tmp_path: Path) -> None:
    """Only the active's `stopping` is a normal termination of the role: the standby's (or a
    fenced host's) leaves the active, its sessions, the recorded active and the terminals as
    they were, and nobody is told `stopped` or `active_lost`."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_stopping(b)
    assert cp.active is a and cp.recorded_active == "host-a" and cp.active_stopped_normally is None
    assert cp.terms["T00001"].active is not None and cp.stop_lease_left() == 0
    assert not _said(b, "stopped") and not _said(b, "active_lost") and not _said(a, "stopped")
    assert not [m for m in _said(p, "session") if m["state"] == "closed"]


def _waiting_handover(tmp_path: Path) -> tuple[Any, Any, Any]:
    """A, released, hands over to B, which has no standby session for T00001 yet: the handover
    waits for it. (cp, A, B), both recording."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None and cp._handover.owed == {"T00001"}
    return cp, a, b


async def test_a_normal_stop_ends_a_planned_switchovers_wait(tmp_path: Path) -> None:
    """The active stops normally while its handover waits for standby sessions: the wait ends
    with the role (its timer cancelled), and the standby session opened afterwards grants
    nothing and tells the stopped host nothing."""
    cp, a, b = _waiting_handover(tmp_path)
    h = cp._handover
    cp.host_stopping(a)
    assert cp._handover is None and h.timer.cancelled()
    cp.host_open(b, "T00001", "standby", {})
    assert not _said(a, "handover_refused") and cp.active is None and cp.epoch == 1


async def test_the_actives_loss_ends_its_handovers_wait_for_good(tmp_path: Path) -> None:
    """The active's link is lost while its handover waits: the wait ends and does not begin
    again (the standby hears of the loss and takes over by a failover, not by that handover)."""
    cp, a, b = _waiting_handover(tmp_path)
    h = cp._handover
    a.connection_lost(None)
    assert cp._handover is None and h.timer.cancelled()
    assert [m["why"] for m in _said(b, "active_lost")] == ["eof"]


async def test_the_host_granted_the_role_lost_before_the_grant_took_effect_drops_its_standby_sessions(tmp_path: Path) -> None:
    """A planned switchover grants B; B's link is lost before the epoch is durable: B's standby
    sessions go at once, and the terminals keep their sessions at A, which is not reported lost
    (the grant is undone once durable: A serves on)."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a)
    assert cp.granting is b and cp.demoting is a
    b.connection_lost(None)
    assert cp.terms["T00001"].standby is None and cp.counts.standby == 0
    assert cp.terms["T00001"].active is not None and cp.loss is None
    assert not [m for m in _said(p, "session") if m["state"] == "closed"]
    held.release()
    assert cp.active is a and cp.terms["T00001"].active is not None


async def test_a_registration_made_durable_after_its_link_closed_announces_no_active(tmp_path: Path) -> None:
    """A registers as the active; the CP closes its link before the epoch is durable. When the
    record is durable, A is not announced: another host registering as the active afterwards
    is not refused as if A held the role with its link down."""
    cp = cp_core(tmp_path, 2)
    held = HeldJournal(cp)
    a = fake_host(cp, "host-a", "active", record=True)
    a.closed_here = True
    a.connection_lost(None)
    held.release()
    assert not cp.announced and not _said(a, "registered")
    b = fake_host(cp, "host-b", "active", record=True)
    assert not _said(b, "error") and cp.active is b
    held.release()
    assert [m["epoch"] for m in _said(b, "registered")] == [2]


def _restarted(tmp_path: Path, waited: float) -> Any:
    """A CP restarted `waited` s ago whose journal named host-a the active (not back yet)."""
    cp = cp_core(tmp_path, 1)
    cp.recorded_active = "host-a"
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    cp.recovered_at = time.monotonic() - waited
    return cp


async def test_the_recorded_active_is_waited_for_before_the_standby_hears_it_is_not_back(tmp_path: Path) -> None:
    """After a restart the standby is told the recorded active is not back only once the wait
    (restart_lease_s) is over; and not at all if that host registered again meanwhile."""
    cp = _restarted(tmp_path, 0.0)
    b = fake_host(cp, "host-b", "standby", record=True)
    _tick_now(cp)
    assert not _said(b, "active_lost") and cp.recorded_active == "host-a"
    cp = _restarted(tmp_path, 0.0)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1
    a.last_rx = time.monotonic()
    _tick_now(cp)
    assert not _said(b, "active_lost") and cp.active is a


async def test_the_recorded_active_not_back_is_owed_to_a_standby_that_registers_again(tmp_path: Path) -> None:
    """The standby was told the recorded active is not back; its link is lost (its request gone
    with it): the standby registering again is told once more, until a host holds the role."""
    cp = _restarted(tmp_path, 0.0)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1
    _tick_now(cp)
    assert [m["why"] for m in _said(b, "active_lost")] == ["not back after the CP restarted"]
    b.connection_lost(None)
    b2 = fake_host(cp, "host-b", "standby", record=True)
    assert [(m["host"], m["why"]) for m in _said(b2, "active_lost")] == [("host-a", "not back after the CP restarted")]


async def test_a_resume_said_twice_tells_the_not_back_twice(tmp_path: Path) -> None:
    """The recorded active not back, the operator pauses and resumes twice: each resume tells the
    standby again (its request of after the first may have been refused, or lost)."""
    cp = _restarted(tmp_path, 0.0)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1
    _tick_now(cp)
    for _ in range(2):
        cp.set_paused(True, "test")
        cp.set_paused(False, "test")
    assert len(_said(b, "active_lost")) == 3


async def test_a_stall_of_the_cp_of_over_half_the_timeout_defers_the_judgement_once(tmp_path: Path) -> None:
    """The CP's own loop did not run for over host_timeout/2 (under host_timeout): the silence of
    the hosts is not judged at that tick, but at the next, even if that one comes late too; after
    a tick on time, the next stall defers it again."""
    cp, a, b, p = _pair(tmp_path)
    a.last_rx = b.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp._last_tick = time.monotonic() - 0.75 * cp.host_timeout
    cp.tick()
    assert not _said(b, "active_lost") and not b.closed
    cp._last_tick = time.monotonic() - 0.75 * cp.host_timeout
    a.last_rx = b.last_rx = time.monotonic()
    cp.tick()  # (judged: both heard)
    a.last_rx = b.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp._last_tick = time.monotonic() - 0.75 * cp.host_timeout
    cp.tick()
    assert not _said(b, "active_lost") and not b.closed
    cp._last_tick = time.monotonic() - 0.75 * cp.host_timeout
    b.last_rx = time.monotonic()
    cp.tick()
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent"]


async def test_the_tick_ends_an_expired_switch_record_and_sweeps_unread_connections(tmp_path: Path) -> None:
    """Each tick not deferred by a stall ends a switch record past its deadline (no reply came
    to end it) and asks after the connections not read (sweep_unread, with the tick's time)."""
    from hsb.cp.switchrec import DEADLINE_S, AfterSwitch

    cp, a, b, p = _pair(tmp_path)
    swept: list[float] = []
    cp.sweep_unread = swept.append
    sw = cp.after_switch = AfterSwitch(time.monotonic() - DEADLINE_S - 1, {"kind": "failover", "epoch": cp.epoch})
    sw.left, sw.counting = 1, False  # (a terminal still not served, the flip done)
    a.last_rx = b.last_rx = time.monotonic()
    _tick_now(cp)
    assert cp.after_switch is None and len(swept) == 1


def _silent_once(cp: Any, a: Any, b: Any) -> Any:
    """The standby heard (far ahead), the active silent past the timeout, one tick: the loss the
    CP noticed (told to the standby)."""
    b.last_rx = time.monotonic() + 3600
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    _tick_now(cp)
    return cp.loss


async def test_a_silent_active_heard_again_is_told_anew_at_its_next_silence(tmp_path: Path) -> None:
    """The active goes silent (told to the standby), is heard again (the loss is over), then goes
    silent again: the standby is told again, and the second loss counts from its own noticing."""
    cp, a, b, p = _pair(tmp_path)
    first = _silent_once(cp, a, b)
    a.last_rx = time.monotonic()
    _tick_now(cp)
    assert cp.loss is None
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    _tick_now(cp)
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent", "silent"] and cp.loss != first


async def test_a_frame_heard_on_a_link_the_cp_closed_does_not_end_the_loss(tmp_path: Path) -> None:
    """The active went silent (told to the standby); a last frame arrives and the CP closes that
    link (a protocol error): the loss stays as first noticed and the standby is not told again
    when the silence outlasts the timeout once more."""
    cp, a, b, p = _pair(tmp_path)
    first = _silent_once(cp, a, b)
    a.last_rx = time.monotonic()
    a.closed_here = True
    a.connection_lost(None)
    _tick_now(cp)
    assert cp.loss == first
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    _tick_now(cp)
    assert cp.loss == first and [m["why"] for m in _said(b, "active_lost")] == ["silent"]


async def test_the_not_back_is_said_only_to_a_live_standby_and_the_role_stays_recorded_till_then(tmp_path: Path) -> None:
    """The wait after a restart is over but the standby's link closed unseen: nothing is said to
    it, and the role stays the recorded active's (another host registering as the active is
    refused); the standby registering again next is told at the next tick."""
    cp = _restarted(tmp_path, 0.0)
    b = fake_host(cp, "host-b", "standby", record=True)
    b.closed = True  # (closed, its connection_lost still to come)
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1
    _tick_now(cp)
    assert not _said(b, "active_lost") and cp.recorded_active == "host-a"
    c = fake_host(cp, "host-c", "active", record=True)
    assert [(m["code"], m.get("active")) for m in _said(c, "error")] == [("active_exists", "host-a")]
    b.connection_lost(None)
    b2 = fake_host(cp, "host-b", "standby", record=True)
    _tick_now(cp)
    assert [m["why"] for m in _said(b2, "active_lost")] == ["not back after the CP restarted"]


async def test_a_logoff_held_with_no_active_goes_to_the_host_that_registers_as_the_active(tmp_path: Path) -> None:
    """No active: a terminal sends a message and says bye, then its connection goes. The host
    that registers as the active gets that logoff's message at once, without a session (nobody
    logs on again for it)."""
    from hsb.wire.framing import encode

    cp = cp_core(tmp_path, 1)
    t = recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"x")
    t.data_received(encode({"t": "bye"}))
    t.connection_lost(None)
    a = fake_host(cp, "host-a", "active", record=True)
    assert [f["id"] for f in _said(a, "deliver")] == [1] and not _said(a, "session_request")


async def test_an_adopting_active_is_asked_for_sessions_only_once_it_named_its_own(tmp_path: Path) -> None:
    """An active that adopts (after a CP restart) is not asked for sessions at its registration:
    it names the sessions it kept first, and only then is asked for the terminals still without
    one."""
    cp = cp_core(tmp_path, 1, cp="resume_window = 30\n")
    recording_terminal(cp, "T00001")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    assert a.adopting and not _said(a, "session_request")
    cp.host_adopt(a, [], last=True)
    assert [f["terminal"] for f in _said(a, "session_request")] == ["T00001"]


async def test_the_sessions_named_while_an_undone_grant_was_pending_are_the_old_actives_again(tmp_path: Path) -> None:
    """The adopting active A hands over; the grant to B cuts A's adoption, and A, not knowing,
    names T00001's session meanwhile. B is lost before the grant took effect: the switchover is
    undone, and A, the active again, holds the session it named."""
    from tests.support.cpcore import adopting_active

    cp, a = adopting_active(tmp_path)
    b = fake_host(cp, "host-b", "standby", record=True)
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a)
    assert cp.granting is b and a.role == "demoting" and a.adopt_cut
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert cp.terms["T00001"].active is None
    b.connection_lost(None)
    held.release()
    assert cp.active is a and cp.epoch == 3
    s = cp.terms["T00001"].active
    assert s is not None and s.host is a
