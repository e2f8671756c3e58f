"""hsbterm's connector (hsb/term/connector.py), in-process over tests/test_term_connector_edges.py's
fake connects (or a fake create_connection of its own, for a real TerminalClient), each test
naming a behaviour that a mutation audit of the module found no test for: a probe that hangs
does not keep the next one from bringing the group up; a backoff that fell due, or that the
probe or the group's coming up took, leaves no timer behind to fire; the probe goes on past
MAX_PROBES failed probes, and none runs while the group is up; a connect cut by its timeout
after connecting is this side's close (no drop while logging on), its transport already closing
or closed by uvloop without a word (then the terminal is lost now and tried again); a connection
made just before close() is not kept; a probe in flight at close() connects nothing after.

The audit (42 mutants of connector.py, listed in this file's commit message): 19 killed by the
tests before, 11 more by these, 12 equivalent or not behaviour: schedule() after close() (the
timer fires into _enqueue, which checks), a zero delay as a 0 s timer, _enqueue's check of a
stopping terminal (the worker checks it), _go_down's check of a closed connector and close()'s
flag, timers and parked list (close() cancels every task that could act on them before any runs
again), the probe's head-of-queue and per-terminal checks of a terminal not down (no path puts
a terminal that is not down in the parked queue or the timers: each is in one of the queue, the
parked list, the timers or a connect at a time), which parked terminal probes first (not
specified), TLS 1.2 as the minimum (this Python's default already), a cert without a key
(hsbterm's CLI refuses one without the other)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hsb.term.connector import PROBE_S
from tests.support.connecting import connect_timing_out, create_connection_as, one_terminal
from tests.test_term_connector import FakeTerminal, until
from tests.test_term_connector_edges import CONNECTED, connecting

pytestmark = pytest.mark.timeout(30)


async def test_a_hanging_probe_does_not_keep_the_next_from_bringing_the_group_up() -> None:
    """The CP is away (the first connect refused, the rest parked); the first probe hangs (SYNs
    into a moved address), the second gets through: the group comes up and every parked
    terminal connects, the hung probe still in flight."""
    terms = [FakeTerminal(30.0) for _ in range(6)]
    hung: list[Any] = []

    def policy(t: Any, n: int) -> str:
        if t is terms[0] and n == 1:
            return "refuse"
        if not hung or t is hung[0]:
            hung.append(t)
            return "hang"
        return "ok"

    async with connecting(policy, terms, concurrency=1) as (conn, fake):
        conn.connect_timeout = 60.0  # (the hung probe is not cut short within the test)

        def others_connected() -> bool:
            return bool(hung) and all(t.state == CONNECTED for t in terms if t is not hung[0])

        await until(others_connected, 10, "the others connected past the hung probe")
        assert not conn.down and conn.probes >= 2 and fake.in_flight == 1
        assert hung[0].state != CONNECTED


async def test_a_backoff_that_fell_due_leaves_no_timer_behind() -> None:
    """Four connected terminals are dropped by the CP, which stays up, and each asks to be
    connected again after a 20 ms backoff of its own (as TerminalClient.connection_lost does):
    once all are connected again no backoff timer is left with the connector (one kept after it
    fell due would be taken by the probe, or by the group's coming up, for a terminal no longer
    waiting, and they would pile up over a long run's reconnects; the group, never down, has no
    coming up to clear them)."""
    terms = [FakeTerminal(30.0) for _ in range(4)]
    async with connecting(lambda t, n: "ok", terms, concurrency=4) as (conn, fake):
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
        for t in terms:
            t.connection_lost(None)
            conn.schedule(t, 0.02)  # type: ignore[arg-type]
        assert len(conn._timers) == 4
        await until(lambda: all(fake.calls[id(t)] == 2 and t.state == CONNECTED for t in terms), 10, "every terminal connected again")
        assert conn._timers == {} and not conn.down


async def test_a_connect_cut_by_its_timeout_whose_transport_is_already_closing_is_no_drop() -> None:
    """The connect's deadline falls due as it connects, and the cancelled connect has begun to
    close the connection (its transport closing: connection_lost comes later, from the
    transport): when it comes, that close is this side's, no drop while logging on (a strict
    run would fail on it, and the next welcome count a drop with the CP there)."""

    conn, c, tr = one_terminal()
    assert await connect_timing_out(conn, c, tr, close=True) is None  # (connection_lost to come)
    c.connection_lost(None)  # (the transport's, once closed)
    assert c.logon_drops == 0 and not c.dropped and c.cp_reconnects == 0
    await conn.close()


async def test_a_connection_made_just_before_the_connector_closes_is_not_kept() -> None:
    """The connector closes (hsbterm stopping) while a connect is at its end: the connection was
    made, the connect is cancelled (uvloop then closes that connection and says nothing): the
    terminal is told it is lost, and keeps no transport of it."""
    from hsb.term.client import DOWN, HELLO

    conn, c, tr = one_terminal()
    loop = asyncio.get_running_loop()

    async def connect_then_hang(*a: Any, **kw: Any) -> Any:
        c.connection_made(tr)  # type: ignore[arg-type]
        await loop.create_future()  # (cancelled by close())

    with create_connection_as(connect_then_hang):
        conn.start()
        conn.schedule(c)
        await until(lambda: c.state == HELLO, 10, "connected, the connect not returned")
        await conn.close()
    assert c.state == DOWN and c.transport is None and c.logon_drops == 0


async def test_a_connect_cut_by_its_timeout_that_uvloop_closed_silently_is_lost_and_tried_again() -> None:
    """The connect's deadline falls due as it connects, and the connection is closed without a
    connection_lost (uvloop's way; its transport says it is not closing): the terminal takes it
    as lost now, this side's close (no drop while logging on), and is scheduled to connect
    again, not left connected to nothing."""
    from hsb.term.client import DOWN

    conn, c, tr = one_terminal()
    assert await connect_timing_out(conn, c, tr) is None
    assert c.state == DOWN and c.transport is None and c.logon_drops == 0
    assert list(conn._timers.values()) == [c]  # (its backoff, then connected again)
    await conn.close()


async def test_the_backoff_of_a_terminal_the_probe_takes_is_cancelled() -> None:
    """Every terminal's connect was refused and each waits out a 30 s backoff: the probe takes
    one of them now, gets through, and the group comes up. No backoff timer is left to fire: the
    probed terminal's is cancelled when the probe takes it (else, 30 s on, it would connect a
    terminal already connected, or one down again with a backoff of its own: twice), the
    others' when the group comes up (and none is kept with the connector)."""
    loop = asyncio.get_running_loop()
    handles: list[asyncio.TimerHandle] = []
    real_call_later = loop.call_later

    def call_later(delay: float, cb: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        h = real_call_later(delay, cb, *args, **kw)
        if delay >= 30.0:
            handles.append(h)
        return h

    terms = [FakeTerminal(30.0) for _ in range(3)]
    loop.call_later = call_later  # type: ignore[method-assign,assignment]
    try:
        async with connecting(lambda t, n: "refuse" if n == 1 else "ok", terms, concurrency=3) as (conn, fake):
            await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
            assert conn.probes == 1 and len(handles) == 3
            assert all(h.cancelled() for h in handles) and conn._timers == {}
    finally:
        loop.call_later = real_call_later  # type: ignore[method-assign]


async def test_the_probe_goes_on_past_max_probes_failed_probes() -> None:
    """The CP stays away for more than MAX_PROBES probes, each refused (none left in flight):
    the group goes on probing, and when the CP is back the next probe brings every terminal in
    (a finished probe no longer counts against the bound of probes in flight)."""
    from hsb.term.connector import MAX_PROBES

    terms = [FakeTerminal(30.0) for _ in range(MAX_PROBES + 6)]
    tries = [0]

    def policy(t: Any, n: int) -> str:
        tries[0] += 1
        return "refuse" if tries[0] <= MAX_PROBES + 3 else "ok"  # the first connect and MAX_PROBES + 2 probes

    async with connecting(policy, terms, concurrency=1) as (conn, fake):
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
        assert conn.probes == MAX_PROBES + 3 and not conn.down


async def test_no_probe_runs_while_the_group_is_up() -> None:
    """The group went down and came up (a probe got through); later the CP drops two terminals
    and each waits out its 30 s backoff, the group up (the CP is there): no probe takes either
    of them early, the probe of the last time it was down having ended with it."""
    terms = [FakeTerminal(30.0) for _ in range(3)]
    async with connecting(lambda t, n: "refuse" if n == 1 else "ok", terms, concurrency=3) as (conn, fake):
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
        assert not conn.down and conn.probes == 1
        for t in terms[:2]:
            t.connection_lost(None)
            conn.schedule(t, 30.0)  # type: ignore[arg-type]
        t0 = asyncio.get_running_loop().time()
        await until(lambda: asyncio.get_running_loop().time() - t0 > 6 * PROBE_S, 10, "six probe intervals")
        assert conn.probes == 1 and [fake.calls[id(t)] for t in terms[:2]] == [2, 2]
        assert all(t.state != CONNECTED for t in terms[:2]) and len(conn._timers) == 2


async def test_a_probe_in_flight_when_the_connector_closes_connects_nothing_after() -> None:
    """hsbterm stops connecting (close()) while a probe's connect is in flight: that connect is
    cancelled with the rest, and when the CP would have answered it the terminal stays
    unconnected (a connect left running would log a terminal on after the stop)."""
    terms = [FakeTerminal(30.0) for _ in range(3)]

    def policy(t: Any, n: int) -> str:
        return "refuse" if t is terms[0] else "gate"

    async with connecting(policy, terms, concurrency=1) as (conn, fake):
        await until(lambda: conn.probes == 1 and fake.in_flight == 1, 10, "a probe in flight")
        await conn.close()
        fake.gate.set()
        for _ in range(10):
            await asyncio.sleep(0)  # (turns of the loop for a connect that was left running)
        assert fake.in_flight == 0 and not any(t.state == CONNECTED for t in terms)
