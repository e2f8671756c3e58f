"""`counters.resent` (docs/protocol.md §4: replies sent again to a terminal at its logon, marked
`resent`) counts every such reply, in-process: those kept for it while it was away, sent at a hello
that resumes or one that does not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal

pytestmark = pytest.mark.timeout(60)


def resent(p: Any) -> list[int]:
    p.flush()
    return [f["id"] for f in p.transport.frames() if f.get("t") == "reply" and f.get("resent")]


def message_then_gone(tmp_path: Path) -> tuple[Any, Any]:
    """A CP with an active; T00001, not resuming, sends message 1 and its connection goes."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    p.data_received(encode({"t": "msg", "id": 1, "data": b"m"}))
    p.connection_lost(None)
    return cp, h


async def test_a_reply_kept_while_the_terminal_was_away_is_counted_resent(tmp_path: Path) -> None:
    cp, h = message_then_gone(tmp_path)
    cp.host_reply(h, "T00001", 1, "r1")  # away: kept
    q = recording_terminal(cp, "T00001", 0)
    assert resent(q) == [1] and cp.counters["resent"] == 1
    h.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_reply_kept_while_away_sent_at_a_hello_that_does_not_resume_is_counted_resent(tmp_path: Path) -> None:
    """The same reply, the terminal back without resuming (no last_reply): it goes marked
    resent, and is counted so."""
    cp, h = message_then_gone(tmp_path)
    cp.host_reply(h, "T00001", 1, "r1")  # away: kept
    q = recording_terminal(cp, "T00001", None)
    assert resent(q) == [1] and cp.counters["resent"] == 1
    h.connection_lost(None)
    await asyncio.sleep(0)
