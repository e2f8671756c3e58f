"""hsb.worker.Worker: calls run in order on one thread; results and errors come back on the loop."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from hsb.worker import Worker


async def test_call_runs_in_order_off_the_loop_and_answers_on_it() -> None:
    w = Worker("test-worker")
    loop = asyncio.get_running_loop()
    main = threading.get_ident()
    ran: list[tuple[int, int]] = []
    answers: list[tuple[Any, BaseException | None, int]] = []
    done = loop.create_future()

    def job(i: int) -> int:
        ran.append((i, threading.get_ident()))
        if i == 2:
            raise OSError(5, "injected")
        return i * 10

    def answer(res: Any, exc: BaseException | None) -> None:
        answers.append((res, exc, threading.get_ident()))
        if len(answers) == 4:
            done.set_result(None)

    try:
        for i in range(4):
            w.call(functools.partial(job, i), answer)
        await asyncio.wait_for(done, 5)
    finally:
        w.shutdown(wait=True)
    assert [i for i, _ in ran] == [0, 1, 2, 3]
    assert all(t != main for _, t in ran)  # off the loop's thread
    assert [(r, type(e).__name__ if e else None) for r, e, _ in answers] == [(0, None), (10, None), (None, "OSError"), (30, None)]
    assert all(t == main for _, _, t in answers)  # back on it


def gated() -> tuple[threading.Event, threading.Event, Any]:
    """A job that says it started, then waits for the gate (at most 5 s)."""
    gate, started = threading.Event(), threading.Event()

    def job() -> bool:
        started.set()
        return gate.wait(5)

    return gate, started, job


async def test_submit_returns_a_future_and_shutdown_cancels_what_is_queued() -> None:
    w = Worker("test-worker")
    gate, started, first_job = gated()

    first = w.submit(first_job)
    queued = w.submit(lambda: 1)
    assert started.wait(5)
    w.shutdown()
    gate.set()
    assert await asyncio.wrap_future(first) is True
    assert queued.cancelled()


def test_shutdown_waits_a_bounded_time_for_a_call_that_hangs() -> None:
    """A hung mount: the call never returns; closing must not hang with it."""
    import time

    w = Worker("test-worker")
    gate, started = threading.Event(), threading.Event()

    def hangs() -> None:
        started.set()
        gate.wait(10)

    w.submit(hangs)
    assert started.wait(5)
    t0 = time.monotonic()
    assert w.shutdown(wait=True, timeout=0.2) is False
    assert time.monotonic() - t0 < 2.0
    gate.set()
    assert w.shutdown(wait=True, timeout=5.0) is True


def test_calls_come_back_while_the_loop_is_busy() -> None:
    """The thread must win the GIL back after each call, and a uvloop loop running Python
    callbacks back to back starved it for seconds a call (bench/gil_handoff.py): the worker
    gives the GIL away once a turn while a call is out. Counted in the loop's turns, not in time
    (a loaded machine stops the whole process, not only the thread): without the nudges a call
    took thousands of them on the kernel of bench/results/gil_handoff.json. Not on every kernel:
    on 6.18.44-fc-v1272 the thread wins the GIL back within a few turns without them (so this
    fails without them only where the starvation happens; tests/test_worker_uring_mutants.py pins
    the nudges themselves, by count)."""
    import sys
    import time

    import uvloop

    from hsb.loop import SWITCH_INTERVAL

    async def main() -> int:
        loop = asyncio.get_running_loop()
        w = Worker("test-worker")
        stop = False
        turns = 0

        def busy() -> None:  # 50 µs of Python, again and again: the loop never waits for I/O
            nonlocal turns
            turns += 1
            end = time.perf_counter() + 0.00005
            while time.perf_counter() < end:
                pass
            if not stop:
                loop.call_soon(busy)

        loop.call_soon(busy)
        worst = 0
        try:
            for _ in range(40):
                f: asyncio.Future[BaseException | None] = loop.create_future()
                t0 = turns

                def settle(r: Any, e: BaseException | None, f: asyncio.Future[BaseException | None] = f) -> None:
                    f.set_result(e)

                w.call(int, settle)
                assert await asyncio.wait_for(f, 20) is None
                worst = max(worst, turns - t0)
        finally:
            stop = True
            w.shutdown(wait=True)
        return worst

    old = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            worst = r.run(main())
    finally:
        sys.setswitchinterval(old)
    assert worst < 200, f"a call took {worst} turns of the busy loop (50 µs each) to come back"


async def test_a_run_dropped_by_shutdown_raises_and_a_later_one_too() -> None:
    from tests.support.procs import until

    w = Worker("test-worker")
    gate, started, first_job = gated()

    first = asyncio.ensure_future(w.run(first_job))
    second = asyncio.ensure_future(w.run(int))  # queued behind the first
    await until(started.is_set, 5, what="the first call running")
    w.shutdown()
    gate.set()
    assert await asyncio.wait_for(first, 5) is True  # the one running finishes
    with pytest.raises(RuntimeError, match="shut down"):  # the dropped one
        await asyncio.wait_for(second, 5)
    with pytest.raises(RuntimeError):  # after shutdown
        await asyncio.wait_for(w.run(int), 5)


async def test_stop_waits_for_the_thread_without_blocking_the_loop() -> None:
    """stop(): the thread's end awaited, bounded; the loop keeps running meanwhile (a hung disk
    must not freeze a daemon's stop), and a second stop after the call returned says it ended."""
    import time

    from tests.support.ticker import Ticker

    w = Worker("test-worker")
    gate, started, job = gated()
    w.submit(job)
    assert started.wait(5)
    try:
        async with Ticker() as loop_turns:
            t0 = time.monotonic()
            assert await w.stop(timeout=0.2) is False  # the call still hangs
            assert 0.15 < time.monotonic() - t0 < 2.0
        assert loop_turns.ticks >= 10, loop_turns.ticks  # the loop ran on while it waited
        gate.set()
        assert await w.stop(timeout=5.0) is True
        w._thread.join(5)  # it has left its loop: it ends at once
        assert not w._thread.is_alive()
        assert await w.stop(timeout=5.0) is True  # already ended: at once
    finally:
        gate.set()
