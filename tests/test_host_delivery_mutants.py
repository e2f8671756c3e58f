"""The active host's message path (hsb/host/delivery.py), its session table
(hsb/host/sessions.py) and the handed ids it names to a CP (hsb/host/sessions_ctl.py),
in-process, each test naming a behaviour that a mutation audit of the modules found no test for:
the idle flag while a message is in hand, the serving epoch a service reads, the reply's own
fields and its size limit, the counters, the wait for the lease that a wake-up alone does not
end, the cancelled calls a terminal's next worker waits for, the messages kept after a worker
failed, the service's failing and stalled states, the fast-switch link's count, and the `adopt`
frames' size."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.host.delivery import Delivery, ServiceHealth
from hsb.host.sessions import SessionTable
from hsb.service.api import serving_epoch
from hsb.terminals import TerminalDef

pytestmark = pytest.mark.timeout(30)


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _turns(n: int = 20) -> None:
    """Let the loop run `n` turns (for a negative: what must not happen has had its chance)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Gated:
    """Holds every call until `gate` is set; records (id, redelivered, serving epoch) of each and
    answers `reply(id)`."""

    def __init__(self, reply: Any = lambda mid: f"ok {mid}") -> None:
        self.gate = asyncio.Event()
        self.calls: list[tuple[int, bool, int | None]] = []
        self.reply = reply

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls.append((message_id, redelivered, serving_epoch()))
        await self.gate.wait()
        return self.reply(message_id)


def _delivery(service: Any, sent: list[dict[str, Any]], **kw: Any) -> Delivery:
    return Delivery(service, lambda m: sent.append(m) or True, kw.pop("epoch", lambda: 7), **kw)  # type: ignore[func-returns-value]


async def test_a_message_in_the_services_hands_keeps_the_delivery_busy_until_answered() -> None:
    """`drain` (a planned switchover's and a stop's wait for the messages in progress) must not
    say idle while the service still holds a message: its reply would go after the handover."""
    svc = Gated()
    sent: list[dict[str, Any]] = []
    d = _delivery(svc, sent)
    d.deliver("T1", 1, "x", False)
    assert not d.idle.is_set()
    await _until(lambda: svc.calls, "the call")
    assert not await d.drain(0.0)
    svc.gate.set()
    assert await d.drain(5.0)
    assert [m["id"] for m in sent] == [1]


async def test_the_service_reads_the_serving_epoch_and_the_reply_carries_it() -> None:
    """The service's `serving_epoch()` (its fence against a deposed active's writes) is the
    epoch this host serves under, and the reply goes with it, to its terminal, with its id."""
    svc = Gated()
    svc.gate.set()
    sent: list[dict[str, Any]] = []
    d = _delivery(svc, sent, epoch=lambda: 42)
    d.deliver("T9", 3, "x", False)
    await _until(lambda: sent, "the reply")
    assert svc.calls == [(3, False, 42)]
    assert sent == [{"t": "reply", "terminal": "T9", "id": 3, "data": "ok 3", "epoch": 42}]


async def test_a_reply_that_is_neither_text_nor_bytes_goes_as_its_text() -> None:
    """A handler returning a number (or any object): its str() is the reply, not the object,
    which the frame's encoder may not take and which is no reply a terminal can read."""
    svc = Gated(reply=lambda mid: mid * 10)
    svc.gate.set()
    sent: list[dict[str, Any]] = []
    d = _delivery(svc, sent)
    d.deliver("T1", 4, "x", False)
    await _until(lambda: sent, "the reply")
    assert sent[0]["data"] == "40"


async def test_a_reply_of_exactly_the_largest_size_goes_as_it_is() -> None:
    """`max_reply` is the largest reply that fits: one of exactly that many bytes goes, one
    byte more is the error reply."""
    for size, too_large in ((64, False), (65, True)):
        svc = Gated(reply=lambda mid, size=size: "y" * size)
        svc.gate.set()
        sent: list[dict[str, Any]] = []
        d = _delivery(svc, sent, max_reply=64)
        d.deliver("T1", 1, "x", False)
        await _until(lambda sent=sent: sent, "the reply")
        assert sent[0]["data"].startswith("error: reply too large") == too_large, (size, sent)
        assert d.counters["errors"] == int(too_large)


async def test_the_counters_count_answers_and_the_applications_errors() -> None:
    """`processed` counts every message answered, `errors` the ones the application raised on
    (the service's error reply): both are metrics."""

    class Raises:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if message_id == 2:
                raise KeyError("no such account")
            return "ok"

    sent: list[dict[str, Any]] = []
    d = _delivery(Raises(), sent)
    for mid in (1, 2, 3):
        d.deliver("T1", mid, "x", False)
    await _until(lambda: len(sent) == 3, "three replies")
    assert [m["data"] for m in sent] == ["ok", "error: KeyError", "ok"]
    assert d.counters["processed"] == 3 and d.counters["errors"] == 1 and d.counters["redelivered"] == 0


async def test_a_reply_that_cannot_be_encoded_goes_as_an_error_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text that is no UTF-8 (a lone surrogate) cannot go: an error reply goes in its place for
    the same terminal and id, counted as an error, and the queue goes on."""
    sent: list[dict[str, Any]] = []

    def send(m: dict[str, Any]) -> bool:
        m["data"].encode("utf-8")  # the frame's encoder
        sent.append(m)
        return True

    class Surrogate:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            return "bad \udc80" if message_id == 1 else "ok"

    d = Delivery(Surrogate(), send, lambda: 7)  # type: ignore[arg-type]
    d.deliver("T1", 1, "x", False)
    d.deliver("T1", 2, "x", False)
    await _until(lambda: len(sent) == 2, "two replies")
    assert sent[0]["terminal"] == "T1" and sent[0]["id"] == 1 and sent[0]["epoch"] == 7
    assert sent[0]["data"].startswith("error: reply cannot be encoded (utf-8: surrogates not allowed at character 4)")
    assert sent[1]["data"] == "ok" and d.counters["errors"] == 1


async def test_the_redelivery_crash_point_is_passed_only_for_a_redelivered_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """host.mid_redelivery (the crash campaigns' kill in the middle of a redelivery) is passed
    on the way to a redelivered message's reply only; host.before_reply on every one."""
    from hsb import faults

    points: list[tuple[int, str]] = []
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(faults, "point", lambda name: points.append((len(sent), name)))
    svc = Gated()
    svc.gate.set()
    d = _delivery(svc, sent)
    d.deliver("T1", 1, "x", False)
    d.deliver("T1", 2, "x", True)
    await _until(lambda: len(sent) == 2, "two replies")
    assert points == [(0, "host.before_reply"), (1, "host.mid_redelivery"), (1, "host.before_reply")]


async def test_a_wake_up_while_messages_still_may_not_go_hands_nothing_over() -> None:
    """The lease renewed (`reopen`) while a planned switchover's handover is still at the CP
    (`may_handle` still False): what waits stays waiting, or the old and the new active would run
    the same messages at once. It goes once messages may go."""
    svc = Gated()
    svc.gate.set()
    sent: list[dict[str, Any]] = []
    allowed = [False]
    d = _delivery(svc, sent, may_handle=lambda: allowed[0])
    d.deliver("T1", 1, "x", False)
    await _turns()
    d.reopen()
    await _turns()
    assert svc.calls == [] and sent == []
    allowed[0] = True
    d.reopen()
    await _until(lambda: sent, "the reply")
    assert [c[0] for c in svc.calls] == [1]


class _Lingers:
    """A service whose first call ignores its cancel (it waits for `gates[0]` regardless) and whose
    k-th call after it waits for `gates[k - 1]` when there is one; it records the calls, and every
    two of one terminal that ran at once (`overlap`)."""

    def __init__(self, *gates: asyncio.Event) -> None:
        self.gates = gates
        self.running: list[int] = []
        self.overlap: list[list[int]] = []
        self.calls: list[int] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls.append(message_id)
        if self.running:
            self.overlap.append([*self.running, message_id])
        self.running.append(message_id)
        try:
            n = len(self.calls)
            if n == 1:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    await self.gates[0].wait()  # goes on regardless
            elif n <= len(self.gates):
                await self.gates[n - 1].wait()
            return "ok"
        finally:
            self.running.remove(message_id)


async def test_a_terminals_worker_waits_for_the_oldest_call_that_ignored_two_cancels() -> None:
    """A call that ignored its cancel still runs when the CP link is lost a second time, its
    terminal's next worker (waiting for it) cancelled too: the third worker must still wait for
    that first call, not for the second worker (which ended at once), or two calls of one
    terminal run at once, out of order."""
    gate = asyncio.Event()
    svc = _Lingers(gate)
    calls = svc.calls
    sent: list[dict[str, Any]] = []
    d = _delivery(svc, sent)
    d.deliver("T1", 5, "x", False)
    await _until(lambda: calls, "the first call")
    d.cancel()  # the CP link lost
    d.deliver("T1", 5, "x", True)  # registered again: the second worker waits for the first call
    await _turns()
    second = d.workers["T1"]
    d.cancel()  # lost again: the second worker ends at once
    await asyncio.gather(second, return_exceptions=True)
    d.deliver("T1", 5, "x", True)
    d.deliver("T1", 6, "y", False)
    await _turns()
    assert calls == [5], "a call of T1 began while the cancelled one still ran"
    gate.set()
    await _until(lambda: len(sent) == 2, "the replies to 5 and 6")
    assert calls == [5, 5, 6] and svc.overlap == [] and [m["id"] for m in sent] == [5, 6]


async def test_a_cancelled_worker_that_ends_late_leaves_the_next_worker_in_place() -> None:
    """The cancelled call ends (after the next worker was started for the terminal): its end
    must not take the next worker's place in `workers`, or the terminal's next delivery would
    start a third worker beside the running one."""
    first_gate, second_gate = asyncio.Event(), asyncio.Event()
    svc = _Lingers(first_gate, second_gate)
    calls = svc.calls
    sent: list[dict[str, Any]] = []
    d = _delivery(svc, sent)
    d.deliver("T1", 5, "x", False)
    await _until(lambda: calls, "the first call")
    first = d.workers["T1"]
    d.cancel()
    d.deliver("T1", 5, "x", True)
    second = d.workers["T1"]
    first_gate.set()
    await asyncio.gather(first, return_exceptions=True)
    await _until(lambda: len(calls) == 2, "the second worker's call")
    assert d.workers.get("T1") is second
    d.deliver("T1", 6, "y", False)
    await _turns()
    assert calls == [5, 5] and svc.overlap == []
    second_gate.set()
    await _until(lambda: len(sent) == 2, "the replies to 5 and 6")
    assert calls == [5, 5, 6] and svc.overlap == [] and [m["id"] for m in sent] == [5, 6]


async def test_after_a_worker_failed_the_terminals_waiting_messages_go_first() -> None:
    """A bug of ours ends a terminal's worker (here: sending a reply raises) while messages of
    that terminal wait behind: they are kept, and the terminal's next delivery goes after them,
    in order, not ahead of them."""
    sent: list[dict[str, Any]] = []
    svc = Gated()
    broken = [True]

    def send(m: dict[str, Any]) -> bool:
        if broken[0]:
            broken[0] = False
            raise RuntimeError("a bug of ours")
        sent.append(m)
        return True

    d = Delivery(svc, send, lambda: 7)  # type: ignore[arg-type]
    d.deliver("T1", 1, "x", False)
    d.deliver("T1", 2, "x", False)
    worker = d.workers["T1"]
    svc.gate.set()
    await asyncio.gather(worker, return_exceptions=True)
    assert [c[0] for c in svc.calls] == [1]
    d.deliver("T1", 3, "x", False)
    await _until(lambda: len(sent) == 2, "the replies to 2 and 3")
    assert [c[0] for c in svc.calls] == [1, 2, 3] and [m["id"] for m in sent] == [2, 3]


async def test_calls_ended_says_whether_the_cancelled_calls_ended_in_time() -> None:
    """A close waits for the calls it cancelled: True when they ended within the wait (or none
    ran), False when one still runs."""
    gate = asyncio.Event()

    class Lingers:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await gate.wait()
            return "ok"

    sent: list[dict[str, Any]] = []
    d = _delivery(Lingers(), sent)
    assert await d.calls_ended(0.0)
    d.deliver("T1", 1, "x", False)
    await _turns()
    d.cancel()
    assert not await d.calls_ended(0.0)
    gate.set()
    assert await d.calls_ended(5.0)
    assert sent == []


async def test_the_end_of_one_call_does_not_end_the_stall_of_an_older_one() -> None:
    """Stalled (said once) lasts while some call has run past `stalled_after`: a newer call
    that ends while an older one still hangs does not say the stall ended."""
    h = ServiceHealth(stalled_after=10.0)
    old = h.call_started("T1", 1)
    new = h.call_started("T2", 2)
    long_ago = time.monotonic() - 100
    h.calls[old] = (long_ago, "T1", 1)
    h.calls[new] = (long_ago + 1, "T2", 2)
    h.look()
    assert h.stalled
    h.call_ended(new)
    assert h.stalled and h.as_dict()["state"] == "stalled"
    h.call_ended(old)
    assert not h.stalled and h.as_dict()["state"] == "ok"


def test_the_fast_switch_links_count_is_of_the_terminals_on_it() -> None:
    """`counts()["linked"]` (status, hsb_terminals_linked) counts the terminals on the link, not
    those defined; joining twice counts once."""
    t = SessionTable({n: TerminalDef(name=n, attrs={}) for n in ("T1", "T2", "T3")})
    assert t.counts()["linked"] == 0
    ts = t.get("T2")
    assert ts is not None
    assert t.join_link(ts)
    assert not t.join_link(ts)
    assert t.counts() == {"defined": 3, "linked": 1, "active_sessions": 0, "standby_sessions": 0}


def test_a_service_failing_again_keeps_its_backoff_and_its_since() -> None:
    """Each failed hand-over is counted (`retries`); a terminal failing again gets its own
    backoff back (the waits grow, not start over), and the failure's `since` is when it began."""
    h = ServiceHealth()
    b = h.failing("T1", "database down")
    since = h.since
    b.next()
    assert h.failing("T1", "still down") is b and b.n == 1  # (its waits go on doubling)
    assert h.since == since and h.error == "still down" and h.retries == 2


class _Clock:
    """hsb.host.delivery's time with a monotonic clock of the test's own (the loop's timers
    keep the real one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    import hsb.host.delivery as delivery

    c = _Clock()
    monkeypatch.setattr(delivery, "time", c)
    return c


async def test_a_failing_service_is_reported_failing_not_stalled(clock: _Clock) -> None:
    """A call past `stalled_after` while the service fails: `state` says failing (with its
    error), the stronger of the two."""
    h = ServiceHealth(stalled_after=10.0)
    h.call_started("T1", 1)
    clock.now += 60
    assert h.as_dict()["state"] == "stalled"
    h.failing("T2", "database down")
    assert h.as_dict()["state"] == "failing"


async def test_a_call_younger_than_the_threshold_at_the_look_is_looked_at_again(clock: _Clock) -> None:
    """The look armed for one call finds only a younger one (the first ended): it looks again
    when that one would be past `stalled_after`, and says it stalled then."""
    h = ServiceHealth(stalled_after=0.05)
    first = h.call_started("T1", 1)
    armed = h._look
    h.call_ended(first)
    clock.now += 0.04
    h.call_started("T2", 2)  # (a look is armed already)
    await _until(lambda: h._look is not armed, "the first look")
    assert not h.stalled
    clock.now += 60
    await _until(lambda: h.stalled, "the stall of the younger call")


async def test_after_a_stall_ended_a_call_still_running_is_looked_at_again(clock: _Clock) -> None:
    """The stalled call ends while a younger one runs: the stall ends, and the younger call is
    looked at again, said stalled once it is past `stalled_after`."""
    h = ServiceHealth(stalled_after=0.05)
    old = h.call_started("T1", 1)
    clock.now += 60
    h.call_started("T2", 2)
    await _until(lambda: h.stalled, "the stall")
    h.call_ended(old)
    assert not h.stalled
    clock.now += 60
    await _until(lambda: h.stalled, "the stall of the younger call")


def test_the_handed_ids_go_in_adopt_frames_within_the_cps_open_batch_bytes() -> None:
    """The handed ids named to a CP (`adopt` frames' `handed`, protocol.md *Adoption*) come in
    as many frames as it takes, each within the `open_batch` bytes the CP takes, with all of
    them: names of four-byte characters and ids of nine bytes are counted at their full size."""
    from types import SimpleNamespace

    from hsb.host.sessions_ctl import SessionsCtl
    from hsb.wire.framing import encode

    handed = {chr(0x1F600 + i) * 12: 2**63 + i for i in range(10)}  # 48 bytes each
    srv: Any = SimpleNamespace(sessions=None, ha=SimpleNamespace(granted=True), delivery=SimpleNamespace(handed=handed))
    c = SessionsCtl(srv)
    c.open_batch_bytes = 192
    chunks = list(c._handed_chunks())
    sizes = [len(encode({"t": "adopt", "epoch": 2**63, "items": [], "handed": ch, "last": False})) for ch in chunks]
    assert all(s <= 192 for s in sizes), sizes
    assert {k: v for ch in chunks for k, v in ch.items()} == handed and all(chunks)
