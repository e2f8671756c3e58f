"""The standby's side of the takeover file: batch read (S225) and the ring cursor (S228).

`batch_read` takes B from the header (partner batch area size 522, [0075]),
never from the reader's own terminal count, verifies every batch record
(checksum, kind, generation, attempt, record number) and returns all entries or
raises `BatchReadError` naming the record: it never returns partial data.

`RingReader` follows the sequential area from a cursor (generation, next_seq).
Each poll opens the file afresh, checks record 0 for a newer generation, then
reads the record that must hold `next_seq` (and, while they are new, the ones
after it). Per record, against the cursor:

    all zeros, older generation, seq < next_seq      -> NOTHING_NEW
    same generation, another attempt (a failed try)  -> NOTHING_NEW
    same generation and seq == next_seq              -> NEW (applied, cursor +1)
    same generation and seq > next_seq               -> LAPPED (writer overtook us)
    newer generation (here or in record 0)           -> NEW_GENERATION
    bad checksum, short read                         -> TORN (retry later)
    checksum fine but inconsistent                   -> CORRUPT

A poll that found new records returns NEW with them and reports whatever
stopped it on the next poll, so entries are never stale, reordered or skipped.

A stale record (older generation, another attempt) where `next_seq` belongs is
normally a leftover the writer has not reached yet. But an earlier writer's
write landing late (an NFS writeback of a fenced host) can put one over a
record of this generation not yet read, and the reader would wait there until
the ring came round. So while it waits at a stale record each poll also reads
one record further on, at 1, 2, 4 ... slots (one more each poll): one of this
generation with a later seq there means the awaited one was written over, or is
a write still in progress: TORN (damage if it stays).
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field

import structlog

from hsb import gcpolicy
from hsb.takeover.errors import BatchReadError, ForeignWriter, StartupIdMismatch
from hsb.takeover.faults import Faults
from hsb.takeover.fileio import AlignedBuffer, FreshReader, check_file
from hsb.takeover.layout import KIND_BATCH, KIND_HEADER, KIND_RING, Layout
from hsb.takeover.pair import Pair
from hsb.takeover.records import (
    BadRecord,
    Header,
    SessionEntry,
    decode_header,
    decode_payload,
    kind_name,
    parse_record,
)

log = structlog.get_logger("hsb.takeover")

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BatchSnapshot:
    header: Header
    entries: list[SessionEntry]

    @property
    def layout(self) -> Layout:
        return self.header.layout


def read_header(path: str, record_size: int | None = None) -> Header:
    """Record 0, checked (file-level errors are TakeoverFileError)."""
    return check_file(os.fspath(path), record_size)


def batch_read(
    path: str,
    *,
    record_size: int | None = None,
    expected_startup_id: int | None = None,
    faults: Faults | None = None,
    pair: Pair | None = None,
    peer: str | None = None,
) -> BatchSnapshot:
    """Batch read (S225): header, then records 1..B with B from the header.

    `pair`, `peer`: this host's pair and the active's name: a header another pair's host wrote
    raises ForeignWriter naming it (before the startup id is compared: it is that pair's)."""
    path = os.fspath(path)
    t0 = time.perf_counter()
    h = check_file(path, record_size)
    if pair is not None:
        pair.check(path, h, peer, role="standby")
    if expected_startup_id is not None and h.startup_id != expected_startup_id:
        raise StartupIdMismatch(
            f"takeover file {path} holds startup id {h.startup_id}, not {expected_startup_id} sent by this standby: "
            f"the two hosts name different takeover files; point both [takeover] paths at the same shared file",
            expected=expected_startup_id,
            found=h.startup_id,
        )
    r, b, e = h.record_size, h.batch_records, h.entries_per_record
    entries: list[SessionEntry] = []
    per = max(1, _CHUNK_BYTES // r)
    with FreshReader(path, r, AlignedBuffer(min(b, per) * r or r), faults) as f:
        for first in range(1, b + 1, per):
            count = min(per, b + 1 - first)
            view = f.read(first, count)
            # collections paused for the decode only: not across a read, which a hung mount never
            # ends (the pause is the whole process's, and the daemon goes on without this thread)
            with gcpolicy.paused():
                for i in range(count):
                    recno = first + i
                    if (i + 1) * r > len(view):
                        raise BatchReadError(recno, "short read: the file ends inside the batch area", path=path)
                    entries.extend(_batch_record(view[i * r : (i + 1) * r], recno, h, e, path))
    if len(entries) != h.batch_entries:
        raise BatchReadError(0, f"header says {h.batch_entries} batch entries, the batch area holds {len(entries)}", path=path)
    log.info(
        "takeover_batch_read",
        path=path,
        generation=h.generation,
        batch_records=b,
        entries=len(entries),
        ms=round((time.perf_counter() - t0) * 1000, 1),
    )
    return BatchSnapshot(h, entries)


def _batch_record(view: memoryview, recno: int, h: Header, e: int, path: str) -> list[SessionEntry]:
    try:
        rec = parse_record(view)
    except BadRecord as exc:
        raise BatchReadError(recno, exc.reason, path=path) from None
    if rec is None:
        raise BatchReadError(recno, "never written", path=path)
    if rec.kind != KIND_BATCH:
        raise BatchReadError(recno, f"holds a {kind_name(rec.kind)} record, expected batch", path=path)
    if rec.generation != h.generation:
        raise BatchReadError(recno, f"generation {rec.generation}, header says {h.generation} (stale or unfinished batch write)", path=path)
    if rec.attempt != h.attempt:  # a generation can be written twice: by a failed try, then by a writer that never saw it
        raise BatchReadError(
            recno,
            f"attempt {rec.attempt:08x}, header says {h.attempt:08x}: a record of another batch write of generation {h.generation}"
            " (a failed one's, or a late write)",
            path=path,
        )
    if rec.seq != recno:
        raise BatchReadError(recno, f"says it is record {rec.seq}", path=path)
    if rec.n_entries > e:
        raise BatchReadError(recno, f"{rec.n_entries} entries, at most {e} fit", path=path)
    try:
        return decode_payload(rec.payload, rec.n_entries)
    except ValueError as exc:
        raise BatchReadError(recno, str(exc), path=path) from None


class PollStatus(enum.Enum):
    NOTHING_NEW = "nothing_new"
    NEW = "new"
    LAPPED = "lapped"
    NEW_GENERATION = "new_generation"
    TORN = "torn"
    CORRUPT = "corrupt"


@dataclass(slots=True)
class PollResult:
    status: PollStatus
    entries: list[SessionEntry] = field(default_factory=list)
    first_seq: int = 0  # NEW: sequence numbers of the records delivered
    last_seq: int = 0
    record: int | None = None  # the record that stopped the poll (TORN, CORRUPT, LAPPED...)
    reason: str = ""
    generation: int = 0  # the generation this poll saw, when it differs from the cursor's
    foreign: bool = False  # NEW_GENERATION: its header was written by another pair's host (reason names it)

    @property
    def needs_resync(self) -> bool:
        """LAPPED, NEW_GENERATION, CORRUPT: only a new batch read can continue."""
        return self.status in (PollStatus.LAPPED, PollStatus.NEW_GENERATION, PollStatus.CORRUPT)


class RingReader:
    """Cursor over the sequential area of one generation; one per batch read."""

    def __init__(
        self,
        path: str,
        header: Header,
        *,
        next_seq: int = 1,
        max_records: int = 256,
        check_header: bool = True,
        faults: Faults | None = None,
        pair: Pair | None = None,
        peer: str | None = None,
    ) -> None:
        """`pair`, `peer`: as for `batch_read`; a new generation in record 0 written by another
        pair's host is reported with `foreign` set and the reason naming it."""
        self.path = os.fspath(path)
        self.pair = pair
        self.peer = peer
        self.layout = header.layout
        self.generation = header.generation
        self.attempt = header.attempt
        self.e = header.entries_per_record
        self.next_seq = next_seq
        self.max_records = max(1, max_records)
        self.check_header = check_header
        self.faults = faults
        self._buf = AlignedBuffer(self.layout.record_size * min(self.max_records, 64))
        self._last_stop: tuple[PollStatus, int | None] | None = None
        self._stale: tuple[int, str] | None = None  # the stale record awaited, and what it holds
        self._probe = 0  # which distance the next look past a stale awaited record takes (_overtaken)

    def close(self) -> None:
        self._buf.close()

    @property
    def position(self) -> tuple[int, int]:
        return self.generation, self.next_seq

    def poll(self) -> PollResult:
        """One look at the ring; see the module docstring for the outcomes.

        The cursor moves only when the poll returns: an I/O error halfway
        through a poll (raised to the caller) loses nothing.
        """
        lay, r = self.layout, self.layout.record_size
        k = lay.ring_slots
        got: list[SessionEntry] = []
        first = nxt = self.next_seq
        stop: PollResult | None = None
        self._stale = None
        with FreshReader(self.path, r, self._buf, self.faults) as f:
            if self.check_header:
                stop = self._check_header(f.read(0, 1))
            chunk = 1
            while stop is None and nxt - first < self.max_records:
                slot = (nxt - 1) % k
                n = min(chunk, self.max_records - (nxt - first), k - slot)
                view = f.read(lay.ring_first + slot, n)
                for i in range(n):
                    recno = lay.ring_first + slot + i
                    if (i + 1) * r > len(view):
                        stop = PollResult(PollStatus.TORN, record=recno, reason="short read: the file ends inside the ring")
                        break
                    stop = self._classify(view[i * r : (i + 1) * r], recno, nxt, got)
                    if stop is not None:
                        break
                    nxt += 1
                chunk = min(chunk * 2, 64)
            if nxt == first and self._stale is not None:
                stop = self._overtaken(f, nxt) or stop
        self.next_seq = nxt
        if nxt > first:
            self._last_stop, self._probe = None, 0
            return PollResult(PollStatus.NEW, got, first, nxt - 1, generation=self.generation)
        assert stop is not None
        key = (stop.status, stop.record)
        if stop.status is not PollStatus.NOTHING_NEW and key != self._last_stop:  # once per problem, not per poll
            log.warning(
                "takeover_ring_" + stop.status.value,
                path=self.path,
                record=stop.record,
                reason=stop.reason,
                generation=self.generation,
                next_seq=nxt,
            )
        self._last_stop = key
        return stop

    def _check_header(self, view: memoryview) -> PollResult | None:
        if len(view) < self.layout.record_size:
            return PollResult(PollStatus.TORN, record=0, reason="short read of the header")
        try:
            rec = parse_record(view)
        except BadRecord as exc:
            return PollResult(PollStatus.TORN if exc.torn else PollStatus.CORRUPT, record=0, reason=exc.reason)
        if rec is None or rec.kind != KIND_HEADER:
            return PollResult(PollStatus.CORRUPT, record=0, reason="record 0 is no longer a header")
        if rec.generation != self.generation or rec.attempt != self.attempt:
            reason = f"header generation {rec.generation}, cursor generation {self.generation}"
            if rec.generation == self.generation:
                reason = f"header of another batch write of generation {rec.generation} (attempt {rec.attempt:08x}, the cursor's {self.attempt:08x})"
            res = PollResult(PollStatus.NEW_GENERATION, record=0, generation=rec.generation, reason=reason)
            if self.pair is not None:
                try:
                    self.pair.check(self.path, decode_header(rec), self.peer, role="standby")
                except ValueError:
                    pass  # (a new generation all the same: the batch read that follows names the damage)
                except ForeignWriter as exc:
                    res.foreign, res.reason = True, str(exc)
            return res
        try:
            decode_header(rec)
        except ValueError as exc:
            return PollResult(PollStatus.CORRUPT, record=0, reason=str(exc))
        return None

    def _classify(self, view: memoryview, recno: int, want: int, got: list[SessionEntry]) -> PollResult | None:
        """None: the record holds seq `want` and its entries were appended to `got`."""
        gen = self.generation
        try:
            rec = parse_record(view)
        except BadRecord as exc:
            return PollResult(PollStatus.TORN if exc.torn else PollStatus.CORRUPT, record=recno, reason=exc.reason)
        if rec is None:
            return PollResult(PollStatus.NOTHING_NEW)
        if rec.generation < gen or (rec.generation == gen and rec.attempt != self.attempt):
            # (another attempt: a failed batch write's leftover)
            self._stale = recno, f"generation {rec.generation}" if rec.generation < gen else f"another attempt of generation {gen}"
            return PollResult(PollStatus.NOTHING_NEW)
        if rec.generation > gen:
            return PollResult(
                PollStatus.NEW_GENERATION,
                record=recno,
                generation=rec.generation,
                reason=f"record of generation {rec.generation}, cursor generation {gen}",
            )
        if rec.kind != KIND_RING:
            return PollResult(PollStatus.CORRUPT, record=recno, reason=f"a {kind_name(rec.kind)} record of this generation in the ring")
        k = self.layout.ring_slots
        if rec.seq < 1 or (rec.seq - want) % k:
            return PollResult(PollStatus.CORRUPT, record=recno, reason=f"seq {rec.seq} does not belong in this record")
        if rec.seq < want:
            return PollResult(PollStatus.NOTHING_NEW)
        if rec.seq > want:
            return PollResult(PollStatus.LAPPED, record=recno, reason=f"expected seq {want}, found {rec.seq}: the writer overtook this reader")
        if rec.n_entries > self.e:
            return PollResult(PollStatus.CORRUPT, record=recno, reason=f"{rec.n_entries} entries, at most {self.e} fit")
        try:
            got.extend(decode_payload(rec.payload, rec.n_entries))
        except ValueError as exc:
            return PollResult(PollStatus.CORRUPT, record=recno, reason=str(exc))
        return None

    def _overtaken(self, f: FreshReader, want: int) -> PollResult | None:
        """The awaited record is stale: TORN if a record further on already holds a later seq of
        this generation (the awaited one written over late by an earlier writer, or a write in
        progress) and the awaited one, read again, still does not hold `want`; None otherwise. One
        record a poll, at 1, 2, 4 ... slots on (the next distance each poll, the same one again
        while it finds one)."""
        assert self._stale is not None
        lay, k = self.layout, self.layout.ring_slots
        spans = max(1, (k - 1).bit_length())  # distances 1, 2, 4 ... below k
        d = 1 << (self._probe % spans)
        if d >= k:
            return None  # (a ring of one slot: nothing further on)
        recno = lay.ring_first + (want - 1 + d) % k
        view = f.read(recno, 1)
        try:
            rec = parse_record(view) if len(view) == lay.record_size else None
        except BadRecord:
            rec = None  # (its own poll will say what it is)
        mine = rec is not None and rec.kind == KIND_RING and (rec.generation, rec.attempt) == (self.generation, self.attempt)
        if rec is None or not mine or rec.seq <= want or (rec.seq - want) % k != d:
            self._probe += 1
            return None
        seq, (stale, what) = rec.seq, self._stale
        # the awaited record read again: an ordinary write of seq `want` and on (the ring's first
        # pass) landing between the two reads is no damage; the next poll reads it as new
        again = f.read(stale, 1)
        try:
            now = parse_record(again) if len(again) == lay.record_size else None
        except BadRecord:
            now = None
        if now is not None and now.kind == KIND_RING and (now.generation, now.attempt, now.seq) == (self.generation, self.attempt, want):
            return None
        return PollResult(
            PollStatus.TORN,
            record=stale,
            reason=f"holds a record of {what} where seq {want} of generation {self.generation} belongs, but record {recno}"
            f" already holds seq {seq}: written over late by an earlier writer, or a write still in progress",
        )
