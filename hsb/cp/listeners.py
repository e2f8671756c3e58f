"""hsbcpd's terminal and host listeners: bound before the journal is taken over (`bind_ahead`),
so that a CP that cannot listen there never fences one that can; served on once the CP serves
(`start_serving`), or closed if it never does (`close_bound_ahead`); the virtual address checked
still this machine's once the journal is read (`_still_here`, `takeover = "on_wake"`); the
protocols made for each connection taken; a listener taken from the master's sockets
(`master_listeners`, `hsbcpd --supervise`) or bound here, waiting out the ports of a CP that
died just before (`_bind`).

A mixin of `hsb.cp.server.CPServer`, whose state it reads and changes; the lifecycle around it
(startup, the tick loop, the admin link) is there.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from hsb.config import parse_addr
from hsb.cp import supervise
from hsb.cp.config import CPConfig
from hsb.cp.core import CP
from hsb.cp.host_link import HostProtocol
from hsb.cp.terminal_link import TerminalProtocol
from hsb.cp.waiting import holds_address
from hsb.ops.limits import listen_backlog
from hsb.ops.listen import ListenError, listening
from hsb.ops.notify import notify
from hsb.wire.conn import tcp_keepalive
from hsb.wire.tls import TLS

log = structlog.get_logger("hsb.cp")
BIND_WAIT_S = 3.0  # a CP forked again after a crash waits this long at most for the dead one's ports
BIND_RETRY_S = 0.005
T = TypeVar("T")


def master_listeners(cfg: CPConfig) -> dict[str, socket.socket]:
    """The terminal, host, admin and http listening sockets, made by `hsbcpd --supervise`'s
    master before it forks its first worker (hsb.cp.supervise.LISTENERS); each worker serves on
    them, and a worker forked again need not wait for the dead one's ports to be freed."""
    c = cfg.cp
    out: dict[str, socket.socket] = {}
    for key, backlog in (("terminal", listen_backlog(len(cfg.terminal_table))), ("host", 16), ("admin", 64), ("http", 64)):
        addr = getattr(c, f"{key}_listen")
        if not addr:  # (http_listen: off)
            continue
        h, p = parse_addr(addr)
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(h).version == 6 else socket.AF_INET
        except ValueError:  # a name (each of its addresses): the worker binds it itself, as without a master
            continue
        try:
            s = socket.create_server((h, p), family=family, backlog=backlog)  # (SO_REUSEADDR, as the worker's own)
        except OSError as exc:
            for made in out.values():
                made.close()
            raise ListenError(f"cp.{key}_listen", addr, exc) from exc
        if key == "terminal" and c.terminal_keepalive:  # inherited by every terminal connection
            tcp_keepalive(s, c.terminal_keepalive)
        out[key] = s
    return out


class Listeners:
    """The listeners of CPServer (see the module docstring; the attributes below are CPServer's)."""

    cfg: CPConfig
    cp: CP | None
    tls: TLS | None
    secret: bytes
    state: str
    supervisor: dict[str, Any] | None
    servers: list[asyncio.base_events.Server]
    hosts: set[HostProtocol]
    bound: dict[str, str]
    ahead: dict[str, asyncio.base_events.Server]
    took_over: dict[str, Any]

    async def _listen(self, key: str, on_held: Callable[[socket.socket], Awaitable[T]], on_addr: Callable[[], Awaitable[T]]) -> T:
        """A listener: on the master's socket for `key` if it holds one (hsb.cp.supervise), open
        since before this worker (a copy: this worker's close leaves the master's open); else bound
        here (`_bind`)."""
        held = supervise.LISTENERS.get(key)
        if held is not None:
            return await on_held(held.dup())
        # an error names the config key and the fix for its kind (hsb.ops.listen)
        return await listening(f"cp.{key}_listen", getattr(self.cfg.cp, f"{key}_listen"), lambda: self._bind(on_addr))

    async def _bind(self, start: Callable[[], Awaitable[T]]) -> T:
        """`start()`, a listener's bind. A CP forked again by its master (--supervise) may find
        its port still held: the kernel is still closing the dead CP's sockets (about 0.15 s for
        10,000). It waits that out, BIND_WAIT_S at most; any other start fails at once."""
        deadline = None
        while True:
            try:
                return await start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not (self.supervisor and self.supervisor["restarts"]):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BIND_WAIT_S
                    log.info("cp_bind_waiting", error=str(exc), msg="the CP before this one is still being torn down: its ports are not free yet")
                elif now >= deadline:
                    raise
                await asyncio.sleep(BIND_RETRY_S)

    async def bind_ahead(self) -> None:
        """The terminal and host listeners bound before the journal's generation is taken: a CP
        that cannot listen there (a port another process holds, an address no longer this
        machine's, a name that does not resolve) must never fence one that can, as a CP that
        cannot run its journal's ring never does (hsb.cp.taking_over). Bound, not yet served on
        (`start_serving`): their protocols find the CP when connections are taken."""
        self.state = "starting"  # (an error now is the ports')
        for key in ("terminal", "host"):
            if key not in self.ahead:
                self.ahead[key] = await self._server(key)

    async def _still_here(self) -> None:
        """`takeover = "on_wake"`: the virtual address, bound before the takeover, still this
        machine's once the journal is read (seconds, for a large one): if keepalived moved it
        meanwhile (a flap, a split brain ending), the CP does not serve on it (`serve`:
        `cp_address_lost_at_takeover`, exit 0), as when its bind is refused."""
        c = self.cfg.cp
        if c.takeover != "on_wake" or self.cp is None:
            return
        if not await asyncio.get_running_loop().run_in_executor(None, holds_address, c.terminal_listen, True):
            gone = OSError(errno.EADDRNOTAVAIL, "the address left this machine while the CP took the journal over")
            raise ListenError("cp.terminal_listen", c.terminal_listen, gone)

    def close_bound_ahead(self) -> None:
        """Those not served on (a takeover that failed or was superseded, a stop before it served) closed."""
        for srv in self.ahead.values():
            srv.close()
        self.ahead.clear()

    async def _server(self, key: str) -> asyncio.base_events.Server:
        """The terminal or host listener, bound and not yet served on; its protocols made for the
        CP there is when each connection is taken (`start_serving` starts taking them)."""
        c = self.cfg.cp
        loop = asyncio.get_running_loop()
        factory = self._terminal_protocol if key == "terminal" else self._host_protocol
        backlog = listen_backlog(len(self.cfg.terminal_table)) if key == "terminal" else 16
        h, p = parse_addr(getattr(c, f"{key}_listen"))
        return await self._listen(
            key,
            lambda sock: loop.create_server(factory, sock=sock, backlog=backlog, start_serving=False),
            lambda: loop.create_server(factory, h, p, backlog=backlog, reuse_address=True, start_serving=False),
        )

    def _terminal_protocol(self) -> TerminalProtocol:
        c = self.cfg.cp
        assert self.cp is not None
        t = self.tls
        return TerminalProtocol(
            self.cp,
            hello_timeout=c.auth_timeout,
            idle_after_hello=c.terminal_idle_timeout or None,
            max_frame=c.max_frame,
            tls=t.terminal_server if t is not None and t.terminals else None,
            tls_timeout=c.auth_timeout,
        )

    def _host_protocol(self) -> HostProtocol:
        c = self.cfg.cp
        assert self.cp is not None
        t = self.tls
        h = HostProtocol(
            self.cp,
            secret=self.secret,
            auth_timeout=c.auth_timeout,
            idle_timeout=None,
            max_frame=c.max_frame,
            tls=t.server if t is not None else None,
            tls_timeout=c.auth_timeout,
        )
        self.hosts.add(h)
        return h

    async def start_serving(self) -> None:
        c = self.cfg.cp
        cp = self.cp
        assert cp is not None
        for key in ("terminal", "host"):
            srv = self.ahead.pop(key, None) or await self._server(key)  # (bound ahead, or now: a worker forked again)
            if key == "terminal" and c.terminal_keepalive:  # inherited by every terminal connection
                for s in srv.sockets:  # a dead terminal's connection would refuse its return forever
                    tcp_keepalive(s, c.terminal_keepalive)
            await srv.start_serving()
            self.servers.append(srv)
            sock = srv.sockets[0].getsockname()
            self.bound[key] = f"{sock[0]}:{sock[1]}"
        self.state = "serving"
        log.info(
            "cp_started",
            name=cp.name,
            terminals=len(cp.terms),
            generation=self.took_over.get("generation"),
            **{f"{k}_listen": v for k, v in self.bound.items()},
        )
        notify(READY=1, STATUS=f"serving {len(cp.terms)} terminals, epoch {cp.epoch}")
