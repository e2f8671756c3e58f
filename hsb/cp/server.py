"""hsbcpd's lifecycle: startup (listeners), tick (host-link silence, heartbeats), graceful shutdown.

Signal handlers only set flags; the main loop acts on them.
"""

from __future__ import annotations

import asyncio
import signal
import time

import structlog

from hsb.config import parse_addr
from hsb.cp.admin import CPAdminProtocol
from hsb.cp.config import CPConfig
from hsb.cp.core import CP
from hsb.cp.host_link import HostProtocol
from hsb.cp.terminal_link import TerminalProtocol
from hsb.wire.framing import encode

log = structlog.get_logger("hsb.cp")

_HB = encode({"t": "hb"})


class CPServer:
    def __init__(self, cfg: CPConfig, secret: bytes) -> None:
        self.cfg = cfg
        self.secret = secret
        self.cp = CP(cfg)
        self.should_exit = asyncio.Event()
        self.servers: list[asyncio.base_events.Server] = []
        self.hosts: set[HostProtocol] = set()
        self.bound: dict[str, str] = {}

    async def startup(self) -> None:
        c = self.cfg.cp
        loop = asyncio.get_running_loop()
        cp = self.cp

        def terminal() -> TerminalProtocol:
            return TerminalProtocol(
                cp,
                hello_timeout=c.auth_timeout,
                idle_after_hello=c.terminal_idle_timeout or None,
                max_frame=c.max_frame,
            )

        def host() -> HostProtocol:
            h = HostProtocol(cp, secret=self.secret, auth_timeout=c.auth_timeout, idle_timeout=None, max_frame=c.max_frame)
            self.hosts.add(h)
            return h

        def admin() -> CPAdminProtocol:
            return CPAdminProtocol(cp, secret=self.secret, auth_timeout=c.auth_timeout, idle_timeout=30.0, max_frame=c.max_frame)

        for key, factory, backlog in (
            ("terminal", terminal, 4096),
            ("host", host, 16),
            ("admin", admin, 64),
        ):
            h, p = parse_addr(getattr(c, f"{key}_listen"))
            srv = await loop.create_server(factory, h, p, backlog=backlog, reuse_address=True)
            self.servers.append(srv)
            sock = srv.sockets[0].getsockname()
            self.bound[key] = f"{sock[0]}:{sock[1]}"
        log.info("cp_started", name=cp.name, terminals=len(cp.terms), **{f"{k}_listen": v for k, v in self.bound.items()})

    async def tick_loop(self) -> None:
        interval = min(self.cfg.cp.host_timeout / 10, 0.05)
        hb_every = min(self.cfg.cp.host_timeout / 4, 0.1)
        last_hb = 0.0
        while not self.should_exit.is_set():
            self.cp.tick()
            now = time.monotonic()
            if now - last_hb >= hb_every:
                last_hb = now
                for h in list(self.hosts):
                    if h.closed:
                        self.hosts.discard(h)
                    elif h.authed and h.role is not None:
                        h.send_raw(_HB)
            try:
                await asyncio.wait_for(self.should_exit.wait(), interval)
            except TimeoutError:
                pass

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        await self.startup()
        try:
            await self.tick_loop()
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        log.info("cp_stopping", held=sum(len(t.held) for t in self.cp.terms.values()))
        for srv in self.servers:
            srv.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except TimeoutError:
                pass
        log.info("cp_stopped")
