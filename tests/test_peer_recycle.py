"""The peer link's sending connection gives up on a peer that is gone within seconds
(TCP_USER_TIMEOUT), not after TCP's minutes of retransmissions, so notices are not written into
a half-open connection; and it is not dropped when only the other direction fell silent (the
peer would see an EOF and, as an established standby, ask for the active role). Two PeerLinks
in-process on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hsb.host.peer import PeerLink
from hsb.ports import free_port
from tests.support.inproc import until

pytestmark = pytest.mark.timeout(60)


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


async def test_the_sending_connection_gives_up_on_a_gone_peer_in_seconds_and_only_then() -> None:
    pa, pb = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    a_downs: list[str] = []
    b_downs: list[str] = []
    a, b = link("a", pa, pb, a_downs), link("b", pb, pa, b_downs)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.up and b.up and a.outbound is not None, "both up")
        assert a.outbound is not None
        sock = a.outbound.writer.get_extra_info("socket")
        ms = struct.unpack("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 4))[0]
        assert ms == 2000  # four times heartbeat_timeout 0.5 s, at least 2 s
        # b stops sending (one direction falls silent): a finds b gone, b hears a on
        b.tasks[0].cancel()
        await until(lambda: bool(a_downs), "a finds b silent")
        old = a.outbound
        await asyncio.sleep(3 * 0.05)  # (three of a's heartbeat intervals: what must not happen is an EOF at b)
        assert b_downs == [] and a.outbound is old, "a one-sided silence dropped the other direction too"
    finally:
        await a.close()
        await b.close()
