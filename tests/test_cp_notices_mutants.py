"""The fast-switch notices (hsb/cp/notices.py; SPEC §5.4), each test naming a behaviour that a
mutation audit of the module found no test for: a switch right after a switch sends the notices
still owed from the first at once, not a DEFER_S later; a slice writes until its time is up, not
32 notices; notices asked to start twice in one turn start once. Driven on `Notices` directly,
with terminals that record what is written to them.

The audit (session 63): 22 hand-made mutants of notices.py; 14 were killed by
tests/test_cp_notice_edges.py; 4 are killed here (N02, N08, N09, N17); 3 are equivalent (the
DEFER_S timer not cancelled at the start, or the owed set not cleared: a later start finds it
started and does nothing; the clock read at every notice instead of every 32nd: cost only);
1 is left: DEFER_S at 1.0 instead of 0.1, a tuning bound the docs do not state.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from hsb.cp import notices
from hsb.cp.notices import Notices

pytestmark = pytest.mark.timeout(30)


def _terms(n: int) -> list[Any]:
    out = []
    for _ in range(n):
        conn = SimpleNamespace(written=[])
        conn.write_now = conn.written.append
        out.append(SimpleNamespace(notice=b'{"t":"switched"}', conn=conn))
    return out


async def test_a_switch_right_after_a_switch_sends_the_first_ones_notices_at_once() -> None:
    """The notices of a grant still waiting for the new active's first reply go out the moment
    the next grant owes its own: they are not left to the first grant's DEFER_S timer (mutant:
    the older owed set not started at the second `owe`)."""
    n = Notices()
    first, second = _terms(3), _terms(2)
    rec1: dict[str, Any] = {"epoch": 4, "switched": 3}
    rec2: dict[str, Any] = {"epoch": 5, "switched": 2}
    n.owe(first, rec1, 0.0, wait_for_reply=True)
    assert all(t.notice is not None for t in first), "sent before the first reply or DEFER_S"
    n.owe(second, rec2, 0.0, wait_for_reply=True)
    assert all(t.notice is None and t.conn.written == [b'{"t":"switched"}'] for t in first)
    assert "notices_sent_ms" in rec1
    assert all(t.notice is not None for t in second), "the second grant's wait for its reply"


async def _until(pred: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


async def test_within_its_slice_every_notice_goes_out_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice writes notices until SLICE_S has passed, not a fixed 32 of them: with time left,
    a hundred go out at once, without a GAP_S between batches (mutant: the clock test flipped,
    which cut every slice at 32 notices and made 19,000 of them take seconds)."""
    monkeypatch.setattr(notices, "SLICE_S", 30.0)
    monkeypatch.setattr(notices, "GAP_S", 30.0)  # (a second slice would come too late for this test)
    n = Notices()
    terms = _terms(100)
    rec: dict[str, Any] = {"epoch": 4, "switched": 100}
    n.owe(terms, rec, time.monotonic(), wait_for_reply=False)
    await _until(lambda: terms[0].notice is None, "the notices did not start")
    assert sum(t.notice is None for t in terms) == 100, "the slice stopped with time left"
    assert "notices_sent_ms" in rec


async def test_notices_started_twice_in_one_turn_are_sent_and_timed_once() -> None:
    """Two replies of the new active in one turn of the loop each ask for the notices to start:
    they start once, are timed once and logged once (mutants: the `started` check dropped, or
    never set, which sent them a second time over and moved `notices_sent_ms` to the second)."""
    n = Notices()
    terms = _terms(3)
    rec: dict[str, Any] = {"epoch": 4, "switched": 3}
    n.owe(terms, rec, time.monotonic(), wait_for_reply=True)
    with structlog.testing.capture_logs() as logs:
        n.first_reply()
        n.first_reply()
        await _until(lambda: all(t.notice is None for t in terms), "the notices after the first reply")
        first = rec["notices_sent_ms"]
        for _ in range(20):  # turns of the loop: the second start, had it run
            await asyncio.sleep(0)
    assert [e["event"] for e in logs] == ["switch_notices_sent"]
    assert rec["notices_sent_ms"] == first
