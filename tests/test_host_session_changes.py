"""An active host's session changes reach the takeover ring (hsb.host.sessions_ctl, S210): each
open and close of a terminal on the fast-switch link, and nothing of one that is not, so that
the standby's view holds every session a switch must carry."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sessionsctl import active_on_a_link, granted_on_a_link, standby_ctl

pytestmark = pytest.mark.timeout(10)


async def test_the_opens_and_closes_of_linked_terminals_go_to_the_ring() -> None:
    c, srv = standby_ctl(3)
    granted_on_a_link(srv)
    ring: list[tuple[str, dict[str, Any], bool]] = []
    srv.takeover.ring_change = lambda name, attrs, is_open: ring.append((name, dict(attrs), is_open))
    await c.session_request("T00001", True, {})
    await c.session_request("T00002", False, {})  # not standby-capable: never on the link
    assert ring == [("T00001", {"k": 1}, True)]
    opened = [(m["t"], m["terminal"], m["epoch"]) for m in srv.cp.sent]
    assert opened == [("open", "T00001", 3), ("open", "T00002", 3)]
    c.on_cp_frame({"t": "session_closed", "terminal": "T00001", "reason": "logoff"})
    c.on_cp_frame({"t": "session_closed", "terminal": "T00002", "reason": "logoff"})
    c.on_cp_frame({"t": "session_closed", "terminal": "T00001", "reason": "again"})  # closed already: nothing
    assert ring == [("T00001", {"k": 1}, True), ("T00001", {"k": 1}, False)]
    await c.session_request("T00001", False, {})  # open again: on the link for good
    assert ring[-1] == ("T00001", {"k": 1}, True) and len(ring) == 3


async def test_a_ring_entry_read_after_the_grant_opens_no_standby_session() -> None:
    """The standby's last ring poll ends just after the CP granted it the active role: an open
    entry of a terminal with no session here must not become a standby session (the CP takes no
    standby open from its active; the service would hear a standby logon on the active)."""
    from hsb.host.sessions import CLOSED
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    srv.ha.granted = True
    c.apply_ring([SessionEntry("T00001", {"k": 1}, True)])
    assert srv.sessions.table["T00001"].state == CLOSED
    assert srv.cp.sent == [] and not c.hooks and not c.pending_standby


async def test_a_kept_session_whose_attributes_differ_from_the_batch_is_refused() -> None:
    """Demoted at a planned switchover, the CP kept T00001's session as our standby one; the new
    active's batch then holds it with other attributes (a reload there): it is closed and refused,
    as any opening with other attributes is, not carried on a switch with the old ones."""
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    active_on_a_link(c, srv, 7)
    c.expect_kept()
    c.on_cp_frame({"t": "standby_kept", "epoch": 7, "items": ["T00001", "T00002"], "last": True})
    await c.apply_batch([SessionEntry("T00001", {"k": 2}, True), SessionEntry("T00002", {"k": 1}, True)], timeout=0.05)
    assert srv.sessions.table["T00001"].state != STANDBY and "T00001" in c.refused
    assert srv.sessions.table["T00002"].state == STANDBY and "T00002" not in c.refused
    frames = [(m["t"], "refused" in m) for m in srv.cp.sent if m.get("terminal") == "T00001"]
    assert frames == [("close", False), ("close", True)], frames
    assert not [m for m in srv.cp.sent if m.get("terminal") == "T00002"]  # open at the CP already


@pytest.mark.parametrize("open_batch_bytes", [1 << 20, 400])
async def test_every_standby_open_of_a_batch_read_goes_out_in_open_batch_frames(open_batch_bytes: int) -> None:
    """The batch read's standby opens to a CP that takes open_batch frames: the last, partly
    filled frame goes too, and a slice too large for the CP's frames is split, none left out
    (its terminals would have no standby session at the CP: a switch would give them the
    classic path)."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(1030)
    c.cp_registered = True
    c.open_batch_bytes = open_batch_bytes
    await c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in srv.sessions.table], timeout=0.05)
    frames = [m for m in srv.cp.sent if m["t"] == "open_batch"]
    assert [i[0] for m in frames for i in m["items"]] == list(srv.sessions.table)
    assert not [m for m in srv.cp.sent if m["t"] == "open"]
    assert len(frames) >= 2  # (1,030 opens: slices of OPENS_PER_TURN, split again to fit)


async def test_a_session_closed_before_its_adoption_is_named_is_not_named() -> None:
    """Registered as the active at a CP that keeps sessions, the host names its open sessions in
    `adopt` frames from a task of its own: one closed meanwhile is not named (the CP would adopt
    a session this host no longer has, and the terminal resume on nothing)."""
    from hsb.host.sessions import ACTIVE

    c, srv = standby_ctl(3)
    granted_on_a_link(srv)
    c.cp_registered = True
    c.open_batch_bytes = 1 << 20
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE
    c.adopt_sessions()
    c.on_cp_frame({"t": "session_closed", "terminal": "T00002", "reason": "logoff"})
    while c.tasks:
        await next(iter(c.tasks))
    frames = [m for m in srv.cp.sent if m["t"] == "adopt"]
    named = [it[0] for m in frames for it in m["items"]]
    assert named == ["T00001", "T00003"] and frames[-1]["last"] is True


async def test_the_batch_writes_entries_say_open_only_for_active_sessions() -> None:
    """The batch write's snapshot of the link: a terminal is open there only with an active
    session here; a standby one (this host demoted with it, a grant's promotion not yet done) is
    no session of the active's, and the new standby must not open one for it."""
    from hsb.host.sessions import ACTIVE, CLOSED, STANDBY, SessionTable
    from hsb.takeover.records import SessionEntry
    from hsb.terminals import TerminalDef

    table = SessionTable({n: TerminalDef(name=n, attrs={"k": 1}) for n in ("A", "B", "C")})
    for ts, state in zip(table.table.values(), (ACTIVE, STANDBY, CLOSED), strict=True):
        table.join_link(ts)
        ts.state = state
    assert await table.link_entries() == [SessionEntry("A", {"k": 1}, True), SessionEntry("B", {"k": 1}, False), SessionEntry("C", {"k": 1}, False)]
