"""The CP journal's group commit through io_uring (`journal_io`), in-process on real files: a
group goes as one chain with no call to the writer thread, a newer generation still stops
every acknowledgement, a chain hung in the kernel is reported stalled while the loop runs on
(and, at a stop, abandoned with nothing acknowledged and its descriptors left open), and a
chain the ring cannot run is written again by the thread, with nothing lost."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb import uring
from hsb.cp.journal.generation import Generations, gen_name
from hsb.cp.journal.recovery import segment_name
from hsb.cp.journal.store import Journal
from hsb.cp.journal.writer import JournalIOUnavailable
from tests.support.journal import durable, open_journal, records
from tests.support.uringchain import fill

WHY = uring.available()
needs_ring = pytest.mark.skipif(WHY is not None, reason=f"this kernel does not run io_uring: {WHY}")


def count_thread_calls(j: Journal, monkeypatch: Any) -> list[int]:
    calls = [0]
    real = j._exec.call

    def call(fn: Any, done: Any) -> None:
        calls[0] += 1
        real(fn, done)

    monkeypatch.setattr(j._exec, "call", call)
    return calls


def fail_ring_once(j: Journal, monkeypatch: Any, outcome: Any) -> list[bool]:
    """The ring's next chain (write, sync, the generation checks) is not submitted: it ends with
    `outcome(fd, data, off)`, its four results; the chains after run as before. [True] until then."""
    ring = j._ring
    assert ring is not None
    real = ring.write_sync_check
    once = [True]

    def fail(fd: int, data: bytes, off: int, paths: Any, done: Any) -> None:
        if once[0]:
            once[0] = False
            asyncio.get_running_loop().call_soon(done, outcome(fd, data, off))
            return
        real(fd, data, off, paths, done)

    monkeypatch.setattr(ring, "write_sync_check", fail)
    return once


@needs_ring
async def test_groups_go_through_the_ring_without_the_writer_thread(tmp_path: Path, monkeypatch: Any) -> None:
    j = open_journal(tmp_path)
    try:
        assert j.io_used == "io_uring" and j.status()["io"] == "io_uring"
        calls = count_thread_calls(j, monkeypatch)
        for i in range(1, 51):
            await durable(j, ["a", "T1", i, f"m{i}"])
        assert calls[0] == 0, f"{calls[0]} group commits went to the writer thread"
        assert j.syncs >= 50 and j.state == "ok"
        assert [r for r in records(tmp_path) if r[0] == "a"] == [["a", "T1", i, f"m{i}"] for i in range(1, 51)]
    finally:
        j.close()


async def test_journal_io_thread_keeps_the_writer_thread(tmp_path: Path, monkeypatch: Any) -> None:
    j = open_journal(tmp_path, io="thread")
    try:
        assert j.io_used == "thread" and j.status()["io"] == "thread"
        calls = count_thread_calls(j, monkeypatch)
        for i in range(1, 6):
            await durable(j, ["a", "T1", i, "x"])
        assert calls[0] >= 5
        assert [r for r in records(tmp_path) if r[0] == "a"] == [["a", "T1", i, "x"] for i in range(1, 6)]
    finally:
        j.close()


async def test_journal_io_uring_refuses_to_start_where_the_kernel_cannot(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(uring, "available", lambda: "io_uring_setup failed: Operation not permitted")
    with structlog.testing.capture_logs() as logs:
        j = open_journal(tmp_path / "auto")  # auto: the thread, said once in the log
    j.close()
    assert j.io_used == "thread"
    assert [e for e in logs if e["event"] == "journal_io"][0]["io"] == "thread"
    gen = Generations(tmp_path / "strict").take()
    j = Journal(tmp_path / "strict", generation=gen, io="io_uring")
    with pytest.raises(JournalIOUnavailable, match='journal_io = "auto" or "thread"'):
        j.open(1, [], [])
    j.close()


async def test_a_ring_that_cannot_be_set_up_is_refused_or_falls_back(tmp_path: Path, monkeypatch: Any) -> None:
    """The probe said yes but the journal's own ring cannot be set up (say, out of locked memory):
    "io_uring" refuses with the reason, "auto" takes the writer thread. Refused before anything
    is durable: it was found after the snapshot was marked (snap-N) and the older generations'
    files deleted, the old CP fenced for a CP that then exited 78."""

    def no_ring(*_: Any) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(uring, "available", lambda: None)
    monkeypatch.setattr(uring, "Ring", no_ring)
    j = open_journal(tmp_path / "auto")
    j.close()
    assert j.io_used == "thread"
    d = tmp_path / "strict"
    gen = Generations(d).take()
    old = d / segment_name(1, gen - 1 or 7)  # an older generation's segment: garbage once the snapshot is durable
    old.write_bytes(b"")
    j = Journal(d, generation=gen, io="io_uring")
    with pytest.raises(JournalIOUnavailable, match="its ring could not be set up .io_uring_setup failed: Cannot allocate memory"):
        j.open(2, [["a", "T1", 1, "x"]], [old])
    j.close()
    assert old.exists() and sorted(p.name for p in d.iterdir()) == sorted([gen_name(gen), old.name]), list(d.iterdir())


def test_hsbcpd_whose_ring_cannot_be_set_up_refuses_before_it_takes_a_generation(tmp_path: Path) -> None:
    """`journal_io = "io_uring"`, the probe at the start said yes (it is cached), and the ring of
    the takeover cannot be set up (ENOMEM, the memlock limit): hsbcpd exits 78 before it takes
    the journal's next generation. It took it, wrote and marked its snapshot and deleted the old
    generation's files first: the serving CP was fenced for one that then exited."""
    import subprocess
    import sys

    from tests.support.procs import cp_config

    cfg = cp_config(tmp_path, terminals=2, journal_io="io_uring")
    (tmp_path / "cp-journal").mkdir()
    (tmp_path / "cp-journal" / gen_name(1)).write_text("the serving CP\n")
    code = (
        "import errno, sys, hsb.uring as u; u.available = lambda: None\n"
        "def ring(*a):\n    raise OSError(errno.ENOMEM, 'Cannot allocate memory')\n"
        "u.Ring = ring\n"
        "from hsb.cp.main import main; sys.argv = ['hsbcpd', '--config', sys.argv[1]]; main()"
    )
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, (r.returncode, r.stderr[-2000:])
    assert "its ring could not be set up (io_uring_setup failed: Cannot allocate memory)" in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "cp-journal").iterdir()) == [gen_name(1)], "a generation was taken"


@needs_ring
async def test_a_newer_generation_stops_acknowledgements_through_the_ring(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    assert j.io_used == "io_uring"
    stopped: list[Any] = []
    j.on_superseded = stopped.append
    try:
        await durable(j, ["a", "T1", 1, "x"])
        (tmp_path / gen_name(j.gen + 1)).touch()  # another CP took the journal over
        done: list[int] = []
        j.append(["a", "T1", 2, "x"], lambda: done.append(2))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not stopped:
            assert loop.time() - t0 < 5.0, "the superseded CP was never stopped"
            await asyncio.sleep(0.005)
        assert stopped[0].newer == j.gen + 1
        assert not done, "a group written after the takeover was acknowledged"
        j.append(["a", "T1", 3, "x"], lambda: done.append(3))
        await asyncio.sleep(0.05)  # an observation window for a negative check: no acknowledgement may come in it
        assert not done
    finally:
        j.close()


@needs_ring
async def test_the_rings_check_looks_for_the_next_generation_before_its_own(tmp_path: Path, monkeypatch: Any) -> None:
    """Newer CPs prune generation files oldest first; the chain's two statx look for the next
    generation's file, then this CP's own: a check that lands in a prune never sees its own
    there and the next one already gone (test_cp_generation_files has the thread's check)."""
    j = open_journal(tmp_path)
    try:
        ring = j._ring
        assert ring is not None
        real = ring.write_sync_check
        seen: list[list[str]] = []

        def chain(fd: int, data: bytes, off: int, paths: Any, done: Any) -> None:
            seen.append([Path(os.fsdecode(p)).name for p in paths])
            real(fd, data, off, paths, done)

        monkeypatch.setattr(ring, "write_sync_check", chain)
        await durable(j, ["a", "T1", 1, "x"])
        assert seen and seen[-1] == [gen_name(j.gen + 1), gen_name(j.gen)], seen
    finally:
        j.close()


def hang_segment(j: Journal, w: int) -> tuple[int, int]:
    """The current segment's descriptor swapped for `w`, the write end of a pipe filled up: a
    write to it waits in the kernel as on a hung mount. (segment, its real descriptor)."""
    seg = j.seg
    real = j._fds[seg]
    fill(w)
    j._fds[seg] = w
    return seg, real


@needs_ring
async def test_a_hung_chain_is_reported_stalled_and_its_group_lands_once_storage_answers(tmp_path: Path) -> None:
    """The segment's descriptor swapped for a full pipe: the chain's write waits in the kernel as
    on a hung mount. The loop runs on, the journal says `stalled`, nothing is acknowledged; once
    the pipe is read the write completes (its own sync with it), the group is acknowledged once,
    with the bytes meant for the segment, and the journal carries on through the ring."""
    from tests.support.ticker import Ticker

    j = open_journal(tmp_path, timeout=0.5)
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    try:
        await durable(j, ["a", "T1", 1, "x"])
        seg, real = hang_segment(j, w)
        at = j._offset[seg]
        done: list[int] = []
        j.append(["a", "T1", 2, "held"], lambda: done.append(2))
        async with Ticker() as turns:
            t0 = loop.time()
            while j.state != "stalled":
                assert loop.time() - t0 < 5.0, "a hung chain was never reported"
                await asyncio.sleep(0.01)
            assert turns.ticks >= 50, "the loop was blocked by the hung chain"
        assert not done and j.status()["pending_records"] >= 1
        os.set_blocking(r, False)
        out = b""
        with structlog.testing.capture_logs() as logs:
            while not done:
                try:
                    out += os.read(r, 1 << 20)
                except BlockingIOError:
                    pass
                assert loop.time() - t0 < 10.0, "the group was never acknowledged"
                await asyncio.sleep(0.01)
        try:
            out += os.read(r, 1 << 20)  # the write's last bytes, read after it completed
        except BlockingIOError:
            pass
        assert done == [2] and j.state == "ok" and j.io_used == "io_uring"
        assert "journal_recovered_from_fault" in [e["event"] for e in logs]
        group = out.lstrip(b"x")  # the pipe's filling first, then what the chain wrote
        assert group and j._offset[seg] == at + len(group)
        os.pwrite(real, group, at)  # what the storage was given lands where the journal put it
        j._fds[seg] = real
        await durable(j, ["a", "T1", 3, "after"])  # and the journal carries on
        assert [x for x in records(tmp_path) if x[0] == "a"] == [["a", "T1", 1, "x"], ["a", "T1", 2, "held"], ["a", "T1", 3, "after"]]
    finally:
        j.close()
        os.close(r)
        os.close(w)


@needs_ring
async def test_a_chain_the_ring_cannot_run_is_written_again_by_the_thread_and_the_ring_dropped(tmp_path: Path, monkeypatch: Any) -> None:
    """The segment's descriptor swapped for one open read-only: the chain's write fails with
    EBADF, an error of the ring's kind, not the storage's. The thread writes the group again (the
    real descriptor back by then); as it succeeds, the ring is dropped and the thread takes every
    group from then on, with nothing lost and nothing acknowledged before it is durable."""
    j = open_journal(tmp_path, timeout=0.5)
    loop = asyncio.get_running_loop()
    try:
        await durable(j, ["a", "T1", 1, "x"])
        seg = j.seg
        real = j._fds[seg]
        ro = os.open(j.dir / segment_name(seg, j.gen), os.O_RDONLY)
        j._fds[seg] = ro
        done: list[int] = []
        handed: list[int] = []
        thread_call = j._exec.call

        def call(fn: Any, then: Any) -> None:  # the redo handed to the thread: the storage is fine again
            handed.append(len(done))
            j._fds[seg] = real
            thread_call(fn, then)

        monkeypatch.setattr(j._exec, "call", call)
        with structlog.testing.capture_logs() as logs:
            j.append(["a", "T1", 2, "again"], lambda: done.append(2))
            t0 = loop.time()
            while not done:
                assert loop.time() - t0 < 10.0, "the group was never written again"
                await asyncio.sleep(0.01)
            os.close(ro)
        events = [e["event"] for e in logs]
        assert "journal_io_uring_error" in events and "journal_io_fallback" in events and j.io_used == "thread", events
        assert handed and handed[0] == 0, "acknowledged before the thread wrote it"
        assert "journal_failing" not in events, events  # written again once, by the thread
        await durable(j, ["a", "T1", 3, "after"])
        assert [x for x in records(tmp_path) if x[0] == "a"] == [["a", "T1", 1, "x"], ["a", "T1", 2, "again"], ["a", "T1", 3, "after"]]
    finally:
        j.close()


@needs_ring
async def test_a_stop_during_a_chain_hung_in_the_kernel_abandons_it_and_nothing_is_acknowledged(tmp_path: Path) -> None:
    """The CP stops while its group's chain waits in the kernel (a full pipe, as on a hung
    mount): the stop ends within its time and says why, nothing of that group is acknowledged,
    and the descriptors under the chain stay open. When the kernel later finishes the chain,
    nothing more happens here: no acknowledgement, no crash, and another journal works."""
    j = open_journal(tmp_path / "a", timeout=0.3)
    r, w = os.pipe()
    real = -1
    try:
        await durable(j, ["a", "T1", 1, "x"])
        _, real = hang_segment(j, w)
        done: list[int] = []
        j.append(["a", "T1", 2, "held"], lambda: done.append(2))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not (j._ring is not None and j._ring.busy):
            assert loop.time() - t0 < 5.0, "the group never went to the ring"
            await asyncio.sleep(0.005)
        with structlog.testing.capture_logs() as logs:
            t0 = loop.time()
            await j.stop(timeout=0.2)
            took = loop.time() - t0
        assert took < 2.0, took
        assert "journal_close_abandoned_write" in [e["event"] for e in logs]
        assert j._ring is None and not done
        j.close()  # closed again (a caller's own cleanup): still not under the chain
        os.fstat(w)  # still open: the kernel may still write through it
        os.fstat(real)
        os.set_blocking(r, False)
        t0 = loop.time()
        while loop.time() - t0 < 0.3:  # the storage answers: the kernel ends the chain
            try:
                os.read(r, 1 << 20)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.01)
        assert not done, "a group of a stopped journal was acknowledged"
        assert [x for x in records(tmp_path / "a") if x[0] == "a"] == [["a", "T1", 1, "x"]]
        j2 = open_journal(tmp_path / "b")
        try:
            await durable(j2, ["a", "T9", 1, "after"])
        finally:
            j2.close()
    finally:
        os.close(r)
        os.close(w)
        if real >= 0:
            os.close(real)


@needs_ring
async def test_a_storage_error_through_the_ring_is_redone_by_the_thread_and_keeps_the_ring(tmp_path: Path, monkeypatch: Any) -> None:
    """EIO (the storage's, not the ring's): the thread writes the group again and reports its
    own outcome; the ring stays in use for the groups after."""
    j = open_journal(tmp_path)
    try:
        await durable(j, ["a", "T1", 1, "x"])
        once = fail_ring_once(j, monkeypatch, lambda fd, data, off: [-errno.EIO, -errno.ECANCELED, -errno.ECANCELED, -errno.ECANCELED])
        calls = count_thread_calls(j, monkeypatch)
        await durable(j, ["a", "T1", 2, "y"])
        assert calls[0] == 1 and not once[0]
        await durable(j, ["a", "T1", 3, "z"])
        assert calls[0] == 1 and j.io_used == "io_uring"
        assert [x for x in records(tmp_path) if x[0] == "a"] == [["a", "T1", i, v] for i, v in ((1, "x"), (2, "y"), (3, "z"))]
    finally:
        j.close()


def test_hsbcpd_refuses_journal_io_uring_before_it_takes_a_generation(tmp_path: Path) -> None:
    """A real hsbcpd whose kernel "cannot" run io_uring (the probe replaced before its main runs):
    `journal_io = "io_uring"` stops it at once with the fix named, exit 78 (systemd does not
    restart it), and before it took the journal's next generation: a CP that cannot serve must
    not fence the one that can (a waiting CP of a keepalived pair would otherwise stop the
    serving one and then exit)."""
    import subprocess
    import sys

    from tests.support.procs import cp_config

    cfg = cp_config(tmp_path, terminals=2, journal_io="io_uring")
    (tmp_path / "cp-journal").mkdir()
    (tmp_path / "cp-journal" / gen_name(1)).write_text("the serving CP\n")
    code = (
        "import sys, hsb.uring as u; u.available = lambda: 'io_uring_setup failed: Operation not permitted'; "
        "from hsb.cp.main import main; sys.argv = ['hsbcpd', '--config', sys.argv[1]]; main()"
    )
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, (r.returncode, r.stderr[-2000:])
    assert 'journal_io = "io_uring" but this kernel does not run it' in r.stderr and 'set journal_io = "auto" or "thread"' in r.stderr
    assert sorted(p.name for p in (tmp_path / "cp-journal").iterdir()) == [gen_name(1)], "a generation was taken"


@pytest.mark.parametrize("io", ["thread", pytest.param("io_uring", marks=needs_ring)])
async def test_a_storage_error_in_the_generation_check_checks_again_and_writes_the_group_once(tmp_path: Path, io: str, monkeypatch: Any) -> None:
    """The group was written and synced, then the check for a newer CP failed on the storage
    (EIO on a stat): nothing of the group is acknowledged until a check succeeds, the CP is not
    taken as superseded, and the group is not written a second time."""
    j = open_journal(tmp_path, io=io)
    try:
        await durable(j, ["a", "T1", 1, "x"])
        failing = [True]
        checks = [0]
        real_check = j.gens.check

        def check(own: int) -> None:
            checks[0] += 1
            if failing[0]:
                raise OSError(errno.EIO, "Input/output error (a stat of the generation file)")
            real_check(own)

        monkeypatch.setattr(j.gens, "check", check)
        ring = j._ring
        if io == "io_uring":
            assert ring is not None
            real = ring.write_sync_check

            def statx_fails(fd: int, data: bytes, off: int, paths: Any, done: Any) -> None:
                # the chain's own statx fails after the write and the sync: the full check follows
                real(fd, data, off, paths, lambda res: done([res[0], res[1], -errno.EIO, res[3]]))

            monkeypatch.setattr(ring, "write_sync_check", statx_fails)
        acked: list[int] = []
        j.append(["a", "T1", 2, "y"], lambda: acked.append(2))
        deadline = asyncio.get_running_loop().time() + 5
        while checks[0] < 2 and asyncio.get_running_loop().time() < deadline:  # checked, and checked again
            await asyncio.sleep(0.01)
        assert checks[0] >= 2 and acked == [] and j.state == "failing" and j.superseded is None
        assert j.error is not None and "the check for a newer CP" in j.error and "Input/output error" in j.error, j.error
        failing[0] = False
        while not acked and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert acked == [2] and j.state == "ok"
        await durable(j, ["a", "T1", 3, "z"])
        assert [x for x in records(tmp_path) if x[0] == "a"] == [["a", "T1", i, v] for i, v in ((1, "x"), (2, "y"), (3, "z"))]
    finally:
        j.close()


@needs_ring
async def test_a_chain_whose_write_landed_but_whose_sync_failed_is_not_acknowledged_until_the_thread_syncs_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The chain's write went through and its sync failed (EIO): the group is not durable, so
    its acknowledgement waits for the writer thread, which writes it again and syncs it."""
    j = open_journal(tmp_path)
    try:
        await durable(j, ["a", "T1", 1, "x"])
        # the bytes reach the file, their sync fails
        once = fail_ring_once(j, monkeypatch, lambda fd, data, off: [os.pwrite(fd, data, off), -errno.EIO, -errno.ECANCELED, -errno.ECANCELED])
        syncs = [0]
        real_sync = os.fdatasync

        def fdatasync(fd: int) -> None:
            real_sync(fd)
            syncs[0] += 1

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        synced_at_ack: list[int] = []
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acked() -> None:
            synced_at_ack.append(syncs[0])
            fut.set_result(None)

        j.append(["a", "T1", 2, "y"], acked)
        await asyncio.wait_for(fut, 5.0)
        assert not once[0] and synced_at_ack == [1], "acknowledged without a sync that succeeded"
        assert [x for x in records(tmp_path) if x[0] == "a"] == [["a", "T1", 1, "x"], ["a", "T1", 2, "y"]]
    finally:
        j.close()
