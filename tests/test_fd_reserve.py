"""The daemons' reserve of open files (hsb.ops.limits.fd_room): a connection accepted as one of
the last FD_RESERVE descriptors under the open-files limit is closed at once, unanswered, on every
listener (the framed links' FramedProtocol and the HTTP listener), said in one line at most every
REFUSED_LOG_S with the count; below the reserve nothing changes.

Without it, a client that opened connections and left them idle took every descriptor: the CP's
journal could not be written (journal_failing, EMFILE) and every acknowledgement stopped, for the
terminals already logged on too, until the idle connections timed out.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from hsb.ops import http, limits
from hsb.ops.limits import FD_RESERVE, fd_room
from hsb.wire import conn
from hsb.wire.conn import PROTOCOL_ERRORS
from tests.support.logrec import RecordingLog
from tests.support.transports import RecordingTransport
from tests.test_auth_link import Link

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    """limits' log recorded, and its count of refusals fresh (nothing said yet)."""
    r = RecordingLog()
    monkeypatch.setattr(limits, "log", r)
    monkeypatch.setattr(limits.REFUSALS, "said_at", -limits.REFUSED_LOG_S)
    monkeypatch.setattr(limits.REFUSALS, "links", {})
    monkeypatch.setattr(limits.TIERS, "on", False)  # (as in hsbd; a CPServer made in this process turns it on)
    return r


def test_room_below_the_reserve_and_none_in_it(rec: RecordingLog) -> None:
    assert fd_room(999 - FD_RESERVE, "terminal", "p", soft=1000)
    assert fd_room(10**6, "terminal", "p", soft=-1)  # unlimited
    assert not rec.entries
    assert not fd_room(1000 - FD_RESERVE, "terminal", "1.2.3.4:5", soft=1000)
    assert not fd_room(999, "http", "1.2.3.4:6", soft=1000)
    [line] = rec.events("connection_refused")  # the second refusal, within REFUSED_LOG_S, said with the next line
    assert line["level"] == "warning" and line["link"] == "terminal" and line["refused"] == 1
    assert f"{1000 - FD_RESERVE + 1} of the 1000 open files" in line["reason"] and "LimitNOFILE" in line["reason"]
    assert limits.REFUSALS.count == 1
    assert not fd_room(999, "http", "1.2.3.4:7", soft=1000)
    limits.REFUSALS.said_at -= limits.REFUSED_LOG_S  # time has passed
    assert not fd_room(999, "admin", "p", soft=1000)
    assert [e["refused"] for e in rec.events("connection_refused")] == [1, 3]
    # the line names every link refused since the one before, not only the one refused now
    assert [e["links"] for e in rec.events("connection_refused")] == [{"terminal": 1}, {"http": 2, "admin": 1}]
    assert "(3 since the last such line: http 2, admin 1)" in rec.events("connection_refused")[1]["reason"]


def test_the_reserve_is_at_most_a_quarter_of_the_limit(rec: RecordingLog) -> None:
    assert [limits.reserve(s) for s in (100_000, 256, 255, 100, 8, 3)] == [FD_RESERVE, 64, 63, 25, 2, 0]
    links = ("terminal", "host", "peer", "admin", "http", "other")
    # in hsbd (no terminals) every link leaves the whole reserve: a takeover still opens its
    # database pool, its hook's pipes and its links (found by review: 16 left it too few)
    assert [limits.reserve(256, link) for link in links] == [64] * 6
    assert fd_room(74, "terminal", "p", soft=100) and not fd_room(75, "terminal", "p", soft=100)
    assert fd_room(2, "terminal", "p", soft=3)  # (a limit of 3 keeps nothing back)
    [line] = rec.events("connection_refused")
    assert "76 of the 100 open files" in line["reason"] and "the last 25 kept" in line["reason"]


def test_in_a_cp_the_pairs_own_links_get_in_past_the_terminals_share(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the capacity walk-through: terminals beyond too low a limit took every descriptor
    down to the reserve, and the same reserve refused the hosts' links, hsbctl and /health. In a
    process serving terminals (hsbcpd: serves_terminals) the pair's own links leave half of it."""
    monkeypatch.setattr(limits.TIERS, "on", True)
    assert [limits.reserve(256, link) for link in ("terminal", "host", "peer", "admin", "http", "other")] == [64, 32, 32, 32, 32, 64]
    assert not fd_room(1000 - FD_RESERVE, "terminal", "t:1", soft=1000)
    assert fd_room(1000 - FD_RESERVE, "host", "h:1", soft=1000) and fd_room(1000 - FD_RESERVE // 2 - 1, "admin", "a:1", soft=1000)
    assert not fd_room(1000 - FD_RESERVE // 2, "http", "w:1", soft=1000)
    said = [e["reason"] for e in rec.events("connection_refused")]
    assert "the last 64 kept for the hosts', hsbctl's and the health check's links and the journal" in said[0], said


class FakeSock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class SockTransport(RecordingTransport):
    def __init__(self, fd: int) -> None:
        super().__init__("peer")
        self.sock = FakeSock(fd)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name, default)


@pytest.mark.parametrize("fd, kept", [(1000 - FD_RESERVE - 1, True), (1000 - FD_RESERVE, False), (999, False)])
def test_framed_link_accepted_in_the_reserve_is_closed_unanswered(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch, fd: int, kept: bool) -> None:
    monkeypatch.setattr(limits, "nofile_soft", lambda: 1000)
    monkeypatch.setattr(conn.OPEN, "n", 499)  # (this one makes half the limit: its descriptor is checked)
    before = PROTOCOL_ERRORS[("host", "connection_refused")]

    async def main() -> tuple[Link, SockTransport]:
        p = Link(auth_timeout=5.0)
        t = SockTransport(fd)
        p.connection_made(t)  # type: ignore[arg-type]
        p.flush()
        return p, t

    p, t = asyncio.run(main())
    if kept:
        assert not t.closing and not p.closed and [f["t"] for f in t.frames()] == ["challenge"]
        assert not rec.entries
        assert PROTOCOL_ERRORS[("host", "connection_refused")] == before
    else:
        assert PROTOCOL_ERRORS[("host", "connection_refused")] == before + 1  # (hsb_protocol_errors_total)
        assert t.closing and p.closed and not t.data, "a connection in the reserve must be closed before anything is sent"
        assert [e["link"] for e in rec.events("connection_refused")] == ["host"]
        p.connection_lost(None)  # (what the loop does next) on a link that never opened: nothing breaks


def test_a_connection_below_half_the_limit_is_not_asked_its_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below half the open-files limit (connections counted as they open and close) the reserve is
    out of reach and the socket is not asked of the transport: that cost the CP ~8 % more CPU in a
    reconnect storm of 10,000 terminals. A connection's close takes it off the count."""
    monkeypatch.setattr(limits, "nofile_soft", lambda: 1000)
    monkeypatch.setattr(conn.OPEN, "n", 0)
    asked: list[str] = []

    class Counting(SockTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            asked.append(name)
            return super().get_extra_info(name, default)

    async def main() -> tuple[Link, Link]:
        p, q = Link(auth_timeout=5.0), Link(auth_timeout=5.0)
        p.connection_made(Counting(999))  # type: ignore[arg-type]
        assert conn.OPEN.n == 1
        p.connection_lost(None)
        p.connection_lost(None)  # (counted off once)
        assert conn.OPEN.n == 0
        monkeypatch.setattr(conn.OPEN, "n", 499)
        q.connection_made(Counting(999))  # type: ignore[arg-type]
        return p, q

    p, q = asyncio.run(main())
    assert asked.count("socket") == 1, asked  # only q's, at half the limit
    assert q.closed and conn.OPEN.n == 500


def lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


async def _get(port: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET /health HTTP/1.1\r\n\r\n")
        await w.drain()
        try:
            return await asyncio.wait_for(r.read(), 5.0)
        except ConnectionResetError:
            return b""
    finally:
        w.close()


def test_http_listener_refuses_in_the_reserve_and_serves_again_after(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch) -> None:
    soft = {"v": -1}
    monkeypatch.setattr(limits, "nofile_soft", lambda: soft["v"])
    before = PROTOCOL_ERRORS[("http", "connection_refused")]

    async def main() -> tuple[bytes, bytes]:
        srv, addr = await http.start_http("127.0.0.1:0", {"/health": lambda: (200, "text/plain", b"ok\n")})
        port = int(addr.rsplit(":", 1)[1])
        try:
            # the client's socket and the one accepted for it: the lowest free descriptors, the
            # second of them in the reserve (a quarter of so small a limit)
            soft["v"] = lowest_free_fd() + 2
            refused = await _get(port)
            soft["v"] = -1
            served = await _get(port)
        finally:
            srv.close()
            await srv.wait_closed()
        return refused, served

    refused, served = asyncio.run(main())
    assert refused == b"", f"a connection in the reserve was answered: {refused[:80]!r}"
    assert served.startswith(b"HTTP/1.1 200 ") and served.endswith(b"ok\n")
    assert PROTOCOL_ERRORS[("http", "connection_refused")] == before + 1
    [line] = rec.events("connection_refused")
    assert line["link"] == "http" and line["peer"].startswith("127.0.0.1:")


def test_socket_fd_numbering_is_lowest_first() -> None:
    """fd_room's premise: a new descriptor is the lowest free one."""
    low = lowest_free_fd()
    with socket.socket() as s:
        assert s.fileno() == low
