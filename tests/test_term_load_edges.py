"""hsbterm's load generator (hsb.term.load) in process, at the edges the end-to-end runs do not
reach (found by a mutation audit of the module)."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.term import load
from hsb.term.load import background_load, run_load
from tests.support.fakecp import FakeCP, wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("soft", "hard", "need", "want"),
    [
        (1024, 4096, 3000, (3000, 4096)),  # raised to what is needed
        (1024, 2048, 3000, (2048, 2048)),  # ... as far as the hard limit allows
        (1024, resource.RLIM_INFINITY, 3000, (3000, resource.RLIM_INFINITY)),
        (4096, 8192, 3000, None),  # enough already: never lowered
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY, 3000, None),
    ],
)
def test_the_open_files_limit_is_raised_towards_the_need_never_lowered(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, need: int, want: tuple[int, int] | None
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda what: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(limits))
    load._raise_nofile(need - 256)  # (terminals, and 256 to spare)
    assert calls == ([want] if want is not None else [])


@pytest.mark.parametrize("rate", [0.0, -1.0])
async def test_a_schedule_at_no_rate_sends_nothing_and_ends(rate: float) -> None:
    """A rate of 0 (or less) is no load: the scheduler ends at once, touching no terminal (it
    divided by the rate, and the run reported its sender as failed)."""
    c: Any = SimpleNamespace()  # (any use of it fails)
    await asyncio.wait_for(load._schedule([c], rate, None, random.Random(1)), 5)  # type: ignore[arg-type]
    await asyncio.wait_for(load._schedule([], 100.0, None, random.Random(1)), 5)  # type: ignore[arg-type]


class _Term:
    def __init__(self, *, can_send: bool, welcomed: bool, enough: asyncio.Event | None = None) -> None:
        self.can_send = can_send
        self.welcomed_at = 1.0 if welcomed else None
        self.sent = 0
        self.enough = enough

    def submit(self) -> None:
        self.sent += 1
        if self.enough is not None and self.sent >= 3:
            self.enough.set()


class _Owed:
    def __init__(self) -> None:
        self.deferred: list[Any] = []

    def defer(self, c: Any, due: float) -> None:
        self.deferred.append(c)


async def test_a_turn_that_cannot_send_is_owed_only_by_a_terminal_that_logged_on() -> None:
    """At its turn a terminal that can send sends; one that cannot (window full, writes paused,
    away for now) owes the send; one never logged on (its name refused, say) owes nothing."""
    enough = asyncio.Event()
    sender = _Term(can_send=True, welcomed=True, enough=enough)
    full = _Term(can_send=False, welcomed=True)
    never = _Term(can_send=False, welcomed=False)
    owed = _Owed()
    # 3 terminals at 3,000 msg/s: each is due every millisecond, at a phase of its own
    sched = asyncio.ensure_future(load._schedule([sender, full, never], 3000.0, owed, random.Random(7)))  # type: ignore[list-item, arg-type]
    try:
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        sched.cancel()
    assert full in owed.deferred and never not in owed.deferred and sender not in owed.deferred
    assert full.sent == never.sent == 0


class _Ending:
    """A terminal at the logoff: connected (the CP may never close it) or not."""

    def __init__(self, connected: bool) -> None:
        self.transport: Any = object() if connected else None
        self.closed: Any = None
        self.byes = 0
        self.closes: list[bool] = []

    def bye(self) -> None:
        self.byes += 1

    def close(self, abort: bool = False) -> None:
        self.closes.append(abort)
        self.transport = None


class _Connector:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_the_logoff_aborts_what_the_cp_did_not_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connected terminal says bye; what the CP has not closed within SHUTDOWN_WAIT is
    aborted; one not connected is just closed."""
    monkeypatch.setattr(load, "SHUTDOWN_WAIT", 0.05)
    deaf, away = _Ending(connected=True), _Ending(connected=False)
    connector = _Connector()
    await asyncio.wait_for(load._shutdown([deaf, away], connector), 5)  # type: ignore[list-item, arg-type]
    assert connector.closed
    assert (deaf.byes, deaf.closes) == (1, [True])
    assert (away.byes, away.closes) == (0, [False])


async def test_a_load_refused_for_good_sends_nothing_and_does_not_wait_out_its_duration() -> None:
    """Every terminal refused for good before any logged on: the run ends there, with no sending
    phase (not `duration` seconds of sending to nobody)."""
    cp = FakeCP(known=set())
    await cp.start()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=2, rate=20, duration=3, settle=1, prefix="ZZ"), 20)
    finally:
        await cp.stop()
    assert r.gave_up is not None and r.welcomed == 0 and r.sent == 0
    assert r.duration_s == 0.0, r.duration_s


async def test_a_stop_during_the_connect_phase_ends_that_phase_only(fake: FakeCP) -> None:
    """`stop` set while the terminals log on ends the connect wait; it is cleared then, so the
    sending phase still lasts its `duration`."""
    stop = asyncio.Event()
    stop.set()
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.3, settle=2, stop=stop), 20)
    assert r.duration_s >= 0.25, r.duration_s


async def test_an_operation_counts_the_disconnects_that_came_before_it(fake: FakeCP) -> None:
    """Each operation (mark) says how many welcomed terminals were dropped before it: none was
    caused by it. Here both terminals are dropped after the first mark and before the second."""
    marks: list[tuple[str, float]] = []
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=2, rate=20, settle=5, marks=marks, expect_disconnects=True)
    try:
        marks.append(("before", time.time()))
        assert fake.drop_all() == 2
        await wait_until(lambda: all(len(t.hellos) >= 2 for t in fake.terms.values()), what="both terminals logged on again")
        marks.append(("after", time.time()))
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 20)
    assert r.disconnects == 2, r.disconnects
    assert [(op["label"], op["disconnects_before"]) for op in r.operations] == [("before", 0), ("after", 2)]


def test_a_load_under_too_low_an_open_files_limit_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the capacity walk-through: `hsbterm load -n 2000` under a hard limit of 256 said
    only that 1,759 terminals were never welcomed, nothing of the limit it could not raise."""
    import resource

    from hsb.term import load as load_mod

    limit = [256, 256]
    monkeypatch.setattr(resource, "getrlimit", lambda _: tuple(limit))
    monkeypatch.setattr(resource, "setrlimit", lambda _, new: limit.__setitem__(slice(None), list(new)))
    why = load_mod._raise_nofile(2000)
    assert why is not None and why.startswith("this process may open 256 files, and 2000 terminals need about 2256"), why
    assert "beyond about 240 will fail to connect" in why and "--start" in why, why  # (241 did: its own 15 or so)
    limit[:] = [256, 4096]
    assert load_mod._raise_nofile(2000) is None and limit == [2256, 4096]  # (raised as far as needed: nothing to say)
    limit[:] = [1024, 1024]
    assert load_mod._raise_nofile(800) is None  # (they fit, with less than the room it asks for: nothing fails)
    assert load_mod._raise_nofile(1009) is not None
    limit[:] = [256, resource.RLIM_INFINITY]
    assert load_mod._raise_nofile(10**6) is None
