"""The client side of a link (hsb.wire.client.FrameStream): closing never hangs."""

from __future__ import annotations

import asyncio
import time

import pytest

from hsb.wire.client import FrameStream


@pytest.mark.timeout(30)
async def test_aclose_does_not_wait_for_a_peer_that_stopped_reading() -> None:
    """A close lets queued frames drain; a peer that reads nothing (or a cut link) never
    lets them, and a daemon's teardown used to wait there for good."""
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    srv = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    fs = await FrameStream.connect("127.0.0.1", port)
    try:
        big = {"t": "x", "data": b"\0" * 65536}
        deadline = time.monotonic() + 10
        while fs.writer.transport.get_write_buffer_size() == 0:  # fill both kernels' buffers
            assert time.monotonic() < deadline, "the send buffer never filled"
            for _ in range(64):
                fs.send(big)
            fs._flush()
            await asyncio.sleep(0)
        t0 = time.monotonic()
        await fs.aclose(timeout=0.5)
        took = time.monotonic() - t0
        assert 0.4 < took < 5.0, took
        assert fs.writer.transport.is_closing()
    finally:
        for w in accepted:
            w.transport.abort()
        srv.close()
        await srv.wait_closed()
