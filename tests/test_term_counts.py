"""What hsbterm counts, checked against the code broken on purpose (a mutation audit): acks and
replies at the edges of what a terminal sent, a reply it held sent again unmarked, a resent reply
to a restarted CP on each connection, the run's live counts against its verdict, a percentile's
rank and the verdict's own `ok`. In-process: frames fed to a real TerminalClient."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hsb.term.client import TerminalClient
from hsb.term.load import _report
from hsb.term.loadstats import LoadStats
from hsb.term.report import LoadReport
from hsb.term.stats import LatencyHistogram
from hsb.term.verdict import ACKED, judge
from tests.support.termfeed import BASE, connect, feed
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


def _client(**kw: Any) -> tuple[TerminalClient, LoadStats]:
    stats = LoadStats(1)
    c = TerminalClient("T1", stats, base=BASE, check_data=True, **kw)
    connect(c)
    return c, stats


def _verdict(c: TerminalClient, stats: LoadStats) -> LoadReport:
    return _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])


async def test_an_ack_for_a_message_the_terminal_never_wrote_is_unexpected() -> None:
    """A message recorded while the CP did not read (writes paused) never reached it: an ack of
    it is made up or another's, not an acknowledgement."""
    c, stats = _client()
    c.pause_writing()
    m = c.submit()
    assert c.sent_upto < m
    feed(c, {"t": "ack", "id": m})
    assert c.unexpected_acks == 1 and not c.marks[0] & ACKED
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1, r.failures


async def test_an_ack_and_a_reply_for_the_runs_first_id_never_sent_are_unexpected() -> None:
    """The run's first id is this run's (only ids below it are an earlier run's): sent by no one
    yet, its ack and its reply are unexpected, not an earlier run's to excuse."""
    c, stats = _client()
    feed(c, {"t": "ack", "id": BASE}, {"t": "reply", "id": BASE, "data": "x"})
    assert not c.earlier_run and c.earlier_run_replies == 0
    r = _verdict(c, stats)
    assert not r.ok and r.unexpected_acks == 1 and r.unexpected == 1, r.failures


async def test_a_reply_the_terminal_held_sent_again_unmarked_after_a_reconnect_is_a_duplicate() -> None:
    """Only a copy marked `resent` may be ignored: the same reply again without the mark, even
    one the terminal held at its hello, is a duplicate (in the verdict and the live count)."""
    c, stats = _client()
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})
    c.connection_lost(None)
    connect(c, last_acked=b)
    assert b in c.may_resend  # held at the hello, above its last_reply
    feed(c, {"t": "reply", "id": b, "data": c.payload(b)}, {"t": "reply", "id": a, "data": c.payload(a)})
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1 and r.resent_ignored == 0 and stats.duplicates == 1, r.failures


async def test_a_reply_kept_above_the_hellos_word_by_a_restarted_cp_is_ignored_once_per_connection() -> None:
    """A terminal that knows of an earlier run says last_reply 0: a restarted CP resends, at each
    hello, every reply it keeps above that, those it recovered too, until a confirm covers it. One
    the terminal held is ignored once on each connection to that process (not once per process:
    the confirm may go with a connection); a second copy on one connection is a duplicate."""
    c, stats = _client()
    c.connection_lost(None)
    connect(c, cp="a")
    feed(c, {"t": "ack", "id": BASE - 5})  # an earlier run's message: its hellos claim nothing
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    for n in (1, 2):
        c.connection_lost(None)
        tr = connect(c, last_acked=a, cp="b")  # restarted: it recovered a
        assert [f["last_reply"] for f in tr.frames() if f["t"] == "hello"] == [0]
        feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
        r = _verdict(c, stats)
        assert r.ok and r.resent_ignored == n, (n, r.failures)
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = _verdict(c, stats)
    assert not r.ok and r.duplicates == 1, r.failures


async def test_the_runs_live_counts_agree_with_its_verdict() -> None:
    """The progress lines (LoadStats) count what the verdict counts: an ack again is not a second
    ack, a duplicate, an early and an unexpected reply each once, and a connection closed after
    the hello without a welcome is no disconnect of a logged-on terminal."""
    c, stats = _client()
    a, b = c.submit(), c.submit()
    feed(
        c,
        {"t": "ack", "id": a},
        {"t": "ack", "id": a},
        {"t": "reply", "id": a, "data": c.payload(a)},
        {"t": "reply", "id": a, "data": c.payload(a)},
        {"t": "reply", "id": b, "data": c.payload(b)},  # before its ack: early
        {"t": "ack", "id": b},
        {"t": "reply", "id": BASE + 99, "data": "x"},  # never sent
    )
    c.connection_lost(None)  # a logged-on terminal's drop
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)  # closed after the hello, no welcome: a logon drop
    r = _verdict(c, stats)
    assert (r.acked, r.replied, r.duplicates, r.unexpected, r.unexpected_early) == (2, 2, 1, 2, 1), r.to_dict()
    assert (stats.acked, stats.replied, stats.duplicates, stats.unexpected) == (2, 2, 1, 2)
    assert r.disconnects == stats.disconnects == 1 and r.per_terminal_disconnects == {"T1": 1} and r.logon_drops == 1


def test_a_percentile_is_the_bucket_its_rank_falls_in() -> None:
    """The p-th percentile of n samples is the ceil(n p / 100)-th smallest: half the samples at
    1 ms and half at 10 ms have their median at 1 ms, not at the next bucket."""
    h = LatencyHistogram()
    for s in [0.001] * 50 + [0.010] * 50:
        h.add(s)
    assert h.percentile(50) == pytest.approx(0.001, rel=0.01)
    assert h.percentile(51) == pytest.approx(0.010, rel=0.01)


def test_a_verdict_with_messages_never_acknowledged_is_not_ok() -> None:
    v = judge(sent=[1, 2], acked=[1], replies={1: 1})
    assert v.unacked == 1 and not v.ok


async def test_a_send_owed_and_never_made_enters_the_timeline_unanswered() -> None:
    """A terminal whose turn came while it could not send owes that send; if the run ends first,
    it is a message its user waited for and never got an answer to: unanswered from when it was
    due (left out, the pause of an operation that kept the terminal away looked shorter)."""
    c, stats = _client()
    c.connection_lost(None)
    due = time.monotonic()
    stats.defer(c, due)
    stats.settled([c])
    assert list(stats.timeline.sent) == [due] and stats.timeline.window(due - 0.5, after_s=5.0)["unanswered"] == 1
