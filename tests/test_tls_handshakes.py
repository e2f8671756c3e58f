"""TLS handshakes sliced (hsb.wire.handshakes): 5,000 ClientHellos in one poll of a uvloop
listener (terminals coming back over TLS after a CP restart) are handshaken a slice at a time,
the loop turning in between; run inline they held it for over a second, while the hosts'
heartbeats (0.5 s timeouts) waited."""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.conn import FramedProtocol
from hsb.wire.handshakes import HANDSHAKES
from hsb.wire.tls import TLS, TLSFiles
from tests.support.procs import until
from tests.test_tls_reload import make_ca, make_leaf

pytestmark = pytest.mark.timeout(120)

N = 5000


class Term(FramedProtocol):
    link = "terminal"
    dispatch = {"hello": "on_hello"}

    def on_hello(self, msg: dict[str, Any]) -> None:
        pass


def client_hellos(d: Path, n: int) -> list[bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(d / "ca.pem"))
    out = []
    for _ in range(n):
        cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        c = ctx.wrap_bio(cin, cout)
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out.append(cout.read())
    return out


def test_a_storm_of_client_hellos_never_holds_the_loop(tmp_path: Path) -> None:
    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * N + 200:
        pytest.skip(f"needs {2 * N + 200} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * N + 200), hard))
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    tls = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")), terminals=True)
    hellos = client_hellos(tmp_path, N)

    async def storm() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        conns: list[Term] = []

        def make() -> Term:
            conns.append(Term(tls=tls.terminal_server, tls_timeout=60))
            return conns[-1]

        srv = await loop.create_server(make, "127.0.0.1", 0, backlog=4096)
        port = srv.sockets[0].getsockname()[1]
        socks = []
        try:
            for _ in range(N):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                socks.append(s)
            await until(lambda: len(conns) == N, 30, what="every connection accepted")
            deferred = HANDSHAKES.deferred
            worst = 0.0
            done = False

            ticking = asyncio.Event()

            async def ticker() -> None:  # a 10 ms timer, as the CP's heartbeats: how late it fires
                nonlocal worst
                last = loop.time()
                while not done:
                    await asyncio.sleep(0.01)
                    now = loop.time()
                    worst = max(worst, now - last - 0.01)
                    last = now
                    ticking.set()

            tick = asyncio.ensure_future(ticker())
            await ticking.wait()
            for s, hello in zip(socks, hellos, strict=True):
                s.send(hello)  # every ClientHello at once: one poll hands the loop thousands
            # every ClientHello handshaken: its ServerHello sent, the server waiting for the client's Finished
            await until(
                lambda: all(c._tls is not None and c._tls.started and not getattr(c, "_tls_waiting", False) for c in conns),
                60,
                what="every ClientHello taken",
            )
            assert not any(c.closed for c in conns)
            done = True
            await tick
            return worst, HANDSHAKES.deferred - deferred
        finally:
            for s in socks:
                s.close()
            srv.close()
            await srv.wait_closed()

    worst, deferred = uvloop.run(storm())
    assert worst < 0.5, f"the loop stalled {worst * 1e3:.0f} ms"
    assert deferred > 0  # (the slices did it: some waited for their turn)
