"""hsbcpd as a real process on real sockets, driven by a test host-link client (issue 3)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsb.wire.client import FrameStream, LinkClosed, cp_sessions, request
from hsb.wire.framing import encode
from tests.support.hostclient import FakeHost, FakeTerminal, until_cp_status
from tests.support.procs import SECRET, Proc, addr, start_cp, until

ATTRS = {"protocol": "hsb1", "codepage": "utf-8"}


@pytest.fixture
def cp(tmp_path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=20, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=8)
    yield proc
    proc.stop()


async def pair(cp: Proc) -> tuple[FakeHost, FakeHost]:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    return a, b


async def logon(cp: Proc, name: str) -> FakeTerminal:
    t = await FakeTerminal.connect(cp.info["terminal"], name)
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    return t


async def fail_over(a: FakeHost, b: FakeHost) -> dict:
    """The active's host link closes; the standby asks and is granted. Returns the grant."""
    await a.close()
    await b.wait(lambda m: m["t"] == "active_lost")
    mark = len(b.inbox)
    b.send({"t": "switchover", "reason": "test", "planned": False})
    g = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"), start=mark)
    assert g["t"] == "switch_granted", g
    return g


async def status(cp: Proc) -> dict:
    h, p = addr(cp.info["admin"])
    return (await request(h, p, SECRET, {"t": "status"}))["data"]


async def wait_status(cp: Proc, cond: Any, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond(st := await status(cp)):
        assert asyncio.get_running_loop().time() < deadline, f"status never matched: {st}"
        await asyncio.sleep(0.02)
    return st


async def sessions(cp: Proc) -> dict:
    h, p = addr(cp.info["admin"])
    return await cp_sessions(h, p, SECRET)


async def test_active_and_standby_sessions_traffic_only_on_active(cp: Proc) -> None:
    a, b = await pair(cp)
    t = await logon(cp, "T00001")
    b.send({"t": "open", "terminal": "T00001", "kind": "standby", "attrs": ATTRS})
    await b.wait(lambda m: m["t"] == "opened" and m["terminal"] == "T00001")
    s = (await sessions(cp))["T00001"]
    assert s["active"]["host"] == "host-a" and s["standby"]["host"] == "host-b"
    assert s["standby"]["attrs"] == ATTRS
    for i in range(1, 4):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    delivered = await a.wait_count(lambda m: m["t"] == "deliver", 3)
    assert [m["id"] for m in delivered] == [1, 2, 3]
    assert all(m["redelivered"] is False for m in delivered)
    await t.wait_count(lambda m: m["t"] == "ack", 3)
    assert not [m for m in b.inbox if m["t"] == "deliver"], "the standby session must carry no traffic"
    st_ = await status(cp)
    assert st_["terminals"]["active_sessions"] == 1 and st_["terminals"]["standby_sessions"] == 1
    assert st_["held_messages"] == 3
    # a repeat of an acknowledged id is re-acknowledged, not delivered again
    t.send({"t": "msg", "id": 2, "data": "again"})
    await t.wait_count(lambda m: m["t"] == "ack" and m["id"] == 2, 2)
    assert len([m for m in a.inbox if m["t"] == "deliver"]) == 3


async def test_switchover_refused_while_active_alive_then_redelivers_in_order(cp: Proc) -> None:
    a, b = await pair(cp)
    t = await logon(cp, "T00002")
    b.send({"t": "open", "terminal": "T00002", "kind": "standby", "attrs": ATTRS})
    await b.wait(lambda m: m["t"] == "opened")
    for i in range(1, 6):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    await a.wait_count(lambda m: m["t"] == "deliver", 5)
    # the active answers 1 and 2: their replies reach the terminal
    for i in (1, 2):
        a.send({"t": "reply", "terminal": "T00002", "id": i, "data": f"r{i}", "epoch": a.epoch})
    await t.wait_count(lambda m: m["t"] == "reply", 2)

    b.send({"t": "switchover", "reason": "test", "planned": False})
    refused = await b.wait(lambda m: m["t"] in ("switch_refused", "switch_granted"))
    assert refused["t"] == "switch_refused" and "alive" in refused["reason"]

    old_epoch = a.epoch
    await a.close()  # the active's host link closes (process died)
    await b.wait(lambda m: m["t"] == "active_lost")
    mark = len(b.inbox)
    b.send({"t": "switchover", "reason": "test", "planned": False})
    granted = await b.wait(lambda m: m["t"] in ("switch_refused", "switch_granted"), start=mark)
    assert granted["t"] == "switch_granted" and granted["epoch"] == old_epoch + 1
    red = await b.wait_count(lambda m: m["t"] == "deliver", 3)
    assert [m["id"] for m in red] == [3, 4, 5], "held messages in order; 1 and 2 were answered, never again"
    assert all(m["redelivered"] for m in red)
    sw = await t.wait(lambda m: m["t"] == "switched")
    assert sw["epoch"] == granted["epoch"]
    assert not t.closed
    for m in red:
        b.send({"t": "reply", "terminal": "T00002", "id": m["id"], "data": "r", "epoch": granted["epoch"]})
    replies = await t.wait_count(lambda m: m["t"] == "reply", 5)
    assert sorted(m["id"] for m in replies) == [1, 2, 3, 4, 5]
    st_ = await status(cp)
    assert st_["epoch"] == granted["epoch"] and st_["active"]["name"] == "host-b"
    assert st_["last_switchover"]["switched"] == 1 and st_["last_switchover"]["switch_ms"] >= 0


async def test_switch_notice_precedes_the_new_actives_reply_and_reaches_each_terminal_once(cp: Proc) -> None:
    """The notices are owed at the grant and written after service resumes; a terminal the
    new active answers first still hears `switched` before that reply."""
    a, b = await pair(cp)
    names = ["T00004", "T00005", "T00006"]
    ts = [await logon(cp, n) for n in names]
    for n in names:
        b.send({"t": "open", "terminal": n, "kind": "standby", "attrs": ATTRS})
    await b.wait_count(lambda m: m["t"] == "opened", 3)
    ts[0].send({"t": "msg", "id": 1, "data": "held"})
    await a.wait(lambda m: m["t"] == "deliver")
    g = await fail_over(a, b)
    red = await b.wait(lambda m: m["t"] == "deliver")
    assert red["redelivered"] is True
    b.send({"t": "reply", "terminal": "T00004", "id": 1, "data": "r", "epoch": g["epoch"]})
    await ts[0].wait(lambda m: m["t"] == "reply")
    kinds = [m["t"] for m in ts[0].inbox]
    assert "switched" in kinds and kinds.index("switched") < kinds.index("reply"), kinds
    for t in ts:
        await t.wait(lambda m: m["t"] == "switched")
    deadline = asyncio.get_running_loop().time() + 10
    while (await status(cp))["last_switchover"].get("notices_sent_ms") is None:
        assert asyncio.get_running_loop().time() < deadline, "notices never finished"
        await asyncio.sleep(0.02)
    for t in ts:
        notices = [m for m in t.inbox if m["t"] == "switched"]
        assert len(notices) == 1 and notices[0]["epoch"] == g["epoch"], (t.name, notices)
        assert not t.closed


async def test_silent_active_is_fenced_and_its_frames_refused(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active", heartbeat=None)
    a.auto_open = ATTRS
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    t = await logon(cp, "T00003")
    b.send({"t": "open", "terminal": "T00003", "kind": "standby", "attrs": ATTRS})
    await b.wait(lambda m: m["t"] == "opened")
    t.send({"t": "msg", "id": 1, "data": "x"})
    await a.wait(lambda m: m["t"] == "deliver")
    lost = await b.wait(lambda m: m["t"] == "active_lost", timeout=5)
    assert lost["why"] == "silent"
    b.send({"t": "switchover", "reason": "silent", "planned": False})
    g = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
    assert g["t"] == "switch_granted"
    fenced = await a.wait(lambda m: m["t"] == "fenced")
    assert fenced["epoch"] == g["epoch"]
    # the old active's late reply never reaches the terminal; the new one's does
    a.send({"t": "reply", "terminal": "T00003", "id": 1, "data": "stale", "epoch": a.epoch})
    d = await b.wait(lambda m: m["t"] == "deliver")
    assert d["redelivered"] is True
    b.send({"t": "reply", "terminal": "T00003", "id": 1, "data": "fresh", "epoch": g["epoch"]})
    r = await t.wait(lambda m: m["t"] == "reply")
    assert r["data"] == "fresh"
    # a fenced host that comes back claiming active is refused
    a2 = await FakeHost.connect(cp.info["host"], "host-a", None)
    res = await a2.register("active")
    assert res["t"] == "error" and res["code"] == "active_exists" and "standby" in res["msg"]


async def test_a_second_loss_of_the_same_active_is_told_to_the_standby_again(cp: Proc) -> None:
    """The standby hears of each loss of the active: one that ended (the active heard again)
    does not silence the next; and a standby that registers again while the active is lost
    hears of it on its new link (else nobody would ever ask for the active role)."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active", heartbeat=None)
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    first = await b.wait(lambda m: m["t"] == "active_lost", timeout=5)
    assert first["why"] == "silent"
    # the standby does not ask (say, it was paused); the active is heard again, then falls silent again
    mark = len(b.inbox)
    a.send({"t": "hb", "n": 1})
    await a.wait(lambda m: m["t"] == "hb" and m.get("ack") == 1)
    again = await b.wait(lambda m: m["t"] == "active_lost", start=mark, timeout=5)
    assert again["why"] == "silent"
    # the standby's link goes while the active is still lost; it registers again on a new link
    await b.close()
    await wait_status(cp, lambda s: not s.get("standby"))  # the CP saw it go
    b2 = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    told = await b2.wait(lambda m: m["t"] == "active_lost", timeout=5)
    assert told["host"] == "host-a"


async def at_the_kept_bound(cp: Proc, name: str) -> FakeTerminal:
    """A resuming terminal that sent 8 messages and holds their 8 replies, unconfirmed: at the
    CP's bound of kept replies (held_bound 8 here)."""
    a, _b = await pair(cp)
    a.auto_reply = True
    t = await FakeTerminal.connect(cp.info["terminal"], name, hello=False)
    t.send({"t": "hello", "terminal": name, "last_reply": 0})
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    for i in range(1, 9):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    await t.wait_count(lambda m: m["t"] == "reply", 8)
    return t


async def test_kept_replies_at_the_bound_still_let_the_terminals_confirm_through(cp: Proc) -> None:
    """A resuming terminal's unconfirmed replies at the bound (8 here) stop its messages, not its
    confirmations: the CP reads on, takes the confirm, and only then the messages that waited
    behind the bound, in order (it once stopped reading altogether and waited for ever for a
    confirm it would not read)."""
    t = await at_the_kept_bound(cp, "T00009")
    await wait_status(cp, lambda s: s["terminals"]["backpressured"] == 1)
    t.send({"t": "msg", "id": 9, "data": "m9"})  # waits behind the bound
    t.send({"t": "confirm", "id": 8})
    r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 9)
    assert r["data"] == "m9"
    assert [m["id"] for m in t.inbox if m["t"] == "ack"] == list(range(1, 10))
    await wait_status(cp, lambda s: s["terminals"]["backpressured"] == 0)


async def test_a_terminal_that_never_confirms_is_told_so_not_left_unread(cp: Proc) -> None:
    """At the bound of kept replies, a terminal that sends as much as it may have held
    (held_bytes, 8 MiB) without one confirmation is closed with an error that says what to do (it
    was left unread for ever, its loss unseen); what waited was never acknowledged, so nothing
    acknowledged is lost."""
    t = await at_the_kept_bound(cp, "T00011")
    for i in range(9, 9 + 130):  # no confirm: 130 messages of 64 KiB wait behind the bound
        t.send({"t": "msg", "id": i, "data": "x" * 65536})
    err = await t.wait(lambda m: m["t"] == "error")
    assert err["code"] == "unconfirmed_replies" and "confirm" in err["msg"], err
    await t.wait_closed()
    assert max(m["id"] for m in t.inbox if m["t"] == "ack") == 8  # none of those that waited was acknowledged


async def test_a_confirmation_past_what_the_terminal_sent_does_not_hide_later_replies(cp: Proc) -> None:
    """A terminal that confirms (or says in its hello) an id it never sent does not go without
    the replies to what it sends afterwards: the CP takes it as far as the highest id accepted."""
    a, _b = await pair(cp)
    a.auto_reply = True
    t = await FakeTerminal.connect(cp.info["terminal"], "T00010", hello=False)
    t.send({"t": "hello", "terminal": "T00010", "last_reply": 2**63 - 1})
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "confirm", "id": 2**63 - 2})
    t.send({"t": "msg", "id": 1, "data": "one"})
    r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1)
    assert r["data"] == "one"


async def test_stale_epoch_frame_is_refused(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logon(cp, "T00004")
    t.send({"t": "msg", "id": 1, "data": "x"})
    await a.wait(lambda m: m["t"] == "deliver")
    a.send({"t": "reply", "terminal": "T00004", "id": 1, "data": "old", "epoch": a.epoch - 1})
    err = await a.wait(lambda m: m["t"] == "error")
    assert err["code"] == "fenced"
    t.send({"t": "msg", "id": 2, "data": "after"})  # its ack comes after anything the stale reply caused
    await t.wait(lambda m: m["t"] == "ack" and m["id"] == 2)
    assert not [m for m in t.inbox if m["t"] == "reply"]


async def test_terminal_without_standby_session_takes_the_classic_path(cp: Proc) -> None:
    a, b = await pair(cp)
    t = await logon(cp, "NOSB")
    t.send({"t": "msg", "id": 1, "data": "keep me"})
    await t.wait(lambda m: m["t"] == "ack")
    await a.wait(lambda m: m["t"] == "deliver")
    await a.close()
    await b.wait(lambda m: m["t"] == "active_lost")
    b.auto_open = ATTRS
    b.send({"t": "switchover", "reason": "test", "planned": False})
    g = await b.wait(lambda m: m["t"] == "switch_granted")
    b.epoch = g["epoch"]
    await t.wait_closed()
    t2 = await logon(cp, "NOSB")
    d = await b.wait(lambda m: m["t"] == "deliver" and m["terminal"] == "NOSB")
    assert d["id"] == 1 and d["redelivered"] is True and d["data"] == "keep me"
    b.send({"t": "reply", "terminal": "NOSB", "id": 1, "data": "done", "epoch": g["epoch"]})
    r = await t2.wait(lambda m: m["t"] == "reply")
    assert r["id"] == 1 and r["data"] == "done"


async def test_backpressure_at_held_bound_drops_nothing(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logon(cp, "T00005")
    for i in range(1, 31):  # bound is 8
        t.send({"t": "msg", "id": i, "data": "x" * 100})
    await t.fs.drain()
    await a.wait_count(lambda m: m["t"] == "deliver", 8)
    await asyncio.sleep(0.3)  # give the CP every chance to read more than it should
    assert len([m for m in a.inbox if m["t"] == "deliver"]) == 8
    assert len([m for m in t.inbox if m["t"] == "ack"]) == 8
    assert (await status(cp))["terminals"]["backpressured"] == 1
    a.auto_reply = True  # the rest are answered with their own data
    first = [m["id"] for m in a.inbox if m["t"] == "deliver"]
    assert first == list(range(1, 9)), first
    for mid in first:
        a.send({"t": "reply", "terminal": "T00005", "id": mid, "data": "ok", "epoch": a.epoch})
    await t.wait_count(lambda m: m["t"] == "ack", 30)
    await t.wait_count(lambda m: m["t"] == "reply", 30)
    assert (await status(cp))["held_messages"] == 0
    await asyncio.sleep(0.2)  # an observation window: a late duplicate or stray frame would arrive in it
    # every message acknowledged once, answered once with its own reply, the terminal connected
    acked = [m["id"] for m in t.inbox if m["t"] == "ack"]
    replies = {m["id"]: m["data"] for m in t.inbox if m["t"] == "reply"}
    assert sorted(acked) == list(range(1, 31)), f"acks {acked}"
    assert len([m for m in t.inbox if m["t"] == "reply"]) == 30 and sorted(replies) == list(range(1, 31)), t.inbox
    assert replies == {i: "ok" if i <= 8 else "x" * 100 for i in range(1, 31)}, replies
    assert not t.closed, "the terminal was disconnected"


async def test_terminal_errors_unknown_duplicate_bad_first_frame(cp: Proc) -> None:
    u = await FakeTerminal.connect(cp.info["terminal"], "NOPE")
    e = await u.wait(lambda m: m["t"] == "error")
    assert e["code"] == "unknown_terminal"
    await u.wait_closed()
    t1 = await FakeTerminal.connect(cp.info["terminal"], "T00006")
    await t1.wait(lambda m: m["t"] == "welcome")
    t2 = await FakeTerminal.connect(cp.info["terminal"], "T00006")
    e = await t2.wait(lambda m: m["t"] == "error")
    assert e["code"] == "already_connected"
    t3 = await FakeTerminal.connect(cp.info["terminal"], "T00007", hello=False)
    t3.send({"t": "msg", "id": 1, "data": "x"})
    e = await t3.wait(lambda m: m["t"] == "error")
    assert e["code"] == "bad_hello"
    assert not t1.closed


@pytest.mark.parametrize("port", ["host", "admin"])
async def test_wrong_secret_and_no_auth_are_refused(cp: Proc, port: str) -> None:
    h, p = addr(cp.info[port])
    fs = await FrameStream.connect(h, p)
    with pytest.raises(LinkClosed) as ei:
        await fs.authenticate(b"wrong", port, "intruder")
    assert ei.value.error and ei.value.error["code"] == "auth_failed"
    fs = await FrameStream.connect(h, p)
    await fs.recv()  # challenge
    fs.send({"t": "register", "role": "active"} if port == "host" else {"t": "status"})
    e = await fs.recv()
    assert e["t"] == "error" and e["code"] == "auth_required"
    with pytest.raises(LinkClosed):
        await fs.recv(timeout=5)
    # a replayed authentication answer is refused (fresh nonce per connection)
    fs1 = await FrameStream.connect(h, p)
    ch = await fs1.recv()
    from hsb.wire import auth as _auth

    mac = _auth.answer(SECRET, ch["nonce"], port, "x")
    fs2 = await FrameStream.connect(h, p)
    await fs2.recv()
    fs2.send({"t": "auth", "name": "x", "link": port, "mac": mac})
    e = await fs2.recv()
    assert e["t"] == "error" and e["code"] == "auth_failed"
    assert "secret" not in (await status(cp))


async def test_second_active_is_refused(cp: Proc) -> None:
    await FakeHost.connect(cp.info["host"], "host-a", "active")
    b = await FakeHost.connect(cp.info["host"], "host-b", None)
    r = await b.register("active")
    assert r["t"] == "error" and r["code"] == "active_exists"
    assert "host-a" in r["msg"] and "--role standby" in r["msg"]


RAW = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.just(struct.pack(">I", 0)),
    st.just(struct.pack(">I", 50_000_000)),
    st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(min_size=1, max_size=100)),
    st.builds(
        lambda o: encode(o) if isinstance(o, dict) else struct.pack(">I", len(msgpack.packb(o))) + msgpack.packb(o),
        st.recursive(
            st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
    ),
    st.builds(
        lambda t, v: encode({"t": t, "id": v, "data": v, "terminal": v}),
        st.sampled_from(["hello", "msg", "bye", "auth", "register", "reply", "x"]),
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.text(max_size=5),
            st.none(),
            st.lists(st.integers(min_value=-(2**63), max_value=2**63), max_size=2),
        ),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=RAW, port=st.sampled_from(["terminal", "host", "admin"]))
def test_hostile_frames_close_only_that_connection(cp: Proc, junk: bytes, port: str) -> None:
    async def run() -> None:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        a.auto_reply = True
        h, p = addr(cp.info[port])
        r, w = await asyncio.open_connection(h, p)
        w.write(junk)
        await w.drain()
        # the CP answers with an error and/or closes, or waits for more bytes; either way it lives on
        try:
            await asyncio.wait_for(r.read(65536), 0.2)
        except TimeoutError:
            pass
        w.close()
        _state["id"] = _state.get("id", 0) + 1
        good = await logon(cp, "T00010")
        good.send({"t": "msg", "id": _state["id"], "data": "still there?"})
        rep = await good.wait(lambda m: m["t"] == "reply")
        assert rep["data"] == "still there?"
        good.send({"t": "bye"})
        await good.wait_closed()
        await a.close()
        assert cp.popen.poll() is None

    asyncio.run(run())


_state: dict = {}


async def test_ten_thousand_terminals_get_sessions_and_replies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.massterm import run_terminals

    cp = start_cp(tmp_path / "cp", terminals=10_000, held_bound=16)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        a.auto_reply = True
        res = await run_terminals(cp.info["terminal"], [f"T{i:05d}" for i in range(1, 10_001)], timeout=90)
        assert res["sessions"] == 10_000
        assert res["replies"] == 10_000
        st_ = await status(cp)
        assert st_["terminals"]["connected"] == 10_000 and st_["terminals"]["active_sessions"] == 10_000
        assert st_["held_messages"] == 0
        await res["close"]()
    finally:
        cp.stop()


async def test_standby_registering_after_an_abnormal_loss_is_told(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logon(cp, "T00011")
    t.send({"t": "msg", "id": 1, "data": "held"})
    await a.wait(lambda m: m["t"] == "deliver")
    await a.close()  # the active dies while no standby is connected
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    lost = await b.wait(lambda m: m["t"] == "active_lost")
    assert lost["host"] == "host-a"
    b.auto_open = ATTRS
    b.send({"t": "switchover", "reason": "told late", "planned": False})
    g = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
    assert g["t"] == "switch_granted"
    b.epoch = g["epoch"]
    d = await b.wait(lambda m: m["t"] == "deliver" and m["terminal"] == "T00011")
    assert d["redelivered"] is True


async def test_standby_with_no_active_ever_is_not_told_of_a_loss(cp: Proc) -> None:
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    reg = next(m for m in b.inbox if m["t"] == "registered")
    assert reg["active"] is None
    await FakeHost.connect(cp.info["host"], "host-a", "active")
    await asyncio.sleep(0.3)  # a window for a wrong notice to arrive
    assert not [m for m in b.inbox if m["t"] == "active_lost"]


async def test_a_terminal_that_logs_off_while_its_notice_is_owed_is_not_sent_it(cp: Proc) -> None:
    a, b = await pair(cp)
    t = await logon(cp, "T00007")
    b.send({"t": "open", "terminal": "T00007", "kind": "standby", "attrs": ATTRS})
    await b.wait(lambda m: m["t"] == "opened")
    t.send({"t": "msg", "id": 1, "data": "held"})
    await a.wait(lambda m: m["t"] == "deliver")
    g = await fail_over(a, b)
    await b.wait(lambda m: m["t"] == "deliver")
    t.send({"t": "bye"})  # the session closes; the held message is still answered
    await b.wait(lambda m: m["t"] == "session_closed" and m["terminal"] == "T00007")
    b.send({"t": "reply", "terminal": "T00007", "id": 1, "data": "r", "epoch": g["epoch"]})
    await t.wait(lambda m: m["t"] == "reply")
    await t.wait_closed()
    assert [m for m in t.inbox if m["t"] == "switched"] == [], [m["t"] for m in t.inbox]


async def test_a_closed_terminal_that_reads_nothing_does_not_linger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CP closes a terminal's connection (here: the classic path at a failover) while
    megabytes of replies are still queued to it and the terminal reads nothing. A close
    waits for those bytes to go out; after CLOSE_LINGER_S the connection is dropped
    instead. The terminal logging on again meanwhile is one terminal, not two."""
    import socket
    from pathlib import Path

    # more than the kernels can hold between us (the CP's send buffer grows up to tcp_wmem's
    # maximum; this end reads nothing and keeps a tiny receive buffer): 8 replies of `size`
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    size = max(900_000, wmem_max // 4)
    cp = start_cp(
        tmp_path / "cp", terminals=1, extra_terms=[{"name": "NOSB", "standby_capable": False}], host_timeout=0.5, held_bound=8, max_frame=size + 4096
    )
    try:
        a, b = await pair(cp)
        h, p = addr(cp.info["terminal"])
        sock = socket.create_connection((h, p))
    except BaseException:
        cp.stop()
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, buffers little
    try:
        sock.sendall(encode({"t": "hello", "terminal": "NOSB"}))
        for i in range(1, 9):
            sock.sendall(encode({"t": "msg", "id": i, "data": "x"}))
        await a.wait_count(lambda m: m["t"] == "deliver" and m["terminal"] == "NOSB", 8)
        big = "r" * size
        for i in range(1, 9):
            a.send({"t": "reply", "terminal": "NOSB", "id": i, "data": big, "epoch": a.epoch})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (st := await status(cp))["held_messages"]:  # every reply taken from the host
            assert loop.time() < deadline, st
            await asyncio.sleep(0.05)
        assert st["terminals"]["connected"] == 1
        await fail_over(a, b)  # NOSB has no standby session: its connection is closed
        b.auto_open = ATTRS
        t2 = await logon(cp, "NOSB")  # at once, while the old connection still sends
        assert (await status(cp))["terminals"]["connected"] == 1
        ev = await loop.run_in_executor(None, lambda: cp.wait_event("connection_dropped", timeout=15, link="terminal"))
        assert ev["unsent_bytes"] > 0
        st = await status(cp)
        assert st["terminals"]["connected"] == 1 and st["terminals"]["active_sessions"] == 1, st["terminals"]
        t2.send({"t": "msg", "id": 9, "data": "after"})
        await t2.wait(lambda m: m["t"] == "ack" and m["id"] == 9)
    finally:
        sock.close()
        cp.stop()


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


async def test_the_same_active_on_a_new_link_replaces_its_old_one_another_is_refused(cp: Proc) -> None:
    """The active's link broke on its side only (a reset the CP did not see): the same host
    process registering again takes its role over on the new link; a different process with the
    same name is refused as before."""
    a1 = await FakeHost.connect(cp.info["host"], "host-a")
    a1.auto_open = ATTRS
    assert (await a1.register("active", instance="p1"))["t"] == "registered"
    t = await logon(cp, "T00001")
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    a2 = await FakeHost.connect(cp.info["host"], "host-a")
    a2.auto_open = ATTRS
    ans = await a2.register("active", instance="p1")
    assert ans["t"] == "registered" and ans["epoch"] > a1.epoch, ans
    await until(lambda: a1.closed, 5, what="the old link dropped")
    req = await a2.wait(lambda m: m["t"] == "session_request" and m["terminal"] == "T00001")
    assert req
    other = await FakeHost.connect(cp.info["host"], "host-a")
    ans = await other.register("active", instance="p2")
    assert ans["t"] == "error" and ans["code"] == "active_exists", ans
    h, p = addr(cp.info["admin"])
    st = (await request(h, p, SECRET, {"t": "status"}))["data"]
    assert st["active"]["name"] == "host-a" and st["counters"]["failovers"] == 0


async def test_a_flip_redelivers_in_batches_to_a_host_that_reads_them(cp: Proc) -> None:
    """The flip at a grant sends what every terminal holds as deliver_batch frames, each within
    the size the host declared, to a host that registered for them: the same messages, order
    and marks as one deliver frame each would carry (a host that did not declare gets those)."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    b = await FakeHost.connect(cp.info["host"], "host-b")
    assert (await b.register("standby", deliver_batch=1024))["t"] == "registered"
    names = [f"T{i:05d}" for i in range(1, 7)]
    terms = {}
    for name in names:
        terms[name] = await logon(cp, name)
        b.send({"t": "open", "terminal": name, "kind": "standby", "attrs": ATTRS})
        await b.wait(lambda m, name=name: m["t"] == "opened" and m["terminal"] == name)
    for name, t in terms.items():
        for i in range(1, 4):
            t.send({"t": "msg", "id": i, "data": f"{name}-{i}-" + "x" * 200})
    await a.wait_count(lambda m: m["t"] == "deliver", 18)
    for t in terms.values():
        await t.wait_count(lambda m: m["t"] == "ack", 3)
    a.send({"t": "reply", "terminal": names[0], "id": 1, "data": "r1", "epoch": a.epoch})  # answered: never again
    await terms[names[0]].wait(lambda m: m["t"] == "reply")
    g = await fail_over(a, b)
    expect = [[n, i, f"{n}-{i}-" + "x" * 200, True] for n in names for i in (1, 2, 3) if (n, i) != (names[0], 1)]
    await until(lambda: sum(len(m["items"]) for m in b.inbox if m["t"] == "deliver_batch") >= len(expect), 10, what="every held message re-delivered")
    batches = [m for m in b.inbox if m["t"] == "deliver_batch"]
    assert not [m for m in b.inbox if m["t"] == "deliver"], "a host that reads batches gets no single deliver at the flip"
    items = [it for m in batches for it in m["items"]]
    assert items == expect
    # 17 items of ~220 bytes: more than one frame, each within the 1,024 bytes declared
    assert len(batches) >= 4 and all(len(encode(m)) <= 1024 for m in batches), [len(encode(m)) for m in batches]
    for n, i, _, _ in items:
        b.send({"t": "reply", "terminal": n, "id": i, "data": f"r{i}", "epoch": g["epoch"]})
    for name, t in terms.items():
        got = await t.wait_count(lambda m: m["t"] == "reply", 3)
        assert sorted(m["id"] for m in got) == [1, 2, 3], name
        assert [m for m in t.inbox if m["t"] == "switched"] and not t.closed
    st_ = await status(cp)
    assert st_["last_switchover"]["in_flight_terminals"] == 6 and st_["held_messages"] == 0


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


async def test_the_active_names_its_open_sessions_and_the_cp_keeps_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
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


async def test_a_host_not_yet_registered_hears_from_the_cp(cp: Proc) -> None:
    """A host link authenticated and not yet registered (the host's HA loop busy) gets a sign of
    life for its heartbeats, renewing no lease: a CP silent to it would be taken for a dead one
    and the link made again, over and over."""
    fs = await FrameStream.connect(*addr(cp.info["host"]))
    try:
        await fs.authenticate(SECRET, "host", "host-a")
        fs.send({"t": "hb", "n": 7})
        got = await fs.recv(timeout=5)
        assert got == {"t": "hb"}  # no ack: no lease renewed before registration
    finally:
        await fs.aclose()


async def test_another_host_registering_as_active_while_the_actives_link_is_down_is_refused(cp: Proc) -> None:
    """The active's link is down and no failover has happened, and failover is paused or the CP
    closed that link itself: a host arriving with --role active took the role at once, past the
    operator's pause or the old active's lease. It is refused; the standby path (or the same
    host coming back) is not."""
    a = await FakeHost.connect(cp.info["host"], "host-a")
    a.auto_open = ATTRS
    assert (await a.register("active", instance="p1"))["t"] == "registered"
    h, p = addr(cp.info["admin"])
    assert (await request(h, p, SECRET, {"t": "pause"}))["t"] == "result"
    await a.close()
    await until_cp_status(cp, lambda st: st["active"] is None or st["active"].get("connected") is False, timeout=5)
    b = await FakeHost.connect(cp.info["host"], "host-b")
    ans = await b.register("active", instance="q1")
    assert ans["t"] == "error" and ans["code"] == "active_exists" and "--role standby" in ans["msg"] and "host-a" in ans["msg"], ans
    st = (await request(h, p, SECRET, {"t": "status"}))["data"]
    assert st["counters"]["failovers"] == 0 and st["active"]["name"] == "host-a", st["active"]
    a2 = await FakeHost.connect(cp.info["host"], "host-a")  # the active itself, restarted, takes its role back
    a2.auto_open = ATTRS
    assert (await a2.register("active", instance="p2"))["t"] == "registered"
    # not paused, but the CP closed the active's link itself (a bad frame): its host may still
    # be serving on its lease, so another host arriving as active is refused too
    assert (await request(h, p, SECRET, {"t": "resume"}))["t"] == "result"
    a2.send({"t": "reply", "terminal": 7, "id": "x", "epoch": a2.epoch})  # bad fields: the CP drops the link
    await until_cp_status(cp, lambda st: st["active"] is not None and st["active"].get("connected") is False, timeout=5)
    c = await FakeHost.connect(cp.info["host"], "host-c")
    ans = await c.register("active", instance="r1")
    assert ans["t"] == "error" and ans["code"] == "active_exists", ans


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


async def test_after_a_normal_stop_the_old_actives_lease_runs_out_before_a_promote_is_granted(cp: Proc) -> None:
    """The active stops normally (`stopping`): it then drains what its service has in hand for a
    while, and the CP answered its heartbeats all that time, renewing its lease; a promote was
    granted at once, so two hosts acted as the active. Its heartbeats go unanswered from the
    stop on, and the promote waits until that lease has surely run out (host_lease 0.35 s +
    0.1 s margin here)."""
    a = await FakeHost.connect(cp.info["host"], "host-a")
    assert (await a.register("active"))["t"] == "registered"
    b = await FakeHost.connect(cp.info["host"], "host-b")
    assert (await b.register("standby"))["t"] == "registered"
    a.send({"t": "hb", "n": 1})
    assert await a.wait(lambda m: m["t"] == "hb" and m.get("ack") == 1)
    a.send({"t": "stopping", "epoch": a.epoch})
    await a.wait(lambda m: m["t"] == "stopped")
    t0 = asyncio.get_running_loop().time()
    a.send({"t": "hb", "n": 2})
    b.send({"t": "switchover", "reason": "operator promote", "planned": False, "kind": "promote"})
    g = await b.wait(lambda m: m["t"] in ("switch_granted", "switch_refused"))
    assert g["t"] == "switch_granted", g
    assert asyncio.get_running_loop().time() - t0 >= 0.4, "granted while the stopped active's lease could still run"
    assert not [m for m in a.inbox if m["t"] == "hb" and m.get("ack") == 2], "a stopped host's heartbeat renewed its lease"
    await a.close()
    await b.close()
