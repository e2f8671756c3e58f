"""A listener that cannot be opened, said in one line that names its config key, the address
written there, and the fix that fits the error: an address that is not this machine's, a port
another process holds, a name that does not resolve. And the same looked at by --check-config
(`listen_problems`), before a start fails on it."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from hsb.config import address_ip, parse_addr
from hsb.worker import within

T = TypeVar("T")
RESOLVE_S = 2.0  # --check-config's look-up of a listen name: a resolver that does not answer holds no check longer


class ListenError(OSError):
    """`cause` (an OSError of the bind, or a socket.gaierror of the look-up before it) of the
    listener configured at `key` (`cp.terminal_listen`) as `addr`; str() is the one line."""

    def __init__(self, key: str, addr: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.key, self.addr, self.cause = key, addr, cause

    def __str__(self) -> str:
        return listen_error_line(self.key, self.addr, self.cause)


def listen_error_line(key: str, addr: str, exc: OSError) -> str:
    """`cannot listen on cp.terminal_listen = "10.9.9.9:0": …; <the fix>`."""
    try:
        host, port = parse_addr(addr)
    except ValueError:  # (the config check refuses it first)
        host, port = addr, 0
    # (asyncio's own words wrap the system's: "error while attempting to bind on address …: …")
    code = exc.errno
    why = os.strerror(code) if isinstance(code, int) and code > 0 and not isinstance(exc, socket.gaierror) else exc.strerror or str(exc)
    daemon = "hsbcpd" if key.startswith("cp.") else "hsbd"
    head = f'cannot listen on {key} = "{addr}"'
    if isinstance(exc, socket.gaierror):
        return f"{head}: the name {host!r} does not resolve ({why}); write an IP address of this machine there, or a name its resolver knows"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{head}: {host} is not an address of this machine ({why}); write one of its addresses there (ip -brief address), or 0.0.0.0 for all"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{head}: port {port} is taken by another process ({why}; another {daemon} running? ss -ltnp 'sport = :{port}' names it);"
            " stop that process, or write another port there"
        )
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return f"{head}: {why} (port {port} is below 1024: only root or CAP_NET_BIND_SERVICE may listen there); write a port above 1023"
    if exc.errno == errno.EAFNOSUPPORT:
        return f"{head}: {why} (this machine has no IPv{6 if ':' in host else 4}); write an address of a family it has"
    return f"{head}: {why}; check that address (one of this machine's, and a port free for {daemon})"


async def listening(key: str, addr: str, start: Callable[[], Awaitable[T]]) -> T:
    """`start()`, a listener's bind on `addr`: an OSError of it as a ListenError naming `key`."""
    try:
        return await start()
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(key, addr, exc) from exc


def listen_problems(listens: Iterable[tuple[str, str]]) -> list[str]:
    """--check-config's errors: each listener (key, 'host:port'; '' for none) on a name that does
    not resolve, which no start could bind. A resolver that cannot answer now (no answer within
    RESOLVE_S, a temporary failure) is no error here: the start asks again. (The one look here
    that may go to the network: a name's.)"""
    out = []
    for key, addr in listens:
        if addr and address_ip(addr) is None:
            cause = _resolve_problem(addr)
            if cause is not None:
                out.append(listen_error_line(key, addr, cause))
    return out


def listen_warnings(listens: Iterable[tuple[str, str]], moving: Iterable[str] = ()) -> list[str]:
    """--check-config's warnings: each listener on an IP that is not this machine's (a bind to
    it, port 0, refused). Not errors: a config is often checked on another machine than its own.
    `moving`: keys on an address another machine may hold now (a waiting CP's virtual address)."""
    out = []
    skip = set(moving)
    for key, addr in listens:
        if addr and key not in skip and address_ip(addr) is not None:
            cause = _bind_problem(addr)
            if cause is not None:
                out.append(f"{listen_error_line(key, addr, cause)} (unless this config is meant for another machine)")
    return out


def _bind_problem(addr: str) -> OSError | None:
    host, _ = parse_addr(addr)
    ip = address_ip(addr)
    if ip is None or ip.is_unspecified:
        return None
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except OSError as exc:
        return exc
    for family, kind, proto, _, sockaddr in infos:
        try:
            s = socket.socket(family, kind, proto)
        except OSError as exc:
            return exc
        with s:
            try:
                s.bind(sockaddr)
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    return exc
    return None


def _resolve_problem(addr: str) -> OSError | None:
    host, port = parse_addr(addr)

    def look() -> OSError | None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            return None
        except socket.gaierror as exc:
            return exc if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)) else None
        except (OSError, UnicodeError):
            return None

    return within(RESOLVE_S, look, "listen-lookup")[1]
