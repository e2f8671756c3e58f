"""A small asyncio HTTP/1.x listener for health checks and Prometheus scrapes.

GET only, one request per connection, bounded request size and time; bad input
gets a 4xx and a close, never an exception in the daemon.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import structlog

from hsb.config import parse_addr
from hsb.wire.conn import out_of_descriptors

log = structlog.get_logger("hsb.ops")

Route = Callable[[], tuple[int, str, bytes]]
MAX_REQUEST = 8192
TIMEOUT = 5.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def json_route(fn: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    """A route answering 200 or 503 with a JSON body."""

    def route() -> tuple[int, str, bytes]:
        ok, body = fn()
        return (200 if ok else 503), "application/json", json.dumps(body, default=str).encode()

    return route


class _HTTP(asyncio.Protocol):
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.buf = bytearray()
        self.tr: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        self.tr = tr  # type: ignore[assignment]
        pn = tr.get_extra_info("peername")
        if out_of_descriptors(tr, "http", f"{pn[0]}:{pn[1]}" if isinstance(pn, tuple) else "?"):
            self.done = True
            tr.close()  # nothing written: its descriptor, one of the daemon's last few, is freed at once
            return
        self.timer = asyncio.get_running_loop().call_later(TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        self._respond(408, "text/plain", b"request timeout\n")

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:  # lines ended by a bare LF, as RFC 9112 lets a recipient take them
            end = self.buf.find(b"\n\n")
        if end < 0 or end > MAX_REQUEST:
            if len(self.buf) > MAX_REQUEST:
                self._respond(431, "text/plain", b"request too large\n")
            return
        line = bytes(self.buf[: self.buf.find(b"\n")])  # (a CR before it: whitespace to split())
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._respond(400, "text/plain", b"bad request line\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._respond(405, "text/plain", b"GET only\n", extra="Allow: GET, HEAD\r\n")
            return
        route = self.routes.get(target.decode("latin-1"))
        if route is None:
            body = b"not found; try /health /active /standby /metrics\n"
            self._respond(404, "text/plain", b"" if method == b"HEAD" else body, length=len(body))
            return
        try:
            status, ctype, body = route()
        except Exception as exc:  # a bug in a route must not take the daemon down
            log.error("http_route_failed", path=target.decode("latin-1"), error=repr(exc))
            status, ctype, body = 500, "text/plain", b"internal error\n"
        self._respond(status, ctype, b"" if method == b"HEAD" else body, length=len(body))

    def eof_received(self) -> bool | None:
        """The client ended its side before its request did (no empty line after the headers):
        said, not a silent close."""
        if not self.done:
            self._respond(400, "text/plain", b"incomplete request: the connection ended before the empty line that ends the headers\n")
        return None

    def _respond(self, status: int, ctype: str, body: bytes, length: int | None = None, extra: str = "") -> None:
        """The status line and headers (`extra`: more, each ending in CRLF), then `body`: empty
        for a HEAD, whose Content-Length (`length`) is still the GET's."""
        if self.done or self.tr is None:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n{extra}Connection: close\r\n\r\n"
        )
        self.tr.write(head.encode() + body)
        self.tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def start_http(addr: str, routes: dict[str, Route], sock: socket.socket | None = None) -> tuple[asyncio.base_events.Server, str]:
    """Serve `routes` on `addr`, or on `sock`, a listening socket made already (hsbcpd's master's)."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        srv = await loop.create_server(lambda: _HTTP(routes), sock=sock)
    else:
        h, p = parse_addr(addr)
        srv = await loop.create_server(lambda: _HTTP(routes), h, p, reuse_address=True)
    s = srv.sockets[0].getsockname()
    return srv, f"{s[0]}:{s[1]}"
