"""hsbd's stop: a planned stop of the active hands over first, else the normal termination.

SIGTERM (systemctl stop, a reboot, an upgrade) on an active with an established standby **hands
over first**: a planned switchover, then the process ends, so terminals see the switchover's
pause, never an outage. Without an established standby, or with `hsbctl stop --no-takeover`, it
is the normal termination: replies in progress finish, the CP and the peer are told, nobody takes
over (docs/design.md). The peer is told whether the CP confirmed the stop: one the CP never
recorded is a loss to the CP, which it reports to the standby, and the standby then takes over
(the CP is the arbiter, SPEC §5.4). A mixin of hsb.host.server.HostServer, which owns the rest of
the lifecycle.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.states import HANDING_OVER
from hsb.ops.notify import notify

if TYPE_CHECKING:
    from hsb.host.server import HostServer

log = structlog.get_logger("hsb.host")

# A stop of an active whose established standby went out of sight with the peer link less than
# STANDBY_BLIP_S (hsb.host.ha) before (a blip: the standby itself stays established at the CP,
# following the ring) waits this long at most for the link to restore hot standby, and then hands
# over (through the CP all the same if it does not come back: HA.standby_behind_cut). Within systemd's TimeoutStopSec=60 with the handover's 15 s (+ up
# to HANDOVER_ANSWER_S) and a normal stop's ~11 s.
STOP_PEER_WAIT_S = 3.0
# A stop whose CP link just came back waits this long at most for the registration's answer (its
# new epoch) before it tells the CP anything (within the same TimeoutStopSec=60 budget)
REGISTER_WAIT_S = 2.0
# A handover sent to the CP is answered (granted or refused) within the CP's own wait for the
# standby's sessions (HANDOVER_WAIT_S, 2 s) and its journal write of the new epoch: a stop whose
# limit runs out after the handover went waits this long from then for that answer. A normal stop
# instead could not take the handover back (the CP may grant it meanwhile, or end it with the role).
HANDOVER_ANSWER_S = 5.0
# A stop's handover that the CP refused only because no standby was registered there just then is
# asked again this often (within the handover's 15 s).
STOP_ASK_AGAIN_S = 0.5
# A stop's handover, asked again as above, ends within this (then a normal stop follows).
STOP_HANDOVER_S = 15.0


class Stopping:
    """The stop of HostServer: request_stop (the signal's flag), hand_over, graceful_stop."""

    # (HostServer's, set in its __init__; declared here, where the stop sets them too)
    stop_mode: str
    exit_code: int | None
    handover_timed_out: bool
    handover_unanswered: bool

    def request_stop(self: HostServer, takeover: bool) -> None:
        """An operator's stop (admin link): recorded; the lifecycle acts on it."""
        self.stop_mode = "takeover" if takeover else "normal"
        self.should_exit.set()

    async def hand_over(self: HostServer, timeout: float | None = None, ask: bool = True) -> bool:
        """A planned switchover before stopping (`ask`: asked now, else one is under way); True
        once this host is the standby. One that completes takes at most ~12 s (10 s for the replies
        in progress, 2 s for the standby's sessions at the CP), or after a resync under way up to
        max(5 s, 3 x storage_timeout) more, cut at `timeout` (STOP_HANDOVER_S), but never while the handover is at
        the CP: then its answer is waited for, up to HANDOVER_ANSWER_S from when it went.
        STOP_PEER_WAIT_S before it, 15 + 5 s, and then a normal stop's ~11 s, stay within the
        unit's TimeoutStopSec=60, after which systemd would SIGKILL."""
        ha = self.ha
        timeout = STOP_HANDOVER_S if timeout is None else timeout
        ended = ha.switchovers_ended
        ha.stop_handing_over = True  # (the switchover ending, the normal stop follows: HA.switchover_over)
        if ask:
            ha.post("switchover")  # the HA loop acts
        deadline = time.monotonic() + timeout
        answer_by: float | None = None  # the handover went to the CP: its answer is due by then
        while True:
            if ha.role == "standby":
                ha.stop_handing_over = False  # (done: the standby now, stopping: HA.on_demoted)
                return True
            # Refused (no standby any more, say) or abandoned: a normal stop then. Not the state:
            # a switchover waits for a resync under way (batch_writing), and a resync asked during
            # one waits for it (the state stays releasing): it ends only as ended.
            if ha.exit is not None or ha.switchovers_ended != ended:
                return False
            now = time.monotonic()
            if answer_by is None and ha.state == HANDING_OVER:
                answer_by = now + HANDOVER_ANSWER_S
            if now >= deadline and (answer_by is None or now >= answer_by):
                if answer_by is not None:
                    log.warning("stop_handover_unanswered", at_most_s=HANDOVER_ANSWER_S, msg="the CP did not answer the handover")
                    self.handover_unanswered = True  # (the CP may grant it still)
                self.handover_timed_out = True
                return False
            await asyncio.sleep(0.02)

    async def _hand_over_for_stop(self: HostServer, under_way: bool) -> bool:
        """`hand_over` for a stop, asked again (every STOP_ASK_AGAIN_S) while the CP refuses it
        only because no standby is registered there just then (its CP link blipped) and the peer
        link still shows hot standby, within the handover's `timeout` in all (so within the unit's
        TimeoutStopSec). True once this host is the standby."""
        ha = self.ha
        deadline = time.monotonic() + STOP_HANDOVER_S
        ha.stop_asks_until = deadline - STOP_ASK_AGAIN_S
        ha.stop_may_ask_again = False
        try:
            ok = await self.hand_over(ask=not under_way)  # (its own limit: STOP_HANDOVER_S)
            while not ok and ha.stop_may_ask_again and ha.exit is None and not ha.stopping:
                ha.stop_may_ask_again = False
                log.info("stop_handover_asked_again", reason=ha.last_error, msg="no standby registered at the CP just then; asked again")
                await asyncio.sleep(STOP_ASK_AGAIN_S)
                if ha.exit is not None or ha.stopping or ha.switchover_refusal(stop=True) is not None:  # (hot standby gone: a normal stop)
                    break
                ok = await self.hand_over(timeout=max(deadline - time.monotonic(), 1.0))
            return ok
        finally:
            ha.stop_asks_until = None
            ha.stop_may_ask_again = False

    async def registered_again(self: HostServer) -> None:
        """An active whose CP link is up but whose registration is not answered yet (the link
        just came back): wait up to REGISTER_WAIT_S for it, so that the stop's frames carry the
        epoch the registration gives."""
        ha = self.ha
        if ha.registered or not self.cp.up:
            return
        log.info("stop_waits_for_registration", at_most_s=REGISTER_WAIT_S)
        deadline = time.monotonic() + REGISTER_WAIT_S
        while not ha.registered and self.cp.up and ha.exit is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def standby_back(self: HostServer) -> None:
        """An active whose established standby went out of sight with the peer link less than
        STANDBY_BLIP_S ago (`HA.standby_may_return`): wait up to STOP_PEER_WAIT_S for the link to
        restore hot standby, so that a stop just after a blip hands over with the standby's state
        known. Not longer: without the link the stop hands over through the CP all the same, which
        grants it only to a standby registered there (`HA.standby_behind_cut`)."""
        ha = self.ha
        if not ha.standby_may_return():
            return
        log.info("stop_waits_for_standby", at_most_s=STOP_PEER_WAIT_S, msg="the peer link dropped while hot standby was established")
        deadline = time.monotonic() + STOP_PEER_WAIT_S
        while time.monotonic() < deadline and ha.exit is None:
            if ha.role != "active" or ha.state != "serving" or ha.standby_out_of_sight is None:
                break
            await asyncio.sleep(0.02)

    def cut_caveat(self: HostServer) -> str:
        """What a stop's handover to a standby out of sight with the peer link is
        (`HA.standby_behind_cut`), as hsbctl stop and the log say it."""
        ha = self.ha
        ago = ha.out_of_sight_s()
        first = f"it waits up to {STOP_PEER_WAIT_S:g} s for the link first; " if ha.standby_may_return() else ""
        return (
            f"the peer link to {self.peer.peer_name or 'the standby'} has been down for {ago:.0f} s: {first}the CP grants the handover"
            " only to a standby registered there (else nobody takes over: the normal stop)"
        )

    async def graceful_stop(self: HostServer) -> None:
        """Stop: hand over to an established standby first (§5.3), else the normal termination."""
        ha = self.ha
        if ha.role == "active":
            await self.registered_again()
        as_lost = False  # the stop ends as a lost link to the CP: the standby takes over
        if ha.role == "active" and self.stop_mode == "takeover":
            # a planned switchover under way (hsbctl switchover) is waited for, not cut short by
            # a normal stop that would leave nobody active
            under_way = ha.switchover_under_way()
            if not under_way:
                await self.standby_back()
            why = None if under_way else ha.switchover_refusal(stop=True)
            # the peer link not back: handed over through the CP all the same (a crash would fail over too)
            cut = not under_way and ha.standby_behind_cut()
            if why is None:
                if cut:
                    log.warning(
                        "stop_hands_over_peer_link_down",
                        peer=self.peer.peer_name,
                        down_s=round(ha.out_of_sight_s(), 1),
                        msg="the peer link is down: handing over through the CP, which grants it only to a standby registered there"
                        " (else nobody takes over: the normal stop)",
                    )
                if ha.standby_view_stale():
                    # handed over all the same: a normal stop would end the service for everyone,
                    # and a crash now would fail over to that same view
                    log.warning("stop_hands_over_stale_view", error=self.takeover.last_error, msg=ha.stale_view_caveat())
                notify(STATUS="handing over before stopping")
                log.info("stop_hands_over", msg="SIGTERM: a planned switchover first, then the process ends", under_way=under_way)
                if await self._hand_over_for_stop(under_way):
                    return self._stopped_after_handover()
                if ha.exit is not None:  # fenced (or failed) meanwhile: it exits with that code, and tells nobody
                    return
                # Out of time with hot standby still established (the CP slow to release or to
                # answer): a normal stop would end the service though nobody asked for that (§5.3:
                # only `--no-takeover`, or no established standby). The stop ends as a lost link
                # instead, as a crash would: the CP, the arbiter, fails over to the standby (or
                # grants the handover it holds). Refused (the CP has no standby): the normal stop.
                as_lost = self.handover_timed_out and ha.role == "active" and (ha.established_since is not None or cut)
                log.warning(
                    "stop_handover_failed",
                    then="failover" if as_lost else "normal stop",
                    msg="the planned switchover did not complete in time; the stop ends as a lost link to the CP, which fails over to"
                    " the standby (unless failover is paused there: hsbctl resume, or hsbctl promote)"
                    if as_lost
                    else "the planned switchover did not complete; stopping normally (nobody takes over)",
                )
            else:
                log.info("stop_without_takeover", reason=why)
        elif ha.role == "active" and ha.handover_sent:
            # `stop --no-takeover` once a planned switchover's handover is at the CP: it cannot be
            # taken back, and the CP may grant it and hand what waits here to the new active. Its
            # answer is waited for as a SIGTERM's stop waits for it (the normal stop's state must
            # not let those messages go to this host's service meanwhile)
            log.info("stop_waits_for_handover", at_most_s=HANDOVER_ANSWER_S, msg="a planned switchover's handover is at the CP")
            if await self.hand_over(timeout=0.0, ask=False):
                return self._stopped_after_handover()
            if ha.exit is not None:
                return
        if self.handover_unanswered:
            # the CP may still grant it (its journal slow, say) and hand what this host holds to
            # the new active: nothing more goes to this host's service, or the two would run the
            # same messages at once (it stays held at the CP, marked)
            self.delivery.stop_taking()
        # Nothing of a planned switchover goes on beside the normal stop (its "released", a resync
        # it held): the stop's release, stopping and the handover would race at the CP.
        ha.abandon_switchover()
        notify(STOPPING=1, STATUS="stopping")
        if self.stop_mode == "normal":
            why = "normal termination"
        elif as_lost:
            why = "stop: its handover ran out of time; a lost link to the CP, which fails over to the standby"
        elif ha.role != "active":
            # the standby's stop (a restart, an upgrade): nothing to hand over, the active serves on
            why = "stop: the standby stops; the active serves on without a standby"
        else:
            why = "stop: normal termination (no established standby)"
        ha.set_state("stopping", why)
        if ha.role == "active" and (as_lost or not ha.registered):
            # its link to the CP is down, or came back and the registration is not answered: a
            # release or stopping now would carry the epoch before (stale: fenced). The CP takes
            # the end of the link for a loss, and the standby takes over (so too after a handover
            # out of time, above: what is in progress here the CP gives the new active, marked)
            if not as_lost:
                log.warning("stop_not_registered", msg="not registered at the CP: the stop is a lost link to it, and the standby takes over")
            self.delivery.cancel()
        elif ha.role == "active":
            # the CP first stops delivering (as at a planned switchover's release), so that the
            # replies in progress can finish under load; the rest stays held at the CP
            await self._tell_cp({"t": "release", "epoch": ha.epoch}, self.cp_released, 2.0, "cp_did_not_confirm_release")
            done = await self.delivery.drain(5.0)
            log.info("replies_finished", complete=done)
            # nothing more goes to the service from here: what is still in progress (a service
            # failing, retried), or delivered since (a release the CP did not confirm in time, its
            # deliveries still coming), stays held at the CP for whoever serves next, marked.
            # Handed to the service after `stopping`, its reply would be refused and the link
            # closed before the CP's confirmation of the stop
            self.delivery.stop_taking()
            # A handover the stop gave up waiting for may still be granted (HA.on_demoted): this
            # host is the standby then, and tells nobody of a normal stop (the CP would not answer).
            if ha.role == "active":
                # keep reading until the CP has taken note; see CP.host_stopping
                confirmed = await self._tell_cp({"t": "stopping", "epoch": ha.epoch}, self.cp_stopped, 3.0, "cp_did_not_confirm_stop")
                # the standby does not take over a stop the CP confirmed; one it did not is a loss to
                # the CP (the link closes), which tells the standby so, and the standby acts on it
                if ha.role == "active":
                    self.peer.send({"t": "active_stopping", "name": ha.name, "cp_confirmed": confirmed})
            await self.cp.drain()
            await self.peer_drain()
            if self.handed_over.is_set():
                log.info("stopped_after_handover", new_active=self.peer.peer_name, msg="the CP granted the handover during the normal stop")
                notify(STOPPING=1, STATUS="stopped after handing over")
        if ha.exit is None:  # (a fence during the stop keeps its own exit code, 75)
            self.exit_code = 0

    def _stopped_after_handover(self: HostServer) -> None:
        log.info("stopped_after_handover", new_active=self.peer.peer_name)
        notify(STOPPING=1, STATUS="stopped after handing over")
        self.exit_code = 0

    async def _tell_cp(self: HostServer, msg: dict[str, Any], answered: asyncio.Event, timeout: float, unanswered: str) -> bool:
        """Send `msg` to the CP and wait up to `timeout` for `answered` (set by its answer); True
        once answered. Logged as `unanswered` when it does not come (a link down: nothing is
        waited for)."""
        answered.clear()
        if self.cp.send(msg):
            # (not waited for after a handover granted meanwhile: the CP answers that host no more)
            waits = [asyncio.ensure_future(answered.wait()), asyncio.ensure_future(self.handed_over.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if answered.is_set():
                return True
            if self.handed_over.is_set():
                return False
        log.warning(unanswered, cp_link="up" if self.cp.up else "down")
        return False
