"""What a mutation audit of hsb/worker.py, hsb/uring.py and hsb/bootclock.py found untested: the
worker's GIL nudges (that a call out gets them, how often, that they stop once it answers or the
worker shuts down, one chain of them for a call sent from the last one's answer, on a loop after a closed one), calls raising a BaseException, a shutdown from the
worker's own thread, a submit after a shutdown, within()'s wait; the ring's eventfd read empty after
a reap; the boot clock's unit and source (its offset in a time namespace). And, added since, a
call's own choice of the spin (`spin=False`: the timer only, unless a hurried call is out beside it)."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.worker import Worker, within
from tests.support.procs import until
from tests.test_worker import gated

pytestmark = pytest.mark.timeout(30)


async def loop_runs_for(seconds: float) -> None:
    """An observation window: the loop runs on (and nudges, if a call is out) for `seconds` of its time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    await until(lambda: loop.time() >= end, seconds + 5, interval=0.001, what="the loop's time passing")


def go_out(w: Worker, how: str, job: Any) -> asyncio.Future[Any]:
    """`job` sent to the worker through call(), submit() or run(): its answer as a loop future."""
    loop = asyncio.get_running_loop()
    if how == "call":
        fut: asyncio.Future[Any] = loop.create_future()
        w.call(job, lambda r, e: fut.set_exception(e) if e else fut.set_result(r))
        return fut
    if how == "submit":
        return asyncio.wrap_future(w.submit(job))
    return asyncio.ensure_future(w.run(job))


@pytest.mark.parametrize("how", ["call", "submit", "run"])
async def test_a_call_out_is_nudged_and_the_nudges_stop_once_it_has_answered(how: str) -> None:
    """While a call is out the loop gives the GIL away (counted in `nudges`), whichever way it went
    out; once it has answered, the loop stops doing so (an idle worker must not cost the loop)."""
    w = Worker("test-worker")
    gate, started, job = gated()
    try:
        fut = go_out(w, how, job)
        await until(lambda: w.nudges >= 3, 2, interval=0.001, what="nudges while the call is out")
        gate.set()
        assert await asyncio.wait_for(fut, 5) is True
        n = w.nudges
        await loop_runs_for(0.03)
        assert w.nudges == n, "the loop went on giving the GIL away with no call out"
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_nudges_go_on_while_a_later_call_is_still_out() -> None:
    """Two calls out, the first answered: the second still needs the GIL handed over."""
    w = Worker("test-worker")
    gate, started, job = gated()
    try:
        first = go_out(w, "call", lambda: 1)
        second = go_out(w, "call", job)
        assert await asyncio.wait_for(first, 5) == 1
        await until(started.is_set, 5, interval=0.001, what="the second call running")
        n = w.nudges
        await until(lambda: w.nudges >= n + 3, 2, interval=0.001, what="nudges for the call still out")
        gate.set()
        assert await asyncio.wait_for(second, 5) is True
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_a_call_out_is_nudged_every_loop_turn_for_its_first_spin_s() -> None:
    """For the first `spin_s` of a call out the loop gives the GIL away at every turn (an idle loop
    turns thousands of times in 30 ms), not on a timer (at most 30 times at 1 ms)."""
    w = Worker("test-worker", spin_s=0.5)
    gate, started, job = gated()
    turns = Turns(w)
    try:
        fut = go_out(w, "call", job)
        await until(started.is_set, 5, interval=0.001, what="the call running")
        n0, t0 = w.nudges, turns.n
        await until(lambda: turns.n - t0 >= 300, 5, interval=0.001, what="300 loop turns")  # (turns, not time: a loaded machine turns fewer)
        assert w.nudges - n0 >= 100, (w.nudges - n0, turns.n - t0)
        gate.set()
        await asyncio.wait_for(fut, 5)
    finally:
        turns.on = False
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_the_spin_counts_from_the_oldest_call_out_not_the_newest() -> None:
    """A call out past its spin, and another one going out behind it: the loop stays on its timer
    (a few nudges in 15 ms), it does not spin again for the newcomer (one each turn)."""
    loop = asyncio.get_running_loop()
    w = Worker("test-worker", spin_s=0.02)
    gate, started, job = gated()
    try:
        t0 = loop.time()
        fut = go_out(w, "call", job)
        await until(lambda: loop.time() - t0 >= 0.03, 5, interval=0.001, what="the call out past its spin")
        behind = go_out(w, "call", lambda: 2)
        n = w.nudges
        await loop_runs_for(0.015)
        assert w.nudges - n <= 50, w.nudges - n
        gate.set()
        assert await asyncio.wait_for(fut, 5) is True
        assert await asyncio.wait_for(behind, 5) == 2
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_a_call_out_for_long_is_nudged_ever_more_slowly_down_to_every_50_ms() -> None:
    """spin_s=0: once a millisecond at first, then every tenth of the call's age, but never less
    often than every NUDGE_SLOWEST_S (50 ms): about 40 nudges in the first 200 ms, and 50 ms apart
    once the call is out for 0.8 s (a tenth of its age would be 80 ms)."""
    from hsb.worker import NUDGE_SLOWEST_S

    loop = asyncio.get_running_loop()
    w = Worker("test-worker", spin_s=0)
    gate, started, job = gated()
    try:
        t0 = loop.time()
        fut = go_out(w, "call", job)
        await loop_runs_for(0.2)
        assert 10 <= w.nudges <= 90, w.nudges
        await until(lambda: loop.time() - t0 >= 0.8, 5, interval=0.001, what="the call out for 0.8 s")
        stamps = []
        for _ in range(7):  # the shortest of six gaps: a loaded machine only makes a gap longer
            n = w.nudges
            await until(lambda n=n: w.nudges > n, 2, interval=0.001, what="the next nudge")
            stamps.append(loop.time())
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert NUDGE_SLOWEST_S - 0.01 < min(gaps) < NUDGE_SLOWEST_S + 0.025, gaps
        gate.set()
        await asyncio.wait_for(fut, 5)
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_after_shutdown_the_loop_no_longer_nudges_for_the_call_still_running() -> None:
    """Shut down with a call hung (a dead mount): the loop stops giving the GIL away for it."""
    w = Worker("test-worker")
    gate, started, job = gated()
    try:
        go_out(w, "call", job)
        await until(lambda: w.nudges >= 3, 2, interval=0.001, what="nudges while the call is out")
        w.shutdown()
        n = w.nudges
        await loop_runs_for(0.03)
        assert w.nudges == n
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


def test_a_worker_whose_loop_closed_with_a_call_out_answers_and_nudges_on_the_next_loop() -> None:
    """A call answering into a loop closed meanwhile is dropped, and the thread lives on: the next
    loop's calls are answered, and nudged (what was out on the old loop is forgotten)."""
    w = Worker("test-worker")
    gate, started, job = gated()

    async def first() -> None:
        w.call(job, lambda r, e: None)
        await until(started.is_set, 5, interval=0.001, what="the call running")

    async def second() -> None:
        assert await asyncio.wait_for(w.run(lambda: 7), 5) == 7  # behind the call answering into the closed loop
        gate2, started2, job2 = gated()
        try:
            fut = go_out(w, "call", job2)
            await until(lambda: w.nudges >= 3, 2, interval=0.001, what="nudges on the new loop")
            gate2.set()
            assert await asyncio.wait_for(fut, 5) is True
        finally:
            gate2.set()

    try:
        asyncio.run(first())  # closes its loop with the call still out
        gate.set()
        w.nudges = 0
        asyncio.run(second())
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


class Abort(BaseException):
    """Not an Exception (as KeyboardInterrupt, SystemExit)."""


def abort() -> None:
    raise Abort("injected")


async def test_a_call_that_raises_a_base_exception_answers_with_it_and_the_worker_goes_on() -> None:
    w = Worker("test-worker")
    try:
        with pytest.raises(Abort):
            await asyncio.wait_for(go_out(w, "submit", abort), 5)
        with pytest.raises(Abort):
            await asyncio.wait_for(go_out(w, "call", abort), 5)
        assert await asyncio.wait_for(w.run(lambda: 1), 5) == 1
    finally:
        w.shutdown(wait=True, timeout=5)


def test_shutdown_from_a_call_on_the_worker_s_own_thread_does_not_wait_for_itself() -> None:
    """A call that shuts its worker down (wait=True) gets False at once (the thread still runs it),
    not an error from joining itself."""
    w = Worker("test-worker")
    try:
        assert w.submit(lambda: w.shutdown(wait=True, timeout=5)).result(5) is False
    finally:
        assert w.shutdown(wait=True, timeout=5)


def test_a_submit_queued_after_a_shutdown_is_cancelled_by_the_next_shutdown() -> None:
    """With a call still running, the end of the queue is still in it: a later shutdown cancels
    what was queued behind it too (it would never run)."""
    w = Worker("test-worker")
    gate, started, job = gated()
    try:
        w.submit(job)
        assert started.wait(5)
        w.shutdown()
        late = w.submit(lambda: 1)
        w.shutdown()
        assert late.cancelled()
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)


def test_within_waits_for_a_look_that_takes_a_while() -> None:
    """within() waits up to its timeout for the answer, not only for the thread's start."""
    gate, started = threading.Event(), threading.Event()

    def look() -> str:
        started.set()
        return "late" if gate.wait(5) else "never"

    def open_gate() -> None:
        if started.wait(5):
            gate.set()

    opener = threading.Thread(target=open_gate, daemon=True)
    opener.start()
    try:
        assert within(5, look, "test-within") == (True, "late")
    finally:
        gate.set()
        opener.join(5)


# --- hsb.bootclock


def test_the_boot_clock_counts_seconds_since_the_boot() -> None:
    """boot_now() is /proc/uptime's clock (10 ms steps there), in seconds, and runs at the rate of
    the monotonic clock, with sub-second resolution."""
    from hsb.bootclock import boot_now

    b0 = boot_now()
    up = float(Path("/proc/uptime").read_text().split()[0])
    b1 = boot_now()
    assert b0 - 0.05 <= up <= b1 + 0.05, (b0, up, b1)
    spans = []
    for _ in range(5):  # the best of five: a preemption between two reads widens one span alone
        m0, b0 = time.monotonic(), boot_now()
        while time.monotonic() < m0 + 0.01:  # a span of the monotonic clock, measured by it
            pass
        m1, b1 = time.monotonic(), boot_now()
        spans.append((abs((b1 - b0) - (m1 - m0)), b1 - b0, m1 - m0))
    assert min(spans)[0] < 0.005, spans


def test_the_boot_clock_is_clock_boottime_not_the_monotonic_clock() -> None:
    """A suspend moves CLOCK_BOOTTIME ahead of CLOCK_MONOTONIC; a time namespace whose boot time
    is offset by 10^6 s does the same without one: boot_now() there is that far ahead."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    code = "import time; from hsb.bootclock import boot_now; print(boot_now() - time.monotonic())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run(
        ["unshare", "--time", "--boottime", "1000000", sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20
    )
    if r.returncode != 0 and "unshare failed" in r.stderr:
        pytest.skip(f"no time namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert abs(float(r.stdout) - 1_000_000) < 1, r.stdout


# --- hsb.uring


def test_a_reaped_chain_leaves_the_eventfd_read_empty(tmp_path: Path) -> None:
    """The loop watches the ring's eventfd: once a chain is reaped it must not read as ready, or
    the loop would wake for it again and again."""
    from hsb import uring
    from tests.support.uringchain import ring_on_segment, run

    why = uring.available()
    if why is not None:
        pytest.skip(f"this kernel does not run io_uring: {why}")
    with ring_on_segment(tmp_path) as (ring, fd):
        assert run(ring, fd, b"abc", 0, [os.fsencode(tmp_path)]) == [3, 0, 0]
        poller = select.poll()
        poller.register(ring.efd, select.POLLIN)
        assert poller.poll(0) == []


def test_a_ring_whose_eventfd_registration_fails_leaves_no_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """io_uring_register refused (a seccomp filter, a full descriptor table): Ring() raises the
    kernel's error, and neither the ring's descriptor nor its eventfd is left open."""
    import ctypes
    import errno

    from hsb import uring

    if uring.available() is not None:
        pytest.skip(f"this kernel does not run io_uring: {uring.available()}")
    real = uring._syscall

    def refused(*args: object) -> int:
        if getattr(args[0], "value", None) == uring.NR_REGISTER:
            ctypes.set_errno(errno.EINVAL)
            return -1
        return int(real(*args))

    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(uring, "_syscall", refused)
    with pytest.raises(OSError, match="io_uring_register") as exc:
        uring.Ring()
    monkeypatch.setattr(uring, "_syscall", real)
    assert exc.value.errno == errno.EINVAL
    assert set(os.listdir("/proc/self/fd")) == before, "a descriptor of the ring given up left open"


def test_close_with_its_eventfd_already_gone_still_closes_the_ring() -> None:
    """close() goes on past a descriptor already closed (EBADF): the ring's own is closed too."""
    import errno

    from hsb import uring

    if uring.available() is not None:
        pytest.skip(f"this kernel does not run io_uring: {uring.available()}")
    ring = uring.Ring()
    os.close(ring.efd)
    ring.close()
    with pytest.raises(OSError) as exc:
        os.fstat(ring.fd)
    assert exc.value.errno == errno.EBADF, "the ring's descriptor left open"


class Turns:
    """Counts the loop's turns (a callback that queues itself again at each), and the turn at which
    `w.nudges` was first seen to have moved on since a mark."""

    def __init__(self, w: Worker) -> None:
        self.w, self.n, self.on = w, 0, True
        self.seen: list[tuple[int, int]] = []  # (turn, nudges) each time the count changed
        self._last = w.nudges
        self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.n += 1
        if self.w.nudges != self._last:
            self._last = self.w.nudges
            self.seen.append((self.n, self._last))
        if self.on:
            self._loop.call_soon(self._tick)


async def test_a_call_sent_from_the_last_one_s_answer_is_nudged_once_a_turn_not_twice() -> None:
    """The next call goes out from the answer of the last one (as the journal's next group commit):
    the nudge still queued for the last one is cancelled, so one nudge a loop turn while spinning
    (a leftover nudge would run alongside the new one: two a turn)."""
    w = Worker("test-worker", spin_s=0.5)
    gate, started, job = gated()
    loop = asyncio.get_running_loop()
    second: asyncio.Future[Any] = loop.create_future()
    turns = Turns(w)
    try:
        w.call(lambda: 1, lambda r, e: w.call(job, lambda r, e: second.set_result(r)))
        await until(started.is_set, 5, interval=0.001, what="the second call running")
        n0, t0 = w.nudges, turns.n
        await until(lambda: turns.n - t0 >= 300, 5, interval=0.001, what="300 loop turns")
        nudged, turned = w.nudges - n0, turns.n - t0
        assert nudged <= turned * 1.25 + 2, (nudged, turned)
        gate.set()
        assert await asyncio.wait_for(second, 5) is True
    finally:
        turns.on = False
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_a_call_sent_from_the_answer_of_one_out_for_long_is_nudged_at_the_next_turn() -> None:
    """The last call was out long (its nudges a timer apart): the next one, sent from its answer,
    starts its own nudges at the next loop turn, not at the last call's timer."""
    loop = asyncio.get_running_loop()
    w = Worker("test-worker", spin_s=0)
    gate, started, job = gated()
    gate2, started2, job2 = gated()
    second: asyncio.Future[Any] = loop.create_future()
    sent: list[int] = []
    turns = Turns(w)

    def send_next(r: Any, e: BaseException | None) -> None:
        sent.append(turns.n)
        w.call(job2, lambda r, e: second.set_result(r))

    try:
        t0 = loop.time()
        w.call(job, send_next)
        await until(lambda: loop.time() - t0 >= 0.05, 5, interval=0.001, what="the first call out for 50 ms (its nudges ~5 ms apart)")
        gate.set()
        await until(lambda: sent and turns.seen and turns.seen[-1][0] > sent[0], 2, interval=0.001, what="a nudge for the second call")
        first_after = next(turn for turn, _ in turns.seen if turn > sent[0])
        assert first_after - sent[0] <= 3, (sent[0], turns.seen[-3:])
        gate2.set()
        assert await asyncio.wait_for(second, 5) is True
    finally:
        turns.on = False
        gate.set()
        gate2.set()
        w.shutdown(wait=True, timeout=5)


async def test_a_call_out_without_spin_is_nudged_on_the_timer_only() -> None:
    """A call sent with `spin=False` (the standby's ring reads) gets the GIL nudges on the 1 ms
    timer even in its first `spin_s`: at most one a millisecond of the loop's time, not one every
    turn (which kept an idle standby's loop spinning)."""
    loop = asyncio.get_running_loop()
    w = Worker("test-worker", spin_s=0.5)
    gate, started, job = gated()
    turns = Turns(w)
    try:
        fut = asyncio.wrap_future(w.submit(job, spin=False))
        await until(started.is_set, 5, interval=0.001, what="the call running")
        n0, t0, s0 = w.nudges, turns.n, loop.time()
        await until(lambda: turns.n - t0 >= 300, 5, interval=0.001, what="300 loop turns")
        ms = (loop.time() - s0) * 1000
        assert w.nudges - n0 <= ms + 2, (w.nudges - n0, ms, turns.n - t0)  # one a ms at most, however many turns
        assert not fut.done()
        n1 = w.nudges
        await loop_runs_for(0.02)
        assert w.nudges > n1, "a call out without spin is still nudged, on the timer"
        gate.set()
        assert await asyncio.wait_for(fut, 5) is True
    finally:
        turns.on = False
        gate.set()
        w.shutdown(wait=True, timeout=5)


async def test_a_call_that_wants_the_spin_spins_beside_one_that_does_not() -> None:
    """A call without spin out, then one that wants it behind it: the loop spins again (every
    turn) for the rest of the first call's `spin_s`: a hurried caller is not slowed by a lazy one.
    (`spin_s` long enough that 300 turns of a loaded machine's loop stay within it: at 0.5 s the
    spin ended part way in a full suite on two busy cores, 98 nudges for 300 turns)"""
    w = Worker("test-worker", spin_s=5.0)
    gate, started, job = gated()
    turns = Turns(w)
    try:
        lazy = asyncio.wrap_future(w.submit(job, spin=False))
        await until(started.is_set, 5, interval=0.001, what="the call running")
        hurried = asyncio.wrap_future(w.submit(lambda: 2))
        n0, t0 = w.nudges, turns.n
        await until(lambda: turns.n - t0 >= 300, 5, interval=0.001, what="300 loop turns")
        assert w.nudges - n0 >= 100, (w.nudges - n0, turns.n - t0)
        gate.set()
        assert await asyncio.wait_for(lazy, 5) is True
        assert await asyncio.wait_for(hurried, 5) == 2
    finally:
        turns.on = False
        gate.set()
        w.shutdown(wait=True, timeout=5)
