"""hsbcpd's lifecycle: startup (listeners), tick (host-link silence, heartbeats), graceful shutdown.

Signal handlers only set flags; the main loop acts on them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import structlog

from hsb import faults, gcpolicy
from hsb.config import parse_addr
from hsb.cp.admin import CPAdminProtocol
from hsb.cp.config import LEASE_MARGIN, CPConfig
from hsb.cp.core import CP
from hsb.cp.host_link import HostProtocol
from hsb.cp.journal import Journal, Recovered, recover
from hsb.cp.terminal_link import TerminalProtocol
from hsb.ops.http import json_route, start_http
from hsb.ops.metrics import CPCollector, registry_for
from hsb.ops.metrics import render as render_metrics
from hsb.ops.notify import Watchdog, notify
from hsb.wire.framing import encode

log = structlog.get_logger("hsb.cp")

_HB = encode({"t": "hb"})


class CPServer:
    RELOADABLE = ("cp.held_bound", "cp.host_timeout", "terminals", "terminal_groups")

    def __init__(self, cfg: CPConfig, secret: bytes, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.reload_requested = False
        self.secret = secret
        self.recovered: Recovered | None = None
        self.cp = CP(cfg, self._open_journal(cfg))
        self.should_exit = asyncio.Event()
        self.servers: list[asyncio.base_events.Server] = []
        self.hosts: set[HostProtocol] = set()
        self.bound: dict[str, str] = {}

    def _open_journal(self, cfg: CPConfig) -> Journal | None:
        """Recover the journal before anything is accepted (SPEC §5.7); None: durability none."""
        c = cfg.cp
        if c.durability == "none":
            log.warning("journal_off", msg='durability = "none": a crash of hsbcpd loses what it holds (for benchmarks only)')
            return None
        d = Path(c.journal)
        self.recovered = recover(d)  # raises JournalDamaged (file and offset) on damage
        return Journal(d, timeout=c.journal_timeout, segment_bytes=c.journal_segment_kib * 1024)

    async def startup(self) -> None:
        c = self.cfg.cp
        r = self.recovered
        if r is not None:
            t0 = time.perf_counter()
            self.cp.restore(r)
            faults.point("cp.mid_recovery")
            self.cp.journal.open(r.segments, r.live_by_segment())
            log.info(
                "journal_recovered",
                dir=c.journal,
                segments=len(r.segments),
                records=r.records,
                held=sum(len(v) for v in r.held.values()),
                replies_kept=sum(len(v) for v in r.replies.values()),
                terminals=len(r.last_acked),
                epoch=r.epoch,
                active=r.active,
                torn_tail=r.torn,
                bytes=r.bytes_read,
                ms=round((r.seconds + time.perf_counter() - t0) * 1000, 1),
            )
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
        if c.http_listen:
            reg = registry_for(CPCollector(self.cp.status, self.cp.journal if self.cp.journal.durable else None, self.cp.history))
            routes = {
                "/health": json_route(lambda: (True, self.cp.status())),
                "/active": json_route(lambda: (False, {"msg": "hsbcpd is the CP, not a host"})),
                "/standby": json_route(lambda: (False, {"msg": "hsbcpd is the CP, not a host"})),
                "/metrics": lambda: render_metrics(reg),
            }
            srv, self.bound["http"] = await start_http(c.http_listen, routes)
            self.servers.append(srv)
        log.info("cp_started", name=cp.name, terminals=len(cp.terms), **{f"{k}_listen": v for k, v in self.bound.items()})
        notify(READY=1, STATUS=f"serving {len(cp.terms)} terminals, epoch {cp.epoch}")

    async def tick_loop(self) -> None:
        interval = min(self.cfg.cp.host_timeout / 10, 0.05)
        hb_every = min(self.cfg.cp.host_timeout / 4, 0.1)
        last_hb = 0.0
        last_journal = 0.0
        last_state = ""
        watchdog = Watchdog()
        while not self.should_exit.is_set():
            self.cp.tick()
            watchdog.tick(time.monotonic())
            if time.monotonic() - last_journal >= 1.0:
                last_journal = time.monotonic()
                self.cp.journal_tick()
            if self.reload_requested:
                self.reload()
            st = f"{'active ' + self.cp.active.name if self.cp.active is not None and not self.cp.active.closed else 'no active host'}, epoch {self.cp.epoch}"
            if st != last_state:
                last_state = st
                notify(STATUS=st)
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
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self.startup()
        gcpolicy.apply()
        try:
            await self.tick_loop()
        finally:
            await self.shutdown()
        return 0

    def _sighup(self) -> None:
        self.reload_requested = True  # the flag only; the tick loop reloads

    def reload(self) -> None:
        from hsb.cp.state import Term
        from hsb.ops import reload

        self.reload_requested = False
        planned = reload.plan(self.config_path, CPConfig, self.cfg, self.RELOADABLE)
        if planned is None:
            return
        new, applied, restart = planned
        cp = self.cp
        cp.held_bound = self.cfg.cp.held_bound = new.cp.held_bound
        if new.cp.host_timeout > cp.host_lease + LEASE_MARGIN:
            cp.host_timeout = self.cfg.cp.host_timeout = new.cp.host_timeout
        else:  # the hosts hold leases of the running host_lease: a shorter timeout would grant too early
            applied = [k for k in applied if k != "cp.host_timeout"]
            restart = [*restart, f"cp.host_timeout (below the running host_lease {cp.host_lease:g} s + margin)"]
        added = 0
        for name, d in new.terminal_table.items():
            t = cp.terms.get(name)
            if t is None:
                cp.terms[name] = Term(d)
                added += 1
            else:
                t.defn = d  # standby_capable and attributes apply to the next session
        removed = [n for n in cp.terms if n not in new.terminal_table and cp.terms[n].conn is None and not cp.terms[n].held]
        for n in removed:
            del cp.terms[n]
        reload.report(applied, restart, terminals_added=added, terminals_removed=len(removed))

    async def shutdown(self) -> None:
        notify(STOPPING=1, STATUS="stopping")
        log.info("cp_stopping", held=sum(len(t.held) for t in self.cp.terms.values()))
        for srv in self.servers:
            srv.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except TimeoutError:
                pass
        self.cp.journal.close()
        log.info("cp_stopped")
