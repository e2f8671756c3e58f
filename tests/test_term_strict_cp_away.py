"""A terminal across the CP's absences, fed frame by frame to a real TerminalClient
(tests/support/termfeed.py): sends owed while logged off go out when it is back (their wait in
the latency, stopping before the settle time ends), answers a logoff brings are not latencies,
each change of CP process counts once (a welcome from another process, a drop while the same
one was there, a connect refused before the welcome), a message sent again after a reconnect is
marked resent (unless told not to), a write lost with its connection is a first send after the
welcome, and a CP that does not read stops the terminal's writes until it reads again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hsb.term.client import TerminalClient
from hsb.term.load import _report
from hsb.term.loadstats import LoadStats
from tests.support.termfeed import BASE, client, connect, connect_to, feed
from tests.support.transports import RecordingTransport

pytestmark = pytest.mark.timeout(30)


async def test_a_send_owed_while_logged_off_counts_its_wait_in_the_latency() -> None:
    """A message whose turn came while the terminal was not logged on (a conventional failover
    disconnected it) goes out after the next welcome; its reply's latency counts from when it was
    due, not from when it could be sent: that wait is what the terminal's user saw."""
    import time

    c, stats = client()
    stats.sending = True
    c.connection_lost(None)
    due = time.monotonic() - 0.5
    stats.defer(c, due)
    connect(c)  # logged on again: what it owes goes out on the next turn of the loop
    deadline = time.monotonic() + 5
    while not c.outstanding:
        assert time.monotonic() < deadline, "the owed send never went out"
        await asyncio.sleep(0)
    (mid,) = c.outstanding
    feed(c, {"t": "ack", "id": mid}, {"t": "reply", "id": mid, "data": c.payload(mid)})
    assert stats.latency.max >= 0.5, stats.latency.max
    assert stats.ack_latency.max < 0.5  # the CP's part is measured from the send


async def test_a_send_owed_from_the_sending_phase_goes_out_when_the_terminal_is_back_later() -> None:
    """A terminal a failover kept away until the sending phase was over: what it owed goes out
    when it is back (in the settle time), not dropped, so the longest waits are in the figures."""
    import time

    c, stats = client()
    stats.sending = True
    c.connection_lost(None)
    stats.defer(c, time.monotonic() - 1.0)
    stats.sending = False  # the sending phase ends while it is away
    connect(c)
    deadline = time.monotonic() + 5
    while not c.outstanding:
        assert time.monotonic() < deadline, "what it owed was dropped"
        await asyncio.sleep(0)
    assert not stats.deferred
    (mid,) = c.outstanding
    feed(c, {"t": "ack", "id": mid}, {"t": "reply", "id": mid, "data": c.payload(mid)})
    assert stats.latency.max >= 1.0


def test_answers_the_logoff_brings_are_not_in_the_latencies() -> None:
    """A message the CP held until the terminal logged off (its active gone, say), acknowledged
    and answered only then: it is late at the logoff, and its wait was the logoff's, not the
    service's. It went into both latency histograms, five seconds at their top for a run whose
    answers all took milliseconds; now neither, and the answered count is as before."""
    c, stats = client()
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    c.outstanding[b] -= 5.0  # sent five seconds ago, held since
    settled = {c: bytes(c.marks)}
    stats.settled([c])
    c.bye()
    feed(c, {"t": "ack", "id": b}, {"t": "reply", "id": b, "data": c.payload(b)})  # the logoff's answers
    assert stats.latency.count == 1 and stats.ack_latency.count == 1
    assert stats.latency.max < 5.0 and stats.ack_latency.max < 5.0
    assert stats.replied == 2  # (the progress lines' count: every first reply)
    r = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [], settled)
    assert r.replied == 1 and r.late_at_logoff == 1 and r.latency_ms["max"] is not None and r.latency_ms["max"] < 5000.0, r


async def test_owed_sends_stop_before_the_end_of_the_settle_time() -> None:
    """Past `owed_until` (the last part of the settle time, left for answers) what a terminal
    owes is not sent: sent then, it could not be answered before the end and would fail the run."""
    import time

    c, stats = client()
    stats.sending = True
    c.connection_lost(None)
    stats.defer(c, time.monotonic() - 1.0)
    stats.sending = False
    stats.owed_until = time.monotonic() - 0.1  # the settle time's last part: nothing more goes out
    connect(c)
    for _ in range(5):
        await asyncio.sleep(0)  # (turns of the loop for the hook, which must send nothing)
    assert not c.outstanding and c in stats.deferred
    assert not stats.owing()


def test_a_welcome_from_another_cp_process_counts_as_the_cp_away() -> None:
    """A CP restarted under a master that holds its listener never refuses a connect: the
    welcome's `cp` (its process) tells the terminal that the CP it logs on to is another one."""
    c, _ = client()
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0, "cp": "a"})  # (the first said none)
    c.connection_lost(None)
    connect_to(c, "a")  # the same CP: a failover's reconnect, not a CP restart
    assert c.cp_reconnects == 0
    c.connection_lost(None)
    connect_to(c, "b")
    assert c.cp_reconnects == 1
    c.connection_lost(None)
    c.cp_away()  # a connect refused first, then another CP: counted once
    connect_to(c, "c")
    assert c.cp_reconnects == 2


def test_each_change_of_cp_process_a_terminal_lived_through_counts_once() -> None:
    """Welcomed by CP process a, which stalls: a connect of the terminal times out in its full
    accept queue, which counts the CP away. The next connect gets into that queue, the hello goes,
    and a dies: the queue is reset (a drop while logging on, naming no CP process), and a connect
    is refused. b welcomes: one change of CP process, a to b. The reset connection counted a
    second (taken for a process that died before welcoming), more than the one crash explains;
    only a welcome names a process (one that dies before welcoming is the CP log's to show). A
    connect that failed while b was there all along (b welcomes it again) was no change; a welcome
    from another process after the terminal was only parked is one."""
    c = TerminalClient("T1", LoadStats(1), base=BASE, keepalive=0)
    connect_to(c, "a")
    c.connection_lost(OSError("timed out"))  # a stalls: the dead-peer detection ends the connection
    c.cp_away()  # a connect timed out in a's full accept queue
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]  # queued: hello sent
    c.connection_lost(None)  # a dies: its accept queue reset, no welcome
    c.cp_away()  # refused: nothing listens
    connect_to(c, "b")
    assert c.cp_reconnects == 1 and c.logon_drops == 1
    c.connection_lost(None)
    c.cp_away()  # refused, or timed out in an overloaded backlog: b welcomes it again
    connect_to(c, "b")
    assert c.cp_reconnects == 1
    c.connection_lost(None)
    c.cp_away(found=False)  # parked: another terminal's connect failed
    connect_to(c, "c")
    assert c.cp_reconnects == 2


async def test_a_message_sent_again_after_a_reconnect_is_marked_resent_and_one_never_sent_is_not() -> None:
    """hsbterm marks what it sends again (never acknowledged) `resent`: the CP, which may have lost
    it with an earlier process that handed it to the active, then delivers it marked redelivered.
    A message submitted while away goes out for the first time: unmarked."""
    c, _ = client(resume=True)
    a = c.submit()
    tr = c.transport
    assert isinstance(tr, RecordingTransport)
    assert [f.get("resent") for f in tr.frames() if f["t"] == "msg"] == [None]
    c.connection_lost(None)
    b = c.submit()  # (away: kept for the next welcome)
    tr2 = connect(c, last_acked=0)
    sent = [(f["id"], f.get("resent")) for f in tr2.frames() if f["t"] == "msg"]
    assert sent == [(a, True), (b, None)]
    c.connection_lost(None)
    tr3 = connect(c, last_acked=a)  # the CP has a now: only b again, sent before on the last connection
    assert [(f["id"], f.get("resent")) for f in tr3.frames() if f["t"] == "msg"] == [(b, True)]


async def test_a_terminal_told_not_to_mark_sends_again_unmarked() -> None:
    """(`mark_resent=False`: a test's stand-in for a terminal that does not mark its resends.)"""
    c, _ = client(resume=True, mark_resent=False)
    a = c.submit()
    c.connection_lost(None)
    tr = connect(c, last_acked=0)
    assert [(f["id"], f.get("resent")) for f in tr.frames() if f["t"] == "msg"] == [(a, None)]


def test_a_drop_while_the_same_cp_process_was_there_counts_whatever_connects_failed() -> None:
    """CP-restart mode excuses only what the CP's absence explains. A terminal dropped while the
    same CP process served, parked because a connect of another terminal failed (or one of its
    own failed for a reason of ours), was excused; the same CP welcoming it again says the CP
    was there all along. A welcome from another CP process is a restart: excused, and the one
    change of CP process it lived through (a → b)."""
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    connect_to(c, "a")
    c.connection_lost(None)
    c.cp_away(found=False)  # parked: the group's probe says the CP is away
    connect_to(c, "a")
    assert c.cp_present_drops == 1
    c.connection_lost(None)
    c.cp_away()
    connect_to(c, "b")  # another CP process: it restarted
    assert c.cp_present_drops == 1 and c.cp_reconnects == 1


def test_a_connection_refused_before_its_welcome_keeps_the_cps_absence_known() -> None:
    """The CP away (connects fail), then back, and the first connection is refused before its
    welcome (already_connected: the new CP has not seen the old connection go): the next welcome
    is still after the CP's absence. It counted as a drop with the CP present, and the CP's
    absence twice."""
    c, _ = client()
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})  # (a CP that does not say which process)
    c.connection_lost(None)
    c.cp_away()  # connects fail: the CP is away
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "error", "code": "already_connected", "msg": "T1 is connected"})
    c.connection_lost(None)  # refused before its welcome
    c.cp_away()
    _feed_welcome = {"t": "welcome", "terminal": c.name, "last_acked": 0}
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, _feed_welcome)
    assert c.cp_present_drops == 0 and c.cp_reconnects == 1


class _ClosedLoop(LoadStats):
    """Sends the next message on each first reply, as a closed-loop load does."""

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        super().on_reply(c, msg_id, data, latency, kind)
        if kind == "first":
            c.submit()


async def test_a_message_whose_write_went_with_its_connection_is_a_first_send_after_the_welcome() -> None:
    """The next message, submitted while one read is handled, waits for the end of the read to be
    written; if the read closed the connection (an error frame) it never left. After the next
    welcome it goes unmarked (a resent mark would say an earlier CP may have handed it to the
    active), and a last_acked that covers it is an ack of an id the CP cannot have."""
    stats = _ClosedLoop(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    connect(c)
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)}, {"t": "error", "code": "x", "msg": "going"})
    b = a + 1
    assert c.sent == 2 and c.sent_upto == a  # b was submitted, never written
    c.connection_lost(None)
    tr = connect(c, last_acked=a)
    assert [(f["id"], f.get("resent")) for f in tr.frames() if f["t"] == "msg"] == [(b, None)]
    c.connection_lost(None)
    c.submit()  # (away: kept for the next welcome, never written yet)
    c2 = c.base + 2
    tr = connect(c, last_acked=c2)  # covers an id that never left this terminal
    assert c.unexpected_acks == 1
    # b (written on the last connection) is taken as acknowledged; c2 is still sent: nothing took it
    assert [f["id"] for f in tr.frames() if f["t"] == "msg"] == [c2]


class _FlowTransport(RecordingTransport):
    """A transport with asyncio's flow control: past `high` bytes not yet read by the CP it
    pauses its protocol's writing (from inside `write`, as asyncio's do); `read_all` (the CP reads
    everything) resumes it."""

    def __init__(self, protocol: TerminalClient, high: int) -> None:
        super().__init__("cp")
        self.protocol, self.high = protocol, high
        self.unread = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        if self.unread > self.high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def read_all(self) -> None:
        self.unread = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def msgs(self) -> list[tuple[int, bool]]:
        return [(f["id"], bool(f.get("resent"))) for f in self.frames() if f["t"] == "msg"]


def test_a_cp_that_does_not_read_stops_the_terminals_writes_until_it_reads_again() -> None:
    """A CP that stops reading a terminal (at its held bound, or stalled): the terminal's writes
    fill its transport's buffer, which asks it to pause. hsbterm went on writing every message
    (and, after a reconnect, its whole resend) into that buffer, without bound. It now writes
    nothing new while paused, the load owing its sends; when the CP reads again, what waited goes
    out in id order, each once, then the owed sends. The same for what it sends again after a
    reconnect: marked resent, the rest when the CP reads."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, pad="x" * 1000)  # 100 of them: more than a chunk of the resend
    tr = _FlowTransport(c, high=4096)
    c.connection_made(tr)  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    ids = [c.submit() for _ in range(100)]  # the CP reads none of it
    written = len(tr.msgs())
    assert tr.paused and tr.unread < 4096 + 1100 and written < 6, (tr.unread, written)
    assert not c.can_send
    stats.sending = True
    stats.defer(c, 0.0)  # the load's next turn while paused: owed, not written
    tr.read_all()  # the CP reads again: the rest goes, in chunks, pausing again past the mark
    while tr.paused:
        tr.read_all()
    assert tr.msgs() == [(i, False) for i in [*ids, ids[-1] + 1]]  # (the owed send last)
    assert c.can_send and not stats.deferred
    c.connection_lost(None)  # none of it acknowledged: all of it goes again after the welcome
    tr = _FlowTransport(c, high=4096)
    c.connection_made(tr)
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": ids[9]})  # the first ten acknowledged
    assert tr.paused and len(tr.msgs()) < 91, len(tr.msgs())
    c.submit()  # while paused: waits behind the resend
    while tr.paused:
        tr.read_all()
    assert tr.msgs() == [(i, True) for i in [*ids[10:], ids[-1] + 1]] + [(ids[-1] + 2, False)]
