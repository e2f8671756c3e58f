"""The `journal` service (hsb.service.builtin.JournalService): a reply only once its line is
on disk, and a stop that neither freezes the event loop nor closes the file under a write."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from hsb.service.builtin import JournalService
from tests.support.ticker import Ticker

pytestmark = pytest.mark.timeout(30)


async def test_lines_are_written_before_the_replies(tmp_path: Path) -> None:
    s = JournalService("host-a", journal=str(tmp_path / "j.log"))

    async def one(i: int) -> str:
        reply = await s.handle("T1", i, f"d{i}", i == 2)
        assert f"host-a T1 {i} {int(i == 2)}" in (tmp_path / "j.log").read_text().splitlines()  # on disk already
        return str(reply)

    try:
        replies = await asyncio.gather(*(one(i) for i in range(1, 4)))
        assert replies == ["d1", "d2", "d3"]
        assert (tmp_path / "j.log").read_text().splitlines() == ["host-a T1 1 0", "host-a T1 2 1", "host-a T1 3 0"]
    finally:
        await s.close()
    with pytest.raises(OSError):
        os.fstat(s.fd)  # closed


async def test_each_line_carries_the_epoch_the_host_served_at(tmp_path: Path) -> None:
    """A line said host, terminal, id and mark only: one message's lines on two hosts could not
    be ordered (a first processing marked and a later one unmarked on the other host passed the
    checks). The host's delivery gives the service its epoch at each call (serving_epoch), and
    the line ends with it; without a host there is none, and no fifth field."""
    from hsb.host.delivery import Delivery

    epoch = [5]
    s = JournalService("host-a", journal=str(tmp_path / "j.log"))
    sent: list[dict[str, object]] = []
    d = Delivery(s, lambda m: sent.append(m) or True, lambda: epoch[0])  # type: ignore[func-returns-value]
    try:
        d.deliver("T1", 1, "a", False)
        deadline = time.monotonic() + 10
        while len(sent) < 1:
            assert time.monotonic() < deadline, "no reply"
            await asyncio.sleep(0.01)
        epoch[0] = 7  # (a newer grant)
        d.deliver("T1", 2, "b", True)
        while len(sent) < 2:
            assert time.monotonic() < deadline, "no second reply"
            await asyncio.sleep(0.01)
        await s.handle("T2", 1, "c", False)  # (called outside a host's delivery)
        assert (tmp_path / "j.log").read_text().splitlines() == ["host-a T1 1 0 5", "host-a T1 2 1 7", "host-a T2 1 0"]
    finally:
        d.cancel()
        await s.close()


async def test_close_while_a_write_hangs_keeps_the_file_open_and_the_loop_running(tmp_path: Path) -> None:
    s = JournalService("host-a", journal=str(tmp_path / "j.log"))
    s.close_timeout = 0.3
    gate, started = threading.Event(), threading.Event()
    real = s._append

    def hung(blob: bytes) -> None:  # a disk that does not answer
        started.set()
        gate.wait(10)
        real(blob)

    s._append = hung  # type: ignore[method-assign]
    msg = asyncio.ensure_future(s.handle("T1", 1, "d1", False))
    try:
        deadline = time.monotonic() + 5
        while not started.is_set():
            assert time.monotonic() < deadline, "the write never started"
            await asyncio.sleep(0.005)
        async with Ticker() as loop_turns:
            t0 = time.monotonic()
            await s.close()
            assert time.monotonic() - t0 < 2.0
        assert loop_turns.ticks >= 20, loop_turns.ticks  # the loop was not blocked while close() waited
        os.fstat(s.fd)  # still open: the thread is still in its write
        assert not msg.done()  # and no reply went out for a line not on disk
    finally:
        gate.set()
        msg.cancel()
        assert await s.worker.stop(5.0) is True
        os.close(s.fd)
    assert (tmp_path / "j.log").read_text() == "host-a T1 1 0\n"  # the hung write did complete
