"""Tests from a mutation audit of hsb/term/resume.py (docs/protocol.md §1 `confirm`): each pins a
behaviour that a single-point change of the module broke while every other test still passed:
the 50 ms timer of a batched confirm is armed again after a confirm went (at once or by an
earlier timer), so no reply of a quiet terminal waits for good unconfirmed."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.term.client import TerminalClient
from tests.support.procs import until
from tests.support.termfeed import client, feed

pytestmark = pytest.mark.timeout(30)


class _Clock:
    """hsb.term.resume's clock, standing still: only the confirm timer (the event loop's own
    clock) or a full batch of 8 makes a confirm go."""

    def monotonic(self) -> float:
        return 100.0


def _confirms(tr: Any) -> list[int]:
    return [f["id"] for f in tr.frames() if f["t"] == "confirm"]


def _replied(c: TerminalClient, n: int) -> list[int]:
    ids = [c.submit() for _ in range(n)]
    feed(c, *({"t": "ack", "id": i} for i in ids))
    for i in ids:
        feed(c, {"t": "reply", "id": i, "data": c.payload(i)})
    return ids


async def test_a_batched_confirm_arms_its_timer_again_after_each_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first reply is confirmed at once; the next waits for the 50 ms timer, whose confirm
    goes; a reply after it arms the timer again; a full batch of 8 goes at once and cancels the
    timer it found; the reply after that batch arms a new one, whose confirm goes too.
    Kills: a confirm sent at once not clearing `confirm_timer`, or not cancelling it (it would
    fire early: a confirm less than 50 ms after the one that went at once)."""
    monkeypatch.setattr("hsb.term.resume.time", _Clock())
    c, _ = client()
    tr: Any = c.transport
    ids = _replied(c, 1)
    assert _confirms(tr) == ids
    ids += _replied(c, 1)
    await until(lambda: _confirms(tr) == ids, timeout=5, what="the first timer's confirm")
    ids += _replied(c, 1)
    assert c.confirm_timer is not None, "no timer armed after a timer's confirm"
    await until(lambda: _confirms(tr) == ids, timeout=5, what="the second timer's confirm")
    ids += _replied(c, 1)
    armed = c.confirm_timer
    assert armed is not None
    ids += _replied(c, 7)  # 8 since the last confirm: at once, the timer cancelled
    assert _confirms(tr) == [*ids[:3], ids[-1]]
    assert c.confirm_timer is None and armed.cancelled()
    ids += _replied(c, 1)
    assert c.confirm_timer is not None, "no timer armed after a confirm that went at once"
    await until(lambda: _confirms(tr)[-1] == ids[-1], timeout=5, what="the last timer's confirm")
    assert _confirms(tr) == [*ids[:3], ids[-2], ids[-1]]
