"""The takeover file's ring against a model (hypothesis, stateful): writer groups, reader polls,
new batches, torn records and resyncs in any order; the reader is handed every record of its
generation once, in order."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverWriter,
    batch_read,
    create_file,
)
from tests.support.ring import Changes, E, R


class RingModel(RuleBasedStateMachine):
    """Writer groups, reader polls, new batches, torn records and resyncs, in any order.

    Model: the records of the current generation by seq, the reader's cursor and
    what it has been handed since its last resync.
    """

    K = 9
    TERMINALS = 6  # R=1024: E=3, B=2, N=12 -> K=9
    r: RingReader  # (made by resync)

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
            fileio.sync = eio  # type: ignore[assignment]  # (a fault: it raises whatever it is given)
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
