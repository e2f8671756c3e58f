"""The service's session hooks on hsbd (SessionsCtl): in order per terminal, concurrent across
terminals, failures reported to a caller that waits and logged otherwise."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host.sessions_ctl import SessionsCtl
from tests.support.procs import until
from tests.support.sessionsctl import active_on_a_link, ctl, granted_on_a_link, recording_service, standby_ctl


@pytest.mark.timeout(10)
async def test_hooks_of_one_terminal_run_in_order_and_terminals_overlap() -> None:
    c = ctl()
    log: list[str] = []
    gate = asyncio.Event()

    async def slow_open(name: str) -> None:
        log.append(f"open {name} start")
        await gate.wait()
        log.append(f"open {name} end")

    async def close(name: str) -> None:
        log.append(f"close {name}")

    c._hook(slow_open, "X")
    c._hook(close, "X")  # queued behind the open of the same terminal
    c._hook(close, "Y")  # another terminal: not held up by X
    for _ in range(50):
        if "close Y" in log:
            break
        await asyncio.sleep(0.01)
    assert log == ["open X start", "close Y"]
    gate.set()
    for _ in range(50):
        if not c.hooks:
            break
        await asyncio.sleep(0.01)
    assert log == ["open X start", "close Y", "open X end", "close X"]
    assert c.hook_workers == 0 and not c.hooks_ready


@pytest.mark.timeout(10)
async def test_run_hook_waits_for_earlier_hooks_and_raises_the_hooks_error() -> None:
    c = ctl()
    log: list[str] = []

    async def close(name: str) -> None:
        await asyncio.sleep(0.02)
        log.append("close")

    async def failing_open(name: str) -> None:
        log.append("open")
        raise RuntimeError("logon refused by the application")

    c._hook(close, "X")
    with pytest.raises(RuntimeError, match="logon refused"):
        await c.run_hook(failing_open, "X")
    assert log == ["close", "open"]


@pytest.mark.timeout(10)
async def test_a_hook_that_raises_cancelled_error_of_its_own_fails_and_the_terminals_hooks_go_on() -> None:
    """A hook that awaited something another task cancelled raises CancelledError though nobody
    cancelled it: the worker ended, and that terminal's later hooks (its close) never ran."""
    c = ctl()
    log: list[str] = []

    async def open_(name: str) -> None:
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(f.cancel)  # another task's doing
        log.append("open")
        await f

    async def close(name: str) -> None:
        log.append("close")

    c._hook(open_, "X")
    c._hook(close, "X")
    await until(lambda: not c.hooks, 5, what="the terminal's hooks done")
    assert log == ["open", "close"] and c.hook_workers == 0 and not c.hooks_ready
    with pytest.raises(Exception, match="raised by the hook"):  # noqa: PT011 - the hook's failure, said
        await c.run_hook(open_, "Y")  # (run in the caller's task)
    assert "Y" not in c.hooks


@pytest.mark.timeout(20)
async def test_ten_thousand_hooks_use_a_bounded_pool() -> None:
    c = ctl()
    seen: list[str] = []

    async def hook(name: str) -> None:
        seen.append(name)

    for i in range(10_000):
        c._hook(hook, f"T{i:05d}")
    assert c.hook_workers == SessionsCtl.HOOK_WORKERS
    for _ in range(500):
        if len(seen) == 10_000:
            break
        await asyncio.sleep(0.01)
    assert sorted(seen) == [f"T{i:05d}" for i in range(10_000)]
    for _ in range(100):
        if c.hook_workers == 0:
            break
        await asyncio.sleep(0.01)
    assert c.hook_workers == 0 and not c.hooks


@pytest.mark.timeout(10)
async def test_a_cp_link_lost_during_the_batch_read_ends_its_wait_and_the_opens_go_out_once_registered() -> None:
    """The batch read waits for the CP's answers to its standby opens; a CP link lost meanwhile
    ends that wait at once (the answers will never come), opens made while not registered are
    only marked, and all of them are sent on the next registration."""
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(3000)
    c.cp_registered = True
    entries = [SessionEntry(n, {"k": 1}, True) for n in srv.sessions.table]
    task = asyncio.ensure_future(c.apply_batch(entries, timeout=30.0))
    for _ in range(200):  # the first slice went out, nobody answers
        if len(srv.cp.sent) >= SessionsCtl.OPENS_PER_TURN:
            break
        await asyncio.sleep(0)
    assert c.pending_standby and not task.done()
    sent_before = len(srv.cp.sent)
    srv.cp_down("eof")
    await asyncio.wait_for(task, 2.0)  # not 30 s
    assert not c.pending_standby
    assert len(srv.cp.sent) == sent_before  # nothing sent while not registered
    assert all(ts.state == STANDBY for ts in srv.sessions.table.values())
    c.cp_registered = True  # registered again (HA.link_event), then the HA loop reopens
    c.reopen_standby_sessions()
    reopened = {m["terminal"] for m in srv.cp.sent[sent_before:] if m["t"] == "open" and m["kind"] == "standby"}
    assert reopened == set(srv.sessions.table)


@pytest.mark.timeout(10)
async def test_a_ring_entry_read_as_the_switch_is_granted_does_not_turn_an_active_session_back() -> None:
    """The standby's last ring poll can finish just after the CP granted it the active role (its
    sessions promoted): an open entry must not make one of them a standby session again (the CP
    refuses that open and the host would drop the session from its next batch write)."""
    from hsb.host.sessions import ACTIVE
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(3)
    c.cp_registered = True
    srv.ha.granted = True  # HA.link_event("switch_granted") ...
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE  # ... promoted every standby session
    c.apply_ring([SessionEntry(n, {"k": 1}, True) for n in srv.sessions.table])
    assert all(ts.state == ACTIVE for ts in srv.sessions.table.values())
    assert not [m for m in srv.cp.sent if m["t"] == "open"]


@pytest.mark.timeout(10)
async def test_the_active_names_its_open_sessions_in_slices_and_stops_once_not_the_active() -> None:
    """Registered as the active at a CP that keeps sessions (hsb.cp.adopt), hsbd names every
    session open here in `adopt` frames, the last marked; demoted or fenced part-way, it stops
    and sends no `last` (the CP would take it from a host that is not the active)."""
    from hsb.host.sessions import ACTIVE, STANDBY

    async def named(c: SessionsCtl, srv: Any, stop_after: int | None = None, regrant_after: int | None = None) -> list[dict[str, Any]]:
        srv.cp.sent.clear()
        srv.ha.epoch = 7
        c.adopt_sessions()
        for _ in range(1000):
            frames = [m for m in srv.cp.sent if m["t"] == "adopt"]
            if regrant_after is not None and len(frames) >= regrant_after:
                srv.ha.epoch = 9  # a planned grant undone: re-granted at a newer epoch, naming goes on
                regrant_after = None
            if stop_after is not None and len(frames) >= stop_after:
                srv.ha.granted = False  # demoted (a planned switchover) while naming
                stop_after = None
            if not c.tasks:
                break
            await asyncio.sleep(0)
        assert not c.tasks
        return [m for m in srv.cp.sent if m["t"] == "adopt"]

    c, srv = standby_ctl(2500)
    c.cp_registered = True
    c.open_batch_bytes = 1 << 20
    srv.ha.granted = True
    for i, ts in enumerate(srv.sessions.table.values()):
        ts.state = ACTIVE if i % 5 else STANDBY  # 2,000 open as active, 500 not
    frames = await named(c, srv)
    # first what it handed to its service (every terminal's: T00002's session may have closed)
    assert frames[0]["items"] == [] and frames[0]["handed"] == {"T00002": 9} and not frames[0]["last"]
    frames = frames[1:]
    assert [len(m["items"]) for m in frames] == [1024, 976, 0] and frames[-1]["last"] is True
    assert all(m["epoch"] == 7 and not m.get("last") for m in frames[:-1])
    names = [it[0] for m in frames for it in m["items"]]
    assert names == [n for n, ts in srv.sessions.table.items() if ts.state == ACTIVE]
    frames = await named(c, srv, stop_after=2)
    assert len(frames) == 2 and not frames[-1].get("last"), [len(m["items"]) for m in frames]
    # re-granted at a newer epoch part-way (a planned grant undone: its grantee lost): every frame
    # from then on carries it (the CP refuses the older epoch once it has seen the newer one)
    srv.ha.granted = True
    frames = await named(c, srv, regrant_after=2)
    assert [m["epoch"] for m in frames] == [7, 7, 9, 9] and frames[-1]["last"] is True


@pytest.mark.timeout(10)
async def test_the_batch_writes_walk_of_the_link_lets_the_loop_turn_between_slices() -> None:
    """A new active walks the fast-switch link for its batch write right after the grant, while
    it serves re-delivered messages: in slices, each terminal once, in the link's order."""
    from hsb.host.sessions import ACTIVE, SessionTable
    from hsb.takeover.records import SessionEntry
    from hsb.terminals import TerminalDef

    table = SessionTable({f"T{i:05d}": TerminalDef(name=f"T{i:05d}", attrs={"k": i}) for i in range(1, 11)})
    for i, ts in enumerate(table.table.values()):
        table.join_link(ts)
        ts.state = ACTIVE if i % 2 == 0 else ts.state
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    t = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    before = turns
    entries = await table.link_entries(per_turn=3)
    t.cancel()
    assert turns - before >= 3  # 10 terminals, 3 a turn: the loop turned between the slices
    assert entries == [SessionEntry(f"T{i:05d}", {"k": i}, i % 2 == 1) for i in range(1, 11)]


@pytest.mark.timeout(10)
async def test_demoted_the_host_takes_the_sessions_the_cp_kept_and_its_batch_read_opens_only_the_rest() -> None:
    """A planned switchover: the CP makes the demoted active's sessions its standby sessions and
    names them (standby_kept, in slices, the last marked). The batch read that follows opens
    only the others at the CP and closes a kept one the new active no longer has; the service
    hears each kept session close as active and open as standby, in that order."""
    from hsb.host.sessions import ACTIVE, CLOSED, STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(6)
    names = list(srv.sessions.table)
    heard: list[tuple[str, str]] = []

    async def opened(name: str, attrs: Any, standby: bool) -> None:
        heard.append((name, "standby" if standby else "active"))

    async def closed(name: str) -> None:
        heard.append((name, "closed"))

    srv.service = SimpleNamespace(open_session=opened, close_session=closed)
    active_on_a_link(c, srv, 7)
    c.expect_kept()  # HA.link_event("demoted", keeps=True)
    c.on_cp_frame({"t": "standby_kept", "epoch": 6, "items": names, "last": True})  # an older demotion's: ignored
    assert all(ts.state == ACTIVE for ts in srv.sessions.table.values())
    c.on_cp_frame({"t": "standby_kept", "epoch": 7, "items": names[:2], "last": False})
    batch = asyncio.ensure_future(c.apply_batch([SessionEntry(n, {"k": 1}, True) for n in names[1:5]], timeout=2.0))
    await asyncio.sleep(0.05)  # an observation window for a negative check: the batch must not finish in it
    assert not batch.done()  # waits for the CP's last standby_kept
    c.on_cp_frame({"t": "standby_kept", "epoch": 7, "items": names[2:4], "last": True})
    assert c.drop_active_sessions() == 2  # HA.on_demoted, after the frames here: only the two not kept
    await until(lambda: any(m["t"] == "open" for m in srv.cp.sent), 2, interval=0.01, what="the batch's standby open sent to the CP")
    c.on_cp_frame({"t": "opened", "terminal": names[4], "kind": "standby"})  # the CP answers the one open
    await asyncio.wait_for(batch, 2.0)
    states = {n: ts.state for n, ts in srv.sessions.table.items()}
    assert states == {names[0]: CLOSED, names[1]: STANDBY, names[2]: STANDBY, names[3]: STANDBY, names[4]: STANDBY, names[5]: CLOSED}
    opens = [m["terminal"] for m in srv.cp.sent if m["t"] == "open"] + [i[0] for m in srv.cp.sent if m["t"] == "open_batch" for i in m["items"]]
    assert opens == [names[4]]  # kept: names[1..3]; the batch has 1..4
    assert [m["terminal"] for m in srv.cp.sent if m["t"] == "close"] == [names[0]]  # kept, not in the batch
    await until(lambda: not c.hooks, 2, interval=0.01, what="every session hook run")
    for n in names[:4]:
        assert [h for m, h in heard if m == n][:2] == ["closed", "standby"], (n, heard)


@pytest.mark.timeout(10)
async def test_standby_kept_frames_after_the_batch_read_gave_up_waiting_are_closed_at_the_cp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch read waits a bounded time for the CP to name what it kept; names that come
    later and that this host does not hold as standby sessions are closed at the CP, so the CP
    never keeps a standby session the host does not know of."""
    import hsb.host.sessions_ctl as sctl
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    monkeypatch.setattr(sctl, "KEPT_WAIT_S", 0.05)
    c, srv = standby_ctl(4)
    names = list(srv.sessions.table)
    active_on_a_link(c, srv, 3)
    c.expect_kept()
    c.drop_active_sessions()
    batch = asyncio.ensure_future(c.apply_batch([SessionEntry(names[0], {"k": 1}, True)], timeout=2.0))
    await until(lambda: any(m["t"] == "open" for m in srv.cp.sent), 2, interval=0.01, what="the batch's standby open sent to the CP")
    c.on_cp_frame({"t": "opened", "terminal": names[0], "kind": "standby"})
    await asyncio.wait_for(batch, 2.0)  # gave up waiting, opened what the batch has
    assert srv.sessions.table[names[0]].state == STANDBY
    before = len(srv.cp.sent)
    c.on_cp_frame({"t": "standby_kept", "epoch": 3, "items": names[:3], "last": True})  # too late
    closes = [m["terminal"] for m in srv.cp.sent[before:] if m["t"] == "close" and m["kind"] == "standby"]
    assert closes == names[1:3]  # names[0] is a standby session here: kept as it is
    assert all(srv.sessions.table[n].state != STANDBY for n in names[1:])


def _slow_logons(srv: Any) -> tuple[asyncio.Event, list[tuple[str, str]]]:
    """The service's open_session waits for the gate returned; its hooks' calls noted in order."""
    gate = asyncio.Event()
    hooks: list[tuple[str, str]] = []

    async def slow_open(name: str, *_: Any) -> None:
        hooks.append(("open", name))
        await gate.wait()

    async def close(name: str) -> None:
        hooks.append(("close", name))

    srv.service.open_session, srv.service.close_session = slow_open, close
    return gate, hooks


@pytest.mark.timeout(10)
async def test_a_logon_answered_after_its_cp_link_was_replaced_sends_nothing_on_the_new_one() -> None:
    """The service's open_session is slow; meanwhile the link the request came on is replaced
    and the host registered again (granted, a new epoch): the old request's `open` would open a
    session the CP there never asked for, under that link's epoch. It sends nothing."""
    c, srv = standby_ctl(2)
    gate, hooks = _slow_logons(srv)
    granted_on_a_link(srv)  # the link the request came on
    task = asyncio.ensure_future(c.session_request("T00001", True, {}))
    await until(lambda: ("open", "T00001") in hooks)  # the service's logon under way
    srv.cp.fs, srv.ha.epoch = object(), 4  # replaced, registered again
    gate.set()
    await asyncio.wait_for(task, 2.0)
    assert [m for m in srv.cp.sent if m.get("terminal") == "T00001"] == [], srv.cp.sent
    # ... and the service's logon it made is undone: left open, it would never be closed
    await until(lambda: ("close", "T00001") in hooks)
    assert hooks == [("open", "T00001"), ("close", "T00001")]
    # on the same link, the answer goes as before
    task = asyncio.ensure_future(c.session_request("T00002", True, {}))
    await asyncio.wait_for(task, 2.0)
    assert [(m["t"], m["epoch"]) for m in srv.cp.sent if m.get("terminal") == "T00002"] == [("open", 4)]
    assert ("close", "T00002") not in hooks


@pytest.mark.timeout(10)
async def test_no_hook_runs_once_the_host_has_closed_its_session_work() -> None:
    """A logon's hook running in its own task, another hook of that terminal queued behind it,
    then the stop: the cancelled hook's turn handed the queued one to a new worker, which ran it
    on a service already closing (after close() had returned)."""
    c = ctl()
    log: list[str] = []
    gate = asyncio.Event()

    async def slow_open(name: str) -> None:
        log.append(f"open {name}")
        await gate.wait()

    async def close_session(name: str) -> None:
        log.append(f"close {name}")

    c._spawn(c.run_hook(slow_open, "X"))  # a session_request's logon, in a task of the host's
    await until(lambda: log == ["open X"], 5, what="the open running")
    c._hook(close_session, "X")  # queued behind it
    await c.close()
    for _ in range(20):  # turns of the loop in which a new worker would run it
        await asyncio.sleep(0)
    assert log == ["open X"] and not c.tasks, (log, c.tasks)


@pytest.mark.timeout(10)
async def test_a_session_asked_for_again_is_answered_without_a_second_logon() -> None:
    """The CP asks twice for a terminal's session (an adoption's end and a grant's flip both ask
    for one without a session there): the service's logon runs once, whether the second request
    comes while the first logon runs or after it opened the session; the one open is answered
    again as it is. Before, each request ran open_session: the terminal was logged on twice."""
    c, srv = standby_ctl(2)
    gate = asyncio.Event()
    hooks: list[str] = []

    async def slow_open(name: str, *_: Any) -> None:
        hooks.append(name)
        await gate.wait()

    srv.service.open_session = slow_open
    granted_on_a_link(srv)
    first = asyncio.ensure_future(c.session_request("T00001", True, {}))
    await until(lambda: hooks == ["T00001"])
    second = asyncio.ensure_future(c.session_request("T00001", True, {}))  # while its logon runs
    await asyncio.wait_for(second, 2.0)
    gate.set()
    await asyncio.wait_for(first, 2.0)
    third = asyncio.ensure_future(c.session_request("T00001", True, {}))  # once it is open
    await asyncio.wait_for(third, 2.0)
    assert hooks == ["T00001"], hooks
    opens = [m for m in srv.cp.sent if m.get("terminal") == "T00001" and m["t"] == "open"]
    assert [(m["kind"], m["epoch"]) for m in opens] == [("active", 3), ("active", 3)], opens
    assert srv.sessions.table["T00001"].state == "active"


@pytest.mark.timeout(10)
async def test_a_session_asked_for_again_on_a_new_link_while_its_logon_runs_is_answered_there() -> None:
    """A logon under way for a request of a CP link since lost (the CP restarted in a logon
    storm), and the CP on the new link asks for the same terminal meanwhile: the logon, once
    done, answers the new link's request (one logon, the session open); undone, as an answer to
    nobody, the terminal would wait for a session the CP never asks for again."""
    c, srv = standby_ctl(2)
    gate, hooks = _slow_logons(srv)
    granted_on_a_link(srv)
    first = asyncio.ensure_future(c.session_request("T00001", True, {}))
    await until(lambda: hooks == [("open", "T00001")])
    srv.cp.fs, srv.ha.epoch = object(), 4  # the link replaced, registered again
    await asyncio.wait_for(c.session_request("T00001", True, {}), 2.0)  # asked again there
    gate.set()
    await asyncio.wait_for(first, 2.0)
    assert [(m["t"], m["epoch"]) for m in srv.cp.sent if m.get("terminal") == "T00001"] == [("open", 4)], srv.cp.sent
    assert hooks == [("open", "T00001")] and srv.sessions.table["T00001"].state == "active"
    assert not c.opening and not c.reasked


@pytest.mark.timeout(10)
async def test_a_logon_that_fails_after_its_link_was_replaced_is_refused_to_the_link_that_asked_again() -> None:
    """The same as above, but the service's logon fails: the refusal goes to the new link, which
    asked for the session meanwhile (the old link is gone: a refusal there reached nobody, and the
    terminal waited for a session for good); with nobody asking on the new link, nothing is sent."""
    c, srv = standby_ctl(2)
    gates = {"T00001": asyncio.Event(), "T00002": asyncio.Event()}
    hooks: list[str] = []

    async def failing_open(name: str, *_: Any) -> None:
        hooks.append(name)
        await gates[name].wait()
        raise RuntimeError("the application refused the logon")

    srv.service.open_session = failing_open
    granted_on_a_link(srv)
    first = asyncio.ensure_future(c.session_request("T00001", True, {}))
    other = asyncio.ensure_future(c.session_request("T00002", True, {}))
    await until(lambda: sorted(hooks) == ["T00001", "T00002"])
    srv.cp.fs, srv.ha.epoch = object(), 4  # the link replaced, registered again
    await asyncio.wait_for(c.session_request("T00001", True, {}), 2.0)  # T00001 asked for again there
    for g in gates.values():
        g.set()
    await asyncio.wait_for(asyncio.gather(first, other), 2.0)
    sent = [(m["t"], m.get("terminal"), m["epoch"]) for m in srv.cp.sent if m.get("terminal") in gates]
    assert sent == [("refuse", "T00001", 4)], srv.cp.sent
    assert not c.opening and not c.reasked


@pytest.mark.timeout(10)
async def test_a_standby_session_opened_again_sends_no_close_first() -> None:
    """The active's ring says a terminal's session opened while the standby holds its standby
    session already (a logon again there): the standby asks the CP to open it again, which
    replaces it. A `close` sent first could reach the CP after a grant had switched that
    session to this host, and be taken for this host losing it: the terminal told its session
    closed, though it never was."""
    c, srv = standby_ctl(2)
    c.cp_registered = True
    assert c._open_standby("T00001", {"k": 1})
    assert c._open_standby("T00001", {"k": 1})  # again: still open here
    frames = [(m["t"], m.get("kind")) for m in srv.cp.sent if m.get("terminal") == "T00001"]
    assert frames == [("open", "standby"), ("open", "standby")], frames


@pytest.mark.timeout(10)
async def test_a_standby_session_whose_new_opening_is_refused_is_closed() -> None:
    """The active's session of a terminal opened again with other attributes (a reload changed
    them while it was closed there, and its close never reached this host: a ring lap, or one
    pending window): the standby refuses the new opening, as it must, and closed nothing, so a
    switch carried the terminal onto the attributes the active no longer used."""
    from hsb.host.sessions import STANDBY
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    assert c._open_standby("T00001", {"k": 1})
    c.apply_ring([SessionEntry("T00001", {"k": 2}, True)])
    assert c.sessions.table["T00001"].state != STANDBY and "T00001" in c.refused
    frames = [(m["t"], m.get("kind"), "refused" in m) for m in srv.cp.sent if m.get("terminal") == "T00001"]
    # (closed plainly, then refused: the CP takes a refusal from its standby only)
    assert frames == [("open", "standby", False), ("close", "standby", False), ("close", "standby", True)], frames


@pytest.mark.parametrize("ends_at", ["ring", "batch"])
async def test_a_refusal_the_standby_no_longer_makes_is_ended_at_the_cp(ends_at: str) -> None:
    """The standby refused T00001's standby session (its attributes differ), the CP told; then
    it read T00001's close (a logoff), on the ring or as a batch without it: it refuses nothing
    now, but nothing was open, so it told the CP nothing, which went on not waiting for T00001's
    next standby session at a handover. A plain `close` ends the refusal there."""
    from hsb.takeover.records import SessionEntry

    c, srv = standby_ctl(2)
    c.cp_registered = True
    c.apply_ring([SessionEntry("T00001", {"k": 2}, True)])
    if ends_at == "ring":
        c.apply_ring([SessionEntry("T00001", {"k": 2}, False)])
    else:
        await c.apply_batch([SessionEntry("T00002", {"k": 1}, True)], timeout=0.01)
    frames = [(m["t"], "refused" in m) for m in srv.cp.sent if m.get("terminal") == "T00001"]
    assert frames == [("close", True), ("close", False)], frames
    assert c.refusing == {}


@pytest.mark.timeout(10)
async def test_the_services_standby_logons_and_logoffs_stay_paired() -> None:
    """A standby session opened again (a resync's batch opens every one) ran the service's
    open_session again with no close between (two logons for one session); one the CP refused
    (open_failed) was closed without the service hearing it (a logon left for good)."""
    c, srv = standby_ctl(2)
    hooks = recording_service(srv)
    c.cp_registered = True
    assert c._open_standby("T00001", {"k": 1})
    assert c._open_standby("T00001", {"k": 1})  # again: still the one logon
    await until(lambda: hooks)
    c.on_cp_frame({"t": "open_failed", "terminal": "T00001", "kind": "standby", "reason": "test"})
    await until(lambda: ("close", "T00001") in hooks)
    assert hooks == [("open", "T00001"), ("close", "T00001")], hooks
