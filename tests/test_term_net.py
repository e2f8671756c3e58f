"""hsb.term.net's TCP keepalive on a terminal's connection (dead_peer_detection), on the socket
a real uvloop transport gives (a PseudoSocket) and on a plain socket: every option set, and the
connection left open and usable (the options are set through one socket object of its own on
the connection's descriptor, which must not close it)."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterator

import pytest
import uvloop

from hsb.term import net

pytestmark = pytest.mark.timeout(30)


def _keepalive(sock: socket.socket) -> tuple[int, ...]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    srv.close()
    try:
        yield cli, acc
    finally:
        cli.close()
        acc.close()


def test_every_keepalive_option_is_set_and_the_plain_socket_stays_open(pair: tuple[socket.socket, socket.socket]) -> None:
    cli, acc = pair
    net.dead_peer_detection(cli, 5)
    gc.collect()  # (an object of its own on the descriptor, not detached, would close it when freed)
    assert _keepalive(cli) == (1, 5, net.KEEPALIVE_INTERVAL_S, net.KEEPALIVE_COUNT)
    cli.sendall(b"still open")
    assert acc.recv(64) == b"still open"
    net.dead_peer_detection(None)  # (a transport without a socket: nothing to do)


def test_the_uvloop_transports_socket_gets_every_option_and_the_connection_goes_on() -> None:
    async def main() -> tuple[tuple[int, ...], bytes]:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Sink(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.put_nowait(data)

        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Sink, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        try:
            pseudo = tr.get_extra_info("socket")
            net.dead_peer_detection(pseudo, 2)
            gc.collect()
            with pseudo.dup() as view:  # (its options, read on a copy of the descriptor)
                opts = _keepalive(view)
            tr.write(b"after the options")
            data = await asyncio.wait_for(got.get(), 10)
            return opts, data
        finally:
            tr.close()
            srv.close()
            await srv.wait_closed()

    opts, data = uvloop.run(main())
    assert opts == (1, 2, net.KEEPALIVE_INTERVAL_S, net.KEEPALIVE_COUNT)
    assert data == b"after the options"
