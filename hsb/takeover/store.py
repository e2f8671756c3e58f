"""`TakeoverStore`: the daemons' asyncio facade over the takeover file.

Every file operation runs on one dedicated storage thread (so operations keep
their order and the writer needs no locks; a daemon thread, so a hung mount
cannot block process exit) with a deadline. A missed deadline
raises `StorageNotResponding` ("takeover storage not responding: <op> took
longer than <s>s") instead of hanging the event loop; while that operation is
still stuck on its thread, new calls fail at once with the same error instead
of queueing behind it. An operation still waiting in the queue when its
deadline passes is cancelled and never runs.

`append` is the group-commit entry point: concurrent callers' entries are
gathered while the previous group is being written and go out together, one
sync per group, each caller resumed once its entries are durable.

A daemon uses one store in either role and may switch role (a standby that
takes over becomes the writer): `open_writer` / `batch_write` / `append` for
the active, `batch_read` / `poll` for the standby.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import errno
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import structlog

from hsb.fsutil import BULK_RATE as BULK_RATE  # (bytes a second an operation on many bytes is given)
from hsb.fsutil import bulk_seconds
from hsb.takeover.errors import HeaderCorrupt, NoBatchWritten, NotWritable, StorageNotResponding
from hsb.takeover.faults import Faults
from hsb.takeover.fileio import check_file, torn_header_taken
from hsb.takeover.layout import DEFAULT_RECORD_SIZE, Layout, batch_records_for, size_check
from hsb.takeover.pair import Pair
from hsb.takeover.reader import BatchSnapshot, PollResult, PollStatus, RingReader, batch_read, read_header
from hsb.takeover.records import Header, SessionEntry
from hsb.takeover.writer import TakeoverWriter
from hsb.worker import Worker, consume

log = structlog.get_logger("hsb.takeover")
T = TypeVar("T")
# An operation whose bytes grow with the file (a batch write or read, the scan for the highest
# generation) has storage_timeout plus the time to move them at this rate: a storage slower than
# this is failing. One deadline for all made a batch at 100,000 terminals (26 MiB and two syncs)
# miss it on storage that is slow but working, at every try: hot standby never came.


class TakeoverStore:
    """One daemon's access to one takeover file, in either role (see module docstring)."""

    def __init__(
        self,
        path: str,
        *,
        terminals: int,
        record_size: int = DEFAULT_RECORD_SIZE,
        records: int | None = None,
        host_name: str | None = None,
        timeout: float = 2.0,
        faults: Faults | None = None,
        pair_tag: int | None = None,
    ) -> None:
        """`terminals`: this host's own total terminal count (321/521); `timeout`:
        the deadline of each operation ([takeover] storage_timeout); `pair_tag`: the pair's
        (hsb.takeover.pair.pair_tag of its secret): with it and `host_name`, a header another
        pair's host wrote is neither written over nor read (ForeignWriter)."""
        self.path = os.fspath(path)
        self.terminals = terminals
        self.record_size = record_size
        self.records = records
        self.host_name = host_name
        self.timeout = timeout
        self.faults = faults
        self.pair_tag = pair_tag
        self.pair = Pair(host_name, pair_tag) if host_name is not None and pair_tag is not None else None
        self._pool = Worker("hsb-takeover")
        self._stuck: list[tuple[str, cf.Future[Any]]] = []
        self._writer: TakeoverWriter | None = None
        self._reader: RingReader | None = None
        self._pending: list[tuple[list[SessionEntry], int, asyncio.Future[tuple[int, int]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.last_group = 0  # entries in the last group committed
        self._poll_lost = False  # a ring read ran on past its deadline: the cursor is not to be trusted

    # -- plumbing ----------------------------------------------------------

    async def _run(
        self,
        op: str,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        left_running: Callable[[], None] | None = None,
        spin: bool = True,
    ) -> T:
        self._stuck = [(name, f) for name, f in self._stuck if not f.done()]
        limit = self.timeout if timeout is None else timeout
        if self._stuck:
            raise StorageNotResponding(self._stuck[0][0], limit)
        faults = self.faults

        def call() -> T:
            if faults is not None:
                faults.before(op)
            return fn(*args)

        fut = self._pool.submit(call, spin)
        afut = asyncio.wrap_future(fut)
        afut.add_done_callback(consume)  # a late failure after a timeout is not "never retrieved"
        try:
            # not wait_for: on 3.11 a failure under it is a reference cycle
            async with asyncio.timeout(limit) as deadline:
                return await asyncio.shield(afut)
        except TimeoutError:
            if not deadline.expired():
                raise  # the operation's own error (an OSError with errno ETIMEDOUT, say)
            if afut.done() and not afut.cancelled():
                return afut.result()  # finished in the same turn as the deadline: it happened
            if fut.done() and not fut.cancelled():
                return fut.result()  # finished on the thread, its callback not yet run: it happened
            if not fut.cancel():  # already running: it is stuck on the storage thread
                self._stuck.append((op, fut))
                if left_running is not None:
                    left_running()  # (what it does when it returns, nobody will see)
            log.error("takeover_storage_not_responding", path=self.path, op=op, timeout=limit)
            raise StorageNotResponding(op, limit) from None
        finally:
            # a failure's traceback holds this frame, whose futures hold the failure: a cycle
            # per failed operation while storage fails, never collected (hsb/gcpolicy.py)
            del fut, afut

    @property
    def responding(self) -> bool:
        """False while an operation that missed its deadline is still running."""
        return not any(not f.done() for _, f in self._stuck)

    async def close(self) -> None:
        """Close the file; does not wait for an operation stuck on dead storage."""
        if self._flusher is not None:
            self._flusher.cancel()
        for _, _, fut in self._pending:
            fut.cancel()
        self._pending = []
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None

        def shut() -> None:
            if writer is not None:
                writer.close()
            if reader is not None:
                reader.close()

        if self.responding:
            try:
                await self._run("close", shut)
            except StorageNotResponding:
                pass
        self._pool.shutdown()

    # -- both roles ----------------------------------------------------------

    async def check(self) -> Layout:
        """Size check at start (S201/S221) against the real file: file-level
        errors (TakeoverFileError) or TakeoverFileTooSmall; returns own layout.

        A header torn by a crash while it was rewritten (at a batch write) is not a
        reason to refuse: the size check goes by the config's geometry and the file's
        size, the active's writer recovers the header (its generation from the batch
        records) and the standby's batch read waits for the next batch write. Refusing
        left a pair whose active lost power there unable to start either host."""

        def do() -> Layout:
            writable(self.path)
            try:
                h = check_file(self.path, self.record_size, self.records, self.terminals)
            except HeaderCorrupt as exc:
                if not torn_header_taken(self.path, self.records, self.record_size):
                    raise
                assert self.records is not None  # (taken only with the config's records)
                log.warning(
                    "takeover_header_corrupt",
                    path=self.path,
                    error=str(exc),
                    msg="going by the config's records and record_size; the next batch write rewrites it",
                )
                return size_check(self.records, self.terminals, self.record_size, path=self.path)
            return size_check(h.records, self.terminals, h.record_size, path=self.path)

        return await self._run("size check", do)

    async def read_header(self) -> Header:
        return await self._run("header read", read_header, self.path, self.record_size)

    async def check_writable(self, who: str) -> None:
        """`writable` now, under the storage's deadline: NotWritable, StorageNotResponding (a
        hung mount), or another OSError of the open."""
        await self._run("writable check", writable, self.path, who)

    # -- active --------------------------------------------------------------

    def bulk_timeout(self, share: float) -> float:
        """The deadline of an operation that moves up to `share` of the file (BULK_RATE)."""
        return self.timeout + bulk_seconds(share * (self.records or 0) * self.record_size)

    async def open_writer(self) -> None:
        """Open the file for writing (size check included); idempotent."""
        if self._writer is None:
            self._writer = await self._run(
                "open for writing",
                lambda: TakeoverWriter(
                    self.path,
                    terminals=self.terminals,
                    record_size=self.record_size,
                    records=self.records,
                    host_name=self.host_name,
                    pair_tag=self.pair_tag if self.pair is not None else None,
                ),
                timeout=self.bulk_timeout(1.0),  # (a header torn by a crash: the whole file scanned for its generation)
            )

    async def batch_write(self, startup_id: int, entries: Sequence[SessionEntry], clear: int | None = None, peer: str | None = None) -> Header:
        """S205-S206: durable when this returns; then send BATCH WRITE COMPLETE. `clear`: a
        damaged record the standby named, written empty; `peer`: the standby's name, for the
        check of the header's writer (TakeoverWriter.batch_write)."""
        await self.open_writer()
        assert self._writer is not None
        snapshot = list(entries)  # later changes go to the ring, not into this batch
        # (B ≤ (N - 1) / 3: the size check)
        return await self._run("batch write", self._writer.batch_write, startup_id, snapshot, clear, peer, timeout=self.bulk_timeout(1 / 3))

    async def append(self, entries: Sequence[SessionEntry]) -> tuple[int, int]:
        """S210 with group commit: returns (first_seq, last_seq) of the group that made
        these entries durable. NoBatchWritten before the first batch write."""
        if self._writer is None or self._writer.layout is None:
            raise NoBatchWritten("no batch has been written to the takeover file yet; ring writes start after it")
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        # the generation it is taken under: a batch write may come before its turn (StaleGroup)
        self._pending.append((list(entries), self._writer.generation, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="takeover-group-commit")
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            gen = group[0][1]
            if any(g != gen for _, g, _ in group):  # a batch write came between: one generation at a time
                self._pending = [x for x in group if x[1] != gen] + self._pending
                group = [x for x in group if x[1] == gen]
            entries = [e for part, _, _ in group for e in part]
            t0 = time.perf_counter()
            try:
                assert self._writer is not None
                # its deadline grows with the group (a logon storm's can be megabytes), as a batch
                # write's does: a slow storage that is working must not read as a hung one, whose
                # entries are then written a second time once the first write ends
                rs = self._writer.record_size
                # (and the records a failed group owes, written again first)
                recs = max(1, batch_records_for(len(entries), rs)) + self._writer.owed_records
                res = await self._run("ring write", self._writer.append_group, entries, gen, timeout=self.timeout + bulk_seconds(recs * rs))
            except BaseException as exc:
                # without this frame's traceback: it would hold this frame, `group` and the
                # futures in a reference cycle, never collected (hsb/gcpolicy.py)
                exc = exc.with_traceback(None)
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                group, entries = [], []
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.last_group = len(entries)
            log.debug("takeover_group_commit", callers=len(group), entries=len(entries), ms=round((time.perf_counter() - t0) * 1000, 2))
            for _, _, fut in group:
                if not fut.done():
                    fut.set_result(res)

    @property
    def write_position(self) -> tuple[int, int] | None:
        """(generation, last ring seq written) once a batch was written."""
        w = self._writer
        return None if w is None or w.layout is None else (w.generation, w.last_seq)

    # -- standby -------------------------------------------------------------

    async def batch_read(self, expected_startup_id: int | None = None, peer: str | None = None) -> BatchSnapshot:
        """S225: read record 0 and the batch area (B from the header); the ring cursor
        starts after it. StartupIdMismatch if record 0 holds another standby's id, ForeignWriter
        if another pair's host wrote it (`peer`: the active's name)."""

        def do() -> BatchSnapshot:
            snap = batch_read(
                self.path, record_size=self.record_size, expected_startup_id=expected_startup_id, faults=self.faults, pair=self.pair, peer=peer
            )
            if self._reader is not None:
                self._reader.close()
            self._reader = RingReader(self.path, snap.header, faults=self.faults, pair=self.pair, peer=peer)
            return snap

        snap = await self._run("batch read", do, timeout=self.bulk_timeout(1 / 3))
        self._poll_lost = False  # a new cursor, from this batch read
        return snap

    async def poll(self) -> PollResult:
        """S228: one look at the ring (see RingReader.poll)."""
        if self._reader is None:
            raise NoBatchWritten("poll before batch_read: the ring cursor starts after a batch read")
        if self._poll_lost:
            # a ring read left running past its deadline finished later: it moved the cursor past
            # what it read, and its result went to nobody. Never guess: only a new batch read goes on.
            return PollResult(PollStatus.LAPPED, reason="a ring read that missed its deadline went on after it: what it read was never applied")
        # spin=False: nothing waits on a ring read in a hurry, and the standby's loop, idle then,
        # leaves the GIL to the file's thread without being made to spin
        return await self._run("ring read", lambda: self._require_reader().poll(), left_running=self._lose_poll, spin=False)

    def _lose_poll(self) -> None:
        self._poll_lost = True

    def _require_reader(self) -> RingReader:
        if self._reader is None:
            raise NoBatchWritten("the ring cursor was closed")
        return self._reader

    @property
    def read_position(self) -> tuple[int, int] | None:
        """(generation, next seq to read) after a batch read."""
        return None if self._reader is None else self._reader.position


def writable(path: str, who: str = "this host") -> None:
    """NotWritable unless this process can open `path` for writing. Both roles check it at
    start: a standby writes the file from its first batch write as the active, so a file made
    by root, a read-only mount or root_squash showed only then, after a failover, as an
    EACCES at every batch write (the pair never hot again). The active checks it again before
    a planned switchover (TakeoverStore.check_writable). `who`: the host the message names."""
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, IsADirectoryError):
        return  # check_file names these
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        if exc.errno == errno.EPERM:  # (open's EPERM on a file is its attributes, not its owner or mode: those are EACCES)
            fix = f"it is immutable or append-only (lsattr {path}): chattr -i -a {path} as root"
        elif exc.errno == errno.EROFS:
            fix = "its file system is mounted read-only: mount it read-write"
        else:
            fix = (
                f"give the daemon's user read and write access (chown USER {path}; chmod 600 {path})"
                " (a daemon run as root needs no_root_squash on the NFS export)"
            )
        raise NotWritable(
            f"takeover file {path} cannot be opened for writing by {who} ({exc.strerror}); either host writes it once it is the active: {fix}"
        ) from None
    os.close(fd)
