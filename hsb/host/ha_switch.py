"""The active role changing hands, as the state machine carries it out: a failover asked of the
CP when the active is lost (SPEC §5.4), the grant taken up, and a planned switchover (§7:
release, replies finished, handover, the old active turned standby). A mixin of
`hsb.host.ha.HA`; the CP decides who gets the role (`hsb.cp.arbitration`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.states import ACTIVE_STOPPED, ESTABLISHED, HANDING_OVER, RELEASING, SERVING, WAITING

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")


class SwitchSide:
    """The failover and switchover rules of `HA` (see the module docstring)."""

    # the state machine's state that these rules change (set in HA.__init__)
    epoch: int
    established_since: float | None
    own_startup_id: int | None
    partner_startup_id: int | None
    partner_instance: str | None
    partner_batch_records: int | None
    generation: int | None
    last_error: str | None
    takeover: dict[str, Any] | None
    switch_requested_at: float | None
    switch_sent_at: float | None
    active_stopped_by: str | None
    release_pending: bool
    counters: dict[str, int]

    # ------------------------------------------------------------------ failover (§5.4)
    async def on_active_lost(self: HA, host: str, why: str, via: str) -> None:
        if self.role != "standby":
            return
        if why == "stopping":
            if self.state != ACTIVE_STOPPED:
                self.active_stopped_by = host or self.srv.peer.peer_name
                self.set_state(ACTIVE_STOPPED, f"the active {host} stopped normally (told by the {via})")
            return
        if self.state == ACTIVE_STOPPED:
            return
        await self.request_switchover(f"active lost ({why}, told by the {via})")

    async def request_switchover(self: HA, reason: str, planned: bool = False, kind: str = "failover") -> None:
        if not self.registered:
            self.last_error = f"cannot ask for a switchover ({reason}): not registered at the CP"
            return
        if self.switch_requested_at is not None and time.monotonic() - self.switch_requested_at < 1.0:
            return
        self.switch_requested_at = time.monotonic()
        self.takeover = {"reason": reason, "requested_at": time.time(), "established": self.state == ESTABLISHED, "planned": planned}
        log.info("switchover_requested", reason=reason, established=self.state == ESTABLISHED)
        self.switch_sent_at = time.monotonic()
        self.srv.cp.send({"t": "switchover", "reason": reason, "planned": planned, "kind": kind})

    async def ev_reload(self: HA) -> None:
        self.srv.start_reload()

    async def ev_promote(self: HA) -> None:
        await self.request_switchover("promote (operator)", kind="promote")

    async def on_switch_granted(self: HA, epoch: int) -> None:
        """Become the active exactly as one that started active (B from own count) [0051]."""
        if self.takeover is None or self.switch_requested_at is None:
            self.takeover = {"reason": "planned switchover", "requested_at": time.time(), "established": self.state == ESTABLISHED, "planned": True}
        self.switch_requested_at = None
        self.epoch = epoch
        self.srv.takeover.stop_following()
        n = self.switched_sessions
        self.partner_instance = None
        self.partner_startup_id = None
        self.own_startup_id = None
        self.established_since = None
        self.generation = None
        self.partner_batch_records = None
        self.last_error = None
        self.set_state(SERVING, f"switchover granted at epoch {epoch}", role="active")
        planned = bool(self.takeover and self.takeover.get("planned"))
        self.counters["switchovers" if planned else "failovers"] += 1
        if self.takeover is not None:
            self.takeover["granted_at"] = time.time()
            self.takeover["duration_s"] = round(self.takeover["granted_at"] - self.takeover["requested_at"], 6)
            self.takeover["epoch"] = epoch
            self.takeover["sessions_switched"] = n
        log.info("switchover_complete", epoch=epoch, sessions=n, reason=(self.takeover or {}).get("reason"))
        self.srv.takeover.become_writer()
        self.send_active_startup()

    # ------------------------------------------------------------------ planned switchover (§7)
    def switchover_refusal(self: HA) -> str | None:
        """Why a planned switchover cannot start now, or None."""
        if self.role != "active":
            return f"{self.name} is the {self.role}, not the active; run it against the active host"
        if self.state != ESTABLISHED:
            return f"no established standby ({self.describe()}); a planned switchover needs hot standby"
        return None

    async def ev_switchover(self: HA) -> None:
        why = self.switchover_refusal()
        if why is not None:
            self.last_error = f"planned switchover refused: {why}"
            log.warning("switchover_refused", reason=why)
            return
        self.release_pending = True
        self.set_state(RELEASING, "planned switchover: stop taking new deliveries")
        self.srv.cp.send({"t": "release", "epoch": self.epoch})

    async def on_released(self: HA) -> None:
        """Every delivery the CP will send us has arrived: finish them, then hand over."""
        if not self.release_pending:  # the state may have moved (a resync); the intent has not
            return
        self.release_pending = False
        done = await self.srv.delivery.drain(10.0)
        log.info("replies_finished", complete=done, for_="planned switchover")
        self.set_state(HANDING_OVER, "replies finished; handing over to the standby")
        self.srv.cp.send({"t": "handover", "epoch": self.epoch})

    async def on_demoted(self: HA, new_active: str) -> None:
        """The old active of a planned switchover turns into the standby (new startup id, batch read)."""
        n = self.srv.sessions_ctl.drop_active_sessions()
        self.srv.takeover.stop_ring_writer()
        self.partner_startup_id = None
        self.partner_instance = None
        self.established_since = None
        self.generation = None
        self.set_state(WAITING, f"planned switchover: {new_active} is active now", role="standby")
        self.counters["switchovers"] += 1
        log.info("switchover_complete", epoch=self.epoch, new_active=new_active, sessions_handed_over=n, planned=True)
        self.maybe_standby_startup()
