"""hsb.worker edges: a submitted call cancelled while it waits in the queue never runs, stop() after
shutdown(), a run() whose waiter left, within()'s timeout and consume()."""

from __future__ import annotations

import threading

from hsb.worker import Worker


def test_a_submitted_call_cancelled_while_queued_never_runs_and_the_next_one_does() -> None:
    w = Worker("test-worker")
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        gate.wait(5)
        ran.append("first")

    try:
        w.submit(first)
        assert started.wait(5)
        cancelled = w.submit(lambda: ran.append("cancelled"))
        assert cancelled.cancel()  # still queued behind `first`: it can be cancelled
        after = w.submit(lambda: ran.append("after"))
        gate.set()
        after.result(5)  # the calls run in order: the cancelled one has been taken off the queue by now
    finally:
        gate.set()
        w.shutdown(wait=True, timeout=5)
    assert ran == ["first", "after"]
    assert cancelled.cancelled()


async def test_stop_after_a_plain_shutdown_says_at_once_that_the_thread_ended() -> None:
    """Nothing runs after the shutdown's end of the queue: stop() must not queue its last call
    behind it and wait out its timeout for an answer that never comes."""
    import time

    w = Worker("test-worker")
    assert w.shutdown(wait=True, timeout=5)
    t0 = time.monotonic()
    assert await w.stop(timeout=3) is True
    assert time.monotonic() - t0 < 2


async def test_a_run_whose_waiter_was_cancelled_answers_without_a_loop_error() -> None:
    import asyncio

    from tests.support.procs import until

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    w = Worker("test-worker")
    gate, started = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        gate.wait(5)
        return 1

    try:
        waiter = asyncio.ensure_future(w.run(slow))
        await until(started.is_set, 5, what="the first call running")
        waiter.cancel()
        gate.set()
        assert await w.run(lambda: 2) == 2  # answered after the cancelled one's answer, in order
    finally:
        gate.set()
        loop.set_exception_handler(None)
        w.shutdown(wait=True, timeout=5)
    assert waiter.cancelled()
    assert errors == []


def test_within_says_whether_the_call_answered_in_time() -> None:
    from hsb.worker import within

    assert within(5, lambda: 7, "test-within") == (True, 7)
    assert within(5, lambda: None, "test-within") == (True, None)
    gate = threading.Event()
    try:
        assert within(0.05, lambda: gate.wait(5), "test-within") == (False, None)  # a look that hangs
    finally:
        gate.set()


async def test_consume_keeps_a_late_failure_from_being_reported_never_retrieved() -> None:
    import asyncio
    import gc

    from hsb.worker import consume

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        failed, cancelled = loop.create_future(), loop.create_future()
        for fut in (failed, cancelled):
            fut.add_done_callback(consume)
        failed.set_exception(OSError("late"))
        cancelled.cancel()
        await asyncio.sleep(0)  # one turn: the done callbacks run
        del failed, cancelled, fut
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert errors == []
