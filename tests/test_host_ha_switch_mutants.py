"""The active role changing hands on the host side (hsb/host/ha_switch.py: a failover asked of
the CP, the grant taken up, a planned switchover, a promote; SPEC §5.4, §7), driven by hand on
an unstarted HostServer (tests/support/hafakes.py), each test naming a behaviour that a second
mutation audit of the module found no test for (the first: tests/test_host_ha_mutants.py): the
CP's later word confirming a normal stop the peer reported, no request while unregistered, a
promote asked as one, a grant counted and recorded as what was asked (or as a planned
switchover when nothing was), a grant to the active undoing its switchover at the new epoch, a
stopping active refusing a switchover, a stop's handover despite a stale view, a switchover
that waited for a resync under way and not ended by the loop's later turns, a release answered
twice, a failed wait for the replies, no handover from a host on its way out or for a
switchover before a demotion, and the demoted host's STANDBY STARTUP at once.

The audit (session 62): 49 hand-made mutants of ha_switch.py; 25 were killed by the existing
tests (test_host_ha_mutants, test_host_ha_decisions, test_host_switchover_refused,
test_host_promote_refused), 18 are killed here, 6 are equivalent (stop_following and
become_writer at a grant: each repeats the other's effect on a standby; the role check before
switchover_under_way and the deadline's "if None": a standby never has one under way, and a
second ask returns before; the release_pending reset before switchover_ended, which resets it;
an abandoned switchover's held batch notice, which a stopping host drops anyway).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.host.states import ACTIVE_STOPPED, AWAITING_BATCH, BATCH_WRITING, ESTABLISHED, HANDING_OVER, RELEASING
from tests.support.hafakes import active_host, close, peer_active, standby_host, until

pytestmark = pytest.mark.timeout(30)


async def test_the_cps_later_word_confirms_a_normal_stop_the_peer_reported(tmp_path: Path) -> None:
    """The peer reported the active's normal stop without the CP's answer (not confirmed: the
    standby says it would take over if the CP reports a loss); the CP's own report of that stop,
    coming after, confirms it, and the standby's view says so (not "the CP did not confirm it")."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.set_state(ESTABLISHED, "test")
        await srv.ha.on_active_lost("host-a", "stopping", via="peer")
        assert srv.ha.state == ACTIVE_STOPPED and not srv.ha.active_stop_confirmed
        assert "did not confirm" in srv.ha.describe()
        await srv.ha.on_active_lost("host-a", "stopping", via="cp")
        assert srv.ha.state == ACTIVE_STOPPED and srv.ha.active_stop_confirmed
        assert "did not confirm" not in srv.ha.describe() and "not taking over" in srv.ha.describe()
        assert sent.cp == []
    finally:
        close(srv)


async def test_a_standby_not_registered_at_the_cp_sends_no_switchover_request(tmp_path: Path) -> None:
    """Not registered at the CP (its link down, or another standby registered): the request for
    the role is not sent (the CP would drop it, or take it from a host it does not count as the
    standby); why is kept for status, and nothing of a takeover is recorded."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.registered = False
        await srv.ha.request_switchover("active lost (test)")
        assert sent.cp == [] and srv.ha.takeover is None and srv.ha.switch_req_n == 0
        assert srv.ha.last_error is not None and "not registered at the CP" in srv.ha.last_error
    finally:
        close(srv)


async def test_the_operators_promote_is_asked_as_a_promote_and_says_whether_planned(tmp_path: Path) -> None:
    """The request carries what it is: the operator's promote as `kind` "promote" (the CP grants a
    promote while paused, not an automatic failover: SPEC §5.4), a failover as "failover", and
    `planned` as given, each with its own request number."""
    srv, sent = standby_host(tmp_path)
    try:
        await srv.ha.ev_promote()
        srv.ha.switch_requested_at = None  # (a second request within the second: let it go)
        await srv.ha.request_switchover("planned (test)", planned=True)
        assert [(m["t"], m["kind"], m["planned"], m["req"]) for m in sent.cp] == [
            ("switchover", "promote", False, 1),
            ("switchover", "failover", True, 2),
        ]
    finally:
        close(srv)


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "failover"])
async def test_a_grant_is_counted_as_what_was_asked_for(tmp_path: Path, planned: bool) -> None:
    """The standby asked for the role for a planned switchover or after the active's loss: once
    granted, the takeover is recorded as planned or not, with the sessions switched, and counted
    as a switchover or a failover (status, metrics: an operator tells a planned move from a loss
    by them); the generation of the takeover file it followed is no longer shown as its own."""
    srv, sent = standby_host(tmp_path)
    try:
        await srv.ha.request_switchover("test", planned=planned)
        assert srv.ha.takeover is not None and srv.ha.takeover["planned"] is planned
        srv.ha.generation = 5  # (the takeover file's, as the standby followed it)
        srv.ha.switched_sessions = 3  # (the sessions the CP switched at the grant: hsb.host.ha_cp)
        await srv.ha.on_switch_granted(7)
        assert srv.ha.role == "active" and srv.ha.epoch == 7
        assert (srv.ha.counters["switchovers"], srv.ha.counters["failovers"]) == ((1, 0) if planned else (0, 1))
        assert srv.ha.takeover["epoch"] == 7 and srv.ha.takeover["planned"] is planned
        assert srv.ha.takeover["sessions_switched"] == 3
        assert srv.ha.generation is None  # (the active's own comes with its first batch write: not the one it followed)
    finally:
        close(srv)


async def test_a_grant_to_the_active_undoes_its_switchover_at_the_new_epoch(tmp_path: Path) -> None:
    """The CP gives the role back to the active whose planned switchover's standby was lost before
    the grant took effect (switchover_undone): the active serves on at the epoch the CP names
    (its frames at the old one would be stale there), and the switchover is over, said why."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    try:
        srv.ha.epoch = 4
        srv.ha.start_release()
        await srv.ha.on_switch_granted(6)
        assert srv.ha.role == "active" and srv.ha.epoch == 6 and srv.ha.switchovers_ended == 1
        assert srv.ha.state == ESTABLISHED and srv.ha.last_error is not None and "undone at epoch 6" in srv.ha.last_error
        assert srv.ha.counters["switchovers"] == 0 and srv.ha.counters["failovers"] == 0
    finally:
        close(srv)


async def test_a_grant_this_standby_did_not_ask_for_is_recorded_as_a_planned_switchover(tmp_path: Path) -> None:
    """The active's planned switchover hands the role to this standby, which asked for nothing
    since its last takeover: the grant is recorded afresh as a planned switchover (counted as
    one), not written over that earlier takeover's record (its reason, its failover)."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.takeover = {"reason": "active lost (an earlier one)", "requested_at": 1.0, "established": True, "planned": False, "epoch": 3}
        srv.ha.switch_requested_at = None  # (that request was answered long ago)
        await srv.ha.on_switch_granted(9)
        assert srv.ha.takeover["reason"] == "planned switchover" and srv.ha.takeover["planned"] is True
        assert srv.ha.takeover["epoch"] == 9 and srv.ha.takeover["requested_at"] > 1.0
        assert (srv.ha.counters["switchovers"], srv.ha.counters["failovers"]) == (1, 0)
    finally:
        close(srv)


async def test_a_stopping_active_refuses_a_planned_switchover(tmp_path: Path) -> None:
    """An active that is stopping (its stop did not hand over, or gave up on it) refuses the
    operator's planned switchover, saying so, and asks the CP for nothing: its release would
    start a switchover for a process about to end."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    try:
        srv.ha.stopping = True
        assert srv.ha.switchover_refusal() == f"{srv.ha.name} is stopping"
        await srv.ha.ev_switchover()
        assert sent.cp == [] and srv.ha.state == ESTABLISHED
        assert srv.ha.last_error == f"planned switchover refused: {srv.ha.name} is stopping"
    finally:
        close(srv)


async def test_a_stops_handover_goes_ahead_with_a_stale_standby_view_the_operators_does_not(tmp_path: Path) -> None:
    """The active's ring writes failing (the standby's view of the sessions stale): the operator's
    planned switchover is refused, saying why; a stop's handover goes ahead all the same (it hands
    over the view a crash would fail over to, rather than end the service for everyone), and its
    release is sent."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.ring_unwritten = True  # (check_ring_writes: failing past the threshold)
        refusal = ha.switchover_refusal()
        assert refusal is not None and "stale" in refusal
        assert ha.switchover_refusal(stop=True) is None
        ha.stop_handing_over = True
        await ha.ev_switchover()
        assert [m["t"] for m in sent.cp] == ["release"] and ha.release_pending
    finally:
        close(srv)


async def test_a_switchover_that_waited_for_a_resync_is_under_way_and_goes_on_once_released(tmp_path: Path) -> None:
    """A planned switchover asked while the standby resyncs waits for it, and is under way
    meanwhile (a stop then waits for it: HostServer.graceful_stop). Once the standby is ready
    again the release is sent, and the wait is over: the HA loop's later turns (which look at a
    waiting switchover every turn: `resync_done`) leave the switchover releasing, not end it as
    one whose standby never became ready."""
    srv, sent = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.resyncing = True
        await ha.ev_switchover()
        assert ha.switchover_under_way() and sent.cp == []
        ha.resyncing = False
        ha.established_since = 1.0
        ha.set_state(ESTABLISHED, "test: the standby ready again")
        ha.resync_done()
        assert [m["t"] for m in sent.cp] == ["release"] and ha.state == RELEASING
        for _ in range(3):  # (the loop's next turns)
            if ha.switch_after_resync is not None:
                ha.resync_done()
        assert ha.state == RELEASING and ha.release_pending and ha.switchovers_ended == 0 and ha.last_error is None
        assert ha.switchover_under_way()
    finally:
        close(srv)


async def test_a_release_answered_twice_finishes_the_replies_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP's `released` (every delivery it will send has arrived) starts the wait for the
    replies once; a second `released` for the same release (a repeat, or the one of a normal stop
    after it) starts nothing more: two waits would post two `replies_finished` of the same
    switchover, and the handover would be sent twice."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    spawned: list[object] = []

    def spawn(coro: object, failed: object) -> None:
        spawned.append(coro)
        coro.close()  # type: ignore[attr-defined]  # (a coroutine: never run here)

    monkeypatch.setattr(ha, "spawn", spawn)
    try:
        ha.start_release()
        assert [m["t"] for m in sent.cp] == ["release"] and ha.release_pending
        await ha.on_released()
        assert len(spawned) == 1 and not ha.release_pending
        await ha.on_released()
        assert len(spawned) == 1, "the replies were waited for twice"
    finally:
        close(srv)


async def test_a_wait_for_the_replies_that_fails_goes_on_to_the_handover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for the replies of a planned switchover raises (a bug): it goes on as a wait that
    timed out does, to the handover (incomplete), which the CP grants or refuses; it is not left
    releasing for ever, the CP delivering nothing to this host meanwhile."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha

    async def broken(timeout: float) -> bool:
        raise RuntimeError("a defect in the wait")

    monkeypatch.setattr(srv.delivery, "drain", broken)
    try:
        ha.start_release()
        await ha.on_released()
        await until(lambda: bool(ha.events), "the wait's end posted")
        kind, data = ha.events.popleft()
        assert (kind, data) == ("replies_finished", {"token": ha.switch_token, "complete": False})
        await ha.ev_replies_finished(**data)
        assert ha.state == HANDING_OVER and [m["t"] for m in sent.cp] == ["release", "handover"]
    finally:
        close(srv)


async def test_a_host_on_its_way_out_does_not_hand_over(tmp_path: Path) -> None:
    """The replies of a planned switchover finished, but the host is exiting meanwhile (fenced, or
    failed: `exit` set): it sends no handover; the role is not handed on by a process that ends."""
    from hsb.host.ha import Exit

    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        ha.exit = Exit(3, "fenced (test)")
        await ha.ev_replies_finished(token=ha.switch_token, complete=True)
        assert [m["t"] for m in sent.cp] == ["release"] and ha.state == RELEASING and not ha.handover_sent
    finally:
        close(srv)


async def test_the_replies_of_a_switchover_before_a_demotion_hand_nothing_over_after_a_later_grant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old active, demoted by its planned switchover's grant, may be granted the role again
    soon after (the new active lost at once) while the wait for that switchover's replies still
    runs: its end, when it comes, is of a switchover over, and hands nothing over."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    monkeypatch.setattr(ha, "spawn", lambda coro, failed: coro.close())  # (the wait: never run here)
    try:
        ha.start_release()
        await ha.on_released()
        token = ha.switch_token
        await ha.on_demoted("host-b")
        assert ha.role == "standby"
        await ha.on_switch_granted(ha.epoch + 1)
        assert ha.role == "active"
        await ha.ev_replies_finished(token=token, complete=True)
        assert [m["t"] for m in sent.cp] == ["release"], "a handover nobody asked for"
        assert ha.state != HANDING_OVER
    finally:
        close(srv)


async def test_the_old_active_demoted_starts_as_the_new_actives_standby_at_once(tmp_path: Path) -> None:
    """Demoted by its planned switchover's grant (not stopping), the old active sends its STANDBY
    STARTUP to the new active at once, registered and its peer link up, rather than at the new
    active's next heartbeat: hot standby is back as soon as it can be."""
    srv, sent = active_host(tmp_path, HANDING_OVER)
    try:
        peer_active(srv, instance="B1")
        await srv.ha.on_demoted("host-b")
        assert srv.ha.role == "standby" and srv.ha.state == AWAITING_BATCH
        assert [m["t"] for m in sent.peer if m["t"] == "standby_startup"] == ["standby_startup"]
    finally:
        close(srv)
