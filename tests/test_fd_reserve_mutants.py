"""The open-files reserve (hsb/ops/limits.py: reserve, fd_watch, fd_room, connection_refused) and
its use by the framed links (hsb/wire/conn.py: the OPEN count, the descriptor looked at only past
half the limit), each test naming a behaviour that a mutation audit found no test for: the
reserve's size and the line's pace as docs/operations.md says them (64 descriptors, a line at most
every 10 s, at 10 s exactly said again), the first refusal said at once whatever the monotonic
clock reads, the half-limit bound exact and read from the real limit, no look at the descriptor
under an unlimited limit, a transport without a socket kept, and a refused connection neither
opened (on_open) nor timed.

The audit (session 64): 33 hand-made mutants of limits.py and 14 of conn.py's reserve path;
35 were killed by tests/test_fd_reserve.py, test_limits.py, test_ops_edges.py and
test_cp_server_mutants.py; 9 are killed here; 3 are equivalent (RLIM_INFINITY is -1 on Linux,
so nofile_soft's mapping is the identity; a soft limit of 0 - `soft > 0` for `soft >= 0` in
fd_watch, `soft <= 0` for `soft < 0` in fd_room - cannot hold an accepted socket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hsb.ops import limits
from hsb.ops.limits import fd_room, fd_watch, reserve
from hsb.wire import conn
from hsb.wire.conn import PROTOCOL_ERRORS
from tests import test_fd_reserve
from tests.support.logrec import RecordingLog
from tests.support.transports import RecordingTransport
from tests.test_auth_link import Link
from tests.test_fd_reserve import SockTransport

pytestmark = pytest.mark.timeout(20)


rec = test_fd_reserve.rec  # (its fixture: limits' log recorded, the refusals' count fresh)


class Clock:
    """limits' `time`, with a monotonic clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_the_reserve_and_the_pace_are_the_documented_ones() -> None:
    """docs/operations.md: within 64 descriptors of the limit (a quarter of it under 256), a line
    at most every 10 s (mutant: FD_RESERVE 65)."""
    assert [reserve(s) for s in (100_000, 257, 256)] == [64, 64, 64]
    assert limits.REFUSED_LOG_S == 10.0


def test_the_first_refusal_is_said_even_on_a_clock_just_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monotonic clock may read anything, 0 in a machine (or a time namespace) just started:
    the first refusal of a process is said at once all the same (mutant: REFUSALS.said_at starting
    at 0, which kept the first line back for 10 s)."""
    r = RecordingLog()
    monkeypatch.setattr(limits, "log", r)
    monkeypatch.setattr(limits, "REFUSALS", limits._Refusals())  # as a process starts
    monkeypatch.setattr(limits, "time", Clock(0.0))
    assert not fd_room(999, "terminal", "p", soft=1000)
    assert [e["refused"] for e in r.events("connection_refused")] == [1]


def test_a_line_at_most_every_ten_seconds_and_at_ten_exactly_again(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the monotonic clock (mutants: `>` for `>=`; the wall clock instead): a refusal 9.9 s
    after the last line is counted, one 10 s after it is said with the count."""
    clock = Clock(1000.0)
    monkeypatch.setattr(limits, "time", clock)
    assert not fd_room(999, "terminal", "p", soft=1000)
    clock.now += 9.9
    assert not fd_room(999, "terminal", "p", soft=1000)
    assert [e["refused"] for e in rec.events("connection_refused")] == [1]
    clock.now = 1010.0
    assert not fd_room(999, "terminal", "p", soft=1000)
    assert [e["refused"] for e in rec.events("connection_refused")] == [1, 2]


def test_the_descriptor_is_looked_at_from_half_the_limit_exactly() -> None:
    """Half the limit, not a third (mutant: `soft // 3`): below it the reserve is out of reach
    and the look costs CPU in a reconnect storm."""
    assert not fd_watch(499, soft=1000) and fd_watch(500, soft=1000)
    assert not fd_watch(333, soft=1000)
    assert not fd_watch(48, soft=99) and fd_watch(49, soft=99)  # (half of an odd limit rounded down)


def test_the_half_is_of_the_limit_read_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a `soft` given, fd_watch reads the process's limit (prlimit may lower it while
    the daemon runs) (mutant: a fixed limit instead)."""
    monkeypatch.setattr(limits, "nofile_soft", lambda: 64)
    assert fd_watch(32) and not fd_watch(31)
    monkeypatch.setattr(limits, "nofile_soft", lambda: 100_000)
    assert not fd_watch(32)


def test_an_unlimited_limit_never_has_the_descriptor_looked_at() -> None:
    """No limit (-1), no reserve to keep: the socket is never asked of the transport, however
    many connections are open (mutant: the `soft >= 0` dropped, -1 // 2 being -1)."""
    assert not fd_watch(0, soft=-1) and not fd_watch(10**6, soft=-1)


def _open(make: Callable[[], Link], t: RecordingTransport) -> Link:
    """A link made and connected in a loop of its own (as the loop's accept does), its first
    frames flushed."""

    async def main() -> Link:
        p = make()
        p.connection_made(t)  # type: ignore[arg-type]
        p.flush()
        return p

    return asyncio.run(main())


def test_a_transport_without_a_socket_is_kept(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport that gives no socket (get_extra_info("socket") None) past half the limit: its
    descriptor unknown, the connection is served, not an AttributeError in connection_made
    (mutant: the `sock is not None` dropped)."""
    monkeypatch.setattr(limits, "nofile_soft", lambda: 1000)
    monkeypatch.setattr(conn.OPEN, "n", 900)
    t = RecordingTransport("peer")
    assert t.get_extra_info("socket") is None
    p = _open(lambda: Link(auth_timeout=5.0), t)
    assert not t.closing and not p.closed and [f["t"] for f in t.frames()] == ["challenge"]
    assert not rec.entries


class Opening(Link):
    """A framed link that records its on_open."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.opened = 0

    def on_open(self) -> None:
        self.opened += 1
        super().on_open()


def test_a_refused_connection_is_neither_opened_nor_timed(rec: RecordingLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection accepted in the reserve is closed and nothing more: its link's on_open does
    not run (a CP's terminal link would begin its logon) and no idle timer is armed (mutant: the
    `return` after the abort dropped). One that is kept opens as ever."""
    monkeypatch.setattr(limits, "nofile_soft", lambda: 1000)
    monkeypatch.setattr(conn.OPEN, "n", 600)
    before = PROTOCOL_ERRORS[("host", "connection_refused")]
    refused = _open(lambda: Opening(auth_timeout=5.0, idle_timeout=30.0), SockTransport(999))
    kept = _open(lambda: Opening(auth_timeout=5.0, idle_timeout=30.0), SockTransport(10))
    assert isinstance(refused, Opening) and isinstance(kept, Opening)
    assert refused.closed and refused.opened == 0 and refused._idle_handle is None
    assert not kept.closed and kept.opened == 1
    assert PROTOCOL_ERRORS[("host", "connection_refused")] == before + 1
    assert [e["link"] for e in rec.events("connection_refused")] == ["host"]
