"""Free listening ports for generated loopback setups (sandbox, tests, benches).

Ports are drawn from below the kernel's ephemeral range, so that the outgoing
connections of thousands of terminals never take a port a daemon must bind
again after a restart.
"""

from __future__ import annotations

import random
import socket


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_given: set[int] = set()  # handed out by this process: not free just because nothing is bound yet


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, outside the ephemeral range, and not handed out before here."""
    top = min(_ephemeral_floor(), 65536) - 1
    low = 10000 if top > 12000 else 1024
    for _ in range(200):
        port = random.randint(low, top)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _given.add(port)
            return port
    with socket.socket() as s:  # fall back to whatever the OS gives
        s.bind((host, 0))
        return int(s.getsockname()[1])
