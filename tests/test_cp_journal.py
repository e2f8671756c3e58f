"""The CP loses nothing (SPEC §5.7; docs/cp-journal.md): real hsbcpd processes killed (SIGKILL)
and restarted on their journal, with test hosts and terminals: nothing it promised lost, a resend
marked only by a CP that follows another, a reply sent before its record was durable never
unmarked, the lease granted before kept, a fenced host still fenced, replies into a dropped
connection or to a terminal removed from the table kept until confirmed. The format and
recovery: tests/test_cp_journal_format.py; a damaged journal at the start:
tests/test_cp_journal_damage.py; the journal's storage: tests/test_cp_journal_storage.py."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostclient import ATTRS, FakeHost, cp_status, logged_on, until_journal_status
from tests.support.procs import Proc, restart_cp, start_cp, until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    proc = start_cp(tmp_path / "cp", terminals=6, host_timeout=0.5)
    yield proc
    proc.stop()


async def killed(cp: Proc, *links: Any) -> None:
    """SIGKILL of hsbcpd, and the test's own ends of its links closed."""
    cp.kill(signal.SIGKILL)
    cp.popen.wait(5)
    for link in links:
        await link.close()


async def test_kill9_of_the_cp_loses_nothing_it_promised(cp: Proc) -> None:
    """Held messages, kept replies, last acknowledged ids, the epoch and the active: all back."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t1 = await logged_on(cp, "T00001")
    await t1.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    for i in (1, 2, 3):
        t1.send({"t": "msg", "id": i, "data": f"m{i}"})
    await t1.wait_count(lambda m: m["t"] == "ack", 3)
    await a.wait_count(lambda m: m["t"] == "deliver", 3)
    a.send({"t": "reply", "terminal": "T00001", "id": 1, "data": "r1", "epoch": a.epoch})
    await t1.wait(lambda m: m["t"] == "reply")
    # the reply goes out before its record is durable: kill once the record settled message 1
    deadline = asyncio.get_running_loop().time() + 5
    while (await cp_status(cp))["held_messages"] != 2:
        assert asyncio.get_running_loop().time() < deadline, "message 1 never settled"
        await asyncio.sleep(0.01)
    epoch = (await cp_status(cp))["epoch"]
    await killed(cp, a, t1)

    cp2 = restart_cp(cp)
    try:
        rec = cp2.wait_event("journal_recovered")
        assert rec["held"] == 2 and rec["replies_kept"] == 1 and rec["active"] == "host-a" and rec["epoch"] == epoch
        st = await cp_status(cp2)
        assert st["epoch"] == epoch and st["held_messages"] == 2
        # the terminal resumes saying it holds no reply (last_reply 0): the kept reply to 1 comes
        # again, marked resent; last_acked says 3
        t = await logged_on(cp2, "T00001", last_reply=0)
        assert t.inbox[0]["last_acked"] == 3
        resent = await t.wait(lambda m: m["t"] == "reply")
        assert resent == {"t": "reply", "id": 1, "data": "r1", "resent": True}
        t.send({"t": "confirm", "id": 1})
        # the active of before registers again: 2 and 3 come to it, marked redelivered
        a2 = await FakeHost.connect(cp2.info["host"], "host-a")
        a2.auto_open = ATTRS
        await a2.register("active")
        dl = await a2.wait_count(lambda m: m["t"] == "deliver", 2)
        assert sorted(m["id"] for m in dl) == [2, 3] and all(m["redelivered"] for m in dl)
        assert a2.epoch > epoch  # the epoch never goes back
        for m in dl:
            a2.send({"t": "reply", "terminal": "T00001", "id": m["id"], "data": f"r{m['id']}", "epoch": a2.epoch})
        got = await t.wait_count(lambda m: m["t"] == "reply", 3)
        # replies to recovered messages are marked resent: the CP cannot know whether the
        # terminal got one before the crash (a resuming terminal's reply goes out before its
        # record is durable)
        assert [(m["id"], m.get("resent", False)) for m in got] == [(1, True), (2, True), (3, True)]
        # a resend of an acknowledged id is acknowledged again, never delivered twice
        t.send({"t": "msg", "id": 3, "data": "m3"})
        await t.wait_count(lambda m: m["t"] == "ack", 1)
        await asyncio.sleep(0.2)  # nothing else may come: a stimulus-free observation window
        assert len([m for m in a2.inbox if m["t"] == "deliver"]) == 2
        await a2.close()
        await t.close()
    finally:
        cp2.stop()


async def test_a_resend_is_marked_only_by_a_cp_that_follows_another_on_its_journal(cp: Proc) -> None:
    """A resent id the CP never had may be one an earlier CP process handed to the active early:
    a CP restarted on the journal marks it redelivered. One started on a new journal had no
    predecessor, so a resend there (a connection that dropped before the CP read it) is new."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logged_on(cp, "T00001")
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "msg", "id": 1, "data": "m1", "resent": True})
    d = await a.wait(lambda m: m["t"] == "deliver")
    assert (d["id"], d["redelivered"]) == (1, False), "a new journal's CP marked a message no host ever had"
    assert (await cp_status(cp))["counters"]["resent_unknown"] == 0
    await killed(cp, a, t)
    cp2 = restart_cp(cp)
    try:
        a2 = await FakeHost.connect(cp2.info["host"], "host-a", "active")
        a2.auto_open = ATTRS
        t2 = await logged_on(cp2, "T00001")
        await t2.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        t2.send({"t": "msg", "id": 2, "data": "m2", "resent": True})
        d2 = await a2.wait(lambda m: m["t"] == "deliver" and m["id"] == 2)
        assert d2["redelivered"] is True, "a resend the CP before may have handed over went unmarked"
        assert (await cp_status(cp2))["counters"]["resent_unknown"] == 1
        await a2.close()
        await t2.close()
    finally:
        cp2.stop()


async def test_a_reply_sent_before_its_record_was_durable_never_comes_unmarked(tmp_path: Path) -> None:
    """A resuming terminal gets its reply before the "r" record is durable. The CP dies right
    after sending it: the message is recovered and answered again, and the terminal, whose
    hello says it holds that reply, gets it a second time only marked resent (the restarted CP
    cannot know whether its process before sent it: a claim may count an earlier run's ids)."""
    cp = start_cp(tmp_path / "cp", env={"HSB_CRASH_POINTS": "cp.after_reply_sent"}, terminals=2, host_timeout=0.5)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS
        t1 = await logged_on(cp, "T00001", last_reply=0)
        await t1.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        t1.send({"t": "msg", "id": 1, "data": "m1"})
        await a.wait(lambda m: m["t"] == "deliver")
        a.send({"t": "reply", "terminal": "T00001", "id": 1, "data": "r1", "epoch": a.epoch})
        got = await t1.wait(lambda m: m["t"] == "reply")
        assert got == {"t": "reply", "id": 1, "data": "r1"}
        assert cp.popen.wait(5) == -signal.SIGKILL  # the crash point fired after the send
        await a.close()
        await t1.close()
    finally:
        cp.stop()
    cp2 = restart_cp(cp)
    try:
        rec = cp2.wait_event("journal_recovered")
        assert rec["held"] == 1 and rec["replies_kept"] == 0  # the "r" record never became durable
        t = await logged_on(cp2, "T00001", last_reply=1)  # it holds the reply to 1
        a2 = await FakeHost.connect(cp2.info["host"], "host-a")
        a2.auto_open = ATTRS
        await a2.register("active")
        d1 = await a2.wait(lambda m: m["t"] == "deliver")
        assert d1["id"] == 1 and d1["redelivered"]
        a2.send({"t": "reply", "terminal": "T00001", "id": 1, "data": "r1", "epoch": a2.epoch})
        t.send({"t": "msg", "id": 2, "data": "m2"})
        d2 = await a2.wait(lambda m: m["t"] == "deliver" and m["id"] == 2)
        assert not d2["redelivered"]
        a2.send({"t": "reply", "terminal": "T00001", "id": 2, "data": "r2", "epoch": a2.epoch})
        await t.wait(lambda m: m["t"] == "reply" and m["id"] == 2)
        assert [m for m in t.inbox if m["t"] == "reply"] == [
            {"t": "reply", "id": 1, "data": "r1", "resent": True},
            {"t": "reply", "id": 2, "data": "r2"},
        ]
        deadline = asyncio.get_running_loop().time() + 5  # settled once the "r" record is durable
        while (await cp_status(cp2))["held_messages"] != 0:
            assert asyncio.get_running_loop().time() < deadline, "messages 1 and 2 never settled"
            await asyncio.sleep(0.01)
        await a2.close()
        await t.close()
    finally:
        cp2.stop()


async def test_a_restart_on_a_shorter_lease_waits_for_the_lease_granted_before(tmp_path: Path) -> None:
    """The CP before granted leases of 5 s (host_timeout 6); restarted with the defaults (0.35 s,
    0.5), it gave the role to the standby after max(3 s, fresh_s + host_timeout): 3 s, while the
    old active, cut off, could still serve on its lease for 5. Its journal says the lease it
    granted: the wait is for that lease (fresh_s 2 + 5 + the margin), not for the new config's."""
    from tests.support.procs import log_events

    cp = start_cp(tmp_path / "cp", terminals=2, host_timeout=6.0, host_lease=5.0)
    cp2: Proc | None = None
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        await killed(cp, a)  # (as if cut off: it never registers with the new CP)
        cfg = Path(cp.argv[-1])
        text = cfg.read_text()
        assert "host_timeout = 6.0" in text and "host_lease = 5.0" in text, text
        cfg.write_text(text.replace("host_timeout = 6.0", "host_timeout = 0.5").replace("host_lease = 5.0", "host_lease = 0.35"))
        cp2 = restart_cp(cp)
        b = await FakeHost.connect(cp2.info["host"], "host-b", "standby")
        b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
        log = tmp_path / "cp" / "cp.log"
        await until(lambda: any(e.get("event") == "switchover_deferred" for e in log_events(log)), 10, what="the deferral")
        deferred = next(e for e in log_events(log) if e.get("event") == "switchover_deferred")
        assert deferred["recorded_active"] == "host-a" and deferred["wait_ms"] > 5_500, deferred
        assert not [m for m in b.inbox if m["t"] == "switch_granted"]
        # each start said its snapshot durable (snap-N); an older generation's mark goes with it
        gens = sorted(p.name for p in (tmp_path / "cp" / "cp-journal").iterdir() if p.name.startswith(("gen-", "snap-")))
        assert [g for g in gens if g.startswith("snap-")] == [f"snap-{max(int(g[4:]) for g in gens if g.startswith('gen-')):08d}"], gens
        await b.close()
    finally:
        cp.stop()
        if cp2 is not None:
            cp2.stop()


async def test_a_host_fenced_before_the_crash_stays_fenced(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    b = await FakeHost.connect(cp.info["host"], "host-b", "standby")
    await a.close()  # host-a's link closes: the standby is granted
    await b.wait(lambda m: m["t"] == "active_lost")
    b.send({"t": "switchover", "reason": "test", "planned": False, "peer_closed": True})
    g = await b.wait(lambda m: m["t"] == "switch_granted")
    await b.close()
    cp.kill(signal.SIGKILL)
    cp.popen.wait(5)
    cp2 = restart_cp(cp)
    try:
        a2 = await FakeHost.connect(cp2.info["host"], "host-a", heartbeat=None)
        ans = await a2.register("active")  # the old active comes back first: refused
        assert ans["t"] == "error" and ans["code"] == "active_exists" and "host-b" in ans["msg"], ans
        b2 = await FakeHost.connect(cp2.info["host"], "host-b", "active")  # the active of before: it
        assert b2.epoch > g["epoch"]
        await b2.close()
    finally:
        cp2.stop()


async def test_a_reply_into_a_connection_that_drops_comes_again_once(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    t = await logged_on(cp, "T00002")
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "msg", "id": 5, "data": "x"})
    await a.wait(lambda m: m["t"] == "deliver")
    await t.close()  # gone before the reply: the CP writes it into a closed connection, or not at all
    a.send({"t": "reply", "terminal": "T00002", "id": 5, "data": "answer", "epoch": a.epoch})
    await until_journal_status(cp, lambda s: s["terminals"]["connected"] == 0 and s["held_messages"] == 0, what="the reply taken, the terminal gone")
    t2 = await logged_on(cp, "T00002", last_reply=0)
    r = await t2.wait(lambda m: m["t"] == "reply")
    assert r == {"t": "reply", "id": 5, "data": "answer", "resent": True}
    t2.send({"t": "confirm", "id": 5})
    await t2.close()
    await until_journal_status(cp, lambda s: s["terminals"]["connected"] == 0, what="the terminal gone")
    t3 = await logged_on(cp, "T00002", last_reply=5)  # it holds it now: not sent again
    await asyncio.sleep(0.2)
    assert not [m for m in t3.inbox if m["t"] == "reply"]
    await t3.close()
    await a.close()


async def test_a_terminal_that_does_not_resume_is_served_as_before(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    t = await logged_on(cp, "T00003", last_reply=None)
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    for i in range(1, 21):
        t.send({"t": "msg", "id": i, "data": str(i)})
    replies = await t.wait_count(lambda m: m["t"] == "reply", 20)
    assert [m["id"] for m in replies] == list(range(1, 21)) and not any(m.get("resent") for m in replies)
    st = await cp_status(cp)
    assert st["journal"]["outstanding"] == 0  # no reply kept for it
    await t.close()
    await a.close()


async def test_a_terminal_removed_from_the_table_keeps_its_unconfirmed_replies(cp: Proc) -> None:
    """SIGHUP with a terminal gone from the table: while the CP still keeps a reply it has not
    seen confirmed, the terminal stays (its journal record stays pinned, and the reply reaches it
    when it comes back), as a journal's unknown terminals are kept at recovery."""
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open, a.auto_reply = ATTRS, True
    t = await logged_on(cp, "T00006", last_reply=0)  # the last of the 6: gone when the count is 5
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "msg", "id": 1, "data": "one"})
    await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1)
    await t.close()  # without confirming it
    await until_journal_status(
        cp, lambda s: s["terminals"]["connected"] == 0 and s["held_messages"] == 0 and s["journal"]["outstanding"] == 1, what="the reply kept"
    )
    cfg = cp.log.parent / "cp.toml"
    cfg.write_text(cfg.read_text().replace("count = 6", "count = 5"))
    cp.popen.send_signal(signal.SIGHUP)
    deadline = asyncio.get_running_loop().time() + 10
    while not cp.events("config_reloaded"):
        assert asyncio.get_running_loop().time() < deadline, "no reload"
        await asyncio.sleep(0.05)
    assert cp.events("config_reloaded")[-1]["terminals_removed"] == 0
    t2 = await logged_on(cp, "T00006", last_reply=0)
    again = await t2.wait(lambda m: m["t"] == "reply")
    assert again == {"t": "reply", "id": 1, "data": "one", "resent": True}
    await t2.close()
    await a.close()
