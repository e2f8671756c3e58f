"""The CP journal's group commits coming back, on the event loop (docs/cp-journal.md): a group
durable and checked has its acknowledgements run and the next group start; one that failed is
kept, with whatever waits on it, and written again in place after a backoff; one still out after
the journal's `timeout` makes the journal `stalled`; a newer CP's generation stops it for good
(`on_superseded`). Also the timers that start a group (a lazy record's, a retry's, a deletion's),
the journal's health (`state`, `on_health`) and the sync counters its status reports.

A mixin of `hsb.cp.journal.store.Journal`, which appends the records and starts each group
(`_flush`); hsb.cp.journal.writer takes a group to the disk and ends in `_written` here.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from hsb import uring
from hsb.bootclock import boot_now
from hsb.cp.journal.generation import Superseded
from hsb.cp.journal.writer import DeletionFailed, Done, Unchecked

log = structlog.get_logger("hsb.cp")

RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # backoff of a failed write or deletion (`_backoff`)
LAZY_S = 0.005  # a record nobody waits on rides with the next group, or is written after this long
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


def _backoff(tries: int) -> float:
    """How long the `tries`-th retry in a row waits (RETRY_S, its last value from then on)."""
    return RETRY_S[min(tries, len(RETRY_S) - 1)]


LATE_S = 0.25  # a deadline timer firing this much after it was due: this process stalled
LATE_LOOK_S = 0.05  # then looked at again after this long (the loop reads completions meanwhile)


class Completion:
    """What follows a group commit (see the module docstring; the attributes are Journal's)."""

    dir: Path
    timeout: float
    superseded: Superseded | None
    on_superseded: Callable[[Superseded], None]
    on_health: Callable[[str], None]
    state: str
    error: str | None
    checked_at: float | None
    _ring: uring.Ring | None
    _ring_failed: bool
    _pending: list[tuple[int, bytes]]
    _callbacks: list[Done]
    _inflight: list[tuple[int, bytes]] | None
    _inflight_n: int
    _again: list[tuple[int, bytes]]
    _again_n: int
    _recheck: bool
    _retry: int
    _retry_timer: asyncio.TimerHandle | None
    _timer: asyncio.TimerHandle | None
    _timer_due: float  # when the deadline timer was due (boot clock): one firing much later found this process stalled
    _late_looked: bool  # a late firing looked again once already
    _flush_scheduled: bool
    _urgent: bool
    _lazy_timer: asyncio.TimerHandle | None
    _deletions: list[int]
    _deletions_held: asyncio.TimerHandle | None
    _delete_retry: int
    _batch_t0: float
    last_sync_at: float | None
    last_sync_s: float | None
    syncs: int
    records_written: int
    stalls: int
    sync_counts: list[int]
    sync_sum: float

    if TYPE_CHECKING:  # (Journal's, and GroupWriter's)

        def _flush(self) -> None: ...

        def _drop_ring(self) -> None: ...

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        if not self._flush_scheduled and self._inflight is None:
            self._flush()

    def _written(self, took: float, exc: BaseException | None, batch: list[tuple[int, bytes]], callbacks: list[Done], deletions: list[int]) -> None:
        """A group commit came back: stop (superseded), keep it for another try (`_failed`), or
        acknowledge it (`_succeeded`; a settled segment whose deletion was refused goes again later)."""
        self._inflight = None
        if self.superseded is not None:  # stopped meanwhile (the heartbeat's check): nothing more is acknowledged
            return
        if isinstance(exc, Superseded):
            self._stop_superseded(exc)
            return
        if isinstance(exc, Unchecked):  # written and synced: only its check is done again
            self.records_written += self._inflight_n  # durable now (counted once: `_failed` keeps none of them)
            self._inflight_n = 0
            if batch:
                self._count_sync(took if exc.took is None else exc.took)
        undeleted: list[int] = []
        if isinstance(exc, DeletionFailed):  # the group is durable and checked: its acks go now
            undeleted, took = exc.left, exc.took
            log.warning("journal_segment_delete_failed", dir=str(self.dir), segment=undeleted[0], error=str(exc.__cause__))
            exc = None
        if exc is not None:
            self._failed(exc, batch, callbacks, deletions)
        else:
            self._succeeded(took, batch, callbacks, deletions, undeleted)

    def _failed(self, exc: BaseException, batch: list[tuple[int, bytes]], callbacks: list[Done], deletions: list[int]) -> None:
        """Keep the records (written again in place, before anything newer) and whatever waits
        on them; a group already durable whose check failed is only checked again (its records
        are no longer pending, `_written` counted them written). Nothing is tried again before
        the backoff has passed."""
        unchecked = isinstance(exc, Unchecked)
        self._again, self._again_n = ([], 0) if unchecked else (batch, self._inflight_n)
        self._recheck = self._recheck or unchecked
        self._callbacks[:0] = callbacks
        self._deletions[:0] = deletions
        self._urgent = True
        self._set_state("failing", str(exc) if unchecked else f"{type(exc).__name__}: {exc}")
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = asyncio.get_running_loop().call_later(_backoff(self._retry), self._retry_flush)
        self._retry += 1

    def _succeeded(self, took: float, batch: list[tuple[int, bytes]], callbacks: list[Done], deletions: list[int], undeleted: list[int]) -> None:
        """The group is durable and checked: its acknowledgements go, and the next group starts."""
        self._recheck = False
        self._retry = 0
        if undeleted:  # tried again after a backoff, before any newer segment's deletion
            self._deletions[:0] = undeleted
            if self._deletions_held is None:
                self._deletions_held = asyncio.get_running_loop().call_later(_backoff(self._delete_retry), self._deletions_due)
                self._delete_retry += 1
        elif deletions:
            self._delete_retry = 0
        if self._ring_failed:
            self._ring_failed = False
            if self._ring is not None and not self._ring.busy:
                log.warning(
                    "journal_io_fallback",
                    io="thread",
                    msg="a group commit failed through io_uring and then succeeded through the writer thread: the thread from now on",
                )
                self._drop_ring()
        self.records_written += self._inflight_n
        if self.checked_at is None or self._batch_t0 > self.checked_at:  # its check began after the flush did
            self.checked_at = self._batch_t0
        if batch:  # not a check alone
            self._count_sync(took)
        if self.state != "ok":
            self._set_state("ok", None)
        for cb in callbacks:
            try:
                cb()
            except Exception:  # a bug in one: the rest of the group (acks, replies) still go, and the journal goes on
                log.exception("journal_callback_failed", msg="a step after a durable record failed; the others went on")
        if self._urgent or (self._deletions and self._deletions_held is None):
            self._flush()
        elif self._pending and self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(LAZY_S, self._lazy_due)

    def _count_sync(self, took: float) -> None:
        """A group's write and `fdatasync` done (the sync histogram's count is the groups)."""
        self.syncs += 1
        self.last_sync_s = took
        self.last_sync_at = time.time()
        self.sync_sum += took
        self.sync_counts[bisect.bisect_left(SYNC_BUCKETS, took)] += 1

    def _forget_pending(self) -> None:
        """Superseded: nothing pending is written or reported durable."""
        self._pending.clear()
        self._again.clear()
        self._again_n = 0
        self._recheck = False
        self._callbacks.clear()

    def _stop_superseded(self, exc: Superseded) -> None:
        """A newer CP owns the journal: nothing pending is reported durable, ever."""
        if self.superseded is None:
            self.superseded = exc
            self._forget_pending()
            self._deletions.clear()
            exc.say()
            self.on_superseded(exc)

    def _deletions_due(self) -> None:
        self._deletions_held = None
        if self._inflight is None and not self._flush_scheduled:
            self._flush()

    def _retry_flush(self) -> None:
        self._retry_timer = None
        if self._inflight is None:
            self._flush()

    def arm_deadline(self, delay: float) -> None:
        self._timer_due = boot_now() + delay
        self._timer = asyncio.get_running_loop().call_later(delay, self._deadline)

    def _deadline(self) -> None:
        """`timeout` after a group began: still in flight, the storage is not answering."""
        self._timer = None
        if self._inflight is None:
            self._late_looked = False
            return
        now = boot_now()
        left = self._batch_t0 + self.timeout - now
        if left > 0:  # a later group: its own time (and its own look if found late)
            self._late_looked = False
            self.arm_deadline(left)
            return
        if now - self._timer_due > LATE_S and not self._late_looked:
            # fired this late: this process itself did not run (SIGSTOP, a paused VM), and the
            # write's completion may be waiting to be read (uvloop runs due timers before it
            # reads): looked at again after a turn of the loop, not said stalled at once
            self._late_looked = True
            self.arm_deadline(LATE_LOOK_S)
            return
        self._late_looked = False
        if self.state == "ok":
            self.stalls += 1
            self._set_state("stalled", f"a write has not completed in {self.timeout:g} s (storage not responding)")

    def _set_state(self, state: str, error: str | None) -> None:
        prev, self.state, self.error = self.state, state, error
        if state == "ok":
            log.info("journal_recovered_from_fault", was=prev)
        elif prev != state:
            log.error("journal_" + state, dir=str(self.dir), error=error, msg="acknowledgements stop until the journal can be written")
        self.on_health(state)
