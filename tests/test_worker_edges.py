"""hsb.worker.Worker edges: a submitted call cancelled while it waits in the queue never runs."""

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
