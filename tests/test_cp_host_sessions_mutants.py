"""Tests from a mutation audit of hsb/cp/host_sessions.py and hsb/cp/notices.py: the hosts'
session frames at the CP (open, opened, close, refusals, standby sessions), the planned
handover's wait for the standby sessions still owed (SPEC §5.2, §5.3), and the switch notices
owed after a grant (SPEC §5.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, flipped, recording_terminal

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


async def test_a_new_active_is_not_asked_for_a_session_of_a_terminal_that_said_bye(tmp_path: Path) -> None:
    """A terminal that said bye, still connected while its message is answered as a logoff's, is
    not a terminal a new active is asked to open a session for: its run has ended."""
    cp = cp_core(tmp_path, 2)
    t = recording_terminal(cp, "T00001")
    recording_terminal(cp, "T00002")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"x")
    t.data_received(encode({"t": "bye"}))
    assert term.leaving and term.conn is not None and term.active is None
    a = fake_host(cp, "host-a", "active", record=True)
    assert [f["terminal"] for f in _said(a, "session_request")] == ["T00002"]


async def test_an_active_session_opened_for_a_new_run_is_not_closed_as_the_old_runs_logoff(tmp_path: Path) -> None:
    """A terminal said bye with no session (the active adopting after a CP restart), then logged
    on again and the active opened it a session: that session is the new run's. The adoption
    naming it afterwards does not close it as the earlier run's logoff."""
    from tests.support.cpcore import adopting_active

    cp, a = adopting_active(tmp_path)
    t = recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    t.data_received(encode({"t": "bye"}))
    assert term.bye_unannounced and term.active is None
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    assert _said(a, "opened")
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert not [f for f in _said(a, "session_closed") if f["terminal"] == "T00001"]
    assert term.active is not None and term.active.host is a


def _pair(tmp_path: Path, terminals: int) -> tuple[Any, Any, Any]:
    """A CP with host-a active and host-b standby (both recording), every terminal connected and
    holding an active session at host-a, none at host-b yet."""
    cp = cp_core(tmp_path, terminals)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    for name in sorted(cp.terms):
        recording_terminal(cp, name)
        cp.host_open(a, name, "active", {})
    return cp, a, b


async def test_a_handover_going_on_after_a_batch_open_ignores_the_rest_of_the_batch(tmp_path: Path) -> None:
    """The handover waits for T00001's standby session only; the standby's batch opens T00001 and
    then T00002: the first ends the wait (the grant goes), and the second, opened after it, is
    simply opened, not taken as one more owed to a handover that has ended."""
    cp, a, b = _pair(tmp_path, 2)
    cp.host_open(b, "T00002", "standby", {})
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None and cp._handover.owed == {"T00001"}
    cp.host_open_batch(b, [("T00001", {}), ("T00002", {})])
    assert cp._handover is None
    [batch] = _said(b, "opened_batch")
    assert batch["terminals"] == ["T00001", "T00002"]


async def test_a_handover_going_on_cancels_its_wait_timer(tmp_path: Path) -> None:
    """The standby session a handover waited for opened: the grant goes, and the at-most-2-s
    timer of that wait is cancelled (else it fires a second handover of the old active later)."""
    cp, a, b = _pair(tmp_path, 1)
    cp.host_release(a)
    cp.host_handover(a)
    h = cp._handover
    assert h is not None
    cp.host_open(b, "T00001", "standby", {})
    assert cp._handover is None and h.timer.cancelled()


async def test_a_second_handover_frame_ends_the_first_wait(tmp_path: Path) -> None:
    """The released active sends its handover again while the first one still waits for a
    standby session: the first wait ends (its timer cancelled, so it cannot grant early behind
    the second wait's back); one wait goes on."""
    cp, a, b = _pair(tmp_path, 1)
    cp.host_release(a)
    cp.host_handover(a)
    first = cp._handover
    assert first is not None
    cp.host_handover(a)
    try:
        assert first.timer.cancelled()
        assert cp._handover is not None and cp._handover is not first and cp._handover.owed == {"T00001"}
    finally:
        cp.end_handover()


async def test_a_handover_refused_without_standby_answers_a_logoff_held_meanwhile(tmp_path: Path) -> None:
    """A terminal with no session logged off holding a message while the active was released
    (it got no new work): the handover is refused for want of a standby, and the logoff's message
    goes to the active then, as its release is undone."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.host_release(a)
    cp.terminal_msg(term, 1, b"x")
    t.data_received(encode({"t": "bye"}))
    assert term.leaving and not _said(a, "deliver")
    cp.host_handover(a)
    assert _said(a, "handover_refused")[0]["code"] == "no_standby"
    assert [f["id"] for f in _said(a, "deliver")] == [1]


async def test_a_handover_names_at_most_the_first_few_refused_terminals_in_its_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every terminal's standby session refused: the handover's warning counts them all and
    names only the first REFUSED_NAMED, as the switch record does."""
    from hsb.cp import host_sessions
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(host_sessions, "log", rec)
    n = host_sessions.REFUSED_NAMED + 2
    cp, a, b = _pair(tmp_path, n)
    for name in sorted(cp.terms):
        cp.host_close(b, name, "standby", refused="attrs differ")
    cp.host_release(a)
    cp.host_handover(a)
    [warning] = rec.events("handover_without_refused_standby_sessions")
    assert warning["count"] == n and warning["terminals"] == sorted(cp.terms)[: host_sessions.REFUSED_NAMED]
    await flipped(cp)
    named = cp.switchovers[-1]["refused_standby"]
    assert named["count"] == n and [e["terminal"] for e in named["terminals"]] == sorted(cp.terms)[: host_sessions.REFUSED_NAMED]


async def test_a_handover_begun_again_before_the_rewait_is_not_restarted_by_it(tmp_path: Path) -> None:
    """The standby registered again on a new link while a handover waited: the wait is to begin
    again on the new link (a loop turn later). The active's handover frame came first and began
    it already: that wait stands (its timer, its bound of HANDOVER_WAIT_S), not begun a third time."""
    import asyncio

    cp, a, b = _pair(tmp_path, 1)
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None
    b.instance = "run-1"
    b2 = fake_host(cp, "host-b", record=True)
    b2.instance = "run-1"
    cp.host_register(b2, "standby", 1)
    assert cp.standby is b2 and cp._handover is None
    cp.host_handover(a)
    second = cp._handover
    assert second is not None and second.standby is b2
    try:
        await asyncio.sleep(0)  # (one loop turn: the registration's call_soon of the rewait runs)
        assert cp._handover is second and not second.timer.cancelled()
    finally:
        cp.end_handover()


async def test_a_batch_that_opens_nothing_gets_no_opened_batch(tmp_path: Path) -> None:
    """A standby's batch naming only a terminal the CP does not define: its `open_failed`, and no
    empty `opened_batch` besides."""
    cp, a, b = _pair(tmp_path, 1)
    cp.host_open_batch(b, [("NOSUCH", {})])
    assert [f["terminal"] for f in _said(b, "open_failed")] == ["NOSUCH"]
    assert not _said(b, "opened_batch")


async def test_a_batch_standby_open_during_a_flip_flips_that_terminal_first(tmp_path: Path) -> None:
    """A planned switchover's flip is going; the demoted host (the standby now) opens, in a batch,
    the standby session of a terminal the flip has not reached: that terminal is flipped first
    (its session at the new active, its standby one the demoted host's), as a single open does."""
    from tests.support.cpcore import flip_pair, switch

    cp, a, b, names, _ = flip_pair(tmp_path, 24, False, {})
    switch(cp, a, b, True)
    f = cp.flipping
    assert f is not None and cp.standby is a
    x = names[-1]
    t = cp.terms[x]
    assert t.standby is not None and t.standby.host is b, "the flip should not have reached it yet"
    cp.host_open_batch(a, [(x, {})])
    assert t.active is not None and t.active.host is b
    assert t.standby is not None and t.standby.host is a


async def test_the_last_switch_notice_goes_when_a_slice_ends_just_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """33 switched terminals and a slice that ends at every 32nd notice: the 33rd is written in
    the next slice, so when the notices are recorded as sent none is still owed."""
    from hsb.cp import notices
    from tests.support.cpcore import flip_pair, flipped, switch
    from tests.support.inproc import until

    monkeypatch.setattr(notices, "SLICE_S", -1.0)  # (every slice ends at its first check)
    cp, a, b, names, _ = flip_pair(tmp_path, 33, False, {})
    switch(cp, a, b, False)
    await flipped(cp)
    rec = cp.switchovers[-1]
    await until(lambda: rec.get("notices_sent_ms") is not None, "the notices recorded as sent")
    assert [n for n in names if cp.terms[n].notice is not None] == []


async def test_a_standby_close_of_a_session_the_flip_made_active_asks_for_a_new_one(tmp_path: Path) -> None:
    """After a failover's flip, the new active's close of a terminal's standby session (sent
    before it heard of its grant) is of the session now active there, which it no longer holds:
    the CP takes it as closed and asks the new active for a new session."""
    from tests.support.cpcore import flip_pair, flipped, switch

    cp, a, b, names, _ = flip_pair(tmp_path, 4, False, {})
    switch(cp, a, b, False)
    await flipped(cp)
    x = names[0]
    t = cp.terms[x]
    assert t.active is not None and t.active.host is b
    before = [m["terminal"] for m in _said(b, "session_request")].count(x)
    cp.host_close(b, x, "standby")
    assert t.active is None
    assert [m["terminal"] for m in _said(b, "session_request")].count(x) == before + 1


async def test_a_release_from_the_standby_is_ignored(tmp_path: Path) -> None:
    """Only the active can release the role: the standby's `release` is not answered `released`,
    and the active keeps getting new work."""
    cp, a, b = _pair(tmp_path, 1)
    cp.host_release(b)
    assert not _said(b, "released") and not b.released and not a.released


async def test_a_handover_does_not_wait_for_terminals_that_cannot_have_a_standby_session(tmp_path: Path) -> None:
    """Terminals not standby-capable never get a standby session: a handover does not wait for
    them (every terminal paused HANDOVER_WAIT_S for nothing); it is granted at once."""
    cp = cp_core(tmp_path, 2, standby_capable=False)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    for name in sorted(cp.terms):
        recording_terminal(cp, name)
        cp.host_open(a, name, "active", {})
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is None and (cp.granting is b or cp.active is b)


async def test_a_handover_to_a_standby_whose_link_closed_is_refused(tmp_path: Path) -> None:
    """The standby's link is closing (its loss not yet handled): it cannot take the role, so the
    active's handover is refused for want of a usable standby, and the active serves on."""
    cp, a, b = _pair(tmp_path, 1)
    cp.host_open(b, "T00001", "standby", {})
    cp.host_release(a)
    b.close()
    assert cp.standby is b and not b.usable
    cp.host_handover(a)
    assert _said(a, "handover_refused")[0]["code"] == "no_standby"
    assert cp.active is a and not a.released
