"""The switch notices' timing (hsb.cp.notices), in-process through the CP's own flip: with
messages waiting at the grant they start at the new active's first reply (service first), or
DEFER_S after the grant if no reply comes; a first reply that came while the flip was still going
starts them as the flip ends."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.cp import notices
from tests.support.cpcore import flip_pair, flipped
from tests.support.inproc import until

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}


def _owed(cp: Any, names: list[str]) -> int:
    return sum(cp.terms[n].notice is not None for n in names)


def _failover_with_a_message_waiting(tmp_path: Path, terminals: int = 8) -> tuple[Any, Any, list[str], str, dict[str, Any]]:
    """A failover from A to B while one terminal's message waits for a reply: B gets it again."""
    cp, a, b, names, conns = flip_pair(tmp_path, terminals, False, ATTRS)
    holder = names[0]
    cp.terminal_msg(cp.terms[holder], 1, b"m")
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    return cp, b, names, holder, conns


async def test_without_a_reply_the_notices_start_defer_s_after_the_grant(tmp_path: Path) -> None:
    cp, b, names, holder, _ = _failover_with_a_message_waiting(tmp_path)
    await flipped(cp)
    rec = cp.switchovers[-1]
    await until(lambda: _owed(cp, names) == 0, "the notices, with no reply from the new active")
    assert rec["first_reply_ms"] is None and rec["notices_sent_ms"] is not None
    assert rec["notices_sent_ms"] < 1000 * (notices.DEFER_S + 1.0), rec


async def test_with_a_message_waiting_the_notices_wait_for_the_first_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notices, "DEFER_S", 30.0)  # (only the first reply can start them here)
    cp, b, names, holder, conns = _failover_with_a_message_waiting(tmp_path)
    await flipped(cp)
    for _ in range(20):  # turns of the loop: nothing starts them yet
        await asyncio.sleep(0)
    assert _owed(cp, names) == len(names), "the notices did not wait for the service"
    before = {n: conns[n].transport.writes for n in names}
    cp.host_reply(b, holder, 1, b"r")
    await until(lambda: _owed(cp, names) == 0, "the notices after the first reply")
    assert all(conns[n].transport.writes > before[n] for n in names if n != holder)
    assert cp.switchovers[-1]["notices_sent_ms"] is not None


async def test_a_first_reply_during_the_flip_starts_the_notices_as_it_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new active answered before the flip's last slice: `first_reply` came with nothing
    owed yet, so the flip's end starts them at once instead of waiting DEFER_S for a reply that
    already came."""
    monkeypatch.setattr(notices, "DEFER_S", 30.0)
    cp, b, names, holder, _ = _failover_with_a_message_waiting(tmp_path, terminals=64)
    assert cp.flipping is not None, "the flip in slices"
    cp.host_reply(b, holder, 1, b"r")  # re-delivered in the first slice, answered before the last
    assert cp.flipping is not None
    await flipped(cp)
    assert cp.switchovers[-1]["first_reply_ms"] is not None
    await until(lambda: _owed(cp, names) == 0, "the notices after the flip")


async def test_notices_written_in_slices_reach_every_terminal_and_time_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written a slice at a time (here 32 a slice, GAP_S apart), every switched terminal gets its
    notice once, none skipped at a slice's edge; `notices_sent_ms` is grant → the last one."""
    monkeypatch.setattr(notices, "SLICE_S", 0.0)  # (a slice ends at each 32nd notice)
    cp, a, b, names, conns = flip_pair(tmp_path, 100, False, ATTRS)
    t0 = time.monotonic()
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)  # nothing waiting: the notices start at once
    await flipped(cp)
    before = {n: conns[n].transport.writes for n in names}
    rec = cp.switchovers[-1]
    await until(lambda: rec.get("notices_sent_ms") is not None, "the last notice")
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert _owed(cp, names) == 0, [n for n in names if cp.terms[n].notice is not None]
    assert all(conns[n].transport.writes == before[n] + 1 for n in names), "one notice each"
    assert 0 <= rec["notices_sent_ms"] <= elapsed_ms, (rec["notices_sent_ms"], elapsed_ms)
