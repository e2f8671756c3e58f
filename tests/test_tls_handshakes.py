"""TLS handshakes sliced (hsb.wire.handshakes): 5,000 ClientHellos in one poll of a uvloop
listener (terminals coming back over TLS after a CP restart) are handshaken a slice at a time,
the loop turning in between; run inline they held it for over a second, while the hosts'
heartbeats (0.5 s timeouts) waited. A host link's handshake goes ahead of the terminals' queued
ones."""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.conn import FramedProtocol
from hsb.wire.handshakes import HANDSHAKES
from hsb.wire.tls import TLS, TLSFiles
from tests.support.certs import make_ca, make_leaf
from tests.support.procs import until

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


class Queued:
    """A terminal's handshake waiting in the queue: FAKE_S of the loop's CPU in its turn, as a
    ClientHello with a client certificate to check takes (none once `stop` is set)."""

    def __init__(self, taken: list[int], stop: list[bool]) -> None:
        self.taken, self.stop = taken, stop

    def tls_turn(self) -> None:
        if self.stop[0]:
            return
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < FAKE_S:
            pass
        HANDSHAKES.charge(time.perf_counter() - t0)
        self.taken[0] += 1


FAKE_S = 0.0005
QUEUED = 4000  # 2 s of handshakes: first in, first out, a host link behind them waited that long


def test_a_host_links_handshake_goes_ahead_of_the_terminals_queued_ones(tmp_path: Path) -> None:
    """A CP restarted with thousands of TLS terminals: their handshakes wait in the queue, worked
    off 2 ms a turn. The active's host link connects meanwhile: its handshake (and the challenge
    after it) comes within a bound that does not grow with the queue, long before the queue is
    worked off (it must not time out, or the lease it registers again within run out)."""
    import uvloop

    from hsb.cp.admin import CPAdminProtocol
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.terminal_link import TerminalProtocol
    from tests.support.cpcore import cp_core

    assert HostProtocol.tls_first and CPAdminProtocol.tls_first and not TerminalProtocol.tls_first
    ca = make_ca(tmp_path)
    make_leaf(tmp_path, ca, "cp", "ec", "cp")
    tls = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")), terminals=True)
    cp = cp_core(tmp_path, 1)

    async def connect() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        taken, stop = [0], [False]
        links: list[HostProtocol] = []

        def host() -> HostProtocol:
            links.append(HostProtocol(cp, secret=b"s" * 32, auth_timeout=30.0, idle_timeout=None, tls=tls.server, tls_timeout=30.0))
            return links[-1]

        srv = await loop.create_server(host, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            for _ in range(QUEUED):
                q = Queued(taken, stop)
                if HANDSHAKES.admit(q, loop):
                    q.tls_turn()
            assert len(HANDSHAKES.queue) > QUEUED - 100
            t0 = loop.time()
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=tls.client), 30)
            challenge = await asyncio.wait_for(reader.read(1), 30)  # the link opened: its challenge came
            elapsed, before = loop.time() - t0, taken[0]
            assert challenge and links and not links[0].closed
            writer.close()
            stop[0] = True  # the rest of the queue: nothing more to spend
            await until(lambda: not HANDSHAKES.queue, 30, what="the queue worked off")
            return elapsed, before
        finally:
            srv.close()
            await srv.wait_closed()

    elapsed, before = uvloop.run(connect())
    assert before < QUEUED // 4, f"the host link waited for {before} of the {QUEUED} terminals' handshakes queued before it"
    assert elapsed < 1.5, f"the host link's handshake took {elapsed * 1e3:.0f} ms (behind the queue: 2 s or more)"
