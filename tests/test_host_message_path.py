"""The host's message path at its edges, in-process (hsb.host.delivery, hsb.host.sessions_ctl):
nothing is handed to the service once the host stopped taking messages, and the checks a
mutation audit of the path found no test for."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.host.delivery import Delivery

pytestmark = pytest.mark.timeout(30)


class Recording:
    """Answers every message at once; records (terminal, id, redelivered) of each hand-over."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls.append((terminal, message_id, redelivered))
        return f"ok {message_id}"


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_delivery_after_the_host_stopped_taking_messages_reaches_neither_the_service_nor_the_cp() -> None:
    """stop_taking (the host closes, or its stop's handover may be granted): a deliver that still
    arrives is left to the CP, which hands it on to whoever serves next. Handed over here it
    would take effect, its reply lost, and again at the next host."""
    svc = Recording()
    sent: list[dict[str, Any]] = []
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 1, "x", False)
    await _until(lambda: sent, "the reply to 1")
    d.stop_taking()
    d.deliver("T1", 2, "y", False)
    d.deliver("T2", 1, "z", True)
    assert not d.workers and not d.queues, "a message was taken after stop_taking"
    assert d.in_flight == 0 and d.idle.is_set()
    assert await d.drain(1.0)
    assert svc.calls == [("T1", 1, False)] and [m["id"] for m in sent] == [1]


async def test_each_message_has_its_own_count_of_collisions() -> None:
    """A message answered after collisions does not pass its count on to the next one of its
    terminal: each may collide MAX_COLLISIONS - 1 times in a row and still run again at once,
    not be held as the service failing (backoff, hsb_service_healthy 0) for another's."""
    from hsb.service.api import MAX_COLLISIONS, RetryTransaction

    tries: dict[int, int] = {}

    class CollidesEach:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            tries[message_id] = tries.get(message_id, 0) + 1
            if tries[message_id] < MAX_COLLISIONS:
                raise RetryTransaction("deadlock detected")
            return f"done {message_id}"

    sent: list[dict[str, Any]] = []
    d = Delivery(CollidesEach(), lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    d.deliver("T1", 6, "y", False)
    await _until(lambda: len(sent) == 2, "the replies to 5 and 6")
    assert [(m["id"], m["data"]) for m in sent] == [(5, "done 5"), (6, "done 6")]
    assert d.counters["transactions_retried"] == 2 * (MAX_COLLISIONS - 1)
    assert d.health.retries == 0 and d.health.state == "ok"


async def test_no_message_goes_to_the_service_while_the_lease_is_not_valid() -> None:
    """The active's lease lapsed (its CP's answers late): deliveries wait, in order, and go on once
    it is renewed. Handed over meanwhile, a message could take effect on a host the CP may already
    have failed over from."""
    svc = Recording()
    sent: list[dict[str, Any]] = []
    valid = False
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1, may_handle=lambda: valid)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 1, "x", False)
    d.deliver("T1", 2, "y", False)
    d.deliver("T2", 1, "z", False)
    await _until(lambda: not d.open.is_set(), "the deliveries waiting for the lease", timeout=3.0)
    assert svc.calls == [] and sent == [] and d.in_flight == 3
    valid = True
    d.reopen()
    await _until(lambda: len(sent) == 3, "the three replies")
    assert [c for c in svc.calls if c[0] == "T1"] == [("T1", 1, False), ("T1", 2, False)]
    assert sorted((m["terminal"], m["id"]) for m in sent) == [("T1", 1), ("T1", 2), ("T2", 1)]


async def test_a_wait_for_the_lease_gives_up_at_a_cancel() -> None:
    """wait_open (a logon's wait for the lease, hsb.host.sessions_ctl) ends False at cancel() (the
    CP link lost, demoted): the request it waits for belongs to a link that is gone, and the
    logon must not run for it once a new lease comes."""
    d = Delivery(Recording(), lambda m: True, lambda: 1, may_handle=lambda: False)  # type: ignore[arg-type]
    waiter = asyncio.get_running_loop().create_task(d.wait_open())
    await _until(lambda: not d.open.is_set(), "the wait for the lease", timeout=3.0)
    d.cancel()
    assert await asyncio.wait_for(waiter, 3.0) is False


async def test_a_cancel_of_ours_during_a_call_is_no_error_of_the_service() -> None:
    """cancel() while the service works on a message (the CP link lost): the call ends cancelled,
    nothing is answered and nothing counted as the service's error (hsb_service_errors_total and a
    service_error line would blame the application for the host's own cancel)."""
    started = asyncio.Event()

    class Slow:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            started.set()
            await asyncio.sleep(30)
            return "late"

    sent: list[dict[str, Any]] = []
    d = Delivery(Slow(), lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await asyncio.wait_for(started.wait(), 5)
    worker = d.workers["T1"]
    d.cancel()
    await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), 5)
    assert worker.cancelled(), "the cancel did not go on up through the worker"
    assert sent == [] and d.counters["errors"] == 0 and d.counters["processed"] == 0


def _frames_ctl(granted: bool) -> tuple[Any, list[tuple[str, int, Any, bool]]]:
    """A SessionsCtl whose deliveries are recorded, as the host link hands it the CP's frames."""
    from types import SimpleNamespace

    from hsb.host.sessions_ctl import SessionsCtl

    handed: list[tuple[str, int, Any, bool]] = []
    srv: Any = SimpleNamespace(
        sessions=None,
        ha=SimpleNamespace(granted=granted),
        delivery=SimpleNamespace(deliver=lambda *a: handed.append(a)),
    )
    return SessionsCtl(srv), handed


def test_the_cps_deliveries_reach_the_delivery_with_their_redelivered_mark() -> None:
    """Each `deliver` and each item of a `deliver_batch` (a flip's re-delivery) goes on with the
    CP's redelivered mark as it came: a message the CP hands on after a failover, processed
    unmarked, could apply its effect twice."""
    c, handed = _frames_ctl(granted=True)
    assert c.on_cp_frame({"t": "deliver", "terminal": "T1", "id": 3, "data": "a", "redelivered": True})
    assert c.on_cp_frame({"t": "deliver", "terminal": "T1", "id": 4, "data": "b"})
    items = [["T2", 7, "c", True], ["T3", 1, "d", False], ["T2", 8, "e", True]]
    assert c.on_cp_frame({"t": "deliver_batch", "items": items})
    assert handed == [("T1", 3, "a", True), ("T1", 4, "b", False), ("T2", 7, "c", True), ("T3", 1, "d", False), ("T2", 8, "e", True)]


def test_no_delivery_is_taken_by_a_host_the_cp_has_not_granted_the_active_role() -> None:
    """A `deliver` that reaches a host not (or no longer) granted the active role (demoted, a
    frame sent before the CP heard of it): not handed to its service, the CP hands it on again."""
    c, handed = _frames_ctl(granted=False)
    assert c.on_cp_frame({"t": "deliver", "terminal": "T1", "id": 3, "data": "a", "redelivered": True})
    assert c.on_cp_frame({"t": "deliver_batch", "items": [["T2", 7, "c", False]]})
    assert handed == []


@pytest.mark.parametrize("mid", [0, -1, True, 1.0, "1"])
def test_a_delivery_with_an_id_the_cp_could_not_have_is_refused_whole(mid: Any) -> None:
    """Ids are positive integers (the CP numbers each terminal's messages from 1): anything else is
    the link's protocol error, and a batch holding one delivers none of its items."""
    c, handed = _frames_ctl(granted=True)
    with pytest.raises((TypeError, ValueError)):
        c.on_cp_frame({"t": "deliver", "terminal": "T1", "id": mid, "data": "a"})
    with pytest.raises((TypeError, ValueError)):
        c.on_cp_frame({"t": "deliver_batch", "items": [["T1", 1, "a", False], ["T1", mid, "b", False]]})
    assert handed == []


async def test_a_drain_cancelled_as_the_replies_finish_ends_cancelled() -> None:
    """A stop cancels the HA loop while it waits in drain(), in the same turn as the last reply
    makes the delivery idle: the cancellation must end the wait. asyncio.wait_for on Python 3.11
    returned the result instead, the loop went on, and a test's teardown (or a stop that awaits
    the loop) waited for ever."""
    d = Delivery(Recording(), lambda m: True, lambda: 1)  # type: ignore[arg-type]
    d.idle.clear()  # (a message in progress)
    waiter = asyncio.get_running_loop().create_task(d.drain(5.0))
    await asyncio.sleep(0)  # (waiting in drain)
    d.idle.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
