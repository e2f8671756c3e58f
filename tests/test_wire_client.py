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
        while fs.writer.transport.get_write_buffer_size() < 8 << 20:  # past both kernels' buffers
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


@pytest.mark.timeout(30)
def test_a_reset_link_leaves_no_cyclic_garbage() -> None:
    """hsbd's links are FrameStreams on uvloop and full collections are off (hsb/gcpolicy.py):
    a link reset by its peer must be freed by reference counting alone."""
    import gc
    import socket
    import struct

    import uvloop

    from hsb.wire.client import LinkClosed

    async def scenario() -> None:
        async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

        srv = await asyncio.start_server(reset, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            for _ in range(5):
                fs = await FrameStream.connect("127.0.0.1", port)
                with pytest.raises((LinkClosed, ConnectionError)):
                    await fs.recv(5.0)
                await fs.aclose()
            del fs
        finally:
            srv.close()
            await srv.wait_closed()

    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(scenario())
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not kinds, f"cyclic garbage after reset links: {kinds}"
