"""The sequential area (114) as a ring: group commit, wrap, lapped, torn, generations."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    NoBatchWritten,
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverWriter,
    batch_read,
    create_file,
    entries_per_record,
)
from hsb.takeover.layout import KIND_RING
from hsb.takeover.records import encode_entry, encode_payload, pack_record
from tests.support.procs import until

R = 1024  # E = 3 entries per record: groups span several records without huge counts
E = entries_per_record(R)


def make(tmp_path: Path, records: int, record_size: int = R) -> str:
    path = str(tmp_path / "takeover.dat")
    create_file(path, records, record_size, host="test")
    return path


class Changes:
    """Distinct, checkable session changes."""

    def __init__(self) -> None:
        self.n = 0

    def take(self, k: int) -> list[SessionEntry]:
        out = [SessionEntry(f"T{(self.n + i) % 500:05d}", {"n": self.n + i}, (self.n + i) % 2 == 0) for i in range(k)]
        self.n += k
        return out


def setup_pair(path: str, terminals: int = 6) -> tuple[TakeoverWriter, RingReader]:
    w = TakeoverWriter(path, terminals=terminals)
    w.batch_write(1, [])
    snap = batch_read(path)
    return w, RingReader(path, snap.header, max_records=1000)


def drain(reader: RingReader, until: PollStatus = PollStatus.NOTHING_NEW) -> list[SessionEntry]:
    """The entries of every new record up to the first poll that finds `until`."""
    got: list[SessionEntry] = []
    last: int | None = None
    while True:
        res = reader.poll()
        if res.status is until:
            return got
        assert res.status is PollStatus.NEW, res
        # each record once, in order: a cursor that did not move would hand the same ones again
        assert last is None or res.first_seq == last + 1, f"seqs {res.first_seq}..{res.last_seq} after {last}"
        last = res.last_seq
        got += res.entries


def test_append_before_batch_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    with TakeoverWriter(path, terminals=6) as w, pytest.raises(NoBatchWritten):
        w.append_group([SessionEntry("T1", {}, True)])


def test_group_commit_packs_records_and_syncs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 400, 4096)
    syncs: list[int] = []
    real = fileio.sync
    monkeypatch.setattr(fileio, "sync", lambda fd: (syncs.append(fd), real(fd)))
    w, r = setup_pair(path, terminals=15)
    assert len(syncs) == 2  # batch write: batch records, then header
    syncs.clear()
    ch = Changes()
    group = ch.take(1000)
    first, last = w.append_group(group)
    assert (first, last) == (1, -(-1000 // 15))  # 67 records for 1,000 changes
    assert len(syncs) == 1
    assert drain(r) == group
    assert w.append_group([]) == (68, 67) and len(syncs) == 1


def test_ring_wraps_many_times_reader_sees_every_change_once_in_order(tmp_path: Path) -> None:
    path = make(tmp_path, 12)  # B=2, K=9
    w, r = setup_pair(path)
    k = w.layout.ring_slots if w.layout else 0
    assert k == 9
    ch, rng = Changes(), random.Random(7)
    written: list[SessionEntry] = []
    seen: list[SessionEntry] = []
    while w.last_seq < 60 * k:
        group = ch.take(rng.randint(1, 3 * E))  # 1..3 records per group
        w.append_group(group)
        written += group
        if rng.random() < 0.5 or w.last_seq - (r.next_seq - 1) > k - 3 * 1:
            seen += drain(r)
    seen += drain(r)
    assert seen == written
    assert r.next_seq == w.next_seq


def test_reader_exactly_one_ring_behind_is_not_lapped(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    k = 9
    ch = Changes()
    for _ in range(5):  # several laps
        batch = ch.take(k * E)  # exactly K records: fills the ring once
        w.append_group(batch)
        res = r.poll()
        assert res.status is PollStatus.NEW and res.entries == batch and (res.last_seq - res.first_seq + 1) == k
    w.append_group(ch.take(k * E + 1))  # K+1 records: the oldest one unread is overwritten
    res = r.poll()
    assert res.status is PollStatus.LAPPED
    assert res.record == w.layout.ring_record(r.next_seq) if w.layout else False
    assert "overtook" in res.reason and not res.entries and res.needs_resync
    assert r.poll().status is PollStatus.LAPPED  # the cursor did not move


def test_lapped_reader_resyncs_through_a_new_batch(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(20 * E))
    assert r.poll().status is PollStatus.LAPPED
    state = ch.take(6)
    w.batch_write(2, state)
    assert r.poll().status is PollStatus.NEW_GENERATION
    snap = batch_read(path, expected_startup_id=2)
    assert snap.entries == state
    r2 = RingReader(path, snap.header)
    assert r2.poll().status is PollStatus.NOTHING_NEW  # old-generation records are not "new"
    more = ch.take(4)
    w.append_group(more)
    assert drain(r2) == more


@pytest.mark.parametrize("torn_header", [False, True])
def test_a_writer_made_active_again_writes_above_the_other_hosts_generation(tmp_path: Path, torn_header: bool) -> None:
    """Host A writes, is demoted (planned switchover, same process, its writer kept), host B
    writes batches and ring records, then A is made active again: A's new batch must take a
    generation above B's, or B (now following A) reads B's own old ring records as new and
    passes over A's real ones (standby sessions that silently differ from the active's).
    `torn_header`: B crashed while rewriting record 0, so only B's records say its generation."""
    path = make(tmp_path, 64)
    a = TakeoverWriter(path, terminals=6)
    a.batch_write(1, [])  # generation 1
    b = TakeoverWriter(path, terminals=6)
    b.batch_write(2, [])  # generation 2: A's writer still thinks 1
    stale = [SessionEntry("T00007", {"who": "b"}, True), SessionEntry("T00007", {"who": "b"}, False)]
    b.append_group(stale)
    if torn_header:
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff")
    h = a.batch_write(3, [])  # A is active again
    assert h.generation == 3, h.generation
    real = [SessionEntry("T00009", {"who": "a"}, True), SessionEntry("T00009", {"who": "a"}, False)]
    a.append_group(real)
    snap = batch_read(path, expected_startup_id=3)
    got = drain(RingReader(path, snap.header, max_records=1000))
    assert [(e.terminal, e.attrs) for e in got] == [(e.terminal, e.attrs) for e in real]
    a.close()
    b.close()


def test_flipped_byte_is_torn_and_never_applied(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    a, b = ch.take(E), ch.take(E)
    w.append_group(a)
    w.append_group(b)
    assert w.layout is not None
    rec2 = w.layout.ring_record(2)
    with open(path, "r+b") as f:
        f.seek(rec2 * R + 40)
        orig = f.read(1)
        f.seek(rec2 * R + 40)
        f.write(bytes([orig[0] ^ 1]))
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == a  # the good record before the torn one
    for _ in range(3):
        res = r.poll()
        assert res.status is PollStatus.TORN and res.record == rec2 and "checksum" in res.reason
        assert not res.entries and not res.needs_resync
    with open(path, "r+b") as f:  # the write completes
        f.seek(rec2 * R + 40)
        f.write(orig)
    assert drain(r) == b


def test_a_damaged_ring_record_the_standby_names_is_cleared_by_the_next_batch(tmp_path: Path) -> None:
    """A ring record left torn (a crash mid ring write) past the batch area: a batch write
    rewrites records 0..B only, so a standby that catches up to it after the resync would find
    it torn again and ask again, at every pass. The resync names it, and the batch write
    clears it: the standby then waits there for the ring, and reads what comes."""
    path = make(tmp_path, 16)
    w, r = setup_pair(path)
    ch = Changes()
    first = ch.take(E)
    w.append_group(first)
    w.append_group(ch.take(E))
    assert w.layout is not None
    rec2 = w.layout.ring_record(2)
    with open(path, "r+b") as f:  # seq 2 torn for good
        f.seek(rec2 * R + 40)
        orig = f.read(1)
        f.seek(rec2 * R + 40)
        f.write(bytes([orig[0] ^ 1]))
    assert drain(r, until=PollStatus.TORN) == first
    state = ch.take(6)
    w.batch_write(2, state, clear=rec2)  # the resync, naming the record
    snap = batch_read(path, expected_startup_id=2)
    r2 = RingReader(path, snap.header, max_records=1000)
    assert r2.poll().status is PollStatus.NOTHING_NEW  # the new ring's seq 1: not written yet
    w.append_group(ch.take(E))
    assert r2.poll().status is PollStatus.NEW
    res = r2.poll()  # seq 2 of the new ring is the record that was torn: empty now, not torn
    assert res.status is PollStatus.NOTHING_NEW, res
    more = ch.take(2 * E)
    w.append_group(more)
    assert drain(r2) == more
    # a record inside the new batch, or the header, is written over anyway: nothing else changes
    w.batch_write(3, state, clear=1)
    assert batch_read(path, expected_startup_id=3).entries == state
    assert w.layout is not None
    w.batch_write(4, state, clear=w.layout.batch_records)  # the batch area's last record: its entries kept
    assert batch_read(path, expected_startup_id=4).entries == state
    w.close()


def test_short_write_is_torn_until_complete(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    for _ in range(9):  # fill the ring once: every slot holds an older record
        w.append_group(ch.take(E))
    drain(r)
    assert w.layout is not None
    seq = w.next_seq
    recno = w.layout.ring_record(seq)
    group = ch.take(E)
    full = pack_record(KIND_RING, w.generation, seq, encode_payload([encode_entry(e) for e in group]), R, E, attempt=w.attempt)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, full[:40], recno * R)  # only the first 40 bytes landed
        res = r.poll()
        assert res.status is PollStatus.TORN and res.record == recno
        os.pwrite(fd, full, recno * R)
    finally:
        os.close(fd)
    res = r.poll()
    assert res.status is PollStatus.NEW and res.entries == group and res.first_seq == seq


def test_truncated_file_reads_as_torn(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    w.append_group(Changes().take(E))
    assert w.layout is not None
    os.truncate(path, w.layout.ring_record(1) * R + 100)
    res = r.poll()
    assert res.status is PollStatus.TORN and "short read" in res.reason


def test_consistent_but_misplaced_record_is_corrupt(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    assert w.layout is not None
    payload = encode_payload([encode_entry(SessionEntry("X", {}, True))])
    with fileio.RecordWriter(path, R) as io:  # seq 5 in the slot of seq 1
        io.write(w.layout.ring_record(1), pack_record(KIND_RING, w.generation, 5, payload, R, 1, attempt=w.attempt))
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and "does not belong" in res.reason and res.needs_resync


def test_new_generation_seen_in_the_ring_without_header_checks(tmp_path: Path) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path, terminals=6)  # B=2
    snap = batch_read(path)
    r = RingReader(path, snap.header, check_header=False)
    w.close()
    ch = Changes()
    # A new active with more terminals: B=5, so its batch records cover our old ring slots.
    with TakeoverWriter(path, terminals=15) as w2:
        w2.batch_write(9, ch.take(15))
        res = r.poll()
        assert res.status is PollStatus.NEW_GENERATION and res.generation == 2
        assert res.record == snap.layout.ring_first


def test_a_header_of_another_batch_write_of_the_same_generation_is_a_new_generation(tmp_path: Path) -> None:
    """A writer that never saw this generation's batch write (the try failed after its header
    landed; a restart, the other host) writes the generation again with an attempt of its own: a
    reader following the first must resync, not wait for ever at ring records of the other try."""
    from dataclasses import replace

    from hsb.takeover.records import encode_header
    from hsb.takeover.writer import new_attempt

    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(E))
    assert len(drain(r)) == E
    h = fileio.check_file(path)
    with fileio.RecordWriter(path, R) as io:
        io.write(0, encode_header(replace(h, attempt=new_attempt(h.attempt))))
    res = r.poll()
    assert res.status is PollStatus.NEW_GENERATION and res.needs_resync, res
    assert "another batch write of generation" in res.reason
    w.close()


def test_a_batch_record_of_this_generation_in_the_ring_is_corrupt(tmp_path: Path) -> None:
    """A batch record of this very batch write (checksum, generation, attempt and seq all fit)
    where the ring's seq 1 belongs, a misdirected write: never applied as ring entries."""
    from hsb.takeover.layout import KIND_BATCH

    path = make(tmp_path, 16)
    w, r = setup_pair(path)
    assert w.layout is not None
    h = fileio.check_file(path)
    payload = encode_payload([encode_entry(e) for e in Changes().take(1)])
    with fileio.RecordWriter(path, R) as io:
        io.write(w.layout.ring_record(1), pack_record(KIND_BATCH, h.generation, 1, payload, R, 1, attempt=h.attempt))
    res = r.poll()
    assert res.status is PollStatus.CORRUPT and not res.entries and res.needs_resync, res
    assert "a batch record of this generation in the ring" in res.reason
    w.close()


def test_stale_generation_in_slot_is_nothing_new(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    ch = Changes()
    w.append_group(ch.take(9 * E))  # every slot holds a generation-1 record
    w.batch_write(2, [])
    r2 = RingReader(path, batch_read(path).header, check_header=False)
    assert r2.poll().status is PollStatus.NOTHING_NEW
    g = ch.take(2)
    w.append_group(g)
    assert drain(r2) == g


def test_group_bigger_than_the_ring(tmp_path: Path) -> None:
    path = make(tmp_path, 12)
    w, r = setup_pair(path)
    first, last = w.append_group(Changes().take(25 * E))
    assert (first, last) == (1, 25)
    assert r.poll().status is PollStatus.LAPPED
    r2 = RingReader(path, batch_read(path).header, next_seq=17)  # the 9 newest are intact
    res = r2.poll()
    assert res.status is PollStatus.NEW and (res.first_seq, res.last_seq) == (17, 25)


def test_max_records_bounds_one_poll(tmp_path: Path) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    r = RingReader(path, batch_read(path).header, max_records=4)
    ch = Changes()
    written = ch.take(30 * E)
    w.append_group(written)
    res = r.poll()
    assert res.status is PollStatus.NEW and (res.first_seq, res.last_seq) == (1, 4)
    assert res.entries + drain(r) == written


def test_io_error_halfway_through_a_poll_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    written = Changes().take(10 * E)
    w.append_group(written)
    calls = 0
    real = fileio.FreshReader.read

    def flaky(self: fileio.FreshReader, first: int, count: int) -> memoryview:
        nonlocal calls
        calls += 1
        if calls == 3:  # header, first ring record, then the storage fails
            raise OSError(errno.EIO, "Input/output error")
        return real(self, first, count)

    monkeypatch.setattr(fileio.FreshReader, "read", flaky)
    with pytest.raises(OSError):
        r.poll()
    assert r.next_seq == 1
    monkeypatch.undo()
    assert drain(r) == written


def _failing_once(real: object, exc: BaseException) -> object:
    state = {"armed": True}

    def fn(*args: object) -> object:
        if state["armed"]:
            state["armed"] = False
            raise exc
        return real(*args)  # type: ignore[operator]

    return fn


@pytest.mark.parametrize("fails", ["sync", "write"])
def test_failed_group_keeps_its_seqs_and_is_rewritten_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    ch = Changes()
    a, b, c = ch.take(2 * E), ch.take(2 * E + 1), ch.take(E)
    w.append_group(a)
    eio = OSError(errno.EIO, "Input/output error")
    if fails == "sync":  # the records reached the file (a reader may see them), the sync failed
        monkeypatch.setattr(fileio, "sync", _failing_once(fileio.sync, eio))
    else:  # nothing reached the file
        monkeypatch.setattr(fileio.RecordWriter, "write", _failing_once(fileio.RecordWriter.write, eio))
    with pytest.raises(OSError):
        w.append_group(b)
    assert w.owed_records == 3 and w.next_seq == 6  # seqs 3..5 stay used
    seen = drain(r)
    assert seen == (a + b if fails == "sync" else a)
    first, last = w.append_group(b + c)  # the caller resends what failed
    assert (first, last) == (6, 9) and w.owed_records == 0
    seen += drain(r)
    assert seen == a + b + b + c  # the failed group, then the resend: in order, nothing lost
    fresh = RingReader(path, batch_read(path).header)
    assert drain(fresh) == a + b + b + c


def test_failed_batch_write_burns_its_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    monkeypatch.setattr(fileio, "sync", _failing_once(fileio.sync, OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError):
        w.batch_write(2, Changes().take(4))
    assert w.generation == 2
    with pytest.raises(NoBatchWritten):
        w.append_group(Changes().take(1))
    state = Changes().take(5)
    assert w.batch_write(3, state).generation == 3
    snap = batch_read(path, expected_startup_id=3)
    assert snap.entries == state and snap.header.generation == 3


# -- random interleavings against a model ---------------------------------------------


class RingModel(RuleBasedStateMachine):
    """Writer groups, reader polls, new batches, torn records and resyncs, in any order.

    Model: the records of the current generation by seq, the reader's cursor and
    what it has been handed since its last resync.
    """

    K = 9
    TERMINALS = 6  # R=1024: E=3, B=2, N=12 -> K=9

    @initialize()
    def start(self) -> None:
        # Ordering and checksums are under test here, not durability: skip the syncs.
        self._real_sync, fileio.sync = fileio.sync, lambda fd: None
        self.dir = tempfile.mkdtemp(prefix="hsb-ring-")
        self.path = os.path.join(self.dir, "tk")
        create_file(self.path, 12, R, host="model")
        self.w = TakeoverWriter(self.path, terminals=self.TERMINALS)
        self.ch = Changes()
        self.gen = 0
        self.new_batch(n=2)
        self.resync()

    def teardown(self) -> None:
        if hasattr(self, "_real_sync"):
            fileio.sync = self._real_sync
        if hasattr(self, "w"):
            self.w.close()
            self.r.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # writer
    @rule(n=st.integers(1, 6))
    def new_batch(self, n: int) -> None:
        state = self.ch.take(n)
        self.w.batch_write(self.gen + 1, state)
        self.gen += 1
        self.batch = state
        self.records: dict[int, list[SessionEntry]] = {}
        self.visible = 0  # last seq whose record is in the file

    @rule(sizes=st.lists(st.integers(1, 4 * E), min_size=1, max_size=4))
    def write_groups(self, sizes: list[int]) -> None:
        for k in sizes:
            group = self.ch.take(k)
            first, last = self.w.append_group(group)
            for i, seq in enumerate(range(first, last + 1)):
                self.records[seq] = group[i * E : (i + 1) * E]
            self.visible = last  # owed records of a failed group were rewritten first

    @rule(k=st.integers(1, 2 * E), where=st.sampled_from(["write", "sync"]))
    def failed_group(self, k: int, where: str) -> None:
        """The storage fails: before any record landed, or at the sync after all did."""
        group = self.ch.take(k)
        first = self.w.next_seq

        def eio(*_: object) -> None:
            raise OSError(errno.EIO, "Input/output error")

        real_write, real_sync = fileio.RecordWriter.write, fileio.sync
        if where == "write":
            fileio.RecordWriter.write = eio  # type: ignore[method-assign,assignment]
        else:
            fileio.sync = eio
        try:
            self.w.append_group(group)
            raise AssertionError("append_group did not fail")
        except OSError:
            pass
        finally:
            fileio.RecordWriter.write, fileio.sync = real_write, real_sync  # type: ignore[method-assign]
        for i, seq in enumerate(range(first, self.w.next_seq)):
            self.records[seq] = group[i * E : (i + 1) * E]  # owed: these seqs keep this content
        if where == "sync":
            self.visible = self.w.last_seq

    # reader
    @rule()
    def resync(self) -> None:
        snap = batch_read(self.path, expected_startup_id=self.gen)
        assert snap.entries == self.batch
        if hasattr(self, "r"):
            self.r.close()
        self.r = RingReader(self.path, snap.header)
        self.r_gen = self.gen
        self.handed: list[SessionEntry] = []

    @rule(max_records=st.integers(1, 12))
    def poll(self, max_records: int) -> None:
        self.r.max_records = max_records
        nxt, last = self.r.next_seq, self.visible
        res = self.r.poll()
        if self.r_gen != self.gen:
            assert res.status is PollStatus.NEW_GENERATION, res
        elif last >= nxt + self.K:
            assert res.status is PollStatus.LAPPED, res
        elif last < nxt:
            assert res.status is PollStatus.NOTHING_NEW, res
        else:
            end = min(last, nxt + max_records - 1)
            assert res.status is PollStatus.NEW and (res.first_seq, res.last_seq) == (nxt, end), res
            assert res.entries == [e for s in range(nxt, end + 1) for e in self.records[s]]
            self.handed += res.entries
        if res.status is not PollStatus.NEW:
            assert not res.entries
        if res.needs_resync:  # what the standby does: ask for and read a new batch
            if self.r_gen == self.gen:
                self.new_batch(n=len(self.batch))
            self.resync()

    @precondition(lambda self: self.w.last_seq >= self.r.next_seq)
    @rule(offset=st.integers(0, R - 1))
    def torn_next_record(self, offset: int) -> None:
        """The record the reader wants next is being written (or is damaged)."""
        recno = self.r.layout.ring_record(self.r.next_seq)
        fd = os.open(self.path, os.O_RDWR)
        try:
            orig = os.pread(fd, 1, recno * R + offset)
            os.pwrite(fd, bytes([orig[0] ^ 0x5A]), recno * R + offset)
            res = self.r.poll()
            if self.r_gen == self.gen:
                assert res.status is PollStatus.TORN and res.record == recno, res
            else:
                assert res.status is PollStatus.NEW_GENERATION
            assert not res.entries
            os.pwrite(fd, orig, recno * R + offset)  # the write completes
        finally:
            os.close(fd)

    @invariant()
    def handed_is_a_prefix_of_the_ring(self) -> None:
        if not hasattr(self, "r") or self.r_gen != self.gen:
            return
        expect = [e for s in range(1, self.r.next_seq) for e in self.records[s]]
        assert self.handed == expect


RingModel.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
TestRingModel = RingModel.TestCase


async def test_ring_entries_waiting_on_failing_storage_stay_one_per_terminal(tmp_path: Path) -> None:
    """While the takeover storage fails, the active keeps every ring entry to write once it can,
    but only each terminal's last one (an entry sets a state): 10,000 opens and closes of 10
    terminals leave 10 entries waiting, not 10,000, the last state of each."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    tries = 0

    async def failing(group: Any) -> None:
        nonlocal tries
        tries += 1
        raise OSError(5, "Input/output error")

    tio.store.append = failing  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        for i in range(10_000):
            tio.ring_change(f"T{i % 10}", {"n": i}, i % 2 == 0)
        deadline = asyncio.get_running_loop().time() + 10
        while tries < 2:
            assert asyncio.get_running_loop().time() < deadline, "the writer never tried again"
            await asyncio.sleep(0.01)
        assert len(tio.pending) == 10
        assert {e.terminal: (e.attrs["n"], e.open) for e in tio.pending} == {f"T{k}": (9990 + k, k % 2 == 0) for k in range(10)}
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


def test_storage_failing_for_long_keeps_one_group_owed_and_never_laps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage fails at every try for a while, and the caller sends a new group each time
    (its pending entries, as the active does): only the first failed group is owed, the later
    tries get no sequence numbers, and once the storage is back a reader that kept up sees
    every record in order, not lapped."""
    path = make(tmp_path, 24)  # K = 14
    w, r = setup_pair(path)
    ch = Changes()
    a, first_failed = ch.take(E), ch.take(2 * E)
    w.append_group(a)
    assert drain(r) == a

    def eio(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileio.RecordWriter, "write", eio)
    with pytest.raises(OSError):
        w.append_group(first_failed)
    assert w.owed_records == 2 and w.next_seq == 4
    for _ in range(50):  # a minute of retries, one group each
        with pytest.raises(OSError):
            w.append_group(ch.take(2 * E))
        assert w.owed_records == 2 and w.next_seq == 4, "a failed retry numbered its own records"
    monkeypatch.undo()
    last = ch.take(2 * E)
    assert w.append_group(last) == (4, 5)
    assert drain(r) == first_failed + last


async def test_a_ring_group_holds_each_terminals_last_entry_only(tmp_path: Path) -> None:
    """Opens and closes that pile up while a group is written go out as one entry per
    terminal, the last (an entry sets a state): a burst never makes a group larger than a
    batch, which could lap the ring."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    groups: list[list[SessionEntry]] = []

    async def append(group: Any) -> None:
        groups.append(list(group))

    tio.store.append = append  # type: ignore[method-assign]
    tio.buffer_ring_changes()  # as during a batch write: changes wait
    for i in range(1000):
        tio.ring_change(f"T{i % 10}", {"n": i}, i % 2 == 0)
    tio.start_ring_writer()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not groups or tio.pending:
            assert asyncio.get_running_loop().time() < deadline, "the group was never written"
            await asyncio.sleep(0.01)
        assert [len(g) for g in groups] == [10]
        assert {e.terminal: (e.attrs["n"], e.open) for e in groups[0]} == {f"T{k}": (990 + k, k % 2 == 0) for k in range(10)}
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_an_entry_that_cannot_be_encoded_does_not_stop_the_ring(tmp_path: Path) -> None:
    """One terminal's attributes that cannot be encoded (a service put an object in them):
    that entry is logged and dropped, every other terminal's changes are still written."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO
    from hsb.takeover.records import encode_entries

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    written: list[str] = []

    async def append(group: Any) -> None:
        encode_entries(group)  # what the writer does first: a ValueError changes nothing
        written.extend(e.terminal for e in group)

    tio.store.append = append  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {"n": 1}, True)
        tio.ring_change("T2", {"bad": object()}, True)
        tio.ring_change("T3", {"n": 3}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while written != ["T1", "T3"]:
            assert asyncio.get_running_loop().time() < deadline, f"the ring stopped: written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        tio.ring_change("T4", {"n": 4}, False)
        while written != ["T1", "T3", "T4"]:
            assert asyncio.get_running_loop().time() < deadline, f"the ring stopped: written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        assert tio.pending == [] and tio.last_error is None
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


def test_a_group_taken_before_a_new_batch_is_not_written_under_it(tmp_path: Path) -> None:
    """A ring group taken under generation g and reaching the storage thread after the batch
    write of g+1: refused (its entries are in that batch, or older), nothing written."""
    from hsb.takeover import StaleGroup

    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    old_gen = w.generation
    ch = Changes()
    state = ch.take(3)
    w.batch_write(2, state)
    with pytest.raises(StaleGroup):
        w.append_group(ch.take(2), old_gen)
    assert w.next_seq == 1
    snap = batch_read(path, expected_startup_id=2)
    assert snap.entries == state
    assert drain(RingReader(path, snap.header)) == []
    fresh = ch.take(2)
    assert w.append_group(fresh, w.generation) == (1, 1)


async def test_a_stale_group_that_failed_is_not_queued_again_after_a_batch(tmp_path: Path) -> None:
    """The active's ring writer: a group in flight when a batch write starts fails (stale);
    its entries are not queued again under the new generation (the batch holds them, or
    newer states), and the changes made since are written."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO
    from hsb.takeover import StaleGroup

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    release = asyncio.Event()
    written: list[tuple[str, bool]] = []
    calls = 0

    async def append(group: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise StaleGroup("a ring group of generation 1 after the batch write of generation 2: not written")
        written.extend((e.terminal, e.open) for e in group)

    tio.store.append = append  # type: ignore[method-assign]
    tio.start_ring_writer()
    import hsb.host.takeover_io as tio_mod
    from tests.support.logrec import RecordingLog

    logs = RecordingLog()
    real_log, tio_mod.log = tio_mod.log, logs  # type: ignore[assignment]
    try:
        tio.ring_change("T1", {}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while calls < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        tio.stop_ring_writer()  # the batch write of generation 2, as HA.batch_write does it
        tio.buffer_ring_changes()
        tio.ring_change("T2", {}, True)
        tio.start_ring_writer()
        release.set()
        while written != [("T2", True)]:
            assert asyncio.get_running_loop().time() < deadline, f"written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        assert tio.pending == [] and tio.last_error is None
        assert not logs.events("ring_write_failed"), "a batch write's race reported as an error"
    finally:
        tio_mod.log = real_log
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_the_store_refuses_a_group_queued_before_a_batch_write_that_ran_first(tmp_path: Path) -> None:
    """Through TakeoverStore (the storage thread, one operation at a time): a ring group queued
    while a batch write waits its turn ahead of it is refused (StaleGroup), not written under
    the new generation."""
    import threading

    from hsb.takeover import StaleGroup, TakeoverStore

    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, records=40, host_name="test", timeout=10)
    try:
        await store.batch_write(1, [])
        ch = Changes()
        hold, busy = threading.Event(), threading.Event()

        def occupy() -> None:
            busy.set()
            hold.wait()

        store._pool.submit(occupy)  # the storage thread busy: what follows queues behind it
        try:
            queue = store._pool._q
            await until(busy.is_set, 10, interval=0.001, what="the storage thread busy")
            state = ch.take(3)
            batch = asyncio.ensure_future(store.batch_write(2, state))
            # the batch write's job in the storage thread's queue before the group is taken
            await until(lambda: queue.qsize() == 1, 10, interval=0.001, what="the batch write queued on the storage thread")
            group = asyncio.ensure_future(store.append(ch.take(2)))
            await until(lambda: queue.qsize() == 2, 10, interval=0.001, what="the ring group queued behind the batch write")
        finally:
            hold.set()
        assert (await batch).generation == 2
        with pytest.raises(StaleGroup):
            await group
        snap = batch_read(path, record_size=R, expected_startup_id=2)
        assert snap.entries == state
        assert drain(RingReader(path, snap.header)) == []
    finally:
        await store.close()


async def test_a_ring_error_does_not_outlive_the_ring_writer_or_the_polls(tmp_path: Path) -> None:
    """A ring write failed, then the standby went (the ring writer stops); or a poll failed, then
    this standby took over (its polls stop): the error stayed in the status for good, and
    hsb_takeover_storage_ok (HsbTakeoverStorageStalled) kept saying the storage failed while it
    answered. It ends with the writer or the polls; the next operation asks the storage again."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")

    async def failing(group: Any) -> None:
        raise OSError(5, "Input/output error")

    tio.store.append = failing  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while tio.last_error is None:
            assert asyncio.get_running_loop().time() < deadline, "the write never failed"
            await asyncio.sleep(0.01)
        assert tio.status()["storage"] != "ok"
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()
    assert tio.status()["storage"] == "ok"
    tio.follow()
    tio.last_error, tio.bad_record = "record 7: torn", 7  # (what a poll leaves)
    tio.become_writer()
    assert tio.status()["storage"] == "ok" and tio.bad_record is None


async def test_a_demoted_active_waits_for_its_ring_write_still_on_its_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned switchover while one of the old active's ring groups is on its way to slow
    storage: stopping the ring writer did not wait for it, so it could land in a slot the new
    active had written meanwhile, and the new standby (this host) took that older record for
    "nothing new" until the ring came round again. The demotion waits for it first."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(group: Any) -> None:
        entered.set()
        await release.wait()

    tio.store.append = slow  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {}, True)
        await asyncio.wait_for(entered.wait(), 5)
        tio.stop_ring_writer()  # demoted: its group still on its way
        assert not await tio.ring_write_done(0.2)
        asyncio.get_running_loop().call_later(0.1, release.set)
        assert await tio.ring_write_done(5)
        # one the store gave up waiting for (past its deadline) may still land: waited for too
        monkeypatch.setattr(type(tio.store), "responding", property(lambda self: False))
        assert not tio.ring_settled() and not await tio.ring_write_done(0.2)
        monkeypatch.undo()
        assert tio.ring_settled() and await tio.ring_write_done(1)
    finally:
        release.set()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_the_store_writes_a_group_taken_after_a_batch_write_beside_one_taken_before(tmp_path: Path) -> None:
    """Groups waiting together for the storage thread, one taken before a batch write and one
    after it (appended while the flusher waited on an earlier group): the older is refused
    (StaleGroup) and the newer written, not refused with it (the ring writer drops a stale group
    as held by the batch, and the newer one's changes are in no batch: lost to the standby)."""
    from hsb.takeover import StaleGroup, TakeoverStore

    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, records=40, host_name="test", timeout=10)
    try:
        await store.batch_write(1, [])
        assert store._writer is not None
        old_gen = store._writer.generation
        await store.batch_write(2, [])
        ch = Changes()
        old, new = ch.take(2), ch.take(2)
        loop = asyncio.get_running_loop()
        f_old: asyncio.Future[tuple[int, int]] = loop.create_future()
        f_new: asyncio.Future[tuple[int, int]] = loop.create_future()
        # (queued as append() queues them; the interleaving with a batch write on the storage
        # thread that leads here is a race a test cannot arrange through append() alone)
        store._pending = [(old, old_gen, f_old), (new, store._writer.generation, f_new)]
        await store._flush()
        with pytest.raises(StaleGroup):
            await f_old
        assert await f_new == (1, 1)
        snap = batch_read(path, record_size=R, expected_startup_id=2)
        assert drain(RingReader(path, snap.header)) == new
    finally:
        await store.close()


async def test_an_active_with_no_standby_keeps_no_ring_changes(tmp_path: Path) -> None:
    """Before any standby has started the active writes nothing to the file [0092], nor keeps the
    changes for later (they would pile up for as long as no standby comes)."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    try:
        for i in range(3):
            tio.ring_change(f"T{i}", {}, True)
        assert tio.pending == [] and tio.status()["ring_pending"] == 0
    finally:
        await tio.close()
