"""The CP journal across a crash at any moment of its writes, and its recovery racing a CP that
is still deleting segments, in-process on real files (SPEC §5.7, docs/cp-journal.md):

- a crash during a group commit split into several group records (a flush past 4,096 records
  or about 1 MiB, a large takeover snapshot) leaves at most its last group record torn, which
  recovery drops: never a torn group with a whole one after it, which would read as damage and
  stop every later start although nothing of that flush was acknowledged;
- a segment that vanishes while recovery reads the journal makes it read everything again;
- a failing disk is tried again at the backoff's pace, not at the rate messages arrive;
- what the journal counts, and where a record that makes no sense is reported.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsb import uring
from hsb.cp.journal.format import GROUP_MAX, JournalDamaged, encode, group, packer, scan
from hsb.cp.journal.generation import Generations
from hsb.cp.journal.recovery import JournalUnsettled, lineage, recover, segment_name
from hsb.cp.journal.store import Journal
from tests.support.journal import durable, open_journal, records

WHY = uring.available()
needs_ring = pytest.mark.skipif(WHY is not None, reason=f"this kernel does not run io_uring: {WHY}")
PAGE = 4096


class Crashes:
    """Takes, at every moment a crash could leave the journal directory in a state of its own,
    a copy of that state (an image): just before each `fdatasync` of a segment (and for a group
    commit through io_uring, in place of its chain's sync), the bytes written since that file's
    last sync may reach the disk in any order. Each image is the worst case the audit found: a
    page of the oldest unsynced write lost (zeroed), everything written after it landed."""

    def __init__(self, d: Path, images: Path, monkeypatch: Any) -> None:
        self.d = d
        self.images = images
        self.taken: list[Path] = []
        self.unsynced: dict[str, list[tuple[int, int]]] = {}  # file -> [(offset, end)] written since its last sync
        self.before_image: Callable[[], None] = lambda: None
        real_pwrite, real_sync = os.pwrite, os.fdatasync

        def pwrite(fd: int, data: Any, off: int) -> int:
            n = real_pwrite(fd, data, off)
            path = self._path(fd)
            if path is not None:
                self.unsynced.setdefault(path, []).append((off, off + n))
            return n

        def fdatasync(fd: int) -> None:
            path = self._path(fd)
            if path is not None and self.unsynced.get(path):
                self.image(path, self.unsynced[path][0])
            real_sync(fd)
            if path is not None:
                self.unsynced.pop(path, None)

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _path(self, fd: int) -> str | None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return path if Path(path).parent == self.d.resolve() else None

    def through(self, j: Journal, monkeypatch: Any) -> None:
        """Group commits through io_uring too: each chain's write is imaged as unsynced."""
        ring = j._ring
        assert ring is not None
        real = ring.write_sync_check

        def chain(fd: int, data: bytes, off: int, paths: Any, done: Any) -> None:
            path = self._path(fd)

            def completed(res: list[int]) -> None:
                if path is not None and res[0] == len(data):
                    self.image(path, (off, off + len(data)))  # as if the crash came before its sync completed
                done(res)

            real(fd, data, off, paths, completed)

        monkeypatch.setattr(ring, "write_sync_check", chain)

    def image(self, path: str, lost: tuple[int, int]) -> None:
        """A copy of the directory as the crash leaves it: in `path`, a page of the write `lost`
        (the page after the one it starts in, else its second half) is zeroed."""
        self.before_image()
        start, end = lost
        page = (start // PAGE + 1) * PAGE
        hole = (page, min(page + PAGE, end)) if page < end else (start + (end - start) // 2, end)
        img = self.images / f"crash-{len(self.taken):03d}"
        shutil.copytree(self.d, img)
        with open(img / Path(path).name, "r+b") as fh:
            fh.seek(hole[0])
            fh.write(b"\0" * (hole[1] - hole[0]))
        self.taken.append(img)


def held_ids(d: Path) -> list[int]:
    return sorted(recover(d).held.get("T1", {}))


@pytest.mark.parametrize("io", ["thread", pytest.param("io_uring", marks=needs_ring)])
async def test_a_crash_during_a_group_commit_split_in_groups_tears_only_its_last_group(tmp_path: Path, io: str, monkeypatch: Any) -> None:
    """One flush of more than GROUP_MAX records is written as two group records. A crash during
    it, with the disk's writeback landing pages out of order, must leave at most the last group
    record torn: recovery then drops it and starts, with everything acknowledged before. (Both
    group records in one write and one sync could leave the first one torn and the second whole,
    which recovery must take for damage: every later start would stop.)"""
    d = tmp_path / "j"
    d.mkdir()
    j = open_journal(d, io=io)
    try:
        crashes = Crashes(d, tmp_path, monkeypatch)
        if io == "io_uring":
            crashes.through(j, monkeypatch)
        acked: list[int] = []
        for i in range(1, 11):  # acknowledged one by one, each a group commit of its own
            await durable(j, ["a", "T1", i, "x"])
            acked.append(i)
        big = range(11, 11 + GROUP_MAX + 100)
        images: list[tuple[Path, list[int]]] = []
        crashes.before_image = lambda: images.append((tmp_path / f"crash-{len(crashes.taken):03d}", list(acked)))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        for i in big:  # in one turn of the loop: one flush, split in two group records
            j.append(["a", "T1", i, "x"], (lambda: done.set_result(None)) if i == big[-1] else None)
        await asyncio.wait_for(done, 30)
        acked += big
        assert held_ids(d) == acked
    finally:
        j.close()
    for img, was in images:
        try:
            got = held_ids(img)
        except JournalDamaged as exc:
            pytest.fail(f"a crash during a group commit left a journal that does not start: {exc}")
        assert got[: len(was)] == was, f"{img.name}: acknowledged records lost"
        assert got == list(range(1, len(got) + 1)), f"{img.name}: what is restored of the flush is not a prefix of it"
    during = [img for img, was in images if was[-1] == 10]
    assert len(during) >= 2, f"{len(during)} crash points during the large flush: it was not written group by group"
    assert any(held_ids(img) == list(range(1, 11)) for img in during), "no crash point tore the flush's first group"


async def test_a_crash_while_a_large_takeover_snapshot_is_written_falls_back_to_the_generation_before(tmp_path: Path, monkeypatch: Any) -> None:
    """The takeover snapshot of more than GROUP_MAX records is written as several group records.
    A crash during its writeback, pages out of order, leaves a snapshot cut short (no `se`): the
    next start takes the intact generation before it, rather than stopping as if damaged."""
    d = tmp_path / "j"
    d.mkdir()
    j = open_journal(d, io="thread")
    n = GROUP_MAX + 100
    try:
        for i in range(1, n + 1):
            j.append(["a", "T1", i, b"m" * 20])
        assert await j.drain(10.0)
    finally:
        j.close()
    r = recover(d)
    assert r.head_generation == 1 and sorted(r.held["T1"]) == list(range(1, n + 1))
    gen = Generations(d).take()
    j2 = Journal(d, generation=gen, io="thread")
    first = r.highest_segment + 1
    j2.checkpoint = lambda: ["ck", 0, None, gen, {"T1": n}, {"first": first}]
    crashes = Crashes(d, tmp_path, monkeypatch)
    try:
        j2.open(first, [["a", "T1", i, h.data] for i, h in r.held["T1"].items()], [*r.garbage, *r.paths])
    finally:
        j2.close()
        monkeypatch.undo()
    fell_back = 0
    for img in crashes.taken:
        try:
            head, _, _ = lineage(img)
            got = recover(img)
        except JournalDamaged as exc:
            pytest.fail(f"a crash while the snapshot was written left a journal that does not start: {exc}")
        assert sorted(got.held["T1"]) == list(range(1, n + 1)), img.name
        fell_back += head == 1
    assert len(crashes.taken) >= 2, f"{len(crashes.taken)} crash points while the snapshot was written: not group by group"
    assert fell_back >= 1, "no crash point left the snapshot torn"


def _segment(d: Path, n: int, recs: list[list[Any]], gen: int = 0) -> Path:
    p = d / segment_name(n, gen)
    p.write_bytes(b"".join(encode(r) for r in recs))
    return p


def test_a_segment_deleted_while_the_journal_is_read_makes_it_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    """A superseded CP, past its last generation check, deletes segments 5 and 6 (settled) just
    after the new CP read 5: 5 held T1's message 100, 6 its settling `d`. Restoring from 5 alone
    would deliver it again (and, to a terminal that does not resume, reply twice); the new CP
    lists and reads again instead, and finds only 7, whose checkpoint is all there is."""
    from hsb.cp.journal import recovery

    Generations(tmp_path).take()
    ck = ["ck", 1, "host-a", 1, {"T1": 99}, {"first": 3}]  # the snapshot segment 3 was settled and deleted
    p5 = _segment(tmp_path, 5, [ck, ["a", "T1", 100, b"m"]], gen=1)
    p6 = _segment(tmp_path, 6, [["ck", 1, "host-a", 1, {"T1": 100}, {"first": 3}], ["d", "T1", 100]], gen=1)
    _segment(tmp_path, 7, [["ck", 1, "host-a", 1, {"T1": 100}, {"first": 3}]], gen=1)
    listed = [False]
    real_lineage, real_read = recovery._lineage, recovery._read

    def lineage_(d: Path) -> Any:
        out = real_lineage(d)
        listed[0] = True
        return out

    def read(path: Path) -> bytes:
        buf = real_read(path)
        if listed[0] and path == p5 and p6.exists():  # recovery has read 5: the old CP deletes 5 and 6
            p5.unlink()
            p6.unlink()
        return buf

    monkeypatch.setattr(recovery, "_lineage", lineage_)
    monkeypatch.setattr(recovery, "_read", read)
    r = recover(tmp_path)
    assert 100 not in r.held.get("T1", {}), "a message settled in a segment deleted during the read is restored as held"
    assert r.last_acked == {"T1": 100} and r.segments == [7]


def test_segments_that_keep_vanishing_stop_the_start_naming_the_directory(tmp_path: Path, monkeypatch: Any) -> None:
    from hsb.cp.journal import recovery

    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    Generations(tmp_path).take()
    _segment(tmp_path, 5, [["ck", 1, "host-a", 1, {}, {"first": 3}]], gen=1)

    def read(path: Path) -> bytes:
        raise recovery._Vanished(path.name)

    monkeypatch.setattr(recovery, "_read", read)
    with pytest.raises(JournalUnsettled) as exc:
        recover(tmp_path)
    assert isinstance(exc.value, JournalDamaged)  # hsbcpd stops with it, as for damage
    assert str(tmp_path) in str(exc.value) and segment_name(5, 1) in str(exc.value)


async def test_urgent_appends_to_a_failing_disk_wait_for_the_backoff(tmp_path: Path, monkeypatch: Any) -> None:
    """EIO on every write: 100 records that callers wait on, appended within about 10 ms, are
    tried again at the backoff's pace (0.05 s, 0.1 s, ...), not once each; and once the disk
    answers again they are written and acknowledged by themselves."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    tries = [0]
    real_before = hook.before

    def before(op: str) -> None:
        if op == "journal_write":
            tries[0] += 1
        real_before(op)

    monkeypatch.setattr(hook, "before", before)
    j = open_journal(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        await durable(j, ["a", "T1", 0, "x"])
        hook.eio()
        acked: list[int] = []
        t0 = loop.time()
        tried = tries[0]
        for i in range(1, 101):
            j.append(["a", "T1", i, "x"], functools.partial(acked.append, i))
            await asyncio.sleep(0.0001)
        while j.state != "failing":  # (the first try's error back from the writer)
            assert loop.time() - t0 < 10, f"the journal {j.state}, not failing, with its storage failing"
            await asyncio.sleep(0.01)
        took = loop.time() - t0
        tried = tries[0] - tried
        assert not acked
        # the first try, and those the backoff (0.05 s, then 0.1 s, ...) allows in that time
        assert tried <= 2 + int(took / 0.05), f"{tried} write attempts for 100 appends in {took * 1000:.0f} ms: not waiting for the backoff"
        hook.error = None
        while len(acked) < 100:
            assert loop.time() - t0 < 10, f"{len(acked)} of 100 acknowledged after the disk recovered"
            await asyncio.sleep(0.01)
        assert acked == list(range(1, 101)) and j.state == "ok" and j.pending == 0
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == list(range(101))
    finally:
        hook.release()
        j.close()


async def test_a_group_durable_but_unchecked_is_counted_written_once_and_not_pending(tmp_path: Path, monkeypatch: Any) -> None:
    """The generation check after a group fails on the storage (EIO): the group is durable and is
    only checked again. It is not pending (it is written), and `records_written` counts it once."""
    j = open_journal(tmp_path, io="thread")
    try:
        await durable(j, ["a", "T1", 1, "x"])
        written = j.records_written
        failing = [True]
        real = j.gens.check

        def check(own: int) -> None:
            if failing[0]:
                raise OSError(errno.EIO, "Input/output error (a stat of the generation file)")
            real(own)

        monkeypatch.setattr(j.gens, "check", check)
        acked: list[int] = []
        j.append(["a", "T1", 2, "y"], lambda: acked.append(2))
        j.append(["a", "T1", 3, "z"], lambda: acked.append(3))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while j.state != "failing":
            assert loop.time() - t0 < 5
            await asyncio.sleep(0.005)
        assert not acked and j.pending == 0, f"{j.pending} records pending that are durable"
        assert j.records_written - written == 2
        j.append(["a", "T1", 4, "w"], lambda: acked.append(4))  # goes with the recheck
        assert j.pending == 1
        failing[0] = False
        while len(acked) < 3:
            assert loop.time() - t0 < 5
            await asyncio.sleep(0.005)
        assert acked == [2, 3, 4] and j.pending == 0 and j.state == "ok"
        assert j.records_written - written == 3, f"{j.records_written - written} records counted written for 3"
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2, 3, 4]
    finally:
        j.close()


def test_a_record_that_makes_no_sense_is_reported_at_its_file_and_offset(tmp_path: Path) -> None:
    """A record that passes its checksum but cannot be applied (a bug, or an older or newer
    writer) stops the start naming the file and the offset of the record (or of the group record
    holding it), not an offset of -1."""
    pack = packer()
    ck = encode(["ck", 1, "host-a", 0, {}])
    ok = encode(["a", "T1", 1, b"x"])
    bad_group = group([pack(["a", "T1", 2, b"y"]), pack(["a", "T1"]), pack(["a", "T1", 4, b"w"])])
    p = tmp_path / segment_name(1)
    p.write_bytes(ck + ok + bad_group)
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and exc.value.offset == len(ck) + len(ok), str(exc.value)
    assert "record 2 of the group record" in str(exc.value)
    p.write_bytes(ck + ok + encode(["zz", 1]) + bad_group)
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    # (a kind this hsbcpd does not know, its checksum whole: a newer writer's, said so;
    # tests/test_cp_journal_newer.py)
    assert exc.value.path == str(p) and exc.value.offset == len(ck) + len(ok) and "a record of kind 'zz'" in str(exc.value), str(exc.value)


async def test_a_segment_is_allocated_whole_and_its_zeros_end_its_records(tmp_path: Path) -> None:
    """A new segment's file is allocated to its room at once (hsb.fsutil.preallocate: a group
    commit's fdatasync then changes no file size), and recovery reads its records up to the
    zeros: the clean end of a segment, in any segment, never a torn tail; a bad record with a
    valid one after it in the room is still damage."""
    j = open_journal(tmp_path)
    try:
        for i in range(1, 6):
            await durable(j, ["a", "T1", i, "x" * 100])
        seg = tmp_path / segment_name(1, j.gen)
        assert seg.stat().st_size >= j._segment_room(1), "the segment was not allocated whole"
    finally:
        j.close()
    data = seg.read_bytes()
    end = len(data.rstrip(b"\0"))
    assert end < len(data) and not any(data[end:])
    r = recover(tmp_path, truncate=False)
    assert r.torn is None and sorted(r.held["T1"]) == [1, 2, 3, 4, 5]
    # a second segment after it: the first one's zeros are still just its end
    (tmp_path / segment_name(2, j.gen)).write_bytes(encode(["ck", 0, None, j.gen, {}, {}]) + encode(["a", "T1", 6, "y"]) + bytes(4096))
    r = recover(tmp_path, truncate=False)
    assert r.torn is None and sorted(r.held["T1"]) == [1, 2, 3, 4, 5, 6]
    # garbage in the room with a valid record after it: damage, named by file and offset
    bad = bytearray(data)
    bad[end + 10 : end + 20] = b"\xff" * 10
    rec = encode(["a", "T1", 7, "z"])
    bad[end + 100 : end + 100 + len(rec)] = rec
    seg.write_bytes(bytes(bad))
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path, truncate=False)
    assert exc.value.path == str(seg) and exc.value.offset == end


async def test_segment_numbers_past_eight_digits_are_recovered(tmp_path: Path) -> None:
    """Segment numbers grow for the life of the journal (16 KiB segments at a few thousand
    messages a second pass 99,999,999 in about a month). Their names grow a digit there, and
    recovery read only eight: what the newer segments held was skipped, its last_acked went
    backwards, and with the older segment settled and deleted the CP started empty at epoch 0."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096, io="thread")
    j.open(99_999_999, [], [])
    try:
        for mid in range(1, 80):
            await durable(j, ["a", "T1", mid, "x" * 100])
        assert j.seg >= 100_000_001
    finally:
        j.close()
    assert sorted(recover(tmp_path).held["T1"]) == list(range(1, 80))


def test_a_durable_snapshot_whose_segments_are_all_gone_stops_the_start(tmp_path: Path) -> None:
    """A generation whose snapshot was said durable (snap-N) always keeps a segment (its current
    one). With every one of them gone, recovery fell back to an older generation or to nothing,
    and started empty at epoch 0 without a word: damage, named."""
    gens = Generations(tmp_path)
    gen = gens.take()
    gens.mark_snapshot(gen)
    with pytest.raises(JournalDamaged, match=f"generation {gen}'s snapshot was durable but none of its segment files"):
        recover(tmp_path)


def test_the_fix_named_for_a_journal_without_segments_keeps_the_generation_the_hosts_saw(tmp_path: Path) -> None:
    """The error for a durable snapshot with no segment left told an operator who cleared the
    journal on purpose to remove its gen-* and snap-* files too: the next CP then took generation
    1, and every hsbd that had seen 5 refused it (even restarted: HOST.cp-generation), so nothing
    was served. It names the aside, which keeps them: the next CP takes a generation above 5."""
    from hsb.cp.journal.aside import set_aside

    d = tmp_path / "cp-journal"
    gens = Generations(d)
    for _ in range(5):
        gens.take()
    gens.mark_snapshot(5)
    with pytest.raises(JournalDamaged) as exc:
        recover(d)
    msg = str(exc.value)
    assert "keep its gen-* files" in msg and "remove its gen-" not in msg, msg
    assert "--set-journal-aside" in msg, msg
    set_aside(d, watch=0)  # the fix it names
    r = recover(d)
    assert r.head_generation == 0 and not r.held
    assert Generations(d).take() == 6


@pytest.mark.parametrize("first", [encode(7), encode(["ck", 1, None, 0, {}, {"first": "x"}])], ids=["not-a-list", "first-not-a-number"])
def test_a_checkpoint_that_is_no_record_is_damage_named_not_a_traceback(tmp_path: Path, first: bytes) -> None:
    """A checksummed payload where the generation's checkpoint should be, of the wrong shape (a
    bug's, or a crafted file): the start stops with the file named, not with a TypeError."""
    gens = Generations(tmp_path)
    gen = gens.take()
    (tmp_path / segment_name(1, gen)).write_bytes(first)
    with pytest.raises(JournalDamaged, match=segment_name(1, gen)):
        recover(tmp_path)


async def test_a_closed_segment_whose_last_records_read_as_zeros_stops_the_start(tmp_path: Path) -> None:
    """A segment is allocated whole, so its unwritten rest reads as zeros: a clean end. Storage
    that lost a write (or zeroed it) at the end of a segment that is not the last one made its
    last group of records read the same way, and recovery went on without them (acknowledged
    messages gone, last_acked back). The next segment's checkpoint says how many records the
    one before it closed with: fewer is damage, named."""
    from hsb.cp.journal.format import locate

    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096, io="thread")
    j.open(1, [], [])
    try:
        for mid in range(1, 150):
            j.pin(j.append(["a", "T1", mid, "x" * 100]))  # held: every segment stays
            await durable(j, ["c", "T1", 0])
        assert j.seg >= 3
    finally:
        j.close()
    assert sorted(recover(tmp_path).held["T1"]) == list(range(1, 150))  # whole: recovered, and checked
    seg2 = tmp_path / segment_name(2, gen)
    buf = bytearray(seg2.read_bytes())
    recs, end, torn = scan(bytes(buf), str(seg2))
    assert torn is None
    off, _ = locate(bytes(buf), len(recs) - 1)  # its last (group) record
    buf[off:end] = bytes(end - off)
    seg2.write_bytes(bytes(buf))
    with pytest.raises(JournalDamaged, match=rf"{segment_name(2, gen)} at offset {off}: the segment ends after"):
        recover(tmp_path)


async def test_a_closed_segment_that_lost_only_its_last_record_stops_the_start(tmp_path: Path) -> None:
    """As above, the lost end a single record (each group commit one message): one record fewer
    than the next checkpoint's count is damage too, not a clean end (an acknowledged message gone)."""
    from hsb.cp.journal.format import locate

    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096, io="thread")
    j.open(1, [], [])
    try:
        mid = 0
        while j.seg < 3:
            mid += 1
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            j.pin(j.append(["a", "T1", mid, "x" * 100], functools.partial(fut.set_result, None)))
            await asyncio.wait_for(fut, 5.0)  # durable alone: a group of one record
    finally:
        j.close()
    seg2 = tmp_path / segment_name(2, gen)
    buf = bytearray(seg2.read_bytes())
    recs, end, _ = scan(bytes(buf), str(seg2))
    off, k = locate(bytes(buf), len(recs) - 1)
    assert k is None and recs[-1][0] == "a", "the scenario: the segment's last record went alone"
    buf[off:end] = bytes(end - off)
    seg2.write_bytes(bytes(buf))
    with pytest.raises(JournalDamaged, match=rf"{segment_name(2, gen)} at offset {off}: the segment ends after {len(recs) - 1} records"):
        recover(tmp_path)


@pytest.mark.parametrize("io", ["thread", pytest.param("io_uring", marks=needs_ring)])
async def test_a_new_segment_whose_size_could_not_be_read_once_is_opened_again(tmp_path: Path, io: str, monkeypatch: Any) -> None:
    """The storage fails once (EIO) just after a new segment was opened, when its size is read:
    the group is tried again at the backoff's pace and written, and acknowledgements resume by
    themselves. The segment's descriptor used to be kept without its offset, and every retry
    failed on that (KeyError) until the process was restarted."""
    j = open_journal(tmp_path, io=io)
    try:
        j.segment_bytes = 200
        real = os.fstat
        failed = [0]

        def fstat(fd: Any) -> Any:
            if not failed[0] and isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}").endswith(segment_name(2, j.gen)):
                failed[0] += 1
                raise OSError(errno.EIO, "injected")
            return real(fd)

        monkeypatch.setattr(os, "fstat", fstat)
        # past the segment's size: a new segment begins, opened in the same group commit
        await durable(j, ["a", "T", 1, b"x" * 300])
        await durable(j, ["a", "T", 2, b"y"])
        assert failed[0] == 1 and j.state == "ok", (j.state, j.error)
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2]
    finally:
        j.close()


def _snapshot_being_written(d: Path) -> tuple[Path, bytes, bytes]:
    """Generation 1 complete, and generation 2's takeover snapshot written as three group records:
    (its segment, the bytes a read catches while the second group is half written and the third
    is already there, the bytes once it is all written)."""
    Generations(d).take()
    _segment(d, 1, [["ck", 1, "host-a", 1, {"T1": 2}, {"first": 1}], ["a", "T1", 1, b"m"], ["a", "T1", 2, b"n"], ["se"]], gen=1)
    Generations(d).take()
    pack = packer()
    ck = encode(["ck", 1, "host-a", 2, {"T1": 2, "T2": 1}, {"first": 2}])
    g2 = group([pack(["a", "T1", 1, b"m"]), pack(["a", "T2", 1, b"o"])])
    g3 = group([pack(["a", "T1", 2, b"n"]), pack(["se"])])
    whole = ck + g2 + g3
    half = len(g2) // 2
    torn = ck + g2[:half] + bytes(len(g2) - half) + g3
    return d / segment_name(2, 2), torn, whole


def _on_each_read(monkeypatch: Any, seg: Path, nth: Callable[[int], None]) -> list[int]:
    """Recovery's reads of `seg` counted: `nth(n)` runs before the n-th (it may raise, or rewrite
    the file as a CP still writing it would); the count, as a one-item list."""
    from hsb.cp.journal import recovery

    real_read = recovery._read
    reads = [0]

    def read(path: Path) -> bytes:
        if path == seg:
            reads[0] += 1
            nth(reads[0])
        return real_read(path)

    monkeypatch.setattr(recovery, "_read", read)
    return reads


def test_a_snapshot_read_while_another_cp_still_writes_it_is_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    """A newer CP's takeover snapshot, larger than a group record, is being written while this CP
    reads the journal: the read catches a group half written with the next already there. Not
    damage (the snapshot was not said durable): read again until whole, as for the last segment;
    it stopped the start (exit 65, not restarted) though nothing was damaged."""
    from hsb.cp.journal import recovery

    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    seg, torn, whole = _snapshot_being_written(tmp_path)
    seg.write_bytes(torn)

    def nth(n: int) -> None:
        if n == 2:  # its writer goes on between this CP's reads
            seg.write_bytes(whole)

    reads = _on_each_read(monkeypatch, seg, nth)
    r = recover(tmp_path, truncate=False)
    assert r.head_generation == 2 and sorted(r.held["T1"]) == [1, 2]
    assert reads[0] >= 2


def test_damage_that_stays_in_a_snapshot_not_yet_durable_still_stops_the_start(tmp_path: Path, monkeypatch: Any) -> None:
    from hsb.cp.journal import recovery

    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    seg, torn, _whole = _snapshot_being_written(tmp_path)
    seg.write_bytes(torn)
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path, truncate=False)
    assert not isinstance(exc.value, JournalUnsettled) and seg.name in str(exc.value)


def test_files_vanishing_do_not_use_up_the_reads_again_of_a_segment_still_written(tmp_path: Path, monkeypatch: Any) -> None:
    """Seven listings lose a file (a superseded CP deleting), then the eighth catches the last
    segment half written (the same CP's last flush): read again, not stopped as damage; the
    two kinds of retry used to share one count of eight."""
    from hsb.cp.journal import recovery

    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    seg, torn, whole = _snapshot_being_written(tmp_path)
    seg.write_bytes(whole)

    def nth(n: int) -> None:
        if n < recovery.RETRIES:
            raise recovery._Vanished(seg.name)
        if n == recovery.RETRIES:
            seg.write_bytes(torn)
        elif n == recovery.RETRIES + 1:
            seg.write_bytes(whole)

    _on_each_read(monkeypatch, seg, nth)
    r = recover(tmp_path, truncate=False)
    assert r.head_generation == 2 and sorted(r.held["T1"]) == [1, 2]
