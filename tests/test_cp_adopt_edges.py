"""The adoption of the active's sessions (hsb.cp.adopt) at its edges, in-process: `resume_window
= 0` turns it off (the active is not asked, every terminal is asked a session for); `adopt` frames
of an active demoted meanwhile are not the active's sessions once the grant stands; and what it
named while an undone grant was made durable is delivered to only after that grant, once; a
session named again after its terminal's logoff is closed as one; and an adopted session taken
over by a new link of the active expires at that link, not silently at the old one's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import HeldJournal, adopting_active, cp_core, fake_host, recording_terminal
from tests.support.inproc import until

pytestmark = pytest.mark.timeout(30)


def _frames(h: Any, t: str) -> list[dict[str, Any]]:
    h.flush()
    return [f for f in h.transport.frames() if f["t"] == t]


async def test_with_resume_window_0_an_active_that_can_adopt_is_not_asked_to(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2, cp="resume_window = 0\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    recording_terminal(cp, "T00001")  # back before the active registered
    cp.host_register(a, "active", 1)
    await until(lambda: cp.announced, "the registration")
    assert not a.adopting
    assert [f["adopt"] for f in _frames(a, "registered")] == [False]
    assert [f["terminal"] for f in _frames(a, "session_request")] == ["T00001"]  # asked at once


async def test_adopt_frames_of_an_active_demoted_by_a_grant_that_stands_adopt_nothing(tmp_path: Path) -> None:
    """host-a names sessions while a planned grant to host-b is made durable: kept aside in case
    the role comes back; the grant stands, so they are nobody's: a terminal that comes back then
    is asked a session of host-b, not told of one at host-a."""
    cp, a = adopting_active(tmp_path)
    cp.host_adopt(a, [("T00001", {})], last=False)
    b = fake_host(cp, "host-b", "standby", record=True)
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record
    assert a.role == "demoting" and a.adopt_cut
    a._handle({"t": "adopt", "epoch": a.epoch, "items": [["T00002", {}]], "last": True})
    assert cp.terms["T00002"].active is None, "a demoting host's session taken for the active's"
    held.release()
    await until(lambda: cp.active is b and cp.announced and cp.flipping is None, "the grant to host-b")
    assert cp.terms["T00002"].active is None and not a.adopt_gap
    t2 = recording_terminal(cp, "T00002")
    assert [f["terminal"] for f in _frames(b, "session_request")] == ["T00002"]
    t2.flush()
    assert not [f for f in t2.transport.frames() if f["t"] == "session"]


async def test_a_message_of_a_terminal_named_while_a_grant_was_pending_goes_after_the_grant_back(tmp_path: Path) -> None:
    """host-a names T00001's session (back, message 1 held) while a planned grant to host-b is
    made durable; host-b is lost and host-a gets the role back. What it named then is taken when
    the role comes back, but nothing is delivered there: hsbd drops what it is handed before
    its `switch_granted`, and the grant's flip delivers message 1 after it, once."""
    cp, a = adopting_active(tmp_path)
    b = fake_host(cp, "host-b", "standby")
    recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"one")  # held, not delivered: no session yet
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    assert cp.active is b and a.adopt_cut
    a._handle({"t": "adopt", "epoch": a.epoch, "items": [["T00001", {}]], "last": True})  # kept aside
    b.connection_lost(None)  # the grantee lost before its epoch is durable: host-a gets the role back
    held.release()
    await until(lambda: cp.active is a and cp.announced and cp.flipping is None, "the role back at host-a")
    assert term.active is not None and term.active.host is a
    a.flush()
    frames = a.transport.frames()
    granted = max(i for i, f in enumerate(frames) if f["t"] == "switch_granted")
    assert frames[granted]["epoch"] == cp.epoch
    delivered = [(i > granted, f["id"]) for i, f in enumerate(frames) if f["t"] == "deliver" and f["terminal"] == "T00001"]
    assert delivered == [(True, 1)], delivered


async def test_a_session_named_again_after_its_terminal_logged_off_is_closed_as_a_logoff(tmp_path: Path) -> None:
    """The active names T00001 (back), T00001 says bye (its session closed at the active as a
    logoff), and a later `adopt` frame, sent before the active read that, names it again: it is
    closed again as a logoff, not adopted for a terminal that left (it would expire as a
    disconnect `resume_window` later)."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 30\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.host_adopt(a, [("T00001", {})], last=False)
    assert term.active is not None
    cp.terminal_bye(term)
    assert term.leaving and term.active is None
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert term.active is None, "adopted for a terminal that logged off"
    reasons = [f["reason"] for f in _frames(a, "session_closed") if f["terminal"] == "T00001"]
    assert reasons == ["logoff", "logoff"], reasons


async def test_an_adopted_session_taken_over_by_a_new_link_of_the_active_expires_at_that_link(tmp_path: Path) -> None:
    """The active's link is replaced during the window (it registers again and names the
    session again): the old link's expiry passes it over (not its session any more), and the new
    link's closes it at the new link, so the active does not keep it open for good."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 0.2\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T00001", {})], last=True)  # its terminal not back
    a.connection_lost(None)
    a2 = fake_host(cp, "host-a", record=True)
    a2.adopts = True
    cp.host_register(a2, "active", 1)
    await until(lambda: cp.active is a2 and cp.announced and a2.adopting, "the new link registered")
    cp.resume_window = 0.4  # (as a reload sets it: the new link's expiry comes after the old link's)
    cp.host_adopt(a2, [("T00001", {})], last=True)
    term = cp.terms["T00001"]
    assert term.active is not None and term.active.host is a2
    await until(lambda: term.active is None, "the expiry at the new link")
    assert [f["reason"] for f in _frames(a2, "session_closed") if f["terminal"] == "T00001"] == ["disconnect"]
