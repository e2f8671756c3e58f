"""The standby's side of hot standby (hsb/host/ha_standby.py: ACTIVE STARTUP, STANDBY STARTUP,
the batch read and its re-reads, the retries, the ring polls), driven by hand on an unstarted
HostServer (tests/support/hafakes.py), each test naming a behaviour that a mutation audit found no
test for: a new active's ACTIVE STARTUP dropping the old one's word and stopping its batch's
opens, a hello not taken for a registration, startup ids growing, a late BATCH WRITE COMPLETE
ignored and an established standby's own read, the retry's backoff and a hung storage, the ring
followed once the opens are done, the ring's failing reads and torn records, the changes a poll
finds, a stale header's doubling re-reads and an earlier read's re-read, a mismatch naming the
standby's own id, a success resetting the backoff."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.host.server import HostServer
from hsb.host.states import BATCH_WRITING, ESTABLISHED
from tests.support.hafakes import Sent, active_host, close, peer_active, standby_host, until

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- the standby


async def test_an_active_starting_again_drops_the_old_ones_word_on_its_ring_writes(tmp_path: Path) -> None:
    """The old active said it could not write the ring: a new active's ACTIVE STARTUP clears that
    (the new one's word comes with its heartbeats); the standby does not call its view stale on
    the old process's word."""
    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.partner_instance = "old"
        ha.note_active_ring({"t": "hb", "role": "active", "ring_write_failing": "EIO"})
        assert ha.active_ring_failing == "EIO"
        await ha.peer_active_startup({"t": "active_startup", "instance": "new", "name": "host-a"})
        assert ha.active_ring_failing is None and not ha.standby_view_stale()
    finally:
        close(srv)


async def test_a_hello_taken_for_active_startup_does_not_say_the_active_is_registered(tmp_path: Path) -> None:
    """A hello from an active process not followed yet is taken for its ACTIVE STARTUP (a lost
    notice is not fatal), but only the real ACTIVE STARTUP (sent once registered at the CP) lets
    the standby ask an active whose state still says starting for a batch: the CP may refuse it
    the role."""
    from hsb.host.states import STARTING, WAITING

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        peer_active(srv, STARTING, "A1")
        await ha.peer_active_startup({"instance": "A1", "name": "host-a"})  # (as peer_peer_hello passes it)
        assert ha.state == WAITING and sent.peer == [], sent.peer
        await ha.peer_active_startup({"t": "active_startup", "instance": "A1", "name": "host-a"})
        assert sent.peer_kinds() == ["standby_startup"]
    finally:
        close(srv)


async def test_no_standby_startup_to_an_active_still_starting_whose_startup_came_from_another_process(tmp_path: Path) -> None:
    """An active whose hello says starting gets a STANDBY STARTUP only if its own ACTIVE STARTUP
    came (the process that sent it is registered at the CP), not on an earlier process's."""
    from hsb.host.states import STARTING, WAITING

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.announced_by = "A0"
        ha.set_state(WAITING, "test")
        peer_active(srv, STARTING, "A1")
        ha.maybe_standby_startup()
        assert ha.state == WAITING and sent.peer == []
        ha.announced_by = "A1"
        ha.maybe_standby_startup()
        assert sent.peer_kinds() == ["standby_startup"]
    finally:
        close(srv)


async def test_each_standby_startup_id_is_larger_than_the_last(tmp_path: Path) -> None:
    """A new startup identifier is made larger than this process's last one (two within one
    millisecond, or a clock stepped back, still differ: a late BATCH WRITE COMPLETE for the
    earlier start is told apart)."""
    from hsb.host.states import WAITING
    from hsb.takeover.startup_id import startup_id

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.own_startup_id = last = startup_id() + 5000  # (the clock stepped back 5 s since)
        ha.set_state(WAITING, "test")
        peer_active(srv)
        ha.maybe_standby_startup()
        assert sent.peer_kinds() == ["standby_startup"] and ha.own_startup_id is not None
        assert ha.own_startup_id > last
    finally:
        close(srv)


async def test_a_batch_write_complete_for_an_earlier_startup_id_is_not_read(tmp_path: Path) -> None:
    """BATCH WRITE COMPLETE naming another startup id (an earlier attempt's, late) starts no batch
    read: the file holds a batch for another id."""
    from hsb.host.states import AWAITING_BATCH

    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.own_startup_id = 5
        ha.set_state(AWAITING_BATCH, "test")
        await ha.peer_batch_write_complete({"t": "batch_write_complete", "startup_id": 4, "generation": 3})
        assert ha.state == AWAITING_BATCH and ha.batch_token == 0 and ha.batch_announced is None
    finally:
        close(srv)


def _counted_batch_reads(srv: Any) -> list[int | None]:
    """The standby's batch reads answer at once (generation 3, no entries): the startup id each
    expected, in order."""
    reads: list[int | None] = []

    async def read(expected: int | None, peer: str | None = None) -> tuple[int, int, list[Any]]:
        reads.append(expected)
        return 3, 0, []

    srv.takeover.batch_read = read
    return reads


async def test_an_established_standby_reads_a_batch_written_for_it(tmp_path: Path) -> None:
    """BATCH WRITE COMPLETE for this standby's own id while it is established (a batch the active
    wrote again for it) is read: the standby's view is replaced by the new batch."""
    from hsb.host.states import BATCH_READING

    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    reads = _counted_batch_reads(srv)
    try:
        ha.own_startup_id = 5
        ha.set_state(ESTABLISHED, "test")
        await ha.peer_batch_write_complete({"t": "batch_write_complete", "startup_id": 5, "generation": 3})
        assert reads == [5] and ha.state == BATCH_READING and ha.generation == 3
        await until(lambda: ("batch_applied", {"token": ha.batch_token}) in ha.events, "its standby opens done")
    finally:
        close(srv)


async def test_a_batch_retry_asks_the_active_only_once_its_backoff_has_passed(tmp_path: Path) -> None:
    """A failed batch read asks the active for a new batch after its backoff, not at once: each ask
    is a whole batch write on the active."""
    from hsb.host.states import AWAITING_BATCH, BATCH_RETRY

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.own_startup_id = 5
        ha.batch_failed("EIO (test)")
        assert ha.state == BATCH_RETRY
        ha.resync_at = time.monotonic() + 60.0
        ha.resync_if_due()
        assert ha.state == BATCH_RETRY and sent.peer == []
        ha.resync_at = time.monotonic() - 0.001
        ha.resync_if_due()
        assert ha.state == AWAITING_BATCH and sent.peer_kinds() == ["resync_request"]
    finally:
        close(srv)


async def test_standby_sessions_open_make_the_standby_follow_the_ring(tmp_path: Path) -> None:
    """The batch read's standby opens done: the standby is established, follows the ring from the
    batch's end, and polls it at once (S228)."""
    from hsb.host.states import BATCH_READING

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    try:
        ha.own_startup_id = 5
        ha.set_state(BATCH_READING, "test")
        ha.next_poll = time.monotonic() + 60.0
        await ha.ev_batch_applied(token=ha.batch_token)
        assert ha.state == ESTABLISHED and srv.takeover.following and ha.next_poll == 0.0
        assert sent.peer_kinds() == ["standby_ready"]
    finally:
        close(srv)


async def test_a_standby_ready_lets_the_next_batch_be_written_at_once(tmp_path: Path) -> None:
    """STANDBY READY: the batches written are read, none counts as unread any more; the next one
    asked for (a resync) is written at once, not held."""
    srv, sent = active_host(tmp_path, BATCH_WRITING)
    ha = srv.ha
    try:
        ha.partner_startup_id = 7
        ha.batches_unread = 3
        ha.batch_ended = time.monotonic(), 0.0
        await ha.peer_standby_ready({"t": "standby_ready", "startup_id": 7})
        assert ha.state == ESTABLISHED and ha.batches_unread == 0
        await ha.peer_resync_request({"t": "resync_request", "startup_id": 7, "reason": "lapped"})
        assert ha.held_batch is None and sent.peer_kinds() == ["batch_write_complete"]
    finally:
        close(srv)


async def test_an_active_starting_again_stops_the_standby_opens_of_the_old_ones_batch(tmp_path: Path) -> None:
    """ACTIVE STARTUP of another active process while the standby opens of the old one's batch
    are still under way: those opens stop (the new active's batch replaces that view)."""
    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    opens = asyncio.ensure_future(asyncio.sleep(60))  # (the batch read's standby opens, still waited for)
    try:
        ha.partner_instance = "old"
        ha.batch_apply = opens
        await ha.peer_active_startup({"t": "active_startup", "instance": "new", "name": "host-a"})
        await asyncio.gather(opens, return_exceptions=True)
        assert opens.cancelled() and ha.batch_apply is None
    finally:
        opens.cancel()
        close(srv)


def _following(tmp_path: Path, polls: list[Any]) -> tuple[HostServer, Sent]:
    """An established standby following the ring, whose ring polls answer `polls` in turn (a
    (status, entries, detail) or an exception to raise)."""
    srv, sent = standby_host(tmp_path)
    srv.ha.own_startup_id = 5
    srv.ha.set_state(ESTABLISHED, "test")
    srv.takeover.follow()

    async def poll() -> tuple[str, list[Any], str]:
        answer = polls.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    srv.takeover.ring_poll = poll  # type: ignore[method-assign]
    return srv, sent


async def test_ring_reads_failing_ask_for_a_batch_only_after_the_storage_timeout(tmp_path: Path) -> None:
    """The ring's reads failing: the standby asks for a new batch after RING_FAIL_RESYNC_S or the
    storage's own timeout, whichever is longer (a read within it may still succeed), then does."""
    from hsb.host.ha_standby import RING_FAIL_RESYNC_S
    from hsb.host.states import AWAITING_BATCH

    srv, sent = _following(tmp_path, [OSError(5, "EIO (test)"), OSError(5, "EIO (test)")])
    ha = srv.ha
    try:
        srv.cfg.takeover.storage_timeout = 3 * RING_FAIL_RESYNC_S
        now = time.monotonic()
        ha.ring_failing = now - 2 * RING_FAIL_RESYNC_S, now, 10
        await ha.ring_poll()
        assert ha.state == ESTABLISHED and sent.peer == []
        ha.ring_failing = now - 3.5 * RING_FAIL_RESYNC_S, now, 10
        await ha.ring_poll()
        assert ha.state == AWAITING_BATCH and sent.peer_kinds() == ["resync_request"]
        assert sent.peer[0]["reason"] == "unreadable" and not srv.takeover.following
    finally:
        close(srv)


async def test_a_ring_record_torn_for_torn_retries_polls_in_a_row_is_damage(tmp_path: Path) -> None:
    """A torn ring record may be a write in progress: read again, TORN_RETRIES - 1 times; at the
    TORN_RETRIES-th torn poll in a row it counts as corrupt and a new batch is asked for, naming
    the record (the active's batch write clears it). A poll in between that is not torn starts
    the count again."""
    from hsb.host.ha_standby import TORN_RETRIES
    from hsb.host.states import AWAITING_BATCH

    torn: tuple[str, list[Any], str] = ("torn", [], "record 3")
    polls: list[Any] = [torn] * (TORN_RETRIES - 1) + [("nothing", [], "")] + [torn] * TORN_RETRIES
    srv, sent = _following(tmp_path, polls)
    ha = srv.ha
    srv.takeover.bad_record = 3  # (the reader names the record found torn)
    try:
        for _ in range(2 * TORN_RETRIES - 1):
            await ha.ring_poll()
            assert ha.state == ESTABLISHED and sent.peer == [], ha.torn_polls
        await ha.ring_poll()
        assert ha.state == AWAITING_BATCH and [(m["t"], m["reason"], m.get("record")) for m in sent.peer] == [("resync_request", "corrupt", 3)]
    finally:
        close(srv)


async def test_a_ring_lapped_while_the_storage_hangs_asks_for_a_batch_once_it_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring needs a new batch while this host's takeover storage does not answer: nothing is
    asked yet (the batch read would fail at once); asked once the storage answers."""
    from hsb.host.states import AWAITING_BATCH, BATCH_RETRY
    from hsb.takeover.store import TakeoverStore

    srv, sent = _following(tmp_path, [("lapped", [], "lapped by 3")])
    ha = srv.ha
    try:
        monkeypatch.setattr(TakeoverStore, "responding", property(lambda self: False))
        await ha.ring_poll()
        assert ha.state == BATCH_RETRY and sent.peer == []
        ha.resync_if_due()
        assert ha.state == BATCH_RETRY and sent.peer == []
        monkeypatch.undo()
        ha.resync_at = 0.0
        ha.resync_if_due()
        assert ha.state == AWAITING_BATCH and [(m["t"], m["reason"]) for m in sent.peer] == [("resync_request", "lapped")]
    finally:
        close(srv)


async def test_the_rereads_of_a_stale_header_back_off_doubling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header older than BATCH WRITE COMPLETE announced is read again after STALE_HEADER_RETRY_S's
    first delay, doubling with each re-read (a slow page cache is not hammered)."""
    from hsb.host.ha_standby import STALE_HEADER_RETRY_S

    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    delays: list[float] = []
    monkeypatch.setattr(asyncio.get_running_loop(), "call_later", lambda delay, cb: delays.append(delay))
    try:
        ha.batch_announced = 9, time.monotonic() + 60.0, 0
        assert ha.stale_header(8) and ha.stale_header(8) and ha.stale_header(8)
        first = STALE_HEADER_RETRY_S[0]
        assert delays == [first, 2 * first, 4 * first]
    finally:
        close(srv)


async def test_a_reread_of_an_earlier_batch_read_is_not_done(tmp_path: Path) -> None:
    """A stale header's re-read due after another batch read began (its token) reads nothing: the
    batch read under way is the one that counts."""
    from hsb.host.states import BATCH_READING

    srv, _ = standby_host(tmp_path)
    ha = srv.ha
    reads = _counted_batch_reads(srv)
    try:
        ha.own_startup_id = 5
        ha.batch_token = 4
        ha.set_state(BATCH_READING, "test")
        await ha.ev_batch_reread(token=3)
        assert reads == [] and ha.batch_token == 4
    finally:
        close(srv)


async def test_a_batch_read_that_succeeds_starts_the_next_failures_backoff_again(tmp_path: Path) -> None:
    """Batch reads that failed back off doubling; one that succeeds resets that: a later failure
    asks again after the first delay, not after the long one of the earlier failures."""
    srv, _ = standby_host(tmp_path)
    ha = srv.ha

    async def read(expected: int | None, peer: str | None = None) -> tuple[int, int, list[Any]]:
        return 3, 0, []

    srv.takeover.batch_read = read  # type: ignore[method-assign]
    try:
        ha.own_startup_id = 5
        ha.batch_failures = 6
        await ha.batch_read()
        await until(lambda: ("batch_applied", {"token": ha.batch_token}) in ha.events, "its standby opens done")
        ha.batch_failed("EIO (test)")
        assert ha.resync_at - time.monotonic() <= 0.05
    finally:
        close(srv)


async def test_the_changes_a_ring_poll_finds_are_applied_and_the_ring_read_again_at_once(tmp_path: Path) -> None:
    """A ring poll that found changes applies them to the standby sessions and polls again at once
    (more may be waiting)."""
    from hsb.takeover.records import SessionEntry

    entry = SessionEntry("T1", {"user": "u"}, True)
    srv, _ = _following(tmp_path, [("new", [entry], "")])
    applied: list[list[Any]] = []
    srv.sessions_ctl.apply_ring = applied.append  # type: ignore[method-assign,assignment]  # (a recorder of the entries)
    try:
        await srv.ha.ring_poll()
        assert applied == [[entry]] and srv.ha.next_poll == 0.0 and srv.ha.state == ESTABLISHED
    finally:
        close(srv)


async def test_a_mismatch_naming_the_standbys_own_id_within_the_rereads_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch read says the header holds another startup id, yet the header read again holds this
    standby's own (a stale page cache): while BATCH WRITE COMPLETE's re-reads last it is read again,
    neither a file mismatch nor a failed read that costs the active a new batch."""
    from hsb.host.states import BATCH_READING
    from hsb.takeover.errors import StartupIdMismatch

    srv, sent = standby_host(tmp_path)
    ha = srv.ha
    tio = srv.takeover

    async def mismatch(expected: int | None, peer: str | None = None) -> tuple[int, int, list[Any]]:
        tio.mismatch_generation = 9  # (the generation announced: not older)
        raise StartupIdMismatch("startup id mismatch", expected=5, found=5)

    tio.batch_read = mismatch  # type: ignore[method-assign]
    delays: list[float] = []
    monkeypatch.setattr(asyncio.get_running_loop(), "call_later", lambda delay, cb: delays.append(delay))
    try:
        ha.own_startup_id = 5
        ha.batch_announced = 9, time.monotonic() + 60.0, 0
        await ha.batch_read()
        assert ha.state == BATCH_READING and len(delays) == 1 and ha.exit is None
        assert sent.peer == [] and ha.batch_failures == 0
    finally:
        close(srv)
