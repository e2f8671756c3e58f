"""The strict verdict of a whole run (hsb.term.load's report), fed frame by frame to a real
TerminalClient (tests/support/termfeed.py): a refusal fails it even where disconnects are
expected, as do terminals that do not come back (or come back without their session), a
connection closed after the hello without a word, and a welcome that breaks the protocol; a run
that sent nothing, or of no terminals, proves nothing."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.term.client import TerminalClient
from hsb.term.load import _not_back
from hsb.term.loadstats import LoadStats
from hsb.term.report import LoadReport
from tests.support.termfeed import BASE, client, connect, feed, verdict
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


def test_a_refusal_fails_the_run_even_where_disconnects_are_expected() -> None:
    done: dict[str, Any] = {"sent": 1, "acked": 1, "replied": 1}
    race = LoadReport(terminals=1, welcomed=1, expect_disconnects=True, errors={"already_connected": 3}, **done)
    assert race.ok, race.failures  # a reconnect that beat the CP's notice of the old connection: retried
    for code in ("bad_frame", "unknown_terminal", "bad_hello"):
        r = LoadReport(terminals=1, welcomed=1, expect_disconnects=True, errors={code: 1, "already_connected": 1}, **done)
        assert not r.ok and r.failures == [f"CP errors: {code} x1"], r.failures
    assert not LoadReport(terminals=1, welcomed=1, errors={"already_connected": 1}, **done).ok  # not expected: a failure


async def test_a_terminal_that_does_not_come_back_fails_the_run() -> None:
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    assert _not_back([c]) == [] and verdict(c, stats).ok
    c.connection_lost(None)  # gone, and (no connector here) never logs on again
    gone = _not_back([c])
    assert gone == [c]
    r = verdict(c, stats, gone)
    assert not r.ok and r.not_back == 1 and r.not_back_names == ["T1"], r.failures
    assert any(f.startswith("not back: 1 terminal was") for f in r.failures)
    connect(c, last_acked=a)
    assert _not_back([c]) == []


async def test_a_terminal_logged_on_without_its_session_again_is_not_back() -> None:
    """Logged on, but the session it had is gone and no other came: not served, so not back."""
    c, stats = client()
    assert _not_back([c]) == []  # never had a session (a run that does not wait for one): fine
    feed(c, {"t": "session", "state": "open", "epoch": 1})
    assert _not_back([c]) == []
    feed(c, {"t": "session", "state": "closed", "epoch": 2})
    gone = _not_back([c])
    assert gone == [c]
    r = verdict(c, stats, gone)
    assert not r.ok and r.not_back == 1 and any(f.startswith("not back: 1 terminal was") for f in r.failures), r.failures
    feed(c, {"t": "session", "state": "open", "epoch": 2})
    assert _not_back([c]) == []
    c.connection_lost(None)
    connect(c, last_acked=0)  # logged on again: its session comes with the welcome or soon after
    assert _not_back([c]) == [c]
    feed(c, {"t": "session", "state": "open", "epoch": 2})
    assert _not_back([c]) == []


def test_a_run_that_sent_nothing_is_not_ok() -> None:
    """Terminals logged on and nothing sent (a rate of 0, a duration too short for the rate)
    proves nothing: it fails, it does not say every message was answered exactly once."""
    idle = LoadReport(terminals=10, welcomed=10, sent=0)
    assert not idle.ok and idle.exit_status == 1 and any(f.startswith("nothing sent") for f in idle.failures)
    assert LoadReport(terminals=10, welcomed=10, sent=5, acked=5, replied=5).ok


def test_a_connection_closed_after_the_hello_without_a_word_fails_a_strict_run() -> None:
    """The CP reads the hello and closes with neither a welcome nor an error: the terminal gets in
    at its next try, and nothing else counted it. In a strict run it is a failure; one refused
    with an error frame (it says why) is not counted."""
    c, stats = client()
    c.connection_lost(None)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "error", "code": "already_connected", "msg": "x"})
    c.connection_lost(None)  # refused, saying why
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)  # closed without a word
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    r = verdict(c, stats)
    assert r.logon_drops == 1 and not r.ok and any(f.startswith("dropped while logging on: 1") for f in r.failures), r.failures


@pytest.mark.parametrize(
    "frames",
    [
        [{"t": "welcome", "terminal": "T2", "last_acked": 0}],  # logged on as another terminal
        [{"t": "welcome", "terminal": "T1"}],  # no last_acked: what the CP holds is unknown
        [{"t": "welcome", "terminal": "T1", "last_acked": 0}, {"t": "welcome", "terminal": "T1", "last_acked": 0}],
        [{"t": "ack", "id": BASE}, {"t": "welcome", "terminal": "T1", "last_acked": 0}],  # before the welcome
    ],
    ids=["other-terminal", "no-last-acked", "second-welcome", "ack-first"],
)
async def test_a_welcome_that_breaks_the_protocol_fails_the_run(frames: list[dict[str, Any]]) -> None:
    """A CP that welcomes a terminal under another name serves its messages as that terminal's
    (an echo reply still matches the id and data sent); one that says no last_acked, welcomes
    twice, or answers before welcoming breaks the protocol. Each is a protocol error."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    feed(c, *frames)
    assert c.protocol_errors == 1 and tr.closing
    assert [f["code"] for f in tr.frames() if f["t"] == "error"] == ["bad_fields"]
    r = verdict(c, stats)
    assert not r.ok and any(f.startswith("protocol errors: 1") for f in r.failures), r.failures


def test_a_run_of_no_terminals_proves_nothing() -> None:
    r = LoadReport(terminals=0)
    assert not r.ok and any("no terminals" in f for f in r.failures), r.failures
