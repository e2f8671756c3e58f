"""How a group commit of the CP journal reaches the disk (docs/cp-journal.md): as one io_uring
chain where the kernel runs it (the write at the segment's offset, durable by its own flag, and
the generation check's two `statx`; hsb.uring), else, and for what is rare or must be exact (a new
segment, deletions, a chain that did not end cleanly, a flush of several group records: each
synced before the next is written), on the writer thread.

A mixin of `hsb.cp.journal.store.Journal`: the files, offsets and the ring are the journal's;
this module keeps the path of the bytes apart from the records' bookkeeping. Either path ends
in `Journal._written` (hsb.cp.journal.completion) on the event loop, with the group's outcome.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import structlog

from hsb import faults, uring
from hsb.cp.journal.generation import Generations, gen_name
from hsb.cp.journal.recovery import segment_name
from hsb.fsutil import fsync_dir, preallocate
from hsb.worker import Worker

log = structlog.get_logger("hsb.cp")

Done = Callable[[], None]


class Unchecked(Exception):
    """The generation check after a group's write failed on the storage (not a newer CP): the
    group is durable and is not written again; only the check is, before its acks go out.
    `took`: the writer thread's write and sync before it (None: the check after a ring's chain,
    whose own time the caller has)."""

    took: float | None = None


class DeletionFailed(Exception):
    """A settled segment could not be deleted after its group was written and checked: the group
    is durable (its acks go, it is not written again); the deletions `left` are tried again, in
    order (an older segment always goes before a newer one)."""

    def __init__(self, took: float, left: list[int], why: OSError) -> None:
        super().__init__(f"deleting segment {left[0]}: {why}")
        self.took = took
        self.left = left


class JournalIOUnavailable(Exception):
    """`journal_io = "io_uring"` on a kernel (or under a seccomp filter) that does not run it."""


def check_io(io: str) -> str | None:
    """Why group commits cannot go through io_uring here (None: they can). Raises
    JournalIOUnavailable for `io = "io_uring"`. hsbcpd asks at its start, before it takes a
    generation: a CP that cannot serve must not fence the one that can."""
    why = "journal_io = thread" if io == "thread" else uring.available()
    if why is not None and io == "io_uring":
        raise _refused("this kernel does not run it", why)
    return why


IOReady: TypeAlias = "tuple[uring.Ring | None, str | None]"  # (the ring group commits go through, or None and why not)


def open_ring(io: str) -> IOReady:
    """The ring group commits will go through (`io`: "auto", "io_uring"), set up now, or None and
    why not ("thread" included: the log says which path they take). Raises JournalIOUnavailable
    for `io = "io_uring"` when it cannot be had. hsbcpd asks before it takes a generation, and
    `Journal.open` before it writes anything: the probe at the start is cached, and a ring that
    cannot be set up afterwards (ENOMEM, the memlock limit) found only after the takeover had
    fenced the old CP left nothing serving."""
    why = check_io(io)
    if why is None:
        try:
            return uring.Ring(), None
        except OSError as exc:
            why = f"io_uring_setup failed: {exc.strerror}"
            if io == "io_uring":
                raise _refused("its ring could not be set up", why) from exc
    return None, why


def _refused(what: str, why: str) -> JournalIOUnavailable:
    return JournalIOUnavailable(f'[cp] journal_io = "io_uring" but {what} ({why}); set journal_io = "auto" or "thread"')


IO_MODES = ("auto", "io_uring", "thread")
# what io_uring itself may answer where the storage is fine (an operation the filesystem will not
# run this way); EIO, ENOSPC and the like are the storage's, retried through the ring as through the thread
RING_ERRORS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.EFAULT, errno.EAGAIN})


class GroupWriter:
    """The I/O half of `Journal` (see the module docstring)."""

    # the journal's state that the writing uses (set in Journal.__init__)
    dir: Path
    io: str
    io_used: str
    gen: int
    gens: Generations
    _ring: uring.Ring | None
    _io_ready: IOReady | None  # (`prepare_io`)
    _ring_loop: asyncio.AbstractEventLoop | None
    _ring_failed: bool
    _gen_paths: tuple[bytes, bytes]
    _fds: dict[int, int]
    _offset: dict[int, int]
    _name_pending: set[int]
    _stopping: bool
    _inflight: list[tuple[int, bytes]] | None
    _exec: Worker

    def _written(self, took: float, exc: BaseException | None, batch: list[tuple[int, bytes]], callbacks: list[Done], deletions: list[int]) -> None:
        raise NotImplementedError  # hsb.cp.journal.completion's: the group's outcome, on the event loop

    def _segment_room(self, seg: int) -> int:
        raise NotImplementedError  # the journal's: the bytes a new segment is allocated with

    def prepare_io(self) -> None:
        """The ring set up (`open_ring`) unless given or set up already: before anything durable."""
        if self._io_ready is None:
            self._io_ready = open_ring(self.io)

    def _drop_prepared(self) -> None:
        """A ring set up and never started (a journal closed before `open` ended) closed."""
        ring = self._io_ready[0] if self._io_ready is not None else None
        self._io_ready = None
        if ring is not None and ring is not self._ring:
            ring.close()

    def _start_ring(self) -> None:
        """Group commits through io_uring from now on, if the kernel runs it (the ring set up by
        `prepare_io`); else through the writer thread."""
        if self._ring is not None:
            return
        self.prepare_io()
        assert self._io_ready is not None
        self._ring, why = self._io_ready
        self._io_ready = (None, why)
        if self._ring is None:
            log.info("journal_io", io="thread", why=why)
            return
        self.io_used = "io_uring"
        own, nxt = self.dir / gen_name(self.gen), self.dir / gen_name(self.gen + 1)
        # the next generation's file first, then our own: newer CPs prune generation files oldest
        # first, so a check that meets a prune finds either the next one there or ours gone
        self._gen_paths = (os.fsencode(nxt), os.fsencode(own))
        log.info("journal_io", io="io_uring")

    def _through_ring(self, batch: list[tuple[int, bytes]], callbacks: list[Done]) -> bool:
        """The group as one io_uring chain (a durable write, then the generation check's two
        statx), when it can go so: one record (one group record) for a segment already open, no
        fault being injected. False: the writer thread takes it (a new segment, deletions, a
        retry, a flush split into several group records: the thread syncs each before it writes
        the next, so that a crash can tear only the last, `_write`)."""
        ring = self._ring
        if ring is None or self._ring_failed or len(batch) != 1:  # none: a check again only
            return False
        seg, data = batch[0]
        if seg not in self._fds or self._name_pending or faults.armed("cp.mid_journal_group"):
            return False
        injected = faults.storage_faults()
        if injected is not None and not injected.quiet():
            return False  # a test's hung mount or EIO: the thread's path is the one that injects it
        loop = asyncio.get_running_loop()
        if self._ring_loop is not loop:
            if self._ring_loop is not None and not self._ring_loop.is_closed():
                self._ring_loop.remove_reader(ring.efd)
            loop.add_reader(ring.efd, ring.reap)
            self._ring_loop = loop
        t0 = time.perf_counter()
        try:
            ring.write_sync_check(
                self._fds[seg], data, self._offset[seg], self._gen_paths, lambda res: self._chained(res, t0, seg, len(data), batch, callbacks)
            )
        except OSError as exc:
            log.error("journal_io_uring_failed", error=str(exc), msg="group commits go through the writer thread from now on")
            self._drop_ring()
            return False
        return True

    def _chained(self, res: list[int], t0: float, seg: int, size: int, batch: list[tuple[int, bytes]], callbacks: list[Done]) -> None:
        """A group's io_uring chain completed: [bytes written, its sync, statx next, statx own]."""
        took = time.perf_counter() - t0
        if self._stopping:  # a blocking close() reaped it: nothing more is reported
            self._inflight = None
            return
        wrote, synced, nxt, own = res
        if wrote == size and synced == 0:
            self._offset[seg] += size
            if own == 0 and nxt == -errno.ENOENT:  # still ours: the group is durable, its acks may go
                faults.point("cp.after_journal_write")
                self._written(took, None, batch, callbacks, [])
                return
            # the next generation's file is there, or a statx failed: the full check (on the
            # thread) names the newer CP, or raises the storage's error
            self._exec.call(self._check, lambda _, exc: self._written(took, exc, batch, callbacks, []))
            return
        # a short write (a full disk), the storage's error or the ring's own: the writer thread
        # does the group again in place, and reports the storage's error as it always has
        err = next((-r for r in res if r < 0 and r != -errno.ECANCELED), 0)
        if err in RING_ERRORS:  # io_uring's trouble, not the storage's: if the thread succeeds,
            self._ring_failed = True  # the ring is dropped
            log.warning("journal_io_uring_error", error=os.strerror(err), msg="the group is written again through the writer thread")
        self._exec.call(lambda: self._write_and_delete(batch, []), lambda took, exc: self._written(took, exc, batch, callbacks, []))

    def _drop_ring(self) -> None:
        ring, self._ring = self._ring, None
        self.io_used = "thread"
        if ring is None:
            return
        if self._ring_loop is not None and not self._ring_loop.is_closed():
            self._ring_loop.remove_reader(ring.efd)
        self._ring_loop = None
        ring.close()

    def _check(self) -> None:
        """Superseded if a newer CP owns the journal; a storage error here, after the group was
        written, as `Unchecked` (the group must not be written a second time)."""
        try:
            self.gens.check(self.gen)
        except OSError as exc:
            raise Unchecked(
                f"the group is written, but the check for a newer CP (a stat of {gen_name(self.gen)} and {gen_name(self.gen + 1)}) failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _write_and_delete(self, batch: list[tuple[int, bytes]], deletions: list[int]) -> float:
        took = self._write(batch)
        try:
            self._check()  # superseded: no ack for this group, nothing deleted
        except Unchecked as exc:
            exc.took = took
            raise
        for k, s in enumerate(deletions):
            faults.point("cp.mid_compaction")
            try:
                fd = self._fds.pop(s, None)
                if fd is not None:
                    os.close(fd)  # (released even when it reports an error)
                self._offset.pop(s, None)
                os.unlink(self.dir / segment_name(s, self.gen))
                # made durable before the next one goes: oldest first on the disk too, so that a
                # crash never leaves a gap (a segment missing between two others), which recovery
                # takes for damage (rare: one segment settles per segment_kib written)
                fsync_dir(self.dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise DeletionFailed(took, deletions[k:], exc) from exc
        return took

    def _write(self, batch: list[tuple[int, bytes]]) -> float:
        """Write `batch` (segment, record) in order and make it durable; its duration.

        Each record (a group record: a flush past GROUP_MAX records or GROUP_BYTES is several) is
        written and synced before the next one is written. One `pwrite` and one `fdatasync` for
        them all would let a crash during writeback land the pages out of order: an earlier group
        torn and a later one whole, which recovery cannot tell from damage (a bad record with a
        valid one after it) and which would stop every later start, although nothing of the
        flush was acknowledged. So only the last record written can be torn: the torn tail that
        recovery drops. A batch of one record (nearly every group commit) costs what it did."""
        t0 = time.perf_counter()
        injected = faults.storage_faults()  # tests: a hung mount, EIO (hsb.takeover.faults)
        if injected is not None and batch:  # (not for a generation check alone)
            injected.before("journal_write")
        ends: dict[int, int] = {}  # where this batch has written each segment to: the offsets advance once it is all durable
        for seg, data in batch:
            if seg not in self._fds:
                for old in [s for s in self._fds if s < seg]:  # closed segments are never written again (each record already synced)
                    os.close(self._fds.pop(old))
                fd = os.open(self.dir / segment_name(seg, self.gen), os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    if seg not in self._offset:
                        size = os.fstat(fd).st_size
                        if size == 0:  # new: allocated whole, so no group commit in it changes its size
                            preallocate(fd, self._segment_room(seg))
                        self._offset[seg] = size
                except BaseException:
                    os.close(fd)  # (kept only once its offset is known: the retry opens it again)
                    raise
                self._fds[seg] = fd
                self._name_pending.add(seg)
            fd = self._fds[seg]
            off = ends.get(seg, self._offset[seg])
            if faults.armed("cp.mid_journal_group"):  # a crash mid-group: half the bytes reach the file
                os.pwrite(fd, data[: len(data) // 2], off)
                os.fdatasync(fd)
                faults.point("cp.mid_journal_group")
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n
            os.fdatasync(fd)  # durable before the next record is written
            ends[seg] = off
        if self._name_pending:  # the new segment's name is durable too (again, if a try failed after its open)
            fsync_dir(self.dir)
            self._name_pending.clear()
        self._offset.update(ends)  # durable: advance the offsets only now (a failed write is redone in place)
        if batch:
            faults.point("cp.after_journal_write")
        return time.perf_counter() - t0
