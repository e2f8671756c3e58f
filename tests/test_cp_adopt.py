"""The adoption of the active's open sessions (hsb.cp.adopt), driven in-process through the CP's
own code: an adoption cut short by a change of the active role must not leave terminals without
their session afterwards, and a session adopted for a terminal not yet back, whose active is then
lost, must not make the grant treat that terminal as one that was told of its session."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.cpcore import HeldJournal, adopting_active, cp_core, fake_host, fake_terminal, recording_terminal

pytestmark = pytest.mark.timeout(60)


async def test_an_active_demoted_during_its_adoption_gets_session_requests_when_active_again(tmp_path: Path) -> None:
    """An active demoted (a planned switchover) before its last `adopt` frame never sends it; made
    active again on the same link, a terminal that logs on must still get its session (it waited
    for an adoption that had ended with the epoch)."""
    cp = cp_core(tmp_path, 3, cp="resume_window = 5\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    assert a.adopting
    b = fake_host(cp, "host-b", "standby")
    cp.host_release(a)
    cp.host_handover(a, wait=False)  # a demoted before its last adopt frame
    cp.settle_flip()
    assert cp.active is b
    cp.host_release(b)
    cp.host_handover(b, wait=False)  # a is the active again
    cp.settle_flip()
    assert cp.active is a
    fake_terminal(cp, "T00001")
    a.flush()
    assert any(f["t"] == "session_request" and f["terminal"] == "T00001" for f in a.transport.frames())
    await asyncio.sleep(0)


@pytest.mark.parametrize("standby_capable", [True, False])
async def test_a_terminal_back_while_its_adopted_sessions_host_is_lost_is_opened_at_the_grant_not_switched(
    tmp_path: Path, standby_capable: bool
) -> None:
    """The active adopted a session for a terminal not yet back, then its link was lost; the
    terminal comes back before the standby is granted. This connection was never told of that
    session: the grant must open one (or ask the new active for one), not send `switched` to a
    terminal without a session, or close it as if it had an active session without a standby one."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 30\n", standby_capable=standby_capable)
    a = fake_host(cp, "host-a")
    a.adopts = True
    cp.host_register(a, "active", 1)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_adopt(a, [("T00001", {})], last=True)
    assert cp.terms["T00001"].active is not None
    if standby_capable:
        cp.host_open(b, "T00001", "standby", {})
    a.connection_lost(None)
    t = recording_terminal(cp, "T00001")
    cp.host_switchover(b, "lost", False, peer_closed=True)
    deadline = asyncio.get_running_loop().time() + 5
    while cp.active is not b or not cp.announced:
        assert asyncio.get_running_loop().time() < deadline, "never granted"
        await asyncio.sleep(0.01)
    cp.settle_flip()
    assert not t.closed, "closed as if it had an active session"
    cp._send_owed_notice(cp.terms["T00001"])
    t.flush()
    got = [f for f in t.transport.frames() if f["t"] in ("session", "switched")]
    if standby_capable:
        assert [(f["t"], f.get("state")) for f in got] == [("session", "open")], got
    else:
        b.flush()
        assert any(f["t"] == "session_request" and f["terminal"] == "T00001" for f in b.transport.frames())
    await asyncio.sleep(0)


async def test_an_adoption_cut_short_by_a_grant_still_closes_the_sessions_whose_terminal_never_came_back(tmp_path: Path) -> None:
    """The active names a session for a terminal not back, then a planned switchover begins and
    its grantee is lost before the grant is durable: the old active is given the role back. The
    grant ended the adoption; the session it adopted must still be closed at the active once
    `resume_window` has passed without its terminal (it was forgotten: kept open for good)."""
    cp = cp_core(tmp_path, 3, cp="resume_window = 0.2\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T00001", {})], last=False)  # its last adopt frame not sent yet
    assert cp.terms["T00001"].active is not None and cp.terms["T00001"].conn is None
    b = fake_host(cp, "host-b", "standby")
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    b.connection_lost(None)  # the grantee lost before its epoch is durable: a gets the role back
    assert held.release() >= 2  # the grant to host-b, then the one back to host-a
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cp.active is not a or cp.granting is not None or not cp.announced:
        assert loop.time() < deadline, "the role never went back to host-a"
        await asyncio.sleep(0.01)
    while cp.terms["T00001"].active is not None:
        assert loop.time() < deadline, "the adopted session of a terminal that never came back was kept for good"
        await asyncio.sleep(0.02)
    a.flush()
    assert any(f["t"] == "session_closed" and f["terminal"] == "T00001" for f in a.transport.frames())
    # given the role back, host-a names on (it never heard of the cut): kept, and expired likewise
    cp.host_adopt(a, [("T00002", {})], last=True)
    assert cp.terms["T00002"].active is not None and cp.terms["T00002"].active.host is a
    while cp.terms["T00002"].active is not None:
        assert loop.time() < deadline + 5, "a session named after the cut was kept for good"
        await asyncio.sleep(0.02)
    a.flush()
    assert any(f["t"] == "session_closed" and f["terminal"] == "T00002" for f in a.transport.frames())
    assert (cp.counters["adopted"], cp.counters["adopted_expired"]) == (2, 2)


async def test_sessions_named_while_a_grant_that_cut_the_adoption_was_pending_are_adopted_when_the_role_comes_back(tmp_path: Path) -> None:
    """The active names sessions while a planned grant to the standby is being made durable (its
    adoption cut by that grant, and not the active for that moment); the grantee is lost and the
    role comes back. What it named meanwhile is its own again: a terminal connected then is told
    its session is open (served by the grant's flip), one not back has its session closed at the
    active after `resume_window`, and the last frame among them ends the adoption. Before, those
    frames were ignored: the sessions stayed open at the active for good."""
    cp = cp_core(tmp_path, 4, cp="resume_window = 0.2\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    cp.host_adopt(a, [("T00001", {})], last=False)
    b = fake_host(cp, "host-b", "standby")
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record: host-a not the active now
    assert cp.active is b and a.adopt_cut
    t3 = recording_terminal(cp, "T00003")  # logged on meanwhile: waits for its session
    # named during the gap, through the link's own dispatch (the frame of the epoch it knows)
    a._handle({"t": "adopt", "epoch": a.epoch, "items": [["T00002", {}], ["T00003", {}]], "last": True, "handed": {"T00002": 4}})
    assert not a.closed and cp.terms["T00002"].handed_floor == 4
    b.connection_lost(None)  # the grantee lost before its epoch is durable: host-a gets the role back
    assert held.release() >= 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cp.active is not a or cp.granting is not None or not cp.announced or cp.flipping is not None:
        assert loop.time() < deadline, "the role never went back to host-a"
        await asyncio.sleep(0.01)
    assert cp.terms["T00003"].active is not None and cp.terms["T00003"].active.host is a
    t3.flush()
    assert any(f.get("t") == "session" and f.get("state") == "open" for f in t3.transport.frames()), t3.transport.frames()
    assert not a.adopt_cut and not a.adopting  # its last frame, named in the gap, ended the adoption
    for name in ("T00001", "T00002"):  # never came back: closed at the active
        while cp.terms[name].active is not None:
            assert loop.time() < deadline + 5, f"{name}'s adopted session was kept for good"
            await asyncio.sleep(0.02)
    a.flush()
    closed = {f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"}
    assert {"T00001", "T00002"} <= closed and "T00003" not in closed, closed
    assert cp.counters["adopted"] == 3 and cp.counters["adopted_expired"] == 2


async def test_adopted_sessions_of_terminals_that_stayed_away_expire_a_slice_a_turn(tmp_path: Path) -> None:
    """`resume_window` after an adoption, the sessions of the terminals that never came back are
    closed `flip_slice` a turn of the event loop (100,000 in one pass were one long turn with
    nothing else relayed): with slices of 3, ten take four turns, and each is closed once."""
    cp = cp_core(tmp_path, 10, cp="resume_window = 0.1\nflip_slice = 3\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    names = sorted(cp.terms)
    turns: list[int] = []
    real = type(cp)._adopted_expire

    def expire(host: Any, todo: list[str], start: int = 0, closed: int = 0) -> None:
        turns.append(start)
        real(cp, host, todo, start, closed)

    cp._adopted_expire = expire
    cp.host_adopt(a, [(n, {}) for n in names], last=True)  # none of them connected
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    # a grant's flip going when the window ends: let finish in its own slices, not settled at once
    flip = cp.flipping = SimpleNamespace(finish=lambda: pytest.fail("the flip was settled by the expiry"))
    while len(turns) < 3:
        assert loop.time() < deadline, "the expiry never came"
        await asyncio.sleep(0.01)
    assert all(cp.terms[n].active is not None for n in names) and set(turns) == {0}, turns
    assert cp.flipping is flip
    cp.flipping = None
    turns.clear()
    while any(cp.terms[n].active is not None for n in names):
        assert loop.time() < deadline, "the adopted sessions never expired"
        await asyncio.sleep(0.01)
    assert turns == [0, 3, 6, 9], turns
    a.flush()
    closed = [f["terminal"] for f in a.transport.frames() if f["t"] == "session_closed"]
    assert sorted(closed) == names and cp.counters["adopted_expired"] == 10


async def test_a_session_named_after_its_run_logged_off_is_closed_not_adopted_for_the_next_run(tmp_path: Path) -> None:
    """A restarted CP: the terminal comes back before the active names its sessions, says bye
    (no session here to close: the active was told nothing), goes, and logs on again. The
    active's adopt frame then names the old run's session: it was adopted for the new run, with
    `opened` and deliveries, and the logoff was never handled at the active. It is closed there
    as a logoff, and the new run gets a session of its own."""
    cp = cp_core(tmp_path, 2, cp="resume_window = 5\n")
    a = fake_host(cp, "host-a", record=True)
    a.adopts = True
    cp.host_register(a, "active", 1)
    assert a.adopting
    p = fake_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_bye(term)
    p.connection_lost(None)
    fake_terminal(cp, "T00001")  # a new run
    cp.host_adopt(a, [("T00001", {})], last=True)
    a.flush()
    frames = [f for f in a.transport.frames() if f.get("terminal") == "T00001"]
    closed = [f for f in frames if f["t"] == "session_closed"]
    assert closed and closed[0]["reason"] == "logoff", frames
    assert term.active is None and any(f["t"] == "session_request" for f in frames), frames
    await asyncio.sleep(0)


async def test_a_terminal_back_while_an_undone_switchover_is_made_durable_is_told_its_session_is_open(tmp_path: Path) -> None:
    """host-a adopted the sessions of T00001 (not back yet) and T00002 (back: told `session open`
    then). A planned switchover to host-b is undone (host-b lost before its grant was durable),
    and T00001 comes back, resuming, while host-a's grant of the role back is made durable: its
    welcome went alone (nothing announced), its adopted session was kept, and the flip left it
    as it was: welcomed, served, and never told its session was open."""
    cp, a = adopting_active(tmp_path, record=False)
    b = fake_host(cp, "host-b", "standby")
    t2 = recording_terminal(cp, "T00002")
    cp.host_adopt(a, [("T00001", {}), ("T00002", {})], last=True)
    for name in ("T00001", "T00002"):
        cp.host_open(b, name, "standby", {})
    cp.host_release(a)
    held = HeldJournal(cp)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record
    b.connection_lost(None)
    held.release_one()  # durable, its grantee gone: undone, host-a granted the role back (its record held)
    assert cp.active is a and not cp.announced and cp.terms["T00001"].active is not None
    t1 = recording_terminal(cp, "T00001", 0)
    held.release()
    assert cp.announced and cp.switchovers[-1]["kind"] == "undone"

    def sessions(p: Any) -> list[tuple[str, int]]:
        p.flush()
        return [(f["state"], f["epoch"]) for f in p.transport.frames() if f["t"] == "session"]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2  # (the notices start within notices.DEFER_S of the grant)
    while not sessions(t1):
        assert loop.time() < deadline, f"T00001 never told its session is open: {[f['t'] for f in t1.transport.frames()]}"
        await asyncio.sleep(0.01)
    assert sessions(t1) == [("open", cp.epoch)], sessions(t1)
    assert t1.transport.frames()[0]["t"] == "welcome"
    assert sessions(t2) == [("open", 1)]  # told at its adoption; its session stayed where it was


async def test_a_message_of_a_terminal_named_while_an_undone_switchover_is_made_durable_goes_after_the_grant(tmp_path: Path) -> None:
    """host-a adopts after a CP restart; T00001 is back, its message 1 held (no session yet). A
    planned switchover to host-b cuts the adoption, host-b is lost before its grant is durable,
    and host-a is granted the role back. While that epoch is made durable, host-a, unaware of the
    cut, names T00001's session. Message 1 went to it then, before the `switch_granted` at which
    hsbd drops what it was handed (ha_cp.link_event), and the flip, finding it delivered at its
    epoch, did not send it again: it stayed held, and message 2 was delivered alone, before it."""
    cp, a = adopting_active(tmp_path)
    b = fake_host(cp, "host-b", "standby")
    recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"one")  # held and durable, not delivered: no session yet
    held = HeldJournal(cp)
    cp.host_release(a)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record; host-a's adoption cut
    b.connection_lost(None)
    assert held.release_one() == 1  # durable, its grantee gone: host-a granted the role back (its record held)
    assert cp.active is a and not cp.announced and a.adopt_cut
    a._handle({"t": "adopt", "epoch": a.known_epoch, "items": [["T00001", {}]], "last": True})
    held.release()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cp.flipping is not None or not cp.announced:
        assert loop.time() < deadline, "the role never went back to host-a"
        await asyncio.sleep(0.01)
    cp.terminal_msg(term, 2, b"two")
    a.flush()
    frames = a.transport.frames()
    granted = max(i for i, f in enumerate(frames) if f["t"] == "switch_granted")
    assert frames[granted]["epoch"] == cp.epoch
    delivered = [(i > granted, f["id"]) for i, f in enumerate(frames) if f["t"] == "deliver" and f["terminal"] == "T00001"]
    assert delivered == [(True, 1), (True, 2)], delivered
