"""Helpers for the CP journal's in-process tests: opening one, writing a segment file, what its
segment files hold, and appending a record and waiting until it is durable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hsb.cp.journal.format import encode, scan
from hsb.cp.journal.generation import Generations
from hsb.cp.journal.recovery import segment_name
from hsb.cp.journal.store import Journal


def open_journal(d: Path, io: str = "auto", timeout: float = 2.0) -> Journal:
    """A journal of a new generation in `d`, opened (its first segment written)."""
    gen = Generations(d).take()
    j = Journal(d, generation=gen, io=io, timeout=timeout)
    j.open(1, [], [])
    return j


def write_segment(d: Path, n: int, recs: list[list[Any]], gen: int = 0) -> Path:
    """Segment `n` of generation `gen` in `d`, holding `recs`."""
    p = d / segment_name(n, gen)
    p.write_bytes(b"".join(encode(r) for r in recs))
    return p


def records(d: Path) -> list[Any]:
    """Every record in the segments of journal directory `d`, oldest first (no torn tail)."""
    out: list[Any] = []
    for f in sorted(d.glob("seg-*.hsbj")):
        recs, _end, torn = scan(f.read_bytes(), str(f))
        assert torn is None
        out += recs
    return out


async def durable(j: Journal, payload: list[Any], lazy: bool = False) -> None:
    """Append `payload` and wait (5 s at most) until it is durable."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    j.append(payload, lambda: fut.set_result(None), lazy=lazy)
    await asyncio.wait_for(fut, 5.0)
