"""Tests from a mutation audit of hsb/cp/core.py's own methods (the operator's pause, the hosts'
registrations, a normal stop, a lost link, the tick, the lease waited for after a restart): each
test names a behaviour no other test pinned (docs/design.md, docs/protocol.md, SPEC §5.3-§5.5)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host, pair_with_sessions

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    """The frames of type `t` the CP wrote to the recording host `h`."""
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


async def test_a_pause_or_resume_said_again_changes_nothing(tmp_path: Path) -> None:
    """`hsbctl pause` twice, `hsbctl resume` twice: one history entry each, and a resume said
    again while the active's loss was already told does not tell the standby a second time."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    answers: list[str] = []
    cp.set_paused(True, "test", answers.append)
    cp.set_paused(True, "test", answers.append)
    a.connection_lost(None)  # lost while paused: told to the standby (its request would be refused)
    cp.set_paused(False, "test", answers.append)
    told = len(_said(b, "active_lost"))
    cp.set_paused(False, "test", answers.append)
    assert answers[1] == "already paused" and answers[3] == "already running"
    assert [e["kind"] for e in cp.history.entries] == ["pause", "resume"]
    assert len(_said(b, "active_lost")) == told


async def test_a_resume_tells_the_standby_again_of_an_active_gone_silent_while_paused(tmp_path: Path) -> None:
    """Paused, the active goes silent (its link still up): the tick tells the standby, whose
    request is refused. At the resume the standby hears of that loss again, as "silent", and
    may now take over."""
    cp = cp_core(tmp_path, 2)
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    cp.tick()
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp._last_tick = time.monotonic()  # (no stall of the CP's own)
    cp.tick()
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent"]
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert _said(b, "switch_refused") and cp.active is a
    cp.set_paused(False, "test")
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent", "silent"]


async def test_the_actives_of_the_last_epochs_are_kept_by_name_and_older_ones_go(tmp_path: Path) -> None:
    """Each new epoch records its active (journalled with it); the actives of the last
    EPOCH_HOSTS_KEPT epochs are kept for the error replies that name who may have processed a
    message, exactly that many, and older ones go (named by epoch only)."""
    from hsb.cp.core import EPOCH_HOSTS_KEPT

    cp = cp_core(tmp_path, 2)
    n = EPOCH_HOSTS_KEPT + 30
    for i in range(n):
        assert cp._raise_epoch(f"host-{i % 2}") == i + 1
    assert cp.recorded_active == f"host-{(n - 1) % 2}"
    assert sorted(cp.epoch_hosts) == list(range(n - EPOCH_HOSTS_KEPT + 1, n + 1))
    assert cp.epoch_hosts[n] == f"host-{(n - 1) % 2}"


async def test_a_host_that_names_no_instance_is_not_taken_for_the_same_process_again(tmp_path: Path) -> None:
    """Only a host process that names its instance (random per start) is known again on a new
    link: a second link of the same name without one, registering as the active (or as the
    standby), is refused, and the link registered first keeps its role."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    assert a.instance is None and b.instance is None
    a2 = fake_host(cp, "host-a", "active", record=True)
    b2 = fake_host(cp, "host-b", "standby", record=True)
    assert [m["code"] for m in _said(a2, "error")] == ["active_exists"]
    assert [m["code"] for m in _said(b2, "error")] == ["standby_exists"]
    assert cp.active is a and not a.closed and cp.standby is b and not b.closed
    assert a2.closed and b2.closed and cp.epoch == 1


async def test_a_second_standby_refused_is_said_at_the_cp(tmp_path: Path) -> None:
    """A host registering as the standby while another is (another pair's host with the same
    secret, a host started twice) is refused with standby_exists, and the CP's log says so (it
    said nothing: the refused host's log was the only trace)."""
    from structlog.testing import capture_logs

    cp = cp_core(tmp_path, 2)
    fake_host(cp, "host-a", "active")
    fake_host(cp, "host-b", "standby")
    with capture_logs() as logs:
        c = fake_host(cp, "host-c", "standby", record=True)
    assert [m["code"] for m in _said(c, "error")] == ["standby_exists"]
    said = [e for e in logs if e["event"] == "registration_refused"]
    assert [(e["host"], e["standby"], e["reason"], e["log_level"]) for e in said] == [("host-c", "host-b", "standby exists", "warning")], logs


async def test_the_wait_after_a_restart_covers_every_lease_that_may_still_run(tmp_path: Path) -> None:
    """After a restart the recorded active has restart_lease_s to come back: at least
    RECORDED_ACTIVE_WAIT_S, at least this CP's fresh_s + host_timeout, and at least the lease
    and fresh_s the CP before recorded plus LEASE_MARGIN. Its checkpoints meanwhile record the
    longer of its own and the recovered (host_lease, fresh_s), each on its own; its own after."""
    from hsb.cp.config import LEASE_MARGIN
    from hsb.cp.core import RECORDED_ACTIVE_WAIT_S

    cp = cp_core(tmp_path, 2)
    cp.journal.fresh_s = 1.0
    cp.host_timeout = 2.5
    assert cp.restart_lease_s == max(RECORDED_ACTIVE_WAIT_S, 3.5)
    cp.host_timeout = 4.0
    assert cp.restart_lease_s == 5.0
    cp.recovered_lease = (6.0, 2.0)  # a longer lease granted before the restart
    assert cp.restart_lease_s == 8.0 + LEASE_MARGIN
    assert cp.lease_bound() == (cp.host_lease, 1.0)  # (no restart: its own)
    cp.host_lease = 3.0
    cp.recovered_at = time.monotonic()
    assert cp.lease_bound() == (6.0, 2.0)
    cp.recovered_lease = (2.0, 0.5)
    cp.host_lease = 3.0
    assert cp.lease_bound() == (3.0, 1.0)
    cp.recovered_lease = (2.0, 7.0)
    assert cp.lease_bound() == (3.0, 7.0)
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1  # the wait is over
    assert cp.lease_bound() == (3.0, 1.0)


def _sessions(p: Any) -> list[dict[str, Any]]:
    """The `session` frames the CP wrote to the stand-in terminal `p`."""
    p.flush()
    return [m for m in p.transport.frames() if m.get("t") == "session"]


async def test_a_normal_stop_closes_the_actives_sessions_and_says_stopped_once_durable(tmp_path: Path) -> None:
    """The active stops normally (SPEC §5.3), just after a silence the CP had noted as a loss:
    its sessions close (the connected terminal is told), the standby hears "stopping", nobody
    is recorded as the active any more and no loss is pending; its `stopped` goes only once the
    role's end ("e" with no host) is durable."""
    from tests.support.cpcore import HeldJournal, recording_terminal

    cp = cp_core(tmp_path, 2)
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    p = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.tick()
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp._last_tick = time.monotonic()
    cp.tick()
    assert cp.loss is not None
    held = HeldJournal(cp)
    cp.host_stopping(a)
    assert cp.active is None and cp.recorded_active is None and cp.loss is None
    assert cp.terms["T00001"].active is None
    assert [(m["state"], m.get("reason")) for m in _sessions(p)][-1] == ("closed", "active host stopped normally")
    assert [m["why"] for m in _said(b, "active_lost")][-1] == "stopping"
    assert not _said(a, "stopped")
    held.release()
    assert [m["epoch"] for m in _said(a, "stopped")] == [cp.epoch]


def _host(cp: Any, name: str, instance: str, role: str) -> Any:
    """A recording host link of the process `instance`, registered with `role`."""
    h = fake_host(cp, name, record=True)
    h.instance = instance
    cp.host_register(h, role, 1)
    return h


async def test_the_old_active_back_during_a_planned_grant_is_told_it_handed_over_at_the_new_epoch(tmp_path: Path) -> None:
    """A planned switchover from A to B, its epoch not yet durable: A's link breaks and the same
    A process registers again as the active. It is told `handed_over` naming B and the new
    epoch (it registers as the standby then), and B keeps the role."""
    from tests.support.cpcore import HeldJournal, switch

    cp = cp_core(tmp_path, 2)
    a = _host(cp, "host-a", "ia", "active")
    b = _host(cp, "host-b", "ib", "standby")
    held = HeldJournal(cp)
    switch(cp, a, b, planned=True)
    assert cp.granting is b and cp.demoting is a and cp.epoch == 2
    a.connection_lost(None)
    a2 = _host(cp, "host-a", "ia", "active")
    [err] = _said(a2, "error")
    assert (err["code"], err["active"], err["epoch"]) == ("handed_over", "host-b", 2)
    assert a2.closed  # (told, its link closed: it registers again as the standby)
    held.release()
    assert cp.active is b and cp.epoch == 2


async def test_the_old_active_of_a_planned_switchover_takes_the_role_again_once_its_successor_is_gone(tmp_path: Path) -> None:
    """After a planned switchover from A to B, both links are lost (this CP stalled, or its
    network) before A heard it was demoted: the same A process registering as the active again
    is told it handed over (not refused `active_exists`, which fenced it: exit 75, the pair left
    without a standby; the alone.py review, session 69). Registered as the standby, it is told of
    B's loss once B has had its time to come back, asks, and is granted once the lease B may hold
    has run out (a reset of B's link by something in between leaves B serving on it)."""
    from tests.support.cpcore import switch

    cp = cp_core(tmp_path, 2)
    a = _host(cp, "host-a", "ia", "active")
    b = _host(cp, "host-b", "ib", "standby")
    switch(cp, a, b, planned=True)
    assert cp.active is b and cp.handed_over_by == ("host-a", "ia", 2)
    a.connection_lost(None)
    b.connection_lost(None)
    early = _host(cp, "host-a", "ia", "active")
    assert [m["code"] for m in _said(early, "error")] == ["handed_over"] and cp.active is b
    a2 = _host(cp, "host-a", "ia", "standby")
    assert cp.standby is a2 and not _said(a2, "active_lost")  # (B's time to come back first)
    _waited(cp)
    assert [m["host"] for m in _said(a2, "active_lost")] == ["host-b"]
    cp.host_switchover(a2, "active lost", planned=False)
    assert cp.active is b and cp.deferred_ask is not None  # B's lease may still run
    b.last_rx -= cp.host_lease + 1  # (later: B's lease surely ran out)
    cp._deferred_switchover()
    assert cp.active is a2 and cp.epoch == 3


def _waited(cp: Any) -> None:
    """The CP's tick once the wait for a lost active to register again is over (hsb.cp.alone)."""
    if cp.quiet_until is not None:
        cp.quiet_until = time.monotonic() - 1
    cp._last_tick = time.monotonic()
    cp.tick()


def _pair_with_sessions(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """host-a active, host-b standby (both recording), T00001 connected with a session at each."""
    cp, a, b, p = pair_with_sessions(tmp_path)
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    t = cp.terms["T00001"]
    assert t.active is not None and t.standby is not None
    return cp, a, b, p


async def test_a_lost_active_is_a_loss_kept_for_the_standby_and_its_sessions_wait_for_the_flip(tmp_path: Path) -> None:
    """The active's link lost (eof): the loss is noted (for the grant's record) and told to the
    standby once; its sessions stay for the flip. The standby's link lost then too: the standby's
    sessions go, and the active's wait for it to register again (hsb.cp.alone); nobody back once
    that wait ends, they are lost and the terminal is told its session closed."""
    cp, a, b, p = _pair_with_sessions(tmp_path)
    cp._last_tick = time.monotonic()  # (no stall of the CP's own)
    a.connection_lost(None)
    assert cp.loss is not None and cp.active is a
    assert [m["why"] for m in _said(b, "active_lost")] == ["eof"]
    t = cp.terms["T00001"]
    assert t.active is not None and t.standby is not None
    b.connection_lost(None)
    assert cp.standby is None and t.standby is None and t.active is not None and cp.kept_for is not None
    cp.kept_for = (cp.kept_for[0], time.monotonic() - 1)  # (the wait over)
    cp._last_tick = time.monotonic()
    cp.tick()
    assert t.active is None
    assert [(m["state"], m.get("reason")) for m in _sessions(p)][-1] == ("closed", "active host lost, no standby")


async def test_a_lost_standby_takes_only_its_own_sessions(tmp_path: Path) -> None:
    """The standby's link lost while the active serves: its standby sessions go, the active's
    stay, and the terminal is told nothing closed."""
    cp, a, b, p = _pair_with_sessions(tmp_path)
    before = len(_sessions(p))
    b.connection_lost(None)
    t = cp.terms["T00001"]
    assert cp.standby is None and t.standby is None and t.active is not None
    assert len(_sessions(p)) == before


async def test_the_active_lost_while_the_standbys_link_is_closed_unseen_loses_its_sessions(tmp_path: Path) -> None:
    """The standby's link closed (its loss not yet taken note of), then the active's lost: no
    standby can take over, so the active's sessions wait for it to register again (hsb.cp.alone),
    then are lost and the terminal told."""
    cp, a, b, p = _pair_with_sessions(tmp_path)
    b.closed = True  # (closed, its connection_lost still to come)
    a.connection_lost(None)
    assert cp.kept_for is not None and cp.kept_for[0] is a and cp.terms["T00001"].active is not None
    cp.kept_for = (a, time.monotonic() - 1)  # (the wait over)
    cp._last_tick = time.monotonic()
    cp.tick()
    assert cp.terms["T00001"].active is None
    assert [(m["state"], m.get("reason")) for m in _sessions(p)][-1] == ("closed", "active host lost, no standby")


async def test_an_active_link_the_cp_closed_is_a_loss_only_once_its_silence_outlasts_the_timeout(tmp_path: Path) -> None:
    """The CP closes the active's link itself (a protocol error): the host may still be serving
    on its lease, so no loss is noted and the standby hears nothing then; the tick tells it
    ("silent") once the host has been silent for host_timeout."""
    cp, a, b, p = _pair_with_sessions(tmp_path)
    cp.tick()
    a.closed_here = True
    a.connection_lost(None)
    assert cp.loss is None and not _said(b, "active_lost")
    cp.tick()
    assert not _said(b, "active_lost")
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    cp._last_tick = time.monotonic()
    cp.tick()
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent"] and cp.loss is not None


async def test_a_silent_standby_is_dropped_by_the_tick(tmp_path: Path) -> None:
    """The standby heard nothing from for longer than host_timeout: the tick aborts its link and
    takes it as lost (its standby sessions go); heard within the timeout, it stays."""
    cp, a, b, p = _pair_with_sessions(tmp_path)
    cp.tick()
    a.last_rx = time.monotonic()
    b.last_rx = time.monotonic() - 0.5 * cp.host_timeout
    cp._last_tick = time.monotonic()
    cp.tick()
    assert cp.standby is b and not b.closed
    b.last_rx = time.monotonic() - 1.5 * cp.host_timeout
    cp._last_tick = time.monotonic()
    cp.tick()
    assert b.closed and cp.standby is None and cp.terms["T00001"].standby is None
    assert cp.active is a and cp.terms["T00001"].active is not None


async def test_the_active_that_stopped_normally_may_register_again_at_once(tmp_path: Path) -> None:
    """The active stops normally and comes back (a restart of its own) registering as the
    active: it takes the role again at once, at a new epoch; it does not wait out its own lease,
    as another host would."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    fake_host(cp, "host-b", "standby")
    cp.host_stopping(a)
    assert cp.stop_lease_left() > 0
    a.connection_lost(None)
    a2 = fake_host(cp, "host-a", "active", record=True)
    assert cp.active is a2 and cp.epoch == 2 and not cp.deferred_registrations
    assert [m["epoch"] for m in _said(a2, "registered")] == [2]


async def test_a_standby_registration_is_refused_only_by_a_live_rival(tmp_path: Path) -> None:
    """The active cannot register as the standby on its own link (bad_role). A standby whose
    link closed unseen, or a planned switchover's old active whose link closed, does not keep
    another host from registering as the standby: the closed standby's sessions go then. The
    registered standby's frame size counts for the terminals' messages at once."""
    from tests.support.cpcore import HeldJournal, switch

    cp, a, b, p = _pair_with_sessions(tmp_path)
    b.closed = True  # (its connection_lost still to come)
    c = fake_host(cp, "host-c", record=True)
    c.max_frame = 4096
    cp.host_register(c, "standby", 1)
    assert cp.standby is c and not _said(c, "error") and cp.terms["T00001"].standby is None
    assert cp.host_frames["host-c"] == 4096

    (tmp_path / "planned").mkdir()
    cp = cp_core(tmp_path / "planned", 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    HeldJournal(cp)
    switch(cp, a, b, planned=True)
    assert cp.demoting is a
    a.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    assert cp.standby is c and not _said(c, "error")

    (tmp_path / "alone").mkdir()
    cp = cp_core(tmp_path / "alone", 2)
    a = fake_host(cp, "host-a", "active", record=True)
    cp.host_register(a, "standby", 1)
    assert [m["code"] for m in _said(a, "error")] == ["bad_role"] and cp.standby is None


async def test_a_standby_registering_anew_hears_of_a_loss_and_of_no_live_active(tmp_path: Path) -> None:
    """The active's link lost and told to the standby, whose link is lost then too: a standby
    registering afterwards hears of that loss again (on its own link), once the active has had
    RETURN_WAIT_S to register again (hsb.cp.alone), and its `registered` names no active (the
    active's link is down)."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    a.connection_lost(None)
    assert [m["why"] for m in _said(b, "active_lost")] == ["eof"]
    b.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    [reg] = _said(c, "registered")
    assert reg["active"] is None and reg["role"] == "standby"
    assert not _said(c, "active_lost")
    _waited(cp)
    assert [m["why"] for m in _said(c, "active_lost")] == ["eof"]


async def test_a_host_replaced_on_a_new_link_or_moved_to_the_active_role_leaves_no_stale_standby(tmp_path: Path) -> None:
    """The standby process registering again on a new link (same instance): the old link's
    standby sessions go with it. A registered standby (no active anywhere) registering as the
    active on the same link: it is the active, no longer the standby."""
    from tests.support.cpcore import recording_terminal

    cp = cp_core(tmp_path, 2)
    fake_host(cp, "host-a", "active")
    b = _host(cp, "host-b", "ib", "standby")
    recording_terminal(cp, "T00001")
    cp.host_open(b, "T00001", "standby", {})
    assert cp.terms["T00001"].standby is not None
    b2 = _host(cp, "host-b", "ib", "standby")
    assert cp.standby is b2 and b.closed and cp.terms["T00001"].standby is None

    (tmp_path / "moved").mkdir()
    cp = cp_core(tmp_path / "moved", 2)
    b = fake_host(cp, "host-b", "standby")
    cp.host_register(b, "active", 1)
    assert cp.active is b and cp.standby is None


async def test_a_deferred_registration_as_the_active_is_taken_once_the_old_lease_ran_out(tmp_path: Path) -> None:
    """After the active's normal stop another host registering as the active waits out the old
    lease (deferred), then takes the role; its deferral is forgotten then. A host that got a role
    meanwhile is not registered again by its deferral."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    cp.host_stopping(a)
    a.connection_lost(None)
    from hsb.cp.config import LEASE_MARGIN

    cp.stopped_at = time.monotonic() - cp.host_lease - LEASE_MARGIN + 0.3  # (almost run out)
    left = cp.stop_lease_left()
    assert 0 < left < 5
    b = fake_host(cp, "host-b", "active", record=True)
    c = fake_host(cp, "host-c", "active", record=True)
    assert cp.active is None and set(cp.deferred_registrations) == {"host-b", "host-c"}
    cp.host_register(c, "standby", 1)  # (it registers as the standby meanwhile)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while cp.deferred_registrations:
        assert loop.time() < deadline, "the deferred registrations never ran"
        await asyncio.sleep(0.01)
    assert cp.active is b and cp.standby is c and not c.closed
    assert not _said(c, "error") and [m["role"] for m in _said(c, "registered")] == ["standby"]


async def test_a_new_active_ends_the_loss_before_it_and_the_next_loss_is_told_anew(tmp_path: Path) -> None:
    """A's link lost, B told and granted the role: that loss is over. C registering as the
    standby hears of no loss; B's link lost then is told to C."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    a.connection_lost(None)
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.active is b and cp.loss is None
    c = fake_host(cp, "host-c", "standby", record=True)
    assert not _said(c, "active_lost")
    b.connection_lost(None)
    assert [(m["host"], m["why"]) for m in _said(c, "active_lost")] == [("host-b", "eof")]


async def test_an_active_back_after_its_normal_stop_is_an_ordinary_active_again(tmp_path: Path) -> None:
    """The active stops normally and registers again: its later loss (no standby then) is told to
    a standby registering afterwards, as any abnormal loss is."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    cp.host_stopping(a)
    a.connection_lost(None)
    a2 = fake_host(cp, "host-a", "active")
    assert cp.active is a2 and cp.active_stopped_normally is None
    a2.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    _waited(cp)
    assert [(m["host"], m["why"]) for m in _said(c, "active_lost")] == [("host-a", "eof")]


async def test_the_recorded_active_not_back_is_told_no_more_once_a_host_held_the_role(tmp_path: Path) -> None:
    """After a restart the recorded active did not come back (told to the standby, owed again):
    once a host holds the role that is over, and after that host's normal stop a standby
    registering is not told the old active is "not back"."""
    cp = cp_core(tmp_path, 2)
    cp.recorded_active = "host-a"
    cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.tick()
    assert [m["why"] for m in _said(b, "active_lost")] == ["not back after the CP restarted"]
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.active is b and cp.not_back is None
    cp.host_stopping(b)
    b.connection_lost(None)
    c = fake_host(cp, "host-c", "standby", record=True)
    assert not _said(c, "active_lost")


async def test_a_silent_actives_loss_counts_from_when_it_was_first_noticed(tmp_path: Path) -> None:
    """The active silent past host_timeout: the first tick notes the loss (when, last frame
    heard) and tells the standby; later ticks of the same silence keep that note (the grant's
    duration counts from it) and tell the standby nothing more."""
    cp = cp_core(tmp_path, 2)
    cp.host_timeout = 30.0  # (a loaded machine's delay between a test's steps is no silence)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.tick()
    a.last_rx = time.monotonic() - 2 * cp.host_timeout
    for i in range(3):
        b.last_rx = time.monotonic()
        cp._last_tick = time.monotonic()
        cp.tick()
        if i == 0:
            first = cp.loss
        await asyncio.sleep(0.01)
    assert first is not None and cp.loss == first and first[1] == a.last_rx
    assert [m["why"] for m in _said(b, "active_lost")] == ["silent"]


async def test_an_active_closed_before_its_registration_was_durable_holds_no_role_to_wait_for(tmp_path: Path) -> None:
    """A registers as the active; before its epoch is durable (so before it is told
    `registered`, and holds no lease) the CP closes its link. Another host registering as the
    active is not refused for it: it takes the role at the next epoch, and A is never told it
    was registered."""
    from tests.support.cpcore import HeldJournal

    cp = cp_core(tmp_path, 2)
    held = HeldJournal(cp)
    a = fake_host(cp, "host-a", "active", record=True)
    assert cp.active is a and not cp.announced
    a.closed_here = True
    a.connection_lost(None)
    b = fake_host(cp, "host-b", "active", record=True)
    assert not _said(b, "error") and cp.active is b and cp.epoch == 2
    held.release()
    assert [m["epoch"] for m in _said(b, "registered")] == [2] and not _said(a, "registered")
