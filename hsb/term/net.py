"""A simulated terminal's addressing and sockets: HOST:PORT parsing, message id bases, and the
TCP keepalive that makes a terminal notice a CP gone while it sends nothing."""

from __future__ import annotations

import socket
import time
from typing import Any


def new_id_base() -> int:
    """A fresh id base: the wall clock in microseconds (ids above anything sent before)."""
    return time.time_ns() // 1000


def parse_hostport(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' → (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


# A terminal finds out that its CP is gone without sending: after a CP machine's loss the
# address moves (keepalived) and the old connection is dead, but a terminal that sends only
# every few seconds would learn it only then. TCP keepalive probes an idle connection after
# KEEPALIVE_IDLE_S (the new holder of the address answers with a reset; a silent peer is given
# up after KEEPALIVE_COUNT probes); data in flight is retransmitted to the new holder, which
# resets it too. The kernel does it all: no frames, no CP work, at any number of terminals.
# (No TCP_USER_TIMEOUT: it would also cut a terminal the CP back-pressures for a while.)
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3


# the TCP options of it this platform has (Linux: all three), each with its value (None: `idle`)
_KEEP_OPTS = tuple(
    (getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", None), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S), ("TCP_KEEPCNT", KEEPALIVE_COUNT))
    if hasattr(socket, name)
)


def dead_peer_detection(sock: Any, idle: int = KEEPALIVE_IDLE_S) -> None:
    """TCP keepalive on a terminal's connection, probing after `idle` s (Linux; elsewhere the default)."""
    if sock is None:
        return
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    opts += [(socket.IPPROTO_TCP, opt, idle if value is None else value) for opt, value in _KEEP_OPTS]
    # one socket object on the connection's descriptor for all of them: uvloop's transport socket
    # (a PseudoSocket) makes and detaches a socket.socket for each setsockopt, three of four
    # for nothing at every reconnect of a storm (~1 µs of 4 a connect)
    try:
        one = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
    except (OSError, AttributeError, TypeError, ValueError):  # pragma: no cover - not a socket of this platform's kind
        one = None
    target = one if one is not None else sock
    try:
        for level, opt, value in opts:
            try:
                target.setsockopt(level, opt, value)
            except OSError:  # pragma: no cover - a platform without it
                pass
    finally:
        if one is not None:
            one.detach()  # (the descriptor stays the connection's: not closed with this object)
