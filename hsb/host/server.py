"""hsbd's lifecycle: startup (size check, listeners, links), the HA loop, graceful shutdown.

Signal handlers only set flags. SIGTERM (systemctl stop, a reboot, an upgrade) on an active
with an established standby **hands over first**: a planned switchover, then the process ends,
so terminals see the switchover's pause, never an outage. Without an established standby, or
with `hsbctl stop --no-takeover`, it is the normal termination: replies in progress finish, the
CP and the peer are told, nobody takes over (docs/design.md). The peer is told whether the CP
confirmed the stop: one the CP never recorded is a loss to the CP, which it reports to the
standby, and the standby then takes over (the CP is the arbiter, SPEC §5.4).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import structlog

from hsb import faults, gcpolicy
from hsb.config import parse_addr
from hsb.host import reload as host_reload
from hsb.host.admin import HostAdminProtocol
from hsb.host.config import HostConfig
from hsb.host.cpgen import GenerationFile, generation_path
from hsb.host.cplink import CPLink
from hsb.host.delivery import Delivery
from hsb.host.ha import HA
from hsb.host.hooks import RoleHook, stop_time_warning
from hsb.host.peer import PeerLink
from hsb.host.sessions import SessionTable
from hsb.host.sessions_ctl import SessionsCtl
from hsb.host.states import HANDING_OVER
from hsb.host.takeover_io import TakeoverIO
from hsb.ops.http import json_route, start_http
from hsb.ops.limits import raise_nofile
from hsb.ops.listen import listening
from hsb.ops.metrics import HostCollector, registry_for
from hsb.ops.metrics import render as render_metrics
from hsb.ops.notify import notify
from hsb.service import once
from hsb.service.api import Service
from hsb.takeover.pair import pair_tag
from hsb.wire.framing import payload_max
from hsb.wire.tls import TLS, set_default_client

log = structlog.get_logger("hsb.host")

# A stop of an active whose established standby went out of sight with the peer link less than
# STANDBY_BLIP_S (hsb.host.ha) before (a blip: the standby itself stays established at the CP,
# following the ring) waits this long at most for the link to restore hot standby, and then hands
# over; else it stops normally. Within systemd's TimeoutStopSec=60 with the handover's 15 s (+ up
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
# At the close, the service calls cancelled then (a service may finish a section it shields first)
# are waited for this long at most from the cancel, before the service itself is closed.
CALLS_END_S = 5.0


class HostServer:
    def __init__(self, cfg: HostConfig, role: str, secret: bytes, service: Service, config_path: str | None = None, rejoin: bool = True) -> None:
        self.cfg = cfg
        # started as the active and refused (another host is): the standby then (hsb.host.rejoin), else exit 76
        self.rejoin = rejoin
        self.rejoined_from: str | None = None  # ... and the active it rejoined as the standby of
        self.config_path = config_path
        self._reloading: asyncio.Future[None] | None = None
        self.secret = secret
        self.service = service
        self.sessions = SessionTable(cfg.terminal_table)
        self.takeover = TakeoverIO(cfg.takeover, self.sessions.own_total, cfg.host.name, pair_tag(secret))
        self.ha = HA(self, role)
        self.sessions_ctl = SessionsCtl(self)
        h = cfg.host
        # TLS (hsb.wire.tls): this host's certificate on its CP and peer links (as a client) and
        # on its peer and admin listeners
        self.tls = TLS(cfg.tls.files()) if cfg.tls is not None else None
        set_default_client(self.tls.client if self.tls is not None else None)
        # the highest CP generation seen, kept across restarts beside the takeover file (hsb.host.cpgen)
        self.cp_memory = GenerationFile(generation_path(cfg.takeover.path, h.name), h.name, cfg.takeover.storage_timeout)
        self.cp = CPLink(
            name=h.name,
            addr=h.cp,
            secret=secret,
            interval=h.heartbeat_interval,
            timeout=h.heartbeat_timeout,
            max_frame=h.max_frame,
            on_up=lambda: self.ha.post("cp_up", link=self.cp.connects),
            on_frame=self._cp_frame,
            on_down=self._cp_down,
            lease=self.ha.lease,
            on_answer=lambda n: self.ha.lease_answered(n),
            on_bounds=self.tell_service_bounds,
            on_problem=lambda why: self.ha.post("link_problem", link="cp", why=why),
            memory=self.cp_memory,
            exiting=lambda: self.ha.exit is not None,
        )
        self.peer = PeerLink(
            name=h.name,
            listen=h.peer_listen,
            peer=h.peer,
            secret=secret,
            interval=h.heartbeat_interval,
            timeout=h.heartbeat_timeout,
            max_frame=h.max_frame,
            on_frame=lambda m: self.ha.post("peer_frame", msg=m),
            on_down=lambda why: self.ha.post("peer_down", why=why),
            on_up=lambda: self.ha.post("peer_up"),
            hello=self.ha.hello,
            on_problem=lambda why: self.ha.post("link_problem", link="peer", why=why),
        )
        # a reply's frame within max_frame (the CP's, set the same): its other fields take < 1 KiB
        # nothing new to the service once a planned switchover hands over (its drain gave up
        # waiting), until the CP answers: the new active may get those messages, marked
        # (HA.may_deliver; HA.switchover_ended reopens)
        self.delivery = Delivery(service, self.cp.send, lambda: self.ha.epoch, lambda: self.ha.may_deliver, max_reply=payload_max(h.max_frame))
        self.exit_code: int | None = None
        self.exit_msg = ""
        self.handover_unanswered = False  # a stop's handover went to the CP and got no answer
        self.handover_timed_out = False  # a stop's handover ran out of time (neither granted nor refused)
        self.should_exit = asyncio.Event()
        self.admin_server: asyncio.base_events.Server | None = None
        self.bound: dict[str, str] = {}
        self.ready_sent = False
        self.cp_stopped = asyncio.Event()
        self.cp_released = asyncio.Event()  # the CP's "released": it delivers nothing more to us
        self.handed_over = asyncio.Event()  # the CP granted a handover during the normal stop (HA.on_demoted)
        self.http_server: asyncio.base_events.Server | None = None
        self.reload_requested = False
        self.stop_mode = "takeover"  # SIGTERM hands over; `hsbctl stop --no-takeover` says "normal"
        self.hook = RoleHook(cfg.host.on_role_change, cfg.host.hook_timeout)
        self.closed = False

    def service_status(self) -> dict[str, Any]:
        """The service's name, whether it answers (hsb.host.delivery), and what it says of itself."""
        return self.delivery.health.report(self.service, self.cfg.host.service)

    def tell_service_bounds(self, held_bound: Any) -> None:
        """The CP's per-terminal bound, to a service that asks for it (`cp_bounds`); an error of
        the service's is logged, never the registration's."""
        if not isinstance(held_bound, int) or isinstance(held_bound, bool):
            return
        once.tell_cp_bounds(held_bound)  # every exactly-once helper's prune, asked or not
        hook = getattr(self.service, "cp_bounds", None)
        if not callable(hook):
            return
        try:
            hook(held_bound)
        except Exception as exc:  # noqa: BLE001 - the service's own bug: said, the host serves on
            log.error("service_error", error=f"cp_bounds: {type(exc).__name__}: {exc}")

    def _cp_down(self, why: str) -> None:
        # At once, before the link reconnects: work in progress would answer under an
        # epoch the CP no longer has (and get this host fenced). The CP re-delivers it.
        # A batch read waiting for standby-open answers stops waiting now, not in 30 s.
        self.sessions_ctl.cp_registered = False
        self.sessions_ctl.cp_lost()
        if not faults.SELF_FENCING:
            self.ha.post("cp_down", why=why)
            return
        self.delivery.cancel()
        self.ha.lease.reset()  # what the lost link answered no longer counts
        if self.ha.granted:
            self.ha.granted = False
            self.ha.lost_serving = True
        self.ha.post("cp_down", why=why)

    def _cp_frame(self, msg: dict[str, Any]) -> None:
        # Frames that change who serves take effect at once, in link order, so the
        # session requests and deliveries right behind them are handled under the
        # new epoch; the HA loop then does the rest of the procedure.
        t = msg["t"]
        if t == "stopped":
            self.cp_stopped.set()
            return
        if t == "released":
            self.cp_released.set()  # (and on to the HA loop: a planned switchover's next step)
        if t in ("registered", "switch_granted", "fenced", "demoted") or (
            t == "error" and msg.get("code") in ("fenced", "active_exists", "handed_over")
        ):
            self.ha.link_event(msg)
        if not self.sessions_ctl.on_cp_frame(msg):
            self.ha.post("cp_frame", msg=msg)

    def on_state_change(self) -> None:
        ha = self.ha
        ha.hook_acting()
        notify(STATUS=ha.describe())
        if not self.ready_sent and (
            (ha.role == "active" and ha.state in ("serving", "established")) or (ha.role == "standby" and ha.state == "established")
        ):
            notify(READY=1, STATUS=ha.describe())
            self.ready_sent = True

    # -- health (HTTP) ---------------------------------------------------------
    def healthy(self) -> bool:
        ha = self.ha
        if ha.state in ("fenced", "stopping", "starting"):
            return False
        return self.is_serving_active() or (ha.role == "standby" and ha.registered)

    def is_serving_active(self) -> bool:
        """The one test of "this host is the active now" (/active, status, metrics): the CP made it
        active, its lease is valid, and it is not stopping, fenced or handing over."""
        ha = self.ha
        return ha.role == "active" and ha.serving and ha.state not in ("fenced", "stopping", "handing_over")

    def routes(self) -> dict[str, Any]:
        reg = registry_for(HostCollector(self.status))
        return {
            "/health": json_route(lambda: (self.healthy(), self.status())),
            "/active": json_route(lambda: (self.is_serving_active(), self.status())),
            "/standby": json_route(lambda: (self.ha.role == "standby" and self.ha.is_established(), self.status())),
            "/metrics": lambda: render_metrics(reg),
        }

    def request_exit(self, code: int, msg: str) -> None:
        if self.exit_code is None:
            self.exit_code = code
            self.exit_msg = msg
        self.should_exit.set()

    async def peer_drain(self) -> None:
        fs = self.peer.outbound
        if fs is not None:
            try:
                async with asyncio.timeout(1.0):  # not wait_for (FrameStream.connect says why)
                    await fs.drain()
            except (TimeoutError, ConnectionError, OSError):
                pass

    def status(self) -> dict[str, Any]:
        st = self.ha.status()
        st["listen"] = dict(self.bound)
        return st

    async def startup(self) -> None:
        h = self.cfg.host
        if not faults.SELF_FENCING:
            log.warning("self_fencing_disabled", msg="HSB_TEST_DISABLE_SELF_FENCING=1: for tests only; this host never stops serving on its own")
        slow_stop = stop_time_warning(h.on_role_change, h.hook_timeout)  # (--check-config's line)
        if slow_stop is not None:
            log.warning("hook_timeout_outlasts_stop", hook_timeout=h.hook_timeout, msg=slow_stop)
        await self.takeover.size_check()
        self.takeover.watch_writable(h.name)
        log.info(
            "size_check_ok",
            path=self.cfg.takeover.path,
            records=self.cfg.takeover.records,
            own_terminals=self.sessions.own_total,
            batch_records=self.takeover.own_batch_records,
        )
        # the highest CP generation seen before this start: a CP below it is refused
        self.cp.cp_generation = await self.cp_memory.load()
        self.cp.cp_journal = self.cp_memory.saved_journal  # (and the journal it followed: a CP on another is refused)
        raise_nofile()
        loop = asyncio.get_running_loop()
        ah, ap = parse_addr(h.admin_listen)
        # an error names the config key and the fix for its kind (hsb.ops.listen)
        self.admin_server = await listening(
            "host.admin_listen",
            h.admin_listen,
            lambda: loop.create_server(
                lambda: HostAdminProtocol(
                    self,
                    secret=self.secret,
                    auth_timeout=5.0,
                    idle_timeout=30.0,
                    max_frame=h.max_frame,
                    tls=self.tls.server if self.tls is not None else None,
                ),
                ah,
                ap,
                reuse_address=True,
            ),
        )
        s = self.admin_server.sockets[0].getsockname()
        self.bound["admin"] = f"{s[0]}:{s[1]}"
        await self.peer.start(self.tls.server if self.tls is not None else None)
        self.bound["peer"] = self.peer.bound
        if h.http_listen:
            self.http_server, self.bound["http"] = await listening(
                "host.http_listen", h.http_listen, lambda: start_http(h.http_listen, self.routes())
            )
        log.info(
            "host_started",
            name=h.name,
            role=self.ha.role,
            instance=self.ha.instance,
            admin_listen=self.bound["admin"],
            peer_listen=self.bound["peer"],
            http_listen=self.bound.get("http"),
            terminals=self.sessions.own_total,
        )
        self.cp.start()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.should_exit.set)
        loop.add_signal_handler(signal.SIGINT, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self.startup()
        gcpolicy.apply()
        ha_task = loop.create_task(self.ha.run())
        await self.should_exit.wait()
        if self.exit_code is None:
            await self.graceful_stop()
        else:
            notify(STOPPING=1, STATUS=self.exit_msg[:200])
        ha_task.cancel()
        await self.close()
        if self.exit_code:
            log.error("host_exit", code=self.exit_code, msg=self.exit_msg)
        else:
            log.info("host_stopped", role=self.ha.role)
        return self.exit_code or 0

    RELOADABLE = (
        "host.heartbeat_interval",
        "host.heartbeat_timeout",
        "host.ring_poll_interval",
        "takeover.storage_timeout",
        "terminals",
        "terminal_groups",
    )

    def start_reload(self) -> None:
        """A SIGHUP's reload, on its own (the HA loop goes on meanwhile); one at a time, and one
        more if asked while it ran."""
        if self._reloading is not None and not self._reloading.done():
            self.reload_requested = True
            return

        self.reload_requested = False  # (now: one asked for from here on is another)

        async def run() -> None:
            try:
                await self.reload()
            except Exception:  # a bug: said in the log, the daemon goes on with what it has
                log.exception("config_reload_error")
            if self.reload_requested:  # asked again while it ran
                self._reloading = None
                self.start_reload()

        self._reloading = asyncio.ensure_future(run())

    async def reload(self) -> None:
        """Apply what can change while running; name what needs a restart (hsb.host.reload)."""
        await host_reload.apply(self)

    def _sighup(self) -> None:
        self.reload_requested = True  # the flag only; the HA loop reloads
        self.ha.post("reload")

    def request_stop(self, takeover: bool) -> None:
        """An operator's stop (admin link): recorded; the lifecycle acts on it."""
        self.stop_mode = "takeover" if takeover else "normal"
        self.should_exit.set()

    async def hand_over(self, timeout: float | None = None, ask: bool = True) -> bool:
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

    async def _hand_over_for_stop(self, under_way: bool) -> bool:
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

    async def registered_again(self) -> None:
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

    async def standby_back(self) -> bool:
        """An active whose established standby went out of sight with the peer link less than
        STANDBY_BLIP_S ago (`HA.standby_may_return`; one gone longer is taken to be down): wait up
        to STOP_PEER_WAIT_S for the link to restore hot standby (True), so that a stop just after a
        blip hands over instead of ending the service. Not longer, and no handover without it:
        this host cannot tell whether the standby is established still (a planned switchover
        needs hot standby, §5.3)."""
        ha = self.ha
        if not ha.standby_may_return():
            return False
        log.info("stop_waits_for_standby", at_most_s=STOP_PEER_WAIT_S, msg="the peer link dropped while hot standby was established")
        deadline = time.monotonic() + STOP_PEER_WAIT_S
        while time.monotonic() < deadline and ha.exit is None:
            if ha.role != "active" or ha.state != "serving" or ha.standby_out_of_sight is None:
                break
            await asyncio.sleep(0.02)
        return ha.switchover_refusal(stop=True) is None

    async def graceful_stop(self) -> None:
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
            if why is None:
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
                as_lost = self.handover_timed_out and ha.role == "active" and ha.established_since is not None
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

    def _stopped_after_handover(self) -> None:
        log.info("stopped_after_handover", new_active=self.peer.peer_name)
        notify(STOPPING=1, STATUS="stopped after handing over")
        self.exit_code = 0

    async def _tell_cp(self, msg: dict[str, Any], answered: asyncio.Event, timeout: float, unanswered: str) -> bool:
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

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ha.close()  # first: a slow close must not log a lease "lost" meanwhile
        # then nothing more to the service: with the CP link closing, its replies could not go,
        # and its effects would come after the CP closed the sessions (the CP hands them on); and
        # none of what the CP link still brings while a role hook finishes below
        self.delivery.stop_taking()
        calls_end_by = time.monotonic() + CALLS_END_S
        await self.hook.close()
        await self.cp.close()
        self.cp_memory.close()
        await self.peer.close()
        if self.admin_server is not None:
            self.admin_server.close()
        if self.http_server is not None:
            self.http_server.close()
        await self.takeover.close()
        # nothing calls into the service once it is closing: logon/close hooks, handlers
        await self.sessions_ctl.close()
        # and not while a call it was given still runs (cancelled above, it may not end at once)
        await self.delivery.calls_ended(calls_end_by - time.monotonic())
        try:
            await self.service.close()
        except Exception:  # pragma: no cover
            pass
