"""The takeover writer and its asyncio store at their edges (a mutation audit of
hsb/takeover/writer.py and hsb/takeover/store.py): the order of writes and syncs of a batch and
of a ring group owed after a failure, a damaged record cleared only past the batch area and
inside the file, the generation wrapping after 2**32 - 1, a new attempt (never 0) at every batch
write, the size check of a writer sized per batch, the header's time and pair tag, ring writes
stopped after a ForeignWriter, a closed writer's descriptor, the store's write position, last
group, batch snapshot, ring deadline with owed records, closed callers and an unwritable file."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import hsb.takeover.fileio as fileio
import hsb.takeover.store as store_mod
import hsb.takeover.writer as writer_mod
from hsb.takeover import (
    Faults,
    SessionEntry,
    TakeoverFileTooSmall,
    TakeoverStore,
    TakeoverWriter,
    batch_read,
    read_header,
)
from hsb.takeover.errors import ForeignWriter, NoBatchWritten, NotWritable
from hsb.takeover.records import encode_header
from tests.support.ring import Changes, E, R, drain, make, setup_pair

pytestmark = pytest.mark.timeout(60)


def _events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every whole-record write (its first record) and every sync of the writer, in order."""
    seen: list[tuple[str, int]] = []
    real_write, real_sync = fileio.RecordWriter.write, fileio.sync

    def write(self: fileio.RecordWriter, first_record: int, data: bytes | bytearray | memoryview) -> None:
        seen.append(("write", first_record))
        real_write(self, first_record, data)

    def sync(fd: int) -> None:
        seen.append(("sync", -1))
        real_sync(fd)

    monkeypatch.setattr(fileio.RecordWriter, "write", write)
    monkeypatch.setattr(fileio, "sync", sync)
    return seen


def test_a_batch_is_synced_before_its_header_is_written_and_the_header_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch write: records 1..B, a sync, then record 0, a sync (a durable header always
    describes a durable batch, and is durable before BATCH WRITE COMPLETE)."""
    path = make(tmp_path, 40)
    w = TakeoverWriter(path, terminals=6)
    seen = _events(monkeypatch)
    h = w.batch_write(7, Changes().take(5))
    assert h.batch_records == 2
    assert seen == [("write", 1), ("sync", -1), ("write", 0), ("sync", -1)]


def test_a_cleared_record_without_a_batch_is_synced_before_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch write of no batch records that clears a damaged ring record syncs the zeros
    before the header that starts the ring over is written, and the header after it."""
    path = make(tmp_path, 20)
    w = TakeoverWriter(path)  # B sized to each batch: 0 for no entries
    seen = _events(monkeypatch)
    h = w.batch_write(7, [], clear=9)
    assert h.batch_records == 0
    assert seen == [("write", 9), ("sync", -1), ("write", 0), ("sync", -1)]


def test_a_record_to_clear_is_written_only_past_the_batch_area_and_inside_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`clear` naming the last batch record (just written) or a record past the file's end
    writes nothing more: the batch stays whole and the file keeps its size."""
    path = make(tmp_path, 20)
    w = TakeoverWriter(path, terminals=6)  # B = 2
    state = Changes().take(6)
    seen = _events(monkeypatch)
    w.batch_write(7, state, clear=2)
    assert ("write", 2) not in seen
    assert batch_read(path, expected_startup_id=7).entries == state
    seen.clear()
    w.batch_write(8, state, clear=20)
    assert ("write", 20) not in seen
    assert os.stat(path).st_size == 20 * R
    assert batch_read(path, expected_startup_id=8).entries == state


def fail_next_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover file's next sync fails with EIO (the storage's error); those after it work."""
    real_sync = fileio.sync
    fails = {"n": 1}

    def sync_once_failing(fd: int) -> None:
        if fails["n"]:
            fails["n"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    monkeypatch.setattr(fileio, "sync", sync_once_failing)


def test_a_ring_group_owed_after_a_failure_is_synced_before_the_next_groups_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records of a failed group are written again and synced on their own before the
    next group's records, which get a sync of their own; then nothing more is owed, even after
    an empty group."""
    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    ch = Changes()
    failed = ch.take(E)
    fail_next_sync(monkeypatch)
    with pytest.raises(OSError):
        w.append_group(failed)
    assert w.owed_records == 1
    monkeypatch.undo()
    seen = _events(monkeypatch)
    assert w.append_group([]) == (2, 1)
    assert seen == [("write", 3), ("sync", -1)]  # seq 1: record B + 1 = 3
    assert w.owed_records == 0
    seen.clear()
    nxt = ch.take(1)
    assert w.append_group(nxt) == (2, 2)
    assert seen == [("write", 4), ("sync", -1)]
    assert drain(r) == failed + nxt


def _put_header(path: str, **fields: object) -> None:
    """Writes record 0 anew with `fields` changed (another writer's batch write, as far as
    this one can tell)."""
    h = dataclasses.replace(read_header(path), **fields)  # type: ignore[arg-type]
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, encode_header(h), 0)
    finally:
        os.close(fd)


def test_the_generation_after_the_largest_is_1(tmp_path: Path) -> None:
    """A header of generation 2³² − 1: the next batch write is generation 1 (the u32 wraps)."""
    path = make(tmp_path, 20)
    _put_header(path, generation=0xFFFF_FFFF)
    with TakeoverWriter(path) as w:
        assert w.batch_write(5, Changes().take(2)).generation == 1
    assert batch_read(path, expected_startup_id=5).header.generation == 1


def test_every_batch_write_draws_a_new_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batch writes of one writer, and a retry after a failed try, carry attempts of their
    own (a failed try's records are never taken for the retry's)."""
    path = make(tmp_path, 40)
    with TakeoverWriter(path, terminals=6) as w:
        attempts = [w.batch_write(1, []).attempt, w.batch_write(2, []).attempt]
        fail_next_sync(monkeypatch)
        with pytest.raises(OSError):
            w.batch_write(3, Changes().take(2))
        failed_try = w.attempt
        attempts.append(w.batch_write(3, Changes().take(2)).attempt)
    assert attempts[0] != attempts[1] and attempts[2] not in (attempts[1], failed_try)
    assert all(attempts)


def test_an_attempt_is_never_0_nor_the_previous_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """new_attempt draws again while it draws 0 (an earlier version's) or the previous one."""
    draws = iter([0, 0x1234, 0, 0x1234, 0x5678])
    monkeypatch.setattr(secrets, "randbits", lambda _bits: next(draws))
    assert writer_mod.new_attempt(0x1234) == 0x5678
    draws = iter([0, 9])
    assert writer_mod.new_attempt() == 9


def test_a_writer_sized_per_batch_refuses_a_batch_the_file_cannot_hold(tmp_path: Path) -> None:
    """Without a terminal count, each batch is size-checked against the file (N ≥ 3·B + 1):
    refused with nothing written, the header unchanged."""
    path = make(tmp_path, 10)  # at most 3 batch records of E entries
    with TakeoverWriter(path) as w:
        with pytest.raises(TakeoverFileTooSmall):
            w.batch_write(1, Changes().take(3 * E + 1))
        assert read_header(path).generation == 0
        assert w.batch_write(1, Changes().take(3 * E)).batch_records == 3


def test_a_header_says_when_it_was_written_in_milliseconds(tmp_path: Path) -> None:
    """written_at_ms is the batch write's time in milliseconds since the epoch."""
    path = make(tmp_path, 20)
    lo = int(time.time() * 1000)
    with TakeoverWriter(path) as w:
        w.batch_write(1, [])
    hi = int(time.time() * 1000)
    assert lo <= read_header(path).written_at_ms <= hi


def _fds_on(path: str) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return n


def test_a_closed_writer_holds_no_descriptor_of_the_file(tmp_path: Path) -> None:
    """close() releases the writer's descriptor (a recreated file is not kept open)."""
    path = os.path.realpath(make(tmp_path, 20))
    w = TakeoverWriter(path)
    assert _fds_on(path) == 1
    w.close()
    assert _fds_on(path) == 0


@pytest.fixture
async def faults() -> AsyncIterator[Faults]:
    f = Faults()
    yield f
    f.release()


async def _until(cond: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def test_the_store_reports_its_write_position_and_last_group(tmp_path: Path) -> None:
    """write_position: None before a batch write, then (generation, last ring seq) from seq 0;
    last_group: the entries of the last group committed, not its callers."""
    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, host_name="a")
    try:
        await store.open_writer()
        assert store.write_position is None
        h = await store.batch_write(1, [])
        assert store.write_position == (h.generation, 0)
        assert await store.append(Changes().take(E + 1)) == (1, 2)
        assert store.write_position == (h.generation, 2)
        assert store.last_group == E + 1
    finally:
        await store.close()


async def test_closing_a_store_ends_its_waiting_callers(tmp_path: Path, faults: Faults) -> None:
    """close() with a group held on the storage and another waiting behind it: both callers
    get CancelledError at once, neither waits for the storage to answer."""
    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, host_name="a", timeout=0.2, faults=faults)
    await store.batch_write(1, [])
    faults.hold()
    first = asyncio.create_task(store.append(Changes().take(1)))
    await _until(faults.holding.is_set)
    second = asyncio.create_task(store.append(Changes().take(1)))
    await _until(lambda: len(store._pending) == 1)
    await store.close()
    done, _ = await asyncio.wait([first, second], timeout=10)
    assert done == {first, second}
    assert first.cancelled() or isinstance(first.exception(), asyncio.CancelledError)
    assert second.cancelled()


async def test_a_file_only_readable_is_refused_at_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file this host may not open for writing (EACCES: made by root, root_squash) is
    NotWritable at the start check, in either role."""
    path = make(tmp_path, 40)
    real_open = os.open

    def no_write(p: str, flags: int, *a: int) -> int:
        if p == path and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", p)
        return real_open(p, flags, *a)

    monkeypatch.setattr(os, "open", no_write)
    store = TakeoverStore(path, terminals=6, record_size=R, host_name="b")
    try:
        with pytest.raises(NotWritable):
            await store.check()
    finally:
        await store.close()


def test_a_batch_write_refused_over_another_pairs_header_stops_the_ring_too(tmp_path: Path) -> None:
    """After a batch write refused with ForeignWriter (another pair's header on the file), no
    ring record is written either (NoBatchWritten) until a batch write succeeds; the header
    written carries the writer's pair tag."""
    path = make(tmp_path, 40)
    with TakeoverWriter(path, terminals=6, host_name="host-a", pair_tag=0x1111) as ours:
        ours.batch_write(1, [])
        assert read_header(path).pair_tag == 0x1111
        _put_header(path, generation=2, pair_tag=0x2222, writer_host="host-x")  # another pair's batch write
        with pytest.raises(ForeignWriter):
            ours.batch_write(3, [], peer="host-b")
        with pytest.raises(NoBatchWritten):
            ours.append_group(Changes().take(1))
    assert read_header(path).pair_tag == 0x2222


async def test_a_batch_write_writes_the_entries_as_they_were_when_it_was_called(tmp_path: Path, faults: Faults) -> None:
    """The store snapshots a batch's entries: a list the caller changes while the write waits
    for the storage does not change what is written (later changes go to the ring)."""
    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, host_name="a", faults=faults, pair_tag=0x4242)
    try:
        await store.batch_write(1, [])
        assert read_header(path).pair_tag == 0x4242
        linked = Changes().take(4)
        state = list(linked)
        faults.hold()
        task = asyncio.create_task(store.batch_write(2, linked))
        await _until(faults.holding.is_set)
        linked.append(SessionEntry("LATE", {}, True))
        faults.release()
        await task
        assert batch_read(path, expected_startup_id=2).entries == state
    finally:
        faults.release()
        await store.close()


async def test_a_ring_write_owing_a_failed_group_gets_the_time_for_its_records_too(
    tmp_path: Path, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ring group's deadline grows with the records it writes, the failed group's it owes
    included: on storage that is slow but working, a group behind 10 owed records is not taken
    for a hung one."""
    path = make(tmp_path, 80)
    store = TakeoverStore(path, terminals=6, record_size=R, host_name="a", timeout=0.05, faults=faults)
    try:
        await store.batch_write(1, [])
        fail_next_sync(monkeypatch)
        with pytest.raises(OSError):
            await store.append(Changes().take(10 * E))  # 10 records, owed
        monkeypatch.setattr(store_mod, "bulk_seconds", lambda n: n / R * 0.2)  # 0.2 s a record
        faults.ops = frozenset({"ring write"})
        faults.delay = 1.0  # more than one record's time, well under eleven's
        assert await store.append(Changes().take(1)) == (11, 11)
    finally:
        faults.release()
        await store.close()
