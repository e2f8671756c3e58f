"""A CP that heard neither host for a while: the active's loss unwitnessed, told gently.

When the CP itself stalls (a VM paused, the process stopped, its loop held up) or its machine's
network drops, both host links go quiet at once, and once it runs again it reads their ends in
some order. Before, it took the active's end with no standby listening as the active's loss:
every terminal was told `session closed: active host lost, no standby`, though the active, alive,
registered again a moment later and adopted those very sessions; and a standby that registered
first was told the active was lost and took the role, and the healthy active was fenced. Found by
the packet-loss walk-through (the CP machine gone silent for 5 s) and reproduced by SIGSTOP.

So a loss of the active that no live standby witnessed is treated as after the CP's own restart:

- with no standby to take over, the active's sessions are kept for its return for RETURN_WAIT_S,
  not closed at once (`keep_for_return`); the active registering again adopts them and the
  terminals notice nothing; another host made active first tells those terminals their session
  closed, as before;
- a loss seen with no standby heard within `host_timeout` (`loss_seen`), or one a standby learns
  by registering (a new link: it was not there throughout, `loss_told_after`), is told to the
  standby only once the active has had RETURN_WAIT_S to register again. A standby's own word (its
  peer link from the active closed) is acted on at once, as ever; so is a loss a live standby saw.

A mixin of `hsb.cp.core.CP`, like the others.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol

log = structlog.get_logger("hsb.cp")

# The active's link gone with no live standby: its sessions wait this long for it to register
# again, and a standby that registers meanwhile is told of the loss after as long (the same wait
# as for the active recorded before a CP restart, hsb.cp.core.RECORDED_ACTIVE_WAIT_S)
RETURN_WAIT_S = 3.0


class Alone:
    """The unwitnessed loss of the active; mixed into `CP` (see the module docstring)."""

    kept_for: tuple[HostProtocol, float] | None  # the lost active whose sessions wait for it, until when
    quiet_until: float | None  # a standby is told of the active's loss from then on
    loss: tuple[float, float] | None  # (CP's, set by `loss_seen`: declared as its other mixins do)

    def init_alone(self: CP) -> None:
        self.kept_for = None
        self.quiet_until = None

    def loss_seen(self: CP, host: HostProtocol) -> None:
        """The active's loss is noticed now (its link closed, or silent): recorded; with no
        standby heard within host_timeout, or just after this process stalled, nobody witnessed
        it, and it is told later."""
        now = time.monotonic()
        self.loss = (now, host.last_rx)
        # (this process just stalled: the standby's frames read since are of before, no witness)
        if not self.standby_live() or self.stalled():
            self._tell_later(now, host.name, None)

    def standby_live(self: CP) -> bool:
        """A standby registered and heard within host_timeout (a loss seen now is witnessed)."""
        s = self.standby
        return s is not None and s.usable and time.monotonic() - s.last_rx <= self.host_timeout

    def keep_for_return(self: CP, host: HostProtocol) -> None:
        """`host`, the active, lost with no standby to take over: its sessions wait for it to
        register again (RETURN_WAIT_S), then are closed if nobody can take them (`tick_alone`)."""
        n = sum(1 for t in self.terms.values() if t.active is not None and t.active.host is host)
        if not n:
            return
        self.kept_for = (host, time.monotonic() + RETURN_WAIT_S)
        log.info(
            "sessions_kept_for_return",
            host=host.name,
            sessions=n,
            wait_s=RETURN_WAIT_S,
            msg="the active's link is gone and no standby can take over: its sessions wait for it to register again",
        )

    def kept_sessions_to(self: CP, host: HostProtocol, flip: bool) -> None:
        """`host` is given the role: the sessions kept for the lost active are its own again if it
        is that same process on a new link (adopted, the terminals told nothing); else closed now,
        each terminal told, as at the loss, but for a grant (`flip`) those with a standby session
        at `host`, which its flip takes (the flip's classic path would disconnect the others)."""
        kept, self.kept_for = self.kept_for, None
        self.quiet_until = None
        if kept is None:
            return
        old = kept[0]
        if old is host or old.same_process(host):
            log.info("sessions_kept_returned", host=host.name, msg="the active registered again: its sessions are adopted")
            return
        self._sessions_lost_without_standby(old, unless_standby_at=host if flip else None)

    def loss_told_after(self: CP, host: HostProtocol) -> None:
        """A standby registers (a new link) while the active is lost: it was not there throughout,
        so nobody here saw both; it is told of the loss once the active has had RETURN_WAIT_S from
        now to register again. But the active of record's own process registering as the standby
        holds no role (a grant it never read: both links lost in a switchover): told now."""
        a = self.active
        if a is not None and a.closed and a.same_process(host):
            self.quiet_until = None
            log.info(
                "active_back_as_standby",
                host=host.name,
                epoch=self.epoch,
                msg="the active of record registered as the standby: it holds no role; told now",
            )
            return
        self._tell_later(time.monotonic(), a.name if a is not None else None, host.name)

    def _tell_later(self: CP, now: float, active: str | None, standby: str | None) -> None:
        until = now + RETURN_WAIT_S
        if self.quiet_until is not None and self.quiet_until >= until:
            return
        self.quiet_until = until
        log.info(
            "active_loss_told_later",
            host=active,
            standby=standby,
            wait_s=RETURN_WAIT_S,
            msg="the active's loss was seen with no standby heard (this CP or its network may have stalled): it may register again first",
        )

    def loss_quiet(self: CP) -> bool:
        """The active's unwitnessed loss is not told yet (`loss_told_after`)."""
        return self.quiet_until is not None and time.monotonic() < self.quiet_until

    def tick_alone(self: CP, now: float) -> None:
        """Periodic: the wait for the lost active ends (its sessions closed if no standby can take
        them; the standby told of the loss)."""
        kept = self.kept_for
        # (a standby there: kept for its grant, which closes those it has no standby session for)
        if kept is not None and now >= kept[1] and not (self.standby is not None and self.standby.usable):
            self.kept_for = None
            self._sessions_lost_without_standby(kept[0])
        q = self.quiet_until
        if q is not None and now >= q:
            self.quiet_until = None
            a = self.active
            if a is not None and self.loss is not None and not self.active_stopped_normally:
                self._notify_active_lost(a.name, "eof" if a.closed else "silent")
