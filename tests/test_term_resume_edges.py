"""Edges of the resuming terminal (hsb.term.resume, docs/protocol.md §1 `hello`, `confirm`,
`reply`) that a mutation audit found unpinned: a real TerminalClient fed CP frames on recording
transports (tests/support/termfeed.py), each test checking what it writes or how it judges."""

from __future__ import annotations

import asyncio
from typing import Any

from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from tests.support.procs import until
from tests.support.termfeed import BASE, client, connect, feed, verdict
from tests.support.transports import RecordingTransport


def _confirms(tr: Any) -> list[int]:
    return [f["id"] for f in tr.frames() if f["t"] == "confirm"]


def _reconnect(c: TerminalClient, last_acked: int, cp: str | None = None) -> RecordingTransport:
    """The connection drops; a new one says hello and is welcomed (by CP process `cp`, if named)."""
    c.connection_lost(None)
    return connect(c, last_acked, cp)


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


class _Clock:
    """hsb.term.resume's clock, moved by hand: the 50 ms batching of confirms without waiting."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def _replied(c: TerminalClient, n: int) -> list[int]:
    """n messages submitted, acknowledged and answered, one frame each (n reads)."""
    ids = [c.submit() for _ in range(n)]
    feed(c, *({"t": "ack", "id": i} for i in ids))
    for i in ids:
        feed(c, {"t": "reply", "id": i, "data": c.payload(i)})
    return ids


async def test_confirms_go_every_8_replies_or_after_50_ms(monkeypatch: Any) -> None:
    """docs/protocol.md §1 `confirm`: hsbterm confirms every 8 replies or 50 ms. The first reply
    is confirmed at once (none for 50 ms); the next 7 wait, the 8th after the last confirm goes
    at once; then one more waits until 50 ms have passed since the last confirm, and goes with
    the next reply after that. Kills: `>= 8 * stride` -> `> 8` or `>= 9`; the 50 ms -> 0.5 s;
    `confirm_at` not moved on when a confirm goes."""
    clock = _Clock()
    monkeypatch.setattr("hsb.term.resume.time", clock)
    c, _ = client(stride=3)
    tr: Any = c.transport
    ids = _replied(c, 1)
    assert _confirms(tr) == ids
    ids += _replied(c, 7)
    assert _confirms(tr) == ids[:1]  # 7 strides since: batched
    ids += _replied(c, 1)
    assert _confirms(tr) == [ids[0], ids[8]]  # 8 strides: at once
    ids += _replied(c, 1)
    assert _confirms(tr) == [ids[0], ids[8]]
    clock.now += 0.06
    ids += _replied(c, 1)
    assert _confirms(tr) == [ids[0], ids[8], ids[10]]


async def test_a_batched_confirm_is_due_50_ms_later() -> None:
    """A reply that does not complete a batch arms a timer: its confirm goes 50 ms later (with
    `seen`), not later. Kills: the timer's 0.05 -> 0.5; no timer armed."""
    c, _ = client()
    tr: Any = c.transport
    a = _replied(c, 1)
    b = _replied(c, 1)
    assert _confirms(tr) == a
    timer = c.confirm_timer
    assert timer is not None
    loop = asyncio.get_running_loop()
    assert timer.when() - loop.time() <= 0.05
    await until(lambda: len(_confirms(tr)) == 2, timeout=5, what="the batched confirm")
    assert [f for f in tr.frames() if f["t"] == "confirm"][1] == {"t": "confirm", "id": b[0], "seen": 2}
    assert c.confirm_timer is None


async def test_bye_confirms_what_it_holds_first(monkeypatch: Any) -> None:
    """Before `bye` the terminal confirms every reply it holds, batch or not: the CP may then
    forget them. Kills: `_confirm` ignoring `force`; bye's confirm not forced."""
    clock = _Clock()
    monkeypatch.setattr("hsb.term.resume.time", clock)
    c, _ = client()
    tr: Any = c.transport
    ids = _replied(c, 2)
    assert _confirms(tr) == ids[:1]
    c.bye()
    assert [(f["t"], f.get("id")) for f in tr.frames()][-2:] == [("confirm", ids[1]), ("bye", None)]


def _msgs(tr: Any) -> list[tuple[int, bool]]:
    return [(f["id"], bool(f.get("resent"))) for f in tr.frames() if f["t"] == "msg"]


async def test_only_what_went_out_on_an_earlier_connection_is_resent_marked() -> None:
    """After a welcome the terminal sends, in order, every message not acknowledged: marked
    `resent` those an earlier connection carried (up to and including the last one written),
    unmarked those never written (submitted while away). Kills: the mark on every message owed,
    or on none (mark_resent ignored), or short of the last one written."""
    c, stats = client()
    a, b = c.submit(), c.submit()
    c.connection_lost(None)
    d = c.submit()  # while away: never written
    tr = _reconnect(c, 0)
    assert _msgs(tr) == [(a, True), (b, True), (d, False)]
    assert stats.resent == 3
    c2, _ = client(mark_resent=False)
    e = c2.submit()
    tr = _reconnect(c2, 0)
    assert _msgs(tr) == [(e, False)]


async def test_a_message_is_written_once_per_connection_across_a_pause_of_its_writes() -> None:
    """Writes paused (the CP does not read) hold back new messages; when they resume, what was
    held goes out, and nothing already written on this connection goes again (the CP would take
    a second copy before its ack as a reuse of the id). The ack of what went out then is its own,
    not unexpected. Kills: submit or the owed writes not moving `conn_upto`/`sent_upto` on;
    `> conn_upto` -> `>=`."""
    c, stats = client()
    tr: Any = c.transport
    a = c.submit()
    c.pause_writing()
    b, d = c.submit(), c.submit()
    assert _msgs(tr) == [(a, False)]
    c.resume_writing()
    assert _msgs(tr) == [(a, False), (b, False), (d, False)]
    c.pause_writing()
    c.resume_writing()
    assert _msgs(tr) == [(a, False), (b, False), (d, False)]
    feed(c, *({"t": "ack", "id": i} for i in (a, b, d)))
    feed(c, *({"t": "reply", "id": i, "data": c.payload(i)} for i in (a, b, d)))
    r = verdict(c, stats)
    assert r.ok and r.unexpected_acks == 0 and r.replied == 3, r.failures


class _ClosedLoop(LoadStats):
    """Sends the next message on each first reply, as a closed-loop load does."""

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        super().on_reply(c, msg_id, data, latency, kind)
        if kind == "first":
            c.submit()


async def test_what_one_read_makes_goes_in_one_write_and_its_ids_count_as_sent() -> None:
    """The frames a read of the CP's makes the terminal send (the next message of a closed loop,
    the confirm of the reply) go out in one write, in the order they were made; the message
    written so is sent (its ack is its own, not unexpected). Kills: the confirm written past the
    cork; the corked message's id not counted as written (`cork_upto`)."""
    stats = _ClosedLoop(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, check_data=True)
    tr = _reconnect(c, 0)
    a = c.submit()
    writes = tr.writes
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    assert tr.writes == writes + 1
    b = a + 1
    assert [(f["t"], f["id"]) for f in tr.frames()[-2:]] == [("msg", b), ("confirm", a)]
    feed(c, {"t": "ack", "id": b})
    r = verdict(c, stats)
    assert r.unexpected_acks == 0 and r.acked == 2, r.failures


class _Connector:
    """Records the delays a terminal asks to be reconnected after."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def schedule(self, c: TerminalClient, delay: float = 0.0) -> None:
        self.delays.append(delay)


async def test_reconnects_back_off_and_start_again_after_a_welcome() -> None:
    """A drop is retried after 25-75 ms (BACKOFF_MIN, jittered); each failed connect doubles the
    wait (to the 0.5 s cap); a welcome starts it again from the least; an `unknown_terminal`
    refusal waits the cap at once. Kills: a fixed retry delay; no reset at the welcome; no
    slow-down on unknown_terminal."""
    c, _ = client()
    conn = _Connector()
    c.connector = conn  # type: ignore[assignment]
    c.connection_lost(None)
    for _ in range(3):
        c.connect_failed(ConnectionRefusedError())
    assert conn.delays[0] < 0.075 and conn.delays[3] >= 0.2, conn.delays  # 0.05 * 2**3 * 0.5 at least
    connect(c)
    c.connection_lost(None)
    assert conn.delays[4] < 0.075, conn.delays  # the drop, after a welcome
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    feed(c, {"t": "error", "code": "unknown_terminal", "msg": "who?"})
    c.connection_lost(None)
    assert conn.delays[5] >= 0.25, conn.delays  # the cap, 0.5, jittered


async def test_a_welcome_has_it_resend_only_what_it_never_saw_acknowledged() -> None:
    """docs/protocol.md §1 `welcome`: the terminal resends every message above `last_acked` that
    it never saw acknowledged, not one it did (a welcome below that ack is the CP's fault,
    counted as an ack forgotten). Kills: `unacked_ids` taking acknowledged ids too."""
    c, stats = client()
    a, b = c.submit(), c.submit()
    feed(c, {"t": "ack", "id": a})
    tr = _reconnect(c, 0)
    assert _msgs(tr) == [(b, True)]
    assert stats.resent == 1
    assert verdict(c, stats).acks_forgotten == 1


async def test_what_a_welcome_owes_goes_out_when_writes_resume() -> None:
    """A connection whose writes are paused when the welcome comes sends what the welcome has it
    resend once they resume: all of it, though an earlier connection had written those ids.
    Kills: a new connection keeping the last one's `conn_upto`."""
    c, stats = client()
    a, b = c.submit(), c.submit()
    c.connection_lost(None)
    tr = RecordingTransport("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    c.pause_writing()
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    assert _msgs(tr) == []
    c.resume_writing()
    assert _msgs(tr) == [(a, True), (b, True)]


async def test_a_failed_connect_explains_only_the_drop_it_followed() -> None:
    """With a CP that does not name its process (no `cp`), a drop is the CP's absence only if a
    connect failed after it: a failed connect after one drop does not excuse the next drop,
    reconnected at once (counted as a disconnect with the CP present). Kills: a welcomed
    connection's drop not clearing `failed_since_drop`."""
    c, stats = client()
    c.connection_lost(None)
    c.connect_failed(ConnectionRefusedError())
    connect(c)
    assert c.cp_present_drops == 0
    _reconnect(c, 0)
    assert c.cp_present_drops == 1 and c.disconnects == 2


class _Told(LoadStats):
    """Records the disconnects and the `on_writable` calls the terminal tells it of."""

    def __init__(self) -> None:
        super().__init__(1)
        self.drops: list[bool] = []
        self.writable = 0

    def on_disconnect(self, c: TerminalClient, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
        super().on_disconnect(c, exc, retry_in, welcomed)
        self.drops.append(welcomed)

    def on_writable(self, c: TerminalClient) -> None:
        super().on_writable(c)
        self.writable += 1


async def test_the_listener_hears_of_a_drop_before_the_welcome_too() -> None:
    """A connection closed after the hello with neither a welcome nor an error is told to the
    listener (not welcomed: the interactive terminal says so, and when it reconnects), as a
    welcomed one's drop is. Kills: `was >= HELLO` -> `> HELLO`."""
    told = _Told()
    c = TerminalClient("T1", told, base=BASE)
    c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
    c.connection_lost(None)
    _reconnect(c, 0)
    c.connection_lost(None)
    assert told.drops == [False, True]
    assert c.logon_drops == 1 and c.disconnects == 1


class _PausingTransport(RecordingTransport):
    """Its buffer fills on the first write after `fill` is set: it pauses its protocol's writes."""

    def __init__(self) -> None:
        super().__init__("cp")
        self.protocol: TerminalClient | None = None
        self.fill = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.fill and self.protocol is not None:
            self.fill = False
            self.protocol.pause_writing()


async def test_writes_that_pause_again_as_they_resume_do_not_tell_the_listener_to_send() -> None:
    """When the transport's writes resume, what waited goes out; if that fills its buffer again
    the listener is not told it may send (only once the writes resume for good). Kills: the
    listener's `on_writable` called though the transport paused again."""
    told = _Told()
    c = TerminalClient("T1", told, base=BASE)
    tr = _PausingTransport()
    tr.protocol = c
    c.connection_made(tr)  # type: ignore[arg-type]
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    c.pause_writing()
    a = c.submit()
    tr.fill = True
    c.resume_writing()
    assert _msgs(tr) == [(a, False)] and c.paused and told.writable == 0
    c.resume_writing()
    assert _msgs(tr) == [(a, False)] and told.writable == 1


async def test_a_named_cp_process_after_an_unnamed_one_may_resend_a_recovered_reply() -> None:
    """An upgrade from an hsbcpd whose welcome names no process (before 0.5: no `cp`) to one
    that does, on the same journal: the new process sends again each reply it recovered, those
    the hello said the terminal holds too, marked resent. That is another CP process: each is
    ignored once, not a duplicate (seen in the upgrade walk-through from 0fc472b: 200 false
    duplicates). Kills: a welcome naming a process after an unnamed one taken for the same."""
    c, stats = client()  # welcomed by a CP that names no process
    a = c.submit()
    feed(c, {"t": "ack", "id": a}, {"t": "reply", "id": a, "data": c.payload(a)})
    tr = _reconnect(c, a, cp="new")
    assert tr.frames()[0]["last_reply"] == a
    feed(c, {"t": "reply", "id": a, "data": c.payload(a), "resent": True})
    r = verdict(c, stats)
    assert r.ok and r.resent_ignored == 1 and r.duplicates == 0, r.failures
