"""hsbd's lifecycle: startup (size check, listeners, links), the HA loop, graceful shutdown.

Signal handlers only set flags. SIGTERM is the normal termination of SPEC §5.3:
replies in progress finish, the CP and the peer are told, nobody takes over.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from hsb.config import parse_addr
from hsb.host.admin import HostAdminProtocol
from hsb.host.config import HostConfig
from hsb.host.cplink import CPLink
from hsb.host.delivery import Delivery
from hsb.host.ha import HA
from hsb.host.peer import PeerLink
from hsb.host.service import Service
from hsb.host.sessions import SessionTable
from hsb.host.sessions_ctl import SessionsCtl
from hsb.host.takeover_io import TakeoverIO

log = structlog.get_logger("hsb.host")


class HostServer:
    def __init__(self, cfg: HostConfig, role: str, secret: bytes, service: Service) -> None:
        self.cfg = cfg
        self.secret = secret
        self.service = service
        self.sessions = SessionTable(cfg.terminal_table)
        self.takeover = TakeoverIO(cfg.takeover, self.sessions.own_total, cfg.host.name)
        self.ha = HA(self, role)
        self.sessions_ctl = SessionsCtl(self)
        h = cfg.host
        self.cp = CPLink(
            name=h.name,
            addr=h.cp,
            secret=secret,
            interval=h.heartbeat_interval,
            timeout=h.heartbeat_timeout,
            max_frame=h.max_frame,
            on_up=lambda: self.ha.post("cp_up"),
            on_frame=self._cp_frame,
            on_down=lambda why: self.ha.post("cp_down", why=why),
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
        )
        self.delivery = Delivery(service, self.cp.send, lambda: self.ha.epoch)
        self.exit_code: int | None = None
        self.exit_msg = ""
        self.should_exit = asyncio.Event()
        self.admin_server: asyncio.base_events.Server | None = None
        self.bound: dict[str, str] = {}
        self.state_listeners: list[Any] = []

    def _cp_frame(self, msg: dict[str, Any]) -> None:
        # Frames that change who serves take effect at once, in link order, so the
        # session requests and deliveries right behind them are handled under the
        # new epoch; the HA loop then does the rest of the procedure.
        t = msg["t"]
        if t in ("registered", "switch_granted", "fenced", "demoted") or (t == "error" and msg.get("code") in ("fenced", "active_exists")):
            self.ha.link_event(msg)
        if not self.sessions_ctl.on_cp_frame(msg):
            self.ha.post("cp_frame", msg=msg)

    def on_state_change(self) -> None:
        for fn in self.state_listeners:
            fn()

    def request_exit(self, code: int, msg: str) -> None:
        if self.exit_code is None:
            self.exit_code = code
            self.exit_msg = msg
        self.should_exit.set()

    async def peer_drain(self) -> None:
        fs = self.peer.outbound
        if fs is not None:
            try:
                await asyncio.wait_for(fs.drain(), 1.0)
            except (TimeoutError, ConnectionError, OSError):
                pass

    def status(self) -> dict[str, Any]:
        st = self.ha.status()
        st["listen"] = dict(self.bound)
        return st

    async def startup(self) -> None:
        h = self.cfg.host
        await self.takeover.size_check()
        log.info("size_check_ok", path=self.cfg.takeover.path, records=self.cfg.takeover.records, own_terminals=self.sessions.own_total, batch_records=self.takeover.own_batch_records)
        loop = asyncio.get_running_loop()
        ah, ap = parse_addr(h.admin_listen)
        self.admin_server = await loop.create_server(
            lambda: HostAdminProtocol(self, secret=self.secret, auth_timeout=5.0, idle_timeout=30.0, max_frame=h.max_frame),
            ah,
            ap,
            reuse_address=True,
        )
        s = self.admin_server.sockets[0].getsockname()
        self.bound["admin"] = f"{s[0]}:{s[1]}"
        await self.peer.start()
        self.bound["peer"] = self.peer.bound
        log.info("host_started", name=h.name, role=self.ha.role, instance=self.ha.instance, admin_listen=self.bound["admin"], peer_listen=self.bound["peer"], terminals=self.sessions.own_total)
        self.cp.start()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.should_exit.set)
        loop.add_signal_handler(signal.SIGINT, self.should_exit.set)
        await self.startup()
        ha_task = loop.create_task(self.ha.run())
        await self.should_exit.wait()
        if self.exit_code is None:
            await self.graceful_stop()
        ha_task.cancel()
        await self.close()
        if self.exit_code:
            log.error("host_exit", code=self.exit_code, msg=self.exit_msg)
        else:
            log.info("host_stopped", role=self.ha.role)
        return self.exit_code or 0

    async def graceful_stop(self) -> None:
        """Normal termination (§5.3): finish replies, tell the CP and the peer."""
        ha = self.ha
        ha.set_state("stopping", "SIGTERM: normal termination")
        if ha.role == "active":
            done = await self.delivery.drain(5.0)
            log.info("replies_finished", complete=done)
            self.cp.send({"t": "stopping", "epoch": ha.epoch})
            self.peer.send({"t": "active_stopping", "name": ha.name})
            await self.cp.drain()
            await self.peer_drain()
        self.exit_code = 0

    async def close(self) -> None:
        await self.cp.close()
        await self.peer.close()
        if self.admin_server is not None:
            self.admin_server.close()
        await self.takeover.close()
        try:
            await self.service.close()
        except Exception:  # pragma: no cover
            pass
