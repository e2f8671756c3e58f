"""Edges of the resuming terminal (hsb.term.resume, docs/protocol.md §1 `hello`, `confirm`,
`reply`) that a mutation audit found unpinned: a real TerminalClient fed CP frames on recording
transports (tests/support/termfeed.py), each test checking what it writes or how it judges."""

from __future__ import annotations

from typing import Any

from hsb.term.client import TerminalClient
from tests.support.procs import until
from tests.support.termfeed import BASE, client, feed, verdict
from tests.support.transports import RecordingTransport


def _confirms(tr: Any) -> list[int]:
    return [f["id"] for f in tr.frames() if f["t"] == "confirm"]


def _reconnect(c: TerminalClient, last_acked: int, cp: str | None = None) -> RecordingTransport:
    """The connection drops; a new one says hello and is welcomed (by CP process `cp`, if named)."""
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    welcome: dict[str, Any] = {"t": "welcome", "terminal": c.name, "last_acked": last_acked}
    if cp is not None:
        welcome["cp"] = cp
    feed(c, welcome)
    return tr


async def test_each_restarted_cp_process_may_resend_a_recovered_reply_once() -> None:
    """Every new CP process sends again each reply it recovered, whatever the hello said: a
    second restart resends what the first one did. Each process's resend is ignored once (the
    set of those it resent starts afresh with each process). Kills: other_cp_process keeping
    `recovered_resent` from the process before."""
    c, stats = client()
    c.connection_lost(None)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0, "cp": "a"})
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    _reconnect(c, a, cp="b")
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    assert verdict(c, stats).resent_ignored == 1
    tr = _reconnect(c, a, cp="c")
    assert tr.frames()[0]["last_reply"] == a
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 2 and r.duplicates == 0, r.failures


async def test_an_earlier_runs_reply_resent_at_the_next_hello_is_confirmed_again() -> None:
    """An earlier run's reply was confirmed, but the connection dropped before the CP read that
    confirm: the next hello (last_reply 0, `first`) claims none of it, and the CP sends it again.
    The terminal confirms it again on the new connection, though its id is the one it confirmed
    last (else the CP keeps it for good). Kills: `msg_id <= self.confirmed` -> `<` in
    earlier_runs_reply."""
    c, stats = client()
    tr: Any = c.transport
    feed(c, {"t": "reply", "id": BASE - 5, "data": "x"})
    await until(lambda: _confirms(tr), timeout=5, what="the first confirm")
    assert _confirms(tr) == [BASE - 5]
    tr = _reconnect(c, 0)
    assert tr.frames()[0] == {"t": "hello", "terminal": "T1", "last_reply": 0, "first": BASE}
    feed(c, {"t": "reply", "id": BASE - 5, "data": "x", "resent": True})
    await until(lambda: _confirms(tr), timeout=5, what="the confirm again")
    assert [f for f in tr.frames() if f["t"] == "confirm"] == [{"t": "confirm", "id": BASE - 5, "seen": 1}]
    r = verdict(c, stats)
    assert r.earlier_run_replies == 1 and r.duplicates == 0 and r.unexpected == 0, r.failures
