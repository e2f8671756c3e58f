"""The flip at a grant (hsb.cp.flip), in-process and in small slices: it writes the terminals'
session slots directly, not through their setters, so every terminal must come out of it with
its sessions where they belong and the CP's totals in agreement with them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from tests.support.cpcore import agree_counts, cp_core, fake_host, fake_terminal, flip_pair, flipped, switch

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}


def _setup(tmp_path: Path, keeps: bool) -> tuple[Any, Any, Any, list[str]]:
    """40 terminals: 1-20 with both sessions and a held message, 21-25 an active session only,
    26-30 connected without a session, 31-35 with both sessions and then gone."""
    cp = cp_core(tmp_path, 40, width=2, cp="flip_slice = 7\n")
    a = fake_host(cp, "host-a", "active", keeps=keeps)
    b = fake_host(cp, "host-b", "standby")
    names = sorted(cp.terms)
    conns = {}
    for i, name in enumerate(names, 1):
        if i > 35:
            continue
        conns[name] = fake_terminal(cp, name)
        if i <= 25 or i > 30:
            cp.host_open(a, name, "active", ATTRS)
        if i <= 20 or i > 30:
            cp.host_open(b, name, "standby", ATTRS)
        if i <= 20:
            cp.terminal_msg(cp.terms[name], 1, b"x")
    for name in names[30:35]:
        conns[name].connection_lost(None)
    agree_counts(cp)
    assert cp.counts.active == 20 + 5 and cp.counts.standby == 20 + 5
    return cp, a, b, names


async def test_a_failover_flip_in_slices_leaves_every_terminal_consistent(tmp_path: Path) -> None:
    cp, a, b, names = _setup(tmp_path, keeps=False)
    a.connection_lost(None)  # the active's link is gone: the standby asks
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    assert cp.switchovers[-1]["slices"] > 1  # in slices, a turn of the loop between them
    agree_counts(cp)
    for name in names[:20]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and t.standby is None, name
        assert len(t.held) == 1 and all(h.delivered_epoch == cp.epoch for h in t.held.values()), name  # re-delivered to B
    for name in names[20:25]:  # no standby session: the classic path closed them
        assert cp.terms[name].active is None and cp.terms[name].conn.closed, name
        cp.terms[name].conn.connection_lost(None)  # (their ends, as the event loop reports them)
    for name in names[30:35]:  # gone before the switch: nothing switched
        assert cp.terms[name].active is None and cp.terms[name].standby is None, name
    assert cp.drops.total == {"closed": 5, "classic_path": 5}, cp.drops.total  # (hsb.cp.drops: why each went)


async def test_a_planned_flip_keeps_the_demoted_actives_sessions_as_standby_ones(tmp_path: Path) -> None:
    cp, a, b, names = _setup(tmp_path, keeps=True)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    await flipped(cp)
    assert cp.active is b and cp.standby is a and cp.switchovers[-1]["slices"] > 1
    agree_counts(cp)
    for name in names[:20]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and t.standby is not None and t.standby.host is a, name


async def _notices_written(cp: Any, conns: dict[str, Any]) -> dict[str, int]:
    """The writes to each terminal before the switch notices, once every notice is out."""
    writes = {n: c.transport.writes for n, c in conns.items()}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while any(cp.terms[n].notice is not None for n in conns):
        assert loop.time() - t0 < 5.0, "the notices never went out"
        await asyncio.sleep(0.01)
    return writes


@pytest.mark.parametrize("keeps", [False, True])
async def test_the_few_terminals_holding_messages_are_flipped_first(tmp_path: Path, keeps: bool) -> None:
    """A grant with three terminals of 64 holding messages, last in the table: their re-delivery
    leaves in the first slices (4 a slice, a message counting as a terminal: two holders, then the
    third), before any other terminal is reached, and the pass that meets them again later leaves
    them switched (not closed as if they had no standby session, not asked for a session)."""
    cp, a, b, names, conns = flip_pair(tmp_path, 64, keeps, ATTRS)
    holders = names[-3:]
    for name in holders:
        cp.terminal_msg(cp.terms[name], 1, name.encode())
    assert list(cp.holding) == [cp.terms[n] for n in holders]
    switch(cp, a, b, planned=keeps)
    assert cp.flipping is not None, "the first slice only"
    b.flush()
    items = [it for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert [(n, i) for n, i, _, _ in items] == [(n, 1) for n in holders[:2]]
    assert cp.terms[names[0]].active.host is a, "a terminal without messages was reached first"
    await flipped(cp)
    b.flush()
    items = [it for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert [(n, i) for n, i, _, _ in items] == [(n, 1) for n in holders]
    agree_counts(cp)
    rec = cp.switchovers[-1]
    assert rec["switched"] == 64 and rec["classic"] == 0 and rec["requested"] == 0, rec
    for name in names:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and not t.conn.closed, name
        assert (t.standby is not None and t.standby.host is a) if keeps else t.standby is None, name
    for name in holders:  # re-delivered once
        assert cp.terms[name].held[1].delivered_epoch == cp.epoch
    assert sum(1 for m in b.transport.frames() if m["t"] == "deliver_batch") == 2  # one a slice
    writes = await _notices_written(cp, conns)
    assert all(conns[n].transport.writes == writes[n] + 1 for n in names), "one switch notice each, the holders too"
    # settled: the index follows
    for name in holders:
        cp.host_reply(b, name, 1, b"r")
    await asyncio.sleep(0)
    assert not cp.holding


def test_messages_restored_from_the_journal_are_indexed_as_held(tmp_path: Path) -> None:
    """After a restart the recovered held messages' terminals are in the CP's index of holders
    (a flip reaches them first), those with replies only are not."""
    from hsb.cp.journal.recovery import Recovered, recovered_held
    from hsb.cp.state import Kept

    cp = cp_core(tmp_path, 4, width=1)
    r = Recovered(epoch=3, last_acked={"T2": 5, "T4": 1}, replies={"T3": {2: Kept(2, b"r", 1)}})
    r.held = {"T4": {1: recovered_held(1, b"x", 0.0, 1)}, "T2": {5: recovered_held(5, b"y", 0.0, 1)}}
    cp.restore(r)
    assert set(cp.holding) == {cp.terms["T2"], cp.terms["T4"]}


async def test_with_many_terminals_holding_messages_the_flip_keeps_table_order(tmp_path: Path) -> None:
    """More than one terminal in eight holding messages: no reordering (most must be reached
    anyway); the first slice re-delivers only what the first terminals in the table hold, and
    each terminal gets one switch notice."""
    cp, a, b, names, conns = flip_pair(tmp_path, 64, False, ATTRS)
    holders = names[::6]  # 11 of 64
    for name in holders:
        cp.terminal_msg(cp.terms[name], 1, b"m")
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    b.flush()
    first = [it[0] for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert first == [n for n in holders if n in names[:4]]
    await flipped(cp)
    writes = await _notices_written(cp, conns)
    assert all(conns[n].transport.writes == writes[n] + 1 for n in names), "one switch notice each"


def _active_lost_one_terminal_a_slice(tmp_path: Path) -> tuple[Any, Any, str]:
    """Four terminals with sessions at A (active) and B (standby), a flip of one terminal a slice,
    and A's link lost: (the CP, B, the terminal the flip reaches last)."""
    cp = cp_core(tmp_path, 4, width=1, cp="flip_slice = 1\n")
    a = fake_host(cp, "A", "active")
    b = fake_host(cp, "B", "standby")
    for name in sorted(cp.terms):
        fake_terminal(cp, name)
        cp.host_open(a, name, "active", ATTRS)
        cp.host_open(b, name, "standby", ATTRS)
    a.connection_lost(None)
    return cp, b, sorted(cp.terms)[-1]


async def test_a_flip_settled_into_a_new_active_already_gone_marks_nothing_delivered(tmp_path: Path) -> None:
    """The grantee's link drops mid-flip: host_lost finishes the flip against a closed link.
    Messages held for terminals not yet reached went to no host, so the next active must get them
    unmarked (a mark says "may have been processed")."""
    cp, b, last = _active_lost_one_terminal_a_slice(tmp_path)
    cp.terminal_msg(cp.terms[last], 1, b"x")  # held, with no host to go to
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    assert cp.flipping is not None, "the flip should still be going (one terminal a slice)"
    b.connection_lost(None)  # the new active is gone before the flip reaches the last terminal
    assert cp.flipping is None
    held = cp.terms[last].held[1]
    assert held.delivered_epoch == 0, "marked delivered to a host whose link was gone"
    b.last_rx -= cp.host_lease + 1  # (later: the lease host-b may have held ran out, and the role is free)
    c = fake_host(cp, "C", "active", record=True)
    cp.host_open(c, last, "active", ATTRS)
    c.flush()
    dl = [m for m in c.transport.frames() if m.get("t") == "deliver"]
    assert [(m["id"], m["redelivered"]) for m in dl] == [(1, False)], dl
    agree_counts(cp)


async def test_a_flip_settled_into_a_new_active_already_gone_hands_no_logoff_to_it(tmp_path: Path) -> None:
    """The same for a terminal that logged off holding a message while no host was active: the
    flip handed its messages over (marked delivered, counted) to the grantee whose link was gone,
    and the next active got them marked redelivered although no host ever had them."""
    cp, b, last = _active_lost_one_terminal_a_slice(tmp_path)
    term = cp.terms[last]
    cp.terminal_msg(term, 1, b"x")  # held, with no host to go to
    cp.terminal_bye(term)  # and logged off
    delivered = cp.counters.get("delivered", 0)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    assert cp.flipping is not None
    b.connection_lost(None)  # gone before the flip reaches the last terminal
    assert cp.flipping is None
    assert term.held[1].delivered_epoch == 0, "marked delivered to a host whose link was gone"
    assert cp.counters.get("delivered", 0) == delivered
    b.last_rx -= cp.host_lease + 1  # (later: the lease host-b may have held ran out, and the role is free)
    c = fake_host(cp, "C", "active", record=True)
    c.flush()
    dl = [(it[1], it[3]) for m in c.transport.frames() if m.get("t") == "deliver_batch" for it in m["items"]]
    dl += [(m["id"], m["redelivered"]) for m in c.transport.frames() if m.get("t") == "deliver"]
    assert dl == [(1, False)], dl


async def test_a_reload_removing_a_terminal_mid_flip_closes_its_standby_session_at_the_new_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal gone, its active session closed but its standby session still at B, removed
    from the table by a reload while the grant's flip has not reached it yet: that terminal is
    flipped first (alone: the flip goes on in its slices), so B is told to close the session it
    turned active (else an orphan)."""
    from hsb.cp.core import CP
    from hsb.cp.server import CPServer
    from tests.support.cpcore import cp_config

    cfg = cp_config(tmp_path, 4, width=1, cp="flip_slice = 1\n")
    cp = CP(cfg, None)
    srv = CPServer(cfg, b"s" * 32, str(tmp_path / "cp.toml"))
    srv.cp = cp
    a = fake_host(cp, "A", "active")
    b = fake_host(cp, "B", "standby", record=True)
    conns = {}
    for name in sorted(cp.terms):
        conns[name] = fake_terminal(cp, name)
        cp.host_open(a, name, "active", ATTRS)
        cp.host_open(b, name, "standby", ATTRS)
    last = sorted(cp.terms)[-1]
    conns[last].connection_lost(None)
    cp.host_close(a, last, "active")  # A closed it; the ring change never reached B
    assert cp.terms[last].standby is not None
    a.connection_lost(None)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    assert cp.flipping is not None and cp.flipping.i < 4
    (tmp_path / "cp.toml").write_text((tmp_path / "cp.toml").read_text().replace("count = 4", "count = 3"))
    loop = asyncio.get_running_loop()

    def at_once(_ex: Any, fn: Any, *args: Any) -> Any:  # the config read on a thread, done within this turn
        fut = loop.create_future()
        fut.set_result(fn(*args))
        return fut

    monkeypatch.setattr(loop, "run_in_executor", at_once)
    await srv.reload()
    assert last not in cp.terms
    assert cp.flipping is not None and cp.flipping.ahead == 1, "the whole flip was settled for one terminal removed"
    await flipped(cp)
    assert last not in cp.terms
    b.flush()
    closed = [m for m in b.transport.frames() if m.get("t") == "session_closed" and m.get("terminal") == last]
    assert closed, "the new active was never told to close the removed terminal's session"


def _break(term: Any) -> type:
    """`term` raises at the first thing the flip reads of it (its standby session); the class it
    had, to put back."""
    was = type(term)

    class Broken(was):  # type: ignore[valid-type,misc]
        __slots__ = ()

        @property
        def _standby(self) -> Any:
            raise RuntimeError("boom")

    term.__class__ = Broken
    return was


@pytest.mark.parametrize("case", ["mid_pass", "last_terminal", "settled_at_once", "planned", "planned_last_terminal"])
async def test_a_terminal_whose_flip_raises_is_passed_over_and_the_flip_goes_on(tmp_path: Path, case: str) -> None:
    """A bug in one terminal's flip is logged, naming that terminal, and every other terminal is
    flipped: stopped there, the flip never ended and no terminal after it had its session at the
    new active. In a slice after the first, at the very last terminal of the pass, in a pass
    settled at once (no slices), and in a planned switchover (the demoted active told which
    sessions it keeps, the last frame marked once)."""
    planned = case.startswith("planned")
    cp, a, b, names = _setup(tmp_path, keeps=planned)
    bad = names[39] if case.endswith("last_terminal") else names[10]  # names[10]: in the second slice of 7
    t_bad = cp.terms[bad]
    was = _break(t_bad)
    kept: list[dict[str, Any]] = []
    if planned:
        real_send = a.send

        def send(m: dict[str, Any]) -> Any:
            if m.get("t") == "standby_kept":
                kept.append(m)
            return real_send(m)

        a.send = send
    with structlog.testing.capture_logs() as logs:
        switch(cp, a, b, planned)
        if case == "settled_at_once":
            cp.settle_flip()
        await flipped(cp)
    t_bad.__class__ = was
    failed = [e for e in logs if e["event"] == "flip_terminal_failed"]
    assert [e["terminal"] for e in failed] == [bad] and failed[0]["log_level"] == "error", failed
    agree_counts(cp)
    switched = [n for n in names[:20] if n != bad]
    assert cp.switchovers[-1]["switched"] == len(switched)
    for name in switched:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b, name
        assert all(h.delivered_epoch == cp.epoch for h in t.held.values()), name
        if planned:
            assert t.standby is not None and t.standby.host is a, name
        else:
            assert t.standby is None, name
    if planned:
        assert sorted(n for m in kept for n in m["items"]) == switched
        assert [m["last"] for m in kept].count(True) == 1 and kept[-1]["last"], kept
    else:
        for name in names[20:25]:
            assert cp.terms[name].active is None and cp.terms[name].conn.closed, name


@pytest.mark.parametrize("planned", [False, True])
async def test_a_slice_whose_send_to_a_host_raises_closes_that_link_and_the_flip_goes_on(tmp_path: Path, planned: bool) -> None:
    """Sending what a slice collected (the held messages to the new active, or the demoted
    active's `standby_kept`) raises (a bug): logged, naming the host, that host's link closed as
    if lost, and the flip ends; the messages stay held, for the next active, nothing lost.
    Before, the error left the slice and no slice came after it: the flip never ended."""
    cp, a, b, names = _setup(tmp_path, keeps=planned)
    broken = a if planned else b

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom")

    if planned:
        real_send = a.send
        a.send = lambda m: boom() if m.get("t") == "standby_kept" else real_send(m)
    else:
        b.deliver_all = boom
    with structlog.testing.capture_logs() as logs:
        switch(cp, a, b, planned)
        await flipped(cp)
    failed = [e for e in logs if e["event"] == "flip_send_failed"]
    assert failed and failed[0]["host"] == broken.name and failed[0]["log_level"] == "error", failed
    assert broken.closed
    if planned:  # the new active's link is not what failed: it serves on
        assert not b.closed and cp.active is b
        assert cp.switchovers[-1]["standby_kept"] == 0  # none was told it: not counted as kept
        return
    assert cp.switchovers[-1]["switched"] == 20
    assert cp.counters["redelivered"] == 0  # none went: none counted
    b.connection_lost(None)  # (the loop's own call after the abort)
    for name in names[:20]:
        assert len(cp.terms[name].held) == 1, name  # held still
    # host-b registers again on a new link, at a new epoch: it gets every one of them, marked
    # redelivered (they were counted as handed to it once)
    c = fake_host(cp, "host-b", batch=64 * 1024, record=True)
    epoch = cp.epoch
    cp.host_register(c, "active", 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cp.active is not c or not cp.announced:
        assert loop.time() < deadline, "host-b never became the active again"
        await asyncio.sleep(0.01)
    assert cp.epoch > epoch
    for name in names[:25]:
        if cp.terms[name].conn is not None and not cp.terms[name].conn.closed:
            cp.host_open(c, name, "active", ATTRS)
    c.flush()
    items = [it for m in c.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert sorted((n, i, again) for n, i, _, again in items) == [(n, 1, True) for n in names[:20]], items
    agree_counts(cp)


async def test_a_slice_counts_the_messages_it_hands_over(tmp_path: Path) -> None:
    """A terminal holding many messages costs its slice as many terminals: with slices of 4, a
    holder of 10 fills the first slice alone (the others wait for the next turns). Counted in
    terminals only, 4,096 terminals holding 256 messages each made one slice of 0.4-0.6 s,
    with no heartbeat relayed meanwhile."""
    cp, a, b, names, conns = flip_pair(tmp_path, 64, False, ATTRS)
    holder = cp.terms[names[-1]]
    for mid in range(1, 11):
        cp.terminal_msg(holder, mid, b"x")
    switch(cp, a, b, planned=False)
    f = cp.flipping
    assert f is not None and f.i == 1, "the holder alone in the first slice"
    b.flush()
    items = [it for m in b.transport.frames() if m["t"] == "deliver_batch" for it in m["items"]]
    assert [(n, i) for n, i, _, _ in items] == [(holder.name, i) for i in range(1, 11)]
    await flipped(cp)
    agree_counts(cp)
    assert cp.switchovers[-1]["switched"] == 64 and cp.switchovers[-1]["slices"] >= 1 + 63 // 4


async def test_messages_held_while_a_switchover_was_undone_count_in_the_slice(tmp_path: Path) -> None:
    """A planned switchover undone (its grantee lost before its grant was durable): the old active
    gets the role back, and the flip hands it what was held while it was releasing. Those
    messages count in the slice too: with slices of 4, the terminal holding 10 fills the first
    slice alone."""
    from tests.support.cpcore import HeldJournal

    cp, a, b, names, conns = flip_pair(tmp_path, 64, True, ATTRS)
    holder = cp.terms[names[0]]  # first in the table (its standby session goes with host-b: not taken first)
    cp.host_release(a)  # releasing: what comes now waits for the grant
    for mid in range(1, 11):
        cp.terminal_msg(holder, mid, b"x")
    await asyncio.sleep(0)
    assert len(holder.held) == 10 and all(h.delivered_epoch == 0 for h in holder.held.values())
    held = HeldJournal(cp)
    cp.host_handover(a, wait=False)  # the grant to host-b waits on its record
    b.connection_lost(None)  # lost before it is durable: host-a gets the role back
    slices: list[int] = []
    from hsb.cp import flip as flipmod

    real_run = flipmod.Flip.run

    def run(self: Any, budget: Any) -> bool:
        before = self.i
        try:
            return bool(real_run(self, budget))
        finally:
            slices.append(self.i - before)

    flipmod.Flip.run = run  # type: ignore[method-assign]
    try:
        held.release()
        await flipped(cp)
    finally:
        flipmod.Flip.run = real_run  # type: ignore[method-assign]
    assert cp.active is a
    assert all(h.delivered_epoch == cp.epoch for h in holder.held.values())
    assert slices and slices[0] == 1, slices  # the holder alone: 1 + 10 past the budget of 4


async def test_a_standby_close_sent_before_the_grant_was_heard_of_is_not_left_switched_to_a_host_without_it(tmp_path: Path) -> None:
    """The standby closes its standby session of T (it read the old active's close from the
    ring) just as it is granted: its `close` (kind standby) reaches the CP after the flip switched
    T to it. It promotes only the standby sessions it still holds, so it holds none of T: the CP
    must not keep T's session there. T is told its session closed, and the new active is asked
    for a new one."""
    from tests.support.cpcore import recording_terminal

    cp = cp_core(tmp_path, 2, width=2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    t = recording_terminal(cp, "T01")
    cp.host_open(a, "T01", "active", ATTRS)
    cp.host_open(b, "T01", "standby", ATTRS)
    cp.host_close(a, "T01", "active")  # the old active closed it, then died before anything else
    switch(cp, a, b, planned=False)
    await flipped(cp)
    assert cp.terms["T01"].active is not None and cp.terms["T01"].active.host is b  # switched to B's standby session
    b.flush()
    before = [f for f in b.transport.frames() if f["t"] == "session_request"]
    cp.host_close(b, "T01", "standby")  # sent before B heard of its grant
    assert cp.terms["T01"].active is None
    agree_counts(cp)
    t.flush()
    sessions = [f for f in t.transport.frames() if f["t"] == "session"]
    assert sessions and sessions[-1]["state"] == "closed", sessions
    b.flush()
    asked = [f for f in b.transport.frames() if f["t"] == "session_request"]
    assert len(asked) == len(before) + 1 and asked[-1]["terminal"] == "T01", asked
    # B answers as a new active does: the session is open again, at B
    cp.host_open(b, "T01", "active", ATTRS)
    assert cp.terms["T01"].active is not None and cp.terms["T01"].active.host is b
    agree_counts(cp)


async def test_a_new_run_is_not_switched_onto_the_standby_session_of_the_run_that_logged_off(tmp_path: Path) -> None:
    """The active dies; its terminal says bye (the dead active cannot be told, and the standby's
    session of that run stays), goes, and a new run logs on. At the grant the new run was
    switched onto the old run's standby session: the new active never heard of the logoff, and
    the new run never logged on there. The old session is closed at the new active as a logoff,
    and a session asked for the new run."""
    from tests.support.transports import RecordingTransport

    cp = cp_core(tmp_path, 2, width=2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    assert isinstance(b.transport, RecordingTransport)
    name = next(iter(cp.terms))
    p = fake_terminal(cp, name)
    cp.host_open(a, name, "active", {"k": 1})
    cp.host_open(b, name, "standby", {"k": 1})
    term = cp.terms[name]
    old = term.standby
    assert old is not None
    a.connection_lost(None)  # the active dies
    cp.terminal_bye(term)
    p.connection_lost(None)
    fake_terminal(cp, name)  # a new run
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    assert term.active is not old, "the new run was switched onto the old run's session"
    b.flush()
    frames = [f for f in b.transport.frames() if f.get("terminal") == name]
    closed = [f for f in frames if f["t"] == "session_closed"]
    assert closed and closed[0]["reason"] == "logoff", frames
    assert any(f["t"] == "session_request" for f in frames), frames


@pytest.mark.parametrize("resuming", [True, False])
async def test_a_message_answered_before_the_grant_is_not_handed_to_the_new_active(tmp_path: Path, resuming: bool) -> None:
    """A message the old active answered, its record ("r" kept, "d" discard) not yet durable at the
    grant, is still held but served: the flip does not give it to the new active, which would
    process it a second time (the reply that counts is the one already on its way)."""
    from tests.support.cpcore import HeldJournal, recording_terminal

    cp = cp_core(tmp_path, 1, width=2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", batch=64 * 1024, record=True)
    names = sorted(cp.terms)
    t = recording_terminal(cp, names[0], 0 if resuming else None)
    cp.host_open(a, names[0], "active", ATTRS)
    cp.host_open(b, names[0], "standby", ATTRS)
    j = HeldJournal(cp, ("r", "d"))
    cp.terminal_msg(cp.terms[names[0]], 1, b"x")
    cp.host_reply(a, names[0], 1, b"y")
    held = cp.terms[names[0]].held[1]
    assert held.replying and j.held, "answered, its record not yet durable"
    switch(cp, a, b, planned=False)
    await flipped(cp)
    b.flush()
    assert cp.terms[names[0]].active.host is b
    items = [it for m in b.transport.frames() if m["t"] in ("deliver_batch", "deliver") for it in m.get("items", [m])]
    assert items == [], "an answered message went to the new active again"
    j.release()
    t.flush()
    assert [f["id"] for f in t.transport.frames() if f["t"] == "reply"] == [1], "one reply, the old active's"
    assert not cp.terms[names[0]].held


async def test_a_logoffs_held_message_without_a_standby_session_goes_to_the_new_active(tmp_path: Path) -> None:
    """A terminal with no standby session sends a message while no host is active, then logs
    off: the flip hands that message to the new active (without a session, as a logoff's), once
    and unmarked (no host ever had it), not left held for nobody."""
    cp = cp_core(tmp_path, 2, width=1)
    a = fake_host(cp, "A", "active")
    b = fake_host(cp, "B", "standby", record=True)
    name = sorted(cp.terms)[0]
    fake_terminal(cp, name)
    cp.host_open(a, name, "active", ATTRS)  # (no standby session at B)
    a.connection_lost(None)
    term = cp.terms[name]
    cp.terminal_msg(term, 1, b"x")
    cp.terminal_bye(term)
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    b.flush()
    dl = [(it[0], it[1], it[3]) for m in b.transport.frames() if m.get("t") == "deliver_batch" for it in m["items"]]
    dl += [(m["terminal"], m["id"], m["redelivered"]) for m in b.transport.frames() if m.get("t") == "deliver"]
    assert dl == [(name, 1, False)], dl


async def test_a_message_the_active_said_it_handed_over_is_marked_at_its_first_delivery_in_a_flip(tmp_path: Path) -> None:
    """Message 1 has gone to no host at this CP (recovered at a restart, say), but the active said
    it handed messages up to 1 to its service (`handed`, at its adoption): the flip gives it to
    the new active marked redelivered (it may have been processed), message 2 unmarked."""
    cp = cp_core(tmp_path, 1, width=1)
    a = fake_host(cp, "A", "active")
    b = fake_host(cp, "B", "standby", record=True)
    name = sorted(cp.terms)[0]
    fake_terminal(cp, name)
    cp.host_open(a, name, "active", ATTRS)
    cp.host_open(b, name, "standby", ATTRS)
    a.connection_lost(None)
    term = cp.terms[name]
    cp.terminal_msg(term, 1, b"x")
    cp.terminal_msg(term, 2, b"y")
    cp.note_handed({name: 1})
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    await flipped(cp)
    b.flush()
    dl = [(m["id"], m["redelivered"]) for m in b.transport.frames() if m.get("t") == "deliver"]
    assert dl == [(1, True), (2, False)], dl


async def test_a_planned_flip_of_more_names_than_a_frame_holds_marks_only_its_last_standby_kept_frame(tmp_path: Path) -> None:
    """A planned switchover whose pass is one slice keeping 1,100 demoted sessions names them in
    two `standby_kept` frames (KEPT_PER_FRAME each at most), every name once, only the second
    marked last: the demoted host takes the first for the whole list otherwise."""
    from hsb.cp.flip import KEPT_PER_FRAME

    cp = cp_core(tmp_path, 1100, width=4, cp="flip_slice = 100000\n")
    a = fake_host(cp, "host-a", "active", keeps=True, record=True)
    b = fake_host(cp, "host-b", "standby")
    for name in cp.terms:
        fake_terminal(cp, name)
        cp.host_open(a, name, "active", ATTRS)
        cp.host_open(b, name, "standby", ATTRS)
    switch(cp, a, b, planned=True)
    await flipped(cp)
    a.flush()
    kept = [f for f in a.transport.frames() if f["t"] == "standby_kept"]
    assert [len(f["items"]) for f in kept] == [KEPT_PER_FRAME, 1100 - KEPT_PER_FRAME]
    assert [f["last"] for f in kept] == [False, True]
    assert sorted(n for f in kept for n in f["items"]) == sorted(cp.terms)
