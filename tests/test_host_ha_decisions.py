"""hsbd's decisions on who acts as the active, driven by hand on an unstarted HostServer (no CP, no
peer; its real HA and Delivery wired as in the daemon): a lease run out stops the hand-over of
messages to the service until a renewal, which lets what waited go on; a `demoted`, a `fenced` or
the CP's `fenced` error stops the host acting as the active in that moment, before the HA loop
runs, and a fence then ends the process with exit status 75; a registration's lease runs from the register's send time. A mutation audit found no test
failing when each of these was broken."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.cli import EXIT_FENCED
from hsb.host.lease import clock as lease_clock
from tests.support.unstarted import unstarted_active as _unstarted_active

pytestmark = pytest.mark.timeout(10)


async def _turns(n: int = 50) -> None:
    """Let the event loop run its ready tasks a few times (a worker that would hand a message over
    does so within them): the check that nothing happened."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(cond: Any, what: str, turns: int = 2000) -> None:
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_an_active_whose_lease_ran_out_hands_nothing_over_until_a_renewal_lets_it_go_on(tmp_path: Path) -> None:
    """An active whose heartbeats went unanswered for a lease acts as the active no more (the CP
    may have granted the standby): a message waits; the CP's answer to a heartbeat renews the
    lease, and the message waiting is handed over then, without another event."""
    srv, svc = _unstarted_active(tmp_path)
    ha = srv.ha
    try:
        ha.lease.until = lease_clock() - 0.001  # the lease ran out (the CP answered nothing)
        assert not ha.serving and not ha.may_deliver and not srv.is_serving_active()
        srv.delivery.deliver("T1", 1, "x", False)
        await _turns()
        assert svc.calls == [], "handed to the service with the lease run out: two actives"
        n = ha.lease.beat()
        ha.lease_answered(n)  # the CP answered a heartbeat sent now
        assert ha.serving and srv.is_serving_active()
        await _until(lambda: svc.calls, "the message waiting handed over once the lease was renewed")
        assert svc.calls == [("T1", 1, False)]
    finally:
        ha.close()
        srv.delivery.cancel()


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "demoted", "epoch": 4, "active": "host-b"},
        {"t": "fenced", "epoch": 4, "msg": "fenced at epoch 4"},
        {"t": "error", "code": "fenced", "msg": "a stale epoch"},
    ],
    ids=["demoted", "fenced", "fenced_error"],
)
async def test_a_host_demoted_or_fenced_stops_acting_as_the_active_in_that_moment(tmp_path: Path, frame: dict[str, Any]) -> None:
    """The frame's synchronous part (HostServer._cp_frame, before the HA loop takes it): the host
    no longer holds the role, whatever its lease says; a delivery behind the frame on the link is
    not handed to the service (the CP hands it to the new active: both would run it)."""
    srv, svc = _unstarted_active(tmp_path)
    ha = srv.ha
    try:
        if frame["t"] == "demoted":
            ha.link_event(frame)  # (the loop's part, the standby's start, needs the peer: not here)
        else:
            srv._cp_frame(frame)  # the link's part at once, then the loop's
        assert not ha.granted and not ha.serving and not ha.may_deliver, frame
        assert not srv.is_serving_active() and not ha.lease_status()["valid"], frame
        srv.delivery.deliver("T1", 1, "x", False)
        await _turns()
        assert svc.calls == [], f"handed to the service after {frame['t']}"
        if frame["t"] != "demoted":
            await ha.run_cycle()  # fenced: the host stops, with the fenced exit status
            assert ha.state == "fenced" and ha.exit is not None and ha.exit.code == EXIT_FENCED, (ha.state, ha.exit)
            assert srv.exit_code == EXIT_FENCED
    finally:
        ha.close()
        srv.delivery.cancel()


async def test_a_registration_lease_runs_from_the_registers_send_time(tmp_path: Path) -> None:
    """Registered as the active, the lease runs from when the register went (the CP heard the host
    no earlier), not from when the answer came: a late answer must not stretch it past the CP's
    host_timeout, after which it may grant the other host."""
    srv, _ = _unstarted_active(tmp_path)
    ha = srv.ha
    try:
        ha.lease.reset()
        ha.register_sent_at = lease_clock() - 1.5  # the answer came 1.5 s after the register went
        ha.link_event({"t": "registered", "role": "active", "epoch": 5, "lease": 2.0})
        assert ha.lease.until == ha.register_sent_at + 2.0
        assert ha.lease.remaining() <= 0.5
    finally:
        ha.close()
        srv.delivery.cancel()


async def test_nothing_goes_to_the_service_while_a_handover_is_at_the_cp_even_once_stopping(tmp_path: Path) -> None:
    """From a planned switchover's handover on, until the CP answers it, the CP may grant it and
    hand what waits here to the new active, marked: nothing goes to this host's service, in the
    state handing_over and in a stop's `stopping` that came meanwhile (its state no longer says
    it); the refusal's answer (switchover_ended) lets what waited go on."""
    srv, svc = _unstarted_active(tmp_path)
    ha = srv.ha
    try:
        ha.set_state("handing_over", "replies finished; handing over to the standby (test)")
        assert not ha.may_deliver and not srv.is_serving_active()
        ha.handover_sent = True
        ha.set_state("stopping", "normal termination (test)")
        assert not ha.may_deliver
        srv.delivery.deliver("T1", 1, "x", False)
        await _turns()
        assert svc.calls == [], "handed to the service while the handover was at the CP"
        ha.switchover_ended("switchover_refused", "refused (test)", "test")
        assert ha.may_deliver
        await _until(lambda: svc.calls, "the message waiting handed over once the handover was refused")
    finally:
        ha.close()
        srv.delivery.cancel()


async def test_the_replies_finished_of_an_ended_switchover_do_not_hand_over_a_later_one(tmp_path: Path) -> None:
    """A planned switchover ended (refused, abandoned) while its replies were still waited for,
    and another one released since: the first one's late end must not hand the second over before
    its own replies finished (the new active would get messages still in this host's service)."""
    srv, _ = _unstarted_active(tmp_path)
    ha = srv.ha
    sent: list[dict[str, Any]] = []
    srv.cp.send = lambda msg: sent.append(msg) or True  # type: ignore[method-assign, func-returns-value]
    try:
        ha.registered = True
        ha.start_release()
        first = ha.switch_token
        ha.switchover_ended("switchover_refused", "refused (test)", "test")
        ha.start_release()
        assert ha.state == "releasing" and ha.switch_token != first
        await ha.ev_replies_finished(token=first, complete=True)
        assert ha.state == "releasing" and not ha.handover_sent
        assert [m["t"] for m in sent] == ["release", "release"], sent
        await ha.ev_replies_finished(token=ha.switch_token, complete=True)
        assert ha.state == "handing_over" and ha.handover_sent and sent[-1]["t"] == "handover"
    finally:
        ha.close()
        srv.delivery.cancel()
