"""A woken CP that defers to a CP still beating takes the journal over after
`split_brain_takeover` (hsb.cp.waiting), in-process: keepalived dead or hung on the serving
machine keeps the address there but the other machine's gratuitous ARP takes its traffic, so
deferring for good left every terminal unserved for as long as keepalived was down (the
two-CP walk-through: 22 s for a 20 s SIGSTOP, without end after a SIGKILL). Only a wake that
came while this CP waited counts: a MASTER written before it started may be the stale word of a
keepalived that died on this machine, whose CP was just superseded (else the two would take
the journal from each other in turn: tests/test_cp_waiting_edges.py, the woken CP that defers)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.test_cp_waiting_edges import takeover_wait, waiting_cp, waits_on

pytestmark = pytest.mark.timeout(30)
BOUND = 0.5


def _deferred(logs: list[Any]) -> list[Any]:
    return [e for e in logs if e["event"] == "cp_wake_deferred"]


@pytest.mark.parametrize("wake", ["sigusr1", "file_turns_master"])
async def test_a_cp_woken_while_waiting_takes_over_a_beating_cp_after_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wake: str) -> None:
    state = tmp_path / "keepalived.state"
    state.write_text("BACKUP\n")
    filed = {} if wake == "sigusr1" else {"wake_file": str(state)}  # (SIGUSR1 alone: no wake file)
    s, j = waiting_cp(tmp_path, monkeypatch, split_brain_takeover=BOUND, takeover_stale=0.2, **filed)
    j.beating = True
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s, may_end=True) as task:
            await waits_on(s, j, task, polls=3)  # (backup: nothing to decide)
            woken = time.monotonic()
            if wake == "sigusr1":
                s._wake()
            else:
                state.write_text("MASTER\n")  # (keepalived's notify script, seen by the next poll)
            reason = await asyncio.wait_for(task, 5)
            took = time.monotonic() - woken
    assert reason is not None and reason.startswith("master here for "), reason
    assert "while the CP of generation 1 still beats" in reason and "keepalived dead or hung" in reason, reason
    assert BOUND <= took < BOUND + 1.0, took
    said = _deferred(logs)
    assert len(said) == 1 and said[0]["takeover_in_s"] == BOUND, said
    assert f"taking it over in {BOUND:g} s unless the address leaves" in str(said[0]["msg"])


@pytest.mark.parametrize("then", ["address_leaves", "keepalived_says_backup"])
async def test_a_wake_that_ended_does_not_count_towards_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """A VRRP flap: master a moment, then the address gone (or keepalived back to backup); the
    address back later (the file still saying MASTER) without a new wake is not this machine
    made master again."""
    state = tmp_path / "keepalived.state"
    state.write_text("BACKUP\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(state), split_brain_takeover=BOUND, takeover_stale=0.2)
    j.beating = True
    async with takeover_wait(s) as task:
        await waits_on(s, j, task, polls=2)
        state.write_text("MASTER\n")
        await waits_on(s, j, task, polls=2)
        if then == "address_leaves":
            j.held = False
            await waits_on(s, j, task, polls=2)
            j.held = True
        else:
            state.write_text("BACKUP\n")
            await waits_on(s, j, task, polls=2)
        started = time.monotonic()
        await waits_on(s, j, task, polls=25)  # (well past the bound since the wake)
        assert time.monotonic() - started > BOUND


async def test_split_brain_takeover_zero_defers_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, j = waiting_cp(tmp_path, monkeypatch, split_brain_takeover=0, takeover_stale=0.2)
    j.beating = True
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            s._wake()
            started = time.monotonic()
            await waits_on(s, j, task, polls=25)
            assert time.monotonic() - started > 0.5
    said = _deferred(logs)
    assert len(said) == 1 and said[0]["takeover_in_s"] is None, said


async def test_a_generation_taken_in_a_split_brain_is_not_taken_back_by_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lasting VRRP split brain: B took the journal by this rule and A's CP, superseded, started
    again waiting; keepalived (FAULT while A had no hsbcpd, then BACKUP, no adverts) makes A
    master again, a wake that comes while A's new CP waits. It took the journal back 2 s later,
    and so on in turn, every terminal reconnecting each time (the review of this rule: generations
    1 to 7 in 20 s). B's generation file says it was taken in a split brain: A waits while B beats."""
    from hsb.cp.journal.generation import Generations

    state = tmp_path / "keepalived.state"
    state.write_text("BACKUP\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(state), split_brain_takeover=BOUND, takeover_stale=0.2)
    gens = Generations(tmp_path / "j")
    assert gens.take(split=True) == 1 and gens.taken_in_split(1)  # (B's: the generation the wait sees)
    assert gens.take() == 2 and not gens.taken_in_split(2)
    (tmp_path / "j" / "gen-00000002").unlink()
    j.beating = True
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            await waits_on(s, j, task, polls=2)
            state.write_text("MASTER\n")
            started = time.monotonic()
            await waits_on(s, j, task, polls=25)
            assert time.monotonic() - started > BOUND
    said = _deferred(logs)
    assert len(said) == 1 and said[0]["takeover_in_s"] is None and said[0]["withheld"] is True, said
    assert "not taken back by the same rule" in str(said[0]["msg"])
