"""The CP journal's fencing heartbeat (SPEC §5.8): the serving CP touches its generation file
and checks that no newer CP took the journal over, on a thread of its own, and it vouches for
itself (renews a host's lease) only while its last clean check is fresh. A mixin of
hsb.cp.journal.store.Journal, which also checks the generation after each group commit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.bootclock import boot_now
from hsb.cp.journal.generation import Generations, Superseded
from hsb.worker import Worker

log = structlog.get_logger("hsb.cp")


class Vouching:
    """The generation heartbeat and `vouches` (the attributes are Journal's)."""

    dir: Path
    gen: int
    gens: Generations
    superseded: Superseded | None
    on_superseded: Callable[[Superseded], None]
    _beating: bool
    _beat_exec: Worker
    checked_at: float | None
    fresh_s: float
    _unvouched_at: float | None
    lease_answers_withheld: int

    if TYPE_CHECKING:  # (Journal's)

        def _stop_superseded(self, exc: Superseded) -> None: ...

    def heartbeat(self) -> None:
        """The serving CP's tick: touch its generation file and check that no newer CP took over,
        on a thread of its own (a hung mount must not stop the tick: it only stops the beat)."""
        if self.superseded is not None or self._beating:
            return
        self._beating = True
        self._beat_exec.call(self._beat, self._beaten)

    def _beaten(self, _: Any, exc: BaseException | None) -> None:
        self._beating = False
        if isinstance(exc, Superseded):
            self._stop_superseded(exc)
        elif exc is not None:  # the storage: the writes report it
            log.warning("journal_heartbeat_failed", error=str(exc))

    def _beat(self) -> None:
        t0 = boot_now()
        injected = faults.storage_faults()  # tests: a hung mount hangs the check as it hangs the writes
        if injected is not None:
            injected.before("journal_generation_check")
        self.gens.check(self.gen)
        self.checked_at = t0  # (a float's assignment: the loop reads it without a lock)
        self.gens.beat(self.gen)

    def vouches(self, now: float) -> bool:
        """This CP may renew a host's lease (answer its heartbeat): its last clean generation
        check (a heartbeat's, or a group commit's) began less than `fresh_s` before `now`, so no
        newer CP had taken the journal over before then. Logs when that stops and starts again;
        counts the answers withheld."""
        c = self.checked_at
        if self.superseded is None and c is not None and now - c < self.fresh_s:
            if self._unvouched_at is not None:
                log.info("lease_answers_resumed", withheld_ms=round((now - self._unvouched_at) * 1000, 1))
                self._unvouched_at = None
            return True
        self.lease_answers_withheld += 1
        if self._unvouched_at is None and self.superseded is None:
            self._unvouched_at = now
            log.warning(
                "lease_answers_withheld",
                dir=str(self.dir),
                checked_ms_ago=None if c is None else round((now - c) * 1000, 1),
                msg=f"no clean generation check of the journal for {self.fresh_s:g} s (its storage hangs, or this process stalled):"
                " this CP may have been superseded, so it renews no host's lease until a check comes back; check the journal's mount",
            )
        return False
