"""Tests from a mutation audit of hsb/term/answers.py, hsb/term/client.py and the welcome's
checks of hsb/term/logon.py (what a terminal counts for the strict verdict of hsb.term.report),
fed frame by frame to a real TerminalClient (tests/support/termfeed.py): each pins a behaviour
that a single-point change of those modules broke while every other test still passed: a
session closed on a logged-on terminal is counted (one closed during its logoff is not); a
session notice of another state is a protocol error; frames behind a frame that made the
terminal close are not judged; a connection closed after its hello, the same CP process
welcoming the terminal next, is a drop with the CP present (what a CP-restart run may not
excuse); a welcome whose last_acked is the run's first id, never sent, is an unexpected ack, and
one just below it an earlier run's; a connection made after the terminal stopped is closed
without a hello."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from hsb.term.report import LoadReport
from tests.support.termfeed import BASE, client, connect, connect_to, feed, verdict
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


async def test_a_session_closed_on_a_logged_on_terminal_is_counted_and_not_during_its_logoff() -> None:
    """A `session closed` notice while the terminal is logged on (a standby-capable terminal's
    session closed by a failover) counts against the run; one during its own logoff (after its
    bye) does not. Kills: the count dropped, or taken only while stopping."""
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "session", "state": "open", "epoch": 1})
    feed(c, {"t": "session", "state": "closed", "epoch": 2})
    assert c.session_closed == 1 and stats.session_closed == 1
    r = verdict(c, stats)
    r.session_closed_standby_capable = c.session_closed  # (as hsb.term.load.run_load sums it)
    assert not r.ok and any(f.startswith("session closed: 1 ") for f in r.failures), r.failures
    feed(c, {"t": "session", "state": "open", "epoch": 2})
    c.bye()
    feed(c, {"t": "session", "state": "closed", "epoch": 2, "reason": "logoff"})
    assert c.session_closed == 1


@pytest.mark.parametrize("state", ["opened", None, 1])
async def test_a_session_notice_of_another_state_is_a_protocol_error(state: Any) -> None:
    """docs/protocol.md §1: a session's state is open or closed; anything else breaks the
    protocol (the terminal could not tell whether it is served). Kills: the check dropped."""
    c, stats = client()
    tr: Any = c.transport
    feed(c, {"t": "session", "state": state, "epoch": 1})
    assert c.protocol_errors == 1 and tr.closing and not c.session_open
    assert [f["code"] for f in tr.frames() if f["t"] == "error"] == ["bad_fields"]
    r = verdict(c, stats)
    assert not r.ok and any(f.startswith("protocol errors: 1 ") for f in r.failures), r.failures


async def test_frames_behind_one_that_made_the_terminal_close_are_not_judged() -> None:
    """A read whose first frame breaks the protocol (a welcome as another terminal): the
    terminal says why and closes; the frames behind it in the same read (an ack, a reply) are
    not judged, and no second protocol error is counted for them. Kills: frames handled on a
    connection already closing."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": "T2", "last_acked": 0}, {"t": "ack", "id": BASE}, {"t": "welcome", "terminal": "T1", "last_acked": 0})
    assert c.protocol_errors == 1 and stats.protocol_errors == 1 and tr.closing
    assert [f["t"] for f in tr.frames()] == ["hello", "error"]
    assert c.welcomed_at is None and c.unexpected_acks == 0


def test_a_drop_during_the_logon_with_the_same_cp_process_next_is_not_the_cps_absence() -> None:
    """A connection closed after its hello with neither a welcome nor an error, the same CP
    process welcoming the terminal at its next try: the CP was there, so a CP-restart run may not
    excuse it (`disconnects with the CP present`); another CP process welcoming it next is a
    restart, excused. Kills: a drop during the logon not marking the terminal dropped."""
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    connect_to(c, "a")
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)  # closed after the hello, without a word
    assert c.logon_drops == 1
    connect_to(c, "a")
    assert c.cp_present_drops == 1
    r = LoadReport(
        terminals=1, welcomed=1, sent=1, acked=1, replied=1, expect_disconnects="cp", logon_drops=1, disconnects_cp_present=c.cp_present_drops
    )
    assert not r.ok and any(f.startswith("disconnects with the CP present: 1 ") for f in r.failures), r.failures
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)
    c.cp_away()
    connect_to(c, "b")  # another CP process: a restart
    assert c.cp_present_drops == 1 and c.logon_drops == 2


def test_a_welcome_acknowledging_the_runs_first_id_never_sent_is_an_unexpected_ack() -> None:
    """The first welcome says last_acked = the run's first id, which this terminal has not sent
    yet: the CP claims to hold a message it cannot have (misdelivered or made up), as an `ack`
    of it would. Kills: the check starting above the run's first id."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    connect(c, last_acked=BASE)
    assert c.unexpected_acks == 1 and not c.earlier_run
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and any(f.startswith("unexpected acks: 1 ") for f in r.failures), r.failures


def test_a_welcome_acknowledging_the_id_just_below_the_runs_first_is_an_earlier_runs() -> None:
    """last_acked one below the run's first id: an earlier run's message the CP holds, maybe
    still to be answered, so the terminal's hellos claim no reply (last_reply 0: the CP sends
    again every one it keeps) and it is no unexpected ack. Kills: the earlier run's range ending
    short of the run's first id."""
    c, stats = client()
    c.connection_lost(None)
    connect(c, last_acked=BASE - 1)
    assert c.earlier_run and c.unexpected_acks == 0
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.connection_lost(None)
    tr = connect(c, last_acked=a)
    (hello,) = [f for f in tr.frames() if f["t"] == "hello"]
    assert hello["last_reply"] == 0 and hello["first"] == BASE
    assert verdict(c, stats).ok


def test_a_connection_made_after_the_terminal_stopped_is_closed_without_a_hello() -> None:
    """The terminal logged off (or was told to stop) while its connect was under way: the
    connection that then comes is closed at once, with no hello, so it never logs on again nor
    sends what it owed after its logoff. Kills: the stop not checked when a connection is made."""
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    c.submit()
    c.bye()  # (no connection yet: nothing to say)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    assert tr.closing and tr.frames() == []
