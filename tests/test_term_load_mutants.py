"""hsbterm's load generator (hsb.term.load) at the points a mutation audit of the module found no
test for: which terminals the end of the run counts as not back, and what the report makes of the
marks (answers that came only with the logoff, replies that came before their ack, the settle
time), and what a closed-loop run and its `classic` names make of the report."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.term import load, loadstats
from hsb.term.client import WELCOMED, TerminalClient
from hsb.term.load import background_load, run_load
from hsb.term.loadstats import LoadStats
from hsb.term.verdict import ACKED, REPLY_SHIFT, SENT
from tests.support.fakecp import FakeCP, wait_until

pytestmark = pytest.mark.timeout(30)


def _term(**kw: Any) -> Any:
    """A terminal as `_not_back` sees it: welcomed, logged on, its session open."""
    t = {"welcomed_at": 1.0, "stopping": False, "state": WELCOMED, "session_at": 1.5, "session_open": True}
    t.update(kw)
    return SimpleNamespace(**t)


def test_not_back_is_a_terminal_once_welcomed_and_not_served_now() -> None:
    """Not back at the end: one welcomed once and logged off now, or logged on without the
    session it had; never one that was never welcomed (its name refused: no run of its own to
    come back to), nor one stopping, nor one logged on with its session (or that never had one)."""
    served = _term()
    no_session_ever = _term(session_at=None, session_open=False)
    away = _term(state="connecting")
    lost_session = _term(session_open=False)
    never = _term(welcomed_at=None, state="connecting", session_at=None, session_open=False)
    stopping = _term(stopping=True, state="connecting")
    got = load._not_back([served, no_session_ever, away, lost_session, never, stopping])
    assert got == [away, lost_session], got


class _Client(SimpleNamespace):
    __hash__ = object.__hash__  # type: ignore[assignment]  # (a key of the settled marks, as a TerminalClient is; SimpleNamespace's is None)


def _client(name: str, marks: bytes, *, early: int = 0, unexpected: int = 0) -> Any:
    """A terminal as `_report` sees it, ids 1, 2, ... (stride 1)."""
    return _Client(
        name=name,
        marks=bytearray(marks),
        base=1,
        stride=1,
        unexpected=unexpected,
        early=early,
        welcomed_at=0.5,
        session_at=0.6,
        disconnects=0,
        bad_data=0,
        bad_data_ids=[],
        resent_ignored=0,
        earlier_run_replies=0,
        unexpected_acks=0,
        acks_forgotten=0,
        logon_drops=0,
        workload=None,
    )


ANSWERED = SENT | ACKED | (1 << REPLY_SHIFT)


def test_an_answer_that_came_only_with_the_logoff_is_late_not_on_time() -> None:
    """The marks as the settle time ended judge lost and unacknowledged: message 2, acknowledged
    and answered only at the logoff (after the settle time), is lost and counted late; message 3,
    never acknowledged then, is unacknowledged and late; the report's totals say so."""
    c = _client("T1", bytes([ANSWERED, ANSWERED, ANSWERED]))
    settled = {c: bytes([ANSWERED, SENT | ACKED, SENT])}
    r = load._report([c], LoadStats(1), 10.0, 1.0, 3.0, 5.0, 0.0, 0.0, (), settled)
    assert (r.sent, r.replied, r.lost, r.unacked, r.late_at_logoff) == (3, 1, 1, 1, 2), r
    assert r.lost_ids and r.unacked_ids, (r.lost_ids, r.unacked_ids)


def test_a_reply_before_its_ack_counts_as_unexpected_and_the_settle_time_is_after_the_sending() -> None:
    """A reply that came before its message was acknowledged (`early`) is an unexpected reply in
    the verdict, as are replies to ids never sent; the settle time is from the end of the
    sending to the end of the settling, not from its start."""
    c = _client("T1", bytes([ANSWERED]), early=1, unexpected=2)
    r = load._report([c], LoadStats(1), 10.0, 1.0, 3.0, 5.5, 0.0, 0.0)
    assert (r.unexpected, r.unexpected_early) == (3, 1), r
    assert (r.duration_s, r.settle_s) == (2.0, 2.5), (r.duration_s, r.settle_s)


async def test_a_closed_loop_run_reports_no_rate_and_counts_only_its_own_classic_terminals(fake: FakeCP) -> None:
    """A closed-loop run keeps no rate (it measures capacity): its report's rate is 0, whatever
    `rate` was passed; `classic` names only count when they are terminals of this run."""
    r = await asyncio.wait_for(
        run_load(("127.0.0.1", fake.port), terminals=2, rate=50, duration=0.2, settle=2, closed_loop=True, window=2, classic=("T00001", "X00009")),
        30,
    )
    assert r.closed_loop and r.rate == 0.0 and r.sent > 0, r
    assert r.classic == 1, r.classic


async def test_the_settle_time_waits_for_terminals_still_logging_on_again(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both terminals dropped (a CP restart, say) as the sending ends, and back only 1.5 s later
    (their backoff): the settle time waits for them while it lasts, so they are back, not
    reported as `not back` after the quiet moment before the logoff."""
    retries: list[str] = []

    def backoff(self: TerminalClient) -> float:
        retries.append(self.name)  # (it saw its connection go)
        return 1.5

    monkeypatch.setattr(TerminalClient, "_next_backoff", backoff)
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=2, rate=20, settle=10, expect_disconnects=True)
    try:
        assert fake.drop_all() == 2
        await wait_until(lambda: len(retries) >= 2, what="both terminals saw the drop")
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 30)
    assert r.disconnects == 2 and r.not_back == 0, (r.disconnects, r.not_back_names)


async def test_sends_owed_beyond_what_a_terminal_keeps_are_still_reported_unsent(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal whose window stays full (no reply comes) owes every send that falls due; past
    MAX_DEFERRED (here 2) it keeps no more of them, and those are never made: the report's
    owed_unsent counts them too, not only the ones it kept."""
    monkeypatch.setattr(loadstats, "MAX_DEFERRED", 2)
    fake.pause()  # (acknowledged, never answered: the window of 1 stays full)
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=1, rate=40, duration=0.5, settle=0.5, window=1), 30)
    assert r.sent == 1 and r.owed_unsent > 2, (r.sent, r.owed_unsent)
