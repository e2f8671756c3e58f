"""hsbd's HA state machine: the CP link's events (hsb/host/ha_cp.py: the register sent, a
registration's and a grant's link part, a demotion, a fence, the link lost, the CP's errors and
refusals) and what the machine says of itself (hsb/host/ha_view.py: the sentence, status, the
peer hello, the ring's lag and position), driven by hand on an unstarted HostServer
(tests/support/hafakes.py) as its loop would, each test naming a behaviour that a mutation audit
of hsb/host/ha.py, ha_cp.py and ha_view.py found no test for (the rest of ha.py:
tests/test_host_ha_cycle_mutants.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hsb.host.states import ACTIVE_STOPPED, AWAITING_BATCH, ESTABLISHED, FENCED, SERVING, STARTING, WAITING
from tests.support.hafakes import active_host, calls, close, hooked, peer_active, standby_host

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- what the state machine says of itself


async def test_the_actives_sentence_tells_why_it_serves_without_a_standby(tmp_path: Path) -> None:
    """Serving without a standby: the sentence says whether the peer link is down or no standby
    is established over a link that is up; an active not granted says it does not serve, but
    one still starting says only that it starts."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        srv.peer.up = False
        assert ha.describe() == "active at epoch 3: serving without a standby (peer link down)"
        srv.peer.up = True
        assert ha.describe() == "active at epoch 3: serving without a standby (no standby established)"
        ha.granted = False
        assert ha.describe().startswith("active at epoch 3: not serving (host link to the CP down")
        ha.set_state(STARTING, "test")
        assert ha.describe() == "active: starting"
    finally:
        close(srv)


async def test_the_standbys_sentence_and_established_flag_follow_its_registration_and_the_actives_ring(tmp_path: Path) -> None:
    """An established standby not registered at the CP cannot take over: its sentence says so and
    status does not call it established; one whose active cannot write the ring says its view is
    stale; the active's normal stop is said confirmed by the CP or not."""
    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.set_state(ESTABLISHED, "batch read")
        assert ha.describe() == "standby: hot standby established, following peer's ring" and ha.is_established()
        ha.registered = False
        assert "not registered at the CP" in ha.describe() and not ha.is_established()
        assert ha.status()["established"] is False
        ha.registered = True
        ha.active_ring_failing = "disk full"
        assert "cannot write it (disk full)" in ha.describe() and not ha.is_established()
        ha.active_ring_failing = None
        ha.active_stopped_by = "host-a"
        ha.set_state(ACTIVE_STOPPED, "the active stopped")
        assert "but the CP did not confirm it" in ha.describe()
        ha.active_stop_confirmed = True
        assert ha.describe() == "standby: the active (host-a) stopped normally; not taking over"
    finally:
        close(srv)


async def test_an_active_whose_ring_writes_fail_is_not_established(tmp_path: Path) -> None:
    """The active's ring writes failing too long: hot standby is not established (the standby's
    view is stale), though the state is `established`."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    try:
        assert srv.ha.is_established()
        srv.ha.ring_unwritten = True
        assert not srv.ha.is_established() and srv.ha.status()["established"] is False
    finally:
        close(srv)


async def test_the_hello_names_each_roles_startup_id_epoch_and_ring_failure(tmp_path: Path) -> None:
    """The peer hello: a standby names its own startup id, an active its standby's; the epoch is
    the host's; an active says its ring writes fail only while they do."""
    srv, _ = standby_host(tmp_path)
    try:
        srv.ha.own_startup_id, srv.ha.partner_startup_id = 5, 9
        assert srv.ha.hello()["startup_id"] == 5
    finally:
        close(srv)
    (tmp_path / "a").mkdir()
    srv, _ = active_host(tmp_path / "a")
    try:
        srv.ha.own_startup_id, srv.ha.partner_startup_id = 5, 9
        hello = srv.ha.hello()
        assert hello["startup_id"] == 9 and hello["epoch"] == 3 and hello["ring_write_failing"] is None
        srv.ha.ring_unwritten = True
        assert srv.ha.hello()["ring_write_failing"]
    finally:
        close(srv)


async def test_the_ring_lag_counts_written_unread_records_and_those_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring lag (established active): the records written past the standby's next read,
    plus those its changes waiting to be written will take; none outside hot standby."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    try:
        monkeypatch.setattr(type(srv.takeover.store), "write_position", property(lambda _s: (1, 10)))
        monkeypatch.setattr(srv.takeover, "pending_records", lambda: 2)
        srv.ha.peer_ring_next = 8  # (records 8, 9 and 10 written, not read)
        assert srv.ha.ring_lag() == 3 + 2
        assert srv.ha.status()["ring_lag"] == 5
        srv.ha.set_state(SERVING, "peer link down")
        assert srv.ha.ring_lag() is None
    finally:
        close(srv)


async def test_a_standby_tells_its_ring_position_only_while_established(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby's ring position (its hello and heartbeats) is told only while it follows the
    ring (established), not a stale one from an earlier batch."""
    srv, _ = standby_host(tmp_path)
    try:
        monkeypatch.setattr(type(srv.takeover.store), "read_position", property(lambda _s: (1, 5)))
        srv.ha.set_state(WAITING, "registered")
        assert srv.ha.ring_next() is None
        srv.ha.set_state(ESTABLISHED, "batch read")
        assert srv.ha.ring_next() == 5
    finally:
        close(srv)


async def test_status_counts_refused_takeovers_apart_from_ended_switchovers(tmp_path: Path) -> None:
    """status: `switch_refusals` (takeovers the CP refused: hsbctl promote watches it) and
    `switchovers_ended` (planned switchovers that ended without the grant) are told apart."""
    srv, _ = standby_host(tmp_path)
    try:
        await srv.ha.ev_cp_frame({"t": "switch_refused", "reason": "no"})
        st = srv.ha.status()
        assert st["switch_refusals"] == 1 and st["switchovers_ended"] == 0
    finally:
        close(srv)


# ---------------------------------------------------------------- the CP link's events


async def test_a_registration_sets_what_the_session_side_and_delivery_take_from_it(tmp_path: Path) -> None:
    """The CP's `registered` (its link part): the session side knows the host registered, a reply
    is bounded by the smaller of the two hosts' frames, the service hears the CP's per-terminal
    bound, and a host registered as the standby clears the health of its service calls."""
    from hsb.wire.framing import payload_max

    srv, _ = standby_host(tmp_path)
    try:
        bounds = calls(srv, "tell_service_bounds")
        cleared = calls(srv.delivery.health, "cleared")
        assert not srv.sessions_ctl.cp_registered
        srv.ha.link_event({"t": "registered", "role": "standby", "epoch": 3, "lease": 2.0, "max_frame": 8192, "held_bound": 40})
        assert srv.sessions_ctl.cp_registered
        assert srv.delivery.max_reply == payload_max(min(8192, srv.cfg.host.max_frame))
        assert bounds == [(40,)] and cleared == [()]
    finally:
        close(srv)


async def test_a_grant_names_the_standby_sessions_it_promoted(tmp_path: Path) -> None:
    """The CP's `switch_granted`: the standby sessions are promoted, and their number kept (the
    takeover's account in status)."""
    srv, _ = standby_host(tmp_path)
    try:
        srv.sessions_ctl.promote_standby_sessions = lambda: 4  # type: ignore[method-assign]
        srv.ha.link_event({"t": "switch_granted", "epoch": 4, "lease": 2.0})
        assert srv.ha.switched_sessions == 4
    finally:
        close(srv)


async def test_a_demotion_ends_the_role_for_delivery_and_expects_the_kept_sessions(tmp_path: Path) -> None:
    """The CP's `demoted` (link part): delivery is cancelled as the role's end (not a mere
    cancel), and one that keeps standby sessions has the session side expect them; a fence's
    loop part cancels delivery as the role's end too."""
    srv, _ = active_host(tmp_path)
    try:
        cancels = calls(srv.delivery, "cancel")
        kept = calls(srv.sessions_ctl, "expect_kept")
        srv.ha.link_event({"t": "demoted", "epoch": 4, "active": "host-b", "keeps": True})
        assert cancels == [(("role_ended", True),)] and kept == [()]
        srv.ha.fenced("test")
        assert cancels[-1] == (("role_ended", True),) and len(cancels) == 2
    finally:
        srv.ha.close()
        srv.takeover.stop_ring_writer()


async def test_the_register_names_the_role_held_and_what_this_host_does(tmp_path: Path) -> None:
    """The register sent when the CP link comes up: the role this process holds now (a host
    started as the active, demoted since, registers as the standby), its startup id, and that it
    names its sessions (adopt), takes the CP's word on kept standby sessions as configured, and
    marks repeats itself. A link since lost gets no register."""
    srv, sent = active_host(tmp_path)
    try:
        srv.ha.set_state(WAITING, "demoted", role="standby")
        srv.ha.own_startup_id = 6
        await srv.ha.ev_cp_up()
        reg = sent.cp[-1]
        assert reg["t"] == "register" and reg["role"] == "standby" and reg["startup_id"] == 6
        assert reg["adopt"] is True and reg["marks_repeats"] is True and reg["keep_standby"] == srv.cfg.host.fast_switch
        n = len(sent.cp)
        srv.cp.fs = object()  # type: ignore[assignment]
        srv.cp.connects = 2
        await srv.ha.ev_cp_up(link=1)  # (the link it came up with is gone: another one is up)
        assert len(sent.cp) == n
    finally:
        srv.cp.fs = None
        close(srv)


async def test_keep_standby_follows_the_fast_switch_setting(tmp_path: Path) -> None:
    """`keep_standby` in the register is the host's fast_switch (conventional: no standby sessions)."""
    srv, sent = active_host(tmp_path)
    try:
        srv.cfg.host.fast_switch = not srv.cfg.host.fast_switch
        await srv.ha.ev_cp_up()
        assert sent.cp[-1]["keep_standby"] == srv.cfg.host.fast_switch
    finally:
        close(srv)


async def test_a_link_made_clears_only_its_own_problem_from_the_last_error(tmp_path: Path) -> None:
    """A link made (`why` None) clears the last error only if it was that link's problem."""
    srv, _ = active_host(tmp_path)
    try:
        srv.ha.last_error = "CP error x: y"
        await srv.ha.ev_link_problem("cp", None)
        assert srv.ha.last_error == "CP error x: y"
        await srv.ha.ev_link_problem("cp", "refused")
        await srv.ha.ev_link_problem("cp", None)
        assert srv.ha.last_error is None
    finally:
        close(srv)


async def test_the_cp_link_lost_forgets_the_switchover_request_and_tells_the_session_side(tmp_path: Path) -> None:
    """The CP link lost: a switchover request out on it is forgotten (the next goes at once), the
    session side hears of the loss, an active that was serving says it serves no more (status
    changed), and an established standby says its link is lost."""
    srv, _ = active_host(tmp_path)
    try:
        lost = calls(srv.sessions_ctl, "cp_lost")
        changed = calls(srv, "on_state_change")
        srv.ha.switch_requested_at = 1.0
        srv.ha.lost_serving = True
        await srv.ha.ev_cp_down("reset")
        assert srv.ha.switch_requested_at is None and lost == [()] and changed == [()]
    finally:
        close(srv)
    (tmp_path / "b").mkdir()
    srv, _ = standby_host(tmp_path / "b")
    try:
        srv.ha.set_state(ESTABLISHED, "batch read")
        await srv.ha.ev_cp_down("reset")
        assert srv.ha.last_error == "host link to the CP lost: reset"
    finally:
        close(srv)


async def test_a_registration_clears_a_link_lost_error_and_starts_each_role(tmp_path: Path) -> None:
    """`registered` in the loop: the last error of a lost CP link is cleared; an active still
    starting serves and sends ACTIVE STARTUP; a standby reopens its standby sessions and, waiting,
    sends STANDBY STARTUP."""
    srv, sent = standby_host(tmp_path)
    try:
        reopened = calls(srv.sessions_ctl, "reopen_standby_sessions")
        peer_active(srv)
        srv.ha.last_error = "host link to the CP lost: reset"
        await srv.ha.ev_cp_frame({"t": "registered", "role": "standby", "epoch": 3})
        assert srv.ha.last_error is None and reopened == [()]
        assert srv.ha.state == AWAITING_BATCH and sent.peer_kinds() == ["standby_startup"]
    finally:
        close(srv)
    (tmp_path / "a").mkdir()
    srv, sent = active_host(tmp_path / "a")
    try:
        srv.ha.state = STARTING
        await srv.ha.ev_cp_frame({"t": "registered", "role": "active", "epoch": 3})
        assert srv.ha.state == SERVING and "active_startup" in sent.peer_kinds(), sent.peer_kinds()
    finally:
        close(srv)


async def test_active_exists_for_a_host_that_held_the_role_is_a_fence(tmp_path: Path) -> None:
    """The CP's `active_exists` to a host started as the active that was granted the role before
    (epoch above 0): it was taken over from, it is fenced (not the start's rejoin as the standby)."""
    srv, _ = active_host(tmp_path)
    try:
        await srv.ha.ev_cp_frame({"t": "error", "code": "active_exists", "msg": "host-b is active"})
        assert srv.ha.state == FENCED and srv.ha.exit is not None
    finally:
        close(srv)


async def test_handed_over_is_an_actives_word_only(tmp_path: Path) -> None:
    """The CP's `handed_over` error to an active: its switchover was granted, the demotion lost,
    it takes the CP's epoch and is the standby; to a standby it is only an error said."""
    srv, _ = standby_host(tmp_path)
    try:
        await srv.ha.ev_cp_frame({"t": "error", "code": "handed_over", "msg": "m", "epoch": 5, "active": "host-a"})
        assert srv.ha.role == "standby" and srv.ha.last_error == "CP error handed_over: m"
    finally:
        close(srv)
    (tmp_path / "a").mkdir()
    srv, _ = active_host(tmp_path / "a")
    try:
        await srv.ha.ev_cp_frame({"t": "error", "code": "handed_over", "msg": "m", "epoch": 5, "active": "host-b"})
        assert srv.ha.role == "standby" and srv.ha.epoch == 5
    finally:
        close(srv)


async def test_a_refused_takeover_lets_the_next_request_go_at_once(tmp_path: Path) -> None:
    """The CP's `switch_refused`: the request is answered, the next one is not held back by it."""
    srv, _ = standby_host(tmp_path)
    try:
        srv.ha.switch_requested_at = 1.0
        await srv.ha.ev_cp_frame({"t": "switch_refused", "reason": "no"})
        assert srv.ha.switch_requested_at is None
        # (a request for the active role: a promote, or a takeover after a loss, not a switchover;
        # hsbctl promote reads the reason after "refused by the CP: ")
        assert srv.ha.last_error == "takeover refused by the CP: no", srv.ha.last_error
    finally:
        close(srv)


async def test_a_stops_handover_refused_for_no_standby_may_be_asked_again(tmp_path: Path) -> None:
    """A stop's handover refused because no standby was registered at the CP just then (its code
    `no_standby`), within the stop's time to ask again: the stop may ask again, not stop yet."""
    srv, _ = active_host(tmp_path, "handing_over")
    try:
        srv.ha.stop_handing_over = True
        srv.ha.stop_asks_until = time.monotonic() + 30
        await srv.ha.ev_cp_frame({"t": "handover_refused", "reason": "none", "code": "no_standby"})
        assert srv.ha.stop_may_ask_again and not srv.ha.stopping
    finally:
        close(srv)


async def test_the_hook_hears_serving_at_a_registration_that_grants_the_role(tmp_path: Path) -> None:
    """Granted the active role at its registration while still `starting` (the frame is read ahead
    of the loop): the hook hears `serving`, the state it holds as the active."""
    srv, _ = active_host(tmp_path)
    try:
        srv.ha.state = STARTING
        srv.ha.role_announced = False
        fired = hooked(srv)
        srv.ha.link_event({"t": "registered", "role": "active", "epoch": 3, "lease": 2.0})
        assert [(f[0], f[1]) for f in fired] == [("active", SERVING)], fired
    finally:
        close(srv)
