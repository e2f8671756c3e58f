"""What hsbcpd refuses on its links, real sockets: terminal errors (unknown, duplicate, a bad
first frame), a wrong secret or none, a second active, hostile frames (closing only that
connection; fuzzed), the same active on a new link replacing its old one while another is
refused, a host not yet registered still hearing from the CP, and another host registering as
active while the active's link is down."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsb.wire.client import FrameStream, LinkClosed, request
from hsb.wire.framing import encode
from tests.support.hostclient import FakeHost, FakeTerminal, until_cp_status
from tests.support.lonecp import ATTRS, logon, lone_cp, status
from tests.support.procs import SECRET, Proc, addr, until


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    yield from lone_cp(tmp_path)


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


_state: dict[str, Any] = {}


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
