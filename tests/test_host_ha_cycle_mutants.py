"""hsbd's HA state machine outside its lease, generation, hot standby and switchover rules, in
hsb/host/ha.py (set_state's side effects and hook runs, the loop's idle wait and a bug in a cycle,
run_cycle's events and timers, a planned switchover's end, the peer link's events and a peer's
claim of the active role), driven by hand on an unstarted HostServer (tests/support/hafakes.py)
as its loop would, each test naming a behaviour that a mutation audit of hsb/host/ha.py,
ha_cp.py and ha_view.py found no test for (the CP link's events and what status shows:
tests/test_host_ha_cycle_cp_mutants.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hsb.host.ha import Exit
from hsb.host.states import ACTIVE_STOPPED, AWAITING_BATCH, BATCH_WRITING, ESTABLISHED, FENCED, SERVING, STARTING, STOPPING, WAITING
from tests.support.hafakes import active_host, close, hooked, peer_active, standby_host, until

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- set_state


async def test_an_active_demoted_while_stopping_tells_the_hook_it_is_the_standby_now(tmp_path: Path) -> None:
    """A stop's handover granted after the stop gave up waiting: the host, `stopping` as the
    active, is demoted and stays `stopping` as the standby. The state is the same, the role is
    not: the change is made (logged, the hook told the host is the standby now, so that a command
    holding the active's virtual address gives it up)."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        ha.stopping = True
        ha.set_state(STOPPING, "normal termination")
        fired = hooked(srv)
        await ha.on_demoted("host-b")
        assert ha.role == "standby" and ha.state == STOPPING
        assert [(f[0], f[1]) for f in fired] == [("standby", STOPPING)], fired
    finally:
        close(srv)


async def test_a_standby_out_of_sight_is_forgotten_once_the_active_leaves_serving(tmp_path: Path) -> None:
    """An established standby lost with the peer link is "out of sight" only while the active
    serves without it: a batch write for a standby (a new start) ends that, and if that write
    fails back to `serving`, a stop does not wait for the old standby's return."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        await ha.ev_peer_down("test")
        assert ha.state == SERVING and ha.standby_may_return()
        ha.set_state(BATCH_WRITING, "standby startup")
        ha.set_state(SERVING, "batch write failed")
        assert ha.standby_out_of_sight is None and not ha.standby_may_return()
    finally:
        close(srv)


async def test_a_resyncs_flag_ends_with_its_batch_write(tmp_path: Path) -> None:
    """`resyncing` marks a batch write for the established standby (a planned switchover asked
    meanwhile waits for it): once the host leaves batch writing it is cleared, so that a later
    batch write for a standby that is not established is not taken for one (a switchover refused)."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.set_state(BATCH_WRITING, "resync")
        ha.resyncing = True
        ha.set_state(SERVING, "batch write failed")
        assert not ha.resyncing
        ha.set_state(BATCH_WRITING, "standby startup")
        assert ha.switchover_refusal() is not None
    finally:
        close(srv)


async def test_a_fence_runs_the_hook_with_the_fenced_state(tmp_path: Path) -> None:
    """The CP's `fenced`: the role is still "active" (no role change), yet the hook runs with the
    state `fenced`, so that a command holding the active's virtual address gives it up."""
    srv, _ = active_host(tmp_path)
    try:
        fired = hooked(srv)
        srv._cp_frame({"t": "fenced", "epoch": 4, "msg": "fenced at epoch 4"})
        await srv.ha.run_cycle()  # (the loop's part: the fence)
        assert srv.ha.state == FENCED
        assert [(f[0], f[1]) for f in fired] == [("active", FENCED)], fired
    finally:
        close(srv)


async def test_the_standby_role_is_announced_once_not_at_each_state_change(tmp_path: Path) -> None:
    """A process started as the standby runs the hook once it first holds the role (waiting for
    an active), and not again as it goes on through its states (awaiting a batch, established)."""
    srv, _ = standby_host(tmp_path)
    try:
        fired = hooked(srv)
        srv.ha.set_state(WAITING, "registered")
        srv.ha.set_state(AWAITING_BATCH, "standby startup sent")
        srv.ha.set_state(ESTABLISHED, "batch read")
        assert [(f[0], f[1]) for f in fired] == [("standby", WAITING)], fired
    finally:
        close(srv)


async def test_the_loop_passes_at_least_every_fifth_of_a_second_when_idle(tmp_path: Path) -> None:
    """With no event, the HA loop still passes every 0.2 s (its timers: a standby's wait for
    BATCH WRITE COMPLETE, a held batch write, a resync due): its idle wait is no longer."""
    srv, _ = active_host(tmp_path)
    try:
        assert srv.ha._idle_wait(None) <= 0.2
        srv.ha.set_state(WAITING, "test", role="standby")
        assert srv.ha._idle_wait(None) <= 0.2
    finally:
        close(srv)


async def test_a_normal_stop_of_the_active_tells_the_hook_stopping(tmp_path: Path) -> None:
    """The active stops normally (no role change): the hook hears it stops acting with the state
    `stopping` and the reason "normal termination", not the `not_serving` of a lost link."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        assert ha.acting_told is True  # (told at the registration)
        fired = hooked(srv)
        ha.set_state(STOPPING, "normal termination")
        ha.hook_acting()
        assert [(f[0], f[1], f[3]) for f in fired] == [("active", STOPPING, "normal termination")], fired
    finally:
        close(srv)


@contextlib.asynccontextmanager
async def running(srv: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """HA.run as a task for the body; then ended (an exit and a wake) and the host closed."""
    ha = srv.ha
    loop = asyncio.create_task(ha.run())
    try:
        yield loop
    finally:
        ha.exit = Exit(0, "test over")
        ha.wake.set()
        await asyncio.wait_for(loop, 10)
        close(srv)


async def test_a_bug_in_one_cycle_leaves_the_loop_running(tmp_path: Path) -> None:
    """An exception out of one cycle (a bug in a procedure) is logged and said in the status's
    last error; the loop goes on and takes the next events (the daemon is not left headless)."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    async with running(srv) as loop:
        ha.post("no_such_event")  # (no handler: AttributeError in the cycle)
        await until(lambda: (ha.last_error or "").startswith("internal error"), "the bug said")
        ha.post("link_problem", link="cp", why="refused")
        await until(lambda: ha.last_error == "host link to the CP not made: refused", "the next event taken")
        assert not loop.done()


async def test_one_wake_is_one_cycle_not_a_loop_that_never_yields(tmp_path: Path) -> None:
    """A wake is used up by the cycle it starts: the loop then waits for the next one (or its
    idle timer) instead of passing again at once. A wake left set would make every pass return
    without yielding, the daemon's whole event loop spinning: here the stand-in cycle ends the
    loop after 50 passes, so that shows as a count, not as a hung test."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    passes = 0

    async def cycle(watchdog: Any) -> str:
        nonlocal passes
        passes += 1
        if passes >= 50:
            ha.exit = Exit(0, "spinning")
        return "test"

    ha._cycle_pinged = cycle  # type: ignore[method-assign]
    ha._idle_wait = lambda ping_due: 30.0  # type: ignore[method-assign]
    async with running(srv) as loop:
        ha.wake.set()
        await until(lambda: passes >= 1, "the wake's cycle")
        for _ in range(20):  # turns of the loop in which a spinning run would pass again
            await asyncio.sleep(0)
        assert passes == 1 and not loop.done(), passes


# ---------------------------------------------------------------- run_cycle


async def test_no_event_is_taken_after_one_that_ends_the_process(tmp_path: Path) -> None:
    """A cycle stops taking events once one ends the process (a fence): what came behind it is
    not acted on by a host that must stop, and the last error stays the fence's."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        ha.post("cp_frame", msg={"t": "fenced", "epoch": 4, "msg": "fenced at epoch 4"})
        ha.post("link_problem", link="cp", why="refused")
        sentence = await ha.run_cycle()
        assert ha.exit is not None and sentence.startswith("exiting: this host was fenced")
        assert (ha.last_error or "").startswith("this host was fenced"), ha.last_error
        assert len(ha.events) == 1
    finally:
        close(srv)


async def test_the_active_never_polls_the_ring(tmp_path: Path) -> None:
    """Only an established standby reads the ring each poll interval; an established active (which
    writes it) does not, whatever its poll time says."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    polls: list[int] = []

    async def poll() -> None:
        polls.append(1)

    try:
        ha.ring_poll = poll  # type: ignore[method-assign]
        ha.next_poll = 0.0
        await ha.run_cycle()
        assert polls == []
    finally:
        close(srv)


async def test_a_standby_without_batch_write_complete_within_its_wait_starts_again(tmp_path: Path) -> None:
    """A standby awaiting BATCH WRITE COMPLETE longer than `batch_wait_s` starts again: a new
    STANDBY STARTUP (a new startup id) goes to the active at once; within the wait, nothing."""
    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        peer_active(srv)
        ha.set_state(WAITING, "registered")
        ha.maybe_standby_startup()
        assert ha.state == AWAITING_BATCH and sent.peer_kinds() == ["standby_startup"]
        first = ha.own_startup_id
        ha.state_since_mono = time.monotonic() - ha.batch_wait_s + 5.0
        await ha.run_cycle()
        assert sent.peer_kinds() == ["standby_startup"]
        ha.state_since_mono = time.monotonic() - ha.batch_wait_s - 0.5
        await ha.run_cycle()
        assert sent.peer_kinds() == ["standby_startup", "standby_startup"] and ha.state == AWAITING_BATCH
        assert sent.peer[1]["startup_id"] == ha.own_startup_id != first
    finally:
        close(srv)


# ---------------------------------------------------------------- a planned switchover's end


async def test_a_switchover_abandoned_with_the_cp_link_ignores_its_replies_finishing_late(tmp_path: Path) -> None:
    """The CP link is lost while the replies of a released switchover are being finished: the
    switchover is abandoned (established as before); the finish that comes late is that ended
    switchover's and hands nothing over (no `handing_over`, no handover sent)."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        token = ha.switch_token
        await ha.ev_cp_down("reset")
        assert ha.state == ESTABLISHED
        await ha.ev_replies_finished(token=token, complete=True)
        assert ha.state == ESTABLISHED and [m["t"] for m in sent.cp] == ["release"], sent.cp
    finally:
        close(srv)


async def test_a_switchover_refused_while_releasing_does_not_hand_over_on_a_late_released(tmp_path: Path) -> None:
    """A planned switchover that ends while its release is at the CP (refused) forgets that
    release: the CP's `released` that comes after it finishes no replies and hands nothing over."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        await ha.ev_cp_frame({"t": "handover_refused", "reason": "release first"})
        assert ha.state == ESTABLISHED and not ha.release_pending
        await ha.ev_cp_frame({"t": "released"})
        assert ha.tasks == set() and ha.state == ESTABLISHED, ha.state
    finally:
        close(srv)


# ---------------------------------------------------------------- peer link events


async def test_a_waiting_standby_sends_standby_startup_when_its_peer_link_comes_up(tmp_path: Path) -> None:
    """The peer link up (the active's hello already in): a standby waiting for an active sends
    STANDBY STARTUP then, not at the active's next heartbeat."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.set_state(WAITING, "registered")
        peer_active(srv)
        await srv.ha.ev_peer_up()
        assert sent.peer_kinds() == ["standby_startup"] and srv.ha.state == AWAITING_BATCH
    finally:
        close(srv)


@pytest.mark.parametrize("resync", [True, False], ids=["resync", "new-standby"])
async def test_the_peer_link_lost_during_a_batch_write_leaves_the_standby_out_of_sight_only_for_a_resync(tmp_path: Path, resync: bool) -> None:
    """The peer link drops during a batch write: if it was a resync of the established standby,
    that standby may be back in a moment (a stop waits briefly for it); if it was a new standby's
    first batch, none was established: a stop does not wait."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.set_state(BATCH_WRITING, "batch write")
        ha.resyncing = resync
        await ha.ev_peer_down("reset")
        assert ha.state == SERVING and ha.standby_may_return() is resync
    finally:
        close(srv)


async def test_a_handover_refused_after_the_peer_link_dropped_leaves_the_active_serving_not_established(tmp_path: Path) -> None:
    """The peer link drops during a planned switchover: the standby is no longer in sight, so if
    the CP then refuses the handover the active serves without a standby (not `established`)."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        await ha.ev_peer_down("reset")
        await ha.ev_cp_frame({"t": "handover_refused", "reason": "no standby host is registered at the CP", "code": "no_standby"})
        assert ha.state == SERVING and ha.established_since is None
    finally:
        close(srv)


async def test_a_standby_lost_during_a_planned_switchover_is_not_waited_for_by_a_stop(tmp_path: Path) -> None:
    """The peer link drops while the active releases for a planned switchover: the standby is out
    of sight, but the active is not serving without it (a stop waits on the switchover, not for
    the standby's return): `standby_may_return` holds only for an active serving."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        await ha.ev_peer_down("reset")
        assert ha.standby_out_of_sight is not None and not ha.standby_may_return()
    finally:
        close(srv)


async def test_an_active_whose_standby_comes_back_established_marks_when(tmp_path: Path) -> None:
    """The peer link back, the standby's hello says it still follows this active's ring (its
    startup id, established): the active is established again, since now (status)."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        hello = {"t": "peer_hello", "role": "standby", "state": ESTABLISHED, "partner": ha.instance, "startup_id": 7, "name": "host-b"}
        await ha.peer_peer_hello(hello)
        assert ha.state == ESTABLISHED and ha.established_since is not None
    finally:
        close(srv)


@pytest.mark.parametrize("case", ["handing_over", "peer_starting", "stopping"])
async def test_a_peer_claiming_the_active_role_is_no_conflict_when_expected(tmp_path: Path, case: str) -> None:
    """The peer's hello claims the active role at a higher epoch while this host's lease runs, yet
    it is no conflict (nothing counted, the CP link kept): this host hands over to it, the peer
    is still starting (it holds no role), or this host stops (its handover granted late)."""
    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    drops: list[str] = []
    srv.cp.drop = drops.append  # type: ignore[method-assign,assignment]
    try:
        if case == "handing_over":
            ha.set_state("handing_over", "replies finished")
        elif case == "stopping":
            ha.set_state(STOPPING, "normal termination")
        state = STARTING if case == "peer_starting" else SERVING
        await ha.peer_peer_hello({"t": "peer_hello", "role": "active", "state": state, "epoch": 4, "name": "host-b", "instance": "B1"})
        assert drops == [] and ha.counters["two_actives_claimed"] == 0 and ha.last_error is None
    finally:
        close(srv)


async def test_two_actives_claimed_is_counted(tmp_path: Path) -> None:
    """The peer claims the active role at this host's epoch while this host's lease runs: two
    actives, counted (the alert's metric) and said in the last error."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        await ha.peer_peer_hello({"t": "peer_hello", "role": "active", "state": SERVING, "epoch": 3, "name": "host-b", "instance": "B1"})
        assert ha.counters["two_actives_claimed"] == 1 and ha.status()["counters"]["two_actives_claimed"] == 1
        assert ha.last_error == "the peer host-b also claims to be active"
    finally:
        close(srv)


async def test_the_peers_word_that_the_cp_confirmed_its_stop_is_taken(tmp_path: Path) -> None:
    """The active's `active_stopping` notice saying the CP confirmed its normal stop: the standby
    takes that word (its sentence says the stop was confirmed)."""
    srv, _ = standby_host(tmp_path)
    try:
        srv.ha.set_state(ESTABLISHED, "batch read")
        await srv.ha.ev_peer_frame({"t": "active_stopping", "name": "host-a", "cp_confirmed": True})
        assert srv.ha.state == ACTIVE_STOPPED and srv.ha.active_stop_confirmed
    finally:
        close(srv)
