"""Tests from a mutation audit of hsb/cp/journal/store.py and writer.py: each pins a behaviour
that a single-point change of one of those modules broke while every other journal test still
passed (docs/cp-journal.md: group commit and group records, segments closed, allocated whole
and dropped once settled, lazy records, idle rotation, carrying forward, deletions)."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hsb.cp.journal import completion, store
from hsb.cp.journal.format import HEADER, encode
from hsb.cp.journal.generation import Generations
from hsb.cp.journal.recovery import segment_name
from hsb.cp.journal.store import Journal
from tests.support.journal import durable, records
from tests.support.procs import until
from tests.test_cp_journal_io import count_thread_calls

pytestmark = pytest.mark.timeout(60)


def _written(path: Path) -> list[list[Any]]:
    """The records of one segment file as written: one list per record on disk (a group
    record's records, or a record alone), up to the zeros of the room not yet written."""
    buf = path.read_bytes()
    out: list[list[Any]] = []
    off = 0
    while off + HEADER.size <= len(buf):
        _magic, n, _crc = HEADER.unpack_from(buf, off)
        if n == 0 and buf[off : off + HEADER.size] == bytes(HEADER.size):
            break
        rec = msgpack.unpackb(buf[off + HEADER.size : off + HEADER.size + n], raw=False, strict_map_key=False)
        out.append(rec[1:] if rec and rec[0] == "g" else [rec])
        off += HEADER.size + n
    return out


def _segment(d: Path, n: int, gen: int) -> Path:
    return d / segment_name(n, gen)


def _journal(d: Path, **kw: Any) -> Journal:
    gen = Generations(d).take()
    j = Journal(d, generation=gen, **kw)
    j.open(1, [], [])
    return j


async def _all_durable(j: Journal, payloads: list[list[Any]]) -> None:
    """Append every payload in one turn of the loop (one flush) and wait until all are durable."""
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[None]] = []
    for p in payloads:
        fut: asyncio.Future[None] = loop.create_future()
        j.append(p, functools.partial(fut.set_result, None))
        futs.append(fut)
    await asyncio.wait_for(asyncio.gather(*futs), 10)


# --- store.py: group records --------------------------------------------------------------------


async def test_a_flush_past_group_max_records_is_split_into_groups_of_at_most_that_many(tmp_path: Path, monkeypatch: Any) -> None:
    """A flush of more records than GROUP_MAX (here 3) goes as several group records, each of
    at most GROUP_MAX records, in order: 7 records as 3 + 3 + 1."""
    monkeypatch.setattr(store, "GROUP_MAX", 3)
    j = _journal(tmp_path)  # (io_uring where the kernel runs it: such a flush goes through the thread)
    try:
        await _all_durable(j, [["a", "T1", i, "x"] for i in range(1, 8)])
        groups = _written(_segment(tmp_path, 1, j.gen))[1:]  # (after the snapshot's group)
        assert [len(g) for g in groups] == [3, 3, 1], groups
        assert [r[2] for g in groups for r in g] == list(range(1, 8))
    finally:
        j.close()


async def test_a_flush_past_group_bytes_is_split_so_no_group_holds_more_than_that(tmp_path: Path, monkeypatch: Any) -> None:
    """A group record holds about GROUP_BYTES (here 300) of records at most: a record that would
    take the group past it starts the next one. Records of ~110 bytes go two by two."""
    monkeypatch.setattr(store, "GROUP_BYTES", 300)
    j = _journal(tmp_path, io="thread")
    try:
        payloads = [["a", "T1", i, "x" * 100] for i in range(1, 8)]
        size = len(msgpack.packb(payloads[0], use_bin_type=True))
        assert 2 * size <= 300 < 3 * size
        await _all_durable(j, payloads)
        groups = _written(_segment(tmp_path, 1, j.gen))[1:]
        assert [len(g) for g in groups] == [2, 2, 2, 1], groups
        assert [r[2] for g in groups for r in g] == list(range(1, 8))
    finally:
        j.close()


# --- store.py: segments -------------------------------------------------------------------------


async def test_a_checkpoint_says_exactly_how_many_records_the_segment_before_closed_with(tmp_path: Path) -> None:
    """A new segment's checkpoint names the segment before it and how many records that one holds
    (its checkpoint, the snapshot's `se`, every record after): recovery takes a segment that ends
    with fewer for one whose end was lost."""
    j = _journal(tmp_path, segment_bytes=2048, io="thread")
    try:
        i = 0
        while j.seg == 1:
            i += 1
            await durable(j, ["a", "T1", i, "x" * 50])
        await durable(j, ["a", "T1", i + 1, "in the next segment"])
        first = [r for g in _written(_segment(tmp_path, 1, j.gen)) for r in g]
        ck = _written(_segment(tmp_path, 2, j.gen))[0][0]
        assert ck[0] == "ck" and ck[5]["closed"] == [1, len(first)], (ck[5].get("closed"), len(first))
        assert len(first) == i + 2  # (its checkpoint, "se", the messages)
    finally:
        j.close()


async def test_a_segment_closes_once_its_own_records_reach_segment_bytes(tmp_path: Path) -> None:
    """A segment is closed as soon as its records (its checkpoint not counted) come to
    `segment_bytes`: the record that reaches it is the segment's last, the next goes to a new one."""
    rec = ["a", "T1", 0, "x" * 40]
    each, se = len(encode(rec)), len(encode(["se"]))
    j = _journal(tmp_path, segment_bytes=se + 5 * each, io="thread")
    try:
        segs = [j.append(["a", "T1", i, "x" * 40]) for i in range(1, 7)]
        assert segs == [1, 1, 1, 1, 1, 2], segs
        await j.drain()
    finally:
        j.close()


async def test_a_new_segment_is_allocated_whole_so_its_group_commits_never_grow_the_file(tmp_path: Path) -> None:
    """A segment's file is allocated when it is created to where it closes: `segment_bytes` or
    four times its checkpoint, whichever is more, plus its checkpoint and room for a last group.
    Filled until it closes under a large checkpoint (~100 KiB), the file never changes size."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096, io="thread")
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {f"T{i:06d}": i for i in range(8000)}, {}]
    j.open(1, [], [])
    try:
        path = _segment(tmp_path, 1, gen)
        allocated = path.stat().st_size
        if allocated <= j.ck_sizes[1]:
            pytest.skip("this file system does not allocate (fallocate)")
        i = 0
        while j.seg == 1:
            i += 1
            j.append(["a", "T1", i, "x" * 1000])
            if i % 50 == 0:
                await j.drain()
                assert path.stat().st_size == allocated
        await j.drain()
        assert path.stat().st_size == allocated, (allocated, path.stat().st_size)
        assert len(path.read_bytes().rstrip(b"\0")) > 4 * j.ck_sizes[2]  # (it did fill to four checkpoints)
    finally:
        j.close()


async def test_a_takeover_marks_its_snapshot_durable_before_it_serves(tmp_path: Path) -> None:
    """Once its snapshot is written and checked, the CP creates `snap-N`: from then on damage in
    that first segment is damage, never an unfinished generation."""
    from hsb.cp.journal.generation import snap_name

    j = _journal(tmp_path)
    try:
        assert (tmp_path / snap_name(j.gen)).exists()
    finally:
        j.close()


async def test_a_cp_superseded_while_it_wrote_its_snapshot_deletes_nothing(tmp_path: Path) -> None:
    """A newer CP took the next generation while this one wrote its snapshot: `open` stops it
    (Superseded) before anything of the earlier generations is deleted, since the newer CP may be
    reading them."""
    from hsb.cp.journal.generation import Superseded
    from tests.support.journal import write_segment

    old = write_segment(tmp_path, 1, [["ck", 1, "host-a", 0, {}, {}], ["a", "T1", 1, "held"]])
    gens = Generations(tmp_path)
    gen = gens.take()
    j = Journal(tmp_path, generation=gen, io="thread")
    gens.take()  # the newer CP
    try:
        with pytest.raises(Superseded):
            j.open(2, [["a", "T1", 1, "held"]], [old])
        assert old.exists()
    finally:
        j.close()


# --- store.py: idle rotation --------------------------------------------------------------------


async def _fill_settled(j: Journal, tag: str) -> None:
    """Records past IDLE_ROTATE_BYTES in the current segment, none of them live, all durable."""
    for i in range(1, 1 + store.IDLE_ROTATE_BYTES // 100 + 10):
        j.append(["a", tag, i, "x" * 100])
    await j.drain()


async def test_an_idle_journal_with_nothing_new_is_not_rotated(tmp_path: Path) -> None:
    """A journal that holds only its checkpoint (a quiet CP, ticking) is not closed and started
    again at every tick: no new segment, no group commit."""
    j = _journal(tmp_path, io="thread")
    try:
        syncs = j.syncs
        for _ in range(3):
            j.maybe_rotate_idle()
            await j.drain()
        assert j.seg == 1 and j.syncs == syncs
        assert len(list(tmp_path.glob("seg-*.hsbj"))) == 1
    finally:
        j.close()


async def test_an_idle_segment_holding_a_live_record_is_not_rotated(tmp_path: Path) -> None:
    """Idle rotation closes a *settled* current segment only: one with a message still held stays
    the current segment however large it is (closing it would free nothing)."""
    j = _journal(tmp_path, io="thread")
    try:
        j.pin(j.append(["a", "T0", 1, "held"]))
        await _fill_settled(j, "T1")
        j.maybe_rotate_idle()
        await j.drain()
        assert j.seg == 1 and len(list(tmp_path.glob("seg-*.hsbj"))) == 1
    finally:
        j.close()


async def test_a_segment_with_records_pending_is_not_idle(tmp_path: Path, monkeypatch: Any) -> None:
    """Idle rotation waits until nothing is pending: a settled segment with a lazy record not yet
    written is left as the current one; once that is durable the next tick closes it."""
    monkeypatch.setattr(store, "LAZY_S", 60.0)
    j = _journal(tmp_path, io="thread")
    try:
        await _fill_settled(j, "T1")
        j.append(["c", "T1", 1], lazy=True)
        j.maybe_rotate_idle()
        assert j.seg == 1
        await j.drain()
        j.maybe_rotate_idle()
        await j.drain()
        assert j.seg == 2
        await until(lambda: not _segment(tmp_path, 1, j.gen).exists(), 5, what="the settled segment deleted")
    finally:
        j.close()


# --- store.py: flushing -------------------------------------------------------------------------


async def test_a_lazy_record_appended_while_an_urgent_group_is_out_waits_for_company(tmp_path: Path, monkeypatch: Any) -> None:
    """A lazy record appended while a message's group is being written does not start a group of
    its own the moment that group is back: it waits (for the next urgent record, or LAZY_S, here a
    minute); the next message takes it along."""
    import threading

    monkeypatch.setattr(store, "LAZY_S", 60.0)
    monkeypatch.setattr(completion, "LAZY_S", 60.0)
    j = _journal(tmp_path, io="thread")
    go = threading.Event()
    real = j._write

    def held(batch: list[tuple[int, bytes]]) -> float:
        assert go.wait(10)
        return real(batch)

    monkeypatch.setattr(j, "_write", held)
    calls = count_thread_calls(j, monkeypatch)
    try:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        j.append(["a", "T1", 1, "m"], lambda: fut.set_result(None))
        await until(lambda: calls[0] == 1, 5, what="the group out")
        j.append(["r", "T1", 1, "reply"], lazy=True)
        go.set()
        await asyncio.wait_for(fut, 5)
        assert calls[0] == 1 and j.pending == 1  # the reply waits
        await durable(j, ["a", "T1", 2, "m"])
        assert calls[0] == 2 and j.pending == 0
        assert [r[0] for r in records(tmp_path)][-3:] == ["a", "r", "a"]
    finally:
        go.set()
        j.close()


async def test_drain_waits_out_a_failed_groups_backoff(tmp_path: Path, monkeypatch: Any) -> None:
    """A clean stop's drain finds the last group failed (EIO) and waiting for its retry: it waits
    for the retry (within its timeout) and reports everything written."""
    monkeypatch.setattr(completion, "RETRY_S", (0.05,))
    j = _journal(tmp_path, io="thread")
    real = j._write
    fail = [True]

    def flaky(batch: list[tuple[int, bytes]]) -> float:
        if fail[0]:
            fail[0] = False
            raise OSError(errno.EIO, "injected")
        return real(batch)

    monkeypatch.setattr(j, "_write", flaky)
    try:
        j.append(["a", "T1", 1, "m"])
        await until(lambda: j.state == "failing", 5, what="the write failed")
        assert await j.drain(timeout=10)
        assert j.pending == 0 and ["a", "T1", 1, "m"] in records(tmp_path)
    finally:
        j.close()


async def test_a_kept_reply_in_the_takeover_snapshot_keeps_its_segment_until_it_settles(tmp_path: Path) -> None:
    """The snapshot's kept replies (`r`) pin the first segment as its held messages do: it stays
    while the reply is kept, however many settled segments follow, and goes once it settles."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048, io="thread")
    j.open(1, [["r", "T1", 1, "kept"], ["c", "T1", 0]], [])
    try:
        i = 0
        while j.seg < 3:
            i += 1
            j.append(["a", "T2", i, "x" * 50])
        await j.drain()
        j.maybe_rotate_idle()  # (drops the settled oldest segments, if any)
        await durable(j, ["a", "T2", i + 1, "after"])  # (a deletion goes with the group before it)
        assert _segment(tmp_path, 1, gen).exists()
        j.unpin(1)  # the reply is confirmed
        await until(lambda: not _segment(tmp_path, 1, gen).exists(), 5, what="the first segment deleted")
    finally:
        j.close()


# --- writer.py ----------------------------------------------------------------------------------


async def _two_settled_segments(j: Journal) -> None:
    """Segments 1 and 2 closed and settled at once (a message held in 1 settles): both are to be
    deleted with the next group, oldest first."""
    first = j.append(["a", "T0", 1, "held"])
    j.pin(first)
    i = 0
    while j.seg < 3:
        i += 1
        j.append(["a", "T1", i, "x" * 50])
    await j.drain()
    j.unpin(first)


async def test_each_segment_deletion_is_made_durable_before_the_next_one(tmp_path: Path, monkeypatch: Any) -> None:
    """Settled segments are deleted oldest first, and each deletion is made durable (the directory
    synced) before the next file goes: a crash never leaves a gap between two segments."""
    from hsb.cp.journal import writer

    j = _journal(tmp_path, segment_bytes=2048, io="thread")
    events: list[str] = []
    real_unlink, real_sync = os.unlink, writer.fsync_dir  # type: ignore[attr-defined]  # (imported there: patched there below)

    def unlink(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith(".hsbj"):
            events.append(f"unlink {Path(path).name}")
        real_unlink(path, *a, **kw)

    def fsync_dir(path: Any) -> None:
        events.append("sync")
        real_sync(path)

    try:
        await _two_settled_segments(j)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(writer, "fsync_dir", fsync_dir)
        await durable(j, ["a", "T2", 1, "with the deletions"])
        await until(lambda: len(events) >= 4, 5, what="both deletions")
        assert events == [f"unlink {segment_name(1, j.gen)}", "sync", f"unlink {segment_name(2, j.gen)}", "sync"], events
    finally:
        j.close()


async def test_a_settled_segment_already_gone_does_not_hold_back_the_next_deletion(tmp_path: Path) -> None:
    """A settled segment whose file is already gone (removed by hand, say) counts as deleted: the
    next settled segment is deleted after it, with no failure said or retried."""
    j = _journal(tmp_path, segment_bytes=2048, io="thread")
    try:
        await _two_settled_segments(j)
        _segment(tmp_path, 1, j.gen).unlink()
        await durable(j, ["a", "T2", 1, "with the deletions"])
        await until(lambda: not _segment(tmp_path, 2, j.gen).exists(), 5, what="segment 2 deleted")
        assert j.state == "ok" and not j._deletions_held
    finally:
        j.close()


def _open_segment_fds(d: Path) -> list[str]:
    """The names of the segment files this process holds open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(d)) and target.endswith(".hsbj"):
            out.append(Path(target).name)
    return out


async def test_a_closed_segments_file_is_closed_once_the_next_one_is_written(tmp_path: Path) -> None:
    """The writer keeps only the current segment's file open: segments closed (never written
    again) have their descriptors closed, so a long-running CP does not collect one per segment."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048, io="thread")
    j.open(1, [["a", "T0", 1, "held"]], [])  # (pins the first segment: nothing is deleted)
    try:
        i = 0
        while j.seg < 5:
            i += 1
            await durable(j, ["a", "T1", i, "x" * 50])
        assert len(list(tmp_path.glob("seg-*.hsbj"))) == 5
        assert _open_segment_fds(tmp_path) == [segment_name(5, gen)]
    finally:
        j.close()


async def test_a_new_segments_name_is_synced_before_anything_in_it_is_acknowledged(tmp_path: Path, monkeypatch: Any) -> None:
    """The first group into a new segment creates its file; the directory is synced (the name
    durable) before that group's acknowledgements go."""
    from hsb.cp.journal import writer

    j = _journal(tmp_path, segment_bytes=2048)
    events: list[str] = []
    real_sync = writer.fsync_dir  # type: ignore[attr-defined]  # (imported there: patched there below)

    def fsync_dir(path: Any) -> None:
        events.append("sync" if _segment(tmp_path, 2, j.gen).exists() else "sync before")
        real_sync(path)

    monkeypatch.setattr(writer, "fsync_dir", fsync_dir)
    try:
        j.pin(j.append(["a", "T0", 1, "held"]))  # (nothing is deleted)
        await j.drain()
        i = 0
        while j.seg < 2:  # (no group starts meanwhile: the loop does not turn)
            i += 1
            j.append(["a", "T1", i, "x" * 50])
        assert not _segment(tmp_path, 2, j.gen).exists()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acked() -> None:
            events.append("ack")
            fut.set_result(None)

        j.append(["a", "T1", i + 1, "in segment 2"], acked)
        await asyncio.wait_for(fut, 5)
        assert "sync" in events and events.index("sync") < events.index("ack"), events
    finally:
        j.close()


async def test_each_group_record_of_a_flush_is_synced_before_the_next_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    """A flush of several group records (here GROUP_MAX 2, 5 records: three) writes and syncs
    each before it writes the next: a crash during writeback can tear only the last."""
    monkeypatch.setattr(store, "GROUP_MAX", 2)
    j = _journal(tmp_path, io="thread")
    events: list[str] = []
    real_pwrite, real_sync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: Any, off: int) -> int:
        if not events or events[-1] != "write":  # (one record may take several calls)
            events.append("write")
        return real_pwrite(fd, data, off)

    def fdatasync(fd: int) -> None:
        events.append("sync")
        real_sync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    try:
        await _all_durable(j, [["a", "T1", i, "x"] for i in range(1, 6)])
        assert events == ["write", "sync"] * 3, events
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2, 3, 4, 5]
    finally:
        j.close()


async def test_a_segment_whose_creation_failed_is_opened_once_when_written_again(tmp_path: Path, monkeypatch: Any) -> None:
    """A new segment's file opened but not set up (its allocation failed: EIO) is closed before
    the group is tried again: after the retry the process holds that file open once."""
    from hsb.cp.journal import writer

    monkeypatch.setattr(completion, "RETRY_S", (0.01,))
    j = _journal(tmp_path, segment_bytes=2048, io="thread")
    real = writer.preallocate  # type: ignore[attr-defined]  # (imported there: patched there below)
    fail = [True]

    def preallocate(fd: int, size: int) -> bool:
        if fail[0]:
            fail[0] = False
            raise OSError(errno.EIO, "injected")
        return real(fd, size)

    try:
        j.pin(j.append(["a", "T0", 1, "held"]))
        await j.drain()
        i = 0
        while j.seg < 2:  # (no group starts meanwhile: the loop does not turn)
            i += 1
            j.append(["a", "T1", i, "x" * 50])
        monkeypatch.setattr(writer, "preallocate", preallocate)
        await durable(j, ["a", "T1", i + 1, "in segment 2"])
        assert not fail[0] and j.state == "ok"
        assert sorted(_open_segment_fds(tmp_path)) == [segment_name(2, j.gen)]
    finally:
        j.close()


# --- store.py: carrying forward -----------------------------------------------------------------


async def _layout(j: Journal, live: list[int], ids: list[int]) -> None:
    """Close one segment per entry of `live`, with that many of its messages held (pinned). With
    `_small` segments each holds 12 records (its checkpoint; the first one's `se`)."""
    for want in live:
        seg, pinned = j.seg, 0
        while j.seg == seg:
            ids[0] += 1
            s = j.append(["a", "T1", ids[0], "x" * 40])
            if pinned < want:
                j.pin(s)
                pinned += 1
        assert pinned == want
    await j.drain()


def _small(d: Path) -> Journal:
    """Segments that close after ten messages of `_layout`'s (the first, after its `se` and ten)."""
    each, se = len(encode(["a", "T1", 0, "x" * 40])), len(encode(["se"]))
    return _journal(d, segment_bytes=se + 10 * each, io="thread")


async def test_an_old_segment_a_quarter_live_is_carried_forward_only_past_keep_segments(tmp_path: Path) -> None:
    """The oldest segment with a quarter of its records live (3 of 12) is carried forward only
    once more than KEEP_SEGMENTS (4) segments exist; one more live record than a quarter, and it
    is left (the journal as a whole mostly live)."""
    j = _small(tmp_path)
    ids = [0]
    try:
        await _layout(j, [3, 11, 11], ids)
        assert [j.records[s] for s in j.segments] == [12, 12, 12, 1] and len(j.segments) == store.KEEP_SEGMENTS
        assert j.to_clean() == set()
        await _layout(j, [11], ids)
        assert j.to_clean() == {1}
        j.pin(1)  # a fourth of its messages held
        assert j.to_clean() == set()
    finally:
        j.close()


async def test_a_mostly_settled_journal_carries_its_oldest_segments_forward_however_live(tmp_path: Path) -> None:
    """A journal whose live records are a quarter or fewer of all it holds (here 19 of 76)
    carries forward even old segments mostly live, skipping settled ones among them (they go
    with the ones before), at most `most` a call; one live record more, and none is carried."""
    j = _small(tmp_path)
    ids = [0]
    try:
        await _layout(j, [10, 0, 9, 0, 0, 0], ids)
        for _ in range(3):
            ids[0] += 1
            j.append(["a", "T1", ids[0], "x" * 40])
        await j.drain()
        assert sum(j.records.values()) == 76 and sum(j.live.values()) == 19
        assert j.to_clean() == {1, 3}
        assert j.to_clean(most=1) == {1}
        j.pin(j.seg)
        assert j.to_clean() == set()
    finally:
        j.close()


async def test_a_segment_settled_with_a_message_appended_goes_with_that_messages_group(tmp_path: Path) -> None:
    """The oldest segment settles in the same turn as a message is appended: the segment is
    deleted with that message's group commit (through the writer thread, even where groups go
    through io_uring), before the message is acknowledged."""
    j = _journal(tmp_path, segment_bytes=2048)
    try:
        await _two_settled_segments(j)  # (segments 1 and 2 settle; nothing started yet)
        await durable(j, ["a", "T2", 1, "with the deletions"])
        assert not _segment(tmp_path, 1, j.gen).exists() and not _segment(tmp_path, 2, j.gen).exists()
        assert _segment(tmp_path, 3, j.gen).exists()
    finally:
        j.close()


async def test_a_segment_whose_name_failed_to_sync_gets_nothing_acknowledged_through_the_ring_before_it_is_synced(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """An idle rotation's group (the new segment's checkpoint alone, no deletion with it) fails at
    the directory sync (EIO); its retry, a single group record for a file already open, would fit
    io_uring, but the name is not durable yet: it goes through the thread, which syncs the
    directory before anything in that segment is acknowledged."""
    from hsb.cp.journal import writer

    monkeypatch.setattr(completion, "RETRY_S", (0.01,))
    j = _journal(tmp_path, segment_bytes=2 * store.IDLE_ROTATE_BYTES)
    real = writer.fsync_dir  # type: ignore[attr-defined]  # (imported there: patched there below)
    events: list[str] = []

    def flaky(path: Any) -> None:
        if not events:
            events.append("failed")
            raise OSError(errno.EIO, "injected: directory fsync failed")
        real(path)
        events.append("synced")

    try:
        j.pin(j.append(["a", "T0", 1, "held"]))  # (segment 1 stays: no deletion goes with the rotation)
        i = 0
        while j.seg < 2:
            i += 1
            j.append(["a", "T1", i, "x" * 100])
        await j.drain()
        await _fill_settled(j, "T2")
        assert j.seg == 2
        monkeypatch.setattr(writer, "fsync_dir", flaky)
        j.maybe_rotate_idle()
        assert j.seg == 3
        await until(lambda: events and j.state == "ok" and j.pending == 0, 5, what="the rotation's group written again")
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        j.append(["a", "T1", 0, "in segment 3"], lambda: fut.set_result(list(events)))
        seen = await asyncio.wait_for(fut, 5)
        assert seen[:2] == ["failed", "synced"], seen
    finally:
        j.close()


async def test_a_refused_deletion_is_tried_again_before_the_segments_after_it(tmp_path: Path, monkeypatch: Any) -> None:
    """Two settled segments go in one group; the storage refuses the first deletion (EIO) once:
    after the backoff that one is deleted again first, then the second. A newer segment never
    goes while an older one stays (recovery takes such a gap for damage)."""
    monkeypatch.setattr(completion, "RETRY_S", (0.01,))
    j = _journal(tmp_path, segment_bytes=2048, io="thread")
    real = os.unlink
    done: list[str] = []
    refuse = [1]

    def unlink(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith(".hsbj"):
            if refuse[0] > 0:
                refuse[0] -= 1
                raise OSError(errno.EIO, "injected: unlink failed")
            done.append(Path(path).name)
        real(path, *a, **kw)

    try:
        await _two_settled_segments(j)
        monkeypatch.setattr(os, "unlink", unlink)
        await durable(j, ["a", "T2", 1, "with the deletions"])
        await until(lambda: len(done) >= 2, 5, what="both segments deleted")
        assert done == [segment_name(1, j.gen), segment_name(2, j.gen)]
    finally:
        j.close()
