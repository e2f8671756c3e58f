"""The active host's hand-over of messages to the service (hsb.host.delivery), in-process: a
message handed over again after the service was unavailable is marked redelivered (the failed
try may have had its effect), as is one whose transaction the service must run again, status stays failing across a cancel until the service answers,
and a reply too large for a frame becomes an error reply instead of taking the host link down
again and again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.host.delivery import Delivery
from hsb.service.api import ServiceUnavailable
from hsb.service.db import RetryTransaction

pytestmark = pytest.mark.timeout(30)


class Flaky:
    """Unavailable for the first `fail` hand-overs; records the redelivered flag of each."""

    def __init__(self, fail: int, reply: str = "ok") -> None:
        self.fail = fail
        self.reply = reply
        self.flags: list[bool] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.flags.append(redelivered)
        if len(self.flags) <= self.fail:
            raise ServiceUnavailable("database: whether it committed unknown")
        return self.reply


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_message_handed_over_again_after_the_service_failed_is_marked_redelivered() -> None:
    sent: list[dict[str, Any]] = []
    svc = Flaky(fail=1)
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: sent, "the reply")
    assert svc.flags == [False, True]
    assert sent[0]["id"] == 5 and sent[0]["data"] == "ok"
    assert d.counters["redelivered"] == 1 and d.health.state == "ok"


async def test_a_cancel_while_the_service_fails_leaves_it_failing_until_it_answers() -> None:
    """A cancel (the CP link lost, demoted, a switch granted) set the health back to ok: with a
    flapping link during a database outage hsb_service_healthy went back to 1 between failed
    tries, and the alert's `for: 1m` started over each time."""
    svc = Flaky(fail=3)
    sent: list[dict[str, Any]] = []
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: d.health.state == "failing", "failing")
    since = d.health.since
    d.cancel()  # nothing waits for the service here any more, but it has not answered
    assert d.health.state == "failing" and d.health.since == since and not d.health.waiting
    await asyncio.sleep(0.1)
    assert d.health.state == "failing"
    d.deliver("T1", 5, "x", True)  # handed over again after the link is back: answered at last
    await _until(lambda: sent, "the reply")
    assert d.health.state == "ok" and d.health.error is None


async def test_a_host_that_no_longer_holds_the_active_role_does_not_say_its_service_fails() -> None:
    """Demoted (or fenced, or back as the standby) while its service failed: nothing asks the
    service there any more, so nothing would clear it. It stayed `failing` on the standby for
    good, and a failover hours later made it active with that stale state, paging at once."""
    svc = Flaky(fail=100)
    d = Delivery(svc, lambda m: True, lambda: 1)  # type: ignore[arg-type]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: d.health.state == "failing", "failing")
    d.cancel(role_ended=True)
    assert d.health.state == "ok" and d.health.error is None and not d.health.waiting


class Hangs:
    """Its handle for `hold` waits until `free` is set (a hung disk under an fsync): it raises
    nothing; every other message is answered at once."""

    def __init__(self) -> None:
        self.free = asyncio.Event()
        self.calls = 0

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls += 1
        if data == "hold":
            await self.free.wait()
        return data


async def test_a_call_of_the_service_that_does_not_return_makes_it_stalled_until_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that never returns raised nothing, so status said ok, 0 waiting, and
    hsb_service_healthy 1 while that terminal's messages queued behind it. Past the threshold the
    service is stalled, said once; the call is left to run (never made again), and once it returns
    the service is ok again, said once."""
    from hsb.host import delivery
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(delivery, "log", rec)
    svc = Hangs()
    sent: list[dict[str, Any]] = []
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1, stalled_after=0.2)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "hold", False)
    d.deliver("T1", 6, "after", False)  # waits behind it
    d.deliver("T2", 7, "other", False)  # another terminal goes on
    await _until(lambda: len(sent) == 1, "T2's reply")
    assert d.health.as_dict()["state"] == "ok" and d.health.as_dict()["calls_in_progress"] == 1
    await _until(lambda: rec.events("service_stalled"), "service_stalled said")
    st = d.health.as_dict()
    assert st["state"] == "stalled" and st["oldest_call_s"] >= 0.2 and st["oldest_call_terminal"] == "T1", st
    assert rec.events("service_stalled")[0]["terminal"] == "T1" and rec.events("service_stalled")[0]["id"] == 5
    await asyncio.sleep(0.3)  # (still stalled a while later: said once, the call neither dropped nor made again)
    assert len(rec.events("service_stalled")) == 1 and svc.calls == 2 and d.health.as_dict()["state"] == "stalled"
    svc.free.set()
    await _until(lambda: len(sent) == 3, "T1's replies")
    assert [m["id"] for m in sent] == [7, 5, 6] and svc.calls == 3
    st = d.health.as_dict()
    assert st["state"] == "ok" and st["oldest_call_s"] == 0 and st["calls_in_progress"] == 0, st
    assert len(rec.events("service_stall_ended")) == 1 and len(rec.events("service_stalled")) == 1


def test_a_loaded_but_healthy_ledger_call_is_not_stalled() -> None:
    """The threshold was 10 s: below one ledger transaction's own bound (a pool connection's wait,
    5 s, then a statement up to command_timeout, 10 s), so a loaded but healthy PostgreSQL made the
    service stalled. It is above that bound, and above SQLite's busy_timeout, with room for a
    collision's retry on top."""
    import inspect

    from hsb.host.delivery import STALLED_AFTER, ServiceHealth
    from hsb.service.db import PostgresDatabase, SqliteDatabase

    pg = {k: p.default for k, p in inspect.signature(PostgresDatabase).parameters.items()}
    one_try = pg["connect_timeout"] + pg["command_timeout"]
    assert 2 * one_try <= STALLED_AFTER, (STALLED_AFTER, one_try)
    assert inspect.signature(SqliteDatabase).parameters["busy_timeout"].default < STALLED_AFTER
    assert ServiceHealth().stalled_after == STALLED_AFTER


class Collides:
    """Its transaction rolled back (RetryTransaction) for the first `fail` hand-overs."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.flags: list[bool] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.flags.append(redelivered)
        if len(self.flags) <= self.fail:
            raise RetryTransaction("deadlock detected")
        return f"done {message_id}"


async def test_a_transaction_the_service_must_run_again_is_handed_over_again_not_answered_as_an_error() -> None:
    """A service of one's own on hsb.service.db (no ExactlyOnce) met a deadlock: its transaction
    was rolled back and it raised RetryTransaction, which db.py says is run again; the host
    answered `error: RetryTransaction` and the message was gone."""
    sent: list[dict[str, Any]] = []
    svc = Collides(fail=1)
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    d.deliver("T1", 6, "x", False)
    await _until(lambda: len(sent) == 2, "two replies")
    assert [(m["id"], m["data"]) for m in sent] == [(5, "done 5"), (6, "done 6")]
    assert svc.flags == [False, True, False]  # handed over again marked, as every retry is
    assert d.counters["transactions_retried"] == 1 and d.counters["errors"] == 0
    assert d.health.state == "ok" and d.health.retries == 0


async def test_a_transaction_that_keeps_colliding_holds_its_message_as_the_service_failing() -> None:
    """Bounded: past MAX_COLLISIONS in a row the message is held as for ServiceUnavailable (the
    service shown failing, backoff), never answered with an error, and answered once it goes."""
    from hsb.service.api import MAX_COLLISIONS

    sent: list[dict[str, Any]] = []
    svc = Collides(fail=MAX_COLLISIONS + 1)
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: d.health.state == "failing", "the service failing")
    assert not sent and "transactions in a row rolled back (RetryTransaction): deadlock detected" in (d.health.error or "")
    await _until(lambda: sent, "the reply")
    assert sent[0]["data"] == "done 5" and d.health.state == "ok"
    assert d.counters["transactions_retried"] == MAX_COLLISIONS - 1 and d.counters["errors"] == 0


async def test_a_reply_too_large_for_a_frame_is_answered_as_an_error() -> None:
    sent: list[dict[str, Any]] = []
    d = Delivery(Flaky(fail=0, reply="y" * 100), lambda m: sent.append(m) or True, lambda: 1, max_reply=64)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    d.deliver("T1", 6, "x", False)
    await _until(lambda: len(sent) == 2, "two replies")
    assert all(m["data"].startswith("error: reply too large to send (100 bytes > 64)") for m in sent), sent
    assert d.counters["errors"] == 2
    # text is measured in bytes on the wire: 40 characters of two bytes each are 80 > 64
    sent.clear()
    d2 = Delivery(Flaky(fail=0, reply="é" * 40), lambda m: sent.append(m) or True, lambda: 1, max_reply=64)  # type: ignore[arg-type, func-returns-value]
    d2.deliver("T1", 7, "x", False)
    await _until(lambda: sent, "the reply")
    assert sent[0]["data"].startswith("error: reply too large to send (80 bytes > 64)"), sent


async def _five_then_six(service: Any, five: str) -> Delivery:
    """Messages 5 and 6 of one terminal to `service` (5 fails, 6 answers "ok"): 5 is answered
    `five`, 6 after it, and the queue is idle again."""
    sent: list[dict[str, Any]] = []
    d = Delivery(service, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[func-returns-value]
    d.deliver("T1", 5, "x", False)
    d.deliver("T1", 6, "x", False)
    await _until(lambda: len(sent) == 2, "two replies")
    assert [(m["id"], m["data"]) for m in sent] == [(5, five), (6, "ok")]
    assert await d.drain(1.0)
    return d


async def test_a_cancelled_error_of_the_services_own_is_its_error_reply_and_the_queue_goes_on() -> None:
    """A service that awaited something another task cancelled raises CancelledError though
    nobody cancelled the delivery: the terminal's queue stopped there for good (the message never
    answered, every later drain() waited its whole timeout). It is the service's error, answered."""

    class Awaits:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if message_id == 5:
                f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_soon(f.cancel)  # another task's doing
                await f
            return "ok"

    d = await _five_then_six(Awaits(), "error: CancelledError")
    assert d.counters["errors"] == 1


async def test_an_error_whose_message_cannot_be_formatted_is_still_answered_and_the_queue_goes_on() -> None:
    """The application's exception has a __str__ that itself fails: formatting it for the log
    raised inside the error handling, the worker died, and the terminal's messages waited for good."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise AttributeError("missing")

    class Raises:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if message_id == 5:
                raise Unprintable()
            return "ok"

    d = await _five_then_six(Raises(), "error: Unprintable")
    assert "T1" not in d.queues


@pytest.mark.parametrize("turns_it_into", ["nothing", "unavailable"])
async def test_a_service_that_will_not_be_cancelled_sends_no_reply_after_a_cancel(turns_it_into: str) -> None:
    """cancel() (demoted, fenced, the CP link lost): a service that catches the cancellation and
    returns anyway, or turns it into ServiceUnavailable (a wrapper that turns every failure into
    that), must not have its reply sent under whatever epoch runs by then, nor go on with the queue
    cancel() took from it beside the next worker: the CP hands that message on again, marked."""
    started = asyncio.Event()
    calls: list[int] = []

    class Stubborn:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            calls.append(message_id)
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if turns_it_into == "unavailable":
                    raise ServiceUnavailable("wrapped") from None  # (else swallowed: bad manners, but a service may)
            return "late"

    sent: list[dict[str, Any]] = []
    d = Delivery(Stubborn(), lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await asyncio.wait_for(started.wait(), 5)
    worker = d.workers["T1"]
    d.cancel()
    await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), 5)
    assert worker.done() and sent == [] and calls == [5]
    assert d.health.state == "ok" and d.in_flight == 0 and d.idle.is_set()


async def test_the_next_worker_of_a_terminal_waits_for_a_call_that_ignored_the_cancel() -> None:
    """A service that catches the cancellation and goes on working (a cleanup it awaits): the
    terminal's messages handed over again after the CP link is back must not reach the service
    beside that call, two at a time and out of order. They wait for it to end."""
    gate = asyncio.Event()
    running: list[int] = []
    overlap: list[list[int]] = []
    calls: list[tuple[int, bool]] = []

    class Lingers:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            calls.append((message_id, redelivered))
            if running:
                overlap.append([*running, message_id])
            running.append(message_id)
            try:
                if len(calls) == 1:
                    try:
                        await asyncio.sleep(10)
                    except asyncio.CancelledError:
                        await gate.wait()  # goes on regardless
                return "ok"
            finally:
                running.remove(message_id)

    sent: list[dict[str, Any]] = []
    d = Delivery(Lingers(), lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: calls, "the first call")
    d.cancel()  # the CP link lost
    d.deliver("T1", 5, "x", True)  # registered again: handed over again, then the next one
    d.deliver("T1", 6, "y", False)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert calls == [(5, False)], "a call of T1 began while the cancelled one still ran"
    gate.set()
    await _until(lambda: len(sent) == 2, "the replies to 5 and 6")
    assert calls == [(5, False), (5, True), (6, False)] and overlap == []
    assert [m["id"] for m in sent] == [5, 6] and not d.ending


async def test_the_host_stops_serving_before_it_closes_a_dead_cp_link(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP link's end: on_down (deliveries cancelled, the lease dropped) came only after the
    link's close, which may wait a second, and messages went on to the service meanwhile; and an
    unexpected error in the link skipped on_down altogether. A real hsbcpd, killed."""
    import signal

    from hsb.host import cplink as cplink_mod
    from hsb.host.lease import Lease
    from hsb.wire.client import FrameStream
    from tests.support.procs import SECRET, restart_cp, start_cp

    order: list[str] = []
    real_aclose = FrameStream.aclose

    async def aclose(self: Any) -> None:
        order.append("aclose")
        await real_aclose(self)

    monkeypatch.setattr(FrameStream, "aclose", aclose)
    cp = start_cp(tmp_path / "cp", terminals=2)
    up = asyncio.Event()
    link = cplink_mod.CPLink(
        name="host-a",
        addr=cp.info["host"],
        secret=SECRET,
        interval=0.1,
        timeout=0.5,
        max_frame=1 << 20,
        on_up=up.set,
        on_frame=lambda m: None,
        on_down=lambda why: order.append("on_down"),
        lease=Lease(),
        on_answer=lambda n: None,
    )
    link.start()
    try:
        await asyncio.wait_for(up.wait(), 10)
        order.clear()
        cp.kill(signal.SIGKILL)
        await _until(lambda: "on_down" in order and "aclose" in order, "the link's end")
        assert order[:2] == ["on_down", "aclose"], order

        # an error no handler names (a bug in what runs on the link, say) still ends in on_down
        def broken() -> None:
            order.append("up")
            raise KeyError("boom")

        link.on_up = broken
        order.clear()
        cp = restart_cp(cp)  # the same ports
        await _until(lambda: "on_down" in order, "on_down after an unexpected error")
        # (a connect while the CP starts may be taken by its listener and fail before the login:
        # that stream is closed, an "aclose" before the "up", and nothing else)
        first_up = order.index("up")
        assert set(order[:first_up]) <= {"aclose"}, order
        assert order[first_up : first_up + 3] == ["up", "on_down", "aclose"], order

        # on_down itself raising (a bug there): the socket is closed and the link made again
        def down_broken(why: str) -> None:
            order.append("on_down")
            raise RuntimeError("a bug in on_down")

        up.clear()
        link.on_up = up.set
        link.on_down = down_broken
        await asyncio.wait_for(up.wait(), 10)
        order.clear()
        cp.kill(signal.SIGKILL)
        await _until(lambda: "aclose" in order, "the close, though on_down raised")
        assert order[:2] == ["on_down", "aclose"], order
        up.clear()
        cp = restart_cp(cp)
        await asyncio.wait_for(up.wait(), 10)  # reconnected: the loop did not end
    finally:
        link.stopped = True
        if link.task is not None:
            link.task.cancel()
            await asyncio.gather(link.task, return_exceptions=True)
        cp.stop()


async def test_a_closing_host_hands_nothing_more_to_its_service_once_its_cp_link_closes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """hsbd's close: deliveries are cancelled before the CP link closes. After a stop whose drain
    ran out (a slow or unavailable service), the workers went on handing queued messages to the
    service while the link closed, their replies dropped and their effects after the CP had
    closed the sessions."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    seen: list[int] = []
    real = srv.cp.close

    async def cp_close() -> None:
        seen.append(srv.delivery.gen)
        await real()

    monkeypatch.setattr(srv.cp, "close", cp_close)
    gen0 = srv.delivery.gen
    await srv.close()
    assert seen == [gen0 + 1], "the CP link closed while deliveries still ran"


async def test_a_host_beats_often_until_the_cp_has_told_it_its_lease() -> None:
    """Before any registration is answered the lease is not known: the host beat at its
    heartbeat_interval (up to 60 s in a valid config), so with 1 s the first lease (register +
    0.35 s) lapsed and the CP took the new active for silent and failed it over. It beats often
    until the lease is told, then at a third of it."""
    from hsb.host import cplink as cplink_mod
    from hsb.host.lease import Lease
    from tests.support.procs import SECRET

    sent: list[float] = []

    class Fs:
        def send(self, msg: dict[str, Any]) -> None:
            sent.append(time.monotonic())

        async def drain(self) -> None:
            return None

        def close(self) -> None:
            return None

    lease = Lease()
    link = cplink_mod.CPLink(
        name="host-a", addr="127.0.0.1:1", secret=SECRET, interval=1.0, timeout=3.0, max_frame=1 << 20,
        on_up=lambda: None, on_frame=lambda m: None, on_down=lambda why: None, lease=lease, on_answer=lambda n: None,
    )  # fmt: skip
    task = asyncio.ensure_future(link._beat(Fs()))  # type: ignore[arg-type]
    try:
        await _until(lambda: len(sent) >= 3, "three beats before the lease is known")
        assert sent[2] - sent[0] < 0.5, sent
        lease.duration = 0.35  # told: a third of it from now on
        n = len(sent)
        await _until(lambda: len(sent) >= n + 3, "three beats at a third of the lease")
        assert max(b - a for a, b in zip(sent[n:], sent[n + 1 :], strict=False)) < 0.3, sent
    finally:
        task.cancel()


async def test_a_message_handed_to_the_service_before_is_marked_redelivered_whatever_the_cp_says() -> None:
    """The host marks a message redelivered itself when it handed that terminal's id, or a higher
    one, to its service before (a CP that crashed before its record was durable delivers it again
    unmarked): the same id and a lower one are marked and counted, a higher id is not, and each
    terminal has its own ids."""
    svc = Flaky(fail=0)
    sent: list[dict[str, Any]] = []
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    for n, (terminal, mid) in enumerate([("T1", 5), ("T1", 5), ("T1", 4), ("T2", 5), ("T1", 6)], 1):
        d.deliver(terminal, mid, "x", False)
        await _until(lambda: len(sent) == n, f"reply {n}")
    assert svc.flags == [False, True, True, False, False]
    assert d.counters["repeats_marked"] == 2 and d.counters["redelivered"] == 2
    assert [(m["terminal"], m["id"]) for m in sent] == [("T1", 5), ("T1", 5), ("T1", 4), ("T2", 5), ("T1", 6)]


def test_the_service_is_failing_until_every_terminal_waiting_for_it_was_answered() -> None:
    """One terminal's message answered while another's still waits for the service (its database
    answered once, between failures) does not say it recovered: hsb_service_healthy would go back
    to 1 and its alert start over while messages still wait."""
    from hsb.host.delivery import ServiceHealth

    h = ServiceHealth()
    h.failing("T1", "database down")
    h.failing("T2", "database down")
    h.answered("T1")
    assert h.state == "failing" and h.error == "database down" and len(h.waiting) == 1
    h.answered("T2")
    assert h.state == "ok" and h.error is None and not h.waiting
