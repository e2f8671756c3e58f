"""hsbcpd's session table and handovers, real sockets: a planned handover waits for the standby
sessions still owed (two seconds at most), standby opens go in a batch answered in one frame,
the active names its open sessions and the CP keeps them, a switch drops the kept sessions of
terminals not back, a planned switchover keeps the demoted active's sessions as its standby
sessions, and the session table comes in pages that together are all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.client import cp_sessions, request
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.lonecp import ATTRS, fail_over, logon, lone_cp, pair, sessions, status, wait_status
from tests.support.procs import SECRET, Proc, addr, start_cp


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    yield from lone_cp(tmp_path)


async def test_a_planned_handover_waits_for_the_standby_sessions_still_owed(cp: Proc) -> None:
    """A terminal that logged on just before a planned switchover may not have its standby
    session yet (the standby follows the ring): the grant waits for it instead of sending
    that terminal down the classic path (a disconnect in a switchover the operator chose)."""
    a, b = await pair(cp)
    terms = [await logon(cp, f"T{i:05d}") for i in (1, 2, 3)]
    for t in terms[:2]:
        b.send({"t": "open", "terminal": t.name, "kind": "standby", "attrs": ATTRS})
    await b.wait_count(lambda m: m["t"] == "opened", 2)
    a.send({"t": "release", "epoch": a.epoch})
    await a.wait(lambda m: m["t"] == "released")
    a.send({"t": "handover", "epoch": a.epoch})
    ev = await asyncio.get_running_loop().run_in_executor(None, lambda: cp.wait_event("handover_waits_for_standby_sessions"))
    assert ev["owed"] == 1
    b.send({"t": "open", "terminal": "T00003", "kind": "standby", "attrs": ATTRS})  # the standby catches up
    g = await b.wait(lambda m: m["t"] == "switch_granted")
    rec = (await status(cp))["last_switchover"]
    assert rec["epoch"] == g["epoch"] and rec["switched"] == 3 and rec["classic"] == 0, rec
    for t in terms:
        await t.wait(lambda m: m["t"] == "switched")
        assert not t.closed


async def test_a_planned_handover_waits_two_seconds_at_most(cp: Proc) -> None:
    """A standby that never opens the owed session does not hold the switchover up for good."""
    a, b = await pair(cp)
    _t1, t2 = await logon(cp, "T00001"), await logon(cp, "T00002")  # both logged on (a collected client logs off)
    b.send({"t": "open", "terminal": "T00001", "kind": "standby", "attrs": ATTRS})
    await b.wait(lambda m: m["t"] == "opened")
    a.send({"t": "release", "epoch": a.epoch})
    await a.wait(lambda m: m["t"] == "released")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    a.send({"t": "handover", "epoch": a.epoch})
    await b.wait(lambda m: m["t"] == "switch_granted")
    assert 1.5 < loop.time() - t0 < 6.0
    rec = (await status(cp))["last_switchover"]
    assert rec["switched"] == 1 and rec["classic"] == 1, rec
    await t2.wait_closed()


async def test_standby_opens_in_a_batch_answered_in_one_frame(cp: Proc) -> None:
    """The standby's open storm in open_batch frames (the CP says in `registered` how large):
    one opened_batch for what opened, an open_failed for each of the others, a malformed
    batch closes only that host link with an error naming the problem."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    names = [f"T{i:05d}" for i in range(1, 11)]
    for n in names[:3]:
        await logon(cp, n)
    sb = await FakeHost.connect(cp.info["host"], "host-b")
    reg = await sb.register("standby")
    assert reg["t"] == "registered" and reg["open_batch"] >= 1024, reg
    items = [[n, ATTRS] for n in names] + [["NOSB", ATTRS], ["NOPE", ATTRS]]
    sb.send({"t": "open_batch", "kind": "standby", "items": items})
    ok = await sb.wait(lambda m: m["t"] == "opened_batch")
    assert ok["terminals"] == names and ok["kind"] == "standby"
    failed = await sb.wait_count(lambda m: m["t"] == "open_failed", 2)
    assert {m["terminal"] for m in failed} == {"NOSB", "NOPE"}
    assert "not standby-capable" in next(m for m in failed if m["terminal"] == "NOSB")["reason"]
    assert "not defined" in next(m for m in failed if m["terminal"] == "NOPE")["reason"]
    assert not [m for m in sb.inbox if m["t"] == "opened"], "no single answers for a batch"
    s = await sessions(cp)
    assert all(s[n]["standby"]["host"] == "host-b" for n in names[:3])
    assert (await status(cp))["terminals"]["standby_sessions"] == 10
    # a malformed batch: that link closes with a clear error; the active serves on
    sb.send({"t": "open_batch", "kind": "standby", "items": [["T00001"]]})
    err = await sb.wait(lambda m: m["t"] == "error")
    assert err["code"] == "bad_fields" and "[terminal, attrs]" in err["msg"]
    assert (await status(cp))["active"]["name"] == "host-a"
    assert not a.closed


async def test_the_active_names_its_open_sessions_and_the_cp_keeps_them(tmp_path: Path) -> None:
    """A registering active that can name its open sessions (after a CP restart they never
    closed) is asked to: a terminal it named is served by its welcome and the session's opening
    at once, with no session_request; the others are asked for only after the last `adopt`
    frame; a named session whose terminal does not come back within resume_window is closed at
    the active, and one the CP does not know is refused."""
    proc = start_cp(tmp_path / "cp", terminals=10, host_timeout=0.5, resume_window=1.0)
    try:
        a = await FakeHost.connect(proc.info["host"], "host-a")
        a.auto_open = ATTRS
        reg = await a.register("active", adopt=True)
        assert reg["t"] == "registered" and reg["adopt"] is True, reg
        a.send({"t": "adopt", "epoch": a.epoch, "items": [["T00001", ATTRS], ["T00002", ATTRS], ["NOPE", ATTRS]]})
        t1 = await logon(proc, "T00001")  # named: its session is open with its welcome
        assert [m["t"] for m in t1.inbox[:2]] == ["welcome", "session"], t1.inbox
        t4 = await FakeTerminal.connect(proc.info["terminal"], "T00004")  # not named: waits for the last frame
        await t4.wait(lambda m: m["t"] == "welcome")
        refused = await a.wait(lambda m: m["t"] == "session_closed" and m["terminal"] == "NOPE")
        assert "not defined at the CP" in refused["reason"]
        assert not [m for m in a.inbox if m["t"] == "session_request"], "nothing asked while the active names its sessions"
        a.send({"t": "adopt", "epoch": a.epoch, "items": [], "last": True})
        req = await a.wait(lambda m: m["t"] == "session_request")
        assert req["terminal"] == "T00004"
        await t4.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        t1.send({"t": "msg", "id": 1, "data": "hello"})
        d = await a.wait(lambda m: m["t"] == "deliver")
        assert (d["terminal"], d["id"], d["redelivered"]) == ("T00001", 1, False)
        gone = await a.wait(lambda m: m["t"] == "session_closed" and m["terminal"] == "T00002", timeout=5)
        assert gone["reason"] == "disconnect"
        assert [m["terminal"] for m in a.inbox if m["t"] == "session_request"] == ["T00004"]
        st = await status(proc)
        assert st["counters"]["adopted"] == 2 and st["counters"]["adopted_expired"] == 1, st["counters"]
        assert st["terminals"]["active_sessions"] == 2  # T00001 and T00004
    finally:
        proc.stop()


async def test_a_switch_drops_the_kept_sessions_of_terminals_not_back(cp: Proc) -> None:
    """A session the old active named (kept for a terminal not back yet) goes with the old active
    at a failover: the terminal, when it comes back, logs on at the new active."""
    a = await FakeHost.connect(cp.info["host"], "host-a")
    a.auto_open = ATTRS
    assert (await a.register("active", adopt=True))["adopt"] is True
    a.send({"t": "adopt", "epoch": a.epoch, "items": [["T00005", ATTRS]], "last": True})
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    b.auto_open = ATTRS
    st = await wait_status(cp, lambda s: s["counters"]["adopted"] == 1)
    assert st["terminals"]["active_sessions"] == 1, st["terminals"]
    g = await fail_over(a, b)
    assert g["epoch"] > a.epoch
    st = await status(cp)
    assert st["terminals"]["active_sessions"] == 0, st["terminals"]
    t = await logon(cp, "T00005")
    req = await b.wait(lambda m: m["t"] == "session_request")
    assert req["terminal"] == "T00005"
    assert [m for m in t.inbox if m["t"] == "session"][0]["epoch"] == g["epoch"]


@pytest.mark.parametrize("flip_slice", [4096, 1])
async def test_a_planned_switchover_keeps_the_demoted_actives_sessions_as_its_standby_sessions(tmp_path: Any, flip_slice: int) -> None:
    """The old active of a planned switchover that says it can (keep_standby) keeps its sessions
    at the CP as standby sessions, named to it in standby_kept frames (the last marked; one per
    slice of the flip): no standby open storm after the switch, and the next failover switches
    those terminals back. A terminal gone before the switch is not kept."""
    cp = start_cp(tmp_path / "cp", terminals=20, host_timeout=0.5, flip_slice=flip_slice)
    try:
        await _keeps(cp)
    finally:
        cp.stop()


async def _keeps(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a")
    a.auto_open = ATTRS
    assert (await a.register("active", keep_standby=True))["t"] == "registered"
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    b.auto_open = ATTRS
    terms = [await logon(cp, f"T{i:05d}") for i in (1, 2, 3)]
    for t in terms:
        b.send({"t": "open", "terminal": t.name, "kind": "standby", "attrs": ATTRS})
    await b.wait_count(lambda m: m["t"] == "opened", 3)
    await terms[2].close()  # logged off before the switch: its session is not kept
    await a.wait(lambda m: m["t"] == "session_closed" and m["terminal"] == "T00003")
    a.send({"t": "release", "epoch": a.epoch})
    await a.wait(lambda m: m["t"] == "released")
    a.send({"t": "handover", "epoch": a.epoch})
    g = await b.wait(lambda m: m["t"] == "switch_granted")
    d = await a.wait(lambda m: m["t"] == "demoted")
    assert d["keeps"] is True and d["epoch"] == g["epoch"]
    await a.wait(lambda m: m["t"] == "standby_kept" and m["last"] is True)
    frames = [m for m in a.inbox if m["t"] == "standby_kept"]
    assert [m["last"] for m in frames] == [False] * (len(frames) - 1) + [True]
    kept = [n for m in frames for n in m["items"]]
    assert sorted(kept) == ["T00001", "T00002"] and all(m["epoch"] == g["epoch"] for m in a.inbox if m["t"] == "standby_kept")
    st = await status(cp)
    assert st["terminals"]["standby_sessions"] == 2 and st["terminals"]["active_sessions"] == 2, st["terminals"]
    assert st["last_switchover"]["standby_kept"] == 2
    assert not [m for m in a.inbox if m["t"] in ("opened", "open_failed") and m.get("kind") == "standby"]
    a.epoch = g["epoch"]
    g2 = await fail_over(b, a)  # the kept sessions are real standby sessions: the terminals switch back
    for t in terms[:2]:
        sw = await t.wait(lambda m: m["t"] == "switched" and m["epoch"] == g2["epoch"])
        assert sw and not t.closed
    rec = (await status(cp))["last_switchover"]
    assert rec["switched"] == 2 and rec["classic"] == 0, rec


async def test_the_session_table_comes_in_pages_that_together_are_all_of_it(cp: Proc) -> None:
    """At 100,000 terminals one answer was ~19 MB, built in one turn of the CP's loop (0.65 s:
    longer than host_timeout) and past hsbctl's frame limit from ~5,500 terminals on. Pages of
    at most 4,000, each saying where the next begins; bad paging fields are a bad frame."""
    a = await FakeHost.connect(cp.info["host"], "host-a")
    a.auto_open = ATTRS
    assert (await a.register("active"))["t"] == "registered"
    names = [f"T{i:05d}" for i in (1, 3, 7, 12, 19)]
    terms = [await logon(cp, n) for n in names]
    h, p = addr(cp.info["admin"])
    seen: dict[str, Any] = {}
    offset: int | None = 0
    pages = 0
    while offset is not None:
        ans = await request(h, p, SECRET, {"t": "sessions", "offset": offset, "limit": 4})
        assert ans["t"] == "sessions" and len(ans["data"]) <= 4, ans
        seen.update(ans["data"])
        offset, pages = ans["next"], pages + 1
    assert sorted(seen) == names and pages == 6  # (21 terminals defined, 4 a page)
    assert sorted(await cp_sessions(h, p, SECRET)) == names
    for bad in ({"offset": -1}, {"limit": 0}, {"limit": 4001}, {"offset": "0"}):
        ans = await request(h, p, SECRET, {"t": "sessions", **bad})
        assert ans["t"] == "error" and ans["code"] == "bad_fields", (bad, ans)
    for t in terms:
        await t.close()
    await a.close()
