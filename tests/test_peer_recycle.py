"""The peer link's sending connection is made again when the peer is found gone (its heartbeats
stop, or its connection to us ends): it is not left writing into a connection that may be
half-open, where notices would vanish while they count as sent. Two PeerLinks in-process on
loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.host.peer import PeerLink
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(60)


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def link(name: str, listen: str, peer: str, downs: list[str]) -> PeerLink:
    return PeerLink(
        name=name,
        listen=listen,
        peer=peer,
        secret=b"peer secret",
        interval=0.05,
        timeout=0.5,
        max_frame=1 << 20,
        on_frame=lambda m: None,
        on_down=downs.append,
        on_up=lambda: None,
        hello=lambda: {"t": "peer_hello", "name": name, "role": "active", "state": "serving", "instance": name},
    )


async def test_the_sending_connection_is_made_again_when_the_peer_is_found_gone() -> None:
    pa, pb = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    downs: list[str] = []
    a, b = link("a", pa, pb, downs), link("b", pb, pa, [])
    await a.start()
    await b.start()
    try:
        await until(lambda: a.up and b.up and a.outbound is not None, "both up")
        old = a.outbound
        for t in b.tasks:  # b stops sending (its sender ends: a's inbound sees the end)
            t.cancel()
        await until(lambda: bool(downs), "a finds b gone")
        await until(lambda: a.outbound is not None and a.outbound is not old, "a's sending connection made again")
    finally:
        await a.close()
        await b.close()
