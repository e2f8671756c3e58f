"""The active's side of the takeover file: batch write (113) and the ring (114).

`TakeoverWriter` is synchronous and single-threaded; daemons reach it through
`hsb.takeover.store.TakeoverStore`, which runs it off the event loop.

Batch write, in this order (why: docs/takeover-file.md, "Crash safety"):
1. records 1..B, each tagged with the new generation and a new random attempt, then fdatasync;
2. record 0 (startup id, B, the new generation and attempt), then fdatasync;
only then may the caller send BATCH WRITE COMPLETE. The attempt tells two tries
of one generation apart: a failed try's generation is burned only in this
process, so a writer after a restart or on the other host may write it again.

Ring with group commit: `append_group` packs the entries of one group into as
few records as possible (E per record), writes them as one or two runs of
whole records (two when the run wraps from N-1 back to B+1) and syncs once.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from collections.abc import Sequence

import structlog

from hsb import faults
from hsb.takeover.errors import FileGone, ForeignWriter, HeaderCorrupt, NoBatchWritten, StaleGroup
from hsb.takeover.fileio import RecordWriter, check_file, scan_generation, torn_header_taken
from hsb.takeover.layout import (
    ENTRY_SIZE,
    KIND_BATCH,
    KIND_RING,
    Layout,
    batch_records_for,
    entries_per_record,
    size_check,
)
from hsb.takeover.pair import Pair
from hsb.takeover.records import (
    Header,
    SessionEntry,
    encode_entries,
    encode_header,
    encode_payload,
    pack_record,
)

log = structlog.get_logger("hsb.takeover")

GEN_MAX = 0xFFFF_FFFF
_CHUNK_BYTES = 1 << 20  # batch records are written in runs of about this size


class TakeoverWriter:
    """Writes one takeover file. Open it at start (the size check runs then)."""

    def __init__(
        self,
        path: str,
        *,
        terminals: int | None = None,
        record_size: int | None = None,
        records: int | None = None,
        host_name: str | None = None,
        pair_tag: int | None = None,
    ) -> None:
        """`terminals`: this host's own total terminal count; fixes B and runs the
        size check (TakeoverFileTooSmall). None: B is sized to each batch (tools, tests).
        `record_size`/`records`: the config's values, checked against the file.
        `pair_tag`: the pair's (hsb.takeover.pair), written into every header; with it a
        batch write over another pair's header is refused (ForeignWriter). None: no check (tools)."""
        self.path = os.fspath(path)
        self.host_name = host_name if host_name is not None else socket.gethostname()
        self.pair = Pair(self.host_name, pair_tag) if pair_tag is not None else None
        try:
            header = check_file(self.path, record_size, records, terminals)
            self.record_size, self.records, self.generation = header.record_size, header.records, header.generation
        except HeaderCorrupt:
            # A crash while record 0 was being rewritten: recover rather than refuse to serve.
            if record_size is None or (records is not None and not torn_header_taken(self.path, records, record_size)):
                raise
            self.record_size = record_size
            # the config's count, not the file's size (a file made larger than configured): the
            # next batch writes it into record 0, and the other host checks it against its own
            self.records = records if records is not None else os.stat(self.path).st_size // record_size
            self.generation = self._scan_max_generation()
            log.warning("takeover_header_recovered", path=self.path, generation=self.generation)
        self.terminals = terminals
        self.entry_size = ENTRY_SIZE
        self.e = entries_per_record(self.record_size, self.entry_size)
        self.own_batch_records: int | None = None
        if terminals is not None:
            self.own_batch_records = size_check(self.records, terminals, self.record_size, path=self.path).batch_records
        self.attempt = 0  # the last batch write's (records.Header.attempt)
        self.layout: Layout | None = None  # set by the first batch write
        self.next_seq = 0  # 0: no batch written by this writer yet
        self._owed: list[tuple[int, bytes]] = []  # (seq, record) of a failed ring group
        self._io = RecordWriter(self.path, self.record_size)

    def close(self) -> None:
        self._io.close()

    def __enter__(self) -> TakeoverWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """Sequence number of the last ring record written (0: none in this generation)."""
        return max(0, self.next_seq - 1)

    def _scan_max_generation(self) -> int:
        """Highest generation in any record (header recovery; reads the whole file once)."""
        return scan_generation(self.path, self.record_size, self.records)[0]

    def _reopen_if_replaced(self) -> None:
        """The file at the path is no longer the one open here (recreated by `hsbctl file create
        --force`, which renames a new file into place; on NFS the old handle goes stale): check
        the new one as at start and write it from now on. Else every batch would go into the
        old file, unlinked, and the standby would read none."""
        try:
            now = os.stat(self.path)
            mine = os.fstat(self._io.fd)
            same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            raise FileGone(
                f"takeover file {self.path} is gone (deleted, or the storage it is on not mounted: findmnt): no standby can follow"
                f" until it is there; create it again with `hsbctl file create {self.path} --records {self.records} --record-size"
                f" {self.record_size}`, as the daemons' user (sudo -u hsb: one root makes, hsbd cannot open), no daemon stopped:"
                " the active writes it at the standby's next request"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ESTALE, errno.EBADF):
                raise
            same = False
        if same:
            return
        h = check_file(self.path, self.record_size, self.records, self.terminals)  # a wrong file is refused as at start
        if self.terminals is not None:
            self.own_batch_records = size_check(h.records, self.terminals, self.record_size, path=self.path).batch_records
        log.warning("takeover_file_replaced", path=self.path, records=h.records, msg="the file was recreated: the new one is written from now on")
        self._io.close()
        self._io = RecordWriter(self.path, self.record_size)
        self.records = h.records
        self.layout, self.next_seq, self._owed = None, 0, []

    def batch_write(self, startup_id: int, entries: Sequence[SessionEntry], clear: int | None = None, peer: str | None = None) -> Header:
        """Batch takeover (S205-S206): the whole fast-switch link into records 1..B, durably.

        `peer`: the other host's name (the peer link's), for the check of the header's writer:
        a header another pair wrote raises ForeignWriter and nothing is written (ring writes
        stop too: NoBatchWritten until a batch write succeeds).

        `clear`: a record the standby found damaged (torn or corrupt) where it waited for the
        ring, written empty in the same sync as the batch. A batch rewrites only records 0..B
        and starts the ring over at seq 1, so damage further on (a crash mid ring write, a
        burned generation's batch records) would stay until the ring came round to it, and a
        standby waiting there would ask for a resync at every pass.

        Returns the header written; BATCH WRITE COMPLETE may be sent once it returns.
        """
        t0 = time.perf_counter()
        r = self.record_size
        encoded = encode_entries(entries, self.entry_size)
        self._reopen_if_replaced()
        needed = batch_records_for(len(encoded), r, self.entry_size)
        b = self.own_batch_records if self.own_batch_records is not None else needed
        if needed > b:
            raise ValueError(
                f"{len(encoded)} session entries do not fit B={b} batch records of {self.e} entries "
                f"(this writer was opened for {self.terminals} terminals)"
            )
        if self.own_batch_records is None:
            size_check(self.records, len(encoded), r, path=self.path)
        # above the file's generation too, not only this writer's: the other host may have
        # written batches since this one last did (this host was demoted, then made active
        # again in the same process); its ring records of a generation reused here would read
        # as new to a standby following this batch, and ours as old
        try:
            found = check_file(self.path, r)
        except HeaderCorrupt:  # a crash while record 0 was rewritten: the highest in the records
            on_file = self._scan_max_generation()
        else:
            on_file = found.generation
            if self.pair is not None:
                try:
                    self.pair.check(self.path, found, peer, role="active")
                except ForeignWriter:
                    self.layout, self.next_seq, self._owed = None, 0, []  # nor ring records after another pair's batch
                    raise
        last = max(self.generation, on_file)
        gen = last + 1 if last < GEN_MAX else 1
        # From here on a failure leaves the file in an unknown state: burn the
        # generation (a retry must not reuse it, or a reader could mix records of
        # two attempts) and stop ring writes until a batch write succeeds. The burn
        # is this process's only: a writer that never saw this try (after a restart,
        # on the other host) goes by the header and writes the generation again, so
        # every try has an attempt of its own too, in the header and its every record.
        attempt = new_attempt(self.attempt)
        self.generation, self.attempt, self.layout, self.next_seq, self._owed = gen, attempt, None, 0, []
        per_chunk = max(1, _CHUNK_BYTES // r)
        for first in range(1, b + 1, per_chunk):
            count = min(per_chunk, b + 1 - first)
            buf = bytearray(count * r)
            for i in range(count):
                rec = first + i
                part = encoded[(rec - 1) * self.e : rec * self.e]
                pack_record(KIND_BATCH, gen, rec, encode_payload(part), r, len(part), into=buf, at=i * r, attempt=attempt)
            self._io.write(first, buf)
            faults.point("host.mid_batch_write")
        cleared = clear if clear is not None and b < clear < self.records else None  # (within the batch: written over already)
        if cleared is not None:
            self._io.write(cleared, bytes(r))  # never written, as far as a reader can tell
        if b or cleared is not None:
            self._io.sync()  # the batch is durable before any header points at it
        header = Header(
            record_size=r,
            records=self.records,
            batch_records=b,
            generation=gen,
            startup_id=startup_id,
            batch_entries=len(encoded),
            entry_size=self.entry_size,
            written_at_ms=int(time.time() * 1000),
            writer_host=self.host_name,
            pair_tag=self.pair.tag if self.pair is not None else 0,
            attempt=attempt,
        )
        self._io.write(0, encode_header(header))
        self._io.sync()
        self.layout = header.layout
        self.next_seq = 1
        log.info(
            "takeover_batch_written",
            path=self.path,
            generation=gen,
            attempt=f"{attempt:08x}",
            batch_records=b,
            entries=len(encoded),
            startup_id=startup_id,
            cleared=cleared,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        return header

    def append_group(self, entries: Sequence[SessionEntry], generation: int | None = None) -> tuple[int, int]:
        """Sequential takeover (S210) with group commit: one sync for the whole group.

        `generation`: the one the group was taken under (the caller's view when it queued
        it): a group taken before a newer batch write raises StaleGroup, as its entries are
        in that batch or older (written under the new generation, they would set terminals
        back to older states on the standby).

        Returns (first_seq, last_seq) of the ring records written; (n, n-1) for
        an empty group. Raises NoBatchWritten before the first batch write (and
        after a failed one).

        If it raises an OSError, its sequence numbers stay used and its records
        are owed: the next call writes exactly those bytes again, and syncs them,
        before it numbers its own, because a reader may already have seen some of
        them (so a seq never changes content). If that fails too, the call's own
        entries get no sequence numbers: what is owed stays one group, however long
        the storage fails (not a group more at every retry, which would grow
        without bound and, written at last, lap the ring). Callers may resend the
        failed entries; a reader then sees them twice, in order, which replays the
        same session states.
        """
        if self.layout is None:
            raise NoBatchWritten("no batch has been written to the takeover file yet; ring writes start after it")
        if generation is not None and generation != self.generation:
            raise StaleGroup(f"a ring group of generation {generation} after the batch write of generation {self.generation}: not written")
        lay, r, e = self.layout, self.record_size, self.e
        encoded = encode_entries(entries, self.entry_size)  # a ValueError here changes nothing
        if self._owed:  # a failed group's records first, on their own
            self._write_ring(self._owed, lay)
            faults.point("host.mid_ring_group")
            self._io.sync()
            self._owed = []
        first_seq = self.next_seq
        nrec = -(-len(encoded) // e)
        recs: list[tuple[int, bytes]] = []
        for i in range(nrec):
            part = encoded[i * e : (i + 1) * e]
            seq = first_seq + i
            recs.append((seq, bytes(pack_record(KIND_RING, self.generation, seq, encode_payload(part), r, len(part), attempt=self.attempt))))
        if not recs:
            return first_seq, first_seq - 1
        self.next_seq = first_seq + nrec
        try:
            self._write_ring(recs, lay)
            faults.point("host.mid_ring_group")
            self._io.sync()
        except BaseException:
            self._owed = recs
            raise
        self._owed = []
        log.debug("takeover_ring_group", first_seq=first_seq, last_seq=first_seq + nrec - 1, entries=len(encoded))
        return first_seq, first_seq + nrec - 1

    def _write_ring(self, recs: list[tuple[int, bytes]], lay: Layout) -> None:
        """pwrite (seq, record) pairs, one call per run of adjacent slots."""
        k, per = lay.ring_slots, max(1, _CHUNK_BYTES // self.record_size)
        run: list[bytes] = []
        start = prev = -1
        for seq, data in recs:
            slot = (seq - 1) % k
            if run and (slot != prev + 1 or len(run) >= per):
                self._io.write(lay.ring_first + start, b"".join(run))
                run = []
            if not run:
                start = slot
            run.append(data)
            prev = slot
        if run:
            self._io.write(lay.ring_first + start, b"".join(run))

    @property
    def owed_records(self) -> int:
        """Ring records of a failed group still to be rewritten by the next append."""
        return len(self._owed)


def new_attempt(previous: int = 0) -> int:
    """A batch write's attempt: random, never 0 (an earlier version's), never `previous`."""
    while True:
        a = secrets.randbits(32)
        if a and a != previous:
            return a
