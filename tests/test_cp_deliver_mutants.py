"""Tests from a mutation audit of hsb/cp/deliver.py: the boundaries of what is kept encoded with
a held message for a flip (docs/protocol.md §3, `deliver_batch`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsb.cp import deliver as dv
from tests.support.cpcore import cp_core, fake_host, fake_terminal

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("size", [dv.WIRE_MAX, dv.WIRE_MAX + 1])
async def test_data_of_exactly_wire_max_bytes_has_its_item_kept_and_one_more_has_not(tmp_path: Path, size: int) -> None:
    """WIRE_MAX is inclusive: data of up to WIRE_MAX bytes has its item kept encoded with the held
    message when it is first delivered (a flip joins it, not encoding it again); one byte more,
    nothing is kept and the message goes as a plain deliver frame."""
    cp = cp_core(tmp_path, 1, width=1)
    a = fake_host(cp, "host-a", "active", batch=64 * 1024, record=True)
    fake_terminal(cp, "T1")
    cp.host_open(a, "T1", "active", {"protocol": "hsb1"})
    cp.terminal_msg(cp.terms["T1"], 1, b"x" * size)
    await asyncio.sleep(0)
    a.flush()
    sent = [m for m in a.transport.frames() if m["t"] in ("deliver", "deliver_batch")]
    held = cp.terms["T1"].held[1]
    if size <= dv.WIRE_MAX:
        assert held.wire is not None and sent == [{"t": "deliver_batch", "items": [["T1", 1, b"x" * size, False]]}]
    else:
        assert held.wire is None and [m["t"] for m in sent] == ["deliver"]


async def test_an_item_kept_encoded_is_not_encoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message delivered to the active has its item encoded then, once: delivered again to the
    same host (its session reopened) and re-delivered by a flip to the new active, those bytes
    are joined (only the flag is new), nothing encoded again."""
    cp = cp_core(tmp_path, 2, width=1)
    a = fake_host(cp, "host-a", "active", batch=64 * 1024)
    b = fake_host(cp, "host-b", "standby", batch=64 * 1024, record=True)
    for name in sorted(cp.terms):
        fake_terminal(cp, name)
        cp.host_open(a, name, "active", {"protocol": "hsb1"})
        cp.host_open(b, name, "standby", {"protocol": "hsb1"})
    cp.terminal_msg(cp.terms["T1"], 1, b"one")
    cp.terminal_msg(cp.terms["T2"], 1, b"two")
    await asyncio.sleep(0)
    assert all(t.held[1].wire is not None for t in cp.terms.values())
    encoded: list[tuple[str, int]] = []
    real = dv.item

    def counting(terminal: str, mid: int, data: object) -> bytes:
        encoded.append((terminal, mid))
        return real(terminal, mid, data)

    monkeypatch.setattr(dv, "item", counting)
    a.deliver_held("T1", cp.terms["T1"].held[1], True)
    assert encoded == []
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cp.flipping is not None:
        assert loop.time() < deadline, "the flip never finished"
        await asyncio.sleep(0)
    b.flush()
    items = [it for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert items == [["T1", 1, b"one", True], ["T2", 1, b"two", True]]
    assert encoded == []


def test_an_item_larger_than_the_declared_size_goes_in_a_frame_of_its_own() -> None:
    """An item too large for the frames the host declared (a message above WIRE_MAX in a flip)
    still goes: alone in a frame, which is then larger; the items around it go in frames of
    their own, in order."""
    from hsb.wire.framing import Decoder

    small = dv.item("T1", 1, b"a")
    big = dv.item("T2", 1, b"b" * 5000)
    parts = [small, dv.FALSE, big, dv.TRUE, small, dv.FALSE]
    frames = dv.frames(parts, len(big), 1024)
    got = [Decoder().feed(f)[0]["items"] for f in frames]
    assert got == [[["T1", 1, b"a", False]], [["T2", 1, b"b" * 5000, True]], [["T1", 1, b"a", False]]]
