"""A mutation audit of hsb/term/loadstats.py (what a load run counts as it goes), with
hsb/term/stats.py and hsb/term/timeline.py: the tests that kill what the other tests let
survive. Every terminal's first welcome and first session (and only those) complete the
run's waits; what is counted only while the run counts (sessions closed, switches, the back
times, latencies, disconnects, connect failures); the sends a terminal owes (in order, from
when they were due, at most MAX_DEFERRED, sent on a welcome, on a reply or when its writes
resume, and only while owed sends still go out); what makes a run give up; the timeline's
entries and the latency histogram's and gap tracker's edges. In-process: frames fed to a real
TerminalClient over a recording transport (tests/support/termfeed.py)."""

from __future__ import annotations

import asyncio
import math
import ssl
import time

import pytest

from hsb.term.client import TerminalClient
from hsb.term.loadstats import MAX_DEFERRED, LoadStats
from hsb.term.stats import _FLOOR_US, _STEP, GapTracker, LatencyHistogram
from hsb.term.timeline import BackTimes, Timeline
from hsb.wire.framing import ProtocolError
from tests.support.termfeed import BASE, client, connect, feed

pytestmark = pytest.mark.timeout(30)


async def _turn() -> None:
    """One turn of the loop (what `on_welcome` puts off with call_soon has run)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _ack_reply(c: TerminalClient, *ids: int) -> None:
    for i in ids:
        feed(c, {"t": "ack", "id": i}, {"t": "reply", "id": i, "data": c.payload(i)})


# -- welcomes, sessions, switches ------------------------------------------------------------


async def test_all_welcomed_waits_for_every_terminals_first_welcome() -> None:
    """A terminal welcomed again (a reconnect) is not a second terminal: the run's wait for every
    terminal's logon ends with the last terminal's first welcome, not before; a run of no
    terminal has nothing to wait for."""
    stats = LoadStats(2)
    a = TerminalClient("T1", stats, base=BASE)
    b = TerminalClient("T2", stats, base=5000)
    connect(a)
    a.connection_lost(None)
    connect(a)
    assert stats.welcomed == 1 and not stats.all_welcomed.is_set()
    connect(b)
    assert stats.welcomed == 2 and stats.all_welcomed.is_set()
    none = LoadStats(0)
    assert none.all_welcomed.is_set() and none.all_sessions.is_set()


async def test_sessions_count_first_opens_and_closes_only_while_counting() -> None:
    """Every terminal's first session completes the wait for sessions (a session opened again does
    not count twice); each open is a time the terminal was back (a close is not); a close
    counts while the run counts and the terminal is not logging off."""
    stats = LoadStats(2)
    a = TerminalClient("T1", stats, base=BASE)
    b = TerminalClient("T2", stats, base=5000, idx=1)
    connect(a)
    connect(b)
    feed(a, {"t": "session", "state": "open", "epoch": 1})
    feed(a, {"t": "session", "state": "closed", "epoch": 1, "reason": "host"})
    feed(a, {"t": "session", "state": "open", "epoch": 2})
    assert stats.sessions == 1 and not stats.all_sessions.is_set()
    assert stats.session_closed == 1 and len(stats.back_times.at[0]) == 2
    feed(b, {"t": "session", "state": "open", "epoch": 2})
    assert stats.sessions == 2 and stats.all_sessions.is_set()
    b.bye()  # logging off: its session's close is the logoff's, not a failure
    feed(b, {"t": "session", "state": "closed", "epoch": 2})
    assert stats.session_closed == 1
    stats.settled([a, b])  # the run stops counting
    feed(a, {"t": "session", "state": "closed", "epoch": 2})
    feed(a, {"t": "session", "state": "open", "epoch": 3})
    assert stats.session_closed == 1 and len(stats.back_times.at[0]) == 2


async def test_a_switch_counts_and_is_a_back_time_only_while_counting() -> None:
    """A `switched` notice counts, and is a time the terminal was back, while the run counts; the
    logoff's is neither."""
    c, stats = client()
    feed(c, {"t": "switched", "epoch": 2, "kind": "failover"})
    assert stats.switched == 1 and list(stats.back_times.at[0]) != []
    stats.settled([c])
    feed(c, {"t": "switched", "epoch": 3, "kind": "failover"})
    assert stats.switched == 1 and len(stats.back_times.at[0]) == 1


# -- acks, replies, the timeline ---------------------------------------------------------------


async def test_the_ack_latency_counts_first_acks_while_counting() -> None:
    """Send -> ack latency: a first ack adds one sample while the run counts, one after the settle
    (the logoff's) none."""
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a})
    assert stats.acked == 1 and stats.ack_latency.count == 1
    stats.settled([c])
    b = c.submit()
    feed(c, {"t": "ack", "id": b})  # the logoff's: it waited for the logoff, not the service
    assert stats.acked == 2 and stats.ack_latency.count == 1


async def test_a_replys_latency_and_timeline_entry_count_from_when_it_was_due() -> None:
    """A message that waited 10 s before it could go enters the timeline sent when it was due and
    its latency counts the wait; after the settle a reply adds neither."""
    c, stats = client()
    due = time.monotonic() - 10.0
    a = c.submit(due=due)
    _ack_reply(c, a)
    assert stats.replied == 1 and stats.latency.count == 1 and stats.latency.max >= 10.0
    assert len(stats.timeline) == 1 and abs(stats.timeline.sent[0] - due) < 1.0
    assert stats.timeline.replied[0] - stats.timeline.sent[0] >= 10.0
    b = c.submit()
    stats.settled([c])  # b unanswered: one entry
    _ack_reply(c, b)
    assert stats.replied == 2 and stats.latency.count == 1 and len(stats.timeline) == 2


async def test_an_unanswered_message_enters_the_timeline_from_when_it_was_due() -> None:
    """At the settle's end a message without a reply enters the timeline unanswered from when it
    was due (its wait before it could go included), and the run stops counting."""
    c, stats = client()
    due = time.monotonic() - 10.0
    c.submit(due=due)
    stats.settled([c])
    assert not stats.counting
    assert len(stats.timeline) == 1 and abs(stats.timeline.sent[0] - due) < 1.0 and stats.timeline.replied[0] == math.inf


async def test_replies_of_the_sending_phase_and_the_drain() -> None:
    """The reply rate counts first replies in the sending phase only; the settle's wait ends when
    the last outstanding message has its reply, not before."""
    c, stats = client()
    a, b, d = c.submit(), c.submit(), c.submit()
    stats.sending = True
    _ack_reply(c, a)
    stats.sending = False
    _ack_reply(c, b)
    assert stats.replied == 2 and stats.replied_sending == 1
    assert stats.gap.outstanding == 1 and not stats.drained.is_set()
    _ack_reply(c, d)
    assert stats.gap.outstanding == 0 and stats.drained.is_set()
    assert stats.snapshot("settle", 1.0)["outstanding"] == 0


async def test_the_closed_loop_refills_only_when_asked_and_owes_what_it_cannot_send() -> None:
    """In the sending phase without refill a reply sends nothing; with refill it sends the next
    message, or, the terminal's writes paused, owes it; without refill a paused terminal owes
    nothing."""
    c, stats = client()
    stats.sending = True
    _ack_reply(c, c.submit())
    assert c.sent == 1 and c not in stats.deferred
    stats.refill = True
    _ack_reply(c, c.submit())
    assert c.sent == 3 and c not in stats.deferred  # refilled
    c.pause_writing()
    _ack_reply(c, BASE + 2)
    assert c.sent == 3 and len(stats.deferred[c]) == 1  # owed
    del stats.deferred[c]
    stats.refill = False
    c.resume_writing()
    e = c.submit()
    c.pause_writing()
    _ack_reply(c, e)
    assert c.sent == 4 and c not in stats.deferred


# -- sends owed --------------------------------------------------------------------------------


async def test_a_reply_sends_what_the_terminal_owes_only_if_it_can_and_while_owing() -> None:
    """A first reply sends one owed message if the terminal can send (not paused), in the sending
    phase and in the settle's first part, not after it."""
    c, stats = client()
    ids = [c.submit() for _ in range(4)]
    stats.sending = True
    stats.defer(c, time.monotonic())
    c.pause_writing()
    _ack_reply(c, ids[0])
    assert c.sent == 4 and len(stats.deferred[c]) == 1  # paused: still owed
    c.paused = False
    _ack_reply(c, ids[1])
    assert c.sent == 5 and c not in stats.deferred  # sent on the reply
    stats.sending = False  # the settle: owed sends go out in its first part
    stats.defer(c, time.monotonic())
    c.paused = True
    _ack_reply(c, ids[2])
    assert c.sent == 5 and len(stats.deferred[c]) == 1
    c.paused = False
    stats.owed_until = time.monotonic() - 1.0  # that part is over
    _ack_reply(c, ids[3])
    assert c.sent == 5 and len(stats.deferred[c]) == 1


async def test_owed_sends_go_out_in_order_each_counting_from_when_it_was_due() -> None:
    """What a terminal owes goes out at its welcome, all of it, oldest first, each message's wait
    counted from when it was due."""
    c, stats = client()
    c.connection_lost(None)
    now = time.monotonic()
    stats.defer(c, now - 20.0)
    stats.defer(c, now - 10.0)
    connect(c)
    await _turn()
    assert c not in stats.deferred and c.sent == 2
    first, second = BASE, BASE + 1
    assert c.waited[first] >= 20.0 and 10.0 <= c.waited[second] < 20.0


async def test_a_terminal_owes_at_most_max_deferred_sends() -> None:
    """Past MAX_DEFERRED owed sends a terminal owes no more: each one beyond is counted dropped."""
    c, stats = client()
    for _ in range(MAX_DEFERRED + 1):
        stats.defer(c, 1.0)
    assert len(stats.deferred[c]) == MAX_DEFERRED and stats.owed_dropped == 1


async def test_writes_resumed_send_everything_owed_while_owing() -> None:
    """Writes resumed (the CP reads again) send everything owed, while owed sends still go out."""
    c, stats = client()
    c.pause_writing()
    stats.defer(c, time.monotonic())
    stats.defer(c, time.monotonic())
    c.resume_writing()
    assert c.sent == 2 and c not in stats.deferred
    c.pause_writing()
    stats.defer(c, time.monotonic())
    stats.owed_until = time.monotonic() - 1.0  # not sending, the settle's first part over
    c.resume_writing()
    assert c.sent == 2 and len(stats.deferred[c]) == 1


async def test_a_welcome_sends_what_is_owed_only_while_owing() -> None:
    """Owed sends go out at a welcome in the sending phase (whatever the settle's deadline says)
    or in the settle's first part, never once the run stopped counting."""
    c, stats = client()
    c.connection_lost(None)
    stats.defer(c, time.monotonic())
    stats.owed_until = time.monotonic() - 1.0
    connect(c)
    await _turn()
    assert c.sent == 0 and len(stats.deferred[c]) == 1
    c.connection_lost(None)
    stats.sending = True
    connect(c)
    await _turn()
    assert c.sent == 1 and c not in stats.deferred
    c.connection_lost(None)
    stats.defer(c, time.monotonic())
    stats.counting = False  # the logoff
    connect(c)
    await _turn()
    assert c.sent == 1 and len(stats.deferred[c]) == 1


async def test_what_a_welcome_owes_goes_after_the_resends_and_is_not_written_twice() -> None:
    """At a welcome the messages never acknowledged go out again first, then (a turn later) what
    the terminal owes; sent the other way round, the connection's mark of what it has written
    went back, and writes resumed wrote the owed message a second time."""
    c, stats = client()
    a, b = c.submit(), c.submit()
    c.connection_lost(None)
    stats.defer(c, time.monotonic())
    tr = connect(c)
    await _turn()
    c.pause_writing()
    c.resume_writing()
    msgs = [(f["id"], bool(f.get("resent"))) for f in tr.frames() if f["t"] == "msg"]
    assert msgs == [(a, True), (b, True), (b + 1, False)], msgs
    assert stats.resent == 2


# -- giving up, disconnects, connect failures -------------------------------------------------


async def test_nothing_after_a_welcome_gives_the_run_up() -> None:
    """Refusals, protocol errors and TLS failures make a run give up only while no terminal was
    ever welcomed; a plain refused connect never does."""
    stats = LoadStats(1)
    c = TerminalClient("T1", stats, base=BASE)
    stats.on_connect_failed(c, ConnectionRefusedError(111, "refused"), 0.1)
    assert not stats.gave_up.is_set() and stats.connect_failures == 1
    assert stats.last_connect_error == "ConnectionRefusedError: [Errno 111] refused"
    connect(c)
    stats.on_error(c, "unknown_terminal", "no such terminal")
    for _ in range(3):
        stats.on_protocol_error(c, ProtocolError("bad_frame", "not a terminal port"))
    for _ in range(3):
        stats.on_connect_failed(c, ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), 0.1)
    assert not stats.gave_up.is_set() and stats.hopeless.cause is None, stats.hopeless.cause
    assert stats.errors["unknown_terminal"] == 1 and stats.protocol_errors == 3


async def test_disconnects_and_connect_failures_count_while_counting() -> None:
    """A logged-on terminal's drop counts (with its time), and connect failures count, only while
    the run counts."""
    c, stats = client()
    c.connection_lost(None)
    assert stats.disconnects == 1 and len(stats.dropped_at) == 1
    connect(c)
    stats.settled([c])
    c.connection_lost(None)
    stats.on_connect_failed(c, ConnectionRefusedError(111, "refused"), 0.1)
    assert stats.disconnects == 1 and len(stats.dropped_at) == 1 and stats.connect_failures == 0


# -- hsb.term.stats ----------------------------------------------------------------------------


def test_a_percentile_is_within_half_a_bucket_and_never_outside_the_samples() -> None:
    """A percentile is its bucket's middle (within half a bucket, 0.5 %, of the sample its rank
    falls on, not the bucket's edge), never below the smallest sample nor above the largest."""
    x = _FLOOR_US * math.exp((700 + 0.95) * _STEP) / 1e6  # near its bucket's upper edge
    h = LatencyHistogram()
    for v in (x / 2, x, 2 * x):
        h.add(v)
    assert abs(h.percentile(50) - x) / x < 0.005  # type: ignore[operator]
    lo = _FLOOR_US * math.exp((700 + 0.9) * _STEP) / 1e6  # its bucket's middle is below it
    hi = _FLOOR_US * math.exp((800 + 0.1) * _STEP) / 1e6  # its bucket's middle is above it
    h = LatencyHistogram()
    h.add(lo)
    h.add(hi)
    assert h.percentile(50) == lo and h.percentile(100) == hi


def test_a_percentiles_rank_rounds_up() -> None:
    """The p-th percentile of n samples is the ceil(n p / 100)-th smallest."""
    h = LatencyHistogram()
    for v in (0.001, 0.010, 0.100):
        h.add(v)
    assert h.percentile(50) == pytest.approx(0.010, rel=0.01)  # the 2nd of 3, not the 1st


def test_the_summary_is_p50_p99_max_and_mean() -> None:
    """summary_ms: the 50th and 99th percentiles, the maximum and the mean, in ms (None without
    samples)."""
    h = LatencyHistogram()
    for k in range(1, 101):
        h.add(k / 1000.0)
    s = h.summary_ms()
    assert s["p50"] == pytest.approx(50.0, rel=0.01) and s["p99"] == pytest.approx(99.0, rel=0.01)
    assert s["max"] == 100.0 and s["mean"] == pytest.approx(50.5)
    assert LatencyHistogram().summary_ms() == {"p50": None, "p99": None, "max": None, "mean": None}


def test_histograms_merge() -> None:
    """Merging histograms adds their counts and totals and keeps the smaller minimum and the larger
    maximum."""
    a, b = LatencyHistogram(), LatencyHistogram()
    a.add(0.002)
    b.add(0.001)
    b.add(0.010)
    a.merge(b)
    assert (a.count, a.min, a.max) == (3, 0.001, 0.010) and a.total == pytest.approx(0.013)
    assert a.summary_ms()["max"] == 10.0


def test_a_gap_runs_from_the_first_outstanding_message_to_the_next_reply() -> None:
    """A second message sent does not restart the stretch; an idle time with nothing outstanding
    is no gap; a reply with nothing outstanding leaves nothing owed; the run's end closes an
    open stretch once."""
    g = GapTracker()
    g.replied(0.5)  # nothing outstanding
    assert g.outstanding == 0
    g.sent(1.0)
    g.sent(2.0)
    g.replied(4.0)  # 3 s from the first
    g.replied(4.5)
    assert g.outstanding == 0 and (g.longest.seconds, g.longest.start, g.longest.end) == (3.0, 1.0, 4.0)
    g.sent(20.0)  # 15.5 s idle: no gap
    g.replied(21.0)
    assert g.longest.seconds == 3.0
    g.sent(30.0)
    g.finish(35.0)  # never answered: up to the end
    g.replied(36.0)  # (an answer after the end: from the end on)
    assert g.longest.seconds == 5.0 and g.longest.end == 35.0


def test_the_gap_trackers_top_keeps_the_longest_stretches_longest_first() -> None:
    """`top` keeps TOP stretches, longest first; a longer one enters a full top and is the longest."""
    g = GapTracker()
    t = 0.0
    for k in range(GapTracker.TOP + 6):
        d = 1.0 + k / 100.0 if k != 3 else 50.0
        g.sent(t)
        g.replied(t + d)
        t += 100.0
    top = [x.seconds for x in g.top]
    assert len(top) == GapTracker.TOP and top == sorted(top, reverse=True) and top[0] == 50.0
    g.sent(t)
    g.replied(t + 60.0)  # the longest, though the top was full
    assert g.longest.seconds == 60.0 and g.top[0].seconds == 60.0 and len(g.top) == GapTracker.TOP


# -- hsb.term.timeline -------------------------------------------------------------------------


def test_steady_p99_counts_the_messages_at_the_windows_edges_and_rounds_its_rank_up() -> None:
    """The steady p99 before an operation takes messages sent at the window's start and answered
    at the operation itself, and its rank rounds up."""
    tl = Timeline()
    tl.add(5.0, 5.001, 0)  # sent just at the window's start (t_op - 5 s)
    assert tl.steady_p99(10.0) == pytest.approx(0.001)
    tl = Timeline()
    tl.add(9.0, 10.0, 0)  # answered just at the operation
    assert tl.steady_p99(10.0) == pytest.approx(1.0)
    tl = Timeline()
    for k in range(1, 51):
        tl.add(6.0, 6.0 + k / 1000.0, 0)
    assert tl.steady_p99(10.0) == pytest.approx(0.050)  # ceil(49.5): the 50th of 50


def test_window_edges_a_message_sent_at_the_operation_is_in_flight_at_it() -> None:
    """An operation's window: a message sent at the operation is in flight at it (bucket 0), one sent
    at the window's end is in it; every terminal served again is the last in-flight reply, None
    with nothing in flight; times in ms to the microsecond."""
    tl = Timeline()
    tl.add(10.0, 10.3, 0)  # sent at the operation: in flight at it
    tl.add(11.0, 11.1, 1)  # sent at the window's end: in it
    tl.add(9.0, 12.0, 2)  # in flight, answered last
    tl.add(9.5, 11.5, 2)
    w = tl.window(10.0, after_s=1.0)
    assert w["messages"] == 4 and w["in_flight"] == 3 and w["terminals_in_flight"] == 2
    assert w["worst_by_100ms"][0] == 3000.0 and w["worst_by_100ms"][1] == 0.0
    assert w["all_served_ms"] == 2000.0
    tl = Timeline()
    tl.add(10.0, 10.0, 0)  # sent and answered at the operation itself
    tl.add(10.5, 10.5123456, 0)
    w = tl.window(10.0, after_s=1.0)
    assert w["messages"] == 2 and w["in_flight"] == 0 and w["all_served_ms"] is None
    assert w["worst_ms"] == 12.346


def test_window_p99_rounds_its_rank_up() -> None:
    """The window's p99 of 50 waits is the 50th (the rank rounds up)."""
    tl = Timeline()
    for k in range(1, 51):
        tl.add(10.1, 10.1 + k / 1000.0, 0)
    assert tl.window(10.0)["p99_ms"] == 50.0


def test_a_terminal_back_at_the_operation_itself_is_back() -> None:
    """A logon or switch at the operation's very moment is the terminal back after it."""
    b = BackTimes(1)
    b.add(0, 10.0)
    assert b.after(10.0) == {"all_back_ms": 0.0, "not_back": 0}


async def test_an_answer_the_logoff_brings_opens_no_stretch_of_the_gap() -> None:
    """After the settle's end (the run's gap finished, `settled`) the answer to a message still
    outstanding comes with the logoff: late, judged so, and no stretch of the service's. It
    closed one from the settle's end to it, which could be reported as the run's longest gap."""
    c, stats = client()
    a = c.submit()
    feed(c, {"t": "ack", "id": a})
    stats.gap.finish(time.monotonic())
    stats.settled([c])
    top, longest = list(stats.gap.top), stats.gap.longest.seconds
    feed(c, {"t": "reply", "id": a, "data": c.payload(a)})
    assert stats.replied == 1  # (counted: the report judges it late, not lost)
    assert stats.gap.top == top and stats.gap.longest.seconds == longest, stats.gap.top
