"""hsb.uring on real files: the journal's chain (a durable write, statx of two paths) as the
kernel runs it, and what a failing link does to the rest of the chain."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hsb import uring
from tests.support.uringchain import ring_on_segment, run

WHY = uring.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"this kernel does not run io_uring: {WHY}")


def test_a_chain_writes_at_its_offset_syncs_and_reports_each_path(tmp_path: Path) -> None:
    ring = uring.Ring()
    f = tmp_path / "seg"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o600)
    (tmp_path / "gen-1").touch()
    try:
        paths = [os.fsencode(tmp_path / "gen-1"), os.fsencode(tmp_path / "gen-2")]
        assert run(ring, fd, b"hello ", 0, paths) == [6, 0, 0, -errno.ENOENT]
        assert run(ring, fd, b"world", 6, paths) == [5, 0, 0, -errno.ENOENT]
        (tmp_path / "gen-2").touch()  # a newer generation appears: the second statx finds it
        assert run(ring, fd, b"!", 11, paths) == [1, 0, 0, 0]
        assert f.read_bytes() == b"hello world!"
        assert not ring.busy
    finally:
        os.close(fd)
        ring.close()


def test_a_failed_write_cancels_the_sync_and_the_checks_after_it(tmp_path: Path) -> None:
    ring = uring.Ring()
    fd = os.open(tmp_path / "seg", os.O_RDONLY | os.O_CREAT, 0o600)  # not open for writing
    try:
        res = run(ring, fd, b"data", 0, [os.fsencode(tmp_path), os.fsencode(tmp_path)])
        assert res == [-errno.EBADF, -errno.ECANCELED, -errno.ECANCELED, -errno.ECANCELED]
        # the ring carries on: the next chain is independent of the failed one
        wfd = os.open(tmp_path / "seg", os.O_WRONLY)
        try:
            assert run(ring, wfd, b"ok", 0, [os.fsencode(tmp_path)]) == [2, 0, 0]
        finally:
            os.close(wfd)
    finally:
        os.close(fd)
        ring.close()


def test_one_chain_at_a_time(tmp_path: Path) -> None:
    ring = uring.Ring()
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:  # fill the pipe: a write to it now waits for a reader, as on a hung mount
            try:
                os.write(w, b"x" * 65536)
            except BlockingIOError:
                break
        got: list[list[int]] = []
        ring.write_sync_check(w, b"y", 0, [], got.append)
        assert not ring.wait(0.2) and ring.busy and not got, "a write to a full pipe completed"
        with pytest.raises(RuntimeError):
            ring.write_sync_check(w, b"z", 0, [], got.append)
        os.set_blocking(r, False)
        while True:
            try:
                os.read(r, 1 << 20)
            except BlockingIOError:
                break
            if ring.wait(0.01):
                break
        assert ring.wait(5.0), "the write never completed once the pipe was read"
        assert got == [[1, 0]]  # written (a pipe has nothing to sync)
    finally:
        ring.close()
        os.close(r)
        os.close(w)


def test_each_chain_checks_the_paths_it_is_given(tmp_path: Path) -> None:
    """The paths' addresses are kept from one chain to the next (the journal's two never change):
    a chain given other paths stats those, not the last ones."""
    with ring_on_segment(tmp_path) as (ring, fd):
        (tmp_path / "here").touch()
        here, gone = os.fsencode(tmp_path / "here"), os.fsencode(tmp_path / "gone")
        assert run(ring, fd, b"a", 0, (here, gone)) == [1, 0, 0, -errno.ENOENT]
        assert run(ring, fd, b"b", 1, (gone, here)) == [1, 0, -errno.ENOENT, 0]
        assert run(ring, fd, b"c", 2, (gone,)) == [1, 0, -errno.ENOENT]
        assert run(ring, fd, b"d", 3, (here, here)) == [1, 0, 0, 0]
        assert (tmp_path / "seg").read_bytes() == b"abcd"


def test_the_write_is_durable_by_its_own_flag(tmp_path: Path) -> None:
    """The chain has no fdatasync of its own: the write carries RWF_DSYNC (it completes once its
    data is on the disk). Nothing a test here can observe would show a write left in the page
    cache, so the entry the kernel was given is checked."""
    with ring_on_segment(tmp_path) as (ring, fd):
        assert run(ring, fd, b"abc", 0, (os.fsencode(tmp_path),)) == [3, 0, 0]
        write = ring.sqes[0]  # a new ring's first chain starts at slot 0
        assert (write.opcode, write.op_flags, write.len) == (uring.OP_WRITE, uring.RWF_DSYNC, 3)
        assert write.flags & uring.SQE_ASYNC  # never tried inside io_uring_enter: the sync would run on the caller's thread
        assert len([e for e in ring.sqes[:2] if e.opcode == uring.OP_WRITE]) == 1  # one entry for the write and its sync
