"""What the io_uring tests share (test_uring, test_uring_edges, test_cp_journal_io): one chain
run on a ring, a ring with a segment file open, and a pipe filled up so that a write to it waits
in the kernel, as on a hung mount."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hsb import uring


def run(ring: uring.Ring, fd: int, data: bytes, off: int, paths: Sequence[bytes]) -> list[int]:
    """One write + sync + statx chain on `ring`, waited for: its results."""
    got: list[list[int]] = []
    ring.write_sync_check(fd, data, off, paths, got.append)
    assert ring.wait(5.0), "the chain did not complete"
    assert len(got) == 1
    return got[0]


def fill(w: int) -> None:
    """Fill the pipe: a write to it now waits for a reader, as on a hung mount."""
    os.set_blocking(w, False)
    while True:
        try:
            os.write(w, b"x" * 65536)
        except BlockingIOError:
            return


@contextlib.contextmanager
def ring_on_segment(d: Path) -> Iterator[tuple[uring.Ring, int]]:
    """A ring and a segment file `d/seg` open for writing; both closed after."""
    ring = uring.Ring()
    fd = os.open(d / "seg", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        yield ring, fd
    finally:
        os.close(fd)
        ring.close()
