"""hsbd's stop and switchover at their edges, in-process (tests/support/inproc.py): a normal stop
the CP never took note of is taken over (the CP is the arbiter, SPEC §5.4); a SIGTERM's handover
survives a resync and a peer-link blip (§5.3: a pause, never an outage); the HA loop keeps turning
while replies or standby opens are waited for (systemd's watchdog is pinged from it); a reply that
cannot be encoded is answered with an error; the named events of losing and regaining hot standby;
a stop whose handover ends without the grant writes no resync beside its normal stop, waits for
the answer to a handover already at the CP (a `--no-takeover` one too, handing the service nothing
meanwhile), and ends as the standby when granted during its normal stop; a standby long gone is not waited for; an exception in a task of the HA loop ends its step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.config import parse_addr
from hsb.host import delivery as delivery_mod
from hsb.host import ha as ha_mod
from hsb.host import ha_cp as ha_cp_mod
from hsb.host import ha_standby as ha_standby_mod
from hsb.host import ha_switch as ha_switch_mod
from hsb.host import server as server_mod
from hsb.host import stopping as stopping_mod
from hsb.host.delivery import Delivery
from hsb.host.server import HostServer
from hsb.service.api import ServiceUnavailable
from hsb.service.builtin import EchoService
from hsb.wire.client import request
from hsb.wire.framing import encode
from tests.support.inproc import hot_standby, pair_in_hot_standby, refuse_handovers_finally, short_hand_over, until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET

pytestmark = pytest.mark.timeout(60)

HOST_TIMEOUT = 0.5  # the CP's, in pair_in_hot_standby


async def stopped(a: HostServer, tasks: list[asyncio.Task[Any]]) -> None:
    """What serve() does after graceful_stop(): the HA loop ends and the links close."""
    tasks[1].cancel()  # host-a's HA loop (start_pair: the CP's tick loop, then host-a's, host-b's)
    await asyncio.gather(tasks[1], return_exceptions=True)
    await a.close()


# ---------------------------------------------------------------------- 1: the CP is the arbiter
async def test_a_normal_stop_the_cp_never_took_note_of_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP never processes the active's `stopping` (restarting, the frame lost): the peer's
    `active_stopping` alone must not keep the standby from acting on the CP's `active_lost`."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_switch_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.host_stopping = lambda host: None  # type: ignore[method-assign]
        a.request_stop(takeover=False)
        await asyncio.wait_for(a.graceful_stop(), 15)
        await stopped(a, tasks)
        await until(lambda: b.ha.role == "active" and b.ha.serving, "host-b made active", timeout=HOST_TIMEOUT + 2)
        assert core.active is not None and core.active.name == "host-b"
        assert rec.events("active_stop_unconfirmed_taken_over"), rec.entries


async def test_a_normal_stop_the_cp_took_note_of_is_not_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsbctl stop --no-takeover` with the CP told: the standby goes to active_stopped (a named
    event) and stays the standby."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_switch_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        a.request_stop(takeover=False)
        await asyncio.wait_for(a.graceful_stop(), 15)
        await stopped(a, tasks)
        await until(lambda: b.ha.state == "active_stopped", "host-b sees the normal stop")
        await asyncio.sleep(HOST_TIMEOUT * 3)  # an observation window: a takeover would come within it
        assert b.ha.role == "standby" and b.ha.state == "active_stopped"
        assert cp.cp is not None
        assert cp.cp.active is None and cp.cp.active_stopped_normally == "host-a"
        ev = rec.events("active_stopped_not_taking_over")
        assert ev and ev[0]["host"] == "host-a" and ev[0]["cp_confirmed"] is True, rec.entries


# ---------------------------------------------------------------------- 2: SIGTERM hands over
async def test_a_stop_hands_over_although_a_resync_came_just_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        real = a.takeover.batch_write

        async def slow(*args: Any, **kw: Any) -> Any:
            await asyncio.sleep(0.2)  # (a slow storage: the resync is still being written at the stop)
            return await real(*args, **kw)

        a.takeover.batch_write = slow  # type: ignore[method-assign]
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        a.request_stop(takeover=True)
        await asyncio.wait_for(a.graceful_stop(), 25)
        assert rec.events("stopped_after_handover"), rec.entries
        assert b.ha.role == "active" and a.ha.role == "standby"
        assert cp.cp is not None
        assert cp.cp.active is not None and cp.cp.active.name == "host-b"


async def test_a_resync_asked_while_releasing_waits_for_the_handover(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        real = core.host_release
        core.host_release = lambda host: None  # type: ignore[method-assign]
        a.ha.post("switchover")
        await until(lambda: a.ha.state == "releasing", "releasing")
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        await until(lambda: a.ha.deferred_batch is not None, "the resync held by the HA loop")
        assert a.ha.state == "releasing" and a.ha.release_pending  # the resync waits
        core.host_release = real  # type: ignore[method-assign]
        assert core.active is not None
        real(core.active)
        await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover")
        await until(lambda: hot_standby(a, b), "hot standby the other way round")


async def test_a_stop_just_after_a_peer_link_blip_hands_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        # host-b's hello on its new connection is held back a moment: the blip lasts that long
        held: list[dict[str, Any]] = []
        real_hello = a.ha.peer_peer_hello

        async def later(msg: dict[str, Any]) -> None:
            held.append(msg)

        a.ha.peer_peer_hello = later  # type: ignore[method-assign]
        assert a.peer.inbound is not None
        a.peer.inbound.close()  # host-a's receiving connection drops; host-b's stays
        await until(lambda: a.ha.state == "serving", "host-a serving (its standby out of sight)")
        assert b.ha.state == "established"
        # as hsbctl stop asks it: the answer says what this stop will do, not "stops normally"
        ah, ap = parse_addr(a.bound["admin"])
        said = await request(ah, ap, SECRET, {"t": "stop", "takeover": True})
        assert said["msg"].startswith("host-a hands over to the standby through the CP, then stops; the peer link to host-b has been down for"), said
        assert "it waits up to 3 s for the link first" in said["msg"] and said["hands_over"] is True, said
        stop = asyncio.ensure_future(a.graceful_stop())
        await until(lambda: rec.events("stop_waits_for_standby"), "the stop waiting for the standby")
        a.ha.peer_peer_hello = real_hello  # type: ignore[method-assign]
        for m in held:
            a.ha.post("peer_frame", msg=m)
        await asyncio.wait_for(stop, 25)
        assert rec.events("stopped_after_handover"), rec.entries
        assert not rec.events("stop_hands_over_peer_link_down"), rec.entries  # (the link came back: the usual handover)
        assert b.ha.role == "active" and a.ha.role == "standby"


async def test_a_stop_long_into_a_peer_link_cut_hands_over_through_the_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found with the slow-links walk-through's status line: with the peer link down for longer
    than a blip, the standby still registered at the CP and following the ring, a stop of the
    active was the normal termination: nobody took over, the service ended until hsbctl promote,
    where a crash would have failed over. It hands over through the CP, at once (no wait for the
    link), as the CP grants it to the standby registered there."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        real_hello = a.ha.peer_peer_hello

        async def dropped(msg: dict[str, Any]) -> None:  # (host-b's hellos never arrive: the cut lasts)
            pass

        a.ha.peer_peer_hello = dropped  # type: ignore[method-assign]
        assert a.peer.inbound is not None
        a.peer.inbound.close()
        await until(lambda: a.ha.state == "serving", "host-a serving (its standby out of sight)")
        a.ha.standby_out_of_sight = time.monotonic() - 60  # a minute into the cut
        assert b.ha.state == "established" and b.ha.registered
        ah, ap = parse_addr(a.bound["admin"])
        said = await request(ah, ap, SECRET, {"t": "stop", "takeover": True})
        assert said["hands_over"] is True and said["msg"].startswith("host-a hands over to the standby through the CP, then stops;"), said
        assert "down for 60 s" in said["msg"] and "waits up to" not in said["msg"], said
        t0 = time.monotonic()
        await asyncio.wait_for(a.graceful_stop(), 25)
        assert time.monotonic() - t0 < 5.0
        assert not rec.events("stop_waits_for_standby"), rec.entries
        [warned] = rec.events("stop_hands_over_peer_link_down")
        assert warned["peer"] == "host-b" and warned["down_s"] >= 60, warned
        assert rec.events("stopped_after_handover") and not rec.events("stop_handover_failed"), rec.entries
        assert a.ha.role == "standby" and a.exit_code == 0
        await until(lambda: b.ha.role == "active" and b.ha.serving, "host-b the active")
        assert cp.cp is not None and cp.cp.active is not None and cp.cp.active.name == "host-b"
        a.ha.peer_peer_hello = real_hello  # type: ignore[method-assign]


async def test_a_switchover_whose_release_cannot_be_sent_ends_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "log", rec)  # (the batch procedures log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        monkeypatch.setattr(a.cp, "send", lambda msg: False)  # the CP link is down just then
        t0 = time.monotonic()
        a.ha.post("switchover")
        await until(lambda: rec.events("switchover_not_sent"), "the switchover ended", timeout=2)
        assert time.monotonic() - t0 < 1.0
        assert a.ha.state == "established" and not a.ha.release_pending, a.ha.state


# ---------------------------------------------------------------------- 3: the HA loop keeps turning
class DatabaseDown(EchoService):
    """host-a's service cannot take anything until `up` is set (its database is down)."""

    up = asyncio.Event()

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        if self.host == "host-a" and not self.up.is_set():
            raise ServiceUnavailable("database down")
        return data


async def test_the_ha_loop_turns_while_a_switchover_waits_for_replies(tmp_path: Path) -> None:
    from tests.support.hostclient import FakeTerminal

    DatabaseDown.up = asyncio.Event()
    async with pair_in_hot_standby(tmp_path, DatabaseDown) as (cp, a, b, tasks):
        try:
            t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            t.send({"t": "msg", "id": 1, "data": "x"})
            await until(lambda: a.delivery.health.state == "failing", "the service failing")
            handled: list[float] = []
            real = a.ha.ev_peer_frame

            async def seen(msg: dict[str, Any]) -> None:
                if msg.get("mark"):
                    handled.append(time.monotonic())
                await real(msg)

            a.ha.ev_peer_frame = seen  # type: ignore[method-assign]
            waiting = asyncio.Event()
            real_drain = a.delivery.drain

            async def drain(timeout: float) -> bool:
                waiting.set()
                return await real_drain(timeout)

            a.delivery.drain = drain  # type: ignore[method-assign]
            a.ha.post("switchover")
            await until(lambda: a.ha.state == "releasing" and not a.ha.release_pending, "released")
            await asyncio.wait_for(waiting.wait(), 10)  # the replies' wait has begun
            t0 = time.monotonic()
            a.ha.post("peer_frame", msg={"t": "hb", "mark": True})
            await until(lambda: handled, "the HA loop handling a heartbeat", timeout=5)
            assert handled[0] - t0 < 1.0, handled[0] - t0
            assert a.ha.state == "releasing"  # the handover still waits for the reply
            DatabaseDown.up.set()  # the database is back: the reply goes, then the handover
            await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover")
            r = await t.wait(lambda m: m["t"] == "reply")
            assert r["id"] == 1
            await t.close()
        finally:
            DatabaseDown.up.set()


async def test_the_standby_acts_on_the_active_lost_while_its_standby_opens_wait(tmp_path: Path) -> None:
    """A batch read whose standby opens are not answered (up to 30 s) does not hold up a failover."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):

        async def unanswered(entries: Any, timeout: float = 30.0) -> None:
            waiting.set()
            await asyncio.sleep(30)  # (the opens' answers never come)

        waiting = asyncio.Event()
        b.sessions_ctl.apply_batch = unanswered  # type: ignore[method-assign]
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        await until(lambda: b.ha.state == "batch_reading", "host-b reading the new batch")
        await asyncio.wait_for(waiting.wait(), 10)  # its opens wait for answers
        await stopped(a, tasks)  # host-a gone, as a crash
        await until(lambda: b.ha.role == "active" and b.ha.serving, "host-b made active", timeout=HOST_TIMEOUT + 2.5)


# ---------------------------------------------------------------------- 4: an unencodable reply
async def test_a_reply_that_cannot_be_encoded_is_answered_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(delivery_mod, "log", rec)

    class Surrogate:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            return "x\ud800" if message_id == 1 else "fine"

    sent: list[dict[str, Any]] = []

    def send(msg: dict[str, Any]) -> bool:
        encode(msg)  # as CPLink.send does
        sent.append(msg)
        return True

    d = Delivery(Surrogate(), send, lambda: 1)  # type: ignore[arg-type]
    d.deliver("T1", 1, "a", False)
    d.deliver("T1", 2, "b", False)
    assert await d.drain(1.0)
    assert [m["id"] for m in sent] == [1, 2]
    assert sent[0]["data"].startswith("error:") and sent[1]["data"] == "fine"
    ev = rec.events("service_reply_unencodable")
    assert len(ev) == 1 and ev[0]["terminal"] == "T1" and ev[0]["id"] == 1 and "surrogate" in ev[0]["error"], rec.entries
    assert d.in_flight == 0 and d.counters["errors"] == 1


# ---------------------------------------------------------------------- 5: named events, close
async def test_losing_and_regaining_hot_standby_are_named_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "log", rec)  # (the batch procedures log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        rec.entries.clear()  # (what both hosts logged on the way to hot standby)
        assert a.peer.inbound is not None
        a.peer.inbound.close()
        await until(lambda: rec.events("hot_standby_lost"), "hot_standby_lost")
        await until(lambda: rec.events("hot_standby_established"), "hot_standby_established again")
        assert rec.events("hot_standby_lost")[0]["peer"] == "host-b"
        assert rec.events("hot_standby_established")[0].get("how") == "peer link restored", rec.entries


async def test_a_close_cancels_the_lease_timer(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        assert a.ha._lease_timer is not None
        timer = a.ha._lease_timer
        await stopped(a, tasks)
        assert timer.cancelled() and a.ha._lease_timer is None


# ---------------------------------------------------------------------- 6: a stop and its handover's end
def answer_handovers_late(core: Any, after: float) -> None:
    """The CP answers a handover `after` seconds late, as when it waits for the standby's sessions
    (up to its HANDOVER_WAIT_S)."""
    real = core.host_handover

    def late(host: Any, wait: bool = True) -> None:
        asyncio.get_running_loop().call_later(after, real, host, wait)

    core.host_handover = late


def sent_by(link: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `link` sends from now on (and sends still)."""
    sent: list[dict[str, Any]] = []
    real = link.send

    def send(msg: dict[str, Any]) -> bool:
        sent.append(msg)
        return bool(real(msg))

    monkeypatch.setattr(link, "send", send)
    return sent


def slow_batch_writes(a: HostServer, write: str) -> list[float]:
    """host-a's batch writes take 0.2 s, then succeed or fail (`write`); returns when each began."""
    began: list[float] = []
    real = a.takeover.batch_write

    async def slow(*args: Any, **kw: Any) -> Any:
        began.append(time.monotonic())
        await asyncio.sleep(0.2)
        if write == "fails":
            raise OSError("storage failed")
        return await real(*args, **kw)

    a.takeover.batch_write = slow  # type: ignore[method-assign]
    return began


@pytest.mark.parametrize("write", ["succeeds", "fails"])
async def test_a_resync_held_by_a_stops_handover_is_dropped_when_the_cp_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """The standby asks for a resync while SIGTERM's handover is releasing; the CP refuses the
    handover: the held resync is not written into the normal stop that follows (no batch for the
    standby of a stopping host, and a batch write that fails does not make it `serving` again)."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "log", rec)  # (the batch procedures log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        real_release = core.host_release
        core.host_release = lambda host: None  # type: ignore[method-assign]
        refuse_handovers_finally(core)  # (for good: the normal stop follows at once)
        writes = slow_batch_writes(a, write)
        sent = sent_by(a.peer, monkeypatch)
        a.request_stop(takeover=True)
        stop = asyncio.ensure_future(a.graceful_stop())
        await until(lambda: a.ha.state == "releasing", "the stop's handover releasing")
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        await until(lambda: rec.events("batch_write_deferred"), "the resync held")
        assert core.active is not None
        real_release(core.active)  # "released": the handover goes to the CP, which refuses it
        await asyncio.wait_for(stop, 20)
        await asyncio.sleep(0.5)  # (a batch write started meanwhile would end by now)
        assert writes == [] and rec.events("batch_write_dropped"), rec.entries  # not even begun
        assert [m for m in sent if m["t"] == "batch_write_complete"] == []
        assert a.ha.state == "stopping" and not a.is_serving_active(), (a.ha.state, a.ha.last_error)
        assert rec.events("switchover_refused"), rec.entries


@pytest.mark.parametrize("write", ["succeeds", "fails"])
async def test_a_batch_write_that_ends_after_a_normal_stop_began_leaves_it_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """`hsbctl stop --no-takeover` while a batch write waits on storage: the write ending after
    the stop began sends no BATCH WRITE COMPLETE (standby sessions for a stopping host) and, failed,
    does not make the host `serving` (/active true) during its stop."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        writes = slow_batch_writes(a, write)
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        await until(lambda: writes, "the resync's batch write under way")
        sent = sent_by(a.peer, monkeypatch)
        ended = "batch_write_complete" if write == "succeeds" else "batch_write_failed"
        before = len(rec.events(ended))  # (the pair's first batch write logged one)
        a.request_stop(takeover=False)
        await asyncio.wait_for(a.graceful_stop(), 15)
        await until(lambda: len(rec.events(ended)) > before, "the batch write's end")
        assert [m for m in sent if m["t"] == "batch_write_complete"] == []
        assert a.ha.state == "stopping" and not a.is_serving_active(), (a.ha.state, a.ha.last_error)


async def test_a_stop_waits_for_the_cps_answer_to_a_handover_it_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop's limit runs out after the handover went to the CP (which waits up to 2 s for the
    standby's sessions): a normal stop then would end the role with nobody active. The stop waits
    for the answer and ends as the standby."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        answer_handovers_late(core, 1.0)
        short_hand_over(a, monkeypatch, 0.5)
        a.request_stop(takeover=True)
        await asyncio.wait_for(a.graceful_stop(), 15)
        assert rec.events("stopped_after_handover") and not rec.events("stop_handover_failed"), rec.entries
        assert a.ha.role == "standby" and a.exit_code == 0
        await until(lambda: core.active is not None and core.active.name == "host-b" and b.ha.role == "active" and b.ha.serving, "host-b the active")


async def test_a_host_demoted_during_its_normal_stop_stops_as_the_standby(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP grants a handover after the stop stopped waiting for it (the normal stop under way):
    the host stops as the standby it now is, it does not start again as one (no standby_startup to
    the new active), nor tell the CP or the peer of a normal stop (which the CP would not answer)."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "HANDOVER_ANSWER_S", 0.0)  # the stop does not wait for the answer
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        answer_handovers_late(core, 0.6)
        real = a.hand_over

        async def short(ask: bool = True) -> bool:
            done = await real(timeout=0.2, ask=ask)
            if not done:  # the normal stop's replies in progress take a while: the CP's grant comes meanwhile
                # (a normal stop: the standby went out of sight meanwhile, as HA.ev_peer_down has it;
                # with hot standby still established the stop ends as a lost link instead,
                # tests/test_host_stop_out_of_time.py)
                a.ha.established_since = None

                async def slow(timeout: float) -> bool:
                    await asyncio.sleep(1.5)
                    return True

                monkeypatch.setattr(a.delivery, "drain", slow)
            return done

        monkeypatch.setattr(a, "hand_over", short)
        to_peer, to_cp = sent_by(a.peer, monkeypatch), sent_by(a.cp, monkeypatch)
        a.request_stop(takeover=True)
        t0 = time.monotonic()
        await asyncio.wait_for(a.graceful_stop(), 15)
        assert time.monotonic() - t0 < 3.0
        assert rec.events("stopped_after_handover") and not rec.events("cp_did_not_confirm_stop"), rec.entries
        assert a.ha.role == "standby" and a.ha.state == "stopping" and a.exit_code == 0, (a.ha.role, a.ha.state)
        await asyncio.sleep(0.3)  # (what the HA loop would do after the demotion)
        assert a.ha.state == "stopping"
        assert [m["t"] for m in to_peer if m["t"] in ("standby_startup", "active_stopping")] == []
        assert [m for m in to_cp if m["t"] == "stopping"] == []
        await until(lambda: core.active is not None and core.active.name == "host-b" and b.ha.role == "active" and b.ha.serving, "host-b the active")


async def test_a_stop_long_after_the_standby_went_does_not_wait_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby host was stopped and stays down: a later stop of the active does not wait for
    it (no stop_waits_for_standby). Taken for one behind a peer-link cut (out of sight a minute),
    its handover goes to the CP, which has no standby registered and refuses it: the normal stop
    follows at once (not asked again for the 15 s of a standby whose CP link blipped)."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        b.request_stop(takeover=True)
        await asyncio.wait_for(b.graceful_stop(), 15)
        tasks[2].cancel()  # host-b's HA loop
        await asyncio.gather(tasks[2], return_exceptions=True)
        await b.close()
        # (the standby said it stops: host-a does not take it for a blip, standby_out_of_sight stays None)
        await until(lambda: a.ha.state == "serving", "host-a serving without its standby")
        a.ha.standby_out_of_sight = time.monotonic() - 60  # a minute ago
        ah, ap = parse_addr(a.bound["admin"])
        said = await request(ah, ap, SECRET, {"t": "stop", "takeover": True})
        assert said["msg"].startswith("host-a hands over to the standby through the CP, then stops;"), said
        t0 = time.monotonic()
        await asyncio.wait_for(a.graceful_stop(), 15)
        assert time.monotonic() - t0 < 2.5
        assert not rec.events("stop_waits_for_standby"), rec.entries
        [failed] = rec.events("stop_handover_failed")
        assert failed["then"] == "normal stop", failed
        assert a.ha.role == "active" and a.ha.state == "stopping" and a.exit_code == 0
        assert cp.cp is not None and cp.cp.active is None  # (the CP recorded the normal stop: nobody serves)


# ---------------------------------------------------------------------- 7: a task's bug ends its step
async def test_a_standby_whose_standby_opens_fail_asks_for_the_batch_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "log", rec)  # (the batch procedures log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        real = b.sessions_ctl.apply_batch
        calls: list[int] = []

        async def broken_once(entries: Any, timeout: float = 30.0) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            await real(entries, timeout)

        b.sessions_ctl.apply_batch = broken_once  # type: ignore[method-assign]
        a.ha.post("peer_frame", msg={"t": "resync_request", "startup_id": a.ha.partner_startup_id, "reason": "test"})
        await until(lambda: calls, "host-b applying the new batch")
        await until(lambda: len(calls) >= 2 and hot_standby(a, b), "hot standby again, the batch asked for again", timeout=5)
        assert rec.events("ha_task_error") and rec.events("batch_read_failed"), rec.entries


async def test_a_switchover_whose_wait_for_replies_fails_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replies' wait raising (a bug) does not leave the active releasing for ever (the CP
    holding its release: nothing delivered to it): the switchover goes on to the handover, as after
    a wait that timed out, and the CP grants or refuses it."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "log", rec)  # (the batch procedures log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):

        async def broken(timeout: float) -> bool:
            raise RuntimeError("a bug")

        monkeypatch.setattr(a.delivery, "drain", broken)
        a.ha.post("switchover")
        await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover", timeout=5)
        assert rec.events("ha_task_error"), rec.entries
        await until(lambda: hot_standby(a, b), "hot standby the other way round")


@pytest.mark.parametrize("takeover", ["false", "no", 0, None])
async def test_a_stop_whose_takeover_is_not_a_boolean_is_refused_and_nothing_stops(tmp_path: Path, takeover: Any) -> None:
    """`{"t": "stop", "takeover": "false"}` (a script's string): bool("false") is True, so the
    active would have handed over and stopped. Refused, saying why; the pair serves on."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        ah, ap = parse_addr(a.bound["admin"])
        said = await request(ah, ap, SECRET, {"t": "stop", "takeover": takeover})
        assert said["ok"] is False and "'takeover' must be true or false" in said["msg"], said
        assert not a.should_exit.is_set() and a.ha.role == "active" and hot_standby(a, b)


async def test_the_old_active_whose_link_took_the_demoted_frame_with_it_becomes_the_standby(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned switchover is granted; the CP's `demoted` to the old active is lost with its link.
    The old active, still the active in its own eyes, registers again as the active: it was
    refused (active_exists) and fenced itself, exit 75, leaving the pair without a standby after a
    planned switchover. The CP tells it it handed over; it becomes the standby."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    monkeypatch.setattr(ha_cp_mod, "log", rec)  # (the CP link's events log there)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        assert cp.cp is not None
        link = cp.cp.active
        assert link is not None and link.name == "host-a"
        real = link.send

        def send(msg: dict[str, Any]) -> Any:
            if msg.get("t") == "demoted":
                assert link.transport is not None
                link.transport.abort()  # the link goes, and the frame with it
                return None
            return real(msg)

        monkeypatch.setattr(link, "send", send)
        a.ha.post("switchover")
        await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "host-a the standby", timeout=10)
        await until(lambda: hot_standby(b, a), "hot standby the other way round", timeout=15)
        assert rec.events("handed_over_while_link_down"), rec.entries
        assert a.ha.state != "fenced" and not a.should_exit.is_set()


async def test_nothing_reaches_the_service_once_the_host_is_closing(tmp_path: Path) -> None:
    """The host's close cancels the deliveries, then waits for a role hook still running (up to
    hook_timeout) before it closes the CP link: a deliver read meanwhile, the host still granted,
    started a new worker and went to a service that is shutting down."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        hook_done = asyncio.Event()
        in_hook: list[bool] = []
        real_close = a.hook.close

        async def slow_hook_close() -> None:
            in_hook.append(True)
            await hook_done.wait()
            await real_close()

        a.hook.close = slow_hook_close  # type: ignore[method-assign]
        closing = asyncio.ensure_future(a.close())
        await until(lambda: bool(in_hook), "host-a's close waiting for its role hook")
        assert a.ha.granted  # (still the active in its own eyes while the hook finishes)
        a.sessions_ctl.on_cp_frame({"t": "deliver", "terminal": "T00001", "id": 99, "data": "late", "redelivered": False})
        assert not a.delivery.queues and not a.delivery.workers
        hook_done.set()
        await asyncio.wait_for(closing, 10)


async def test_a_stop_whose_handover_went_unanswered_hands_nothing_more_to_its_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop's handover went to the CP and got no answer in time (the CP's journal slow, say):
    the stop goes on as a normal one, but the CP may still grant the handover and hand what this
    host holds to the new active. The normal stop's state reopened the delivery's gate, which the
    handover had closed, and the waiting messages went to this host's service too: both hosts
    ran them at once. Nothing more goes to its service; the CP holds them, marked."""
    handled: list[tuple[str, int]] = []

    class Recording(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            handled.append((terminal, message_id))
            return data

    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "HANDOVER_ANSWER_S", 0.3)
    async with pair_in_hot_standby(tmp_path, Recording) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.host_handover = lambda host, wait=True: None  # type: ignore[method-assign]  # never answered (nor granted) in time
        short_hand_over(a, monkeypatch, 0.3)
        a.request_stop(takeover=True)
        stop = asyncio.ensure_future(a.graceful_stop())
        await until(lambda: a.ha.state == "handing_over", "the handover sent")
        a.delivery.deliver("T00002", 1, "x", False)  # held back by the handover's gate
        await asyncio.wait_for(stop, 20)
        assert rec.events("stop_handover_unanswered") and rec.events("stop_handover_failed"), rec.entries
        assert ("T00002", 1) not in handled, handled


async def test_nothing_reaches_the_service_after_the_stop_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A normal stop whose release the CP confirms late (after the stop's 2 s wait): the drain
    finds nothing in progress and the stop says `stopping` while the CP still delivers. Those
    messages went to the service after `stopping`; their replies were refused (not_active) and
    the link closed before the CP confirmed the stop. They stay held at the CP, marked (one
    arriving just after `stopping` is given here, as a late delivery would be)."""
    from tests.support.hostclient import FakeTerminal
    from tests.support.inproc import keep_sending

    handled: list[tuple[float, int]] = []  # host-a's service

    class Recording(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if self.host == "host-a":
                handled.append((time.monotonic(), message_id))
            return data

    async with pair_in_hot_standby(tmp_path, Recording) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        real_release = core.host_release
        loop = asyncio.get_running_loop()
        core.host_release = lambda host: loop.call_later(2.5, real_release, host)  # type: ignore[method-assign,assignment]
        stopping_at: list[float] = []
        real_send = a.cp.send

        def send(msg: dict[str, Any]) -> bool:
            if msg.get("t") == "stopping":
                stopping_at.append(time.monotonic())
                # a delivery the CP sent before it read `stopping`, arriving just after it
                loop.call_soon(a.delivery.deliver, "T00002", 1, "late", False)
            return real_send(msg)

        a.cp.send = send  # type: ignore[method-assign]
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        sending = keep_sending(t, every=0.005)
        try:
            await until(lambda: len(handled) >= 20, "the load handled")
            a.request_stop(takeover=False)
            await asyncio.wait_for(a.graceful_stop(), 20)
            assert stopping_at, "no stopping was sent"
            late = [mid for at, mid in handled if at > stopping_at[0]]
            assert late == [], f"handed to the service after stopping: {late}"
            # a reply refused after `stopping` closed the link: the CP took the stop for a loss
            assert cp.cp is not None
            assert cp.cp.active_stopped_normally == "host-a" and b.ha.role == "standby"
        finally:
            sending.cancel()
            await t.close()


@pytest.mark.parametrize("answer", ["demoted", "handover_refused"])
async def test_a_normal_stop_during_a_handover_hands_nothing_to_the_service_until_the_cp_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """`hsbctl stop --no-takeover` while a planned switchover's handover is at the CP (its drain
    gave up with messages queued): the normal stop's state reopened the delivery's gate, and the
    next heartbeat answer handed the queued messages to this host's service while the CP could
    still grant the handover and hand them to the standby: both ran them at once. Until the CP
    answers, nothing goes to the service; granted, the stop ends as the standby; refused, the
    normal stop may hand them over."""
    from tests.support.hostclient import FakeTerminal

    hold = asyncio.Event()  # host-a's service is slow with T00001's first message
    handled: list[tuple[int, float]] = []  # host-a's service: (id, when)

    class Slow(EchoService):
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            if self.host == "host-a":
                handled.append((message_id, time.monotonic()))
                if message_id == 1:
                    await hold.wait()
            return data

    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, Slow) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        held: list[Any] = []
        real_handover = core.host_handover
        core.host_handover = lambda host, wait=True: held.append((host, wait))  # type: ignore[method-assign]  # the answer held back
        real_drain = a.delivery.drain
        monkeypatch.setattr(a.delivery, "drain", lambda timeout: real_drain(min(timeout, 0.3)))  # (10 s for a switchover's)
        answered: list[float] = []
        real_answered = a.ha.lease_answered

        def lease_answered(n: int) -> None:
            answered.append(time.monotonic())
            real_answered(n)

        monkeypatch.setattr(a.ha, "lease_answered", lease_answered)
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        try:
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            t.send({"t": "msg", "id": 1, "data": "m1"})
            t.send({"t": "msg", "id": 2, "data": "m2"})
            await until(lambda: a.delivery.in_flight == 2 and [m for m, _ in handled] == [1], "1 in the service, 2 queued behind it")
            a.ha.post("switchover")
            await until(lambda: held and a.ha.state == "handing_over", "the handover at the CP, unanswered")
            hold.set()  # 1 is answered; 2 waits at the handover's gate
            await until(lambda: a.delivery.in_flight == 1, "1 answered")
            a.request_stop(takeover=False)
            stop = asyncio.ensure_future(a.graceful_stop())
            n = len(answered)
            # (or the stop ended: the normal stop went on without the answer)
            await until(lambda: len(answered) >= n + 4 or stop.done(), "heartbeats answered during the stop")
            assert [m for m, _ in handled] == [1], handled
            assert not stop.done()  # it waits for the CP's answer
            answered_at = time.monotonic()
            host, wait = held[0]
            if answer == "demoted":
                real_handover(host, wait)
            else:
                refuse_handovers_finally(core)
                core.host_handover(host, wait)
            await asyncio.wait_for(stop, 20)
            assert a.exit_code == 0
            if answer == "demoted":
                assert a.ha.role == "standby" and rec.events("stopped_after_handover"), rec.entries
                assert [m for m, _ in handled] == [1], handled
                await until(lambda: b.ha.role == "active" and b.ha.serving, "host-b the active")
                r = await t.wait(lambda m: m["t"] == "reply" and m["id"] == 2)
                assert r["data"] == "m2"
            else:
                assert a.ha.state == "stopping" and not rec.events("stopped_after_handover"), rec.entries
                # handed to the service only after the refusal, by the normal stop
                assert [m for m, at in handled if m == 2 and at > answered_at] and all(at > answered_at for m, at in handled if m == 2), handled
        finally:
            hold.set()
            await t.close()


class Shielding(EchoService):
    """host-a's service finishes a section it shields (`section`, `ends` set when done) before it
    takes the cancel of its call, and says whether a call was still running when it was closed."""

    ends = asyncio.Event()
    running = 0
    closed_while_running: list[int] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        if self.host != "host-a":
            return data
        Shielding.running += 1
        try:
            section = asyncio.ensure_future(Shielding.ends.wait())
            try:
                await asyncio.shield(section)
            except asyncio.CancelledError:
                await section  # (its commit, say: not left half done)
                raise
            return data
        finally:
            Shielding.running -= 1

    async def close(self) -> None:
        if self.host == "host-a":
            Shielding.closed_while_running.append(Shielding.running)


@pytest.mark.parametrize("section", ["ends", "outlasts_the_bound"])
async def test_the_service_is_closed_once_its_cancelled_calls_have_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str) -> None:
    """The host's close cancels the calls under way and closed the service at once: a call that
    finishes a section it shields before taking the cancel still ran in a service closed under
    it. The close waits for those calls (up to CALLS_END_S from the cancel, then says so)."""
    Shielding.ends, Shielding.running, Shielding.closed_while_running = asyncio.Event(), 0, []
    rec = RecordingLog()
    monkeypatch.setattr(delivery_mod, "log", rec)
    monkeypatch.setattr(server_mod, "CALLS_END_S", 10.0 if section == "ends" else 0.3, raising=False)
    async with pair_in_hot_standby(tmp_path, Shielding) as (cp, a, b, tasks):
        a.delivery.deliver("T00001", 1, "x", False)
        await until(lambda: Shielding.running == 1, "the call in its section")
        if section == "ends":  # the section takes a second
            asyncio.get_running_loop().call_later(1.0, Shielding.ends.set)
        try:
            await asyncio.wait_for(stopped(a, tasks), 15)
        finally:
            Shielding.ends.set()
        if section == "ends":
            assert Shielding.closed_while_running == [0] and not rec.events("service_calls_outlive_close"), (
                Shielding.closed_while_running,
                rec.entries,
            )
        else:  # not for ever: said, and closed
            assert Shielding.closed_while_running == [1], Shielding.closed_while_running
            ev = rec.events("service_calls_outlive_close")
            assert len(ev) == 1 and ev[0]["calls"] == 1, rec.entries
