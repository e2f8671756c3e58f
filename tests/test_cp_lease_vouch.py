"""A CP renews a host's lease only while it can show that it still owns its journal (SPEC §5.8,
docs/cp-journal.md "Fencing by generation"): its heartbeat's generation check must have come back
clean less than CHECK_FRESH_S ago. A CP whose journal storage hangs (a lost NFS mount behind a
partition) may already be superseded by a CP on the other machine, whose own active takes over:
renewing the old active's lease meanwhile would let two hosts serve at once. And a CP that
restarted (or took the journal over) grants the role to another host only once a lease the CP
before it may have renewed has surely run out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal.store import boot_now
from hsb.ctl import sandbox
from tests.support.hostclient import FakeTerminal
from tests.support.procs import arm_faults, log_events, until
from tests.support.sandboxed import wait_status

pytestmark = pytest.mark.timeout(90)


def _host(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in st["hosts"] if h.get("name") == name)


async def test_a_cp_whose_generation_check_hangs_renews_no_lease_until_it_answers(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    ctl = d / "ctl-cp"
    info = await sandbox.aup(d, terminals=4, cp_env={"HSB_CRASH_CONTROL": str(ctl)})
    try:
        t = await FakeTerminal.connect(info["cp"]["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await wait_status(info, lambda s: _host(s, "host-a")["lease"]["valid"], what="host-a's lease valid")
        cp_pid = sandbox.load_state(d)["cp"]["pid"]
        ctl.touch()
        await arm_faults(ctl, cp_pid, "storage hold")  # the journal's mount hangs: writes and the generation check
        t.send({"t": "msg", "id": 1, "data": "m1"})
        st = await wait_status(info, lambda s: not _host(s, "host-a")["lease"]["valid"], timeout=10, what="host-a's lease lost")
        assert _host(st, "host-a")["role"] == "active"  # still the CP's active: only its lease waits
        assert st["cp"]["journal"]["lease_answers_withheld"] > 0
        assert st["cp"]["journal"]["generation_checked_ms_ago"] >= 1000
        cp_log = log_events(d / "cp.log")
        assert any(e.get("event") == "lease_answers_withheld" for e in cp_log)
        assert not [m for m in t.inbox if m["t"] in ("ack", "reply")]  # nothing acknowledged that is not durable
        await arm_faults(ctl, cp_pid, "storage clear")
        r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1, timeout=15)
        assert r["data"] == "m1"
        assert [m["id"] for m in t.inbox if m["t"] == "ack"] == [1]
        await wait_status(info, lambda s: _host(s, "host-a")["lease"]["valid"], what="host-a's lease renewed")
        await until(lambda: any(e.get("event") == "lease_answers_resumed" for e in log_events(d / "cp.log")), 10, what="resumed logged")
        assert any(e.get("event") == "lease_renewed" for e in log_events(d / "host-a.log"))
        assert not t.closed
        await t.close()
    finally:
        sandbox.down(d, timeout=0.5)


def _acks(h: Any) -> list[int]:
    h.flush()
    return [f["ack"] for f in h.transport.frames() if f.get("t") == "hb" and "ack" in f]


async def test_heartbeats_are_answered_only_while_the_journal_vouches(tmp_path: Path) -> None:
    from tests.support.cpcore import cp_core, fake_host

    CHECK_FRESH_S = 2.0  # (a journal's timeout)

    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    seen: list[float] = []

    def vouches(now: float) -> bool:
        seen.append(now)
        return now - checked[0] < CHECK_FRESH_S

    checked = [boot_now()]
    cp.journal.vouches = vouches
    a = fake_host(cp, "host-a", "active", record=True)
    a.on_hb({"t": "hb", "n": 1})
    checked[0] = boot_now() - CHECK_FRESH_S  # the last clean check is too old
    a.on_hb({"t": "hb", "n": 2})
    checked[0] = boot_now()
    a.on_hb({"t": "hb", "n": 3})
    assert _acks(a) == [1, 3]
    a.flush()
    assert sum(1 for f in a.transport.frames() if f == {"t": "hb"}) == 1  # a sign of life, renewing nothing
    assert len(seen) == 3


async def test_a_cp_machine_suspended_past_its_fresh_check_renews_no_lease_when_it_wakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP's machine suspended for longer than a clean generation check vouches for: the
    monotonic clock stood still meanwhile, so the CP woke still vouching and renewed an old
    active's lease from the heartbeats waiting in its buffers (another CP may have granted the
    role meanwhile). The check's age is on the boot clock, which counts the suspend, as the
    hosts' leases are."""
    from hsb.cp import host_link
    from tests.support.cpcore import cp_core, fake_host

    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    checked = boot_now()
    cp.journal.vouches = lambda now: now - checked < 2.0  # (a journal's: its last clean check, fresh for 2 s)
    a = fake_host(cp, "host-a", "active", record=True)
    asleep = checked + 30.0  # the boot clock after 30 s suspended (monotonic: a moment later)
    monkeypatch.setattr(host_link, "boot_now", lambda: asleep)
    a.on_hb({"t": "hb", "n": 1})
    assert _acks(a) == [], "a lease renewed by a CP that was suspended past its check"


async def test_after_a_restart_a_switchover_waits_for_the_old_lease(tmp_path: Path) -> None:
    """The recorded active has not registered again: the standby's request is granted only once
    restart_lease_s (the journal's fresh_s + host_timeout, and at least the recorded active's 3 s)
    has passed since the recovery, not at once; the latest request is the one granted."""
    import asyncio

    from tests.support.cpcore import cp_core, fake_host

    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    cp.recorded_active = "host-a"
    cp.recovered_at = time.monotonic()
    b = fake_host(cp, "host-b", "standby", record=True)
    t0 = boot_now()
    cp.host_switchover(b, "peer lost", False, "failover", peer_closed=True)
    assert cp.active is None and cp.deferred_grant is not None
    cp.host_switchover(b, "promote (operator)", False, "promote")  # asked again: still one timer, the latest taken
    deadline = t0 + cp.restart_lease_s + 5
    while cp.active is not b:
        assert time.monotonic() < deadline, "never granted"
        await asyncio.sleep(0.02)
    assert time.monotonic() - t0 >= cp.restart_lease_s - 0.01
    assert b is not None  # (mypy: b narrowed to cp.active's type by the loop's end)
    b.flush()
    assert [f["t"] for f in b.transport.frames() if f.get("t", "").startswith("switch")] == ["switch_granted"]
    assert cp.history.entries[-1]["kind"] == "promote", cp.history.entries[-1]
    assert cp.deferred_grant is None and cp.deferred_ask is None


async def test_a_group_commit_vouches_like_a_heartbeat_and_a_hung_check_stops_vouching(tmp_path: Path) -> None:
    """A real journal: its clean group commits refresh what it vouches for, as the heartbeat's
    check does; once neither has come back for fresh_s, it stops vouching, and says so."""
    import asyncio

    from hsb.cp.journal.store import Journal

    j = Journal(tmp_path / "j", timeout=1.0, generation=1)
    j.gens.take()
    j.open(1, [], [])
    try:
        t0 = boot_now()
        assert j.vouches(t0) and not j.vouches(t0 + j.fresh_s + 0.01)
        before = j.checked_at
        done = asyncio.get_running_loop().create_future()
        j.append(["x"], lambda: done.set_result(None))
        await asyncio.wait_for(done, 10)
        assert j.checked_at is not None and before is not None and j.checked_at > before
        assert not j.vouches(j.checked_at + j.fresh_s) and j.lease_answers_withheld == 2
        assert j.vouches(j.checked_at)  # fresh again: answered again
    finally:
        j.close()


async def test_a_deferred_switchover_made_moot_by_the_active_coming_back_is_answered(tmp_path: Path) -> None:
    """The standby's request waits for the old active's lease after a restart, and that active
    registers again meanwhile: the request is moot. It was dropped without a word, and the
    standby asks again only after an answer (or a second later) while the CP says active_lost
    once per loss: that active lost within the second left the pair with no active. Refused."""
    from tests.support.cpcore import cp_core, fake_host

    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    cp.recorded_active = "host-a"
    cp.recovered_at = time.monotonic()
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_switchover(b, "peer lost", False, "failover", peer_closed=True)
    assert cp.active is None and cp.deferred_grant is not None
    a = fake_host(cp, "host-a", "active")
    assert cp.active is a and cp.deferred_grant is None and cp.deferred_ask is None
    b.flush()
    refused = [f for f in b.transport.frames() if f.get("t") == "switch_refused"]
    assert len(refused) == 1 and "host-a holds the active role now" in refused[0]["reason"], refused
