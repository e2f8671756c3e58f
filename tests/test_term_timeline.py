"""hsb.term.timeline: the pause around an operation, and where in it the worst wait was."""

from __future__ import annotations

import time

from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from hsb.term.timeline import BackTimes, Timeline
from hsb.wire.framing import encode
from tests.support.transports import RecordingTransport


def test_window_says_when_the_worst_paused_message_was_sent() -> None:
    tl = Timeline()
    op = 100.0
    tl.add(99.0, 99.01, 0)  # before the operation: not in the window
    tl.add(99.99, 100.05, 1)  # in flight at it: waited 60 ms
    tl.add(100.02, 100.03, 2)  # sent 20 ms after: 10 ms
    tl.add(100.25, 100.55, 3)  # sent 250 ms after: 300 ms, the worst
    tl.add(100.95, 101.0, 4)  # sent 950 ms after: 50 ms
    w = tl.window(op, after_s=1.0)
    assert w["messages"] == 4 and w["in_flight"] == 1
    assert w["worst_ms"] == 300.0
    assert w["worst_sent_ms"] == 250.0
    by = w["worst_by_100ms"]
    assert len(by) == 11
    assert by[0] == 60.0  # in flight at the operation
    assert by[1] == 10.0 and by[3] == 300.0 and by[10] == 50.0
    assert by[2] == 0.0 and by[5] == 0.0  # nothing sent then


def test_window_worst_of_a_message_in_flight_is_sent_before_the_operation() -> None:
    tl = Timeline()
    tl.add(9.5, 10.4, 0)
    tl.add(10.1, 10.15, 1)
    w = tl.window(10.0, after_s=1.0)
    assert w["worst_ms"] == 900.0 and w["worst_sent_ms"] == -500.0 and w["worst_by_100ms"][0] == 900.0


def test_every_terminal_back_is_the_last_terminals_first_logon_or_switch_after_the_operation() -> None:
    b = BackTimes(3)
    for t in range(3):
        b.add(t, 1.0)  # the first logons, before the operation
    b.add(0, 10.2)  # back 200 ms after it
    b.add(0, 10.9)  # a later logon of the same terminal does not count
    b.add(1, 10.5)  # switched 500 ms after it: the last one back
    b.add(2, 10.4)
    assert b.after(10.0) == {"all_back_ms": 500.0, "not_back": 0}
    assert b.after(10.45) == {"all_back_ms": None, "not_back": 1}  # terminal 2 not back after 10.45
    assert BackTimes(4).after(0.0) == {"all_back_ms": None, "not_back": 4}  # none ever logged on


async def test_a_message_answered_only_at_the_logoff_counts_once_unanswered() -> None:
    """At the settle's end a message still without a reply enters the timeline unanswered; its
    reply, if the logoff brings it, added a second entry, so each such message counted twice in
    an operation's `messages` (once answered). It stays one, unanswered (late, as the verdict
    has it)."""
    stats = LoadStats(1)
    c = TerminalClient("T1", stats, base=1000, keepalive=0)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.data_received(encode({"t": "welcome", "terminal": "T1", "last_acked": 0}))
    op = time.monotonic()
    a, b = c.submit(), c.submit()
    c.data_received(encode({"t": "ack", "id": a}) + encode({"t": "reply", "id": a, "data": c.payload(a)}) + encode({"t": "ack", "id": b}))
    stats.settled([c])  # b still without its reply
    c.data_received(encode({"t": "reply", "id": b, "data": c.payload(b)}))  # brought by the logoff
    assert not c.outstanding and len(stats.timeline) == 2
    w = stats.timeline.window(op - 0.5, after_s=5.0)
    assert w["messages"] == 2 and w["unanswered"] == 1 and w["worst_ms"] is None, w
