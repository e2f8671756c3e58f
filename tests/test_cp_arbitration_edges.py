"""The CP's arbitration at its edges, driven in-process through its own code (tests/support/cpcore):
a planned switchover's wait for standby sessions survives the standby's link being made again and
another host's stray `handover`; a normal termination leaves the active role free (for another
host to register as active, and with no automatic takeover after a CP restart); sessions kept for
a flip that can no longer come, or held by a standby link that is gone, are not left behind; a
switch's record ends at its deadline even when no reply comes, and a normal stop ends a loss."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, flipped, recording_terminal

pytestmark = pytest.mark.timeout(60)


def standby(cp: Any, name: str = "host-b", instance: str = "i1", **kw: Any) -> Any:
    b = fake_host(cp, name, **kw)
    b.instance = instance
    cp.host_register(b, "standby", 1)
    return b


def pair_waiting_for_a_handover(tmp_path: Path, record: bool = False, extra: int = 0, adopts: bool = False) -> tuple[Any, Any, Any, list[Any]]:
    """host-a active with 3 terminals' sessions, host-b standby with standby sessions for 2 of
    them; host-a released and handing over: the CP waits for the third standby session.
    `record`: host-a's transport keeps what the CP sends it; `extra`: terminals T00004… connected
    too, without a session; `adopts`: host-a is still naming its sessions (hsb.cp.adopt)."""
    cp = cp_core(tmp_path, 3 + extra)
    a = fake_host(cp, "host-a", record=record)
    a.adopts = adopts
    cp.host_register(a, "active", 1)
    b = standby(cp)
    terms = [recording_terminal(cp, f"T0000{i}") for i in range(1, 4 + extra)]
    for i in (1, 2, 3):
        cp.host_open(a, f"T0000{i}", "active", {})
    for i in (1, 2):
        cp.host_open(b, f"T0000{i}", "standby", {})
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None and cp.active is a
    return cp, a, b, terms


async def test_the_standbys_link_made_again_during_a_handover_wait_does_not_disconnect_every_terminal(tmp_path: Path) -> None:
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    b2 = standby(cp)  # the standby registers again on a new link (same instance): the old one dropped
    b.connection_lost(None)
    assert cp.active is a, "granted at once to a standby link holding no standby session"
    assert not any(t.closed for t in terms)
    for i in (1, 2, 3):  # the new link opens the standby sessions again: then it is granted
        cp.host_open(b2, f"T0000{i}", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b2 and not any(t.closed for t in terms)


async def test_another_hosts_handover_frame_does_not_cancel_the_actives_wait(tmp_path: Path) -> None:
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    cp.host_handover(b)  # not the active: refused, and the active's wait goes on
    assert cp._handover is not None and cp._handover.active is a
    cp.host_open(b, "T00003", "standby", {})  # the last owed session: granted
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)


@pytest.mark.parametrize("late", ["open", "adopt"])
async def test_a_session_the_released_active_opens_during_the_handover_wait_is_waited_for_too(tmp_path: Path, late: str) -> None:
    """T00004's logon hook began at host-a before its release and ended after its handover (or
    host-a, still naming its sessions after a CP restart, names T00004's then): host-a's `open`
    as the active is taken. The wait was for the standby sessions owed at the handover only: the
    grant came once host-b opened T00003's, and T00004, with no standby session, was disconnected
    by the flip, in a switchover that disconnects no terminal."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path, extra=1, adopts=late == "adopt")
    if late == "open":
        cp.host_open(a, "T00004", "active", {})
    else:
        cp.host_adopt(a, [("T00004", {})], last=False)
    assert cp.terms["T00004"].active is not None and cp.terms["T00004"].active.host is a
    cp.host_open(b, "T00003", "standby", {})  # the one owed at the handover
    assert cp.active is a, "granted without T00004's standby session"
    cp.host_open(b, "T00004", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)
    assert cp.terms["T00004"].active is not None and cp.terms["T00004"].active.host is b


@pytest.mark.parametrize("gone", ["bye", "close", "refuse"])
async def test_a_terminal_owed_a_standby_session_that_no_longer_needs_one_is_not_waited_for(tmp_path: Path, gone: str) -> None:
    """The handover waits for T00003's standby session. T00003 sends a message (held: host-a is
    released) and logs off, still connected for its reply; or host-a closes or refuses its session.
    The standby may never open that session (the ring keeps a terminal's last change only): the
    grant waited the full HANDOVER_WAIT_S for it, every terminal's service paused meanwhile."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    assert cp._handover is not None and cp._handover.owed == {"T00003"}
    t3 = cp.terms["T00003"]
    if gone == "bye":
        cp.terminal_msg(t3, 1, b"x")
        cp.terminal_bye(t3)
        assert t3.conn is not None, "closed before its reply"
    elif gone == "close":
        cp.host_close(a, "T00003", "active")
    else:
        cp.host_refuse(a, "T00003", "logon failed")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while cp.active is not b:
        assert loop.time() - t0 < 1.0, f"still waiting for {cp._handover and cp._handover.owed} (HANDOVER_WAIT_S is 2 s)"
        await asyncio.sleep(0.01)
    cp.settle_flip()
    assert not any(t.closed for t in terms)


@pytest.mark.parametrize("how", ["closed", "back"])
async def test_a_standby_session_the_standby_closes_during_the_handover_wait_is_waited_for_again(tmp_path: Path, how: str) -> None:
    """The handover waits for T00003's standby session; host-b closes T00001's meanwhile, while
    T00001 is served at host-a: "back", T00001 went and logged on again, host-a closed its session
    and opened a new one, and host-b read the close on the ring before the open; "closed", host-b
    closed it alone. T00001 was not owed again: the grant came once T00003's was open, and the
    flip, finding no standby session for T00001, closed its connection."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    if how == "back":
        terms[0].connection_lost(None)
        terms[0] = recording_terminal(cp, "T00001")
        cp.host_open(a, "T00001", "active", {})  # (its standby session of before still at host-b: not owed)
    cp.host_close(b, "T00001", "standby")
    cp.host_open(b, "T00003", "standby", {})
    assert cp.active is a, "granted without T00001's standby session"
    cp.host_open(b, "T00001", "standby", {})  # open again: granted
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)
    assert cp.terms["T00001"].active is not None and cp.terms["T00001"].active.host is b


async def test_a_terminal_back_during_the_handover_wait_to_a_session_adopted_for_it_is_waited_for(tmp_path: Path) -> None:
    """After a CP restart host-a named T00003's session (adopted, kept for it until it comes back);
    host-b holds no standby session for it yet. The handover waits for T00004's, and T00003, not
    connected then, is not owed. It comes back during the wait: its welcome opens the adopted
    session at once, with no `open` from host-a, and nothing owed it: the grant came once
    T00004's standby session was open, and the flip closed T00003's connection."""
    cp = cp_core(tmp_path, 4)
    a = fake_host(cp, "host-a")
    a.adopts = True
    cp.host_register(a, "active", 1)
    b = standby(cp)
    terms = [recording_terminal(cp, n) for n in ("T00001", "T00002", "T00004")]
    cp.host_adopt(a, [(f"T0000{i}", {}) for i in (1, 2, 3, 4)], last=True)
    for i in (1, 2):
        cp.host_open(b, f"T0000{i}", "standby", {})
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None and cp._handover.owed == {"T00004"}
    terms.append(recording_terminal(cp, "T00003"))  # back: its adopted session is open at once
    assert cp.terms["T00003"].active is not None and cp.terms["T00003"].active.host is a
    cp.host_open(b, "T00004", "standby", {})
    assert cp.active is a, "granted without T00003's standby session"
    cp.host_open(b, "T00003", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)
    assert cp.terms["T00003"].active is not None and cp.terms["T00003"].active.host is b


async def test_after_a_normal_stop_another_host_may_register_as_the_active_once_the_old_lease_ran_out(tmp_path: Path) -> None:
    """After a normal stop nobody holds the role and another host may register as the active; but
    the host that stopped drains on its lease for a moment, so, as a promote does, the new one
    gets the role only once that lease has surely run out: registered at once, both served."""
    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    a = fake_host(cp, "host-a", "active")
    cp.host_stopping(a)
    b = fake_host(cp, "host-b", "active")
    assert cp.active is None and not b.closed and b.role is None  # not yet
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while cp.active is not b:
        assert loop.time() - t0 < 5, "never registered"
        await asyncio.sleep(0.01)
    assert loop.time() - t0 >= 0.3, loop.time() - t0  # (host_lease 0.35 s after the stop, and a margin)
    # the same host registering again on a new link meanwhile: only its newest registration is
    # taken when due (the old link's would replace the live one); a CP that stops takes none
    a2 = fake_host(cp, "host-a", "active")
    cp.host_stopping(b)
    c1 = fake_host(cp, "host-c", "active")
    c2 = fake_host(cp, "host-c", "active")
    assert list(cp.deferred_registrations) == ["host-c"] and a2.closed  # (host-a refused: host-b held the role then)
    t0 = loop.time()
    while cp.active is not c2:
        assert loop.time() - t0 < 5, "never registered"
        await asyncio.sleep(0.01)
    assert c1.role is None and not c1.closed and not cp.deferred_registrations  # (its registration dropped, not refused late)
    cp.host_stopping(c2)
    fake_host(cp, "host-d", "active")
    assert cp.deferred_registrations
    cp.cancel_deferred_grant()  # (the CP's stop)
    assert not cp.deferred_registrations


async def test_no_automatic_takeover_after_a_normal_stop_on_a_restored_cp(tmp_path: Path) -> None:
    """A CP restored from its journal waits a while for the active of before, then tells the
    standby it did not come back. After a normal stop nobody holds the role: nothing is told."""
    cp = cp_core(tmp_path, 2)
    cp.recovered_at = time.monotonic() - 10  # restored a while ago
    a = fake_host(cp, "host-a", "active")
    cp.host_stopping(a)
    b = standby(cp, record=True)
    cp.tick()
    b.flush()
    assert not [f for f in b.transport.frames() if f["t"] == "active_lost"]


async def test_sessions_kept_for_a_flip_that_cannot_come_are_closed(tmp_path: Path) -> None:
    """The active's link ends while a standby is registered: its sessions are kept for the flip.
    The standby goes too: no flip can come; once the active has had its time to register again
    (hsb.cp.alone) the terminals are told their session is gone."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = standby(cp)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    a.connection_lost(None)
    assert cp.terms["T00001"].active is not None  # kept for the flip
    b.connection_lost(None)
    assert cp.terms["T00001"].active is not None and cp.kept_for is not None
    cp.kept_for = (a, time.monotonic() - 1)  # (that wait over, nobody back)
    cp._last_tick = time.monotonic()
    cp.tick()
    assert cp.terms["T00001"].active is None and cp.counts.active == 0
    t.flush()
    assert any(f["t"] == "session" and f["state"] == "closed" for f in t.transport.frames())


async def test_a_new_standby_takes_the_place_of_a_closed_one_without_its_sessions_left_behind(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    fake_host(cp, "host-a", "active")
    recording_terminal(cp, "T00001")
    b = standby(cp)
    cp.host_open(b, "T00001", "standby", {})
    b.close()  # closed by the CP (a protocol error, say); its loss not yet seen
    standby(cp, instance="i2")
    assert cp.terms["T00001"].standby is None and cp.counts.standby == 0
    b.connection_lost(None)
    assert cp.counts.standby == 0


async def test_a_switch_record_whose_terminals_never_come_back_ends_at_its_deadline_without_a_reply(tmp_path: Path) -> None:
    """A switch's record follows the replies to what was in flight; terminals that took the classic
    path and never came back, with no traffic at all, left it open for ever (its deadline was
    checked only on a reply): the CP's tick ends it."""
    from hsb.cp.switchrec import AfterSwitch

    cp = cp_core(tmp_path, 2)
    done: list[dict[str, Any]] = []
    sw = AfterSwitch(time.monotonic(), {"epoch": 2}, done.append)
    assert not sw.counted(1)  # one terminal in flight, never served
    cp.after_switch = sw
    cp.tick()
    assert cp.after_switch is sw and not done  # before its deadline: still following
    sw.deadline = time.monotonic() - 1
    cp.tick()
    assert cp.after_switch is None and done == [sw.rec] and sw.rec["all_served_ms"] is None


async def test_a_normal_stop_ends_the_loss_a_later_promote_would_count_from(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    a.last_rx = time.monotonic() - 5  # silent a while, then it stops normally
    cp.tick()
    assert cp.loss is not None
    cp.host_stopping(a)
    assert cp.loss is None


async def test_a_normal_stops_end_of_the_role_is_durable_before_the_host_is_told(tmp_path: Path) -> None:
    """The CP tells the stopping active `stopped` only once the role's end is in its journal: a CP
    crashed right after would otherwise wait for that host as the active of before, and then tell
    the standby it did not come back (an automatic takeover after a normal termination)."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.journal.recovery import recover
    from hsb.cp.server import CPServer
    from tests.support.inproc import until
    from tests.support.procs import SECRET
    from tests.support.procs import cp_config as proc_cp_config

    srv = CPServer(load(proc_cp_config(tmp_path, terminals=2, host_timeout=0.5), CPConfig), SECRET)
    await srv.startup()
    try:
        cp = srv.cp
        assert cp is not None
        a = fake_host(cp, "host-a", "active", record=True)
        await until(lambda: cp.announced, "host-a registered as the active")
        cp.host_stopping(a)

        def told() -> bool:
            a.flush()
            return any(f["t"] == "stopped" for f in a.transport.frames())

        await until(told, "the host told its stop was taken")
        r = recover(tmp_path / "cp-journal", truncate=False)  # what a crash right now would find
        assert r.active is None, r.active
    finally:
        srv.should_exit.set()
        await srv.shutdown()


async def test_a_standby_registering_again_during_a_handover_wait_has_it_wait_for_its_own_sessions(tmp_path: Path) -> None:
    """The standby's old link closed by the CP, its loss not yet seen, a new standby link registers:
    the handover's wait moves to the new link (its opens count), not left on the old one until its
    timer grants without standby sessions."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    b.close()  # (its connection_lost not yet run)
    b2 = standby(cp, instance="i2")
    await asyncio.sleep(0)  # (the wait moves on the next turn, after b2's registered)
    assert cp._handover is not None and cp._handover.standby is b2
    for i in (1, 2, 3):
        cp.host_open(b2, f"T0000{i}", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b2 and not any(t.closed for t in terms)


async def test_the_recorded_active_not_back_is_told_again_until_a_host_holds_the_role(tmp_path: Path) -> None:
    """After a restart the recorded active does not come back: the standby was told once, and
    the CP forgot it. Its request refused (failover paused) or lost with its link, nothing told it
    again: no active at all until an operator's promote. Told again at the resume and to a
    standby link made again, until a host holds the role."""
    cp = cp_core(tmp_path, 2)
    cp.recorded_active = "host-a"
    cp.recovered_at = time.monotonic() - 60  # its wait is over
    cp.set_paused(True, "test")
    b = standby(cp, record=True)

    def lost(h: Any) -> list[dict[str, Any]]:
        h.flush()
        return [f for f in h.transport.frames() if f.get("t") == "active_lost"]

    cp.tick()
    assert [f["host"] for f in lost(b)] == ["host-a"]
    cp.host_switchover(b, "active lost", False, "failover", peer_closed=True)
    assert cp.active is None  # refused: paused
    cp.set_paused(False, "test")
    assert len(lost(b)) == 2, "not told again at the resume"
    b.connection_lost(None)  # its link goes before it asked
    cp.host_lost(b)
    b2 = standby(cp, record=True)
    assert [f["host"] for f in lost(b2)] == ["host-a"], "a standby link made again was not told"
    cp.host_switchover(b2, "active lost", False, "failover", peer_closed=True)
    assert cp.active is b2 and cp.not_back is None


async def test_the_old_active_whose_link_breaks_while_the_grant_is_made_durable_is_told_it_handed_over(tmp_path: Path) -> None:
    """A planned switchover is granted; while its epoch is written to the journal the old active's
    link breaks and it registers again, as the active. It was refused `active_exists` (the
    redirect knew only grants already durable) and exited fenced (75): the switchover ended with
    no standby. It is told it handed over, and registers as the standby."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    a.instance = "ia"
    writes: list[Any] = []
    append = cp.journal.append

    def held(payload: Any, done: Any = None, **kw: Any) -> int:  # held: not durable yet
        writes.append((payload, done))
        return 0

    cp.journal.append = held
    cp.host_open(b, "T00003", "standby", {})  # the last owed session: granted, its epoch being written
    assert cp.granting is b and cp.demoting is a and [p[0] for p, _ in writes] == ["e"]
    a.connection_lost(None)
    a2 = fake_host(cp, "host-a", record=True)
    a2.instance = "ia"
    cp.host_register(a2, "active", 1)
    a2.flush()
    errors = [f for f in a2.transport.frames() if f.get("t") == "error"]
    assert [e["code"] for e in errors] == ["handed_over"] and errors[0]["active"] == "host-b", errors
    cp.journal.append = append
    for _, done in writes:  # durable now
        if done is not None:
            done()
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)


async def test_a_late_reply_of_the_demoted_active_does_not_drop_its_new_standby_link(tmp_path: Path) -> None:
    """A planned switchover went ahead after its reply wait ran out; a service call of the old
    active finishes after the grant made it the standby and before it read `demoted`: its reply
    was a protocol error (`not_active`) that closed the link and dropped the standby sessions the
    switchover had just kept. It is ignored (the new active answers the message)."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    a.instance = "ia"
    cp.host_open(b, "T00003", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and cp.standby is a and a.role == "standby"
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "late", "epoch": cp.epoch - 1})
    assert not a.closed and cp.standby is a
    cp.handed_over_by = None  # (a standby that was not this epoch's old active: still refused)
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "late", "epoch": cp.epoch - 1})
    assert a.closed


async def test_a_late_reply_of_the_demoted_active_is_ignored_after_the_epoch_moved_on(tmp_path: Path) -> None:
    """The same late reply, after the new active registered again on a replaced link (the epoch
    one higher, nothing to do with the old active): the reply was sent under the epoch before the
    handover, by the host the handover demoted, and is ignored; closing the link would drop every
    standby session it holds, and the next failover would disconnect every terminal."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    a.instance = "ia"
    cp.host_open(b, "T00003", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and cp.standby is a
    handed = cp.epoch
    b2 = fake_host(cp, "host-b")
    b2.instance = b.instance
    cp.host_register(b2, "active", 1)  # the same process on a new link: the old one replaced
    for _ in range(200):
        if cp.active is b2 and cp.epoch > handed:
            break
        await asyncio.sleep(0.01)
    assert cp.active is b2 and cp.epoch == handed + 1
    kept = cp.counts.standby
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "late", "epoch": handed - 1})
    assert not a.closed and cp.standby is a and cp.counts.standby == kept
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "late", "epoch": handed})  # (not of before the handover)
    assert a.closed


async def test_a_terminal_gone_while_a_planned_grant_is_made_durable_is_closed_at_the_old_active_too(tmp_path: Path) -> None:
    """A terminal leaves while the grant of a planned switchover is being made durable: its
    session is at the old active, no longer `self.active`, and it was not told. The grantee is
    lost before the grant took effect, the switchover is undone and the old active serves on with
    the terminal's session still open there (its logoff never run, carried in its takeover file);
    the CP held none. It is told, as the active would have been."""
    from tests.support.cpcore import HeldJournal

    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path, record=True)
    a.instance = "ia"
    held = HeldJournal(cp)
    cp.host_open(b, "T00003", "standby", {})  # the last owed session: granted, its epoch being written
    assert cp.granting is b and cp.demoting is a
    terms[0].connection_lost(None)  # T00001 leaves in that window
    b.connection_lost(None)  # the grantee lost before its grant took effect: undone
    held.release()
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is a and cp.terms["T00001"].active is None
    a.flush()
    closed = [f for f in a.transport.frames() if f.get("t") == "session_closed" and f.get("terminal") == "T00001"]
    assert len(closed) == 1, [f for f in a.transport.frames() if f.get("terminal") == "T00001"]


async def test_a_failover_request_right_after_a_stall_of_the_cp_is_judged_after_a_read(tmp_path: Path) -> None:
    """The CP's own loop stalled past host_timeout (a logon storm): the active's heartbeats of
    that time are unread, so it looks silent. tick() judges silence again after a read; a
    standby's request met then was granted at once, fencing a healthy active. It is judged again
    shortly: heard from meanwhile, the active keeps the role; still silent, the standby gets it."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = standby(cp, record=True)
    now = time.monotonic()
    a.last_rx = now - 1.0  # (its heartbeats wait unread in the socket)
    cp._last_tick = now - 1.0  # the loop did not run for a second
    cp.host_switchover(b, "peer lost", False, "failover", peer_closed=True)
    assert cp.active is a and cp.deferred_grant is not None, "granted on a silence the CP did not read"
    a.last_rx = cp._last_tick = time.monotonic()  # the read: it was alive all along
    await asyncio.sleep(0.15)
    b.flush()
    assert cp.active is a and [f["t"] for f in b.transport.frames() if f.get("t", "").startswith("switch")] == ["switch_refused"]
    a.last_rx = time.monotonic() - 1.0  # really silent, the loop running: granted at once
    cp._last_tick = time.monotonic()
    cp.host_switchover(b, "peer lost", False, "failover", peer_closed=True)
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b


@pytest.mark.parametrize("held", [False, True])
async def test_a_standby_session_the_standby_refuses_during_the_handover_wait_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    """The handover waits for T00003's standby session; host-b refuses it (its attributes there
    differ: a `close` with its reason). Nothing told the CP that the standby would never open it:
    the grant waited the full HANDOVER_WAIT_S, every terminal's service paused, and nothing said
    why T00003 was then disconnected. The grant comes at once; T00003 takes the classic path, and
    the warning and the grant's `why` give the standby's reason. `held`: host-b refuses T00002's
    too, which it held: closed, and not waited for again as a plain close would be."""
    from hsb.cp import host_sessions
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(host_sessions, "log", rec)
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    why = "terminal 'T00003': this host's session attributes {'kind': 'x'} differ from the active's {}"
    if held:
        cp.host_close(b, "T00002", "standby", why.replace("T00003", "T00002"))
        assert cp.terms["T00002"].standby is None and cp.active is a
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cp.host_close(b, "T00003", "standby", why)
    while cp.active is not b:
        assert loop.time() - t0 < 1.0, f"still waiting for {cp._handover and cp._handover.owed} (HANDOVER_WAIT_S is 2 s)"
        await asyncio.sleep(0.01)
    cp.settle_flip()
    assert [t.closed for t in terms] == [False, held, True]  # refused: the classic path
    said = rec.events("handover_without_refused_standby_sessions")
    assert len(said) == 1 and sorted(said[0]["terminals"]) == ["T00002", "T00003"][1 - held :], rec.entries
    assert said[0]["count"] == 1 + held and "the classic path" in said[0]["msg"], said
    assert said[0]["msg"].count("differ") == 1 and f"make {'their' if held else 'its'} attrs identical on both hosts" in said[0]["msg"], said
    told = "2 terminals take the classic path: host-b refused their" if held else "1 terminal takes the classic path: host-b refused its"
    assert told in cp.switchovers[-1]["why"] and told in said[0]["msg"], (said, cp.switchovers[-1])
    assert "differ" in cp.switchovers[-1]["why"], cp.switchovers[-1]
    assert b.refused_standby == {}, "an active's link keeps its refusals as the standby (a later demotion finds them stale)"


async def test_a_standby_session_opened_after_its_refusal_is_waited_for_again(tmp_path: Path) -> None:
    """host-b refuses T00001's standby session, then opens it after all (its attributes made the
    same, a reload). Closed again during the handover's wait, it is waited for as any other: the
    refusal does not outlive the open."""
    cp, a, b, terms = pair_waiting_for_a_handover(tmp_path)
    cp.host_close(b, "T00001", "standby", "attributes differ")
    cp.host_open(b, "T00001", "standby", {})
    cp.host_close(b, "T00001", "standby")
    cp.host_open(b, "T00003", "standby", {})
    assert cp.active is a, "granted without T00001's standby session"
    cp.host_open(b, "T00001", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)


@pytest.mark.parametrize("how", ["closed", "logoff", "gone", "no_longer_refused"])
async def test_a_refusal_ends_with_the_session_it_refused(tmp_path: Path, how: str) -> None:
    """host-b refused T00003's standby session (its attributes differ); then T00003's session
    ends (`closed` by the active, a `logoff`, its connection `gone`) and T00003 logs on again, or
    host-b says it no longer refuses it (a plain `close`: it read of the logoff). The refusal stayed
    on host-b's link: the operator having made the attributes the same and reloaded host-b, a
    switchover asked before host-b reads the new open did not wait for that session, and T00003
    was disconnected with the old reason. It is waited for, as any terminal that just logged on."""
    cp = cp_core(tmp_path, 3)
    a = fake_host(cp, "host-a")
    cp.host_register(a, "active", 1)
    b = standby(cp)
    terms = [recording_terminal(cp, f"T0000{i}") for i in range(1, 4)]
    for i in (1, 2, 3):
        cp.host_open(a, f"T0000{i}", "active", {})
    for i in (1, 2):
        cp.host_open(b, f"T0000{i}", "standby", {})
    cp.host_close(b, "T00003", "standby", "terminal 'T00003': this host's session attributes {'k': 1} differ from the active's {}")
    term = cp.terms["T00003"]
    if how == "closed":
        cp.host_close(a, "T00003", "active")
    elif how in ("logoff", "gone"):
        if how == "logoff":
            cp.terminal_bye(term)
        cp.terminal_lost(term)
        terms[2] = recording_terminal(cp, "T00003")
    else:
        cp.host_close(b, "T00003", "standby")
    if how != "no_longer_refused":
        assert term.active is None
        cp.host_open(a, "T00003", "active", {})
    assert term.active is not None and term.active.host is a
    cp.host_release(a)
    cp.host_handover(a)
    assert cp._handover is not None and cp._handover.owed == {"T00003"}, "granted without waiting for T00003's standby session"
    cp.host_open(b, "T00003", "standby", {})
    await asyncio.sleep(0)
    cp.settle_flip()
    assert cp.active is b and not any(t.closed for t in terms)


@pytest.mark.parametrize("planned", [True, False])
async def test_only_the_standby_may_ask_for_the_role(tmp_path: Path, planned: bool) -> None:
    """The active itself (released, a planned request; or not) asking for a switchover is
    refused: granted, it would have raised an epoch over itself and fenced its own link."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp)
    cp.host_release(a)
    epoch = cp.epoch
    cp.host_switchover(a, "test", planned, "switchover" if planned else "failover")
    a.flush()
    assert [f["reason"] for f in a.transport.frames() if f["t"] == "switch_refused"] == ["only the registered standby host may ask for a switchover"]
    assert cp.epoch == epoch and cp.active is a and cp.standby is b and not a.fenced and not a.closed


async def test_a_planned_request_is_refused_while_the_active_has_not_released(tmp_path: Path) -> None:
    """The standby's planned request, the active alive on its link and not released: refused (its
    lease may still run: granted, two hosts would serve); once the active has released, granted."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp, record=True)
    epoch = cp.epoch
    cp.host_switchover(b, "test", True, "failover")
    b.flush()
    assert [f["t"] for f in b.transport.frames() if f["t"].startswith("switch_")] == ["switch_refused"]
    assert cp.epoch == epoch and cp.active is a and not a.fenced
    cp.host_release(a)
    cp.host_switchover(b, "test", True, "failover")
    b.flush()
    assert [f["t"] for f in b.transport.frames() if f["t"].startswith("switch_")] == ["switch_refused", "switch_granted"]
    assert cp.active is b and cp.epoch == epoch + 1


async def test_only_the_active_may_open_an_active_session(tmp_path: Path) -> None:
    """The standby opening an active session (a bug, or a host that missed its demotion) is
    refused: the terminal's session and its messages stay with the active."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp, record=True)
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "active", {})
    b.flush()
    assert [f["reason"] for f in b.transport.frames() if f["t"] == "open_failed"] == ["this host is not the active host"]
    term = cp.terms["T00001"]
    assert term.active is not None and term.active.host is a
    cp.terminal_msg(term, 1, b"x")
    a.flush()
    b.flush()
    assert [f["id"] for f in a.transport.frames() if f["t"] == "deliver"] == [1]
    assert not [f for f in b.transport.frames() if f["t"] in ("deliver", "deliver_batch")]


async def test_a_released_active_opening_a_session_gets_no_new_work(tmp_path: Path) -> None:
    """A session the released active opens (a logon hook that ended after the release) does not
    hand it the terminal's held message: it is finishing what it has. The message goes to the
    new active at the grant, unmarked (no host had it)."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp, record=True)
    recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"x")  # held: no session yet
    cp.host_release(a)
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    a.flush()
    assert not [f for f in a.transport.frames() if f["t"] in ("deliver", "deliver_batch")], "new work for a released active"
    cp.host_handover(a, wait=False)
    await flipped(cp)
    b.flush()
    assert [(f["id"], f["redelivered"]) for f in b.transport.frames() if f["t"] == "deliver"] == [(1, False)]


async def test_a_handover_without_a_release_is_refused(tmp_path: Path) -> None:
    """The active's handover before its release (it may still be handed messages and serving
    them) is refused: granted, the standby would serve beside it."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp)
    epoch = cp.epoch
    cp.host_handover(a, wait=False)
    a.flush()
    assert [f["reason"] for f in a.transport.frames() if f["t"] == "handover_refused"] == ["release first"]
    assert cp.active is a and cp.standby is b and cp.epoch == epoch and cp.granting is None


async def test_a_handover_refused_for_want_of_a_standby_hands_the_held_messages_to_the_active(tmp_path: Path) -> None:
    """Messages that came while the active was released wait for the grant; the standby gone,
    the handover is refused and the active serves on: those messages go to it then, in order,
    unmarked, not left held for a switchover that will not come, and so do the ones after."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp)
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    cp.host_release(a)
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"x")
    cp.terminal_msg(term, 2, b"y")
    a.flush()
    assert not [f for f in a.transport.frames() if f["t"] == "deliver"], "new work for a released active"
    b.connection_lost(None)
    cp.host_handover(a)
    a.flush()
    assert [f.get("code") for f in a.transport.frames() if f["t"] == "handover_refused"] == ["no_standby"]
    assert [(f["id"], f["redelivered"]) for f in a.transport.frames() if f["t"] == "deliver"] == [(1, False), (2, False)]
    cp.terminal_msg(term, 3, b"z")  # released no more: what comes next goes to it too
    a.flush()
    assert [f["id"] for f in a.transport.frames() if f["t"] == "deliver"] == [1, 2, 3]


async def test_a_standby_refusal_from_the_active_is_ignored(tmp_path: Path) -> None:
    """A standby session's refusal from the host that is the active now (a ring entry it read
    before its grant and applied after) is not recorded as its refusal: demoted later, its
    handover would not wait for that terminal's standby session, which would be disconnected."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active")
    b = standby(cp)
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    cp.host_close(a, "T00001", "standby", refused="attrs differ")
    term = cp.terms["T00001"]
    assert not a.refused_standby, "the active's stale refusal was recorded"
    assert term.active is not None and term.active.host is a and term.standby is not None and term.standby.host is b


async def test_a_switch_record_counts_only_the_replies_to_what_its_own_grant_kept_waiting(tmp_path: Path) -> None:
    """A terminal still counting messages in flight from an earlier switch (epoch 2) is answered
    after the next grant (epoch 3): that reply is not one the record of epoch 3 waits for, and
    does not end it while its own terminal is still unserved (its all_served_ms would be too soon)."""
    from types import SimpleNamespace

    from hsb.cp.state import Term
    from hsb.cp.switchrec import AfterSwitch

    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    sw = AfterSwitch(t0, {"epoch": 3}, done.append)
    old = SimpleNamespace(flight=1, flight_epoch=2)
    mine = SimpleNamespace(flight=1, flight_epoch=3)
    sw.rec["in_flight_terminals"] = 1  # (the flip's count, as `_flipped` records it)
    assert not sw.counted(1)  # `mine` in flight at this grant
    assert not sw.reply(cast(Term, old), t0 - 1.0, True, t0 + 0.1)
    assert not done and old.flight == 1, "a reply to an earlier switch's message ended this record"
    assert sw.reply(cast(Term, mine), t0 - 0.5, True, t0 + 0.2)
    assert done == [sw.rec] and sw.rec["all_served_ms"] == 200.0


async def test_an_active_session_for_a_terminal_that_said_bye_is_not_opened(tmp_path: Path) -> None:
    """The active opens a session for a terminal that has said bye, its message still held (the
    session request crossed the bye): refused as closed, no session opened for a run that ended;
    its message goes as a logoff's, once."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    t = recording_terminal(cp, "T00001")
    term = cp.terms["T00001"]
    cp.terminal_msg(term, 1, b"x")
    t.data_received(encode({"t": "bye"}))
    assert term.leaving and term.conn is not None
    cp.host_open(a, "T00001", "active", {})
    a.flush()
    assert [f["t"] for f in a.transport.frames() if f["t"] in ("opened", "session_closed")] == ["session_closed"]
    assert term.active is None
    assert [f["id"] for f in a.transport.frames() if f["t"] == "deliver"] == [1]


async def test_a_refusal_from_a_host_other_than_the_active_closes_no_session(tmp_path: Path) -> None:
    """`refuse` (the active will not serve a terminal) from the standby is ignored: the
    terminal's session at the active stays, and the terminal is told nothing."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active")
    b = standby(cp)
    t = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_refuse(b, "T00001", "not here")
    term = cp.terms["T00001"]
    assert term.active is not None and term.active.host is a
    t.flush()
    assert not [f for f in t.transport.frames() if f["t"] == "session" and f["state"] == "closed"]


async def test_a_standbys_planned_request_before_the_handover_fences_the_released_active(tmp_path: Path) -> None:
    """The standby's own `switchover` with `planned` while the active is released but has not
    handed over (hsbd never sends one; the wire allows it): the released active may still be
    answering what it had, so it is fenced and its link closed, not demoted into the standby
    with calls under way; what it had goes to the new active marked redelivered."""
    cp = cp_core(tmp_path, 1)
    a = fake_host(cp, "host-a", "active", record=True)
    b = standby(cp, record=True)
    recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    cp.terminal_msg(cp.terms["T00001"], 1, b"x")  # delivered to host-a, not answered
    cp.host_release(a)
    cp.host_switchover(b, "planned", True, "failover")
    await flipped(cp)
    a.flush()
    b.flush()
    assert [f["t"] for f in a.transport.frames() if f["t"] in ("fenced", "demoted")] == ["fenced"]
    assert a.closed and cp.active is b and cp.standby is not a
    assert [(f["id"], f["redelivered"]) for f in b.transport.frames() if f["t"] == "deliver"] == [(1, True)]
