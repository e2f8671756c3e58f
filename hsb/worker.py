"""One daemon thread that runs submitted calls in order, for blocking file I/O off the event loop
(the takeover file's store, the CP journal's group commit).

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a hung mount would hang
the exit. And `call()` hands its result straight back to the loop (one `call_soon_threadsafe`),
without the two futures that `run_in_executor` chains: that costs about 50 µs of CPU a call under
uvloop on this project's machine, against about 17 µs here, and the CP pays it once per group commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Done = Callable[[Any, BaseException | None], None]


class Worker:
    def __init__(self, name: str) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any] | tuple[asyncio.AbstractEventLoop, Done]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> cf.Future[T]:
        """Run `fn` on the thread; its outcome in a concurrent future."""
        fut: cf.Future[T] = cf.Future()
        self._q.put((fn, fut))
        return fut

    def call(self, fn: Callable[[], Any], done: Done) -> None:
        """Run `fn` on the thread, then `done(result, None)` or `done(None, exception)` on the
        running event loop (never if that loop has closed meanwhile)."""
        self._q.put((fn, (asyncio.get_running_loop(), done)))

    def _work(self) -> None:
        while (item := self._q.get()) is not None:
            fn, to = item
            if isinstance(to, cf.Future):
                if not to.set_running_or_notify_cancel():
                    continue  # cancelled while queued: never runs
                try:
                    to.set_result(fn())
                except BaseException as exc:
                    to.set_exception(exc)
                continue
            loop, done = to
            try:
                result, error = fn(), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting any more
                pass

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Cancel what is queued (a queued `call()` then never answers); the thread ends after the
        call it is running, if any. `wait`: wait for that call, `timeout` seconds at most (a hung
        mount must not hang the caller). True once the thread has ended."""
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None and isinstance(item[1], cf.Future):
                item[1].cancel()
        self._q.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
