"""hsbd's lifecycle: startup (size check, listeners, links), the HA loop, graceful shutdown.

Signal handlers only set flags. The stop itself (a planned stop of the active hands over first,
else the normal termination) is hsb.host.stopping's, a mixin of HostServer; the close of what
is left after it (the service's calls, the links, the listeners) is here.
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
from hsb.host.stopping import Stopping
from hsb.host.takeover_io import TakeoverIO
from hsb.ops.http import json_route, start_http
from hsb.ops.limits import raise_nofile
from hsb.ops.listen import listening
from hsb.ops.metrics import HostCollector, registry_for
from hsb.ops.metrics import render as render_metrics
from hsb.ops.notify import notify
from hsb.ops.wrapper import killing_wrapper
from hsb.service import once
from hsb.service.api import Service
from hsb.takeover.pair import pair_tag
from hsb.wire.framing import payload_max
from hsb.wire.tls import TLS, log_misnamed, set_default_client

log = structlog.get_logger("hsb.host")

# At the close, the service calls cancelled then (a service may finish a section it shields first)
# are waited for this long at most from the cancel, before the service itself is closed.
CALLS_END_S = 5.0


class HostServer(Stopping):
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
        log_misnamed(self.tls, h.name)
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
        wrapper = killing_wrapper("hsbd")
        if wrapper is not None:
            log.warning("started_under_su", msg=wrapper)
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
        self.cp.cp_takeover = self.cp_memory.saved_takeover  # (and which takeover made that generation: a copy's is refused)
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
