"""A CP that heard neither host for a while (hsb.cp.alone): the active's loss that no live standby
witnessed keeps its sessions for the active's return and is told to a standby only once the
active had time to register again. Found by the packet-loss walk-through (the CP machine silent
for 5 s: every terminal told its session closed, and once the healthy active fenced); the same
with hsbcpd stopped for 3 s (SIGSTOP: tests/test_cp_blip.py runs it with real processes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import hsb.cp.alone as alone_mod
import hsb.cp.core as core_mod
from tests.support.cpcore import cp_core, fake_host, pair_with_sessions, recording_terminal
from tests.support.logrec import RecordingLog

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


def _sessions(p: Any) -> list[tuple[str, str | None]]:
    p.flush()
    return [(m["state"], m.get("reason")) for m in p.transport.frames() if m.get("t") == "session"]


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    r = RecordingLog()
    monkeypatch.setattr(alone_mod, "log", r)
    monkeypatch.setattr(core_mod, "log", r)
    return r


def _alone(tmp_path: Path) -> tuple[Any, Any, Any]:
    """host-a active (instance a-1) with T00001's session; no standby any more (its link lost
    first): (cp, host-a, T00001's connection)."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    a.instance = "a-1"
    b.connection_lost(None)  # (the standby's link first: its sessions go, the active's stay)
    assert cp.standby is None and cp.terms["T00001"].active is not None
    return cp, a, p


def _tick_later(cp: Any, by: float) -> None:
    """The CP's tick as if `by` seconds had passed for the waits of hsb.cp.alone (no stall of its own)."""
    if cp.kept_for is not None:
        cp.kept_for = (cp.kept_for[0], cp.kept_for[1] - by)
    if cp.quiet_until is not None:
        cp.quiet_until -= by
    cp._last_tick = time.monotonic()
    cp.tick()


async def test_the_active_lost_with_no_standby_keeps_its_sessions_and_adopts_them_when_it_registers_again(tmp_path: Path, rec: RecordingLog) -> None:
    cp, a, p = _alone(tmp_path)
    before = _sessions(p)
    a.connection_lost(None)  # its link ends (the CP stalled, or its network): no standby to take over
    [kept] = rec.events("sessions_kept_for_return")
    assert kept["host"] == "host-a" and kept["sessions"] == 1, kept
    assert _sessions(p) == before and cp.terms["T00001"].active is not None  # the terminal is told nothing
    a2 = fake_host(cp, "host-a")
    a2.instance = "a-1"  # the same process on a new link
    cp.host_register(a2, "active", 1)
    assert rec.events("sessions_kept_returned") and cp.kept_for is None
    assert ("closed", "active host lost, no standby") not in _sessions(p), _sessions(p)
    _tick_later(cp, alone_mod.RETURN_WAIT_S + 1)  # (the wait, had it still run, is over: nothing closes)
    assert ("closed", "active host lost, no standby") not in _sessions(p), _sessions(p)


async def test_the_kept_sessions_are_closed_once_the_wait_ends_with_nobody_back(tmp_path: Path, rec: RecordingLog) -> None:
    cp, a, p = _alone(tmp_path)
    a.connection_lost(None)
    _tick_later(cp, alone_mod.RETURN_WAIT_S / 2)
    assert ("closed", "active host lost, no standby") not in _sessions(p)
    _tick_later(cp, alone_mod.RETURN_WAIT_S)
    assert _sessions(p)[-1] == ("closed", "active host lost, no standby") and cp.terms["T00001"].active is None


async def test_another_process_registering_as_the_active_closes_the_kept_sessions_first(tmp_path: Path, rec: RecordingLog) -> None:
    """host-a started again (a new process: its sessions are gone) or host-b started as the
    active: the terminals are told their session closed, as at the loss, then get new ones."""
    cp, a, p = _alone(tmp_path)
    a.connection_lost(None)
    a.last_rx -= cp.host_lease + 1  # (the lease it may have held has surely run out)
    a2 = fake_host(cp, "host-a")
    a2.instance = "a-2"
    cp.host_register(a2, "active", 1)
    assert cp.active is a2 and not rec.events("sessions_kept_returned")
    assert ("closed", "active host lost, no standby") in _sessions(p), _sessions(p)


async def test_a_standby_registering_during_the_loss_is_told_only_after_the_wait(tmp_path: Path, rec: RecordingLog) -> None:
    """The standby registers first after the blackout: it is told of the active's loss only once
    the active had RETURN_WAIT_S to register again; the active back in time, never."""
    cp, a, p = _alone(tmp_path)
    a.connection_lost(None)
    b = fake_host(cp, "host-b", "standby", record=True)
    [later] = [e for e in rec.events("active_loss_told_later") if e["standby"] == "host-b"]
    assert later["host"] == "host-a", later
    _tick_later(cp, 0.0)
    assert not _said(b, "active_lost")
    a2 = fake_host(cp, "host-a")
    a2.instance = "a-1"
    cp.host_register(a2, "active", 1)
    _tick_later(cp, alone_mod.RETURN_WAIT_S + 1)
    assert not _said(b, "active_lost") and cp.active is a2
    assert ("closed", "active host lost, no standby") not in _sessions(p)


async def test_a_standby_registering_during_the_loss_is_told_once_the_wait_ends(tmp_path: Path, rec: RecordingLog) -> None:
    cp, a, p = _alone(tmp_path)
    a.connection_lost(None)
    b = fake_host(cp, "host-b", "standby", record=True)
    _tick_later(cp, alone_mod.RETURN_WAIT_S / 2)
    assert not _said(b, "active_lost")
    _tick_later(cp, alone_mod.RETURN_WAIT_S)
    assert [m["why"] for m in _said(b, "active_lost")] == ["eof"]
    # and granted: the kept session without a standby session at host-b is closed (told), not
    # cut off the classic way (its connection stays)
    cp.host_switchover(b, "active lost (eof, told by the cp)", False, "failover", peer_closed=True)
    assert cp.active is b
    assert ("closed", "active host lost, no standby") in _sessions(p) and not p.closed


async def test_a_loss_a_live_standby_saw_is_told_at_once(tmp_path: Path, rec: RecordingLog) -> None:
    """The ordinary failover is not slowed: the standby heard within host_timeout witnesses it."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_timeout = 30.0
    cp._last_tick = time.monotonic()  # (no stall of the CP's own)
    a.connection_lost(None)
    assert [m["why"] for m in _said(b, "active_lost")] == ["eof"] and not rec.events("active_loss_told_later")


async def test_a_loss_seen_just_after_the_cp_stalled_is_told_later(tmp_path: Path, rec: RecordingLog) -> None:
    """This process did not run for a while: the standby's frames read just now are of before
    the stall, so they witness nothing; the active may be back in a moment."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_timeout = 30.0
    cp._last_tick = time.monotonic() - cp.host_timeout  # (its loop held up that long)
    a.connection_lost(None)
    assert not _said(b, "active_lost") and rec.events("active_loss_told_later")


async def test_a_flip_after_the_wait_keeps_a_kept_session_with_a_standby_session_there(tmp_path: Path) -> None:
    """The kept session whose terminal has a standby session at the grantee is flipped there, as
    in any failover (only those without one are closed)."""
    cp = cp_core(tmp_path, 2)
    cp.host_timeout = 30.0
    a = fake_host(cp, "host-a", "active", record=True)
    p = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    a.connection_lost(None)
    assert cp.kept_for is not None
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_open(b, "T00001", "standby", {})  # (reopened from the ring in the wait)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.active is b
    assert ("closed", "active host lost, no standby") not in _sessions(p) and not p.closed
