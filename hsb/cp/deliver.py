"""Deliveries to the active in `deliver_batch` frames built from items encoded once.

A held message goes to the active as the item `[terminal, id, data, redelivered]` of a
`deliver_batch` frame (docs/protocol.md §3) when the host reads them. The item is encoded when
the message is first delivered, without its last element, and kept with the message
(`Held.wire`; only for data of up to WIRE_MAX bytes). A flip's re-delivery then joins kept
bytes, a flag byte each, instead of encoding every held message again in the middle of the
switch: at 100,000 terminals that encoding was a fifth of the flip (BENCHMARKS.md). A host
that does not read `deliver_batch` gets one `deliver` frame per message, as always.

Used from the CP's event loop only (one packer, not one per thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from hsb.wire.framing import framed

if TYPE_CHECKING:
    from hsb.cp.state import Held

BATCH_ITEMS = 1024  # messages per deliver_batch frame at most
WIRE_MAX = 512  # data of up to this many bytes (or characters) has its item kept encoded
TRUE, FALSE = msgpack.packb(True), msgpack.packb(False)

_pack = msgpack.Packer(use_bin_type=True).pack
_array_header = msgpack.Packer().pack_array_header
# the frame's map up to the items' array header: {"t": "deliver_batch", "items": [
_PREFIX = _pack({"t": "deliver_batch", "items": []})[:-1]
_OVERHEAD = 4 + len(_PREFIX) + 3  # the length, the map up to the items, their array header
_ONE = _PREFIX + _array_header(1)  # ... of a frame of one item


def fits_alone(w: bytes, limit: int) -> bool:
    """A frame of this one item (and its flag) is within `limit` bytes."""
    return len(w) + 1 + _OVERHEAD <= limit


def item(terminal: str, mid: int, data: Any) -> bytes:
    """`[terminal, id, data, redelivered]` encoded, its last element (one byte) left off."""
    body: bytes = _pack((terminal, mid, data, False))
    return body[:-1]


def item_of(terminal: str, held: Held, limit: int) -> bytes:
    """`held`'s item: the one kept, else encoded now and kept if its data is at most WIRE_MAX
    and a frame of it alone fits the `limit` bytes the host declared."""
    w = held.wire
    if w is None:
        w = item(terminal, held.id, held.data)
        if len(held.data) <= WIRE_MAX and fits_alone(w, limit):
            held.wire = w
    return w


def frame_one(w: bytes, redelivered: bool) -> bytes:
    """A `deliver_batch` frame of the one item `w`."""
    return framed(b"".join((_ONE, w, TRUE if redelivered else FALSE)))


def frame(parts: list[bytes], n: int) -> bytes:
    """A `deliver_batch` frame of `n` items from `parts`: each item's bytes, then its flag."""
    return framed(b"".join((_PREFIX, _array_header(n), *parts)))


def frames(parts: list[bytes], biggest: int, limit: int) -> list[bytes]:
    """`parts` (item, flag, item, flag, ...) as frames of at most BATCH_ITEMS items and at most
    `limit` bytes (`biggest`: the longest item among them); an item too large for that goes
    in a frame of its own, which is then larger."""
    per = max(1, min(BATCH_ITEMS, (limit - _OVERHEAD) // (biggest + 1)))
    chunks = (parts[k : k + 2 * per] for k in range(0, len(parts), 2 * per))
    return [frame(c, len(c) // 2) for c in chunks]
