"""The active's side of hot standby (hsb/host/ha_standby.py: its batch writes, its ring writes'
staleness, STANDBY READY, a file mismatch) and the switchover and failover rules
(hsb/host/ha_switch.py), driven by hand on an unstarted HostServer (tests/support/hafakes.py),
each test naming a behaviour that a mutation audit of the two modules found no test for: batch
writes held during a stop or a planned switchover's handover, the pacing of batch writes the
standby did not read (a new standby start counted as one, four times the last one's duration, a
held standby startup not replaced by a resync, STANDBY READY resetting it), a resync asked by
another startup id, the resync flag of a standby that starts again, ring changes made while the
link is walked, a stop begun during a batch write, a failed one's buffer dropped, the stale-view
threshold, a standby ready again during a switchover, the ring writer stopped on a file mismatch;
a stopping standby taking nothing over, the CP's word on a normal stop, a takeover asked once a
second and the requests kept, a grant stopping a batch read's opens and counted as a failover,
the handover forgotten when a switchover ends, a stop's handover refused, a switchover asked
twice, a resync's deadline kept and its end (refused if it may no longer start, at once if the
view goes stale, the resync going on), a release not sent, an abandoned switchover's late replies, the
demoted host's ring writer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hsb.host.ha_standby import BATCH_GAP_FIRST_S, batch_hold_max
from hsb.host.states import BATCH_WRITING, ESTABLISHED, HANDING_OVER, RELEASING, SERVING, STOPPING
from tests.support.hafakes import active_host, close, standby_host, standby_startup

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- the active's batch writes


async def test_a_stopping_active_writes_no_batch_for_a_standby_startup(tmp_path: Path) -> None:
    """A STANDBY STARTUP that comes while the active stops normally is dropped: no batch write (a
    whole link and two syncs) for a standby of a host about to end, nothing held for later."""
    srv, sent = active_host(tmp_path)
    try:
        srv.ha.stopping = True
        await srv.ha.peer_standby_startup(standby_startup(5))
        assert srv.ha.state == SERVING and srv.ha.generation is None, srv.ha.state
        assert sent.peer == [] and srv.ha.deferred_batch is None
    finally:
        close(srv)


@pytest.mark.parametrize("state", [RELEASING, HANDING_OVER])
async def test_a_batch_asked_for_during_a_planned_switchovers_handover_waits_for_its_end(tmp_path: Path, state: str) -> None:
    """During a planned switchover (releasing, then handing over) a standby startup's batch write
    would end the switchover (it leaves that state): it is held (`deferred_batch`), nothing is
    written, until the switchover ends."""
    srv, sent = active_host(tmp_path, state)
    try:
        msg = standby_startup(5)
        await srv.ha.peer_standby_startup(msg)
        assert srv.ha.state == state and srv.ha.deferred_batch == msg
        assert sent.peer == [] and srv.ha.generation is None
    finally:
        close(srv)


async def test_a_new_standby_start_counts_its_predecessors_unread_batches_as_one(tmp_path: Path) -> None:
    """Batches the standby did not read are paced (doubling with each unread one); a STANDBY
    STARTUP with a new startup id (a new start of the standby) counts those as one step: its batch
    is held BATCH_GAP_FIRST_S after the last one, not the long hold of five unread. One with the
    same id keeps the count."""
    srv, sent = active_host(tmp_path)
    ha = srv.ha
    try:
        hold = batch_hold_max(srv.cfg.takeover)
        assert hold > 2 * BATCH_GAP_FIRST_S  # (the two holds told apart)
        ha.partner_startup_id = 7
        ha.batches_unread = 5
        ha.batch_ended = ended = (time.monotonic(), 0.0)
        await ha.peer_standby_startup(standby_startup(7))  # the same standby asking again
        assert ha.batches_unread == 5 and ha.held_batch is not None
        assert ha.held_batch[0] == pytest.approx(ended[0] + hold)
        await ha.peer_standby_startup(standby_startup(8))  # a new start of the standby
        assert ha.batches_unread == 1 and ha.held_batch is not None
        assert ha.held_batch[0] == pytest.approx(ended[0] + BATCH_GAP_FIRST_S)
        assert sent.peer == []
    finally:
        close(srv)


@pytest.mark.parametrize("took", [0.0, 0.3])
async def test_the_hold_after_one_unread_batch_is_the_first_gap_or_four_times_its_duration(tmp_path: Path, took: float) -> None:
    """After one batch the standby did not read, the next is held BATCH_GAP_FIRST_S after it ended
    (the gap's first step, not doubled yet), or four times the time that one took if longer."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        ha.batches_unread = 1
        ha.batch_ended = (ended := time.monotonic()), took
        await ha.peer_standby_startup(standby_startup(7))
        assert ha.held_batch is not None
        assert ha.held_batch[0] == pytest.approx(ended + max(BATCH_GAP_FIRST_S, 4 * took))
    finally:
        close(srv)


async def test_a_held_standby_startup_is_not_replaced_by_a_resync_request(tmp_path: Path) -> None:
    """A STANDBY STARTUP held (too soon after an unread batch) stays the one held when a resync
    request comes meanwhile: its batch write also resets the resync flag and takes the new id."""
    srv, _ = active_host(tmp_path)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        ha.batches_unread = 1
        ha.batch_ended = time.monotonic(), 0.0
        startup = standby_startup(7)
        await ha.peer_standby_startup(startup)
        await ha.peer_resync_request({"t": "resync_request", "startup_id": 7, "reason": "lapped"})
        assert ha.held_batch is not None and ha.held_batch[1] == startup
    finally:
        close(srv)


async def test_a_batch_the_standby_has_not_read_yet_holds_the_next_ask(tmp_path: Path) -> None:
    """Each batch write counts as unread until the standby says ready: a second STANDBY STARTUP
    right after the first one's batch is held, not written at once."""
    srv, sent = active_host(tmp_path)
    ha = srv.ha
    try:
        await ha.peer_standby_startup(standby_startup(5))
        assert sent.peer_kinds() == ["batch_write_complete"] and ha.batches_unread == 1
        await ha.peer_standby_startup(standby_startup(5))
        assert ha.held_batch is not None and sent.peer_kinds() == ["batch_write_complete"]
    finally:
        close(srv)


async def test_a_resync_request_of_another_startup_id_writes_no_batch(tmp_path: Path) -> None:
    """A resync request naming a startup id not the standby's current one (an earlier start of the
    standby, its frame late) is ignored: the established pair stays so, nothing written."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        await ha.peer_resync_request({"t": "resync_request", "startup_id": 6, "reason": "lapped"})
        assert ha.state == ESTABLISHED and not ha.resyncing and sent.peer == []
    finally:
        close(srv)


async def test_a_standby_starting_again_is_not_a_resync_a_planned_switchover_may_wait_for(tmp_path: Path) -> None:
    """A STANDBY STARTUP (the standby started again) makes a batch write that is no resync of an
    established standby: a planned switchover asked meanwhile is refused, not left to wait for it."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        ha.resyncing = True  # (a resync's batch write was under way for the standby's former start)
        await ha.peer_standby_startup(standby_startup(8))
        assert ha.state == BATCH_WRITING and sent.peer_kinds() == ["batch_write_complete"]
        assert not ha.resyncing
        why = ha.switchover_refusal()
        assert why is not None and "no established standby" in why, why
    finally:
        close(srv)


async def test_a_session_change_made_while_the_link_is_walked_goes_to_the_ring_after_the_batch(tmp_path: Path) -> None:
    """Changes made while the batch is being taken (the link walked in slices) are kept for the
    ring after the batch: a terminal logged on then is in the standby's view, not lost at a
    takeover."""
    from hsb.takeover.records import SessionEntry

    srv, _ = active_host(tmp_path)
    tio = srv.takeover

    async def walked() -> list[SessionEntry]:
        tio.ring_change("T9", {"user": "late"}, True)  # a logon while the link is walked
        return []

    srv.sessions.link_entries = walked  # type: ignore[method-assign,assignment]  # (called without an argument)
    try:
        await srv.ha.peer_standby_startup(standby_startup(5))
        assert srv.ha.state == BATCH_WRITING
        assert [e.terminal for e in tio.pending] == ["T9"], tio.pending
    finally:
        close(srv)


async def test_a_stop_begun_while_the_batch_is_written_sends_no_batch_write_complete(tmp_path: Path) -> None:
    """A normal stop that began while the batch was being written: BATCH WRITE COMPLETE is not
    sent (the standby would open standby sessions of a host about to end)."""
    from hsb.takeover.records import SessionEntry

    srv, sent = active_host(tmp_path)

    async def walked() -> list[SessionEntry]:
        srv.ha.stopping = True  # (SIGTERM while the link is walked)
        return []

    srv.sessions.link_entries = walked  # type: ignore[method-assign,assignment]  # (called without an argument)
    try:
        await srv.ha.peer_standby_startup(standby_startup(5))
        assert srv.ha.generation is not None  # (the batch itself was written)
        assert sent.peer == [], sent.peer
    finally:
        close(srv)


async def test_a_failed_batch_write_buffers_no_more_ring_changes(tmp_path: Path) -> None:
    """A batch write that failed leaves no standby to write the ring for: the changes buffered
    since it began are dropped and no more are kept (they would pile up for as long as no
    standby starts)."""
    srv, sent = active_host(tmp_path)
    tio = srv.takeover

    async def failing(*args: object, **kw: object) -> int:
        tio.ring_change("T9", {"user": "late"}, True)
        raise OSError(5, "EIO (test)")

    tio.batch_write = failing  # type: ignore[method-assign]
    try:
        await srv.ha.peer_standby_startup(standby_startup(5))
        assert srv.ha.state == SERVING and sent.peer == []
        tio.ring_change("T10", {"user": "later"}, True)
        assert tio.pending == [], tio.pending
    finally:
        close(srv)


async def test_ring_writes_failing_make_the_standbys_view_stale_only_after_the_storage_timeout(tmp_path: Path) -> None:
    """The active's ring writes failing: the standby's view is stale (hot standby not ready) after
    RING_WRITE_STALE_S or the storage's own timeout, whichever is longer: a write still within
    its storage_timeout may yet succeed."""
    from hsb.host.ha_standby import RING_WRITE_STALE_S

    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        srv.cfg.takeover.storage_timeout = 2 * RING_WRITE_STALE_S
        failing = [1.5 * RING_WRITE_STALE_S]
        srv.takeover.write_failing_for = lambda: failing[0]  # type: ignore[method-assign]
        ha.check_ring_writes()
        assert not ha.ring_unwritten and not ha.standby_view_stale()
        failing[0] = 2 * RING_WRITE_STALE_S
        ha.check_ring_writes()
        assert ha.ring_unwritten and ha.standby_view_stale()
    finally:
        close(srv)


@pytest.mark.parametrize("state", [RELEASING, HANDING_OVER])
async def test_a_standby_ready_during_a_planned_switchover_makes_the_pair_established_again(tmp_path: Path, state: str) -> None:
    """The peer link back during a planned switchover (its loss had ended hot standby): the
    standby's STANDBY READY makes it established again, the switchover goes on (its state kept),
    so that a refused handover leaves the active established."""
    srv, _ = active_host(tmp_path, state)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        ha.established_since = None  # (the peer link lost meanwhile)
        await ha.peer_standby_ready({"t": "standby_ready", "startup_id": 7})
        assert ha.state == state and ha.established_since is not None
    finally:
        close(srv)


async def test_a_takeover_file_mismatch_stops_the_ring_writer(tmp_path: Path) -> None:
    """The standby reads another takeover file than this host writes: the ring is written no more
    (for nobody), and the active serves without hot standby."""
    from hsb.host.takeover_io import OFF

    srv, _ = active_host(tmp_path, ESTABLISHED)
    try:
        srv.takeover.start_ring_writer()
        await srv.ha.peer_file_mismatch({"t": "file_mismatch", "startup_id": 7, "found": 9, "path": "/elsewhere"})
        assert srv.takeover.mode == OFF and srv.ha.state == SERVING and srv.ha.file_mismatch
    finally:
        close(srv)


# ---------------------------------------------------------------- failover and switchover


async def test_a_stopping_standby_asks_for_no_takeover_when_the_active_is_lost(tmp_path: Path) -> None:
    """A standby that is stopping normally takes nothing over: the active's loss asks the CP for
    nothing (the role would go to a process about to end), and its stop stays its state."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.set_state(STOPPING, "test: normal termination")
        srv.ha.stopping = True
        await srv.ha.on_active_lost("host-a", "lost", via="cp")
        assert sent.cp == [] and srv.ha.takeover is None and srv.ha.last_error is None
        await srv.ha.on_active_lost("host-a", "stopping", via="cp")  # (nor does it wait for an active now)
        assert srv.ha.state == STOPPING and srv.ha.active_stopped_by is None
    finally:
        close(srv)


@pytest.mark.parametrize(("via", "word", "confirmed"), [("cp", None, True), ("peer", None, False), ("peer", True, True)])
async def test_the_cps_word_that_the_active_stopped_is_its_own_confirmation(tmp_path: Path, via: str, word: bool | None, confirmed: bool) -> None:
    """The CP reporting the active's normal stop (via "cp") is the CP's confirmation of it; the
    peer's report is confirmed only by the peer's word that the CP answered."""
    from hsb.host.states import ACTIVE_STOPPED

    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.set_state(ESTABLISHED, "test")
        await srv.ha.on_active_lost("host-a", "stopping", via=via, cp_confirmed=word)
        assert srv.ha.state == ACTIVE_STOPPED and srv.ha.active_stop_confirmed is confirmed
        assert sent.cp == []
    finally:
        close(srv)


async def test_after_a_normal_stop_only_the_cps_loss_report_asks_for_the_role(tmp_path: Path) -> None:
    """The active stopped normally: the standby does not take over on the peer's word of a loss
    (the peer link closing with the stop); the CP's loss report (it never recorded the stop) does."""
    srv, sent = standby_host(tmp_path)
    try:
        srv.ha.set_state(ESTABLISHED, "test")
        await srv.ha.on_active_lost("host-a", "stopping", via="peer")
        await srv.ha.on_active_lost("host-a", "peer link lost", via="peer")
        assert sent.cp == []
        await srv.ha.on_active_lost("host-a", "lost", via="cp")
        assert [m["t"] for m in sent.cp] == ["switchover"]
    finally:
        close(srv)


async def test_a_takeover_is_asked_for_at_most_once_a_second(tmp_path: Path) -> None:
    """Reports of the active's loss in quick succession (the peer link, then the CP) ask the CP for
    the role once; the requests remembered for the grant are the newest SWITCH_SENT_KEPT."""
    from hsb.host.ha_switch import SWITCH_SENT_KEPT

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        await ha.request_switchover("active lost (test)")
        await ha.request_switchover("active lost again (test)")
        assert [m["req"] for m in sent.cp] == [1]
        for _ in range(SWITCH_SENT_KEPT + 2):
            ha.switch_requested_at = None  # (a second later)
            await ha.request_switchover("active lost (test)")
        n = ha.switch_req_n
        assert sorted(ha.switch_sent) == list(range(n - SWITCH_SENT_KEPT + 1, n + 1))
    finally:
        close(srv)


async def test_a_grant_stops_the_standby_opens_of_a_batch_read_still_under_way(tmp_path: Path) -> None:
    """The grant while a batch read's standby opens are still waited for: they stop (this host's
    sessions are the active ones now), and the takeover counts as a failover."""
    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    opens = asyncio.ensure_future(asyncio.sleep(60))
    try:
        ha.set_state(ESTABLISHED, "test")
        await ha.request_switchover("active lost (test)")
        ha.batch_apply = opens
        await ha.on_switch_granted(7)
        await asyncio.gather(opens, return_exceptions=True)
        assert opens.cancelled() and ha.role == "active" and ha.epoch == 7
        assert ha.counters["failovers"] == 1 and ha.counters["switchovers"] == 0
        assert sent.peer_kinds() == ["active_startup"]
    finally:
        opens.cancel()
        close(srv)


async def test_a_planned_switchover_ended_forgets_the_handover_sent(tmp_path: Path) -> None:
    """A planned switchover refused: its handover is no longer at the CP; messages go to the
    service again (`may_deliver`)."""
    srv, _ = active_host(tmp_path, HANDING_OVER)
    try:
        srv.ha.handover_sent = True
        srv.ha.switchover_over()
        srv.ha.set_state(ESTABLISHED, "test")
        assert not srv.ha.handover_sent and srv.ha.may_deliver
    finally:
        close(srv)


async def test_a_stops_handover_refused_for_another_reason_ends_in_the_normal_stop(tmp_path: Path) -> None:
    """A stop waiting on its handover: refused because the CP had no standby registered just then,
    the stop may ask again (within its time); refused for any other reason, it stops normally."""
    from hsb.host.ha_switch import NO_STANDBY_AT_CP

    srv, _ = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.stop_handing_over = True
        ha.stop_asks_until = time.monotonic() + 60.0
        ha.switchover_over(NO_STANDBY_AT_CP)
        assert ha.stop_may_ask_again and not ha.stopping
        ha.stop_may_ask_again = False
        ha.switchover_over("refused")
        assert ha.stopping and not ha.stop_may_ask_again
    finally:
        close(srv)


async def test_a_planned_switchover_asked_again_while_one_is_under_way_goes_on_as_it_was(tmp_path: Path) -> None:
    """A second planned switchover (an operator's, then a stop's) while one is releasing: the one
    under way goes on; nothing more is sent to the CP, no refusal recorded."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        await ha.ev_switchover()
        assert ha.state == RELEASING and [m["t"] for m in sent.cp] == ["release"]
        token = ha.switch_token
        await ha.ev_switchover()
        assert ha.state == RELEASING and ha.switch_token == token and len(sent.cp) == 1 and ha.last_error is None
    finally:
        close(srv)


async def test_a_switchover_waiting_for_a_resync_keeps_its_first_deadline(tmp_path: Path) -> None:
    """A planned switchover while the standby's resync is written waits for it, at most the
    standby's own wait for a batch from the first ask: asking again does not push it later."""
    srv, _ = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.resyncing = True
        await ha.ev_switchover()
        first = ha.switch_after_resync
        assert first is not None and ha.state == BATCH_WRITING
        ha.switch_after_resync = first - 1.0  # (asked a second ago)
        ha.switchovers_ended = 0
        await ha.ev_switchover()
        assert ha.switch_after_resync == first - 1.0
    finally:
        close(srv)


async def test_a_release_not_sent_leaves_no_release_pending(tmp_path: Path) -> None:
    """The release could not be sent (the CP link down): the switchover ends; a later "released"
    (of a normal stop) must not finish that switchover's replies and hand over."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    srv.cp.send = lambda msg: False  # type: ignore[method-assign]
    try:
        ha.start_release()
        assert not ha.release_pending and ha.state == ESTABLISHED
        await ha.on_released()
        assert not ha.tasks and ha.events == type(ha.events)()
    finally:
        close(srv)


async def test_a_stop_giving_up_on_its_switchover_ignores_that_switchovers_late_steps(tmp_path: Path) -> None:
    """A stop that gives up waiting on a planned switchover: the switchover's replies, finished
    late, do not hand over."""
    srv, sent = active_host(tmp_path, ESTABLISHED)
    ha = srv.ha
    try:
        ha.start_release()
        token = ha.switch_token
        ha.abandon_switchover()
        await ha.ev_replies_finished(token=token, complete=True)
        assert [m["t"] for m in sent.cp] == ["release"] and not ha.handover_sent
    finally:
        close(srv)


async def test_the_old_active_demoted_stops_writing_the_ring(tmp_path: Path) -> None:
    """The old active of a planned switchover turns standby: it writes the ring no more (its
    writes would land over the new active's)."""
    from hsb.host.takeover_io import OFF

    srv, _ = active_host(tmp_path, HANDING_OVER)
    try:
        srv.takeover.start_ring_writer()
        srv.ha.stop_handing_over = True  # (a stop's handover: the process ends, no standby startup)
        await srv.ha.on_demoted("host-b")
        assert srv.takeover.mode == OFF and srv.ha.role == "standby" and srv.ha.stopping
        assert srv.handed_over.is_set()
    finally:
        close(srv)


async def test_a_switchover_that_waited_for_a_resync_is_refused_if_it_may_no_longer_start(tmp_path: Path) -> None:
    """The standby ready again after its resync, but the switchover may not start now (this host
    is no longer registered at the CP): it is refused, no release sent."""
    srv, sent = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.resyncing = True
        await ha.ev_switchover()
        assert ha.switch_after_resync is not None
        ha.set_state(ESTABLISHED, "test: standby ready")
        ha.established_since = time.time()
        ha.registered = False  # (its CP link lost meanwhile)
        ha.resync_done()
        assert sent.cp == [] and ha.state == ESTABLISHED and ha.switch_after_resync is None
        assert ha.last_error is not None and "not registered at the CP" in ha.last_error
    finally:
        close(srv)


async def test_a_switchover_whose_resync_took_too_long_ends_and_the_resync_goes_on(tmp_path: Path) -> None:
    """A planned switchover waited for the standby's resync past the standby's own wait for a
    batch: the switchover is refused, the batch write for the resync goes on (its state kept)."""
    srv, sent = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.resyncing = True
        await ha.ev_switchover()
        ha.switch_after_resync = time.monotonic() - 0.001  # (the wait ran out)
        ha.resync_done()
        assert ha.state == BATCH_WRITING and ha.resyncing and ha.switch_after_resync is None
        assert sent.cp == [] and ha.last_error is not None and "refused" in ha.last_error
    finally:
        close(srv)


async def test_a_switchover_waiting_for_a_resync_is_refused_at_once_when_the_view_goes_stale(tmp_path: Path) -> None:
    """The active's ring writes fail while a planned switchover waits for the standby's resync:
    the switchover is refused then (saying why), not left waiting until its deadline; the resync
    goes on."""
    srv, sent = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.resyncing = True
        await ha.ev_switchover()
        assert ha.switch_after_resync is not None and ha.switch_after_resync > time.monotonic()
        ha.ring_unwritten = True  # (check_ring_writes: failing past the threshold)
        ha.resync_done()
        assert ha.switch_after_resync is None and ha.state == BATCH_WRITING and sent.cp == []
        assert ha.last_error is not None and "stale" in ha.last_error
    finally:
        close(srv)
