"""Taking the CP journal over (hsbcpd's startup step after the admin link and the listeners'
bind, before it serves on them):
the journal's next generation made durable before anything is read (SPEC §5.8), recovery, the
snapshot that starts the new generation, and the tickle ACKs that make the terminals of the CP
taken over from reconnect at once.

The file work runs on a thread in timed steps, so that meanwhile the loop answers /health and
pings systemd's watchdog; a step past its bound (a hung mount) stops both. A mixin of
hsb.cp.server.CPServer, which owns the lifecycle around it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from hsb import faults, gcpolicy
from hsb.cp.config import CPConfig
from hsb.cp.core import CP
from hsb.cp.journal import Journal, JournalIOUnavailable, recover
from hsb.cp.journal.generation import Generations, Superseded
from hsb.cp.journal.writer import IOReady, open_ring
from hsb.cp.tickle import RESEND_AFTER_S, TickleList, not_back, previous_list, send_tickles
from hsb.cp.waiting import MISSING, JournalMissing
from hsb.fsutil import bulk_seconds
from hsb.ops.mounts import nfs_fencing_problem
from hsb.ops.notify import Watchdog

log = structlog.get_logger("hsb.cp")
T = TypeVar("T")
TAKEOVER_STEP_MIN_S = 10.0  # a takeover's file step may take this long at least (5 x journal_timeout if more)


def _journal_bytes(d: Path) -> int:
    """What a takeover reads back: the journal directory's files, in bytes."""
    n = 0
    for e in os.scandir(d):
        try:
            n += e.stat().st_size
        except OSError:
            pass
    return n


class TakingOver:
    """The takeover's part of CPServer (the attributes below are CPServer's)."""

    cfg: CPConfig
    gens: Generations | None
    cp: CP | None
    took_over: dict[str, Any]
    split_takeover: bool
    takeover_step: tuple[str, float, float] | None
    takeover_step_s: float
    _takeover_beats: asyncio.Task[None] | None

    if TYPE_CHECKING:  # (hsb.cp.stopping.Stopping's and hsb.cp.waiting.Waiting's)

        def _superseded(self, exc: Superseded) -> None: ...

        def _journal_missing(self, said: bool = False) -> bool: ...

    async def take_over(self, reason: str) -> None:
        """Take the journal's next generation, recover, write the snapshot; then `self.cp`. The
        file work (the generation, reading the journal back, writing and syncing the snapshot)
        runs on a thread: a journal holding much takes seconds, and meanwhile the loop answers
        /health (keepalived's track script would otherwise fail and take the address away in the
        middle of the takeover), status, and pings the watchdog. A step that takes longer than
        `takeover_step_s` (a hung mount) stops the pings and fails /health."""
        c = self.cfg.cp
        t0 = time.perf_counter()
        if self.gens is None:
            log.warning("journal_off", msg='durability = "none": a crash of hsbcpd loses what it holds (for benchmarks only)')
            self.cp = CP(self.cfg, None)
            return
        d = Path(c.journal)
        pinging = asyncio.get_running_loop().create_task(self._takeover_pings())
        try:
            # (on the timed thread too: a hung mount answers neither, and the loop must)
            if await self._step("journal there", self._journal_missing, True):
                raise JournalMissing(MISSING.format(journal=c.journal))
            if c.takeover == "on_wake" and (why := await self._step("mount options", nfs_fencing_problem, c.journal)):
                raise JournalIOUnavailable(why)  # (mounted since the start, say)
            await self._take_over(reason, c, d, t0)
        finally:
            pinging.cancel()
            if self.cp is None:  # failed or superseded: nothing of this generation beats
                self._end_takeover_beats()

    async def _beat_while_taking_over(self, gen: int) -> None:
        """The heartbeat of generation `gen` (its file's time moved every 0.1 s, on a thread: a
        hung mount stops only the beat) until the tick loop beats, as the serving CP does; none
        while a step of the takeover is past its bound (then /health fails and keepalived moves
        the address: the CP there must see a dead one)."""
        assert self.gens is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._takeover_on_time():  # (a step past its bound: no beat, as no /health and no ping)
                try:
                    await loop.run_in_executor(None, self.gens.beat, gen)
                except OSError:
                    pass  # (the storage's trouble shows in the takeover's own steps)
            await asyncio.sleep(0.1)

    def _end_takeover_beats(self) -> None:
        if self._takeover_beats is not None:
            self._takeover_beats.cancel()
            self._takeover_beats = None

    async def _takeover_pings(self) -> None:
        """systemd's watchdog pinged while the takeover's steps keep to their bound (a hung one
        stops the pings, and /health fails: `_healthy`)."""
        watchdog = Watchdog()
        while True:
            if self._takeover_on_time():
                watchdog.tick(time.monotonic())
            await asyncio.sleep(0.25)

    def _takeover_on_time(self) -> bool:
        """No file step of the takeover under way, or the one under way within its bound."""
        step = self.takeover_step
        return step is None or time.monotonic() - step[1] < self.takeover_step_s + step[2]

    async def _step(self, name: str, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        """One file step of the takeover, on a thread, timed for /health and the watchdog: its
        bound, `takeover_step_s`, plus the time to move `size` bytes (hsb.fsutil.bulk_seconds) (a journal that
        holds much is read back for longer than a hung mount may stay unnoticed)."""
        self.takeover_step = (name, time.monotonic(), bulk_seconds(size))
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        finally:
            self.takeover_step = None

    async def _take_over(self, reason: str, c: Any, d: Path, t0: float) -> None:
        # the journal's ring before the generation: a CP that cannot serve (journal_io =
        # "io_uring", its ring refused: ENOMEM, the memlock limit) must never fence one that can
        io = await self._step("journal io", open_ring, c.journal_io)
        try:
            await self._take_over_with(reason, c, d, t0, io)
        except BaseException:
            if io[0] is not None and self.cp is None:  # (a journal that took it may have closed it: once only)
                io[0].close()
            raise

    async def _take_over_with(self, reason: str, c: Any, d: Path, t0: float, io: IOReady) -> None:
        assert self.gens is not None
        # durable before anything is read (SPEC §5.8); said in its file if taken from a CP that still beat
        gen = await self._step("generation", self.gens.take, self.split_takeover)
        journal_id = await self._step("journal id", self.gens.identity, gen)  # made if none: what the hosts follow
        # beaten from now on: a CP waiting on the other machine (a split brain: it holds the
        # address too) takes a generation file that stands still for takeover_stale for a dead
        # CP's, and a takeover that reads much would be superseded in the middle, for ever in turn
        self._takeover_beats = asyncio.get_running_loop().create_task(self._beat_while_taking_over(gen))
        with gcpolicy.paused():
            # raises JournalDamaged (file and offset) on damage. A torn tail is dropped, the file
            # not cut: a superseded CP may still be writing that record (docs/cp-journal.md)
            size = await self._step("journal size", _journal_bytes, d)
            r = await self._step("recovery", functools.partial(recover, d, truncate=False), size=size)
            journal = Journal(d, timeout=c.journal_timeout, segment_bytes=c.journal_segment_kib * 1024, generation=gen, io=c.journal_io, io_ready=io)
            journal.journal_id = journal_id
            journal.takeover = self.gens.takeover
            cp = CP(self.cfg, journal)
            cp.follows_a_cp = gen > 1  # (take() creates the generation above any before: 1 on a new journal)
            cp.restore(r)
            faults.point("cp.mid_recovery")
            snapshot = cp.snapshot()
            try:
                seg = await self._step("snapshot", journal.open, r.highest_segment + 1, snapshot, [*r.garbage, *r.paths], size=size)
            except Superseded as exc:  # a newer CP took over while this one recovered: it serves
                journal.close()
                exc.say(at="takeover")
                self._superseded(exc)
                return
        cp.repin(seg)
        journal.on_superseded = self._superseded
        if c.tickle_acks:
            cp.tickles = TickleList(d, gen)
        self.cp = cp
        self.took_over = {"generation": gen, "took_over": {"reason": reason, "at": time.time(), "from_generation": r.head_generation}}
        log.info(
            "journal_recovered",
            dir=c.journal,
            generation=gen,
            from_generation=r.head_generation,
            reason=reason,
            segments=len(r.segments),
            records=r.records,
            held=sum(len(v) for v in r.held.values()),
            replies_kept=sum(len(v) for v in r.replies.values()),
            terminals=len(r.last_acked),
            epoch=r.epoch,
            active=r.active,
            torn_tail=r.torn,
            bytes=r.bytes_read,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )

    async def tickle(self, gen: int) -> None:
        """Tickle ACKs to the terminal connections of the CP this one took over from (hsb.cp.tickle),
        off the event loop: they reconnect at once instead of when their keepalive notices."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        info: dict[str, Any] = {"from_generation": 0, "connections": 0, "here": False, "sent": 0, "failed": 0, "resent": 0, "ms": None, "error": None}
        self.took_over["tickles"] = info
        try:
            prev, conns, here = await loop.run_in_executor(None, previous_list, Path(self.cfg.cp.journal), gen)
            info.update(from_generation=prev, connections=len(conns), here=here)
            if not conns or here:  # here: this kernel reset them when their process died
                return
            sent, failed, why = await loop.run_in_executor(None, send_tickles, conns)
            info.update(sent=sent, failed=failed, ms=round((time.perf_counter() - t0) * 1000, 1), error=why)
            log.info("tickle_acks_sent", from_generation=prev, connections=len(conns), sent=sent, failed=failed, ms=info["ms"])
            if failed:
                log.warning(
                    "tickle_acks_failed",
                    failed=failed,
                    error=why,
                    msg="terminals of the old CP notice by keepalive instead; a raw socket needs CAP_NET_RAW (the systemd unit grants it)",
                )
            if sent:
                for wait in RESEND_AFTER_S:  # a tickle, or the terminal's answer to it, may be lost
                    await asyncio.sleep(wait)
                    away = not_back(conns, self.cp.terms if self.cp is not None else {})
                    if not away:
                        break
                    n, _, _ = await loop.run_in_executor(None, send_tickles, away)
                    info["resent"] += n
                    log.info("tickle_acks_resent", terminals=len(away), sent=n, after_s=wait)
        except Exception as exc:  # only tickles: never the CP's concern beyond a warning
            info["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("tickle_acks_failed", error=info["error"], msg="terminals of the old CP notice by keepalive instead")
