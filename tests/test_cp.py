"""hsbcpd as a real process on real sockets, driven by a test host-link client (issue 3): the
active's and standby's sessions (traffic on the active only), switchovers refused while the
active lives and granted when it is lost (the switch notice first, each terminal told once, a
second loss told again, a standby told of a loss it registers after), a silent active fenced, a
stale epoch refused, a terminal with no standby session on the classic path, a flip's
redeliveries in batches, and an old active's lease running out before a promote. Kept replies
and bounds: tests/test_cp_backpressure.py; refusals on the links:
tests/test_cp_refusals.py; the session table and handovers: tests/test_cp_session_table.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsb.wire.framing import encode
from tests.support.hostclient import FakeHost
from tests.support.lonecp import ATTRS, fail_over, logon, lone_cp, pair, sessions, status, wait_status
from tests.support.procs import Proc, until


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    yield from lone_cp(tmp_path)


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

    b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
    refused = await b.wait(lambda m: m["t"] in ("switch_refused", "switch_granted"))
    assert refused["t"] == "switch_refused" and "alive" in refused["reason"]

    old_epoch = a.epoch
    await a.close()  # the active's host link closes (process died)
    await b.wait(lambda m: m["t"] == "active_lost")
    mark = len(b.inbox)
    b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
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
    b.send({"t": "switchover", "reason": "silent", "planned": False, "peer_closed": True})
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
    b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
    g = await b.wait(lambda m: m["t"] == "switch_granted")
    b.epoch = g["epoch"]
    await t.wait_closed()
    t2 = await logon(cp, "NOSB")
    d = await b.wait(lambda m: m["t"] == "deliver" and m["terminal"] == "NOSB")
    assert d["id"] == 1 and d["redelivered"] is True and d["data"] == "keep me"
    b.send({"t": "reply", "terminal": "NOSB", "id": 1, "data": "done", "epoch": g["epoch"]})
    r = await t2.wait(lambda m: m["t"] == "reply")
    assert r["id"] == 1 and r["data"] == "done"


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
    b.send({"t": "switchover", "reason": "told late", "planned": False, "peer_closed": True})
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
