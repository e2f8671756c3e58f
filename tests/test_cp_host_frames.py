"""A CP and hosts of different max_frame, driven in-process through the CP's own code.

A message the CP took that a host's smaller frames cannot hold is answered by the CP itself
with an error reply (hsb.cp.terminal_side `_too_large_for`): that reply is nobody's reply
frame (`replies_by_host`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode, payload_max
from tests.support.cpcore import cp_core, fake_host, recording_terminal

pytestmark = pytest.mark.timeout(60)

BIG, SMALL = 64 * 1024, 8 * 1024


def replies(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return [f for f in p.transport.frames() if f.get("t") == "reply"]


async def test_the_cps_own_error_reply_is_no_reply_frame_of_the_host(tmp_path: Path) -> None:
    """`replies_by_host` counts the reply frames taken from each host: the error the CP makes up
    for a message too large for the active's frames is not one of them; the active's own reply
    to the next message is."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    p = recording_terminal(cp, "T00001", None)
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * (payload_max(SMALL) + 10)}))
    p.data_received(encode({"t": "msg", "id": 2, "data": b"fits"}))
    h = fake_host(cp, "host-a", None, record=True)
    h.max_frame = SMALL  # (as its register said)
    cp.host_register(h, "active", 1)
    cp.host_open(h, "T00001", "active", {})
    await asyncio.sleep(0)
    assert [r["id"] for r in replies(p)] == [1] and "too large" in replies(p)[0]["data"]
    assert cp.replies_by_host.get("host-a", 0) == 0
    cp.host_reply(h, "T00001", 2, "ok")
    assert [r["id"] for r in replies(p)] == [1, 2] and cp.replies_by_host["host-a"] == 1
    h.connection_lost(None)
