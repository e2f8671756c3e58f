"""What the CP's host link brings the state machine: the link made (this host's register), lost,
or not made (the status's last error; the peer link's too), and the CP's frames to this host:
`registered`, the grants, `demoted`, `fenced`, the CP's errors and refusals. A mixin of
`hsb.host.ha.HA`, the one place that decides: the HA loop takes these as events in order
(`ev_cp_*`); `link_event` is the part of a frame that changes who serves, taken at once in link
order (`HostServer._cp_frame`) so the session requests right behind it are handled under the new
epoch. The link itself is `hsb.host.cplink`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.host.lease import clock as lease_clock
from hsb.host.rejoin import refused_at_start
from hsb.host.states import ESTABLISHED, FENCED, HANDING_OVER, RELEASING, SERVING, STARTING, WAITING
from hsb.wire.framing import batch_bytes, payload_max

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")

# the status's last error while a link cannot be made (ev_link_problem): what begins it, by link
LINK_PROBLEM = {"cp": "host link to the CP not made: ", "peer": "peer link not made: "}
TAKEOVER_REFUSED = "takeover refused by the CP: "  # (the last error's start: cleared once the active is back)


class CPSide:
    """The CP link's events of `HA` (see the module docstring)."""

    # the state machine's state that these events change (set in HA.__init__)
    registered: bool
    epoch: int
    granted: bool
    register_sent_at: float
    last_error: str | None
    lost_serving: bool
    release_pending: bool
    role_announced: bool
    switch_requested_at: float | None
    told_timeout_below: tuple[float, float] | None  # (heartbeat_timeout, lease) last warned of
    switch_sent: dict[int, float]
    switch_refusals: int
    switched_sessions: int

    # ------------------------------------------------------------------ CP link events
    def link_event(self: HA, msg: dict[str, Any]) -> None:
        """The synchronous part of registered / switch_granted / fenced (see HostServer._cp_frame)."""
        t = msg["t"]
        if not faults.SELF_FENCING and t in ("fenced", "error"):
            return
        if t == "registered":
            self.srv.sessions_ctl.cp_registered = True
            self.srv.sessions_ctl.open_batch_bytes = batch_bytes(msg, "open_batch")  # the CP takes standby opens batched
            own = self.srv.cfg.host.max_frame  # a reply must fit the CP's frames too
            self.srv.delivery.max_reply = payload_max(min(own, batch_bytes(msg, "max_frame") or own))
            self.srv.tell_service_bounds(msg.get("held_bound"))
            self.epoch = int(msg.get("epoch", 0))
            self.lease.duration = float(msg.get("lease", 0.0))
            self._timeout_below_lease()
            # the CP answered the register sent then, and any heartbeat it acked since (it acks once
            # this host holds the role: a registration it deferred comes after a lease's time)
            self.lease.extend(max(self.register_sent_at, self.lease.answered_at))
            self.granted = msg.get("role") == "active"
            if not self.granted:
                self.srv.delivery.health.cleared()  # (a host that was active, back as the standby)
            else:
                log.info("serving_as_active", epoch=self.epoch, how="registered", lease_s=self.lease.duration)
                self._announce_active()
                if msg.get("adopt") is True:  # the CP keeps our open sessions: name them (hsb.cp.adopt)
                    self.srv.sessions_ctl.adopt_sessions()
                else:  # it keeps none (resume_window 0, a CP of before): ours are closed, and opened
                    self.srv.sessions_ctl.close_unkept()  # again as the CP asks for them
            self._lease_renewed()
        elif t == "switch_granted":
            if self.granted:
                # the role back at a new epoch (our planned switchover undone, its grantee lost):
                # the CP hands every message it holds to us again, marked, right after this
                # frame; what our queues still hold from before would reach the service twice,
                # and out of order. Dropped now, before those frames are read.
                self.srv.delivery.cancel()
            self.epoch = int(msg["epoch"])
            self.lease.duration = float(msg.get("lease", self.lease.duration))
            # the CP answered the request it names (sent then); a grant that answers none (a
            # planned switchover's handover, a CP that does not name it) renews from the newest
            # heartbeat the CP answered, as any frame it answered
            req = msg.get("req")
            sent_at = self.switch_sent.get(req) if isinstance(req, int) else None
            self.lease.extend(max(self.lease.answered_at, sent_at or 0.0))
            self.switch_sent.clear()
            self.granted = True
            log.info("serving_as_active", epoch=self.epoch, how="switch granted", lease_valid=self.lease.valid())
            self._lease_renewed()
            self.switched_sessions = self.srv.sessions_ctl.promote_standby_sessions()
        elif t == "demoted":
            self.epoch = int(msg["epoch"])
            self.granted = False
            self.srv.delivery.cancel(role_ended=True)
            if msg.get("keeps") is True:  # before the CP's standby_kept frames, which follow on this link
                self.srv.sessions_ctl.expect_kept()
        else:
            self.granted = False
            self.srv.delivery.cancel(role_ended=True)

    async def ev_cp_up(self: HA, link: int = 0) -> None:
        cp = self.srv.cp
        if link and (link != cp.connects or cp.fs is None):
            # a link since lost (this loop was held up meanwhile): the register goes on the link
            # it came up with, once; a second one on the live link would be refused (bad_role)
            # and that link closed
            log.debug("cp_up_stale", link=link, current=cp.connects)
            return
        role = self.role if self.role in ("active", "standby") else self.started_role
        self.register_sent_at = lease_clock()  # (the lease runs from it)
        self.srv.cp.send(
            {
                "t": "register",
                "role": role,
                "startup_id": self.own_startup_id or 0,
                "instance": self.instance,
                # re-deliveries may come batched, within what this host's frames may hold
                "deliver_batch": self.srv.cfg.host.max_frame // 4,
                # the CP limits the terminals' messages to what this host's frames can take
                "max_frame": self.srv.cfg.host.max_frame,
                # registered as the active, it names the sessions it has open, which the CP keeps
                "adopt": True,
                # demoted at a planned switchover, it takes the CP's word for which of its active
                # sessions are now its standby sessions (standby_kept)
                "keep_standby": self.srv.cfg.host.fast_switch,  # conventional: no standby sessions at all
                # it marks a message redelivered itself when it handed that terminal's id (or a
                # higher one) to its service before: the CP may deliver before its record is durable
                "marks_repeats": True,
            }
        )

    async def ev_link_problem(self: HA, link: str, why: str | None) -> None:
        """The CP link or the peer link cannot be made, as its log said (a refusal, a wrong port):
        the status's last error, until that link is made (`why` None)."""
        prefix = LINK_PROBLEM[link]
        if why is not None:
            self.last_error = prefix + why
        elif self.last_error is not None and self.last_error.startswith(prefix):
            self.last_error = None

    def _timeout_below_lease(self: HA) -> None:
        """Said once for each lease the CP tells and heartbeat_timeout set: a timeout below the
        lease drops this host's links (and, as the active, ends its serving) on a silence the CP
        would ride out; found by the slow-links walk-through, where raising only the CP's
        host_timeout and host_lease still failed over on a 1 s stall."""
        timeout, lease = self.srv.cfg.host.heartbeat_timeout, self.lease.duration
        if timeout >= lease or self.told_timeout_below == (timeout, lease):
            return
        self.told_timeout_below = (timeout, lease)
        log.warning(
            "heartbeat_timeout_below_lease",
            heartbeat_timeout=timeout,
            lease=lease,
            msg=(
                f"host.heartbeat_timeout ({timeout:g} s) is below the CP's host_lease ({lease:g} s): a silence of the CP or the"
                " peer longer than it drops this host's link (the active stops serving there, and the CP fails over) though"
                f" its lease would run on; raise heartbeat_timeout on both hosts to at least {lease:g} s (docs/operations.md §5,"
                " Riding out network stalls)"
            ),
        )

    async def ev_cp_down(self: HA, why: str) -> None:
        self.registered = False
        # a switchover request out on that link is lost with it (and so is its answer): the next
        # request, when the CP tells of the loss again on the next link, must go at once
        self.switch_requested_at = None
        self.switch_sent.clear()
        self.srv.sessions_ctl.cp_lost()
        if self.role == "active" and self.lost_serving:
            # cut off from the CP we serve nobody, and the CP may already have made the
            # standby active: stop saying we are the active (/active, status) until registered again
            self.lost_serving = False
            self.last_error = f"host link to the CP lost ({why}); not serving until registered again"
            log.warning("active_not_serving", reason=self.last_error)
            self.srv.on_state_change()
        if self.role == "standby" and self.state == ESTABLISHED:
            # the standby sessions were dropped at the CP with the link; reopen on reconnect
            self.last_error = f"host link to the CP lost: {why}"
        if self.role == "active" and self.state in (RELEASING, HANDING_OVER):
            # the CP forgets a release with the link (and a handover answer is lost with it): the
            # planned switchover is over, not pending for ever; the operator may ask again
            self.release_pending = False
            why = f"planned switchover abandoned: host link to the CP lost ({why})"
            self.switchover_ended("switchover_abandoned", why, why)

    async def ev_cp_frame(self: HA, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "registered":
            self.registered = True
            self.epoch = int(msg.get("epoch", 0))
            if self.last_error and self.last_error.startswith(("host link to the CP lost", LINK_PROBLEM["cp"])):
                self.last_error = None
            log.info("registered_at_cp", role=msg.get("role"), epoch=self.epoch, active=msg.get("active"))
            if self.role == "active":
                if self.state == STARTING:
                    self.set_state(SERVING, "registered at the CP as active")
                    self.send_active_startup()
            else:
                # a new link holds none of our standby sessions (opens sent while it was down went
                # nowhere; those the CP kept at a demotion went with the old link): open them again
                self.srv.sessions_ctl.reopen_standby_sessions()
                if self.state in (STARTING, WAITING):
                    self.set_state(WAITING, "registered at the CP as standby")
                    self.maybe_standby_startup()
        elif t == "error":
            code, text = msg.get("code"), msg.get("msg", "")
            if code == "active_exists":
                if self.started_role == "active" and self.epoch == 0 and faults.SELF_FENCING:
                    refused_at_start(self, msg)  # the standby's role now, or exit 76
                else:
                    self.fenced(f"another host is active at the CP: {text}")
            elif code == "fenced":
                self.fenced(text)
            elif code == "handed_over" and self.role == "active":
                # our planned switchover was granted, its `demoted` lost with the link: as if it came
                self.epoch = max(self.epoch, int(msg.get("epoch") or 0))
                log.warning("handed_over_while_link_down", active=msg.get("active"), epoch=self.epoch)
                await self.on_demoted(str(msg.get("active", "")))
            else:
                self.last_error = f"CP error {code}: {text}"
                log.error("cp_error", code=code, msg=text)
        elif t == "fenced":
            self.fenced(str(msg.get("msg", f"fenced at epoch {msg.get('epoch')}")))
        elif t == "active_lost":
            await self.on_active_lost(str(msg.get("host", "")), str(msg.get("why", "")), via="cp")
        elif t == "switch_granted":
            await self.on_switch_granted(int(msg["epoch"]))
        elif t == "released":
            await self.on_released()
        elif t == "handover_refused":
            code = msg.get("code")
            why = f"planned switchover refused by the CP: {msg.get('reason')}"
            self.switchover_ended("switchover_refused", why, msg.get("reason"), code if isinstance(code, str) else None)
        elif t == "demoted":
            await self.on_demoted(str(msg.get("active", "")))
        elif t == "switch_refused":
            self.switch_requested_at = None
            self.switch_refusals += 1
            log.warning("switchover_refused", reason=msg.get("reason"))
            # (its request for the active role: a promote, or a takeover after the active's loss)
            self.last_error = f"{TAKEOVER_REFUSED}{msg.get('reason')}"

    def _announce_active(self: HA) -> None:
        """The CP granted the active role this process started in, at its registration: the
        role-change hook runs once for it, as keepalived's notify does at its start. The frame is
        read ahead of the loop, which moves a host still `starting` to `serving` (ev_cp_frame):
        the hook hears that state, the one it holds as the active (`starting` holds no role)."""
        if not self.role_announced and self.role == "active":
            self.role_announced = True
            self._fire_hook(SERVING if self.state == STARTING else self.state, "registered with the CP as the active")

    def fenced(self: HA, why: str) -> None:
        if not faults.SELF_FENCING:
            log.warning("fence_ignored", why=why, msg="self-fencing disabled (test only)")
            return
        self.set_state(FENCED, why)
        self.srv.delivery.cancel(role_ended=True)
        from hsb.cli import EXIT_FENCED

        self.fail(EXIT_FENCED, f"this host was fenced by the CP and must stop serving: {why}", "fenced")
