"""hsb.uring's edges: a chain as long as the ring, a completion of a chain given up that must not
answer for the next one, the buffers of a chain given up kept, a ring's descriptors closed once
and only once, the probe agreeing with what a ring runs here, the system-call check, chains in a
row past the completion ring's size, an empty write, a short submission, and a close with a
chain out."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
from pathlib import Path

import pytest

from hsb import uring
from tests.support.uringchain import fill, ring_on_segment, run

WHY = uring.available()
needs_ring = pytest.mark.skipif(WHY is not None, reason=f"this kernel does not run io_uring: {WHY}")


def drain(r: int) -> None:
    os.set_blocking(r, False)
    while True:
        try:
            os.read(r, 1 << 20)
        except BlockingIOError:
            return


def test_a_system_call_that_succeeds_with_0_is_no_error() -> None:
    assert uring._check(0, "io_uring_register") == 0
    assert uring._check(7, "io_uring_setup") == 7


@needs_ring
def test_a_chain_as_long_as_the_ring_runs_and_a_longer_one_is_refused(tmp_path: Path) -> None:
    with ring_on_segment(tmp_path) as (ring, fd):
        (tmp_path / "here").touch()
        here = os.fsencode(tmp_path / "here")
        paths = [here] * (ring.sq_entries - 1)  # the write and a statx in every other slot
        assert run(ring, fd, b"abc", 0, paths) == [3, 0] + [0] * len(paths)
        with pytest.raises(ValueError, match="chain longer than the ring"):
            ring.write_sync_check(fd, b"d", 3, [*paths, here], lambda _: None)
        assert not ring.busy
        assert (tmp_path / "seg").read_bytes() == b"abc"


@needs_ring
def test_a_chain_given_up_keeps_its_buffers_and_its_late_completion_does_not_answer_for_the_next(tmp_path: Path) -> None:
    ring = uring.Ring()
    r, w = os.pipe()
    fd = os.open(tmp_path / "seg", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fill(w)
        data = b"y" * 3
        late: list[list[int]] = []
        ring.write_sync_check(w, data, 0, [], late.append)
        assert not ring.wait(0.05) and ring.busy
        ring.abandon()
        assert not ring.busy
        assert any(isinstance(k, tuple) and k[0] is data for k in uring._abandoned), "the kernel may still read the buffer given up"
        drain(r)  # the chain given up completes now: its completion is posted, not reaped yet
        poller = select.poll()
        poller.register(ring.efd, select.POLLIN)
        assert poller.poll(5000), "the chain given up never completed"
        # the next chain, on the file: its answer is its own write's, not the late pipe write's
        assert run(ring, fd, b"hello", 0, []) == [5, 0]
        assert late == []
        assert (tmp_path / "seg").read_bytes() == b"hello"
    finally:
        ring.close()
        os.close(fd)
        os.close(r)
        os.close(w)


@needs_ring
def test_close_closes_both_descriptors_once_and_a_second_close_touches_no_other_file(tmp_path: Path) -> None:
    ring = uring.Ring()
    mine = (ring.fd, ring.efd)
    for fd in mine:
        os.fstat(fd)
    ring.close()
    for fd in mine:
        with pytest.raises(OSError) as exc:
            os.fstat(fd)
        assert exc.value.errno == errno.EBADF, "a descriptor of the ring left open"
    # the numbers are free again: files opened now may take them, and a second close leaves them be
    opened = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    f = fcntl.fcntl(opened, fcntl.F_DUPFD, 1000)  # (clear of the ring's numbers)
    os.close(opened)
    others = [os.dup2(f, fd) for fd in mine]
    try:
        ring.close()
        for fd in others:
            os.fstat(fd)  # still open
    finally:
        for fd in (f, *others):
            os.close(fd)


def kernel_runs_rings() -> bool:
    """An x86-64 Linux from 5.6 on (IORING_OP_WRITE, IORING_OP_STATX) whose io_uring_setup works."""
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if os.uname().machine != "x86_64" or release < (5, 6):
        return False
    try:
        os.close(uring._check(uring._syscall(uring.NR_SETUP, 1, ctypes.byref(uring._Params())), "io_uring_setup"))
    except OSError:
        return False  # (a seccomp filter)
    return True


def test_the_probe_says_yes_where_a_ring_runs_the_journal_chain(tmp_path: Path) -> None:
    """`available()` (its uncached body) agrees with a ring set up and run here by hand: not
    skipped on what the probe says, since every other test here is."""
    if not kernel_runs_rings():
        pytest.skip("this kernel or CPU runs no io_uring")
    with ring_on_segment(tmp_path) as (ring, fd):
        assert run(ring, fd, b"x", 0, [os.fsencode(os.curdir), b"/nonexistent/hsb-probe"]) == [1, 0, 0, -errno.ENOENT]
    assert uring.available.__wrapped__() is None


@needs_ring
def test_chains_in_a_row_past_the_completion_ring_s_size_all_complete(tmp_path: Path) -> None:
    """Each chain's completions are taken off the completion ring: a ring that kept them would
    fill up after a few group commits and never answer again."""
    with ring_on_segment(tmp_path) as (ring, fd):
        here = os.fsencode(tmp_path)
        for i in range(3 * len(ring.cqes)):  # three completions a chain: the ring round nine times
            assert run(ring, fd, b"z", i, [here, b"/nonexistent/hsb"]) == [1, 0, 0, -errno.ENOENT]
        assert (tmp_path / "seg").read_bytes() == b"z" * (3 * len(ring.cqes))


@needs_ring
def test_an_empty_write_is_a_write_that_completed_and_its_sync_succeeded(tmp_path: Path) -> None:
    with ring_on_segment(tmp_path) as (ring, fd):
        assert run(ring, fd, b"", 0, []) == [0, 0]


@needs_ring
def test_a_short_submission_raises_the_kernel_s_error_and_gives_the_chain_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """io_uring_enter taking fewer entries than the chain has (or none, with an errno): the rest
    would go out with the next chain, so the ring is given up, its buffers kept for the kernel."""
    real = uring._syscall

    def short(*args: object) -> int:
        if getattr(args[0], "value", None) == uring.NR_ENTER:
            return int(real(*args)) - 1  # the kernel took them all; say it took one less

        return int(real(*args))

    def refused(*args: object) -> int:
        if getattr(args[0], "value", None) == uring.NR_ENTER:
            ctypes.set_errno(errno.EBUSY)
            return -1
        return int(real(*args))

    fd = os.open(tmp_path / "seg", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for fake, err, took in ((short, errno.EIO, "1 of 2"), (refused, errno.EBUSY, "-1 of 2")):
            ring = uring.Ring()
            data = os.urandom(4)
            answers: list[list[int]] = []
            monkeypatch.setattr(uring, "_syscall", fake)
            try:
                with pytest.raises(OSError, match=f"io_uring_enter took {took} entries") as exc:
                    ring.write_sync_check(fd, data, 0, [os.fsencode(tmp_path)], answers.append)
                assert exc.value.errno == err
                assert not ring.busy
                assert any(isinstance(k, tuple) and k[0] is data for k in uring._abandoned), "the kernel may still read the buffer"
                assert ring._keep is None
            finally:
                monkeypatch.setattr(uring, "_syscall", real)
                ring.close()
            assert answers == []
    finally:
        os.close(fd)


@needs_ring
def test_closing_a_ring_with_a_chain_out_keeps_the_chain_s_buffers(tmp_path: Path) -> None:
    with ring_on_segment(tmp_path) as (ring, fd):
        data = os.urandom(8)
        answers: list[list[int]] = []
        ring.write_sync_check(fd, data, 0, [os.fsencode(tmp_path)], answers.append)
        ring.close()  # not reaped: for all the ring knows, the kernel still reads `data`
        assert any(isinstance(k, tuple) and k[0] is data for k in uring._abandoned), "the kernel may still read the buffer"
        assert not ring.busy and answers == []
