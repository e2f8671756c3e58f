"""Free listening ports for generated loopback setups (sandbox, tests, benches).

Ports are drawn from below the kernel's ephemeral range, so that the outgoing
connections of thousands of terminals never take a port a daemon must bind
again after a restart. `HSB_PORT_RANGE=LOW-HIGH` narrows the draw: processes
that each pick ports at once (two test workers, two sandboxes started side by
side) are given ranges that do not overlap, so neither can pick a port the other
has handed out but not yet bound.
"""

from __future__ import annotations

import os
import random
import socket

ENV = "HSB_PORT_RANGE"


class PortRangeError(ValueError):
    """$HSB_PORT_RANGE is not a range ports can be drawn from."""


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def default_range() -> tuple[int, int]:
    """The ports below the ephemeral range (from 10000 where there is room), both ends included."""
    top = min(_ephemeral_floor(), 65536) - 1
    return (10000 if top > 12000 else 1024), top


def _spec() -> str:
    return os.environ.get(ENV, "").strip()


def port_range() -> tuple[int, int]:
    """The range free_port draws from: $HSB_PORT_RANGE if set, else default_range()."""
    spec = _spec()
    if not spec:
        return default_range()
    low_s, sep, high_s = spec.partition("-")
    try:
        low, high = int(low_s), int(high_s)
    except ValueError:
        low = high = -1
    if not sep or not 1024 <= low <= high <= 65535 or high - low < 15:
        raise PortRangeError(f"{ENV}={spec!r} is not LOW-HIGH with 1024 <= LOW, LOW + 15 <= HIGH <= 65535: write it like 20000-24999, or unset it")
    return low, high


def split_range(index: int, count: int, whole: tuple[int, int] | None = None) -> str:
    """The `index`-th of `count` equal, disjoint slices of `whole` (default: port_range()), written
    as $HSB_PORT_RANGE wants it."""
    low, high = whole or port_range()
    width = (high - low + 1) // count
    if width < 16:
        raise PortRangeError(f"{low}-{high} is too narrow for {count} slices of 16 ports or more: widen {ENV} or use fewer workers")
    start = low + index * width
    return f"{start}-{start + width - 1}"


_given: set[int] = set()  # handed out by this process: not free just because nothing is bound yet


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, inside port_range(), and not handed out before here."""
    low, top = port_range()
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
    if _spec():  # a range of its own: the OS's pick could be another's
        raise PortRangeError(f"no free port found in {ENV}={low}-{top} after 200 tries: widen it, or stop what holds its ports")
    with socket.socket() as s:  # fall back to whatever the OS gives
        s.bind((host, 0))
        return int(s.getsockname()[1])
