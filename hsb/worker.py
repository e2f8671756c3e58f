"""One daemon thread that runs submitted calls in order, for blocking file I/O off the event loop
(the takeover file's store, the CP journal's group commit).

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a hung mount would hang
the exit. And `call()` hands its result straight back to the loop (one `call_soon_threadsafe`),
without the two futures that `run_in_executor` chains: that costs about 50 µs of CPU a call under
uvloop on this project's machine, against about 17 µs here, and the CP pays it once per group commit.

The GIL: a thread that finishes a blocking call must win the GIL back, and an event loop that
is busy (it gives the GIL up around each poll and takes it straight back) starves it: measured
here, a no-op call took seconds to come back while the loop ran Python callbacks back to back
(bench/gil_handoff.py), so a busy CP's group commits, and with them its acknowledgements, waited
for the loop to go idle. While a call is out, the loop therefore gives the GIL away once a turn
(`time.sleep(0)`, which lets the waiting thread take it): every turn for the first
NUDGE_SPIN_S, then once every NUDGE_EVERY_S, slowing to NUDGE_SLOWEST_S for a call out long (a
hung mount), so that such a call does not keep the loop spinning. A worker whose calls come back
to back (the SQLite ledger's transactions) is made with `spin_s=0`: spinning through every call
cost its host more CPU per transaction than it gained (bench/sqlite_ledger.py). A call whose answer
nobody waits for in a hurry goes out with `spin=False` (the standby's ring reads, twenty a second
at rest: without their spin an idle standby wakes 28 % less often, BENCHMARKS.md session 57): no
spin for it, the timer only, unless a call that wants the spin is out beside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Done = Callable[[Any, BaseException | None], None]

NUDGE_SPIN_S = 0.002  # a call out for less than this: the loop gives the GIL away every turn
NUDGE_EVERY_S = 0.001  # ... and after that once a millisecond
NUDGE_SLOWEST_S = 0.05  # ... slowing down to this for a call out for long (a hung mount)


class Worker:
    def __init__(self, name: str, spin_s: float = NUDGE_SPIN_S) -> None:
        self.spin_s = spin_s  # a call out for less than this: the loop gives the GIL away every turn
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], cf.Future[Any] | tuple[asyncio.AbstractEventLoop, Done]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        self._out = 0  # calls from the event loop not answered yet (touched on the loop only)
        self._since = 0.0  # when the oldest of them went out (loop time)
        self._spin = True  # one of them wants the spin (`spin=True`)
        self._nudge_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.nudges = 0
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None  # stop()'s last call answered

    def submit(self, fn: Callable[[], T], spin: bool = True) -> cf.Future[T]:
        """Run `fn` on the thread; its outcome in a concurrent future. `spin`: see the module docstring."""
        fut: cf.Future[T] = cf.Future()
        self._q.put((fn, fut))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return fut  # from a thread without a loop: nothing to give the GIL away
        self._went_out(loop, spin)
        fut.add_done_callback(lambda _: self._answer_soon(loop))
        return fut

    def _answer_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._answered)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _went_out(self, loop: asyncio.AbstractEventLoop, spin: bool = True) -> None:
        if loop is not self._loop:  # one loop at a time (a test's next loop): what was out on the old one is gone
            self._loop, self._out, self._nudge_handle = loop, 0, None
        if self._out == 0:
            self._since, self._spin = loop.time(), spin
        else:
            self._spin = self._spin or spin  # (still counted from the oldest call out)
        self._out += 1
        if self._nudge_handle is None:
            self._nudge_handle = loop.call_soon(self._nudge, loop)

    def _answered(self) -> None:
        self._out -= 1
        if self._out <= 0 and self._nudge_handle is not None:
            self._nudge_handle.cancel()
            self._nudge_handle = None

    def _nudge(self, loop: asyncio.AbstractEventLoop) -> None:
        self._nudge_handle = None
        if self._out <= 0 or self._closed:
            return
        time.sleep(0)  # the GIL given up and taken back: the thread waiting for it gets it now
        self.nudges += 1
        age = loop.time() - self._since
        if age < self.spin_s and self._spin:
            self._nudge_handle = loop.call_soon(self._nudge, loop)
        else:  # once a millisecond, and slower for a call hung on dead storage (a tenth of its age)
            self._nudge_handle = loop.call_later(min(NUDGE_SLOWEST_S, max(NUDGE_EVERY_S, age / 10)), self._nudge, loop)

    def call(self, fn: Callable[[], Any], done: Done) -> None:
        """Run `fn` on the thread, then `done(result, None)` or `done(None, exception)` on the
        running event loop (never if that loop has closed meanwhile)."""
        loop = asyncio.get_running_loop()
        self._q.put((fn, (loop, done)))
        self._went_out(loop)

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
                loop.call_soon_threadsafe(self._reply, done, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting any more
                pass

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the thread and wait for its outcome (`run_in_executor` without the
        executor: the loop gives the GIL away while it waits, see the module docstring).
        Cancelling the wait does not stop `fn`, even one still queued (a run_in_executor item
        would not have run). After `shutdown()`, and for a call that shutdown drops: RuntimeError."""
        if self._closed:
            raise RuntimeError("worker shut down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.call(fn, _Settle(fut))
        return await fut

    def _reply(self, done: Done, result: Any, error: BaseException | None) -> None:
        self._answered()
        done(result, error)

    def shutdown(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Cancel what is queued (a queued `call()` then never answers, a `run()` raises); the thread ends after the
        call it is running, if any. `wait`: wait for that call, `timeout` seconds at most (a hung
        mount must not hang the caller). True once the thread has ended."""
        self._end_queue()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _end_queue(self, last: tuple[Callable[[], Any], tuple[asyncio.AbstractEventLoop, Done]] | None = None) -> None:
        """Drop what is queued, then queue `last` (if given) and the thread's end."""
        self._closed = True  # what is queued is dropped: no more giving the GIL away for it
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                continue
            to = item[1]
            if isinstance(to, cf.Future):
                to.cancel()
            elif isinstance(to[1], _Settle):
                loop, done = to  # a run(): its waiter must not wait forever
                try:
                    loop.call_soon_threadsafe(self._reply, done, None, RuntimeError("worker shut down"))
                except RuntimeError:
                    pass
        if last is not None:
            self._q.put(last)
        self._q.put(None)

    async def stop(self, timeout: float) -> bool:
        """As `shutdown()`, then wait for the call running to finish, `timeout` seconds at most,
        without blocking the event loop (`shutdown(wait=True)` would block it for as long). True
        once no call runs any more: only then may the caller close what the calls used. A no-op
        call queued last says so, answered through the loop as every call is; a later stop()
        waits for the same one. After a plain `shutdown()`: whether the thread has ended."""
        if self._stopped is None:
            if self._closed:
                return not self._thread.is_alive()
            loop = asyncio.get_running_loop()
            self._stopped = loop.create_future()
            self._went_out(loop)
            self._end_queue(last=(_nothing, (loop, _Settle(self._stopped))))
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        except TimeoutError:
            return False
        return True


def _nothing() -> None:
    return None


class _Settle:
    """A `run()`'s answer: settles its future (unless the waiter was cancelled). A class of its
    own so that `shutdown()` can tell the calls it must answer from those that never answer."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def __call__(self, result: Any, error: BaseException | None) -> None:
        if self.fut.done():
            return
        if error is not None:
            self.fut.set_exception(error)
        else:
            self.fut.set_result(result)


def within(timeout: float, fn: Callable[[], T], name: str) -> tuple[bool, T | None]:
    """`fn()` on a daemon thread of its own: (True, its answer), or (False, None) after `timeout`
    seconds (a thread stuck on a hung mount or a dead resolver is left behind; it holds nothing
    the process needs). For the one-off looks of a start or a config check; `fn` catches its own
    errors (one raised is lost with its thread, and reads as no answer)."""
    box: list[T] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True, name=name)
    t.start()
    t.join(timeout)
    return (True, box[0]) if box else (False, None)


def consume(fut: asyncio.Future[Any]) -> None:
    """A done callback reading a future's exception: one left after a timeout or a shutdown that
    fails later is not reported "never retrieved" at the loop's close."""
    if not fut.cancelled():
        fut.exception()
