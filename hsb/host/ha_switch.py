"""The active role changing hands, as the state machine carries it out: a failover asked of the
CP when the active is lost (SPEC §5.4), the grant taken up, and a planned switchover (§7:
release, replies finished, handover, the old active turned standby). A mixin of
`hsb.host.ha.HA`; the CP decides who gets the role (`hsb.cp.arbitration`).

The HA loop never waits here for long: the replies of a planned switchover are waited for in a
task of their own (`_finish_replies`), whose end comes back to the loop as an event; the loop
goes on meanwhile (heartbeats, the CP's notices, systemd's watchdog pings)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.lease import clock as lease_clock
from hsb.host.states import ACTIVE_STOPPED, BATCH_WRITING, ESTABLISHED, HANDING_OVER, RELEASING, SERVING, STOPPING, WAITING

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")

# the CP's handover_refused code when no standby host is registered just then (its CP link blipped)
NO_STANDBY_AT_CP = "no_standby"
SWITCH_SENT_KEPT = 16  # unanswered switchover requests remembered (for the grant that names one)


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
    switch_peer_closed: bool  # (the last request said the peer link closed by its end)
    switch_kind: str
    takeover_t0: float  # when the takeover recorded in `takeover` was asked for (monotonic)
    switch_sent: dict[int, float]
    switch_req_n: int
    active_stopped_by: str | None
    active_stop_confirmed: bool
    release_pending: bool
    handover_sent: bool
    switch_token: int
    switch_after_resync: float | None
    resyncing: bool
    stopping: bool
    stop_handing_over: bool
    stop_asks_until: float | None
    stop_may_ask_again: bool
    deferred_batch: dict[str, Any] | None
    switchovers_ended: int
    counters: dict[str, int]

    # ------------------------------------------------------------------ failover (§5.4)
    async def on_active_lost(self: HA, host: str, why: str, via: str, cp_confirmed: bool | None = None) -> None:
        """The active is gone: `why` "stopping" is a normal termination (§5.3), anything else a
        loss. `cp_confirmed`: the peer's word on whether the CP answered its `stopping`."""
        if self.role != "standby" or self.stopping:  # (a stopping standby takes nothing over)
            return
        if why == "stopping":
            confirmed = via == "cp" or cp_confirmed is True  # (the CP's own word is its confirmation)
            if self.state != ACTIVE_STOPPED:
                self.active_stopped_by = host or self.srv.peer.peer_name
                self.active_stop_confirmed = confirmed
                log.info("active_stopped_not_taking_over", host=self.active_stopped_by, via=via, cp_confirmed=confirmed)
                self.set_state(ACTIVE_STOPPED, f"the active {host} stopped normally (told by the {via})")
            elif confirmed:
                self.active_stop_confirmed = True
            return
        if self.state == ACTIVE_STOPPED:
            if via != "cp":
                return
            # The CP reports a loss, not a normal termination: it was never told of the stop (its
            # `stopping` frame went unprocessed: the CP restarting, the link dropped) and still
            # counts that host as the active. The CP is the arbiter (§5.4): "the standby does not
            # take over" holds only for a stop the CP knows of. It sends this notice once.
            log.warning(
                "active_stop_unconfirmed_taken_over",
                host=host,
                why=why,
                cp_confirmed=self.active_stop_confirmed,
                msg="the CP reports the active lost, not stopped normally: asking it for the active role",
            )
            await self.request_switchover(f"active lost ({why}, told by the cp) after a stop the CP did not record")
            return
        await self.request_switchover(f"active lost ({why}, told by the {via})")

    async def request_switchover(self: HA, reason: str, planned: bool = False, kind: str = "failover") -> None:
        if self.stopping:
            self.last_error = f"cannot ask for a switchover ({reason}): {self.name} is stopping"
            return
        if not self.registered:
            self.last_error = f"cannot ask for a switchover ({reason}): not registered at the CP"
            return
        # the peer link from the active closed by its end too: the CP grants without waiting out
        # that host's lease (hsb.cp.arbitration); a request already out without it is sent again
        peer_closed = kind == "failover" and not planned and self.srv.peer.closed_by_peer()
        if (
            self.switch_requested_at is not None
            and time.monotonic() - self.switch_requested_at < 1.0
            and not (peer_closed and not self.switch_peer_closed)
        ):
            return
        self.switch_peer_closed = peer_closed
        self.switch_kind = kind
        self.switch_requested_at = time.monotonic()
        self.takeover = {"reason": reason, "requested_at": time.time(), "established": self.state == ESTABLISHED, "planned": planned}
        self.takeover_t0 = time.monotonic()  # (the duration: a step of the wall clock moves nothing)
        log.info("switchover_requested", reason=reason, established=self.state == ESTABLISHED)
        self.switch_req_n += 1
        self.switch_sent[self.switch_req_n] = lease_clock()  # (the grant names the request it answers)
        while len(self.switch_sent) > SWITCH_SENT_KEPT:  # (one a second at most: the oldest long refused)
            del self.switch_sent[min(self.switch_sent)]
        ask: dict[str, Any] = {"t": "switchover", "reason": reason, "planned": planned, "kind": kind, "req": self.switch_req_n}
        if peer_closed:
            ask["peer_closed"] = True
        self.srv.cp.send(ask)

    async def ev_reload(self: HA) -> None:
        self.srv.start_reload()

    async def ev_promote(self: HA) -> None:
        await self.request_switchover("promote (operator)", kind="promote")

    async def on_switch_granted(self: HA, epoch: int) -> None:
        """Become the active exactly as one that started active (B from own count) [0051]."""
        if self.role == "active":
            # the role back, at a new epoch: our planned switchover's standby was lost before its
            # grant took effect (the CP's switchover_undone). No takeover of ours: it ended
            # without the grant, the active serves on (a stop waiting on it stops waiting)
            self.epoch = epoch
            self.switch_requested_at = None
            self.switchover_ended(
                "switchover_undone", f"planned switchover undone at epoch {epoch}: the standby was lost before it took effect", "standby lost"
            )
            return
        if self.takeover is None or self.switch_requested_at is None:
            self.takeover = {"reason": "planned switchover", "requested_at": time.time(), "established": self.state == ESTABLISHED, "planned": True}
            self.takeover_t0 = time.monotonic()
        self.switch_requested_at = None
        self.epoch = epoch
        self.cancel_batch_apply()  # (a batch read's standby opens still waited for: ours are active now)
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
            self.takeover["duration_s"] = round(time.monotonic() - self.takeover_t0, 6)
            self.takeover["epoch"] = epoch
            self.takeover["sessions_switched"] = n
        log.info("switchover_complete", epoch=epoch, sessions=n, reason=(self.takeover or {}).get("reason"))
        self.srv.takeover.become_writer()
        self.send_active_startup()

    # ------------------------------------------------------------------ planned switchover (§7)
    def switchover_refusal(self: HA, stop: bool = False) -> str | None:
        """Why a planned switchover cannot start now, or None. A batch write for a resync of the
        established standby is no refusal: the switchover starts once the standby is ready again.
        A standby whose view of the sessions is stale refuses the operator's switchover, not a
        stop's handover (`stop`): the stop would otherwise end the service for everyone, while a
        crash fails over to that same view anyway (`stale_view_caveat`). So does a standby out of
        sight only with the peer link (`standby_behind_cut`: the CP, which grants the handover
        only to a standby registered there, decides)."""
        if self.role != "active":
            return f"{self.name} is the {self.role}, not the active; run it against the active host"
        if self.stopping:
            return f"{self.name} is stopping"
        if not self.registered:
            # its release would carry the epoch before the registration's: a stale frame, fenced
            return f"{self.name} is not registered at the CP (its link to the CP is down or just came back); ask again once it is"
        if self.state != ESTABLISHED and not (self.state == BATCH_WRITING and self.resyncing) and not (stop and self.standby_behind_cut()):
            return f"no established standby ({self.describe()}); a planned switchover needs hot standby"
        if self.standby_view_stale() and not stop:
            # (`check_ring_writes`) it would hand over a view stopped where the writes stopped: the
            # terminals logged on since have no standby session, those closed since are promoted there
            return (
                f"the standby's view of the sessions is stale: {self.name} cannot write the takeover ring "
                f"({self.ring_write_error()}); check the takeover storage, and ask again once hot standby is back"
            )
        return None

    def stale_view_caveat(self: HA) -> str:
        """What a stop's handover to a standby whose view of the sessions is stale costs."""
        return (
            f"the standby's view of the sessions is stale ({self.name} cannot write the takeover ring: "
            f"{self.ring_write_error()}): terminals logged on since the writes stopped "
            "are switched the classic way (disconnected, they log on again)"
        )

    def promote_refusal(self: HA) -> str | None:
        """Why this host cannot ask the CP for the active role now, or None: one the CP has not
        registered (its CP link down, or refused as the standby because the CP has another) would
        drop the request (`request_switchover`), and hsbctl promote would wait for nothing."""
        if self.role != "standby":
            return f"{self.name} is {self.role}, not a standby"
        if self.stopping:
            return f"promote refused: {self.name} is stopping"
        if not self.registered:
            return (
                f"promote refused: {self.name} is not registered at the CP (its link to the CP is down, or the CP has another standby);"
                " promote the standby the CP names ('hsbctl status')"
            )
        return None

    def switchover_over(self: HA, code: str | None = None) -> None:
        """A planned switchover ended without the grant (refused, abandoned). A stop waiting on it
        (`stop_handing_over`) stops waiting and runs the normal stop: from now on, so nothing of
        hot standby starts in between (a resync held during the handover, or asked now). Not when
        the CP refused it only because the standby was not registered just then (its CP link
        blipped) and the stop may still ask again (`stop_asks_until`): HostServer.graceful_stop
        asks again while the peer link still shows hot standby."""
        self.switchovers_ended += 1
        self.handover_sent = False  # (answered, or lost with the link: the CP holds it no more)
        if not self.stop_handing_over:
            return
        if code == NO_STANDBY_AT_CP and self.stop_asks_until is not None and time.monotonic() < self.stop_asks_until:
            self.stop_may_ask_again = True
        else:
            self.stopping = True

    @property
    def may_deliver(self: HA) -> bool:
        """Messages may go to the service now: this host serves (its lease, `serving`) and has no
        handover at the CP. From the handover on, until the CP answers it, what waits here stays
        there: the CP may grant it and hand those messages to the new active (marked), and the two
        would run them at once; a stop meanwhile (its state `stopping`) does not change that."""
        return self.serving and self.state != HANDING_OVER and not self.handover_sent

    def switchover_under_way(self: HA) -> bool:
        """A planned switchover was started and has neither completed nor ended."""
        return self.state in (RELEASING, HANDING_OVER) or self.switch_after_resync is not None

    async def ev_switchover(self: HA) -> None:
        if self.role == "active" and self.switchover_under_way():
            return  # asked again (an operator's, then a stop's): that one goes on
        why = self.switchover_refusal(stop=self.stop_handing_over)
        if why is not None:
            self.last_error = f"planned switchover refused: {why}"
            log.warning("switchover_refused", reason=why)
            self.switchover_over()
            return
        if not self.stop_handing_over:  # (a stop hands over all the same: its other way ends the service)
            unwritable = await self.srv.takeover.unwritable(self.name)
            if unwritable is not None:
                # the new active writes it from its first batch write: handed over, the pair would
                # be left without hot standby, every batch write failing (batch_write_failed)
                self.switchover_ended("switchover_refused", f"planned switchover refused: {unwritable}", unwritable)
                return
        if self.state == BATCH_WRITING:
            # the standby asked for a new batch: hand over once it is ready again (or end the
            # switchover if it is not within the standby's own wait for a batch)
            if self.switch_after_resync is None:
                self.switch_after_resync = time.monotonic() + self.batch_wait_s
                log.info("switchover_waits_for_resync", at_most_s=self.batch_wait_s)
            return
        self.start_release()

    def start_release(self: HA) -> None:
        """Planned switchover, step 1: ask the CP to deliver nothing more to this host."""
        self.switch_after_resync = None
        self.switch_token += 1
        self.release_pending = True
        self.set_state(RELEASING, "planned switchover: stop taking new deliveries")
        if not self.srv.cp.send({"t": "release", "epoch": self.epoch}):
            self.release_pending = False
            self.switchover_ended("switchover_not_sent", "planned switchover abandoned: the host link to the CP is down", "host link to the CP down")

    def resync_done(self: HA) -> None:
        """A switchover that waited for a resync: started now the standby is ready again, or ended
        if the resync ended otherwise (the standby lost, the batch write failed) or took too long,
        or if it may not start any more (`switchover_refusal`): the standby's view of the sessions
        went stale meanwhile (the active's ring writes failing) ends it at once, saying so."""
        if self.switch_after_resync is None:
            return
        stale = self.standby_view_stale() and not self.stop_handing_over  # (a stop hands over all the same)
        if self.state == BATCH_WRITING and time.monotonic() < self.switch_after_resync and not stale:
            return
        refusal = self.switchover_refusal(stop=self.stop_handing_over) if self.state == ESTABLISHED or stale else None
        if self.state == ESTABLISHED and refusal is None:
            self.start_release()
            return
        self.switch_after_resync = None
        why = f"planned switchover refused: {refusal or f'the standby did not become ready again after its resync ({self.describe()})'}"
        if self.state == BATCH_WRITING:  # (still waiting for the standby: the resync goes on, the switchover not)
            self.last_error = why
            log.warning("switchover_refused", reason=refusal or "the standby was not ready again in time after its resync")
            self.switchover_over()
            return
        self.switchover_ended("switchover_refused", why, refusal or "no established standby after the resync")

    async def on_released(self: HA) -> None:
        """Every delivery the CP will send us has arrived: finish them (in a task: the loop goes
        on meanwhile), then hand over (`ev_replies_finished`)."""
        if not self.release_pending:  # (the "released" of a normal stop, or of an ended switchover)
            return
        self.release_pending = False
        token = self.switch_token
        # an exception in the wait (a bug) goes on as a wait that timed out does: to the handover,
        # which the CP grants or refuses (ending it here would leave the CP holding the release,
        # delivering nothing to this host: only the handover's answer or the link's loss undoes it)
        self.spawn(self._finish_replies(token), failed=lambda exc: self.post("replies_finished", token=token, complete=False))

    async def _finish_replies(self: HA, token: int) -> None:
        done = await self.srv.delivery.drain(10.0)
        self.post("replies_finished", token=token, complete=done)

    async def ev_replies_finished(self: HA, token: int, complete: bool) -> None:
        if token != self.switch_token or self.role != "active" or self.exit is not None:
            return  # that switchover ended meanwhile (the CP link lost, a stop, a fence)
        log.info("replies_finished", complete=complete, for_="planned switchover")
        self.set_state(HANDING_OVER, "replies finished; handing over to the standby")
        if self.srv.cp.send({"t": "handover", "epoch": self.epoch}):
            self.handover_sent = True  # (until its answer: `may_deliver`)
        else:
            self.switchover_ended("switchover_not_sent", "planned switchover abandoned: the host link to the CP is down", "host link to the CP down")

    def abandon_switchover(self: HA) -> None:
        """A stop gives up waiting on a planned switchover and stops normally: nothing of that
        switchover goes on (a later "released" or resync must not hand over meanwhile)."""
        self.stopping = True
        self.switch_token += 1
        self.release_pending = False
        self.switch_after_resync = None
        self.deferred_batch = None

    async def on_demoted(self: HA, new_active: str) -> None:
        """The old active of a planned switchover turns into the standby (new startup id, batch
        read). One demoted while stopping (a stop's handover: SIGTERM, hsbctl stop; or the CP's
        grant came after the stop gave up waiting for it) is the standby of a process that ends:
        it is `stopping`, does not start as the standby (a STANDBY STARTUP in the moments before
        the process ends costs the new active a batch write for nobody), and the stop ends as one
        after a handover (HostServer.graceful_stop)."""
        if self.stop_handing_over:
            self.stopping = True
        self.switch_token += 1
        self.handover_sent = False
        self.deferred_batch = None  # (a resync or standby startup of the new active's standby: moot)
        n = self.srv.sessions_ctl.drop_active_sessions()
        self.srv.takeover.stop_ring_writer()
        self.partner_startup_id = None
        self.partner_instance = None
        self.established_since = None
        self.generation = None
        if self.stopping:
            self.set_state(STOPPING, f"planned switchover: {new_active} is active now; this host is stopping", role="standby")
        else:
            self.set_state(WAITING, f"planned switchover: {new_active} is active now", role="standby")
        self.counters["switchovers"] += 1
        log.info("switchover_complete", epoch=self.epoch, new_active=new_active, sessions_handed_over=n, planned=True, stopping=self.stopping)
        if self.stopping:
            self.srv.handed_over.set()
            return
        # (before the new active hears of this host as its standby, so before its batch and ring:
        # a group of ours still on its way would land over them)
        if not await self.srv.takeover.ring_write_done(self.srv.cfg.takeover.storage_timeout):
            log.warning(
                "ring_write_outstanding",
                msg="a ring write of this host's is still on its way to the storage: the standby startup waits for it",
            )
        self.maybe_standby_startup()
