"""The daemons' asyncio facade: deadlines, fail-fast while stuck, group commit, faults."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    Faults,
    NoBatchWritten,
    PollStatus,
    SessionEntry,
    StartupIdMismatch,
    StorageNotResponding,
    TakeoverFileTooSmall,
    TakeoverStore,
    create_file,
)


@pytest.fixture
def path(tmp_path: Path) -> str:
    p = str(tmp_path / "takeover.dat")
    create_file(p, 200, 4096, host="test")
    return p


@pytest.fixture
async def faults() -> AsyncIterator[Faults]:
    f = Faults()
    yield f
    f.release()  # never leave a storage thread parked after a test


async def wait_until(cond: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def test_active_and_standby_end_to_end(path: str) -> None:
    active = TakeoverStore(path, terminals=300, host_name="host-a", records=200)
    standby = TakeoverStore(path, terminals=40, host_name="host-b")
    try:
        assert (await active.check()).batch_records == 20
        assert (await standby.check()).batch_records == 3
        with pytest.raises(NoBatchWritten):
            await active.append([SessionEntry("T1", {}, True)])
        linked = [SessionEntry(f"T{i}", {"p": i}, True) for i in range(50)]
        h = await active.batch_write(777, linked)
        assert h.batch_records == 20 and h.generation == 1
        with pytest.raises(StartupIdMismatch) as ei:
            await standby.batch_read(expected_startup_id=778)
        assert (ei.value.expected, ei.value.found) == (778, 777)
        snap = await standby.batch_read(expected_startup_id=777)
        assert snap.entries == linked and snap.header.batch_records == 20  # B from the file
        assert (await standby.poll()).status is PollStatus.NOTHING_NEW
        change = [SessionEntry("T3", {"p": 3}, False)]
        assert await active.append(change) == (1, 1)
        res = await standby.poll()
        assert res.status is PollStatus.NEW and res.entries == change
        assert active.write_position == (1, 1) and standby.read_position == (1, 2)
    finally:
        await active.close()
        await standby.close()


async def test_check_refuses_a_small_file(path: str) -> None:
    store = TakeoverStore(path, terminals=5000)
    with pytest.raises(TakeoverFileTooSmall, match="has 200 records; 5000 terminals need B=334"):
        await store.check()
    await store.close()


async def test_stalled_storage_times_out_and_the_loop_stays_responsive(path: str, faults: Faults) -> None:
    store = TakeoverStore(path, terminals=10, timeout=0.3, faults=faults)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        faults.hold()  # the NFS server stops answering
        t0 = time.monotonic()
        with pytest.raises(StorageNotResponding) as ei:
            await store.read_header()
        took = time.monotonic() - t0
        assert str(ei.value) == "takeover storage not responding: header read took longer than 0.3s"
        assert 0.25 <= took < 2.0
        assert ticks >= 5  # the event loop kept running while the storage thread was stuck
        assert not store.responding
        t1 = time.monotonic()
        with pytest.raises(StorageNotResponding, match="header read took longer"):
            await store.batch_write(1, [])  # fails at once instead of queueing behind the stuck op
        assert time.monotonic() - t1 < 0.1
        faults.release()
        await wait_until(lambda: store.responding)
        h = await store.batch_write(1, [SessionEntry("T1", {}, True)])
        assert h.generation == 1
    finally:
        t.cancel()
        await store.close()


async def test_slow_storage_within_the_deadline_is_fine(path: str, faults: Faults) -> None:
    faults.delay = 0.05
    store = TakeoverStore(path, terminals=10, timeout=1.0, faults=faults)
    try:
        assert (await store.read_header()).records == 200
    finally:
        await store.close()


async def test_io_error_is_raised_not_hidden(path: str, faults: Faults) -> None:
    faults.eio()
    faults.ops = frozenset({"ring read"})
    store = TakeoverStore(path, terminals=10, faults=faults)
    try:
        await store.batch_write(1, [])
        await store.batch_read()
        with pytest.raises(OSError) as ei:
            await store.poll()
        assert ei.value.errno == errno.EIO
        faults.error = None
        assert (await store.poll()).status is PollStatus.NOTHING_NEW
    finally:
        await store.close()


async def test_corrupted_read_is_torn_then_recovers(path: str, faults: Faults) -> None:
    store = TakeoverStore(path, terminals=10, faults=faults)
    try:
        await store.batch_write(1, [])
        await store.batch_read()
        await store.append([SessionEntry("T1", {}, True)])
        faults.corrupt_reads = 1  # the header read of the next poll
        res = await store.poll()
        assert res.status is PollStatus.TORN and res.record == 0
        res = await store.poll()
        assert res.status is PollStatus.NEW and res.entries == [SessionEntry("T1", {}, True)]
    finally:
        await store.close()


async def test_group_commit_gathers_concurrent_callers(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = 0
    real = fileio.sync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        time.sleep(0.002)  # a disk that takes a moment: callers pile up meanwhile
        real(fd)

    monkeypatch.setattr(fileio, "sync", counting)
    active = TakeoverStore(path, terminals=300)
    standby = TakeoverStore(path, terminals=300)
    try:
        await active.batch_write(1, [])
        await standby.batch_read()
        syncs = 0
        changes = [SessionEntry(f"T{i % 300}", {"i": i}, i % 2 == 0) for i in range(2000)]
        results = await asyncio.gather(*(active.append([c]) for c in changes))
        assert len(results) == 2000
        assert syncs < 200  # far fewer than one sync per change
        assert all(first <= last for first, last in results)
        got: list[SessionEntry] = []
        while True:
            res = await standby.poll()
            if res.status is PollStatus.NOTHING_NEW:
                break
            assert res.status is PollStatus.NEW
            got += res.entries
        assert got == changes  # in call order
    finally:
        await active.close()
        await standby.close()


async def test_a_queued_op_past_its_deadline_never_runs(path: str, faults: Faults) -> None:
    faults.ops = frozenset({"header read"})
    store = TakeoverStore(path, terminals=10, timeout=0.2, faults=faults)
    try:
        await store.open_writer()
        faults.hold()
        stuck = asyncio.create_task(store.read_header())
        await asyncio.sleep(0)
        with pytest.raises(StorageNotResponding, match="batch write"):
            await store.batch_write(1, [])  # queued behind the stuck read, then cancelled
        with pytest.raises(StorageNotResponding):
            await stuck
        faults.release()
        await wait_until(lambda: store.responding)
        assert (await store.read_header()).generation == 0  # the cancelled batch write did not happen
    finally:
        await store.close()


def test_a_hung_storage_thread_does_not_block_process_exit(path: str) -> None:
    import subprocess
    import sys

    script = f"""
import asyncio, sys
from hsb.takeover import Faults, StorageNotResponding, TakeoverStore
async def main():
    f = Faults(); f.hold()  # never released: the mount stays hung
    store = TakeoverStore({path!r}, terminals=10, timeout=0.2, faults=f)
    try:
        await store.read_header()
    except StorageNotResponding as exc:
        print(exc)
    await store.close()
asyncio.run(main())
"""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "takeover storage not responding: header read took longer than 0.2s" in p.stdout
    assert time.monotonic() - t0 < 30


async def test_an_operations_own_timeout_error_is_not_a_storage_timeout(path: str) -> None:
    """ETIMEDOUT from the file system (an NFS mount, say) is an OSError that Python makes a
    TimeoutError; it is reported as itself, not as the store's own deadline having passed."""
    store = TakeoverStore(path, terminals=10, timeout=5.0)

    def nfs_timed_out() -> None:
        raise OSError(errno.ETIMEDOUT, "Connection timed out")

    try:
        with pytest.raises(TimeoutError) as info:
            await store._run("read", nfs_timed_out)
        assert not isinstance(info.value, StorageNotResponding) and info.value.errno == errno.ETIMEDOUT
        assert store.responding
    finally:
        await store.close()


async def test_a_ring_read_that_misses_its_deadline_and_finishes_later_asks_for_a_resync(path: str) -> None:
    """A poll stalls past storage_timeout on the storage thread, then finishes: it moved the
    ring cursor past the records it read, and its result went to nobody. The next poll must not
    go on from there (those session changes would be lost without a word): it says the reader
    lost its place, and only a new batch read continues."""
    f = Faults(ops=frozenset({"ring read"}))
    active = TakeoverStore(path, terminals=10, host_name="host-a")
    standby = TakeoverStore(path, terminals=10, host_name="host-b", faults=f, timeout=0.2)
    try:
        await active.batch_write(1, [])
        await standby.batch_read()
        change = [SessionEntry("T1", {}, True)]
        await active.append(change)
        f.hold()
        with pytest.raises(StorageNotResponding):
            await standby.poll()
        f.release()  # the stuck read goes on and reads the change, for nobody
        await wait_until(lambda: standby.responding)
        res = await standby.poll()
        assert res.needs_resync and res.status is PollStatus.LAPPED, res
        await standby.batch_read()  # a new batch read: the cursor is trusted again, from the batch
        res = await standby.poll()
        assert res.status is PollStatus.NEW and res.entries == change, res  # the change, not lost
    finally:
        f.release()
        await active.close()
        await standby.close()


async def test_a_batch_write_has_a_deadline_that_grows_with_the_file(tmp_path: Path, faults: Faults) -> None:
    """A batch write moves up to a third of the file (26 MiB and two syncs at 100,000
    terminals): under the one deadline of a ring write it missed it on storage that is slow but
    working, at every try, and hot standby never came. It gets storage_timeout plus the time to
    move its bytes at BULK_RATE; a ring write of one record has little more than storage_timeout."""
    from hsb.takeover.store import BULK_RATE

    p = str(tmp_path / "big.dat")
    create_file(p, 4096, 4096, host="test")  # 16 MiB: a batch's share moves in ~0.33 s at BULK_RATE
    store = TakeoverStore(p, terminals=10, records=4096, timeout=0.1, faults=faults)
    assert store.bulk_timeout(1 / 3) == pytest.approx(0.1 + 4096 * 4096 / 3 / BULK_RATE)
    try:
        await store.open_writer()
        faults.ops = frozenset({"batch write", "ring write"})
        faults.delay = 0.2  # slower than storage_timeout, well within the batch's deadline
        h = await store.batch_write(1, [SessionEntry("T1", {}, True)])
        assert h.generation == 1
        with pytest.raises(StorageNotResponding, match="ring write took longer than 0.1s"):
            await store.append([SessionEntry("T1", {"n": 1}, True)])
    finally:
        faults.release()
        await store.close()


async def test_a_batch_read_hung_on_its_storage_leaves_garbage_collection_on(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch read paused the garbage collector (the whole process's) for its whole run, reads
    included: a read that a hung mount never ends, left behind on its thread after its deadline,
    kept collections off for the daemon that went on without it. Paused for the decode only."""
    import gc
    import threading

    active = TakeoverStore(path, terminals=300, host_name="host-a", records=200)
    standby = TakeoverStore(path, terminals=300, host_name="host-b", timeout=0.3)
    release = threading.Event()
    real = os.preadv

    def preadv(fd: int, bufs: Any, offset: int) -> int:
        if offset > 0 and threading.current_thread() is not threading.main_thread():
            release.wait(10)  # past the header: the mount stops answering
        return real(fd, bufs, offset)

    try:
        await active.batch_write(777, [SessionEntry(f"T{i}", {"p": i}, True) for i in range(50)])
        assert gc.isenabled()
        monkeypatch.setattr(os, "preadv", preadv)
        with pytest.raises(StorageNotResponding):
            await standby.batch_read(expected_startup_id=777)
        assert gc.isenabled(), "collections off while the read hangs"
    finally:
        release.set()
        await active.close()
        await standby.close()


async def test_a_large_ring_group_on_slow_storage_gets_a_deadline_of_its_size(tmp_path: Path, faults: Faults) -> None:
    """A logon storm's ring group can be megabytes; its write had the plain per-operation
    deadline, so on storage slow but working it read as hung (`ring_write_failed`, the storage
    said failing) and its entries were queued to be written a second time. Its deadline grows
    with its size, as a batch write's does."""
    p = str(tmp_path / "big.dat")
    create_file(p, 2000, 4096, host="test")
    store = TakeoverStore(p, terminals=3000, host_name="host-a", timeout=0.3, faults=faults)
    try:
        await store.batch_write(5, [SessionEntry("T1", {}, True)])
        group = [SessionEntry(f"T{i}", {"p": i}, True) for i in range(20_000)]  # ~680 records: 2.7 MB
        # just slower than the plain deadline (0.3 s), so the write itself has the ~0.3 s its size adds (a loaded machine needed more than 0.2)
        faults.delay, faults.ops = 0.32, frozenset({"ring write"})
        await store.append(group)
        faults.delay = 0.0
        assert store.write_position is not None and store.write_position[0] == 1
    finally:
        await store.close()


async def test_ring_reads_go_to_the_file_thread_without_the_spin(path: str) -> None:
    """The standby's ring reads (twenty a second at rest) do not make its idle loop spin for the
    GIL (hsb.worker `spin=False`); the active's writes do (they are on its acknowledgement path)."""
    active = TakeoverStore(path, terminals=300, host_name="host-a", records=200)
    standby = TakeoverStore(path, terminals=40, host_name="host-b")
    spins: dict[str, list[bool]] = {"a": [], "b": []}
    for key, store in (("a", active), ("b", standby)):
        submit = store._pool.submit

        def spy(fn: Any, spin: bool = True, _submit: Any = submit, _key: str = key) -> Any:
            spins[_key].append(spin)
            return _submit(fn, spin)

        store._pool.submit = spy  # type: ignore[method-assign]
    try:
        await active.check()
        await standby.check()
        await active.batch_write(777, [SessionEntry("T1", {}, True)])
        await standby.batch_read(expected_startup_id=777)
        spins["a"].clear()
        spins["b"].clear()
        assert (await standby.poll()).status is PollStatus.NOTHING_NEW
        assert await active.append([SessionEntry("T2", {}, True)]) == (1, 1)
        assert (await standby.poll()).status is PollStatus.NEW
        assert spins["b"] == [False, False], spins
        assert spins["a"] and all(spins["a"]), spins
    finally:
        await active.close()
        await standby.close()


@pytest.mark.parametrize(
    ("err", "fix"),
    [
        (errno.EPERM, "it is immutable or append-only (lsattr {p}): chattr -i -a {p} as root"),
        (errno.EROFS, "its file system is mounted read-only: mount it read-write"),
        (errno.EACCES, "give the daemon's user read and write access (chown USER {p}; chmod 600 {p})"),
    ],
)
def test_a_takeover_file_that_cannot_be_written_is_given_the_fix_of_its_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, fix: str
) -> None:
    """open's EPERM on a file is an attribute (chattr +i), not its owner or mode (EACCES): chown
    and chmod would not help; a read-only mount is a mount's matter."""
    from hsb.takeover.errors import NotWritable
    from hsb.takeover.store import writable

    p = tmp_path / "takeover.dat"
    p.write_bytes(b"x")

    def refused(path: str, flags: int, *a: Any) -> int:
        raise OSError(err, os.strerror(err), path)

    monkeypatch.setattr("hsb.takeover.store.os.open", refused)
    with pytest.raises(NotWritable) as exc:
        writable(str(p))
    text = str(exc.value)
    assert text.startswith(f"takeover file {p} cannot be opened for writing by this host ({os.strerror(err)})"), text
    assert text.endswith(fix.format(p=p)) or fix.format(p=p) + " (a daemon run as root" in text, text
    assert ("chown" in text) == (err == errno.EACCES), text
