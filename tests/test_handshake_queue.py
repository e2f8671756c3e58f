"""hsb.wire.handshakes.Handshakes in-process: a link that goes first (host, peer, admin) runs
its TLS step inline while the terminals' queue waits, within the turn's budget; past it, it waits
at the head of the queue, behind its own kind only."""

from __future__ import annotations

import asyncio
import time

from hsb.wire.handshakes import TURN_S, Handshakes


class Step:
    def __init__(self, name: str, done: list[str], busy: float = 0.0) -> None:
        self.name, self.done, self.busy = name, done, busy

    def tls_turn(self) -> None:
        end = time.perf_counter() + self.busy
        while time.perf_counter() < end:
            pass
        self.done.append(self.name)


async def test_a_first_link_runs_inline_while_terminals_wait_and_queues_ahead_of_them_past_the_budget() -> None:
    loop = asyncio.get_running_loop()
    h = Handshakes()
    done: list[str] = []
    assert h.admit(Step("t0", done), loop)
    h.charge(TURN_S * 2)  # the turn's budget spent inline
    terminals = [Step(f"t{i}", done, busy=0.001) for i in range(1, 41)]
    assert not any(h.admit(t, loop) for t in terminals)
    await asyncio.sleep(0)  # one turn: the budget is new, the queue is worked off a slice at a time
    assert h.queue and h.spent < TURN_S
    assert h.admit(Step("host", done), loop, first=True)  # inline, whatever the terminals' queue holds
    assert not h.admit(Step("t41", done), loop)  # a terminal joins the queue's end
    h.charge(TURN_S * 2)
    assert not h.admit(Step("peer", done), loop, first=True) and not h.admit(Step("admin", done), loop, first=True)
    while h.queue:
        await asyncio.sleep(0.001)
    waiting = [d for d in done if d != "t0"]
    i = waiting.index("peer")
    assert waiting[i : i + 2] == ["peer", "admin"] and waiting[-1] == "t41"
    assert waiting.index("peer") < waiting.index("t40")  # ahead of the terminals queued before it
    # once those went, a later one goes at the head again, not behind terminals
    done.clear()
    h.charge(TURN_S * 2)
    assert not any(h.admit(Step(f"u{i}", done, busy=0.001), loop) for i in range(3))
    assert not h.admit(Step("late", done), loop, first=True)
    while h.queue:
        await asyncio.sleep(0.001)
    assert done == ["late", "u0", "u1", "u2"]
