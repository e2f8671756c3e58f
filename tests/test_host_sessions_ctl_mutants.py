"""The host's side of sessions at the CP (hsb/host/sessions_ctl.py), in-process on
tests/support/sessionsctl.py's stand-in host, each test naming a behaviour that a mutation audit
of the module found no test for: the batch read's wait for the CP's answers (not ended by one
answer alone, ended by a lost link), the wait for `standby_kept` (ended by a lost link; given up,
every session asked for again; a later read asking again for what was kept), a refusal shown
until an `opened_batch`, an `open_failed` closing no session that is no longer a standby one,
conventional hot standby asking for no standby session and refusing none, a refusal over once
the terminal opens right or the host is granted, no `close` while not registered, `open_batch`
frames within the CP's size and a turn's worth of names, the adoption (and its handed ids)
stopping on a lost link or a demotion, session requests (a closing host, a lapsed lease, an
undefined terminal, one not standby-capable kept off the ring), the active sessions dropped
after a switchover closed at the service, and a kept session joining the fast-switch link.

The audit (listed in this file's commit message): 74 mutants of sessions_ctl.py; 39 killed by the tests before,
29 more by these, 6 equivalent (`SessionsCtl.refused` and `TerminalState.standby_capable` are read
by no product code: 3 mutants; a request asked again on the link it came on is never used; a
refusal reaches `_close_standby` only from a host not granted; a stale name in `kept` is skipped
only while it is a standby session, which after a demotion only a name kept then is)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.procs import until
from tests.support.sessionsctl import active_on_a_link, granted_on_a_link, recording_service, standby_ctl

pytestmark = pytest.mark.timeout(10)


def _gated_drain(srv: Any) -> asyncio.Event:
    """The CP link's drain waits for the gate returned (a link slow to take what is sent)."""
    gate = asyncio.Event()

    async def drain() -> None:
        await gate.wait()

    srv.cp.drain = drain
    return gate


async def test_the_batch_reads_wait_ends_only_once_every_standby_open_is_answered() -> None:
    """The batch read asks the CP for two standby sessions and waits for its answers: the first
    `opened` does not end that wait (the read would go on, its hot standby said established, with
    a standby session still unanswered); the second does."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    batch = asyncio.ensure_future(c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in ("T00001", "T00002")], timeout=5.0))
    await until(lambda: len(c.pending_standby) == 2 and not c.answered.is_set(), 2, interval=0.01, what="two standby opens asked")
    c.on_cp_frame({"t": "opened", "terminal": "T00001", "kind": "standby"})
    assert not c.answered.is_set() and list(c.pending_standby) == ["T00002"]
    assert not batch.done()
    c.on_cp_frame({"t": "opened_batch", "terminals": ["T00002"]})
    assert c.answered.is_set()
    await asyncio.wait_for(batch, 2.0)


async def test_a_refusal_is_shown_until_an_opened_batch_names_the_terminal() -> None:
    """The CP refused T00001's standby open (`open_failed`, in the host's status); its later
    `opened_batch` naming T00001 takes it off the refusals shown (hsbctl status would go on
    showing a terminal refused that has its standby session)."""
    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.on_cp_frame({"t": "open_failed", "terminal": "T00001", "kind": "standby", "reason": "test"})
    c.on_cp_frame({"t": "open_failed", "terminal": "T00002", "kind": "standby", "reason": "test"})
    assert [r["terminal"] for r in c.open_failures.status()["recent"]] == ["T00001", "T00002"]
    c.on_cp_frame({"t": "opened_batch", "terminals": ["T00001"]})
    assert [r["terminal"] for r in c.open_failures.status()["recent"]] == ["T00002"]
    assert c.open_failures.status()["standby"] == 2  # (the count stays: it counts every refusal)


async def test_an_open_failed_for_a_standby_open_closes_no_session_it_no_longer_is() -> None:
    """The CP refuses a standby open after the host's session changed: T00001's standby session
    was closed meanwhile (its ring's close entry: the service heard it close), T00002's made
    active (promoted at a grant). Neither is closed again: the service hears no second logoff of
    T00001, and T00002's active session stays open, its logoff never heard."""
    from hsb.host.sessions import ACTIVE, CLOSED
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    hooks = recording_service(srv)
    c.cp_registered = True
    assert c._open_standby("T00001", {"k": 1}) and c._open_standby("T00002", {"k": 1})
    c.apply_ring([SessionEntry("T00001", {"k": 1}, False)])
    srv.sessions.table["T00002"].state = ACTIVE  # (promote_standby_sessions at a grant)
    await until(lambda: len(hooks) == 3, 2, interval=0.01, what="two logons and T00001's logoff")
    for name in ("T00001", "T00002"):
        c.on_cp_frame({"t": "open_failed", "terminal": name, "kind": "standby", "reason": "test"})
    await until(lambda: not c.hooks, 2, interval=0.01, what="every session hook run")
    assert srv.sessions.table["T00001"].state == CLOSED and srv.sessions.table["T00002"].state == ACTIVE
    assert sorted(hooks) == [("close", "T00001"), ("open", "T00001"), ("open", "T00002")], hooks


async def test_a_failed_logon_is_refused_to_nobody_once_the_lease_lapsed() -> None:
    """T00001's logon is under way for a link since replaced, and the CP asked for it again on
    the new link; the logon fails after this host lost the role (its lease lapsed): the new
    link's request is not answered with a refusal (it asked an active this host no longer is;
    the old link's answer went with that link)."""
    c, srv = standby_ctl(2)
    gate = asyncio.Event()
    tried: list[str] = []

    async def failing_open(name: str, *_: Any) -> None:
        tried.append(name)
        await gate.wait()
        raise RuntimeError("the application refused the logon")

    srv.service.open_session = failing_open
    granted_on_a_link(srv)
    first = asyncio.ensure_future(c.session_request("T00001", True, {}))
    await until(lambda: tried == ["T00001"], 2, interval=0.01, what="T00001's logon under way")
    srv.cp.fs, srv.ha.epoch = object(), 4  # the link replaced, registered again
    await asyncio.wait_for(c.session_request("T00001", True, {}), 2.0)  # asked for again there
    srv.ha.granted = False  # the lease lapsed
    gate.set()
    await asyncio.wait_for(first, 2.0)
    assert [m for m in srv.cp.sent if m.get("terminal") == "T00001"] == [], srv.cp.sent
    assert not c.opening and not c.reasked


async def test_a_cp_link_lost_before_the_last_standby_kept_ends_the_batch_reads_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Demoted at a planned switchover, the host waits for the CP to name the sessions it kept
    (`standby_kept`); the CP link is lost before the last one came (the CP holds none of ours
    now): the batch read does not wait for it (KEPT_WAIT_S, long here) and opens every session
    the batch has."""
    import hsb.host.sessions_ctl as sctl
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    monkeypatch.setattr(sctl, "KEPT_WAIT_S", 30.0)
    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.expect_kept()
    srv.cp_down("eof")
    await asyncio.wait_for(c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in ("T00001", "T00002")], timeout=5.0), 2.0)
    assert all(ts.state == STANDBY for ts in srv.sessions.table.values())


async def test_an_adoption_under_way_stops_when_the_cp_link_is_lost() -> None:
    """The active names its sessions to the CP (`adopt` frames); its CP link is lost while a
    frame drains, and the host is registered again as the active at a CP that did not ask for
    an adoption: the old adoption sends nothing more there (neither the rest of its names nor
    its `last`, which that CP would take for an adoption it never started)."""
    from hsb.host.sessions import ACTIVE

    c, srv = standby_ctl(3)
    c.cp_registered = True
    c.open_batch_bytes = 1 << 20
    srv.ha.granted, srv.ha.epoch = True, 5
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE
    gate = _gated_drain(srv)
    c.adopt_sessions()
    await until(lambda: srv.cp.sent, 2, interval=0.01, what="the handed ids' frame")
    assert [(m["t"], m["items"], m["last"]) for m in srv.cp.sent] == [("adopt", [], False)]
    srv.cp_down("eof")
    srv.ha.granted = True  # registered again as the active, at a CP that keeps no sessions
    c.cp_registered = True
    gate.set()
    await until(lambda: not c.tasks, 2, interval=0.01, what="the old adoption's end")
    assert len(srv.cp.sent) == 1, srv.cp.sent


async def test_the_handed_ids_frames_stop_once_the_host_is_not_the_active() -> None:
    """The handed ids go first, in as many `adopt` frames as the CP's frame size takes; the host
    demoted while they go sends no more of them (the CP takes an `adopt` from its active only)."""
    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.open_batch_bytes = 192
    srv.delivery.handed = {f"T{i:05d}": i for i in range(1, 41)}
    srv.ha.granted, srv.ha.epoch = True, 5
    assert len(list(c._handed_chunks())) > 2
    gate = _gated_drain(srv)
    c.adopt_sessions()
    await until(lambda: srv.cp.sent, 2, interval=0.01, what="the first handed ids' frame")
    srv.ha.granted = False  # demoted
    gate.set()
    await until(lambda: not c.tasks, 2, interval=0.01, what="the adoption's end")
    assert len(srv.cp.sent) == 1, [m.get("handed") for m in srv.cp.sent]


async def test_an_adoption_whose_host_is_demoted_during_its_last_slice_sends_no_last() -> None:
    """The active's names fit one frame; the host is demoted while that frame drains: the
    adoption ends without its `last` (from a host not the active any more, the CP would end an
    adoption and ask for every session not named)."""
    from hsb.host.sessions import ACTIVE

    c, srv = standby_ctl(3)
    c.cp_registered = True
    c.open_batch_bytes = 1 << 20
    srv.delivery.handed = {}
    srv.ha.granted, srv.ha.epoch = True, 5
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE
    gate = _gated_drain(srv)
    c.adopt_sessions()
    await until(lambda: srv.cp.sent, 2, interval=0.01, what="the names' frame")
    assert [len(m["items"]) for m in srv.cp.sent] == [3]
    srv.ha.granted = False  # demoted
    gate.set()
    await until(lambda: not c.tasks, 2, interval=0.01, what="the adoption's end")
    assert [m["last"] for m in srv.cp.sent] == [False], srv.cp.sent


async def test_every_open_batch_frame_fits_the_cps_frame_size() -> None:
    """A batch read's standby opens to a CP that takes `open_batch` frames of at most 400 bytes:
    each frame sent is within them (split until it fits), the CP would drop a larger one and its
    link with it."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(200)
    c.cp_registered = True
    c.open_batch_bytes = 400
    frames: list[bytes] = []
    srv.cp.send_raw = frames.append
    await c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in srv.sessions.table], timeout=0.01)
    assert len(frames) > 2 and all(len(f) <= 400 for f in frames), [len(f) for f in frames]


async def test_a_conventional_standby_asks_the_cp_for_no_standby_session_and_refuses_none() -> None:
    """Without fast_switch (conventional hot standby) the standby keeps the active's sessions in
    its view only: a ring entry opens no standby session at the CP, nor at the service; one whose
    attributes differ is refused here (logged) but no refusal goes to the CP, which waits for no
    standby session of ours at a handover, and none is told again on a new link."""
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    hooks = recording_service(srv)
    srv.cfg.host.fast_switch = False
    c.cp_registered = True
    c.apply_ring([SessionEntry("T00001", {"k": 1}, True), SessionEntry("T00002", {"k": 2}, True)])
    assert all(ts.state != STANDBY for ts in srv.sessions.table.values())
    assert "T00001" in srv.sessions.link and "T00002" in c.refused
    c.reopen_standby_sessions()  # (registered again)
    assert srv.cp.sent == [] and hooks == [] and not c.hooks and c.refusing == {}


async def test_a_terminal_refused_then_opened_with_the_right_attributes_is_refused_no_more() -> None:
    """The standby refused T00001's standby session (the active's attributes differed); the
    active's next open of it has this host's attributes: the standby session opens and the
    refusal is over, so a new link's CP is not told it again (it would wait for no standby
    session of T00001 at a handover, though one is open)."""
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.apply_ring([SessionEntry("T00001", {"k": 2}, True)])
    assert c.refusing
    c.apply_ring([SessionEntry("T00001", {"k": 1}, True)])
    assert srv.sessions.table["T00001"].state == STANDBY and c.refusing == {}
    srv.cp.sent.clear()
    c.reopen_standby_sessions()  # registered again on a new link
    assert [(m["t"], m.get("kind"), "refused" in m) for m in srv.cp.sent] == [("open", "standby", False)], srv.cp.sent


async def test_a_refusal_ended_after_the_grant_sends_no_close() -> None:
    """The standby refused T00001's standby session; the CP granted it the active role, and a
    ring entry read just after says T00001 closed at the old active: nothing goes to the CP (a
    `close` of kind standby from its active is no refusal's end: the CP would take it for its
    active closing T00001's session)."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.apply_ring([SessionEntry("T00001", {"k": 2}, True)])
    srv.cp.sent.clear()
    srv.ha.granted = True  # HA.link_event("switch_granted"), its sessions not promoted yet
    c.apply_ring([SessionEntry("T00001", {"k": 2}, False)])
    assert srv.cp.sent == [], srv.cp.sent


async def test_a_batch_read_that_gave_up_waiting_for_standby_kept_opens_every_session_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Demoted at a planned switchover, the CP named T00001 kept (`standby_kept`, not the last);
    the rest never came within KEPT_WAIT_S: the batch read opens every standby session at the CP
    again (`standby_kept_incomplete` says so), T00001's too: what the CP holds of an adoption it
    never finished naming is not taken on trust."""
    import hsb.host.sessions_ctl as sctl
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    monkeypatch.setattr(sctl, "KEPT_WAIT_S", 0.05)
    c, srv = standby_ctl(2)
    active_on_a_link(c, srv, 3)
    c.expect_kept()
    c.on_cp_frame({"t": "standby_kept", "epoch": 3, "items": ["T00001"], "last": False})
    assert srv.sessions.table["T00001"].state == STANDBY
    c.drop_active_sessions()
    await asyncio.wait_for(c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in ("T00001", "T00002")], timeout=0.01), 2.0)
    assert [m["terminal"] for m in srv.cp.sent if m["t"] == "open"] == ["T00001", "T00002"], srv.cp.sent


async def test_no_session_work_starts_once_the_host_has_closed_it() -> None:
    """hsbd ends (SessionsCtl.close): a `session_request` frame or an adoption asked for after
    that starts no task (it would run the service's logon on a closing service)."""
    c, srv = standby_ctl(2)
    hooks = recording_service(srv)
    granted_on_a_link(srv)
    await c.close()
    c.on_cp_frame({"t": "session_request", "terminal": "T00001", "standby_capable": True})
    c.adopt_sessions()
    assert not c.tasks and hooks == [] and srv.cp.sent == []


async def test_a_session_request_to_a_host_not_granted_runs_no_logon() -> None:
    """The CP asks for T00001's session while this host's lease has lapsed (not granted): no
    logon runs at the service (then undone) and nothing is answered."""
    c, srv = standby_ctl(2)
    hooks = recording_service(srv)
    granted_on_a_link(srv)
    srv.ha.granted = False
    await asyncio.wait_for(c.session_request("T00001", True, {}), 2.0)
    assert hooks == [] and not c.hooks and srv.cp.sent == []


async def test_a_session_request_for_a_terminal_not_defined_here_is_refused() -> None:
    """The CP asks for a session of a terminal this host's config does not define: it is refused
    (with the reason and this host's epoch), not left waiting for a session for good."""
    c, srv = standby_ctl(2)
    granted_on_a_link(srv)
    await asyncio.wait_for(c.session_request("T09999", True, {}), 2.0)
    assert [(m["t"], m["terminal"], m["epoch"]) for m in srv.cp.sent] == [("refuse", "T09999", 3)]
    assert "not defined on host host-a" in srv.cp.sent[0]["reason"]


async def test_the_active_sessions_dropped_after_a_switchover_are_closed_at_the_service() -> None:
    """After a planned switchover the old active's sessions belong to the new active: each one
    still open here is closed, and the service hears its logoff (else its application held a
    session for good that nobody serves); the count is what the log line says."""
    from hsb.host.sessions import ACTIVE, CLOSED

    c, srv = standby_ctl(3)
    hooks = recording_service(srv)
    for name in ("T00001", "T00003"):
        srv.sessions.table[name].state = ACTIVE
    assert c.drop_active_sessions() == 2
    await until(lambda: not c.hooks, 2, interval=0.01, what="every session hook run")
    assert sorted(hooks) == [("close", "T00001"), ("close", "T00003")], hooks
    assert all(ts.state == CLOSED for ts in srv.sessions.table.values())


async def test_closing_every_standby_session_counts_those_it_closed() -> None:
    """The active restarted (Fig. 3): the standby closes every standby session on its link, and
    says how many (`active_restarted`'s standby_sessions_closed): the open ones only."""
    c, srv = standby_ctl(3)
    c.cp_registered = True
    assert c._open_standby("T00001", {"k": 1}) and c._open_standby("T00002", {"k": 1})
    srv.sessions.join_link(srv.sessions.table["T00003"])  # on the link, no standby session
    assert c.close_all_standby() == 2


async def test_the_standby_sessions_asked_for_again_go_in_frames_of_a_turns_worth() -> None:
    """Registered again, the standby asks the CP for every standby session it holds: in
    `open_batch` frames of at most OPENS_PER_TURN names, all of them (one frame of them all is
    one long turn of the CP's loop for 100,000 terminals)."""
    from hsb.host.sessions import STANDBY
    from hsb.host.sessions_ctl import SessionsCtl

    c, srv = standby_ctl(2100)
    c.open_batch_bytes = 1 << 22
    for ts in srv.sessions.table.values():
        ts.state = STANDBY
    c.cp_registered = True
    c.reopen_standby_sessions()
    frames = [m for m in srv.cp.sent if m["t"] == "open_batch"]
    assert [i[0] for m in frames for i in m["items"]] == list(srv.sessions.table)
    assert max(len(m["items"]) for m in frames) <= SessionsCtl.OPENS_PER_TURN


async def test_a_session_the_cp_kept_goes_on_the_fast_switch_link() -> None:
    """Demoted at a planned switchover, the CP keeps T00001's session as our standby session
    though this host opened it as not standby-capable (the CP's config said otherwise since): it
    joins the fast-switch link, which the standby walks to close its standby sessions (Fig. 3)
    and to write its batch."""
    from hsb.host.sessions import ACTIVE

    c, srv = standby_ctl(2)
    srv.ha.epoch = 4
    c.cp_registered = True
    srv.sessions.table["T00001"].state = ACTIVE  # (opened as not standby-capable: not on the link)
    assert "T00001" not in srv.sessions.link
    c.expect_kept()
    c.on_cp_frame({"t": "standby_kept", "epoch": 4, "items": ["T00001"], "last": True})
    assert "T00001" in srv.sessions.link
    assert c.close_all_standby() == 1


async def test_a_session_the_cp_asks_for_as_not_standby_capable_stays_off_the_ring() -> None:
    """The CP's `session_request` says T00001 is not standby-capable (a terminal the standby
    holds no standby session of): its session opens, off the fast-switch link, and its open and
    close reach no ring entry; T00002's, standby-capable, does."""
    c, srv = standby_ctl(2)
    granted_on_a_link(srv)
    ring: list[tuple[str, bool]] = []
    srv.takeover.ring_change = lambda name, attrs, is_open: ring.append((name, is_open))
    c.on_cp_frame({"t": "session_request", "terminal": "T00001", "standby_capable": False})
    c.on_cp_frame({"t": "session_request", "terminal": "T00002", "standby_capable": True})
    await until(lambda: len([m for m in srv.cp.sent if m["t"] == "open"]) == 2 and not c.tasks, 2, interval=0.01, what="both sessions open")
    assert "T00001" not in srv.sessions.link and "T00002" in srv.sessions.link
    assert ring == [("T00002", True)]


async def test_a_cp_link_lost_while_the_batch_read_waits_for_answers_ends_that_wait() -> None:
    """Every standby open of the batch read has gone and it waits for the CP's answers (30 s at
    most); the CP link is lost: the answers will never come, and the wait ends at once."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    batch = asyncio.ensure_future(c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in srv.sessions.table], timeout=30.0))
    await until(lambda: len(srv.cp.sent) == 2, 2, interval=0.01, what="both standby opens sent")
    assert not batch.done()
    srv.cp_down("eof")
    await asyncio.wait_for(batch, 2.0)


async def test_a_later_batch_read_asks_again_for_a_session_the_cp_kept_at_a_demotion() -> None:
    """The CP kept T00001 as our standby session at a planned switchover, and the batch read
    that followed did not ask for it; a later batch read (a resync) asks the CP for every standby
    session again, T00001's too: what the CP kept once is not taken for kept at every read."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    active_on_a_link(c, srv, 3)
    c.expect_kept()
    c.on_cp_frame({"t": "standby_kept", "epoch": 3, "items": ["T00001"], "last": True})
    c.drop_active_sessions()
    entries = [SessionEntry(n, {"k": 1}, True) for n in ("T00001", "T00002")]
    await asyncio.wait_for(c.apply_batch(entries, timeout=0.01), 2.0)
    assert [m["terminal"] for m in srv.cp.sent if m["t"] == "open"] == ["T00002"]
    srv.cp.sent.clear()
    await asyncio.wait_for(c.apply_batch(entries, timeout=0.01), 2.0)
    assert [m["terminal"] for m in srv.cp.sent if m["t"] == "open"] == ["T00001", "T00002"], srv.cp.sent


async def test_a_standby_not_registered_sends_no_close() -> None:
    """A standby session closes (its ring's close entry) while the host is not registered at the
    CP (its link lost, or its registration not answered yet): no `close` goes to the CP, which
    dropped that session with the old link (and takes no frame but a registration first)."""
    from hsb.host.sessions import CLOSED
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    assert c._open_standby("T00001", {"k": 1})  # (marked only: not registered)
    c.apply_ring([SessionEntry("T00001", {"k": 1}, False)])
    assert srv.sessions.table["T00001"].state == CLOSED and srv.cp.sent == [], srv.cp.sent
