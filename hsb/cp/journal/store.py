"""The CP journal's files: append-only segments, group commit off the event loop, a deadline,
and dropping settled segments (docs/cp-journal.md). This module appends the records, starts each
group commit and keeps the segments' books; what follows a group commit (its acknowledgements,
a retry, the deadline, the journal's health) is hsb.cp.journal.completion's.

The event loop appends records (`append`) and learns when they are durable (a callback per
caller that asked). Everything appended during one turn of the loop, and whatever arrives while
a write is in progress, goes out in one write and one `fdatasync`: group commit (a flush of
more than one group record, `_groups`, as one write and one sync per group record, in order).
Where the kernel runs it, a group goes as one io_uring chain (a write durable by its own
RWF_DSYNC flag, the generation check: hsb.uring), its completion an eventfd the loop watches; a new segment, deletions, a flush
of several group records and any group whose chain did not end cleanly go through a writer
thread (`journal_io`; both paths in hsb.cp.journal.writer). A write that fails
(a full disk, EIO) or takes longer than `timeout` (a hung mount) leaves its records pending:
nothing waiting on them proceeds (no ack goes out for what is not durable); the journal reports itself `stalled` or `failing` and retries by itself, and carries
on once the storage answers again.

Segments: `seg-GGGGGGGG-NNNNNNNN.hsbj` (G: this CP's generation, hsb.cp.journal.generation),
each starting with a checkpoint record; the first one of a generation holds the takeover
snapshot (every live record, then `se`), so nothing older is needed once it is durable. After
every group commit the writer checks that no newer CP has taken the journal over before it
reports the group durable: a superseded CP acknowledges nothing more (`on_superseded`). The caller counts the
live records of each segment (`pin` / `unpin`): a message held, a reply kept. The oldest segment
is deleted once nothing in it is live; the caller carries the few live records of an old segment
forward (appends them again) so that it can go. Only the oldest goes first: a record that
settles another always sits in the same or a newer segment, so replay never sees a settled
message without the record that settled it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from hsb import faults, uring
from hsb.bootclock import boot_now as boot_now  # whether a clean check vouches: a suspend of the machine counts (`vouches`)
from hsb.cp.journal.completion import LAZY_S, SYNC_BUCKETS, Completion
from hsb.cp.journal.format import GROUP_BYTES, GROUP_MAX, HEADER, group, packer
from hsb.cp.journal.generation import Generations, Superseded
from hsb.cp.journal.recovery import ck_extra
from hsb.cp.journal.vouching import Vouching
from hsb.cp.journal.writer import IO_MODES, Done, GroupWriter, IOReady
from hsb.worker import Worker

log = structlog.get_logger("hsb.cp")

SEGMENT_BYTES = 1024 * 1024  # a segment is closed past this size of records of its own
ROOM_SLACK = 64 * 1024  # a new segment's file is allocated this much past where it closes (the last group)
CK_SHARE = 4  # ... and past this many times its checkpoint: checkpoints stay a fifth of what is written
IDLE_ROTATE_BYTES = 16 * 1024  # a settled current segment with this much beyond its checkpoint is closed when idle
KEEP_SEGMENTS = 4  # more than this many: the oldest one's live records are carried forward ...
CARRY_SHARE = 4  # ... if at most this fraction (1/4) of its records is live: else carrying gains nothing
CARRY_PER_TICK = 16  # segments carried forward a tick at most: more than one a second may close
REC_HEADER = HEADER.size  # counted per record in `sizes`: as if each went alone (a group shares one)
# A CP answers the hosts' heartbeats (renewing the active's lease) only while its last generation
# check that came back clean began less than its journal's timeout ago (and at least this long):
# a CP whose check hangs (its journal's mount gone, behind a partition) may already be superseded,
# and must not keep an old active's lease alive beside the new CP's active (docs/cp-journal.md,
# "No lease without a clean check"). Storage slower than that is stalled anyway: nothing is acked.
CHECK_FRESH_MIN_S = 1.0


def _groups(pending: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Pending (segment, payload) as what is written: (segment, group record), a group per
    segment of at most GROUP_MAX records and about GROUP_BYTES (a record larger than that goes
    alone, as any record did before groups; hsb.cp.journal.format.group). Several are written
    and synced one after the other (hsb.cp.journal.writer `_write`): a crash tears only the last."""
    out: list[tuple[int, bytes]] = []
    seg = pending[0][0]
    bodies: list[bytes] = []
    size = 0
    for s, b in pending:
        if bodies and (s != seg or len(bodies) >= GROUP_MAX or size + len(b) > GROUP_BYTES):
            out.append((seg, group(bodies)))
            bodies, size = [], 0
        seg = s
        bodies.append(b)
        size += len(b)
    out.append((seg, group(bodies)))
    return out


class Journal(Completion, GroupWriter, Vouching):  # (Completion first: its `_written` is what GroupWriter's ends in)
    """Durable, ordered append for the CP (see the module docstring)."""

    durable = True
    _hold = False  # (hold(): test only)

    def __init__(
        self,
        d: Path,
        *,
        timeout: float = 2.0,
        segment_bytes: int = SEGMENT_BYTES,
        generation: int = 0,
        io: str = "auto",
        io_ready: IOReady | None = None,
    ) -> None:
        if io not in IO_MODES:
            raise ValueError(f"journal io {io!r}: one of {', '.join(IO_MODES)}")
        self.dir = d
        self.io = io
        self.io_used = "thread"  # what group commits go through: "io_uring" once its ring is up
        self._ring: uring.Ring | None = None
        # its ring set up before this CP took its generation (hsb.cp.journal.writer.open_ring);
        # None: by `open`, before it writes anything
        self._io_ready = io_ready
        self._ring_loop: asyncio.AbstractEventLoop | None = None
        self._ring_failed = False  # the last group through the ring failed: the next goes through the thread
        self._gen_paths: tuple[bytes, bytes] = (b"", b"")
        self.gen = generation  # this CP's generation: its segments carry it, a newer one stops it
        self.journal_id: str | None = None  # the journal's identity (generation.JOURNAL_ID), said to the hosts
        self.takeover: str | None = None  # and the id of the takeover that made its generation (Generations.takeover)
        self.gens = Generations(d)
        self.first_seg = 0  # this generation's first segment (the takeover snapshot)
        self.superseded: Superseded | None = None
        self._stopping = False  # close() or stop() began: nothing more goes to the writer
        self.on_superseded: Callable[[Superseded], None] = lambda exc: None
        self._beating = False
        self._beat_exec = Worker("hsb-journal-beat")
        self.checked_at: float | None = None  # when the last clean generation check began (boot_now)
        self.fresh_s = max(CHECK_FRESH_MIN_S, timeout)  # how long a clean check vouches for this CP (`vouches`)
        self._unvouched_at: float | None = None  # since when heartbeats go unanswered (`vouches`)
        self.lease_answers_withheld = 0
        self.timeout = timeout
        self.segment_bytes = segment_bytes
        self.seg = 0  # the segment new records go to
        self.live: dict[int, int] = {}  # segment -> live records in it
        self.records: dict[int, int] = {}  # segment -> records in it (live or not)
        self.sizes: dict[int, int] = {}  # segment -> bytes written to it (including pending)
        self.ck_sizes: dict[int, int] = {}  # segment -> bytes of its checkpoint
        self.segments: deque[int] = deque()  # existing segment files, oldest first
        self._pending: list[tuple[int, bytes]] = []  # (segment, record payload) not yet written
        self._callbacks: list[Done] = []
        self._inflight: list[tuple[int, bytes]] | None = None  # (segment, group record) being written
        self._inflight_n = 0  # records in it
        self._again: list[tuple[int, bytes]] = []  # a group that failed: written again, in place, first
        self._again_n = 0
        self._recheck = False  # a group is durable but its generation check failed: checked again first
        self._retry = 0
        # a failed group's backoff: until it fires no group starts (an urgent append waits for it
        # too, or a failing disk would be tried again at the rate messages arrive)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._late_looked = False
        self._flush_scheduled = False
        self._urgent = False  # something pending that a caller waits on (not only lazy records)
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._exec = Worker("hsb-journal")
        # the writer thread's, or the ring's for a chain: one group is out at a time
        self._fds: dict[int, int] = {}
        self._offset: dict[int, int] = {}  # durable end of each open segment
        self._name_pending: set[int] = set()  # segments created whose name is not yet durable (directory fsync)
        self._chain_abandoned = False  # a chain hung at a stop: its descriptors are never closed
        self._deletions: list[int] = []
        # after a deletion the storage refused, every deletion waits for this timer (a backoff),
        # groups meanwhile go on without them (and through io_uring)
        self._deletions_held: asyncio.TimerHandle | None = None
        self._delete_retry = 0
        self.state = "ok"  # ok | stalled | failing
        self.error: str | None = None
        self.last_sync_at: float | None = None  # wall clock
        self.last_sync_s: float | None = None
        self.syncs = 0
        self.records_written = 0  # records made durable by the group commits (syncs) so far
        self.stalls = 0
        self.sync_counts = [0] * len(SYNC_BUCKETS)  # how many group commits took at most each bound
        self.sync_sum = 0.0
        self._batch_t0 = 0.0
        self.on_health: Callable[[str], None] = lambda state: None
        self.checkpoint: Callable[[], list[Any]] = lambda: ["ck", 0, None, 0, {}]  # the caller's, for a new segment
        self._packer: Callable[[list[Any]], bytes] = packer()

    # ------------------------------------------------------------------ opening
    def open(self, first: int, snapshot: list[list[Any]], garbage: list[Path]) -> int:
        """After recovery, before anything is accepted: this generation's first segment `first`
        (above every segment number in the directory), holding the checkpoint, the `snapshot`
        (every live record) and `se`, written and synced now; then every older segment file
        goes. Returns the segment the snapshot's records are in."""
        # the ring first: a CP that cannot serve stops before its snapshot is durable and the
        # older generations are gone (`journal_io = "io_uring"` whose ring cannot be set up)
        self.prepare_io()
        self.seg = self.first_seg = first
        self._new_segment()
        for rec in snapshot:
            self.append_sync(rec)
        self.append_sync(["se"])
        # pinned: the held messages ("a") and kept replies ("r"), each unpinned as it settles;
        # not the confirmation points ("c"), which nothing unpins (as in any other segment), or
        # this segment, and every one after it, would never be dropped
        self.live[first] = sum(1 for rec in snapshot if rec[0] in ("a", "r"))
        self.records[first] += len(snapshot) + 1  # and its "se"
        batch, self._pending = self._pending, []
        self._write(_groups(batch))  # blocking: at start, before any terminal is accepted
        # a CP that took the next generation meanwhile may have listed the journal before this
        # snapshot was complete, and be reading the generation before it: deleting that now would
        # lose it. Superseded here, this CP deletes nothing and stops (hsb.cp.server.take_over).
        t0 = boot_now()
        self.gens.check(self.gen)
        self.checked_at = t0
        self.gens.mark_snapshot(self.gen)  # (before older generations go: recovery tells damage from a torn snapshot by it)
        # the snapshot is durable and checked: what is left of earlier generations is garbage,
        # which a later start lists again. A file that cannot go now (EIO, a permission) is
        # said and left, never a reason to stop: every start would take a generation, write
        # its snapshot and fail on the same file again
        undeleted: list[str] = []
        for path in garbage:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                undeleted.append(f"{path.name}: {exc.strerror or exc}")
        try:
            self.gens.prune(self.gen)
        except OSError as exc:
            undeleted.append(f"generation files: {exc.strerror or exc}")
        if undeleted:
            log.warning(
                "journal_garbage_delete_failed",
                dir=str(self.dir),
                files=undeleted[:5],
                count=len(undeleted),
                msg="earlier generations' files left in the journal directory; the next start tries again (check the storage)",
            )
        self._start_ring()
        return first

    def append_sync(self, payload: list[Any]) -> None:
        """Queue a record without scheduling a flush (the caller writes the batch itself)."""
        rec = self._packer(payload)
        self._pending.append((self.seg, rec))
        self.sizes[self.seg] += len(rec) + REC_HEADER

    def _new_segment(self) -> None:
        n = self.seg
        ck = self.checkpoint()
        prev = self.segments[-1] if self.segments else None
        if prev == n - 1 and prev in self.records:
            # how many records the segment it closes holds (final: nothing is appended to it from
            # now on): a recovery that finds fewer there knows its end was lost (zeros where
            # records were, on storage that lost a write), which reads as a clean end otherwise
            ck = [*ck[:5], {**ck_extra(ck), "closed": [prev, self.records[prev]]}]
        self.segments.append(n)
        self.live.setdefault(n, 0)
        self.records[n] = 1  # its checkpoint
        self.sizes[n] = 0
        rec = self._packer(ck)
        self._pending.append((n, rec))
        self.sizes[n] += len(rec) + REC_HEADER
        self.ck_sizes[n] = len(rec) + REC_HEADER

    # ------------------------------------------------------------------ appending (event loop)
    def append(self, payload: list[Any], done: Done | None = None, lazy: bool = False) -> int:
        """Queue a record (hsb.cp.journal.recovery lists the kinds); `done()` runs once it (and
        everything before it) is durable. Returns the segment it goes to.

        `lazy`: nothing outside the CP waits on this record (a kept reply already sent, a
        confirmation): it does not start a group commit of its own but rides with the next one,
        or is written LAZY_S later. A group of only such records would otherwise occupy the
        writer just when the next message's record, which its ack waits on, arrives."""
        rec = self._packer(payload)
        seg = self.seg
        self._pending.append((seg, rec))
        self.sizes[seg] += len(rec) + REC_HEADER
        self.records[seg] += 1
        if done is not None:
            self._callbacks.append(done)
        if lazy:
            if self._lazy_timer is None and not self._flush_scheduled and self._inflight is None:
                self._lazy_timer = asyncio.get_running_loop().call_later(LAZY_S, self._lazy_due)
        else:
            self._urgent = True
            if not self._flush_scheduled and self._inflight is None and self._retry_timer is None:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        # past the size in records of its own: a checkpoint (one entry per terminal) may itself be
        # larger than a small segment, and counting it would start a new segment at every append.
        # Small segments keep a restart's replay short (it reads the live segments whole); at
        # 100,000 terminals the checkpoint is ~1.5 MB, so a segment then holds CK_SHARE times that
        ck = self.ck_sizes.get(seg, 0)
        own = self.sizes[seg] - ck
        if own >= self.segment_bytes and own >= CK_SHARE * ck:
            self.seg += 1
            self._new_segment()
        return seg

    def pin(self, seg: int) -> None:
        self.live[seg] = self.live.get(seg, 0) + 1

    def unpin(self, seg: int) -> None:
        n = self.live.get(seg, 0) - 1
        self.live[seg] = max(n, 0)
        if n <= 0 and self.segments and seg == self.segments[0]:
            self._drop_settled()

    def _drop_settled(self) -> None:
        while len(self.segments) > 1 and self.live.get(self.segments[0], 0) <= 0:
            s = self.segments.popleft()
            self.live.pop(s, None)
            self.records.pop(s, None)
            self.sizes.pop(s, None)
            self.ck_sizes.pop(s, None)
            self._deletions.append(s)
        if self._deletions and self._deletions_held is None and self._inflight is None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def maybe_rotate_idle(self) -> None:
        """Called now and then: a settled current segment of some size is closed, so that the
        journal shrinks to a checkpoint when traffic stops."""
        if len(self.segments) > 1 and self.live.get(self.segments[0], 0) <= 0:
            # settled when it closed (it was the only segment, so no unpin could drop it then),
            # and only an unpin of the oldest segment drops settled ones
            self._drop_settled()
        seg = self.seg
        grown = self.sizes.get(seg, 0) - self.ck_sizes.get(seg, 0)
        if (
            self.live.get(seg, 0) == 0
            and grown >= IDLE_ROTATE_BYTES
            and not self._pending
            and not self._again
            and not self._recheck
            and self._inflight is None
        ):
            self.seg += 1
            self._new_segment()
            self._drop_settled()
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def to_clean(self, most: int = CARRY_PER_TICK) -> set[int]:
        """The oldest segments whose live records the caller carries forward so that they can
        go (only the oldest is ever deleted, so a prefix of them): from the oldest on, each one
        pinned by a few live records (a quarter or fewer of its own), or any while the journal
        as a whole is mostly settled (its live records a quarter or fewer of all it holds:
        terminals away for hours pin an old segment, and the settled ones behind it would stay
        with it); at most `most` a call, never among the newest KEEP_SEGMENTS. A journal mostly
        live (a host away: messages held, not answered) is left: carrying would only write it
        again, and again each tick, as the copies fill new segments in turn."""
        n = len(self.segments) - KEEP_SEGMENTS
        if n <= 0:
            return set()
        live = self.live
        records = self.records
        mostly_settled = sum(live.values()) * CARRY_SHARE <= sum(records.values())
        out: set[int] = set()
        for s in itertools.islice(self.segments, n):
            pins = live.get(s, 0)
            if pins <= 0:
                continue  # (dropped with those before it)
            if not mostly_settled and pins * CARRY_SHARE > records.get(s, 0):
                break
            out.add(s)
            if len(out) >= most:
                break
        return out

    # ------------------------------------------------------------------ writing (writer thread)
    def hold(self) -> None:
        """Start no group commit until `release()` (test only: the crash point
        cp.reply_before_durable, a record that cannot have reached the disk when it fires)."""
        self._hold = True

    def release(self) -> None:
        if self._hold:
            self._hold = False
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self._stopping or (self._hold and faults.armed("cp.reply_before_durable")):
            return
        if self.superseded is not None:
            self._forget_pending()
            return
        if self._retry_timer is not None:  # a failed group's backoff: its timer flushes (`_retry_flush`)
            return
        deleting = self._deletions_held is None
        if self._inflight is not None or (not self._pending and not self._again and not (deleting and self._deletions) and not self._recheck):
            return
        framed = _groups(self._pending) if self._pending else []
        batch, self._again = self._again + framed, []
        self._inflight_n = self._again_n + len(self._pending)
        self._pending, self._again_n = [], 0
        callbacks, self._callbacks = self._callbacks, []
        deletions: list[int] = []
        if deleting:
            deletions, self._deletions = self._deletions, []
        self._urgent = False
        self._inflight = batch
        self._batch_t0 = boot_now()
        if self._timer is None:  # one timer serves many groups (not one armed and cancelled each)
            self.arm_deadline(self.timeout)
        if not deletions and self._through_ring(batch, callbacks):
            return
        self._exec.call(lambda: self._write_and_delete(batch, deletions), lambda took, exc: self._written(took, exc, batch, callbacks, deletions))

    # ------------------------------------------------------------------ status
    @property
    def pending(self) -> int:
        """Records appended and not yet durable."""
        return len(self._pending) + self._again_n + (self._inflight_n if self._inflight is not None else 0)

    def size(self) -> int:
        return sum(self.sizes.values())

    def _segment_room(self, seg: int) -> int:
        """What a segment is allocated with when its file is created (hsb.fsutil.preallocate):
        about what it holds when it closes (`append`), its checkpoint and a last group over."""
        ck = self.ck_sizes.get(seg, 0)
        return max(self.segment_bytes, CK_SHARE * ck) + ck + ROOM_SLACK

    def status(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "durability": "fsync",
            "io": self.io_used,
            "generation": self.gen,
            "id": self.journal_id,  # (the journal's identity: the hosts follow one; hsb.cp.journal.generation)
            "takeover": self.takeover,  # (the id of the takeover that made its generation)
            "state": self.state,
            "error": self.error,
            "segments": len(self.segments),
            "size_bytes": self.size(),
            "records_live": sum(self.live.values()),
            "pending_records": self.pending,
            "last_sync_at": self.last_sync_at,
            "last_sync_ms": None if self.last_sync_s is None else round(self.last_sync_s * 1000, 3),
            "syncs": self.syncs,
            "records_written": self.records_written,
            "stalls": self.stalls,
            "generation_checked_ms_ago": None if self.checked_at is None else round((boot_now() - self.checked_at) * 1000, 1),
            "lease_answers_withheld": self.lease_answers_withheld,
        }

    async def drain(self, timeout: float = 2.0) -> bool:
        """At a clean stop: write what is pending (lazy records too) and wait for it, up to
        `timeout`; True when nothing is left unwritten."""
        deadline = time.monotonic() + timeout
        while (
            (self._pending or self._again or self._recheck or self._inflight is not None) and self.superseded is None and time.monotonic() < deadline
        ):
            if self._inflight is None and not self._flush_scheduled:
                self._flush()
            await asyncio.sleep(0.002)
        return not self._pending and not self._again and not self._recheck and self._inflight is None

    def close(self) -> None:
        """Blocking, for callers whose event loop may wait (benchmarks, tests): up to `timeout`
        for a write still out, then the files are closed (not under a write still running)."""
        self._stopping = True
        idle = self._ring is None or self._ring.wait(self.timeout)
        self._closed(self._exec.shutdown(wait=True, timeout=self.timeout) and idle)

    async def stop(self, timeout: float | None = None) -> None:
        """The CP's stop: as `close()`, but the event loop keeps running while a write still
        out (a hung mount) gets `timeout` (default: the journal's) to return."""
        self._stopping = True
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._ring is not None and self._ring.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.002)  # the chain out completes through the loop's reader
        idle = self._ring is None or not self._ring.busy
        # the thread is idle unless a group went to it: its own share, even if the ring took the rest
        self._closed(await self._exec.stop(max(deadline - time.monotonic(), min(limit, 0.5))) and idle)

    def _closed(self, ended: bool) -> None:
        for h in (self._timer, self._lazy_timer, self._retry_timer):
            if h is not None:
                h.cancel()
        self._timer = self._lazy_timer = self._retry_timer = None
        self._beat_exec.shutdown()
        self._drop_prepared()
        if self._ring is not None:
            if self._ring.busy:
                self._ring.abandon()  # its buffers are kept: the kernel may still read them
                self._chain_abandoned = True
            self._drop_ring()
        if not ended or self._chain_abandoned:  # a write hung in the storage: its descriptors stay open, the process exits anyway
            log.warning("journal_close_abandoned_write", dir=str(self.dir), msg=f"a journal write did not return within {self.timeout:g} s")
            return
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
