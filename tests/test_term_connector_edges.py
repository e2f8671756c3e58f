"""Edges of hsbterm's connector (hsb.term.connector) that tests/test_term_connector.py let
through: each test here failed on a mutant of the module (a bound off by one, a release or a
probe dropped, the probe's pace wrong). In-process: the loop's create_connection is a fake
whose every connect is refused, hangs, or connects, as each test says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hsb.term import connector
from hsb.term.connector import MAX_PROBES, PROBE_S, Connector
from tests.test_term_connector import FakeTerminal, until

pytestmark = pytest.mark.timeout(30)

CONNECTED = 3  # FakeTerminal's state once connected


class FakeConnects:
    """The loop's create_connection: `policy(terminal, n)` (n: that terminal's connect, from 1)
    says "refuse", "hang" (until cancelled), "ok", or "gate" (ok once `gate` is set); each
    connect yields to the loop a few times first, as a real one does."""

    def __init__(self, policy: Callable[[Any, int], str]) -> None:
        self.policy = policy
        self.calls: dict[int, int] = {}  # id(terminal) -> connects tried
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = asyncio.Event()

    async def __call__(self, factory: Any, *a: Any, **kw: Any) -> Any:
        t = factory()
        n = self.calls[id(t)] = self.calls.get(id(t), 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            what = self.policy(t, n)
            if what == "refuse":
                raise ConnectionRefusedError(111, "refused")
            if what == "hang":
                await asyncio.get_running_loop().create_future()
            if what == "gate":
                await self.gate.wait()
            t.connection_made(object())
            return object(), t
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def connecting(policy: Callable[[Any, int], str], terms: list[FakeTerminal], concurrency: int) -> AsyncIterator[tuple[Connector, FakeConnects]]:
    """A started connector with `terms` scheduled, connecting through FakeConnects(policy)."""
    loop = asyncio.get_running_loop()
    fake = FakeConnects(policy)
    conn = Connector("127.0.0.1", 1, concurrency=concurrency)
    real = loop.create_connection
    loop.create_connection = fake  # type: ignore[method-assign,assignment]
    try:
        conn.start()
        for t in terms:
            conn.attach(t)  # type: ignore[arg-type]
            conn.schedule(t)  # type: ignore[arg-type]
        yield conn, fake
    finally:
        await conn.close()
        loop.create_connection = real  # type: ignore[method-assign]


async def test_at_most_concurrency_connects_are_in_flight() -> None:
    """The pool's bound: 20 terminals connecting at once, 3 connects in flight at most (mutant:
    a worker more than `concurrency`)."""
    terms = [FakeTerminal(30.0) for _ in range(20)]
    async with connecting(lambda t, n: "ok", terms, concurrency=3) as (conn, fake):
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
    assert fake.max_in_flight == 3


async def test_probes_that_hang_do_not_hold_up_the_next_up_to_max_probes() -> None:
    """A probe may hang (SYNs into a moved address): the next one does not wait for it, up to
    MAX_PROBES in flight (mutant: one probe in flight at a time)."""
    terms = [FakeTerminal(30.0) for _ in range(MAX_PROBES + 10)]
    async with connecting(lambda t, n: "refuse" if t is terms[0] else "hang", terms, concurrency=1) as (conn, fake):
        await until(lambda: conn.down and conn.probes == MAX_PROBES, 10, f"{MAX_PROBES} probes")
        await until(lambda: fake.in_flight == MAX_PROBES, 10, f"{MAX_PROBES} probes in flight")
        t0 = asyncio.get_running_loop().time()
        # a window of several probe intervals for a probe beyond the bound (none may start)
        await until(lambda: asyncio.get_running_loop().time() - t0 > 5 * PROBE_S, 10, "five probe intervals")
        assert conn.probes == MAX_PROBES and fake.in_flight == MAX_PROBES


async def test_probes_are_one_every_probe_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the group is down, one connect a PROBE_S for the whole group, however many of its
    connects failed (mutants: a probe loop started at each failure; the interval 10 times too
    long)."""
    terms = [FakeTerminal(30.0) for _ in range(40)]
    loop = asyncio.get_running_loop()
    stamps: list[float] = []  # when each probe began, by the loop's clock (not when the test saw it)
    real = connector.Connector._probe_one

    def probe_one(self: Any, c: Any) -> Any:
        stamps.append(loop.time())
        return real(self, c)

    monkeypatch.setattr(connector.Connector, "_probe_one", probe_one)
    async with connecting(lambda t, n: "refuse", terms, concurrency=8) as (conn, fake):
        await until(lambda: conn.down, 10, "the group down")
        t0 = loop.time()
        await until(lambda: conn.probes >= 5, 10, "five probes")
        took = loop.time() - t0
    # one interval at least between two probes (with eight failed connects at once as well),
    # and not many more than five intervals for five (a loaded machine's loop may be late, ten
    # times is not)
    gaps = [b - a for a, b in zip(stamps, stamps[1:5], strict=False)]
    assert len(gaps) == 4 and min(gaps) >= PROBE_S * 0.9, gaps
    assert took < 40 * PROBE_S, took


async def test_a_connect_begun_before_the_group_went_down_that_gets_through_brings_it_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """One terminal's connect is slow and gets through after another's was refused (the group
    down, the rest parked): that is the CP answering, and every parked terminal connects at once,
    without waiting for a probe (mutant: only a probe's success brings the group up)."""
    monkeypatch.setattr(connector, "PROBE_S", 30.0)  # no probe within the test
    terms = [FakeTerminal(30.0) for _ in range(10)]

    def policy(t: Any, n: int) -> str:
        return "gate" if t is terms[0] else "refuse" if t is terms[1] and n == 1 else "ok"

    async with connecting(policy, terms, concurrency=2) as (conn, fake):
        await until(lambda: conn.down and len(conn._parked) == len(terms) - 2, 10, "the group down, the rest parked")
        fake.gate.set()  # the slow connect gets through
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected, the refused one too")
        assert not conn.down and conn.probes == 0


async def test_when_every_terminal_waits_out_a_backoff_one_of_them_is_the_probe() -> None:
    """Nobody parked (each connect failed itself and waits 30 s): the probe takes one of them
    now, and when it gets through the others connect too, long before their backoff (mutant: the
    probe tries only parked terminals)."""
    terms = [FakeTerminal(30.0) for _ in range(3)]
    async with connecting(lambda t, n: "refuse" if n == 1 else "ok", terms, concurrency=3) as (conn, fake):
        await until(lambda: all(t.failures == 1 for t in terms), 10, "every first connect refused")
        assert conn.down and not conn._parked
        await until(lambda: all(t.state == CONNECTED for t in terms), 10, "every terminal connected")
        assert not conn.down and conn.probes == 1


async def test_a_terminal_stopping_while_it_waits_out_its_backoff_is_not_probed() -> None:
    """The probe takes a terminal from those waiting out a backoff: one that is stopping is
    passed over, not connected (mutant: the probe's check of the terminal dropped)."""
    terms = [FakeTerminal(30.0) for _ in range(2)]
    async with connecting(lambda t, n: "refuse" if n == 1 else "ok", terms, concurrency=2) as (conn, fake):
        await until(lambda: all(t.failures == 1 for t in terms), 10, "every first connect refused")
        first: Any = next(iter(conn._timers.values()))  # (a FakeTerminal)
        first.stopping = True
        other = terms[1] if first is terms[0] else terms[0]
        await until(lambda: other.state == CONNECTED, 10, "the other terminal connected")
        assert fake.calls[id(first)] == 1 and first.state != CONNECTED


async def test_a_terminal_queued_twice_or_stopping_by_its_turn_is_not_connected() -> None:
    """A worker takes only a terminal still down and not stopping: one scheduled twice connects
    once, one stopped while it waited in the queue not at all (mutant: the worker's check
    dropped)."""
    twice, stopped, last = FakeTerminal(30.0), FakeTerminal(30.0), FakeTerminal(30.0)
    terms = [FakeTerminal(30.0), twice, twice, stopped, last]
    async with connecting(lambda t, n: "gate" if t is terms[0] else "ok", terms, concurrency=1) as (conn, fake):
        await until(lambda: fake.in_flight == 1, 10, "the first connect in flight")
        stopped.stopping = True
        fake.gate.set()
        await until(lambda: last.state == CONNECTED, 10, "the last terminal connected")
        assert fake.calls.get(id(twice)) == 1 and id(stopped) not in fake.calls and stopped.state != CONNECTED


async def test_parked_terminals_no_longer_down_cost_the_probe_no_interval() -> None:
    """Parked terminals that stopped meanwhile are passed over at once: the next probe is a
    terminal still down, one PROBE_S on, not one interval per stopped terminal later (mutant:
    only the terminal taken is checked, and a stopped one costs the interval)."""
    terms = [FakeTerminal(30.0) for _ in range(60)]
    loop = asyncio.get_running_loop()
    async with connecting(lambda t, n: "refuse" if t is terms[0] else "hang", terms, concurrency=1) as (conn, fake):
        await until(lambda: conn.down and len(conn._parked) == len(terms) - 1, 10, "the rest parked")
        parked = list(conn._parked)
        for t in parked[:-1]:
            t.stopping = True  # (hsbterm stopping them: the probe is the last one)
        t0 = loop.time()
        await until(lambda: id(parked[-1]) in fake.calls, 10, "the last parked terminal probed")
        took = loop.time() - t0
        assert conn.probes == 1 and fake.calls[id(parked[-1])] == 1
    assert took < 30 * PROBE_S, took  # one interval (with a loaded loop's lateness), not 58
