"""The active host's message path: deliver → service handler → reply+discard.

Messages of one terminal are processed in the order the CP delivered them;
different terminals run concurrently. The reply and the discard of the held
message travel in one frame (docs/design.md), sent only after the handler
returns. No message is handed to the service while the active's lease is not
valid: they wait, in order, until it is renewed (or the link is lost and the
CP re-delivers them to whoever serves next).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from hsb import faults
from hsb.host.service import Service

log = structlog.get_logger("hsb.host")


class Delivery:
    def __init__(
        self,
        service: Service,
        send: Callable[[dict[str, Any]], bool],
        epoch: Callable[[], int],
        may_handle: Callable[[], bool] = lambda: True,
    ) -> None:
        self.service = service
        self.send = send
        self.epoch = epoch
        # Whether a message may be handed to the service now (the active's lease is valid):
        # checked before each one; while it is not, deliveries wait here, in order.
        self.may_handle = may_handle
        self.open = asyncio.Event()
        self.open.set()
        self.gen = 0  # bumped by cancel(): waiters of an older generation give up
        self.queues: dict[str, deque[tuple[int, Any, bool]]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.in_flight = 0
        self.accepting = True
        self.idle = asyncio.Event()
        self.idle.set()
        self.counters = {"processed": 0, "redelivered": 0, "errors": 0}

    def deliver(self, terminal: str, mid: int, data: Any, redelivered: bool) -> None:
        q = self.queues.get(terminal)
        if q is None:
            q = self.queues[terminal] = deque()
        q.append((mid, data, redelivered))
        self.in_flight += 1
        self.idle.clear()
        if terminal not in self.workers:
            self.workers[terminal] = asyncio.get_running_loop().create_task(self._work(terminal, q))

    async def _work(self, terminal: str, q: deque[tuple[int, Any, bool]]) -> None:
        try:
            while q:
                if not self.may_handle() and not await self.wait_open():
                    return
                mid, data, redelivered = q.popleft()
                try:
                    reply = await self.service.handle(terminal, mid, data, redelivered)
                    if not isinstance(reply, (bytes, str)):
                        reply = str(reply)
                except Exception as exc:  # the application's error becomes the reply
                    self.counters["errors"] += 1
                    log.error("service_error", terminal=terminal, id=mid, error=f"{type(exc).__name__}: {exc}")
                    reply = f"error: {type(exc).__name__}"
                self.counters["processed"] += 1
                if redelivered:
                    self.counters["redelivered"] += 1
                if redelivered:
                    faults.point("host.mid_redelivery")
                faults.point("host.before_reply")
                self.send({"t": "reply", "terminal": terminal, "id": mid, "data": reply, "epoch": self.epoch()})
                self.in_flight -= 1
        finally:
            # no local holding the task: a cancelled task's traceback keeps this frame alive
            if self.workers.get(terminal) is asyncio.current_task():  # a cancel may have replaced us
                del self.workers[terminal]
                if not q and self.queues.get(terminal) is q:
                    del self.queues[terminal]
            if self.in_flight <= 0:
                self.in_flight = 0
                self.idle.set()

    async def wait_open(self) -> bool:
        """Wait until messages may be handed to the service again; False if cancel() came first."""
        gen = self.gen
        while not self.may_handle():
            self.open.clear()
            await self.open.wait()
            if self.gen != gen:
                return False
        return True

    def reopen(self) -> None:
        """The lease is valid again: what waited goes on, in order."""
        self.open.set()

    async def drain(self, timeout: float) -> bool:
        """Wait for the messages in progress to be answered; False if the timeout passed."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def cancel(self) -> None:
        """Drop everything in progress: the CP re-delivers it (marked) to whoever serves next."""
        self.gen += 1
        self.open.set()  # waiters wake, see the new generation and give up
        for t in list(self.workers.values()):
            t.cancel()
        self.workers.clear()
        self.queues.clear()
        self.in_flight = 0
        self.idle.set()
