"""The active role's lease as the state machine uses it: whether this host may serve now,
renewal from the CP's heartbeat answers, and saying at once when it lapses. A mixin of
`hsb.host.ha.HA`; the lease's arithmetic is `hsb.host.lease`."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.host.lease import clock as lease_clock

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")


class LeaseSide:
    """The lease rules of `HA` (see the module docstring)."""

    _lease_timer: asyncio.TimerHandle | None  # set in HA.__init__
    closed: bool

    @property
    def serving(self: HA) -> bool:
        """This host may act as the active now: the CP made it active and its lease is valid
        (read from the clock at every use, so a frozen-then-woken process sees it lapsed)."""
        if not self.granted:
            return False
        return self.lease.valid() or not faults.SELF_FENCING

    @property
    def lease_lost(self: HA) -> bool:
        return self.granted and not self.lease.valid() and faults.SELF_FENCING

    def lease_answered(self: HA, n: int) -> None:
        """The CP answered heartbeat `n` (CPLink, in link order)."""
        if self.lease.answered(n):
            self._lease_renewed()

    def _lease_renewed(self: HA) -> None:
        now = lease_clock()
        if self.lease.valid(now):
            self.srv.delivery.reopen()  # whatever waited for a valid lease goes on
            if self.lease.lapsed_at is not None:
                log.info("lease_renewed", epoch=self.epoch, lost_ms=round((now - self.lease.lapsed_at) * 1000, 1))
                self.lease.lapsed_at = None
                self.srv.on_state_change()
            self.hook_acting()  # (registered again after its CP link was lost: acting again)
        self._arm_lease_timer()

    def _arm_lease_timer(self: HA) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        if self.closed:  # (the process is ending: a lease "lost" while it closes would be false)
            return
        # +1 ms: the loop's clock is coarser than the lease's (uvloop: milliseconds)
        self._lease_timer = asyncio.get_running_loop().call_later(max(0.0, self.lease.remaining()) + 0.001, self._lease_check)

    def _lease_check(self: HA) -> None:
        """The lease may have run out: say so at once (the service is gated by the clock itself)."""
        self._lease_timer = None
        if not self.granted or self.lease.lapsed_at is not None:
            return
        if self.lease.valid():  # the timer fired early
            self._arm_lease_timer()
            return
        if not self.lease_lost:
            return
        now = lease_clock()
        self.lease.lapsed_at = now
        expired_wall = time.time() - (now - self.lease.until)
        log.warning(
            "lease_lost",
            epoch=self.epoch,
            expired_at=expired_wall,
            noticed_ms_late=round((now - self.lease.until) * 1000, 1),
            msg=f"no heartbeat answered by the CP within the {self.lease.duration:g} s lease: not serving until it is renewed",
        )
        self.srv.on_state_change()

    def lease_status(self: HA) -> dict[str, Any]:
        now = lease_clock()
        return {
            # the active role's lease: held only while the CP has made this host active
            "valid": self.granted and self.lease.valid(now),
            "duration_s": self.lease.duration,
            "remaining_ms": round(self.lease.remaining(now) * 1000, 1) if self.lease.until else None,
            "lost_ms_ago": None if self.lease.lapsed_at is None else round((now - self.lease.lapsed_at) * 1000, 1),
        }
