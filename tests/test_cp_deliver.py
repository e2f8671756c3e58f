"""Deliveries to the active as deliver_batch frames joined from items encoded once
(hsb.cp.deliver): the frames must carry exactly what encoding each item would, within the size
the host declared, and a host that does not read them must still get `deliver` frames."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.cp import deliver as dv
from hsb.wire.framing import Decoder
from tests.support.cpcore import cp_core, fake_host, fake_terminal

pytestmark = pytest.mark.timeout(60)

ATTRS = {"protocol": "hsb1"}

items_st = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=48),
        st.integers(min_value=1, max_value=2**53),
        st.one_of(st.binary(max_size=700), st.text(max_size=300)),
        st.booleans(),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(items=items_st, limit=st.integers(min_value=1024, max_value=64 * 1024))
def test_frames_carry_exactly_the_items_encoded_one_by_one(items: list[tuple[str, int, Any, bool]], limit: int) -> None:
    parts: list[bytes] = []
    biggest = 0
    for name, mid, data, flag in items:
        w = dv.item(name, mid, data)
        assert w + (dv.TRUE if flag else dv.FALSE) == msgpack.packb([name, mid, data, flag], use_bin_type=True)
        biggest = max(biggest, len(w))
        parts += [w, dv.TRUE if flag else dv.FALSE]
    frames = dv.frames(parts, biggest, limit)
    got: list[list[Any]] = []
    for f in frames:
        (m,) = Decoder().feed(f)
        assert m["t"] == "deliver_batch" and 1 <= len(m["items"]) <= dv.BATCH_ITEMS
        if biggest + 64 <= limit:  # an item that fits alone: every frame within what the host reads
            assert len(f) <= limit, (len(f), limit, len(m["items"]))
        got += m["items"]
    assert got == [list(it) for it in items]


def test_frames_stay_within_the_declared_size_when_items_fill_them_exactly() -> None:
    """Items of 99 bytes and a limit of 1,024: ten of them fill 1,000 bytes, and with the frame's
    own 28 bytes that would be too many; nine go in a frame."""
    w = dv.item("T1", 1, b"d" * 92)
    assert len(w) == 99
    frames = dv.frames([w, dv.FALSE] * 30, len(w), 1024)
    assert all(len(f) <= 1024 for f in frames) and sum(len(Decoder().feed(f)[0]["items"]) for f in frames) == 30


def _sent(h: Any) -> list[dict[str, Any]]:
    return [m for m in h.transport.frames() if m["t"] in ("deliver", "deliver_batch")]


async def test_each_delivery_to_a_host_that_reads_batches_is_a_batch_of_one(tmp_path: Path) -> None:
    """A new message goes as a deliver_batch of one item (its item kept for a flip); data past
    WIRE_MAX, and every message to a host that reads no batches, as a plain deliver frame."""
    cp = cp_core(tmp_path, 2, width=1)
    a = fake_host(cp, "host-a", "active", batch=64 * 1024, record=True)
    for name in cp.terms:
        fake_terminal(cp, name)
        cp.host_open(a, name, "active", ATTRS)
    big = "y" * (dv.WIRE_MAX + 1)
    cp.terminal_msg(cp.terms["T1"], 1, b"small")
    cp.terminal_msg(cp.terms["T2"], 1, big)
    await asyncio.sleep(0)
    a.flush()
    sent = _sent(a)
    assert sent[0] == {"t": "deliver_batch", "items": [["T1", 1, b"small", False]]}
    assert sent[1] == {"t": "deliver", "terminal": "T2", "id": 1, "data": big, "redelivered": False}
    assert cp.terms["T1"].held[1].wire is not None and cp.terms["T2"].held[1].wire is None
    # delivered again to the same host (its session reopened): the kept item, marked
    held = cp.terms["T1"].held[1]
    a.deliver_held("T1", held, True)
    a.flush()
    assert _sent(a)[-1] == {"t": "deliver_batch", "items": [["T1", 1, b"small", True]]}

    # text of 4-byte characters within WIRE_MAX characters but not within the 1,024 bytes a host
    # declared: a deliver frame, nothing kept
    (tmp_path / "narrow").mkdir()
    cp3 = cp_core(tmp_path / "narrow", 1, width=1)
    narrow = fake_host(cp3, "host-a", "active", batch=1024, record=True)
    fake_terminal(cp3, "T1")
    cp3.host_open(narrow, "T1", "active", ATTRS)
    wide = "\U0001f600" * dv.WIRE_MAX
    cp3.terminal_msg(cp3.terms["T1"], 1, wide)
    await asyncio.sleep(0)
    narrow.flush()
    assert _sent(narrow) == [{"t": "deliver", "terminal": "T1", "id": 1, "data": wide, "redelivered": False}]
    assert cp3.terms["T1"].held[1].wire is None

    (tmp_path / "old").mkdir()
    cp2 = cp_core(tmp_path / "old", 1, width=1)
    old = fake_host(cp2, "host-a", "active", record=True)  # declares no deliver_batch
    fake_terminal(cp2, "T1")
    cp2.host_open(old, "T1", "active", ATTRS)
    cp2.terminal_msg(cp2.terms["T1"], 1, b"small")
    await asyncio.sleep(0)
    old.flush()
    assert _sent(old) == [{"t": "deliver", "terminal": "T1", "id": 1, "data": b"small", "redelivered": False}]


async def test_a_flip_redelivers_kept_and_unkept_items_in_order_and_marked(tmp_path: Path) -> None:
    """At a grant the new active gets every held message, in order and marked, whether its item
    was kept encoded (small), never kept (large) or never made (held while no active was there)."""
    cp = cp_core(tmp_path, 3, width=1, cp="flip_slice = 2\n")
    a = fake_host(cp, "host-a", "active", batch=64 * 1024)
    b = fake_host(cp, "host-b", "standby", batch=4096, record=True)
    names = sorted(cp.terms)
    for name in names:
        fake_terminal(cp, name)
        cp.host_open(a, name, "active", ATTRS)
        cp.host_open(b, name, "standby", ATTRS)
    big = b"z" * 3000
    cp.terminal_msg(cp.terms["T1"], 1, b"one")  # delivered to A: item kept
    cp.terminal_msg(cp.terms["T2"], 1, big)  # delivered to A: too large to keep
    await asyncio.sleep(0)
    a.connection_lost(None)
    cp.terminal_msg(cp.terms["T3"], 1, "three")  # held with no active: never delivered, no item
    cp.terminal_msg(cp.terms["T1"], 2, b"two")
    await asyncio.sleep(0)
    assert cp.terms["T3"].held[1].wire is None
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    while cp.flipping is not None:
        await asyncio.sleep(0)
    b.flush()
    items = [it for m in _sent(b) for it in m["items"]]
    assert items == [["T1", 1, b"one", True], ["T1", 2, b"two", False], ["T2", 1, big, True], ["T3", 1, "three", False]]
    assert all(m["t"] == "deliver_batch" for m in _sent(b))
    assert len(_sent(b)) >= 2  # 3,000 bytes of data: not one frame of 4,096 with the others
    # an item made at the flip is kept for the next one if small, never if large
    assert cp.terms["T3"].held[1].wire is not None and cp.terms["T2"].held[1].wire is None
    assert cp.counters["redelivered"] == 2


def test_frames_hold_at_most_batch_items_however_small_the_items() -> None:
    """3,000 items of a few bytes and a limit of a megabyte: frames of BATCH_ITEMS items at most,
    every item once and in order."""
    parts: list[bytes] = []
    for mid in range(1, 3001):
        parts += [dv.item("T1", mid, b"d"), dv.FALSE]
    frames = dv.frames(parts, max(len(p) for p in parts), 1 << 20)
    items = [Decoder().feed(f)[0]["items"] for f in frames]
    assert max(len(i) for i in items) == dv.BATCH_ITEMS
    assert [it[1] for i in items for it in i] == list(range(1, 3001))


def test_frames_stay_within_every_declared_size_to_the_byte() -> None:
    """Items of 19 bytes (more than 15 to a frame: a 3-byte array header) against every limit
    from 600 to 1,400 bytes: no frame is a byte over it."""
    w = dv.item("T1", 1, b"d" * 12)
    assert len(w) == 19
    for limit in range(600, 1401):
        frames = dv.frames([w, dv.TRUE] * 200, len(w), limit)
        assert all(len(f) <= limit for f in frames), limit
        assert sum(len(Decoder().feed(f)[0]["items"]) for f in frames) == 200


async def test_an_item_whose_frame_of_one_just_fits_the_declared_size_goes_batched(tmp_path: Path) -> None:
    """A held message whose item alone, with the frame's overhead, is exactly the host's
    deliver_batch size is delivered as a deliver_batch (its item kept for a flip); one byte less
    and it goes as a plain deliver."""
    w = dv.item("T1", 1, b"z" * 100)
    for slack, kind in ((0, "deliver_batch"), (-1, "deliver")):
        (tmp_path / kind).mkdir()
        cp = cp_core(tmp_path / kind, 1, width=1)
        a = fake_host(cp, "host-a", "active", batch=len(w) + 1 + dv._OVERHEAD + slack, record=True)
        fake_terminal(cp, "T1")
        cp.host_open(a, "T1", "active", ATTRS)
        cp.terminal_msg(cp.terms["T1"], 1, b"z" * 100)
        await asyncio.sleep(0)
        a.flush()
        assert [m["t"] for m in _sent(a)] == [kind]
        assert (cp.terms["T1"].held[1].wire is not None) == (slack == 0)
