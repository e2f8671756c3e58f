"""A real TerminalClient fed frame by frame, for the strict verdict's tests
(tests/test_term_strict*.py): its ids' base, a connection made and welcomed (by a CP process
named or not), frames fed, a client of its own statistics, and the verdict of a run of it."""

from __future__ import annotations

from typing import Any

from hsb.term.client import TerminalClient
from hsb.term.load import _report
from hsb.term.loadstats import LoadStats
from hsb.term.report import LoadReport
from hsb.wire.framing import encode
from tests.support.transports import RecordingTransport

BASE = 1000


def connect(c: TerminalClient, last_acked: int = 0, cp: str | None = None) -> RecordingTransport:
    """A new connection of `c`, welcomed (by CP process `cp`, if named)."""
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    welcome: dict[str, Any] = {"t": "welcome", "terminal": c.name, "last_acked": last_acked}
    if cp is not None:
        welcome["cp"] = cp
    feed(c, welcome)
    return tr


def feed(c: TerminalClient, *msgs: dict[str, Any]) -> None:
    c.data_received(b"".join(encode(m) for m in msgs))


def client(**kw: Any) -> tuple[TerminalClient, LoadStats]:
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True, **kw)
    connect(c)
    return c, stats


def verdict(c: TerminalClient, stats: LoadStats, not_back: list[TerminalClient] | None = None) -> LoadReport:
    return _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, not_back or [])


def connect_to(c: TerminalClient, cp: str) -> None:
    connect(c, 0, cp)
