"""The CP journal's storage under a real hsbcpd (SPEC §5.7; docs/cp-journal.md): storage that
stalls and fails then resumes loses nothing, a stop while it hangs ends soon and says why, the
journal stays bounded and shrinks when traffic stops, a full disk stops acknowledgements until
there is room, and --check-config warns about durability "none"."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hsb import uring
from tests.support.hostclient import ATTRS, FakeHost, logged_on, until_journal_status
from tests.support.procs import addr, arm_faults, start_cp, until

pytestmark = pytest.mark.timeout(90)


async def test_journal_storage_stalls_and_fails_then_resumes_with_nothing_lost(tmp_path: Path) -> None:
    """A hung mount or EIO: no ack goes out for what is not durable; status and metrics say why;
    service resumes by itself when the storage does."""
    d = tmp_path / "cp"
    ctl = tmp_path / "crash-cp"
    ctl.write_text("")
    cp = start_cp(d, env={"HSB_CRASH_CONTROL": str(ctl)}, terminals=2, journal_timeout=0.3)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open, a.auto_reply = ATTRS, True
        t = await logged_on(cp, "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        for fault, state in (("hold", "stalled"), ("eio", "failing")):
            await arm_faults(ctl, cp.popen.pid, f"storage {fault}")
            base = 100 if fault == "hold" else 200
            for i in range(base, base + 5):
                t.send({"t": "msg", "id": i, "data": str(i)})
            st = await until_journal_status(cp, lambda s: s["journal"]["state"] == state, what=f"journal {state}")
            assert st["journal"]["error"]
            await asyncio.sleep(0.5)  # longer than the deadline: still nothing acknowledged
            assert not [m for m in t.inbox if m["t"] == "ack" and m["id"] >= base]
            await arm_faults(ctl, cp.popen.pid, "storage clear")
            acks = await t.wait_count(lambda m, b=base: m["t"] == "ack" and m["id"] >= b, 5)
            assert sorted(m["id"] for m in acks) == list(range(base, base + 5))
            replies = await t.wait_count(lambda m, b=base: m["t"] == "reply" and m["id"] >= b, 5)
            assert sorted(m["id"] for m in replies) == list(range(base, base + 5)), replies
            await until_journal_status(cp, lambda s: s["journal"]["state"] == "ok", what="journal ok")
        events = [e["event"] for e in cp.events()]
        assert "journal_stalled" in events and "journal_failing" in events and "journal_recovered_from_fault" in events
        # nothing lost, duplicated, unexpected, unacknowledged or wrong, and the terminal still connected
        sent = [*range(100, 105), *range(200, 205)]
        acked = [m["id"] for m in t.inbox if m["t"] == "ack"]
        replies = [m for m in t.inbox if m["t"] == "reply"]
        assert sorted(acked) == sent, f"acks {acked}"
        assert sorted(m["id"] for m in replies) == sent, f"replies {[m['id'] for m in replies]}"
        assert all(m["data"] == str(m["id"]) for m in replies), replies
        assert not t.closed, "the terminal was disconnected"
        await t.close()
        await a.close()
    finally:
        cp.stop()


async def test_a_stop_while_the_journal_storage_hangs_ends_soon_and_says_why(tmp_path: Path) -> None:
    """SIGTERM while a group commit hangs (a dead mount) and the journal's timeout is long: hsbcpd
    still stops within seconds, says what it left unwritten, and does not close the segment under
    the hung write."""
    d = tmp_path / "cp"
    ctl = tmp_path / "crash-cp"
    ctl.write_text("")
    cp = start_cp(d, env={"HSB_CRASH_CONTROL": str(ctl)}, terminals=2, journal_timeout=30)
    try:
        t = await logged_on(cp, "T00001")
        await arm_faults(ctl, cp.popen.pid, "storage hold")
        t.send({"t": "msg", "id": 1, "data": "x"})
        await until_journal_status(cp, lambda s: s["journal"]["pending_records"] > 0, what="a group out")
        t0 = asyncio.get_running_loop().time()
        cp.kill(signal.SIGTERM)
        code = await asyncio.to_thread(cp.popen.wait, 15)
        took = asyncio.get_running_loop().time() - t0
        assert code == 0 and took < 8.0, f"exit {code} after {took:.1f} s with a 30 s journal timeout"
        events = [e["event"] for e in cp.events()]
        assert "journal_not_drained" in events and "journal_close_abandoned_write" in events, events[-8:]
        assert not [m for m in t.inbox if m["t"] == "ack"]  # nothing acknowledged that was not durable
        await t.close()
    finally:
        cp.stop()


async def test_the_journal_stays_bounded_and_shrinks_when_traffic_stops(tmp_path: Path) -> None:
    from hsb.cp.journal.store import IDLE_ROTATE_BYTES
    from hsb.term.load import run_load

    cp = start_cp(tmp_path / "cp", terminals=20, journal_segment_kib=64)
    try:
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open, a.auto_reply = ATTRS, True
        r = await run_load(addr(cp.info["terminal"]), terminals=20, rate=0, duration=3.0, settle=5, window=4, closed_loop=True, payload_size=200)
        assert r.ok, r.failures
        # A settled segment is closed when idle once it has grown IDLE_ROTATE_BYTES past its
        # checkpoint, so at rest the journal is one segment: a checkpoint (20 terminals: well
        # under 4 KiB) and less than that much beyond it.
        bound = IDLE_ROTATE_BYTES + 4 * 1024
        st = await until_journal_status(
            cp, lambda s: s["journal"]["size_bytes"] < bound and s["journal"]["segments"] <= 2, what="the journal back to a checkpoint"
        )
        assert st["journal"]["outstanding"] == 0
        # What is on disk agrees with status, once the writer thread has unlinked what status
        # already counts as dropped (after the next segment's checkpoint is durable): at most
        # two segments and a few KiB of records in all (each file allocated whole when created,
        # hsb.fsutil.preallocate: the rest of it zeros, never more than a segment's room) ...
        jdir = tmp_path / "cp" / "cp-journal"

        def segs() -> list[str]:
            return sorted(f for f in os.listdir(jdir) if f.startswith("seg-"))

        def disk() -> int:
            return sum(len((jdir / f).read_bytes().rstrip(b"\0")) for f in segs())

        await until(lambda: len(segs()) <= 2 and disk() < 32 * 1024, 10, what="the dropped segments unlinked")
        assert all((jdir / f).stat().st_size <= (64 + 64 + 4) * 1024 for f in segs()), [(jdir / f).stat().st_size for f in segs()]
        # ... after several 64 KiB segments were written and dropped (the run's throughput decides
        # how many: at least two beyond the first is what this test is about).
        numbers = [int(f.rsplit("-", 1)[1].split(".")[0]) for f in segs()]
        assert r.sent * 200 > 2 * 64 * 1024 and max(numbers) >= 1 + r.sent * 200 // (64 * 1024), (r.sent, segs())
        await a.close()
    finally:
        cp.stop()


def test_check_config_warns_about_durability_none(tmp_path: Path) -> None:
    from tests.support.procs import cp_config

    cfg = cp_config(tmp_path, terminals=2, durability="none")
    r = subprocess.run([sys.executable, "-m", "hsb.cp", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and 'durability = "none"' in r.stderr and "loses" in r.stderr


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (CI runs as root)"
    return None


@pytest.mark.skipif(_can_mount() is not None, reason=f"full disk: {_can_mount()}")
async def test_a_full_disk_stops_acknowledgements_until_there_is_room(tmp_path: Path) -> None:
    """The journal on a tmpfs of 256 KiB: it fills, the CP says so and acknowledges nothing more;
    room again (remounted larger), everything waiting is acknowledged and answered, once."""
    d = tmp_path / "cp"
    d.mkdir()
    mnt = d / "cp-journal"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    cp = None
    try:
        cp = start_cp(d, terminals=2, journal_timeout=5.0)
        a = await FakeHost.connect(cp.info["host"], "host-a", "active")
        a.auto_open = ATTRS  # no replies: everything stays held, the journal only grows
        t = await logged_on(cp, "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        big = "x" * 8000
        n = 60  # 480 KB: more than the disk holds
        for i in range(1, n + 1):
            t.send({"t": "msg", "id": i, "data": big})
        st = await until_journal_status(cp, lambda s: s["journal"]["state"] == "failing", what="journal failing")
        assert "No space left" in (st["journal"]["error"] or ""), st["journal"]
        acked = len([m for m in t.inbox if m["t"] == "ack"])
        assert 0 < acked < n
        await asyncio.sleep(0.5)  # still full: no more acknowledgements
        assert len([m for m in t.inbox if m["t"] == "ack"]) == acked
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        acks = await t.wait_count(lambda m: m["t"] == "ack", n, timeout=15)
        assert sorted(m["id"] for m in acks) == list(range(1, n + 1))
        st = await until_journal_status(cp, lambda s: s["journal"]["state"] == "ok", what="journal ok")
        # a full disk is the storage's trouble, not io_uring's: the ring stays in use where it runs
        # (its short write was done again by the writer thread, which reported ENOSPC above)
        assert st["journal"]["io"] == ("io_uring" if uring.available() is None else "thread"), st["journal"]
        a.auto_reply = True
        for m in [m for m in a.inbox if m["t"] == "deliver"]:
            a.send({"t": "reply", "terminal": m["terminal"], "id": m["id"], "data": "r", "epoch": a.epoch})
        replies = await t.wait_count(lambda m: m["t"] == "reply", n, timeout=15)
        assert sorted(m["id"] for m in replies) == list(range(1, n + 1))
        await t.close()
        await a.close()
    finally:
        if cp is not None:
            cp.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
