"""The terminal simulator's connector (hsb.term.connector) on real sockets: while the CP cannot
be reached, the group probes instead of every terminal trying on its own, and when the CP
answers every terminal connects at once, not after its own backoff."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import pytest

from hsb.term.client import DOWN, TerminalClient
from hsb.term.connector import MAX_PROBES, Connector
from tests.support.connecting import connect_timing_out, create_connection_as, one_terminal


class FakeTerminal(asyncio.Protocol):
    """What the connector needs of a terminal, with a fixed backoff of its own."""

    def __init__(self, backoff: float) -> None:
        self.backoff = backoff
        self.state = DOWN
        self.stopping = False
        self.connector: Connector | None = None
        self.failures = 0
        self.away = 0
        self.transport: Any = None

    def cp_away(self, found: bool = True) -> None:
        self.state = DOWN
        self.away += 1

    def connect_failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.cp_away()
        assert self.connector is not None
        self.connector.schedule(as_client(self), self.backoff)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.state = 3

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = DOWN

    def abandoned(self) -> None:
        pass  # (its transport is no real one: nothing closed it under it)


def as_client(t: FakeTerminal) -> TerminalClient:
    """The fake where the connector takes a terminal (it uses only what the fake has)."""
    return cast(TerminalClient, t)


async def until(pred: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backoff", [0.02, 30.0])
async def test_the_group_probes_while_the_cp_is_away_and_all_connect_when_it_answers(backoff: float) -> None:
    """backoff 0.02 s: terminals due again and again are parked, not tried; 30 s: they are
    connected when the CP answers, long before their own backoff runs out."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: every connect is refused, like a CP restarting
    port = sock.getsockname()[1]
    conn = Connector("127.0.0.1", port, concurrency=16)
    conn.start()
    terms = [FakeTerminal(backoff) for _ in range(200)]
    server = None
    try:
        for t in terms:
            conn.attach(as_client(t))
            conn.schedule(as_client(t))
        await until(lambda: conn.down and sum(t.failures for t in terms) >= 1, 10, "the group down")
        await until(lambda: conn.probes >= 5, 10, "five probes")
        tried = sum(t.failures for t in terms)
        # each terminal tried at most once on its own; after that only the probes
        assert tried <= len(terms) + conn.probes, tried
        assert conn.probes <= 5 + MAX_PROBES
        sock.listen(512)
        accepted: list[Any] = []

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                accepted.append(transport)

        server = await loop.create_server(Accept, sock=sock)
        # within 10 s (with 30 s backoffs, while each terminal's own still runs): the probe brought the group up
        await until(lambda: all(t.state == 3 for t in terms), 10, "every terminal connected")
        assert not conn.down
        assert len(accepted) >= len(terms)
        assert all(t.away >= 1 for t in terms)  # each counted the CP's absence
    finally:
        await conn.close()
        for t in terms:
            if t.transport is not None:
                t.transport.close()
        if server is not None:
            server.close()
        else:
            sock.close()


async def test_a_connect_whose_timeout_falls_due_as_it_connects_is_not_a_failure() -> None:
    """The connect's timeout can fall due in the same turn of the loop as connection_made: the
    connection is then closed by the cancelled connect, and its connection_lost reschedules the
    terminal. It is not also a failed connect (which would park the group as if the CP were
    away, count a CP reconnect and schedule the terminal a second time)."""
    from hsb.term.client import CONNECTING

    conn = Connector("127.0.0.1", 1, concurrency=1)
    t = FakeTerminal(0.01)
    conn.attach(t)  # type: ignore[arg-type]

    async def connect_then_time_out(*a: Any, **kw: Any) -> Any:
        assert t.state == CONNECTING
        t.connection_made(object())  # the CP answered ...
        raise TimeoutError  # ... and the deadline fell due in the same turn

    with create_connection_as(connect_then_time_out):
        exc = await conn._connect(as_client(t))
    assert exc is None and not conn.down and t.failures == 0 and t.away == 0


async def test_a_connect_cut_by_its_timeout_after_connecting_is_no_drop_of_the_cps() -> None:
    """The same with hsbterm's terminal: the cancelled connect closes the connection after its
    hello went out, and that close is this side's, not a drop by the CP (it failed a strict run
    as `dropped while logging on`, and made the next welcome count a drop with the CP there)."""

    conn, c, tr = one_terminal()
    assert await connect_timing_out(conn, c, tr) is None
    c.connection_lost(None)  # (asyncio closes the transport of a cancelled connect)
    assert c.logon_drops == 0 and not c.dropped and c.cp_reconnects == 0
    await conn.close()


async def test_only_terminals_whose_own_connect_failed_count_the_cp_away() -> None:
    """Terminals welcomed by a CP that then goes: the first connect refused takes the group
    down, and every terminal due after it is parked (it tries nothing; the probe tries one at a
    time). Each parked terminal counted the CP's absence as if it had found it away, so one
    failed connect in a failover's reconnect storm counted every terminal as a CP restart. Only
    a terminal whose own connect failed counts it now, once."""
    from hsb.term.client import TerminalClient
    from hsb.term.listener import Listener
    from hsb.wire.framing import encode
    from tests.support.transports import RecordingTransport

    failed: set[str] = set()

    class Failures(Listener):
        def on_connect_failed(self, c: TerminalClient, exc: BaseException, retry_in: float) -> None:
            failed.add(c.name)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: every connect is refused
    conn = Connector("127.0.0.1", sock.getsockname()[1], concurrency=4)
    terms = [TerminalClient(f"T{i}", Failures(), base=1000, keepalive=0) for i in range(40)]
    try:
        for c in terms:
            conn.attach(c)
            c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
            c.data_received(encode({"t": "welcome", "terminal": c.name, "last_acked": 0, "cp": "a"}))
        conn.start()
        for c in terms:
            c.connection_lost(None)  # the CP gone: each reconnects after its backoff
        await until(lambda: conn.down and len(conn._parked) >= 10, 10, "terminals parked")
    finally:
        await conn.close()
        sock.close()
    assert 0 < len(failed) < len(terms), failed
    assert {c.name: c.cp_reconnects for c in terms} == {c.name: int(c.name in failed) for c in terms}
