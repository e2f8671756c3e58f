"""An active whose writes of the takeover ring keep failing (EIO on every ring write: a dead
disk, a read-only or hung mount): its status, its metrics, the standby and hsbctl status's
verdict say that hot standby is not ready (the standby's view of the sessions is stale) instead
of "established", until a write succeeds again. hsbcpd and both hsbd in this process
(tests/support/inproc.py), the storage fault injected into the active's store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


def verdict(cp: Any, *hosts: Any) -> dict[str, Any]:
    """What hsbctl status makes of the daemons' status answers (hsb.ctl.verdict.summarize)."""
    from hsb.ctl.verdict import summarize

    return summarize({**cp.status(), "reachable": True}, [{**h.status(), "reachable": True} for h in hosts])


def metrics(h: Any) -> dict[str, float]:
    from hsb.ops.metrics import HostCollector

    return {s.name: s.value for m in HostCollector(h.status).collect() for s in m.samples if not s.labels}


async def test_an_active_that_cannot_write_its_ring_is_not_hot_standby(tmp_path: Path) -> None:
    """Status said established with ring_lag 0 and hsbctl ESTABLISHED (exit 0) while every change
    stayed unwritten; a failover then took over a view frozen for as long as the outage lasted."""
    from hsb.ctl.status import headline
    from hsb.takeover.faults import Faults
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        assert verdict(cp, a, b)["exit_status"] == 0
        hook = Faults(ops=frozenset({"ring write"}))
        a.takeover.store.faults = hook  # (the active's store: only its ring writes fail)
        hook.eio()
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")  # a session change for the ring
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: a.status()["takeover_file"]["storage"] != "ok", "the ring write failing", timeout=10)
        failing = a.status()["takeover_file"].get("ring_write_failing")  # said at once
        assert failing and "Input/output error" in failing["error"] and failing["pending"] >= 1 and failing["since"] > 0, failing

        await until(lambda: not a.status()["established"], "the active saying hot standby is not ready", timeout=10)
        st = a.status()
        assert st["state"] == "established" and st["standby_view_stale"], st
        assert "cannot write the takeover ring" in st["sentence"], st["sentence"]
        assert st["ring_lag"] is not None and st["ring_lag"] >= 1, st["ring_lag"]  # (the records pending count)
        m = metrics(a)
        assert m["hsb_established"] == 0 and m["hsb_standby_view_stale"] == 1, m
        assert m["hsb_ring_pending_entries"] >= 1 and m["hsb_ring_write_failing_seconds"] > 0, m
        v = verdict(cp, a, b)
        assert not v["established"] and v["serving"] and v["exit_status"] == 1, v
        lines = headline(v)
        assert lines[0] == "hsb: SERVING WITHOUT A STANDBY", lines
        assert any("host-a cannot write its takeover ring" in ln and "check the takeover storage on host-a" in ln for ln in lines), lines
        # the standby is told (the active's heartbeats) and does not claim readiness either
        await until(lambda: b.ha.active_ring_failing is not None, "the standby told", timeout=10)
        assert not b.status()["established"] and "view of the sessions is stale" in b.status()["sentence"]

        hook.error = None  # the storage answers again: the change is written, hot standby is back
        await until(lambda: a.status()["established"] and b.status()["established"], "established again", timeout=15)
        assert a.status()["takeover_file"]["ring_write_failing"] is None
        await until(lambda: verdict(cp, a, b)["exit_status"] == 0, "hsbctl ESTABLISHED again", timeout=10)
        await until(lambda: b.sessions.counts()["standby_sessions"] >= 1, "the change read by the standby", timeout=10)
        assert metrics(a)["hsb_standby_view_stale"] == 0
        await t.close()


async def test_a_ring_write_failing_behind_a_batch_write_does_not_say_the_standby_view_stale(tmp_path: Path) -> None:
    """One ring write fails (EIO) while a batch write is queued behind it on the storage thread:
    the batch write's stop of the ring writer cleared the failure, the group's failure set it
    again, and with no change after the batch nothing cleared it: 2 s later a quiet pair said
    standby_view_stale (established 0) though the batch, which holds that change, was read."""
    import asyncio
    import time

    from hsb.takeover.faults import Faults
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        hook = Faults(ops=frozenset({"ring write"}))
        a.takeover.store.faults = hook
        hook.eio()
        hook.hold()  # the ring write stuck on the storage thread until released, then failing
        try:
            t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")  # a session change for the ring
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            await until(lambda: hook.holding.is_set(), "the ring write on the storage thread", timeout=10)
            written = a.ha.generation
            b.peer.send({"t": "resync_request", "startup_id": b.ha.own_startup_id, "reason": "test"})
            b.ha.set_state("awaiting_batch", "test: asked for a new batch")
            await until(lambda: a.ha.state == "batch_writing", "the batch write queued behind the ring write", timeout=10)
        finally:
            hook.release()
        await until(lambda: a.ha.generation != written and hot_standby(a, b), "hot standby on the new batch", timeout=15)
        hook.error = None
        # a quiet pair (no session change) for longer than max(2 s, storage_timeout)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert not a.ha.ring_unwritten and a.status()["established"], a.status()["takeover_file"]
            await asyncio.sleep(0.05)  # (a measurement window: the state looked at every 50 ms)
        assert a.status()["takeover_file"]["ring_write_failing"] is None
        await t.close()


async def test_a_stop_hands_over_to_a_standby_whose_view_is_stale_an_admin_switchover_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active's ring writes failing past max(2 s, storage_timeout) (status: SERVING WITHOUT A
    STANDBY): the operator's switchover is refused, naming the cause and the fix. A stop (SIGTERM,
    hsbctl stop) was refused the handover too and ended the service for everyone (the CP closed
    every session, the standby did not take over), though a crash fails over to that same view:
    it now hands over, warning (stop_hands_over_stale_view, and hsbctl stop's answer) that the
    terminals logged on since the writes stopped are switched the classic way. T00002, logged on
    before, is switched; T00001, logged on after, is disconnected."""
    import asyncio

    from hsb.host import stopping as stopping_mod
    from hsb.takeover.faults import Faults
    from hsb.wire.client import request
    from tests.support.hostclient import FakeTerminal
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET, addr

    rec = RecordingLog()
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        t0 = await FakeTerminal.connect(cp.bound["terminal"], "T00002")  # before: in the standby's view
        await t0.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: core.terms["T00002"].standby is not None, "T00002's standby session at the CP", timeout=10)
        hook = Faults(ops=frozenset({"ring write"}))
        a.takeover.store.faults = hook
        hook.eio()
        t1 = await FakeTerminal.connect(cp.bound["terminal"], "T00001")  # a session change for the ring
        await t1.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: a.ha.ring_unwritten, "the standby's view stale", timeout=10)
        assert a.ha.state == "established" and core.terms["T00001"].standby is None
        r = await request(*addr(a.bound["admin"]), SECRET, {"t": "switchover"}, timeout=2)
        assert r["ok"] is False and "standby's view of the sessions is stale" in r["msg"] and "check the takeover storage" in r["msg"], r
        assert a.ha.role == "active" and a.ha.state == "established" and b.ha.role == "standby"
        r = await request(*addr(a.bound["admin"]), SECRET, {"t": "stop", "takeover": True}, timeout=2)
        assert r["ok"] is True and r["hands_over"] is True, r
        assert "hands over to the standby" in r["msg"] and "the standby's view of the sessions is stale" in r["msg"], r
        assert "switched the classic way" in r["msg"], r
        await asyncio.wait_for(a.graceful_stop(), 25)
        assert rec.events("stop_hands_over_stale_view") and rec.events("stop_hands_over"), rec.entries
        assert not rec.events("stop_without_takeover") and not rec.events("stop_handover_failed"), rec.entries
        assert a.ha.role == "standby" and a.exit_code == 0
        await until(lambda: b.ha.role == "active" and core.active is not None and core.active.name == "host-b", "host-b active", timeout=10)
        await t0.wait(lambda m: m["t"] == "switched")  # its session kept, on host-b
        assert not t0.closed
        await t1.wait_closed()  # no standby session: the classic way
        await t0.close()
        await t1.close()


async def test_a_switchover_waiting_for_a_resync_is_refused_if_the_standby_view_goes_stale_meanwhile(tmp_path: Path) -> None:
    """An operator's switchover asked while a resync's batch is out waits for the standby to be
    ready again. The active's ring writes failing meanwhile (the standby's view of the sessions
    stale), it went on once the standby said ready: it handed over the stale view that the same
    switchover asked at that moment is refused for. It now ends as soon as the view is stale,
    saying so, and the active serves on, established again once the standby is ready."""
    from hsb.takeover.faults import Faults
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        held: list[dict[str, Any]] = []

        async def hold_ready(msg: dict[str, Any]) -> None:
            held.append(msg)  # (the standby's "ready" after its resync, handed on below)

        ready = a.ha.peer_standby_ready
        a.ha.peer_standby_ready = hold_ready  # type: ignore[method-assign]
        written = a.ha.generation
        b.peer.send({"t": "resync_request", "startup_id": b.ha.own_startup_id, "reason": "test"})
        b.ha.set_state("awaiting_batch", "test: asked for a new batch")
        await until(lambda: a.ha.state == "batch_writing" and a.ha.resyncing, "the resync's batch write", timeout=10)
        ended = a.ha.switchovers_ended
        a.ha.post("switchover")
        await until(lambda: a.ha.switch_after_resync is not None, "the switchover waiting for the resync", timeout=10)
        await until(lambda: a.ha.generation != written and held, "the batch read by the standby, its ready held", timeout=15)
        hook = Faults(ops=frozenset({"ring write"}))
        a.takeover.store.faults = hook
        hook.eio()
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")  # a session change for the ring
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: a.ha.ring_unwritten, "the standby's view stale", timeout=10)
        await until(lambda: a.ha.switch_after_resync is None, "the switchover no longer waiting for the resync", timeout=10)
        assert a.ha.switchovers_ended == ended + 1, (a.ha.state, a.ha.last_error)
        assert a.ha.last_error is not None and "standby's view of the sessions is stale" in a.ha.last_error, a.ha.last_error
        assert "check the takeover storage" in a.ha.last_error, a.ha.last_error
        a.ha.peer_standby_ready = ready  # type: ignore[method-assign]
        a.ha.post("peer_frame", msg=held[0])
        # (the pass that takes the ready also looks at the switchover: it started the release there)
        await until(lambda: a.ha.state == "established", "the active established (its view stale)", timeout=10)
        assert a.ha.role == "active" and a.ha.state == "established" and b.ha.role == "standby", (a.ha.state, b.ha.role)
        hook.error = None
        await t.close()
