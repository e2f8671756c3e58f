"""The active host's message path: deliver → service handler → reply+discard.

Messages of one terminal are processed in the order the CP delivered them;
different terminals run concurrently. The reply and the discard of the held
message travel in one frame (docs/design.md), sent only after the handler
returns. No message is handed to the service while the active's lease is not
valid: they wait, in order, until it is renewed (or the link is lost and the
CP re-delivers them to whoever serves next).

A service that raises `ServiceUnavailable` (its database is down, say) keeps the message:
it is handed over again, with backoff, until it is answered, and the terminal's later
messages wait behind it. One that raises `RetryTransaction` (a deadlock, a serialization
failure: its transaction was rolled back) gets the message again after a short random wait,
up to `MAX_COLLISIONS` times in a row, and then as if it were unavailable: a message that
collides is a valid one, which an error reply would discard. `health` says whether the service is answering, for status and
metrics; the message stays held at the CP all along, so nothing is lost if this host dies.

A call that never returns (a hung disk under SQLite's fsync, a database that stopped answering
without an error) raises nothing: the terminal's later messages wait behind it all the same. A
call in progress for longer than `STALLED_AFTER` makes the service "stalled" in `health` (said
once, `service_stalled`, and once its calls are back under it, `service_stall_ended`). It is
only reported: the call is neither abandoned nor made again, either of which could apply its
effect twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from hsb import faults
from hsb.backoff import Backoff
from hsb.service.api import COLLISION_WAIT, MAX_COLLISIONS, SERVING_EPOCH, RetryTransaction, Service, ServiceUnavailable
from hsb.waits import event_within
from hsb.wire.framing import data_size

log = structlog.get_logger("hsb.host")

RETRY_FIRST = 0.05  # seconds before a message the service could not take is handed over again
RETRY_CAP = 2.0
# seconds a call of the service's handle may run before the service counts as stalled. Twice one
# ledger transaction's bound (a pool connection's wait, 5 s, then a statement up to PostgreSQL's
# command_timeout, 10 s; SQLite's busy_timeout, 5 s), so a loaded but healthy database (a full
# pool, a slow statement, a collision's retry on top) does not trip it: a call past it waits on
# something none of those bounds ends (a hung disk, a database that stopped answering)
STALLED_AFTER = 30.0


class ServiceHealth:
    """Whether the service answers: "ok", or "failing" with the last error, since when, and
    how many messages are waiting for it. Failing lasts until the service answers a call.
    Reported "stalled" (unless failing) while a call has run for `stalled_after` or longer."""

    def __init__(self, stalled_after: float = STALLED_AFTER) -> None:
        self.state = "ok"
        self.error: str | None = None
        self.since = time.time()
        self.retries = 0  # hand-overs that the service answered with ServiceUnavailable
        self.waiting: dict[str, Backoff] = {}  # terminals whose next message waits for the service
        self.status_failed: str | None = None  # what the service's own status() raised last (said once)
        self.stalled_after = stalled_after
        # calls of handle in progress: when (monotonic), terminal, id; in the order they started,
        # so the first is the oldest
        self.calls: dict[int, tuple[float, str, int]] = {}
        self._last_call = 0
        self.stalled = False  # service_stalled said, service_stall_ended not yet
        # the next look at the oldest call (a handle holding a weak reference: no cycle through it)
        self._look: asyncio.TimerHandle | None = None

    def call_started(self, terminal: str, mid: int) -> int:
        """A call of handle goes out; its token for `call_ended`."""
        self._last_call += 1
        self.calls[self._last_call] = (time.monotonic(), terminal, mid)
        if self._look is None and not self.stalled:
            self._look_in(self.stalled_after)
        return self._last_call

    def call_ended(self, token: int) -> None:
        self.calls.pop(token, None)
        if self.stalled and self.oldest_call_s() < self.stalled_after:
            self.stalled = False
            log.info("service_stall_ended", calls=len(self.calls), msg="no call of the service has run for stalled_after any more")
            if self.calls and self._look is None:
                self._look_in(self.stalled_after - self.oldest_call_s())

    def _oldest(self) -> tuple[float, str, int] | None:
        return next(iter(self.calls.values()), None)

    def oldest_call_s(self) -> float:
        """How long the oldest call of handle in progress has run (0: none runs)."""
        oldest = self._oldest()
        return 0.0 if oldest is None else time.monotonic() - oldest[0]

    def _look_in(self, delay: float) -> None:
        self._look = asyncio.get_running_loop().call_later(max(delay, 0.0), _look_at, weakref.ref(self))

    def look(self) -> None:
        """The timer's look: the oldest call past the threshold is said once; else look again
        when it would be (a call that ends first is not said)."""
        self._look = None
        if not self.calls or self.stalled:
            return
        age = self.oldest_call_s()
        if age < self.stalled_after:
            self._look_in(self.stalled_after - age)
            return
        self.stalled = True
        first = self._oldest()
        assert first is not None  # (calls is not empty here)
        _, terminal, mid = first
        log.error(
            "service_stalled",
            oldest_call_s=round(age, 3),
            terminal=terminal,
            id=mid,
            calls=len(self.calls),
            msg="a call of the service has not returned: that terminal's later messages wait behind it (left to run, never made again)",
        )

    def failing(self, terminal: str, error: str) -> Backoff:
        """The service could not take `terminal`'s message; the backoff before handing it over again."""
        self.retries += 1
        b = self.waiting.get(terminal)
        if b is None:
            b = self.waiting[terminal] = Backoff(RETRY_FIRST, RETRY_CAP)
        self.error = error
        if self.state != "failing":
            self.state, self.since = "failing", time.time()
            log.error("service_failing", error=error, msg="messages wait (held at the CP) and are retried until the service answers")
        return b

    def answered(self, terminal: str) -> None:
        self.waiting.pop(terminal, None)
        if self.state != "ok" and not self.waiting:
            log.info("service_recovered", after_s=round(time.time() - self.since, 3), retries=self.retries)
            self.state, self.error, self.since = "ok", None, time.time()

    def dropped(self) -> None:
        """Nothing waits for the service here any more (a cancel). Still failing if it was: only
        a call it answers says it recovered (a CP link that flaps while the database is down
        must not set hsb_service_healthy back to 1 between two failed tries)."""
        self.waiting.clear()

    def cleared(self) -> None:
        """This host no longer holds the active role (demoted, fenced, registered as the standby):
        nothing of the service is asked here, so nothing says it fails; the next active's calls
        say how it is (a host active again hours later starts from its own calls, not this)."""
        self.waiting.clear()
        self.state, self.error, self.since = "ok", None, time.time()

    def as_dict(self) -> dict[str, Any]:
        first = self._oldest()
        oldest = 0.0 if first is None else time.monotonic() - first[0]
        state = "stalled" if self.state == "ok" and first is not None and oldest >= self.stalled_after else self.state
        return {
            "state": state,
            "error": self.error,
            "since": self.since,
            "retries": self.retries,
            "waiting_terminals": len(self.waiting),
            "calls_in_progress": len(self.calls),
            "oldest_call_s": round(oldest, 3),
            "oldest_call_terminal": None if first is None else first[1],
            "stalled_after_s": self.stalled_after,
        }

    def report(self, service: Any, name: str) -> dict[str, Any]:
        """The service's status: what it says of itself (its optional `status()`), its name, and
        this view of whether it answers. A `status()` that raises is shown as `status_error` (and
        logged once per change): it took /health, /active, /standby, /metrics and status down."""
        own = getattr(service, "status", None)
        why: str | None = None
        try:
            extra = own() if callable(own) else {}
        except Exception as exc:  # noqa: BLE001 - the service's own bug: the host's view still answers
            why = f"{type(exc).__name__}: {error_text(exc)}"
            extra = {"status_error": why}
        if why != self.status_failed:
            if why is None:
                log.info("service_status_recovered")
            else:
                log.error("service_status_failed", error=why, msg="the service's status() raised: shown as its status_error")
            self.status_failed = why
        # this view last: a service's `status()` naming a key of it (state, retries) must not
        # hide a failing service from hsb_service_healthy and its alert
        return {**(extra if isinstance(extra, dict) else {}), "name": name, **self.as_dict()}


def _look_at(health: weakref.ref[ServiceHealth]) -> None:
    h = health()
    if h is not None:
        h.look()


def being_cancelled() -> bool:
    """The running task is being cancelled (a CancelledError of ours, not one a service raised).
    A function of its own: a local holding the task in `_work`'s frame would make a cycle with
    the traceback a cancelled task keeps."""
    t = asyncio.current_task()
    return t is None or t.cancelling() > 0


class Delivery:
    def __init__(
        self,
        service: Service,
        send: Callable[[dict[str, Any]], bool],
        epoch: Callable[[], int],
        may_handle: Callable[[], bool] = lambda: True,
        max_reply: int | None = None,
        stalled_after: float = STALLED_AFTER,
    ) -> None:
        self.service = service
        # a reply longer than this (bytes, or characters: its frame's size) is not sent: the CP would
        # close the host link for a frame past its limit, and the host, registered again, would be
        # handed the message and send the same reply again, for ever; an error reply goes instead
        self.max_reply = max_reply
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
        # workers cancel() cancelled that have not ended yet (a service that ignores the cancel):
        # the terminal's next worker waits for its one, so that one terminal's messages never
        # reach the service two at a time, nor out of order
        self.ending: dict[str, asyncio.Task[None]] = {}
        self.in_flight = 0
        self.accepting = True  # False once nothing more is taken (`stop_taking`)
        self.idle = asyncio.Event()
        self.idle.set()
        self.counters = {"processed": 0, "redelivered": 0, "errors": 0, "repeats_marked": 0, "transactions_retried": 0}
        self.health = ServiceHealth(stalled_after)
        # each terminal's highest id handed to the service by this process: one handed over again
        # is marked redelivered here, whatever the CP said (a CP that crashed after delivering a
        # message it had not yet made durable gets it again from the terminal as a new one)
        self.handed: dict[str, int] = {}

    def deliver(self, terminal: str, mid: int, data: Any, redelivered: bool) -> None:
        if not self.accepting:  # the host is closing: the CP hands it on to whoever serves next
            return
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
            old = self.ending.get(terminal)
            if old is not None:
                log.warning("delivery_waits_for_cancelled_call", terminal=terminal, msg="the service has not ended a call cancelled before")
                await asyncio.wait([old])
            collided = 0  # RetryTransactions in a row for the message at the head of the queue
            while q:
                if not self.may_handle() and not await self.wait_open():
                    return
                mid, data, redelivered = q[0]  # it leaves the queue only once answered
                if mid <= self.handed.get(terminal, 0):
                    if not redelivered:
                        self.counters["repeats_marked"] += 1
                        log.info("repeat_marked_redelivered", terminal=terminal, id=mid, msg="handed to the service before: marked redelivered")
                    redelivered = True
                else:
                    self.handed[terminal] = mid
                gen0 = self.gen
                try:
                    call = self.health.call_started(terminal, mid)
                    try:
                        SERVING_EPOCH.set(self.epoch())  # (this terminal's task's own context)
                        reply = await self.service.handle(terminal, mid, data, redelivered)
                    finally:
                        self.health.call_ended(call)
                    if not isinstance(reply, (bytes, str)):
                        reply = str(reply)
                except asyncio.CancelledError:
                    if being_cancelled():  # ours (cancel(), a stop): it goes on up
                        raise
                    # the service's own (it awaited something another task cancelled): its error,
                    # answered, or this terminal's queue would stop here for good
                    self.counters["errors"] += 1
                    log.error("service_error", terminal=terminal, id=mid, error="CancelledError (raised by the service, not a cancel of ours)")
                    reply = "error: CancelledError"
                except (RetryTransaction, ServiceUnavailable) as exc:
                    if self.gen != gen0:  # a cancel the service turned into this: not ours any more
                        return
                    why = error_text(exc) or type(exc).__name__
                    if isinstance(exc, RetryTransaction):
                        collided += 1
                        why = f"{collided} transactions in a row rolled back (RetryTransaction): {why}"
                    if isinstance(exc, RetryTransaction) and collided < MAX_COLLISIONS:
                        # rolled back: run again soon, a random wait apart from whatever it met
                        self.counters["transactions_retried"] += 1
                        wait = random.uniform(0, COLLISION_WAIT * collided)
                    else:
                        wait = self.health.failing(terminal, why).next()
                    await asyncio.sleep(wait)  # cancel() cancels this task meanwhile
                    if self.gen != gen0:
                        return
                    # handed over again marked redelivered: the failed try may have had its
                    # effect (a commit whose answer was lost), as a message after a failover may
                    q[0] = (mid, data, True)
                    continue
                except Exception as exc:  # the application's error becomes the reply
                    self.counters["errors"] += 1
                    log.error("service_error", terminal=terminal, id=mid, error=f"{type(exc).__name__}: {error_text(exc)}")
                    reply = f"error: {type(exc).__name__}"
                if self.gen != gen0:  # cancel() came while the service ran, and it would not be cancelled:
                    return  # the CP hands this message on again (marked); this queue is no longer the CP's
                if self.max_reply is not None and len(reply) * 4 > self.max_reply and (size := data_size(reply)) > self.max_reply:
                    self.counters["errors"] += 1
                    log.error("service_reply_too_large", terminal=terminal, id=mid, size=size, max=self.max_reply)
                    reply = (
                        f"error: reply too large to send ({size} bytes > {self.max_reply}); the request may have taken effect:"
                        " raise max_frame on the CP and both hosts"
                    )
                q.popleft()
                collided = 0
                if self.health.state != "ok":
                    self.health.answered(terminal)
                self.counters["processed"] += 1
                if redelivered:
                    self.counters["redelivered"] += 1
                if redelivered:
                    faults.point("host.mid_redelivery")
                faults.point("host.before_reply")
                try:
                    self.send({"t": "reply", "terminal": terminal, "id": mid, "data": reply, "epoch": self.epoch()})
                except UnicodeEncodeError as exc:  # text that is no UTF-8 (a lone surrogate): it cannot go
                    self.counters["errors"] += 1
                    # (not the text itself: the log could not write it either)
                    why = f"{exc.encoding}: {exc.reason} at character {exc.start}"
                    log.error("service_reply_unencodable", terminal=terminal, id=mid, error=why)
                    reply = f"error: reply cannot be encoded ({why}); the request may have taken effect"
                    self.send({"t": "reply", "terminal": terminal, "id": mid, "data": reply, "epoch": self.epoch()})
                self.in_flight -= 1
        except Exception:  # a bug of ours: said loudly (the terminal's messages wait until the link is renewed)
            log.exception("delivery_worker_failed", terminal=terminal, waiting=len(q))
            raise
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
        return await event_within(self.idle, timeout)

    async def calls_ended(self, timeout: float) -> bool:
        """Wait up to `timeout` for the service calls still running to end: those `cancel()`
        cancelled that the service has not ended yet (one that finishes a section it shields
        first, `ending`). False, and said, if some still run then."""
        running = [t for t in self.ending.values() if not t.done()]
        if not running:
            return True
        _, left = await asyncio.wait(running, timeout=max(timeout, 0.0))
        if not left:
            return True
        log.warning(
            "service_calls_outlive_close",
            calls=len(left),
            waited_s=round(max(timeout, 0.0), 3),
            msg="the service did not end calls cancelled at the close in time: it is closed with them still running",
        )
        return False

    def stop_taking(self) -> None:
        """Nothing more goes to the service (the host closes, or its stop's handover may still be
        granted): what is in hand is dropped, the CP hands it on to whoever serves next."""
        self.accepting = False
        self.cancel()

    def cancel(self, role_ended: bool = False) -> None:
        """Drop everything in progress: the CP re-delivers it (marked) to whoever serves next.
        `role_ended`: this host no longer holds the active role (its service health cleared)."""
        self.gen += 1
        self.open.set()  # waiters wake, see the new generation and give up
        if role_ended:
            self.health.cleared()
        else:
            self.health.dropped()  # nothing waits here any more; failing until the service answers
        for name, t in self.workers.items():
            t.cancel()
            self.ending.setdefault(name, t)  # (an older one still running: this one still waits for it)
            t.add_done_callback(lambda t, name=name: self.ending.pop(name, None) if self.ending.get(name) is t else None)  # type: ignore[misc]
        self.workers.clear()
        self.queues.clear()
        self.in_flight = 0
        self.idle.set()


def error_text(exc: BaseException) -> str:
    """An exception's message, or a stand-in if the application's __str__ itself fails: the
    error reply must still go, or that terminal's messages would stop here."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failure of the application's own code
        return "(its message could not be formatted)"
