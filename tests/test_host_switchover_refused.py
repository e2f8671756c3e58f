"""A planned switchover that does not complete leaves the active as it was: established again
after the CP refuses the handover (not merely serving, which would make the next SIGTERM a
normal stop, an outage), and not stuck releasing when its link to the CP drops meanwhile (the
CP forgets a release with the link). hsbcpd and both hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.server import CPServer
from hsb.host import stopping as stopping_mod
from hsb.host.server import HostServer
from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby as established
from tests.support.inproc import keep_sending, pair_in_hot_standby, refuse_handovers_finally, until

pytestmark = pytest.mark.timeout(60)


async def held_releasing(cp: CPServer, a: HostServer) -> tuple[Any, Any]:
    """A planned switchover asked of host-a, held in "releasing" (the CP's "released" never
    comes); returns the CP's real release handler (to restore) and host-a's host link."""
    core = cp.cp
    assert core is not None
    real = core.host_release
    core.host_release = lambda host: None  # type: ignore[method-assign]
    a.ha.post("switchover")
    await until(lambda: a.ha.state == "releasing", "releasing")
    assert core.active is not None
    return real, core.active


def refuse_handovers(core: Any, times: int | None = None) -> Any:
    """The CP refuses every handover (or the next `times`) as it does when no standby is
    registered just then (the standby's CP link away); returns its real handler."""
    real = core.host_handover
    left = [times]

    def no_standby(host: Any, wait: bool = True) -> None:
        if left[0] is not None:
            left[0] -= 1
            if left[0] <= 0:
                core.host_handover = real  # the standby is back at the CP for the next one
        sb, core.standby = core.standby, None
        try:
            real(host, wait)
        finally:
            core.standby = sb

    core.host_handover = no_standby
    return real


async def switched_over(a: HostServer, b: HostServer) -> None:
    """Asked again, the planned switchover completes, and hot standby is back the other way round
    (no batch left half done when the test ends)."""
    a.ha.post("switchover")
    await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover asked again")
    await until(lambda: established(a, b), "hot standby the other way round")


async def _run(tmp_path: Path, body: Any) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        await body(cp, a, b)


async def test_a_refused_handover_leaves_the_active_established(tmp_path: Path) -> None:
    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real = refuse_handovers(core)
        ended = a.ha.status()["switchovers_ended"]
        a.ha.post("switchover")
        await until(lambda: "refused by the CP" in (a.ha.last_error or ""), "the handover refused")
        assert a.ha.role == "active" and a.ha.state == "established", (a.ha.state, a.ha.last_error)
        assert a.ha.status()["switchovers_ended"] == ended + 1  # what hsbctl switchover watches for
        assert a.ha.switchover_refusal() is None  # so a SIGTERM now hands over, not a normal stop
        core.host_handover = real  # type: ignore[method-assign]
        await switched_over(a, b)

    await _run(tmp_path, body)


async def test_a_switchover_whose_cp_link_drops_while_releasing_is_abandoned_not_stuck(tmp_path: Path) -> None:
    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")  # the standby must not take over at the link's loss
        real, link = await held_releasing(cp, a)
        core.host_release = real  # type: ignore[method-assign]
        link.abort()  # the active's host link drops while it waits for "released"
        await until(lambda: a.ha.state == "established" and not a.ha.release_pending, "the switchover abandoned")
        assert "abandoned" in (a.ha.last_error or "")
        await until(lambda: core.active is not None and core.active is not link and core.active.usable and a.ha.registered, "host-a back")
        core.set_paused(False, "test")
        await until(lambda: established(a, b), "hot standby again")
        await switched_over(a, b)

    await _run(tmp_path, body)


async def test_a_sigterm_during_a_planned_switchover_waits_for_it_to_complete(tmp_path: Path) -> None:
    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real, link = await held_releasing(cp, a)
        stop = asyncio.ensure_future(a.graceful_stop())  # what SIGTERM runs
        await until(lambda: a.ha.state == "releasing" and not stop.done(), "the stop waiting")
        assert not stop.done()
        core.host_release = real  # type: ignore[method-assign]
        real(link)  # "released": the switchover goes on
        await asyncio.wait_for(stop, 20)
        assert b.ha.role == "active" and a.ha.role == "standby" and a.exit_code == 0, (b.ha.role, a.ha.role, a.exit_code)
        assert core.active is not None and core.active.name == "host-b"
        # the process ends as the standby it is: stopping, not starting as host-b's standby
        assert a.ha.state == "stopping" and a.ha.stopping, a.ha.state

    await _run(tmp_path, body)


async def test_a_stop_whose_handover_is_refused_stops_at_once_not_after_the_timeout(tmp_path: Path) -> None:
    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        refuse_handovers_finally(core)
        t0 = time.monotonic()
        await asyncio.wait_for(a.graceful_stop(), 10)  # the handover's wait is 15 s
        assert time.monotonic() - t0 < 10
        assert "refused by the CP" in (a.ha.last_error or ""), (a.ha.state, a.ha.last_error)
        assert b.ha.role == "standby"  # a normal stop: nobody was made active by it

    await _run(tmp_path, body)


async def test_a_stop_whose_handover_meets_the_standby_away_from_the_cp_asks_again_and_hands_over(tmp_path: Path) -> None:
    """SIGTERM while the standby's CP link blips: the CP refuses the handover (no standby
    registered just then); the stop asks again while the peer link shows hot standby, and hands
    over once the standby is back, instead of a normal stop that left nobody active."""

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real = refuse_handovers(core, times=1)
        await asyncio.wait_for(a.graceful_stop(), 30)
        assert core.host_handover == real, "the first handover was never refused"
        assert b.ha.role == "active" and a.ha.role == "standby" and a.exit_code == 0, (b.ha.role, a.ha.role, a.exit_code, a.ha.last_error)
        assert core.active is not None and core.active.name == "host-b"

    await _run(tmp_path, body)


async def test_a_stop_whose_standby_never_comes_back_to_the_cp_stops_normally_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stopping_mod, "STOP_HANDOVER_S", 4.0)  # (15 s in production)

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        refuse_handovers(core)  # every handover: no standby registered at the CP
        t0 = time.monotonic()
        await asyncio.wait_for(a.graceful_stop(), 40)
        took = time.monotonic() - t0
        assert 3 < took < 15, took  # asked again for most of the handover's 4 s, then a normal stop
        assert b.ha.role == "standby" and core.active is None  # a normal stop: nobody was made active by it
        assert a.exit_code == 0

    await _run(tmp_path, body)


async def test_a_handover_after_replies_that_did_not_finish_cancels_them(tmp_path: Path) -> None:
    """A planned switchover whose wait for the replies in progress ran out hands over anyway; the
    old active's handlers still running are cancelled when it is demoted: the CP re-delivers the
    message to the new active (marked), and no late reply of the old active reaches the CP after
    the grant (it would be refused, and the old active's link closed, its kept standby sessions
    lost)."""
    from tests.support.hostclient import FakeTerminal

    release = asyncio.Event()
    cancelled: list[int] = []

    class SlowOnA(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if self.host == "host-a":
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    cancelled.append(message_id)
                    raise
            return f"{self.host}:{data}:{redelivered}"

    async with pair_in_hot_standby(tmp_path, SlowOnA) as (cp, a, b, _tasks):
        try:
            core = cp.cp
            assert core is not None
            t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            t.send({"t": "msg", "id": 1, "data": "x"})
            await until(lambda: a.delivery.in_flight == 1, "host-a processing")
            a_link = core.active
            drain = a.delivery.drain
            a.delivery.drain = lambda timeout: drain(0.2)  # type: ignore[method-assign]  # (10 s)
            a.ha.post("switchover")
            await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover")
            r = await t.wait(lambda m: m["t"] == "reply")
            assert r["data"] == "host-b:x:True", r
            await until(lambda: cancelled == [1], "the old active's handler cancelled at its demotion")
            assert a_link is not None and not a_link.closed and core.standby is a_link
            assert [m["id"] for m in t.inbox if m["t"] == "reply"] == [1]
            await t.close()
        finally:
            release.set()


async def test_a_normal_stop_under_load_finishes_its_replies_and_takes_no_more(tmp_path: Path) -> None:
    """A normal stop (no takeover) of the active under steady traffic: the CP stops delivering
    first, so the replies in progress finish at once (they waited the drain's full 5 s while new
    deliveries kept coming, and the late ones broke the CP link as not_active); what arrives
    afterwards stays held at the CP, nothing lost."""
    from hsb.wire.conn import PROTOCOL_ERRORS
    from tests.support.hostclient import FakeTerminal

    class Slow(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            await asyncio.sleep(0.02)
            return data

    errors0 = PROTOCOL_ERRORS[("host", "not_active")]
    sender: asyncio.Task[None] | None = None
    async with pair_in_hot_standby(tmp_path, Slow) as (cp, a, b, _tasks):
        try:
            t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")

            def acked_ids() -> list[int]:
                return [m["id"] for m in t.inbox if m["t"] == "ack"]

            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            sender = keep_sending(t, 0.002)
            await until(lambda: a.delivery.in_flight > 0, "replies in progress")
            a.request_stop(False)
            t0 = time.monotonic()
            await asyncio.wait_for(a.graceful_stop(), 15)
            assert time.monotonic() - t0 < 3.0, "the replies in progress did not finish at once"
            assert a.delivery.in_flight == 0 and PROTOCOL_ERRORS[("host", "not_active")] == errors0
            core = cp.cp
            assert core is not None
            assert core is not None and core.active is None and core.active_stopped_normally == "host-a"
            sender.cancel()
            # the messages sent just before the cancel are acknowledged (held at the CP): no gap
            await until(lambda: acked_ids() == list(range(1, len(acked_ids()) + 1)), "every message sent acknowledged, in order, once")
            assert not t.closed, "the terminal was disconnected"
            replies = [m for m in t.inbox if m["t"] == "reply"]
            replied_ids = [m["id"] for m in replies]
            acked_list = acked_ids()
            assert len(replied_ids) == len(set(replied_ids)), f"a duplicate reply: {sorted(replied_ids)}"
            assert len(acked_list) == len(set(acked_list)), f"a duplicate ack: {acked_list}"
            assert [(m["id"], m["data"]) for m in replies if m["data"] != f"m{m['id']}"] == [], "a reply with the wrong data"
            replied, acked = set(replied_ids), set(acked_list)
            assert replied and replied <= acked, f"a reply never acknowledged: {sorted(replied - acked)}"
            assert acked - replied <= set(core.terms["T00001"].held), "an acknowledged message neither answered nor held"
        finally:
            if sender is not None:
                sender.cancel()


async def test_a_host_fenced_while_its_stop_waits_for_the_handover_exits_as_fenced(tmp_path: Path) -> None:
    """SIGTERM starts a hand-over; the CP fences the host meanwhile: it exits 75 (fenced), as a
    fenced host does, not 0 after a 'normal stop' sent under a stale epoch."""
    from hsb.cli import EXIT_FENCED

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real, link = await held_releasing(cp, a)
        a.stop_mode = "takeover"
        stop = asyncio.ensure_future(a.graceful_stop())
        await until(lambda: a.ha.state == "releasing" and not stop.done(), "the stop waiting for the handover")
        a.ha.fenced("test: another host was made active")
        await asyncio.wait_for(stop, 10)
        assert a.exit_code == EXIT_FENCED, a.exit_code
        core.host_release = real  # type: ignore[method-assign]

    await _run(tmp_path, body)


async def test_a_normal_stop_after_a_hand_over_that_did_not_complete_does_not_hand_over_after_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop's hand-over ran out while the switchover still waited for the CP's 'released'; the
    normal stop then sends its own release: its 'released' must not resume that switchover (a
    grant racing the stop's 'stopping')."""
    monkeypatch.setattr(stopping_mod, "STOP_HANDOVER_S", 0.3)  # (15 s in production)

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real, _link = await held_releasing(cp, a)  # the switchover's release goes unanswered
        # and the standby went out of sight meanwhile (what HA.ev_peer_down does while releasing):
        # with hot standby still established the stop would end as a lost link instead
        # (tests/test_host_stop_out_of_time.py), and no normal stop would follow
        a.ha.established_since = None
        a.stop_mode = "takeover"
        stop = asyncio.ensure_future(a.graceful_stop())
        core.host_release = real  # type: ignore[method-assign]  # the stop's own release is answered
        await asyncio.wait_for(stop, 15)
        assert core.active is None and core.active_stopped_normally == "host-a", core.active
        assert b.ha.role == "standby" and a.exit_code == 0

    await _run(tmp_path, body)


async def test_a_switchover_request_lost_with_the_cp_link_is_asked_again_on_the_next(tmp_path: Path) -> None:
    """The standby's request goes out and its CP link drops before any answer: on the next link,
    the next request (the CP tells of the loss again at the registration) goes at once. It was
    held back for a second after the lost one, and the CP tells of a loss only once per link, so
    the standby waited for ever with nobody active."""

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        real_send = b.cp.send
        dropped: list[dict[str, Any]] = []

        def drop(msg: dict[str, Any]) -> bool:
            dropped.append(msg)
            return True

        b.cp.send = drop  # type: ignore[method-assign]  # (a fake link: nothing reaches the CP)
        t0 = time.monotonic()
        await b.ha.request_switchover("test: a loss told on a link about to drop")
        b.cp.send = real_send  # type: ignore[method-assign]
        assert [m["t"] for m in dropped] == ["switchover"]
        link = core.standby
        assert link is not None
        link.abort()  # the link drops: the request (and any answer) is gone with it
        await until(lambda: b.ha.registered and core.standby is not None and core.standby is not link, "host-b registered again")
        assert time.monotonic() - t0 < 0.9, "registered again too late to show the fault"
        refusals = b.ha.switch_refusals
        await b.ha.request_switchover("test: the loss told again on the new link")
        # host-a is alive: the CP answers with a refusal, which shows the request went out
        await until(lambda: b.ha.switch_refusals == refusals + 1, "the request answered", timeout=5)
        assert core.active is not None and core.active.name == "host-a"
        await until(lambda: established(a, b), "hot standby again")

    await _run(tmp_path, body)


class _DownOnA(EchoService):
    """host-a's service answers ServiceUnavailable to everything (its database down); each call
    noted in `calls` (host, when)."""

    calls: list[tuple[str, float]] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        from hsb.service.api import ServiceUnavailable

        self.calls.append((self.host, time.monotonic()))
        if self.host == "host-a":
            raise ServiceUnavailable("database down")
        return await super().handle(terminal, message_id, data, redelivered)


async def _retrying_on_a(cp: CPServer, a: HostServer, frame: str) -> tuple[Any, list[float]]:
    """T00001's message 1 failing at host-a and retried, host-a's drain cut to 0.3 s, and the
    times host-a sends `frame` to the CP noted; (the terminal, those times)."""
    from tests.support.hostclient import FakeTerminal

    t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    t.send({"t": "msg", "id": 1, "data": "x"})
    await until(lambda: len(_DownOnA.calls) >= 2, "host-a's service failing and retried")
    drain = a.delivery.drain
    a.delivery.drain = lambda timeout: drain(0.3)  # type: ignore[method-assign]  # (5 s at a stop, 10 s at a switchover)
    real_send = a.cp.send
    sent: list[float] = []

    def send(msg: dict[str, Any]) -> bool:
        if msg.get("t") == frame:
            sent.append(time.monotonic())
        return real_send(msg)

    a.cp.send = send  # type: ignore[method-assign]
    return t, sent


async def test_a_stop_whose_drain_gave_up_hands_nothing_more_to_the_service(tmp_path: Path) -> None:
    """A normal stop waits for the replies in progress; a service that keeps answering
    ServiceUnavailable makes that wait give up. The message then stays held at the CP for
    whoever serves next: it was handed to the service again and again after `stopping` (until
    the lease ran out), and an answer then was refused and closed the link before the CP's
    confirmation of the stop."""
    calls = _DownOnA.calls = []
    async with pair_in_hot_standby(tmp_path, _DownOnA) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        _t, stopping_sent = await _retrying_on_a(cp, a, "stopping")
        real_stopping = core.host_stopping
        # the CP's confirmation takes a while (its journal write): time for the retries to come
        core.host_stopping = lambda host: asyncio.get_running_loop().call_later(1.5, real_stopping, host)  # type: ignore[method-assign,assignment]
        a.stop_mode = "normal"
        await asyncio.wait_for(a.graceful_stop(), 20)
        assert stopping_sent, "the stop never told the CP"
        late = [c for c in calls if c[0] == "host-a" and c[1] >= stopping_sent[0]]
        assert late == [], f"host-a's service was handed the message {len(late)} times after `stopping`"
        assert a.exit_code == 0
        assert core.active is None and "T00001" in core.terms and core.terms["T00001"].held, "the message is held at the CP"


async def test_nothing_new_reaches_the_service_while_it_hands_over_and_all_goes_on_if_refused(tmp_path: Path) -> None:
    """A planned switchover whose wait for the replies in progress gave up (a service failing,
    retried) hands over: nothing more is handed to the old active's service from then on (a run
    started just before the grant would overlap the new active's run of the same message). The
    CP refuses that handover: the old active serves on, and what waited is handed over again."""
    calls = _DownOnA.calls = []
    async with pair_in_hot_standby(tmp_path, _DownOnA) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        _t, handover_sent = await _retrying_on_a(cp, a, "handover")
        real_handover = refuse_handovers(core, times=1)
        refusing = core.host_handover
        # the CP answers the handover after a while: time for the retries to come
        core.host_handover = lambda host, wait=True: asyncio.get_running_loop().call_later(1.5, refusing, host, wait)  # type: ignore[method-assign,assignment]
        a.ha.post("switchover")
        await until(lambda: handover_sent, "the handover sent")
        await until(lambda: a.ha.state in ("established", "serving") and a.ha.role == "active", "the handover refused", timeout=10)
        core.host_handover = real_handover  # type: ignore[method-assign]  # (the real handler back)
        refused_at = time.monotonic()
        late = [c for c in calls if c[0] == "host-a" and handover_sent[0] <= c[1] < refused_at - 0.05]
        assert late == [], f"host-a's service was handed the message {len(late)} times while it handed over"
        # refused: host-a serves on, and the message it held goes to its service again
        await until(lambda: any(c[0] == "host-a" and c[1] >= refused_at for c in calls), "host-a's service handed it again")


def lose_the_next_grantee(core: Any) -> None:
    """The next grant's host loses its link before the grant's epoch is durable: the CP undoes
    the switchover (the old active gets the role back at a new epoch)."""
    real = core._granted

    def lose_grantee(host: Any, *args: Any) -> None:
        core._granted = real
        host.abort()  # host-b's link goes before the epoch is durable
        real(host, *args)

    core._granted = lose_grantee


async def test_a_switchover_the_cp_undoes_ends_it_at_the_old_active(tmp_path: Path) -> None:
    """The standby's link goes while its grant is made durable: the CP gives the old active the
    role back at a new epoch (`switch_granted` to the active). hsbd took that for a takeover of its
    own: `switchover_complete` of a "planned switchover", a failover counted, its partner state
    reset, and the switchover never ended (a stop waiting on it waited its whole 15 s). It ends
    there, as a refused one does: established again, nothing counted, a stop not kept waiting."""

    async def body(cp: CPServer, a: HostServer, b: HostServer) -> None:
        core = cp.cp
        assert core is not None
        lose_the_next_grantee(core)
        ended, counted = a.ha.status()["switchovers_ended"], dict(a.ha.counters)
        cp_counted = dict(core.counters)
        epoch = a.ha.epoch
        a.ha.post("switchover")
        await until(lambda: a.ha.status()["switchovers_ended"] == ended + 1, "the switchover ended at host-a")
        # the CP counts it, and its history says it, as undone: not a failover (no other host served)
        await until(lambda: core.counters["switchovers_undone"] == cp_counted["switchovers_undone"] + 1, "the undo counted at the CP")
        assert (core.counters["failovers"], core.counters["switchovers"]) == (cp_counted["failovers"], cp_counted["switchovers"])
        assert core.history.entries[-1]["kind"] == "undone" and core.history.entries[-1]["to"] == "host-a", core.history.entries[-1]
        assert core.history.counts["undone"] == 1  # (the switches metric by kind, and its pause figures later)
        assert a.ha.role == "active" and a.ha.epoch > epoch and "undone" in (a.ha.last_error or ""), (a.ha.role, a.ha.last_error)
        assert (a.ha.counters["failovers"], a.ha.counters["switchovers"]) == (counted["failovers"], counted["switchovers"])
        await until(lambda: established(a, b), "hot standby again (host-b registered again)")
        assert core.active is not None and core.active.name == "host-a"
        await switched_over(a, b)

    await _run(tmp_path, body)


async def test_a_switchover_the_cp_undoes_drops_what_the_old_active_had_queued(tmp_path: Path) -> None:
    """Undone, the CP gives the old active the role back and hands it every message it holds
    again, marked redelivered. What the old active's queue still held from before the grant (a
    message its service kept failing, retried) went to its service as well: twice, and after
    messages that followed it. Its queue is dropped when the role comes back, before those frames."""
    _DownOnA.calls = []
    async with pair_in_hot_standby(tmp_path, _DownOnA) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        await _retrying_on_a(cp, a, "handover")
        lose_the_next_grantee(core)
        epoch = a.ha.epoch
        again: list[int] = []
        deliver = a.delivery.deliver

        def spy(terminal: str, mid: int, data: Any, redelivered: bool) -> None:
            deliver(terminal, mid, data, redelivered)
            if a.ha.epoch > epoch:  # handed over again after the role came back
                again.append(mid)

        a.delivery.deliver = spy  # type: ignore[method-assign]
        a.ha.post("switchover")
        await until(lambda: bool(again), "message 1 handed to host-a again after the undo", timeout=10)
        assert a.ha.role == "active" and again == [1]
        assert [m for m, _, _ in a.delivery.queues.get("T00001", ())] == [1], list(a.delivery.queues.get("T00001", ()))


async def _cp_link_just_back(a: HostServer) -> None:
    """host-a's CP link dropped and connected again: its register sent, not yet answered."""
    old = a.cp.connects
    assert a.cp.fs is not None
    a.cp.fs.writer.transport.abort()
    deadline = time.monotonic() + 10
    while a.cp.connects == old:  # every turn of the loop (not `until`'s 10 ms): the moment it is back
        assert time.monotonic() < deadline, "host-a's CP link never came back"
        await asyncio.sleep(0)


async def test_a_switchover_asked_before_the_registration_is_answered_is_refused_not_fenced(tmp_path: Path) -> None:
    """The active's CP link came back; the CP raises the epoch at its register and the host learns
    it only from `registered`. A switchover asked in between sent `release` at the epoch before:
    stale, the host fenced (exit 75). It is refused until the host is registered."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        core.paused = True  # (host-a comes back as the active: nobody takes over meanwhile)
        ended = a.ha.status()["switchovers_ended"]
        await _cp_link_just_back(a)
        a.ha.post("switchover")  # queued behind cp_up: in the same pass as its register
        await until(lambda: a.ha.status()["switchovers_ended"] > ended or a.ha.exit is not None, "the switchover answered")
        assert a.ha.exit is None, a.ha.exit
        assert "not registered at the CP" in (a.ha.last_error or ""), a.ha.last_error
        await until(lambda: a.ha.registered and established(a, b), "host-a registered, hot standby again")
        core.paused = False
        await switched_over(a, b)


async def test_a_stop_just_after_the_cp_link_came_back_waits_for_the_registration_and_hands_over(tmp_path: Path) -> None:
    """The same for a stop (SIGTERM): its release went at the epoch before and fenced the host;
    it waits for the registration's answer, then hands over as usual."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        core.paused = True
        await _cp_link_just_back(a)
        core.paused = False
        await asyncio.wait_for(a.graceful_stop(), 30)
        assert a.ha.exit is None and a.exit_code == 0
        await until(lambda: b.ha.role == "active", "host-b the active")


async def test_a_grant_extends_the_lease_from_the_request_it_names(tmp_path: Path) -> None:
    """Requests are numbered and the grant names the one it answers: the lease runs from that
    one's sending. A request the CP never had (the second here, lost on the way) renews nothing,
    and neither does a grant that names none (a planned handover's): it renews from the newest
    heartbeat the CP answered. The lease used to run from the oldest request unanswered here,
    which a grant of another request could stretch past what the CP allows."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        sent: list[dict[str, Any]] = []

        def keep(msg: dict[str, Any]) -> bool:
            sent.append(msg)
            return True

        b.cp.send = keep  # type: ignore[method-assign]  # (nothing reaches the CP)
        await b.ha.request_switchover("test: first")
        b.ha.switch_requested_at = time.monotonic() - 2.0  # a second later, asked again
        await b.ha.request_switchover("test: second")
        assert [m["t"] for m in sent] == ["switchover", "switchover"]
        first, second = sent[0]["req"], sent[1]["req"]
        assert second == first + 1 and b.ha.switch_sent[first] < b.ha.switch_sent[second]
        first_at = b.ha.switch_sent[first]
        ha = b.ha
        ha.lease.answered_at = first_at - 0.2  # the newest heartbeat the CP answered, before both
        ha.link_event({"t": "switch_granted", "epoch": 7, "lease": 0.35, "req": first})
        assert ha.lease.until == first_at + 0.35 and ha.switch_sent == {}
        # a grant naming no request: from the newest heartbeat answered, not from any request
        ha.lease.until = 0.0
        await ha.request_switchover("test: third")
        ha.link_event({"t": "switch_granted", "epoch": 8, "lease": 0.35})
        assert ha.lease.until == ha.lease.answered_at + 0.35
