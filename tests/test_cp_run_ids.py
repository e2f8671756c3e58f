"""A terminal's ids across its runs (docs/protocol.md §1, `msg` and *Writing a terminal of your
own*), with a real hsbcpd killed (SIGKILL) and restarted on its journal between the runs: the CP
remembers the highest id it acknowledged for the name across the run's `bye` and its own
restart, so the next run's welcome says it; a message of the new run at or below it (a run that
numbers from 1 again) is acknowledged, never delivered nor answered, and no error says so; a run
that learns its first id from that welcome (its hello without `first`, `last_reply` 0) is
delivered and answered."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostclient import ATTRS, FakeHost, logged_on
from tests.support.procs import Proc, restart_cp, start_cp

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Proc]:
    proc = start_cp(tmp_path / "cp", terminals=2, host_timeout=0.5)
    yield proc
    proc.stop()


async def test_a_new_run_numbers_above_the_last_acked_an_earlier_run_left_across_bye_and_restart(cp: Proc) -> None:
    a = await FakeHost.connect(cp.info["host"], "host-a", "active")
    a.auto_open = ATTRS
    # run 1: learns from its welcome that no id was used before, sends 1..3, gets every reply,
    # confirms them and logs off
    t = await logged_on(cp, "T00001", last_reply=0)
    assert t.inbox[0]["last_acked"] == 0
    for i in (1, 2, 3):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    await t.wait_count(lambda m: m["t"] == "ack", 3)
    for d in await a.wait_count(lambda m: m["t"] == "deliver", 3):
        a.send({"t": "reply", "terminal": "T00001", "id": d["id"], "data": f"r{d['id']}", "epoch": a.epoch})
    await t.wait_count(lambda m: m["t"] == "reply", 3)
    t.send({"t": "confirm", "id": 3, "seen": 3})
    t.send({"t": "bye"})
    await t.wait_closed()
    # the confirmation is journalled lazily (a lost one only resends, by design): another
    # terminal's ack is a group commit after it, so it is durable before the kill (under load the
    # kill came first, and run 1's replies were resent to run 2: a flaky test, not a fault)
    other = await logged_on(cp, "T00002", last_reply=0)
    other.send({"t": "msg", "id": 1, "data": "a later group commit"})
    await other.wait(lambda m: m["t"] == "ack")
    await other.close()
    await a.close()
    cp.kill(signal.SIGKILL)
    cp.popen.wait(5)

    cp2 = restart_cp(cp)
    try:
        a2 = await FakeHost.connect(cp2.info["host"], "host-a")
        a2.auto_open = ATTRS
        await a2.register("active")
        # run 2: its hello without `first`, last_reply 0; the welcome names run 1's last id
        t2 = await logged_on(cp2, "T00001", last_reply=0)
        assert t2.inbox[0]["last_acked"] == 3, t2.inbox[0]
        await t2.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        # numbering from 1 again: acknowledged as a repeat, other data or not
        t2.send({"t": "msg", "id": 1, "data": "another message"})
        # numbering from the welcome's last_acked + 1: taken, delivered, answered
        t2.send({"t": "msg", "id": 4, "data": "m4"})
        acks = await t2.wait_count(lambda m: m["t"] == "ack", 2)
        assert [m["id"] for m in acks] == [1, 4]
        await a2.wait(lambda m: m["t"] == "deliver" and m["id"] == 4)
        # a terminal's messages go to the active in id order: had 1 been taken it came first
        delivered = [(m["id"], m["data"]) for m in a2.inbox if m["t"] == "deliver"]
        assert delivered == [(4, "m4")], delivered
        a2.send({"t": "reply", "terminal": "T00001", "id": 4, "data": "r4", "epoch": a2.epoch})
        r = await t2.wait(lambda m: m["t"] == "reply")
        assert (r["id"], r["data"], r.get("resent", False)) == (4, "r4", False)
        assert not [m for m in t2.inbox if m["t"] in ("reply", "error") and m is not r], t2.inbox
        await a2.close()
        await t2.close()
    finally:
        cp2.stop()
