"""hsbd's use of the session takeover file: the sequential writer with group
commit on the active, the ring follower on the standby, and status.

All file I/O goes through `TakeoverStore` (off the event loop, with a
deadline). Before any standby has started the active writes nothing [0092]:
the ring writer only runs after a batch write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from hsb import faults
from hsb.backoff import Backoff
from hsb.host.config import TakeoverSection
from hsb.takeover.errors import NotWritable, StaleGroup, StartupIdMismatch, StorageNotResponding
from hsb.takeover.layout import batch_records_for, entries_per_record
from hsb.takeover.reader import PollStatus
from hsb.takeover.records import SessionEntry, encode_entry
from hsb.takeover.store import TakeoverStore
from hsb.waits import event_within

log = structlog.get_logger("hsb.host")

OFF, BUFFERING, WRITING = "off", "buffering", "writing"
WRITABLE_EVERY_S = 10.0  # how often each host asks whether it could write the file now (one open)


def latest_per_terminal(entries: list[SessionEntry]) -> list[SessionEntry]:
    """Each terminal's last entry, in the order of those last entries: a ring entry sets the
    terminal's state, so while storage fails the entries waiting stay bounded by the terminals
    (not by the opens and closes meanwhile) and mean the same to the standby once written."""
    last: dict[str, SessionEntry] = {}
    for e in entries:
        last.pop(e.terminal, None)
        last[e.terminal] = e
    return list(last.values())


class TakeoverIO:
    def __init__(self, cfg: TakeoverSection, own_total: int, host_name: str, pair_tag: int | None = None) -> None:
        """`pair_tag`: the pair's (hsb.takeover.pair, from its secret): another pair's header is
        then neither written over nor read (ForeignWriter). None: no such check (tests)."""
        self.cfg = cfg
        self.own_total = own_total
        self.own_batch_records = batch_records_for(own_total, cfg.record_size)
        self.entries_per_record = entries_per_record(cfg.record_size)
        self.store = TakeoverStore(
            cfg.path,
            terminals=own_total,
            record_size=cfg.record_size,
            records=cfg.records,
            host_name=host_name,
            timeout=cfg.storage_timeout,
            faults=faults.storage_faults(),  # None unless fault injection is on
            pair_tag=pair_tag,
        )
        self.mode = OFF
        self.ring_epoch = 0  # each start and stop of the ring writer's: a group's failure from an earlier one says nothing now
        self.pending: list[SessionEntry] = []
        self.wake = asyncio.Event()
        self.ring_idle = asyncio.Event()  # no ring group on its way to the storage
        self.ring_idle.set()
        self.flusher: asyncio.Task[None] | None = None
        self.following = False
        self.last_error: str | None = None
        # the last batch write's or batch read's failure by the storage (EIO, EPERM, ENOSPC): kept
        # until one succeeds, across the ring writer's stop before each new try, so the storage is
        # shown failing (hsb_takeover_storage_ok 0) while the batches fail, not "ok" between tries
        self.batch_error: str | None = None
        # why the last periodic check could not open the file for writing (None: it could): an
        # idle pair writes nothing, so a file made immutable or read-only since (an ext4
        # remounted read-only after an error, an export changed) looked fine until a failover
        self.unwritable_error: str | None = None
        self.watcher: asyncio.Task[None] | None = None
        # the active's ring writes failing: (since: wall, since: monotonic, failures); None while they succeed
        self.write_failing: tuple[float, float, int] | None = None
        self.bad_record: int | None = None  # the ring record the last poll found torn or corrupt
        self.foreign_writer: str | None = None  # the last poll's new generation was another pair's (its message)
        self.mismatch_generation: int | None = None  # the header's generation, read again after a StartupIdMismatch

    async def size_check(self) -> None:
        """S201/S221: raises TakeoverFileError (too small, wrong file) before serving."""
        await self.store.check()

    # ------------------------------------------------------------------ active
    async def batch_write(self, partner_startup_id: int, entries: list[SessionEntry], clear: int | None = None, peer: str | None = None) -> int:
        try:
            hdr = await self.store.batch_write(partner_startup_id, entries, clear, peer)
        except OSError as exc:
            self.batch_error = f"batch write failed: {exc}"
            raise
        self.last_error = self.batch_error = self.unwritable_error = None
        return int(hdr.generation)

    async def unwritable(self, who: str) -> str | None:
        """Why the takeover file cannot be written now (None: it can be). A planned switchover asks
        it first: an idle pair writes nothing, so a file made immutable, read-only or unreachable
        since the last write still looks established, and the new active's batch writes would
        all fail, leaving the pair without hot standby (docs/operations.md §8)."""
        try:
            await self.store.check_writable(who)
        except NotWritable as exc:
            return str(exc)
        except StorageNotResponding as exc:
            return f"{exc} on {who} (takeover file {self.cfg.path}): check the takeover storage (dmesg, findmnt, the NFS server)"
        except OSError as exc:
            return f"takeover file {self.cfg.path} cannot be opened for writing by {who} ({exc}): check the takeover storage"
        return None

    def watch_writable(self, who: str) -> None:
        """Ask every WRITABLE_EVERY_S whether the file can be opened for writing (each host: the
        standby writes it from its first batch write as the active); said in the status's
        storage, so in hsb_takeover_storage_ok and its alert, until it can again."""
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.get_running_loop().create_task(self._watch_writable(who))

    async def _watch_writable(self, who: str) -> None:
        while True:
            await asyncio.sleep(WRITABLE_EVERY_S)
            if not self.store.responding:  # (a hung mount is said already; no second stuck open)
                continue
            why = await self.unwritable(who)
            if why is not None and self.unwritable_error is None:
                log.error("takeover_file_not_writable", path=self.cfg.path, error=why)
            elif why is None and self.unwritable_error is not None:
                log.info("takeover_file_writable_again", path=self.cfg.path)
            self.unwritable_error = why

    def buffer_ring_changes(self) -> None:
        self.mode = BUFFERING
        self.pending = []

    def discard_ring_buffer(self) -> None:
        self.mode = OFF
        self.pending = []

    def start_ring_writer(self) -> None:
        """S210: from now on every open/close of a linked terminal goes to the ring."""
        self.mode = WRITING
        self.ring_epoch += 1
        # the batch write just succeeded: a failure said before it (or one landing since, from a
        # group taken before it) is no longer the ring's state
        self.write_failing = None
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        self.wake.set()

    def stop_ring_writer(self) -> None:
        self.mode = OFF
        self.ring_epoch += 1
        self.pending = []
        # a ring write's error ends with the ring writer: the storage is asked again by the next
        # batch write (said at once if it still fails), not shown failing, and alerted on, meanwhile
        self.last_error = None
        self.write_failing = None

    async def ring_write_done(self, timeout: float) -> bool:
        """No ring group on its way to the storage (waited up to `timeout`). A host that stops
        writing the ring (demoted at a planned switchover) must not have a group of its land in a
        slot the new active has written meanwhile: the new standby's reader would take that older
        record for "nothing new" until the ring came round again, every change in between unseen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await event_within(self.ring_idle, timeout):
            return False
        # a write past its deadline may still run on the storage thread (the store no longer
        # waits for it, but it can still land): that one too
        while not self.ring_settled():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def ring_settled(self) -> bool:
        """No ring group of this host's on its way to the storage, nor a write stuck on it."""
        return self.ring_idle.is_set() and self.store.responding

    def ring_change(self, name: str, attrs: dict[str, Any], is_open: bool) -> None:
        if self.mode == OFF:
            return  # no standby has started: write nothing to the file [0092]
        self.pending.append(SessionEntry(name, attrs, is_open))
        if self.mode == WRITING:
            self.wake.set()

    async def _flush_loop(self) -> None:
        backoff = Backoff(0.05, 1.0)
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.mode == WRITING and self.pending:
                # each terminal's last entry only: a group never holds more records than a batch
                # (B), so it cannot lap the ring (K >= 2B) however fast sessions come and go
                group, self.pending = latest_per_terminal(self.pending), []
                taken_under = self.ring_epoch
                try:
                    self.ring_idle.clear()
                    try:
                        await self.store.append(group)  # group commit: one sync per group
                    finally:
                        self.ring_idle.set()
                except asyncio.CancelledError:
                    raise
                except StaleGroup:  # a batch write came first: its snapshot holds these (not an error)
                    log.debug("ring_group_stale", entries=len(group))
                    continue
                except Exception as exc:
                    good = self._drop_unencodable(group) if isinstance(exc, ValueError) else group
                    # keep them: nothing may be skipped, but each entry only sets a state; not
                    # after a batch write came between (its snapshot holds them, or newer states)
                    if self.mode == WRITING and self.ring_epoch == taken_under:
                        self.pending = latest_per_terminal(good + self.pending)
                    if len(good) < len(group):  # an entry that cannot be encoded: the rest go on
                        continue
                    if self.ring_epoch != taken_under:
                        # a group taken before the ring writer stopped (a batch write queued behind
                        # it on the storage thread): its failure set the flag again after the stop
                        # cleared it, and a quiet pair said standby_view_stale after a good batch
                        log.info("ring_write_failed_before_batch", error=str(exc), entries=len(group))
                        continue
                    self.last_error = str(exc)
                    wall, mono, n = self.write_failing or (time.time(), time.monotonic(), 0)
                    self.write_failing = wall, mono, n + 1
                    log.error("ring_write_failed", error=str(exc), pending=len(self.pending), failures=n + 1)
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                self.last_error = None
                if self.write_failing is not None:
                    _, mono, n = self.write_failing
                    self.write_failing = None
                    log.info("ring_write_recovered", failing_s=round(time.monotonic() - mono, 1), failures=n, entries=len(group))

    def write_failing_for(self) -> float | None:
        """Seconds the active's ring writes have been failing (None: they succeed, or none is due)."""
        return None if self.write_failing is None else time.monotonic() - self.write_failing[1]

    def pending_records(self) -> int:
        """Ring records the changes waiting to be written will take (at most one per terminal's entry)."""
        return -(-len(self.pending) // self.entries_per_record)

    def _drop_unencodable(self, group: list[SessionEntry]) -> list[SessionEntry]:
        """The entries of `group` that encode; each one that does not is logged and never
        written (the standby then has no standby session for that terminal: on a failover it
        gets the classic path, nothing lost). Without this one bad entry stopped the ring."""
        good: list[SessionEntry] = []
        for entry in group:
            try:
                encode_entry(entry)
            except ValueError as bad:
                log.error("ring_entry_dropped", terminal=entry.terminal, error=str(bad), msg="its session change is not in the takeover file")
            else:
                good.append(entry)
        return good

    def become_writer(self) -> None:
        self.stop_following()
        self.mode = OFF
        # a failed batch read of this host's standby days says nothing of its writes: the next
        # batch write, once a standby is there, says how the storage is (it may be long in coming)
        self.batch_error = None

    # ------------------------------------------------------------------ standby
    async def batch_read(self, expected: int | None, peer: str | None = None) -> tuple[int, int, list[SessionEntry]]:
        try:
            snap = await self.store.batch_read(expected, peer)
        except OSError as exc:
            self.batch_error = f"batch read failed: {exc}"
            raise
        except StartupIdMismatch as exc:
            self.mismatch_generation = None
            try:
                hdr = await self.store.read_header()
                exc.found, self.mismatch_generation = hdr.startup_id, int(hdr.generation)
            except Exception:
                exc.found = None
            raise
        self.last_error = self.batch_error = None
        return int(snap.header.generation), int(snap.header.batch_records), list(snap.entries)

    def follow(self) -> None:
        """Read the sequential area from here on (the batch read left the ring cursor at its end)."""
        self.following = True

    def stop_following(self) -> None:
        self.following = False
        self.last_error = None  # (a poll's error, or a torn record it met, ends with the polls: as above)
        self.bad_record = None

    async def ring_poll(self) -> tuple[str, list[SessionEntry], str]:
        if not self.following:
            return "nothing_new", [], ""
        try:
            res = await self.store.poll()
        except Exception as exc:
            self.last_error = str(exc)
            raise
        status = res.status.value if isinstance(res.status, PollStatus) else str(res.status)
        self.last_error = None if status not in ("torn", "corrupt") else f"record {res.record}: {res.reason}"
        self.bad_record = res.record if status in ("torn", "corrupt") and res.record else None
        self.foreign_writer = res.reason if res.foreign else None
        detail = f"record {res.record}: {res.reason}" if res.record is not None else res.reason
        return status, list(res.entries), detail

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        wp = self.store.write_position
        rp = self.store.read_position if self.following else None
        return {
            "path": self.cfg.path,
            "records": self.cfg.records,
            "record_size": self.cfg.record_size,
            "batch_records_own": self.own_batch_records,
            "ring_writer": self.mode,
            "ring_write": {"generation": wp[0], "last_seq": wp[1]} if wp else None,
            "ring_read": {"generation": rp[0], "next_seq": rp[1]} if rp else None,
            "ring_pending": len(self.pending),
            "ring_pending_records": self.pending_records(),
            # the active's ring writes failing: the standby reads none of these changes meanwhile
            "ring_write_failing": None
            if self.write_failing is None
            else {
                "since": self.write_failing[0],
                "failing_s": round(self.write_failing_for() or 0.0, 1),  # (never None here)
                "failures": self.write_failing[2],
                "error": self.last_error,
                "pending": len(self.pending),
            },
            "responding": self.store.responding,
            "storage": (self.last_error or self.batch_error or self.unwritable_error or "ok")
            if self.store.responding
            else "takeover storage not responding",
        }

    async def close(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        await self.store.close()
